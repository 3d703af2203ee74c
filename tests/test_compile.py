from __future__ import annotations

import numpy as np
import pytest

from qsim.compile import (check_gemm_fits, compile_gemm, fold_zero_points, gemm_layouts, plan_gemm,
                          tile_gemm)
from qsim.config import AcceleratorConfig, preset
from qsim.errors import ProgramError, QsimOverflowError
from qsim.model import execute, reference_gemm
from qsim.program import Halt, Matmul
from qsim.timing import estimate_gemm, simulate_timing

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
    # 10 K tiles, 5 N tiles. The whole-reduction-first rule took kt = 3 (the command memory
    # holds 3 Matmuls), so 8 rows per program: 3 x 5 x 4 = 60 programs, 1810 cycles. Two K
    # tiles leave act words for 12 rows (23 = 12 + 11): 2 x 5 x 5 = 50 programs, 1700 cycles.
    assert (plan.tiling.block_m, plan.tiling.block_k, plan.tiling.block_n) == (12, 8, 4)
    assert [(ms.stop - ms.start, ns.stop - ns.start, ks.stop - ks.start) for ms, ns, ks in plan.blocks[:6]] \
        == [(12, 4, 8), (12, 4, 8), (12, 4, 8), (12, 4, 8), (12, 4, 5), (12, 4, 8)]
    assert len(plan.programs) == plan.tiling.programs == 2 * 5 * 5
    assert sum(plan.tiling.shapes().values()) == 50
    assert plan.programs[4].name == "gemm[0:12,0:4,32:37]"
    outputs = [execute(p).outputs["C"] for p in plan.programs]
    assert np.array_equal(plan.assemble(outputs), a @ b)
    assert sum(simulate_timing(p).cycles for p in plan.programs) == plan.tiling.estimate().cycles == 1850


def _tiny_memories(rng) -> AcceleratorConfig:
    rows, cols = (int(x) for x in rng.integers(2, 7, 2))
    return AcceleratorConfig(rows=rows, cols=cols, acc_bits=int(rng.choice([16, 32])),
                             act_mem_words=int(rng.integers(2, 40)),
                             weight_mem_words=int(rng.integers(rows, 5 * rows * cols)),
                             acc_mem_words=int(rng.integers(2, 40)),
                             cmd_mem_words=int(rng.integers(2, 12)))


def test_plans_fit_cover_the_product_and_their_estimate_is_exact(rng):
    for _ in range(40):
        cfg = _tiny_memories(rng)
        m, k, n = (int(x) for x in rng.integers(1, 50, 3))
        a = rng.integers(-128, 128, (m, k))
        b = rng.integers(-128, 128, (k, n))
        plan = plan_gemm(cfg, a, b)
        tiling = plan.tiling
        assert len(plan.programs) == tiling.programs == sum(tiling.shapes().values())
        covered = np.zeros((m, n), dtype=int)
        for (ms, ns, ks), program in zip(plan.blocks, plan.programs):
            check_gemm_fits(cfg, ms.stop - ms.start, ks.stop - ks.start, ns.stop - ns.start)
            covered[ms, ns] += ks.stop - ks.start
        assert (covered == k).all()  # every output element gets the whole reduction once
        assert np.array_equal(plan.assemble([execute(p).outputs["C"] for p in plan.programs]),
                              reference_gemm(a, b, cfg.acc_bits))
        total = [simulate_timing(p).counters() for p in plan.programs]
        summed = {key: sum(c[key] for c in total) for key in total[0]}
        estimate = tiling.estimate()
        assert estimate.counters() == summed, (cfg, m, k, n)
        assert estimate.useful_macs == m * k * n


def test_a_gemm_that_fits_is_one_program_exactly_as_compiled(rng):
    a = rng.integers(-128, 128, (7, 13))
    b = rng.integers(-128, 128, (13, 11))
    tiling = tile_gemm(CFG, 7, 13, 11)
    assert (tiling.programs, tiling.block_m, tiling.block_k, tiling.block_n) == (1, 7, 13, 11)
    assert tiling.describe() == "1 program"
    (program,) = plan_gemm(CFG, a, b, name="g", label_single=False).programs
    direct = compile_gemm(CFG, a, b, name="g")
    assert (program.name, program.commands) == ("g", direct.commands)
    assert tiling.estimate().counters() == estimate_gemm(CFG, 7, 13, 11).counters()


def test_tile_choices_are_sensible():
    # the default 8x8 holds 64 K tiles of 256 rows in its act memory: 16 programs of 256 rows
    big = tile_gemm(AcceleratorConfig(), 4096, 512, 64)
    assert (big.programs, big.block_m, big.block_k, big.block_n) == (16, 256, 512, 64)
    assert big.describe() == "16 programs of at most 256x512x64 (M x K x N)"
    # M is split evenly: 17000 rows are two programs of 8500, not 16384 + 616
    assert (tile_gemm(AcceleratorConfig(), 17000, 8, 8).block_m, tile_gemm(AcceleratorConfig(), 17000, 8, 8).programs) \
        == (8500, 2)
    # 1000^3 on tiny-4x4: the greedy rule made 3969 programs of 16 rows; blocks of about 100
    # rows stream long enough to hide every weight load
    t = tile_gemm(preset("tiny-4x4"), 1000, 1000, 1000)
    assert t.programs == 567 and t.block_m >= 100
    assert t.estimate().utilization > 0.999


def test_huge_gemm_estimate_costs_each_block_shape_once(monkeypatch):
    import qsim.compile

    calls = []
    real = qsim.compile.estimate_gemm
    monkeypatch.setattr(qsim.compile, "estimate_gemm", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    tiling = tile_gemm(AcceleratorConfig(), 100_000, 100_000, 100_000)
    t = tiling.estimate()
    assert len(calls) == len(tiling.shapes()) <= 8
    assert tiling.programs > 10**7 and t.useful_macs == 10**15
    assert t.matmuls == sum(count * -(-bk // 8) * -(-bn // 8) for (bm, bk, bn), count in tiling.shapes().items())


def test_impossible_accelerators_are_refused():
    with pytest.raises(ProgramError, match=r"the 8x8 accelerator cannot hold one weight tile \(8 words\) and one "
                                           r"command: weight memory 4 words, command memory 4096 words"):
        tile_gemm(AcceleratorConfig(weight_mem_words=4), 100, 100, 100)
    with pytest.raises(ProgramError, match="GEMM K must be at least 1, not 0"):
        tile_gemm(AcceleratorConfig(), 1, 0, 1)


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


def test_plan_gemm_names_an_operand_out_of_range_by_its_place_in_the_whole_array():
    small = CFG.replace(act_mem_words=8, acc_mem_words=8, cmd_mem_words=4)
    a = np.zeros((20, 30), dtype=np.int64)
    a[17, 29] = 300
    with pytest.raises(QsimOverflowError, match=r"A\[17, 29\] = 300 is 173 above the int8 maximum 127"):
        plan_gemm(small, a, np.zeros((30, 5), dtype=np.int64))
