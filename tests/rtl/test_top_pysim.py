"""The whole accelerator in Amaranth's simulator: bit-exact with the model, cycle-exact with
the timing model, every performance counter included (small arrays; the Verilator tier runs
the large ones)."""

from __future__ import annotations

import numpy as np
import pytest

from qsim.compile import compile_gemm
from qsim.config import AcceleratorConfig
from qsim.cosim.pysim import run_pysim, run_pysim_images
from qsim.model import execute, reference_gemm
from qsim.program import CommandLayout, Halt, MatrixLayout, Matmul, Program, act_addresses
from tests.requant_cases import random_addressing
from qsim.timing import simulate_timing

pytestmark = pytest.mark.amaranth


def _small(rows: int, cols: int) -> AcceleratorConfig:
    return AcceleratorConfig(rows=rows, cols=cols, act_mem_words=128, weight_mem_words=128,
                             acc_mem_words=64, cmd_mem_words=64)


@pytest.mark.parametrize("rows, cols", [(2, 2), (2, 5), (4, 3), (4, 4)])
def test_random_gemms(rng, rows, cols):
    cfg = _small(rows, cols)
    for _ in range(4):
        m, k, n = (int(v) for v in rng.integers(1, 12, 3))
        a = rng.integers(-128, 128, (m, k))
        b = rng.integers(-128, 128, (k, n))
        program = compile_gemm(cfg, a, b)
        rtl = run_pysim(program)
        assert np.array_equal(rtl.outputs["C"], reference_gemm(a, b, 32)), (m, k, n)
        assert rtl.counters == simulate_timing(program).counters(), (m, k, n)
        assert not rtl.error


def test_random_command_streams(rng):
    """Hand-written streams: overlapping addresses, single-row tiles, random accumulate."""
    for _ in range(6):
        rows, cols = (int(v) for v in rng.integers(2, 7, 2))
        cfg = AcceleratorConfig(rows=rows, cols=cols, act_mem_words=64, weight_mem_words=64,
                                acc_mem_words=32, cmd_mem_words=32)
        commands = []
        for _ in range(int(rng.integers(1, 8))):
            n = int(rng.choice([1, 1, 2, 3, 9]))
            walk = random_addressing(rng, n)
            start = int(rng.integers(0, 64 - n + 1))
            cmd = Matmul(start, int(rng.integers(0, 64 - rows + 1)), int(rng.integers(0, 32 - n + 1)),
                         n, bool(rng.integers(0, 2)), **walk)
            if act_addresses(cmd).max() >= 64:  # the walk leaves the memory: one run instead
                cmd = Matmul(start, cmd.weight_addr, cmd.acc_addr, n, cmd.accumulate)
            commands.append(cmd)
        inputs = {
            "X": (MatrixLayout("act", 0, 64, rows, rows, 64), rng.integers(-128, 128, (64, rows))),
            "W": (MatrixLayout("weight", 0, 64, cols, cols, 64), rng.integers(-128, 128, (64, cols))),
        }
        program = Program(cfg, (*commands, Halt()), inputs=inputs)
        rtl = run_pysim(program)
        model = execute(program)
        assert np.array_equal(rtl.acc, model.memories["acc"]), commands
        assert rtl.counters == simulate_timing(program).counters(), commands


def test_halt_only_program():
    cfg = _small(2, 2)
    rtl = run_pysim(Program(cfg, (Halt(),)))
    # HALT is decodable at cycle 2 (qsim.hw.CMD_FETCH_LATENCY) and taken; busy until cycle 3
    assert rtl.counters == {"cycles": 4, "act_reads": 0, "weight_reads": 0, "acc_reads": 0,
                            "acc_writes": 0, "matmuls": 0, "requants": 0, "act_writes": 0,
                            "ppu_outputs": 0, "wait_array": 0, "wait_drain": 0, "wait_ppu": 0,
                            "loads": 0, "stores": 0, "dram_reads": 0, "dram_writes": 0,
                            "dma_busy": 0, "wait_dma": 0}
    assert not rtl.error


def test_unknown_opcode_stops_with_error():
    cfg = _small(2, 2)
    layout = CommandLayout(cfg)
    words = [layout.encode(Matmul(0, 0, 0, 2)), 0xF, layout.encode(Matmul(0, 0, 0, 2))]
    images = {"act": np.array([[1, 2], [3, 4]]), "weight": np.array([[1, 0], [0, 1]])}
    rtl = run_pysim_images(cfg, images, words, acc_words=2, timeout_cycles=100)
    assert rtl.error
    assert rtl.counters["matmuls"] == 1  # the command after the bad word never runs
    assert rtl.acc.tolist() == [[1, 2], [3, 4]]
