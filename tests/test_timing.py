from __future__ import annotations

import numpy as np
import pytest

from qsim.compile import compile_gemm
from qsim.config import AcceleratorConfig
from qsim.program import Halt, Matmul, Program
from qsim.timing import TileSchedule, estimate_gemm, simulate_timing

CFG = AcceleratorConfig()  # 8 x 8


def test_single_row_gemm_cycle_by_cycle():
    t = estimate_gemm(CFG, 1, 1, 1)
    # ready at 2 (CMD_FETCH_LATENCY), take at 2, first issue at 4, write back at
    # 4 + R + C + 2 = 22 (qsim.hw.array_latency) -> 23 busy cycles
    assert t.schedule == [TileSchedule(take=2, start=4, end=5)]
    assert t.cycles == 23
    # HALT is ready at cycle 3 and taken at 2 + R = 10 (the loader reads 8 rows): 7 waits
    assert t.counters() == {"cycles": 23, "act_reads": 1, "weight_reads": 8, "acc_reads": 0,
                            "acc_writes": 1, "matmuls": 1, "requants": 0, "act_writes": 0,
                            "ppu_outputs": 0, "wait_array": 7, "wait_drain": 0, "wait_ppu": 0,
                            "loads": 0, "stores": 0, "dram_reads": 0, "dram_writes": 0,
                            "dma_busy": 0, "wait_dma": 0}


def test_short_tiles_are_loader_bound():
    t = estimate_gemm(CFG, 3, 20, 9)
    assert [s.take for s in t.schedule] == [2, 10, 18, 26, 34, 42]
    assert [s.start for s in t.schedule] == [4, 12, 20, 28, 36, 44]
    assert t.cycles == 47 - 1 + 18 + 1


def test_long_tiles_stream_back_to_back():
    t = estimate_gemm(CFG, 100, 16, 8)
    assert t.schedule == [TileSchedule(2, 4, 104), TileSchedule(10, 104, 204)]
    assert t.cycles == 204 + 18


def test_buffer_release_bounds_the_third_take():
    # 2 x 2 tiles of 10 rows on a 4 x 16 array: K = C - 3 = 13 cycles of release
    cfg = AcceleratorConfig(rows=4, cols=16)
    t = estimate_gemm(cfg, 10, 8, 32)
    takes = [s.take for s in t.schedule]
    assert takes[2] == t.schedule[0].end + 13


def test_empty_program_takes_four_cycles():
    # HALT is decodable at cycle 2 and taken; busy until cycle 3
    assert simulate_timing(Program(CFG, (Halt(),))).cycles == 4


def test_utilization_256_cubed_on_8x8():
    t = estimate_gemm(CFG, 256, 256, 256)
    assert t.cycles == 262166
    assert t.useful_macs == 256**3
    assert t.utilization == pytest.approx(256**3 / (64 * 262166))
    assert t.utilization >= 0.90


def test_estimate_equals_compiled_program(rng):
    cfg = AcceleratorConfig(rows=4, cols=4)
    for _ in range(25):
        m, k, n = (int(x) for x in rng.integers(1, 40, 3))
        program = compile_gemm(cfg, np.zeros((m, k), dtype=np.int8), np.zeros((k, n), dtype=np.int8))
        assert simulate_timing(program).counters() == estimate_gemm(cfg, m, k, n).counters()


def test_counts_for_hand_written_program():
    cfg = AcceleratorConfig(rows=2, cols=3)
    program = Program(cfg, (Matmul(0, 0, 0, 5), Matmul(0, 0, 0, 1, accumulate=True),
                            Matmul(5, 2, 5, 2, accumulate=True), Halt()))
    t = simulate_timing(program)
    # T = 2, 4, 9 (the third take waits for buffer 0: E_0 + 0); S = 4, 9, 11; last write
    # 12 + R + C + 2 = 19; waits: 0, 4 - 3 = 1 and 9 - 5 = 4 cycles, then HALT ready at 10,
    # taken at 9 + R = 11
    assert t.counters() == {"cycles": 20, "act_reads": 8, "weight_reads": 6, "acc_reads": 3,
                            "acc_writes": 8, "matmuls": 3, "requants": 0, "act_writes": 0,
                            "ppu_outputs": 0, "wait_array": 6, "wait_drain": 0, "wait_ppu": 0,
                            "loads": 0, "stores": 0, "dram_reads": 0, "dram_writes": 0,
                            "dma_busy": 0, "wait_dma": 0}
    assert t.utilization is None
    assert t.array_macs == 8 * 6


def test_stream_skipping_equals_the_full_recurrence():
    """Equal tiles beyond 48 are timed as a stream whose repeating stretches are skipped
    (estimate_gemm); the walk over every tile remains the definition."""
    from qsim.timing import CommandStream, timing_of_commands, timing_of_stream

    for rows, cols in ((2, 2), (2, 9), (4, 4), (8, 8), (3, 16), (16, 5), (64, 64)):
        cfg = AcceleratorConfig(rows=rows, cols=cols)
        for m in (1, 2, 3, 5, rows - 1, rows, rows + 1, cols - 2, cols, 100):
            if m < 1:
                continue
            for tiles in (49, 50, 77, 200):
                commands = [Matmul(0, 0, 0, m) for _ in range(tiles)]
                full = timing_of_commands(cfg, commands).counters()
                stream = CommandStream.from_commands(commands)
                assert timing_of_stream(cfg, stream).counters() == full, (rows, cols, m, tiles)


def test_large_estimate_counters_match_compiled_program():
    cfg = AcceleratorConfig(rows=4, cols=4, act_mem_words=1 << 14, weight_mem_words=1 << 14,
                            acc_mem_words=1 << 14)
    program = compile_gemm(cfg, np.zeros((30, 70), dtype=np.int8), np.zeros((70, 50), dtype=np.int8))
    assert len(program.commands) - 1 == 18 * 13 > 48
    assert simulate_timing(program).counters() == estimate_gemm(cfg, 30, 70, 50).counters()


def test_requant_after_a_gemm_cycle_by_cycle():
    """4 x 4 float32 unit (D = 1 + 3 stages): one 5-row tile, then one REQUANT of 4 lanes."""
    from qsim.compile import GemmRequant, compile_gemm as compile_

    cfg = AcceleratorConfig(rows=4, cols=4, requant="float32")
    rq = GemmRequant.random(cfg, np.ones((5, 4), np.int64), np.random.default_rng(0))
    program = compile_(cfg, np.ones((5, 4), np.int64), np.ones((4, 4), np.int64), requant=rq)
    t = simulate_timing(program)
    # MATMUL: T = 2, S = 4, E = 9, last accumulator write 8 + R + C + 2 = 18. REQUANT: ready
    # at 3, taken at 18 (15 cycles waiting for the drain), reads 19..23, last write 23 + D = 27.
    # HALT: ready at 19, taken at 28 (9 cycles waiting for the unit); last busy cycle 29.
    assert [(p.take, p.last_write) for p in t.post_schedule] == [(18, 27)]
    assert t.counters() == {"cycles": 30, "act_reads": 5, "weight_reads": 4, "acc_reads": 5,
                            "acc_writes": 5, "matmuls": 1, "requants": 1, "act_writes": 5,
                            "ppu_outputs": 20, "wait_array": 0, "wait_drain": 15, "wait_ppu": 9,
                            "loads": 0, "stores": 0, "dram_reads": 0, "dram_writes": 0,
                            "dma_busy": 0, "wait_dma": 0}
    assert estimate_gemm(cfg, 5, 4, 4, requant=True).counters() == t.counters()


@pytest.mark.parametrize("rows, cols, mode", [(4, 4, "float32"), (3, 5, "fixed-point"), (6, 2, "float32")])
def test_requant_estimate_equals_compiled_program(rng, rows, cols, mode):
    from qsim.compile import GemmRequant

    cfg = AcceleratorConfig(rows=rows, cols=cols, requant=mode, act_mem_words=4096,
                            weight_mem_words=4096, acc_mem_words=4096)
    for _ in range(10):
        m, k, n = (int(x) for x in rng.integers(1, 30, 3))
        a, b = np.ones((m, k), np.int64), np.ones((k, n), np.int64)
        rq = GemmRequant.random(cfg, a @ b, rng)
        program = compile_gemm(cfg, a, b, requant=rq)
        assert simulate_timing(program).counters() == \
            estimate_gemm(cfg, m, k, n, requant=True).counters(), (m, k, n)
