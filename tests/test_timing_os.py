"""The output-stationary branch of the timing model, with hand-checked cycle counts (the
RTL tests, tests/rtl/test_top_pysim_os.py and tests/cosim/test_verilator_os.py, check the
same recurrence against the RTL's counters)."""

from __future__ import annotations

import numpy as np
import pytest

from qsim.compile import GemmRequant, compile_gemm, tile_gemm
from qsim.config import AcceleratorConfig
from qsim.hw import os_tile_spacing, os_write_latency
from qsim.program import Halt, Matmul, Program, Requant
from qsim.timing import TileSchedule, estimate_gemm, simulate_timing


def _os(rows: int = 8, cols: int = 8, **changes) -> AcceleratorConfig:
    return AcceleratorConfig(rows=rows, cols=cols, dataflow="os", **changes)


def test_hw_constants():
    cfg = _os(5, 7)
    assert (os_write_latency(cfg), os_tile_spacing(cfg)) == (5 + 7 + 2, 5)


def test_single_step_gemm_cycle_by_cycle():
    t = estimate_gemm(_os(), 1, 1, 1)
    # taken at 2, issued at 4 (E = 5); rows written at 4 + R + C + 2 + j = 22 .. 29 -> 30 cycles;
    # HALT is taken at once (no weight loader): no waits
    assert t.schedule == [TileSchedule(take=2, start=4, end=5)]
    assert t.counters() == {"cycles": 30, "act_reads": 1, "weight_reads": 1, "acc_reads": 0,
                            "acc_writes": 8, "matmuls": 1, "requants": 0, "act_writes": 0,
                            "ppu_outputs": 0, "wait_array": 0, "wait_drain": 0, "wait_ppu": 0,
                            "loads": 0, "stores": 0, "dram_reads": 0, "dram_writes": 0,
                            "dma_busy": 0, "wait_dma": 0}


def test_the_documented_2x2_diagram():
    # A (3 x 4) @ B (4 x 2) on 2 x 2: two M tiles of 4 steps back to back, last write at
    # E_1 + 2R + C = 12 + 6 = 18 (docs/microarchitecture.md, diagram os-two-tiles)
    t = estimate_gemm(_os(2, 2), 3, 4, 2)
    assert t.schedule == [TileSchedule(2, 4, 8), TileSchedule(3, 8, 12)]
    assert t.cycles == 19
    assert (t.acc_writes, t.weight_reads, t.wait_array) == (4, 8, 0)


def test_short_tiles_keep_the_drain_spacing():
    # 4 x 4, two tiles of 2 steps: the second must end R = 4 cycles after the first
    t = estimate_gemm(_os(4, 4), 8, 2, 4)
    assert t.schedule == [TileSchedule(2, 4, 6), TileSchedule(3, 8, 10)]
    assert t.cycles == 10 + 2 * 4 + 4 + 1
    # int4: K = 4 is two words of two steps each, the same schedule
    assert estimate_gemm(_os(4, 4, input_format="int4", weight_format="int4"), 8, 4, 4).schedule \
        == t.schedule


def test_long_tiles_stream_back_to_back():
    # 256^3 on 8 x 8: 32 x 32 tiles of 256 steps, 4 to start, 2R + C + 1 to drain the last one
    t = estimate_gemm(_os(), 256, 256, 256)
    assert t.cycles == 4 + 1024 * 256 + 2 * 8 + 8 + 1 == 262173
    assert t.utilization == pytest.approx(256**3 / (64 * 262173))


def test_hand_written_program_with_accumulate_and_requant():
    cfg = _os(2, 3, requant="fixed-point")
    program = Program(cfg, (Matmul(0, 0, 0, 5), Matmul(0, 0, 0, 1, accumulate=True),
                            Requant(0, 10, 2, 0, lanes=2), Matmul(5, 2, 4, 3), Halt()))
    t = simulate_timing(program)
    # M0: T 2, S 4, E 9. M1 (1 step): T = max(3, S0 - 1) = 3, S = max(5, 9, 9 + 2 - 1) = 10,
    # E 11, last write 11 + 2R + C = 18. REQUANT: ready 4, taken 18 (14 waits for the
    # drain), reads 19..20, last write 20 + D (1 + 2) = 23, unit free at 24. M2: ready 19,
    # taken 24 (5 waits for the unit), S 26, E 29, last write 29 + 7 = 36. HALT at 25.
    assert [(s.take, s.start, s.end) for s in t.schedule] == [(2, 4, 9), (3, 10, 11), (24, 26, 29)]
    assert [(p.take, p.last_write) for p in t.post_schedule] == [(18, 23)]
    assert t.counters() == {"cycles": 37, "act_reads": 9, "weight_reads": 9, "acc_reads": 2 + 2,
                            "acc_writes": 6, "matmuls": 3, "requants": 1, "act_writes": 2,
                            "ppu_outputs": 4, "wait_array": 0, "wait_drain": 14, "wait_ppu": 5,
                            "loads": 0, "stores": 0, "dram_reads": 0, "dram_writes": 0,
                            "dma_busy": 0, "wait_dma": 0}


@pytest.mark.parametrize("rows, cols, precision", [(4, 4, "int8"), (3, 5, "int8"), (5, 3, "int4")])
def test_estimate_equals_compiled_program(rng, rows, cols, precision):
    cfg = _os(rows, cols, input_format=precision, weight_format=precision, act_mem_words=4096,
              weight_mem_words=4096, acc_mem_words=4096)
    for _ in range(20):
        m, k, n = (int(x) for x in rng.integers(1, 60, 3))
        program = compile_gemm(cfg, np.zeros((m, k), np.int8), np.zeros((k, n), np.int8))
        assert simulate_timing(program).counters() == estimate_gemm(cfg, m, k, n).counters(), (m, k, n)
    m, k, n = 60, 7, 70  # more than 48 tiles: the extrapolated estimate
    program = compile_gemm(cfg, np.zeros((m, k), np.int8), np.zeros((k, n), np.int8))
    assert len(program.commands) > 49
    assert simulate_timing(program).counters() == estimate_gemm(cfg, m, k, n).counters()


def test_requant_estimate_equals_compiled_program(rng):
    cfg = _os(3, 4, requant="float32", act_mem_words=4096, weight_mem_words=4096,
              acc_mem_words=4096)
    for _ in range(10):
        m, k, n = (int(x) for x in rng.integers(1, 30, 3))
        a, b = np.ones((m, k), np.int64), np.ones((k, n), np.int64)
        program = compile_gemm(cfg, a, b, requant=GemmRequant.random(cfg, a @ b, rng))
        assert simulate_timing(program).counters() == \
            estimate_gemm(cfg, m, k, n, requant=True).counters(), (m, k, n)


@pytest.mark.parametrize("rows, cols", [(2, 2), (4, 4), (3, 5), (8, 8), (5, 7), (16, 16), (64, 64)])
def test_utilization_of_8x_gemms(rows, cols):
    cfg = _os(rows, cols)
    t = tile_gemm(cfg, 8 * rows, 8 * rows, 8 * cols).estimate()
    assert t.utilization >= 0.95, t.utilization


def test_tiled_gemm_estimate_equals_its_programs(rng):
    from qsim.compile import plan_gemm

    cfg = _os(4, 4, act_mem_words=64, weight_mem_words=64, acc_mem_words=64, cmd_mem_words=16)
    a, b = rng.integers(-128, 128, (50, 90)), rng.integers(-128, 128, (90, 30))
    plan = plan_gemm(cfg, a, b)
    assert plan.tiling.programs > 1
    total = {}
    for program in plan.programs:
        for key, value in simulate_timing(program).counters().items():
            total[key] = total.get(key, 0) + value
    assert plan.tiling.estimate().counters() == total
