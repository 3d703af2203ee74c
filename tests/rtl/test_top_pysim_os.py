"""The output-stationary accelerator in Amaranth's simulator: bit-exact with the model and
cycle-exact with the timing model, every performance counter included (small arrays,
non-square, int8 and int4, GEMMs and hand-written command streams with REQUANTs)."""

from __future__ import annotations

import numpy as np
import pytest

from qsim.compile import GemmRequant, compile_gemm
from qsim.cosim.pysim import run_pysim
from qsim.model import execute, reference_gemm
from qsim.timing import simulate_timing
from tests.os_cases import os_config, random_gemm, random_os_stream

pytestmark = pytest.mark.amaranth


@pytest.mark.parametrize("rows, cols, precision", [
    (2, 2, "int8"), (2, 5, "int8"), (4, 3, "int8"), (4, 4, "int8"), (3, 2, "int4"), (2, 4, "int4")])
def test_random_gemms(rng, rows, cols, precision):
    cfg = os_config(rows, cols, precision, act_mem_words=128, weight_mem_words=128,
                    acc_mem_words=128, cmd_mem_words=64)
    for _ in range(4):
        a, b = random_gemm(rng, cfg)
        program = compile_gemm(cfg, a, b)
        rtl = run_pysim(program)
        assert np.array_equal(rtl.outputs["C"], reference_gemm(a, b, 32)), (a.shape, b.shape)
        assert rtl.counters == simulate_timing(program).counters(), (a.shape, b.shape)
        assert not rtl.error


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_random_command_streams(rng, precision):
    """Short tiles (the drain-spacing rule), overlapping addresses, accumulate, walks."""
    for _ in range(5):
        rows, cols = (int(v) for v in rng.integers(2, 6, 2))
        cfg = os_config(rows, cols, precision)
        program = random_os_stream(rng, cfg, int(rng.integers(1, 8)))
        rtl = run_pysim(program)
        model = execute(program)
        assert np.array_equal(rtl.acc, model.memories["acc"]), program.commands
        assert rtl.counters == simulate_timing(program).counters(), program.commands


@pytest.mark.parametrize("mode, precision", [("fixed-point", "int8"), ("float32", "int4")])
def test_random_streams_with_requant(rng, mode, precision):
    for _ in range(3):
        rows, cols = (int(v) for v in rng.integers(2, 5, 2))
        cfg = os_config(rows, cols, precision, requant=mode)
        program = random_os_stream(rng, cfg, 8, requants=True)
        rtl = run_pysim(program)
        model = execute(program)
        assert np.array_equal(rtl.acc, model.memories["acc"]), program.commands
        assert np.array_equal(rtl.memories["act"], model.memories["act"]), program.commands
        assert rtl.counters == simulate_timing(program).counters(), program.commands


def test_gemm_with_requant_on_chip(rng):
    cfg = os_config(3, 4, requant="fixed-point", act_mem_words=128, weight_mem_words=128,
                    acc_mem_words=128)
    a, b = random_gemm(rng, cfg, 10)
    ref = reference_gemm(a, b, 32)
    rq = GemmRequant.random(cfg, ref, rng)
    program = compile_gemm(cfg, a, b, requant=rq)
    rtl = run_pysim(program)
    assert np.array_equal(rtl.outputs["C"], ref)
    assert np.array_equal(rtl.outputs["Y"], rq.reference(cfg, ref))
    assert rtl.counters == simulate_timing(program).counters()


def test_hand_checked_schedule_on_the_rtl(rng):
    """The program of tests/test_timing_os.py (cycle counts worked out by hand) on the RTL."""
    from qsim.program import Halt, MatrixLayout, Matmul, Program, Requant
    from tests.requant_cases import random_params

    cfg = os_config(2, 3, requant="fixed-point", act_mem_words=16, weight_mem_words=16,
                    acc_mem_words=8, param_mem_words=2)
    inputs = {"X": (MatrixLayout("act", 0, 10, 2, 2, 10), rng.integers(-128, 128, (10, 2))),
              "W": (MatrixLayout("weight", 0, 8, 3, 3, 8), rng.integers(-128, 128, (8, 3)))}
    for memory, matrix in random_params(rng, "fixed-point", 1, 3).items():
        inputs[memory] = (MatrixLayout(memory, 0, 1, 3, 3, 1), matrix)
    program = Program(cfg, (Matmul(0, 0, 0, 5), Matmul(0, 0, 0, 1, accumulate=True),
                            Requant(0, 10, 2, 0, lanes=2), Matmul(5, 2, 4, 3), Halt()),
                      inputs=inputs, outputs={"acc": MatrixLayout("acc", 0, 8, 3, 3, 8)})
    rtl = run_pysim(program)
    assert rtl.counters["cycles"] == 37
    assert rtl.counters == simulate_timing(program).counters()
    assert np.array_equal(rtl.acc, execute(program).memories["acc"])
