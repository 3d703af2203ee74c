"""The post-processing unit and REQUANT commands in Amaranth's simulator: bit-exact with the
model (which is ONNX Runtime's float32 requantization, or the fixed-point requantizer) and
cycle-exact with the timing model, every counter included."""

from __future__ import annotations

import numpy as np
import pytest

from qsim.config import AcceleratorConfig
from qsim.cosim.pysim import run_pysim
from qsim.model import execute
from qsim.program import pack_qctl, requantize_lanes
from qsim.quant.requant import FixedPointRequantizer, requantize_float32
from qsim.numerics import INT8
from qsim.timing import simulate_timing
from rtl.ppu import PostProcessor
from tests.requant_cases import random_params, random_requant_program, requant_config

pytestmark = pytest.mark.amaranth


def _run_lanes(mode: str, acc, bias, scale, qctl) -> np.ndarray:
    """Each row through a 4-lane PostProcessor, parameters held as the memories hold them."""
    from amaranth.sim import Simulator

    dut = PostProcessor(AcceleratorConfig(rows=4, cols=4, requant=mode))
    out = []

    async def bench(ctx):
        for j in range(len(acc)):
            for lane in range(4):
                ctx.set(dut.acc[lane], int(acc[j, lane]))
                ctx.set(dut.bias[lane], int(bias[j, lane]))
                ctx.set(dut.scale[lane], int(scale[j, lane]))
                ctx.set(dut.qctl[lane], int(qctl[j, lane]))
            for _ in range(dut.stages):
                await ctx.tick()
            out.append([int(ctx.get(dut.out[lane])) for lane in range(4)])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("mode", ["fixed-point", "float32"])
def test_lanes_equal_the_model(rng, mode):
    n = 160
    acc = rng.integers(-(1 << 31), 1 << 31, (n, 4))
    acc[: n // 2] = rng.integers(-3000, 3000, (n // 2, 4))
    params = random_params(rng, mode, n, 4)
    got = _run_lanes(mode, acc, params["bias"], params["scale"], params["qctl"])
    want = requantize_lanes(mode, acc, params["bias"], params["scale"], params["qctl"]) & 0xFF
    assert np.array_equal(got, want)


def test_float32_ties_and_double_rounding():
    # Row 0: 3 * 0.5 = 1.5 and 5 * 0.5 = 2.5 are ties, to even. Row 1: 2**24 + 1 and 2**24 + 3
    # round in the int32 -> float32 conversion; 16777215 * 2**-24 is below 1 but rounds to 1.
    # Row 2: 3 * f32(7/6) = 3.49999988 and 5 * f32(0.7) = 3.49999994 become exactly 3.5 in
    # float32 and then round to 4, where the exact products round to 3; 3 * f32(13/6) =
    # 6.50000024 becomes 6.5 and rounds to 6, not 7.
    acc = np.array([[3, 5, -3, -5], [(1 << 24) + 1, (1 << 24) + 3, 16777215, 7],
                    [3, 5, 3, -3]], dtype=np.int64)
    scales = np.array([[0.5, 0.5, 0.5, 0.5], [2.0 ** -24, 2.0 ** -24, 2.0 ** -24, 0.5 - 2.0 ** -25],
                       [7 / 6, 0.7, 13 / 6, 7 / 6]], dtype=np.float32)
    scale = scales.view(np.int32).astype(np.int64)
    qctl = np.broadcast_to(pack_qctl(0, 0, -128, 127), acc.shape)
    bias = np.zeros_like(acc)
    got = _run_lanes("float32", acc, bias, scale, qctl)
    ort = requantize_float32(acc, scales, 0, INT8)  # ONNX Runtime's MlasRequantizeOutput
    assert np.array_equal(got, ort & 0xFF)
    assert ort.tolist() == [[2, 2, -2, -2], [1, 1, 1, 3], [4, 4, 6, -4]]


def test_fixed_point_equals_the_hardware_requantizer(rng):
    acc = rng.integers(-(1 << 24), 1 << 24, (40, 4))
    req = FixedPointRequantizer.from_scales(0.02, rng.uniform(0.001, 0.01, 4).astype(np.float32),
                                            0.1, 3, "int8")
    qctl = np.broadcast_to(pack_qctl(31 - req.shift, 3, -128, 127), acc.shape)
    scale = np.broadcast_to(req.multiplier, acc.shape)
    got = _run_lanes("fixed-point", acc, np.zeros_like(acc), scale, qctl)
    assert np.array_equal(got, req(acc) & 0xFF)


@pytest.mark.parametrize("rows, cols", [(2, 3), (4, 4), (3, 5), (5, 2)])
@pytest.mark.parametrize("mode", ["fixed-point", "float32"])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_random_streams_agree(rng, mode, rows, cols, precision):
    cfg = requant_config(rows, cols, mode, precision)
    for _ in range(2):
        program = random_requant_program(rng, cfg)
        rtl = run_pysim(program)
        model = execute(program)
        assert not rtl.error
        assert np.array_equal(rtl.memories["act"], model.memories["act"]), program.commands
        assert np.array_equal(rtl.memories["acc"], model.memories["acc"]), program.commands
        assert rtl.counters == simulate_timing(program).counters(), program.commands
