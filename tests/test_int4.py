"""INT4 precision: two 4-bit products per PE per cycle, operands packed two per byte."""

from __future__ import annotations

import numpy as np
import pytest

from qsim.compile import GemmRequant, compile_gemm
from qsim.config import AcceleratorConfig
from qsim.cosim.words import pack_words
from qsim.errors import ConfigError
from qsim.model import execute, reference_gemm
from qsim.timing import estimate_gemm, simulate_timing


def _cfg(rows, cols, precision="int4", **kw):
    return AcceleratorConfig(rows=rows, cols=cols, input_format=precision, weight_format=precision,
                             act_mem_words=4096, weight_mem_words=4096, acc_mem_words=4096, **kw)


def test_int4_doubles_the_lanes_and_the_macs_per_cycle():
    cfg = _cfg(8, 8)
    assert (cfg.products_per_pe, cfg.act_lanes, cfg.weight_lanes, cfg.k_tile) == (2, 16, 16, 16)
    assert cfg.macs_per_cycle == 2 * _cfg(8, 8, "int8").macs_per_cycle == 128
    assert cfg.act_word_bits == 64 and cfg.precision == "int4"


def test_memory_words_hold_two_values_per_byte_low_nibble_first():
    # lanes 0 and 1 of a word are the low and high nibble of its first byte, as ONNX packs int4
    assert pack_words(np.array([[1, -2, 7, -8]]), 4) == [0x87E1]


def test_mixed_precisions_are_not_a_mode():
    with pytest.raises(ConfigError, match=r"^input_format int8 with weight_format int4 is not a "
                       r"mode of the array: the precisions are int8 x int8 and int4 x int4"):
        AcceleratorConfig(weight_format="int4")


@pytest.mark.parametrize("rows, cols", [(4, 4), (3, 5), (5, 2), (8, 8)])
def test_int4_gemms_are_exact(rng, rows, cols):
    cfg = _cfg(rows, cols)
    for _ in range(6):
        m, k, n = (int(v) for v in rng.integers(1, 40, 3))
        a, b = rng.integers(-8, 8, (m, k)), rng.integers(-8, 8, (k, n))
        program = compile_gemm(cfg, a, b)
        assert np.array_equal(execute(program).outputs["C"], reference_gemm(a, b, 32)), (m, k, n)
        assert simulate_timing(program).counters() == estimate_gemm(cfg, m, k, n).counters()


@pytest.mark.parametrize("mode", ["fixed-point", "float32"])
def test_int4_requantization_writes_int4_results(rng, mode):
    cfg = _cfg(4, 6, requant=mode)
    a, b = rng.integers(-8, 8, (9, 21)), rng.integers(-8, 8, (21, 13))
    rq = GemmRequant.random(cfg, a @ b, rng)
    y = execute(compile_gemm(cfg, a, b, requant=rq)).outputs["Y"]
    want = rq.reference(cfg, a @ b)
    assert np.array_equal(y, want)
    assert want.min() >= (0 if rq.unsigned else -8) and want.max() <= (15 if rq.unsigned else 7)


def test_int4_delivers_twice_the_macs_per_cycle_on_large_gemms():
    for rows, cols in ((4, 4), (8, 8), (3, 5)):
        m, k, n = 8 * 2 * rows, 8 * 2 * rows, 8 * cols
        int4 = estimate_gemm(_cfg(rows, cols), m, k, n)
        int8 = estimate_gemm(_cfg(rows, cols, "int8"), m, k, n)
        ratio = int8.cycles / int4.cycles  # same MACs, so the MACs-per-cycle ratio
        assert ratio >= 1.9, (rows, cols, ratio)
        assert int4.utilization >= 0.95 * 0.95
