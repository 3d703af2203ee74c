from __future__ import annotations

import numpy as np
import pytest

from qsim.compile import compile_gemm, fold_zero_points, gemm_layouts, plan_gemm
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


def test_plan_gemm_chunks_every_dimension_and_reassembles(rng):
    tiny = AcceleratorConfig(rows=4, cols=4, act_mem_words=24, weight_mem_words=16,
                             acc_mem_words=12, cmd_mem_words=4)
    a = rng.integers(-128, 128, (23, 37))
    b = rng.integers(-128, 128, (37, 19))
    plan = plan_gemm(tiny, a, b)
    # kt = min(10 K tiles, 16 // 4, 24, 3) = 3; nt = min(5, 16 // 12, 12, 1) = 1; mc = min(23, 8, 12)
    assert [(ms.stop - ms.start, ns.stop - ns.start, ks.stop - ks.start) for ms, ns, ks in plan.blocks[:5]] \
        == [(8, 4, 12), (8, 4, 12), (8, 4, 12), (8, 4, 1), (8, 4, 12)]
    assert len(plan.programs) == 3 * 5 * 4
    outputs = [execute(p).outputs["C"] for p in plan.programs]
    assert np.array_equal(plan.assemble(outputs), a @ b)


def test_plan_gemm_partial_sums_wrap_like_the_accumulator():
    cfg = AcceleratorConfig(rows=2, cols=2, acc_bits=16, act_mem_words=8, weight_mem_words=4,
                            acc_mem_words=8, cmd_mem_words=2)
    a = np.full((1, 8), -128)
    b = np.full((8, 1), -128)
    plan = plan_gemm(cfg, a, b)
    assert len(plan.programs) == 4  # one MATMUL + HALT per program: one K tile (2 rows) each
    # each partial is 2 * 16384 = 32768 -> -32768 in 16 bits; four of them wrap to 0 = 131072 mod 2^16
    assert plan.assemble([execute(p).outputs["C"] for p in plan.programs]).tolist() == [[0]]


@pytest.mark.parametrize("x_range, w_range, w_zp", [
    ((0, 256), (-128, 128), 0),                 # ONNX Runtime default: uint8 x int8, symmetric weights
    ((-128, 128), (-127, 128), 0),              # int8 x int8
    ((0, 256), (0, 256), np.arange(5) * 50),    # uint8 weights, per-channel zero points
    ((-8, 8), (-8, 8), 0),                      # int4 values fit the int8 array
])
def test_fold_zero_points_is_exact(rng, x_range, w_range, w_zp):
    x = rng.integers(*x_range, (6, 11))
    w = rng.integers(*w_range, (11, 5))
    zx = int(rng.integers(*x_range))
    fold = fold_zero_points(CFG, x, zx, w, w_zp)
    assert fold.a.min() >= -128 and fold.a.max() <= 127 and fold.b.min() >= -128 and fold.b.max() <= 127
    exact = (x - zx) @ (w - np.broadcast_to(w_zp, (5,)))
    assert np.array_equal(execute(compile_gemm(CFG, fold.a, fold.b)).outputs["C"] + fold.correction, exact)


def test_fold_rejects_values_that_fit_no_int8_shift():
    with pytest.raises(ProgramError, match="activation values span -100..200, which no shift maps into int8"):
        fold_zero_points(CFG, np.array([[-100, 200]]), 0, np.zeros((2, 1), dtype=int), 0)
