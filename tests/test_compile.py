from __future__ import annotations

import numpy as np
import pytest

from qsim.compile import compile_gemm, gemm_layouts
from qsim.config import AcceleratorConfig
from qsim.errors import ProgramError, QsimOverflowError
from qsim.model import execute, reference_gemm
from qsim.program import Halt, Matmul

CFG = AcceleratorConfig(rows=4, cols=4, act_mem_words=256, weight_mem_words=256,
                        acc_mem_words=128, cmd_mem_words=64)


def test_gemm_commands_and_layout():
    a = np.arange(3 * 6).reshape(3, 6) - 9
    b = np.arange(6 * 5).reshape(6, 5) - 15
    p = compile_gemm(CFG, a, b)
    # K = 6 -> 2 K tiles of 4, N = 5 -> 2 N tiles of 4; K tiles innermost.
    assert p.commands == (
        Matmul(act_addr=0, weight_addr=0, acc_addr=0, rows=3, accumulate=False),
        Matmul(act_addr=3, weight_addr=4, acc_addr=0, rows=3, accumulate=True),
        Matmul(act_addr=0, weight_addr=8, acc_addr=3, rows=3, accumulate=False),
        Matmul(act_addr=3, weight_addr=12, acc_addr=3, rows=3, accumulate=True),
        Halt(),
    )
    images = p.initial_images()
    assert images["act"][4].tolist() == [a[1, 4], a[1, 5], 0, 0]   # second K tile, row 1
    assert images["weight"][8 + 2].tolist() == [b[2, 4], 0, 0, 0]   # N tile 1, K row 2
    assert images["weight"][4 + 2].tolist() == [0, 0, 0, 0]         # K rows 6, 7 are padding
    assert p.meta == {"op": "gemm", "m": 3, "k": 6, "n": 5, "useful_macs": 90}
    assert np.array_equal(execute(p).outputs["C"], a @ b)


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (7, 13, 11), (17, 4, 4), (5, 33, 2)])
def test_gemm_through_model_matches_reference(rng, m, k, n):
    a = rng.integers(-128, 128, (m, k))
    b = rng.integers(-128, 128, (k, n))
    result = execute(compile_gemm(CFG, a, b))
    assert np.array_equal(result.outputs["C"], reference_gemm(a, b, 32))


def test_accumulator_wraps_like_the_hardware():
    cfg = CFG.replace(acc_bits=16)
    a = np.full((2, 8), -128)
    b = np.full((8, 1), -128)
    out = execute(compile_gemm(cfg, a, b)).outputs["C"]
    # 8 * 16384 = 131072 = 2 * 65536 -> wraps to 0 in 16 bits
    assert out.tolist() == [[0], [0]]
    b[0, 0] = 127
    # 7 * 16384 - 128 * 127 = 98432 -> 98432 - 65536 = 32896 -> -32640 as int16
    assert execute(compile_gemm(cfg, a, b)).outputs["C"].tolist() == [[-32640], [-32640]]


def test_shape_that_does_not_fit_names_each_memory():
    small = CFG.replace(act_mem_words=64, acc_mem_words=32, cmd_mem_words=8)
    with pytest.raises(ProgramError) as exc:
        compile_gemm(small, np.zeros((40, 10), dtype=np.int8), np.zeros((10, 9), dtype=np.int8))
    assert str(exc.value) == (
        "GEMM 40x10x9 does not fit the 4x4 accelerator: the act memory needs 120 words "
        "(3 K tiles x 40 rows) but has 64 (56 too many); the acc memory needs 120 words "
        "(3 N tiles x 40 rows) but has 32 (88 too many); the cmd memory needs 10 words "
        "(3 x 3 tiles + HALT) but has 8 (2 too many)")


def test_bad_operands():
    with pytest.raises(ProgramError, match=r"GEMM inner dimensions differ: A is \(2, 3\), B is \(4, 2\)"):
        compile_gemm(CFG, np.zeros((2, 3), dtype=int), np.zeros((4, 2), dtype=int))
    with pytest.raises(ProgramError, match="GEMM operands must be integer arrays, not float64 and int64"):
        compile_gemm(CFG, np.zeros((2, 3)), np.zeros((3, 2), dtype=int))
    with pytest.raises(ProgramError, match=r"GEMM operands must be 2-D, not \(3,\) and \(3, 2\)"):
        compile_gemm(CFG, np.zeros(3, dtype=int), np.zeros((3, 2), dtype=int))
    with pytest.raises(QsimOverflowError, match=r"1 element of A overflow int8 \[-128, 127\]: "
                                                r"A\[0, 1\] = 200 is 73 above the int8 maximum 127"):
        compile_gemm(CFG, np.array([[0, 200]]), np.zeros((2, 1), dtype=int))
    with pytest.raises(ProgramError, match="GEMM M must be at least 1, not 0"):
        gemm_layouts(CFG, 0, 1, 1)
