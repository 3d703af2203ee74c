"""The bus interface: LOAD/STORE on the model, the DMA timing mirror, the RTL (Amaranth simulator
and Verilator through the AXI4-Lite front door) and the errors of bad programs."""

from __future__ import annotations

import numpy as np
import pytest

from qsim.compile_dram import compile_gemm_dram
from qsim.config import AcceleratorConfig
from qsim.dma import load_cycles, store_cycles
from qsim.errors import ConfigError, ProgramError
from qsim.model import execute
from qsim.program import (ERROR_CODES, DmaFault, DramLayout, Halt, Load, MatrixLayout, Matmul,
                          Program, Store)
from qsim.timing import simulate_timing

SMALL = dict(act_mem_words=256, weight_mem_words=256, acc_mem_words=256, cmd_mem_words=128,
             param_mem_words=8, dram_capacity=1 << 14)


def _cfg(rows=4, cols=6, width=8, latency=5, **kw) -> AcceleratorConfig:
    return AcceleratorConfig(rows=rows, cols=cols, dram_width=width, dram_latency=latency,
                             **{**SMALL, **kw})


def _gemm(rng, cfg, max_dim=19):
    m, k, n = (int(x) for x in rng.integers(1, max_dim + 1, 3))
    a = rng.integers(-128, 128, (m, k))
    b = rng.integers(-128, 128, (k, n))
    return a, b


def _one_matmul(cfg, **load):
    """LOAD A, LOAD B, MATMUL, STORE C on a 4 x 6 array (7 rows)."""
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (7, 4))
    b = rng.integers(-128, 128, (4, 6))
    a_lay = MatrixLayout("act", 0, 7, 4, 4, 7)
    b_lay = MatrixLayout("weight", 0, 4, 6, 6, 4)
    c_lay = MatrixLayout("acc", 0, 7, 6, 6, 7)
    loads = {"memory": "act", "dram_addr": 0x100, "sram_addr": 0, "words": 7, **load}
    commands = [Load(**loads), Load("weight", 0x200, 0, 4), Matmul(0, 0, 0, 7, wait=True),
                Store("acc", 0x400, 0, 7, wait=True), Halt()]
    return Program(cfg, commands, dram_inputs={"A": (DramLayout(a_lay, 0x100), a),
                                               "B": (DramLayout(b_lay, 0x200), b)},
                   dram_outputs={"C": DramLayout(c_lay, 0x400)}, strict=False), a, b


# ---- model and timing, no simulator ---------------------------------------------------------

def test_model_moves_data_through_dram_and_multiplies():
    program, a, b = _one_matmul(_cfg())
    result = execute(program)
    np.testing.assert_array_equal(result.outputs["C"], a @ b)
    # C's words in DRAM: 7 words of 6 int32 lanes, little-endian
    raw = bytes(result.dram[0x400 : 0x400 + 7 * 24])
    assert np.frombuffer(raw, "<i4").reshape(7, 6).tolist() == (a @ b).tolist()


def test_dma_costs_by_hand():
    # 7 words of 4 bytes over an 8-byte bus, bursts of 16 beats: 4 beats, 1 burst. The AR goes
    # out at cycle 1, the first beat arrives at 1 + 1 + 5 = 7, two words per beat, one word
    # written per cycle: words at 8..14 (the buffer holds at most one beat ahead)
    t = load_cycles(7, 4, 8, 0, 5, 16, 4)
    assert (t.cycles, t.beats, t.bursts) == (14, 4, 1)
    # a burst grid of 4 beats at offset 3 beats: bursts of 1, 4, 4, 2 beats
    assert load_cycles(11, 8, 8, 24, 1, 4, 4).bursts == 4
    # STORE: 3 words of 24 bytes on a 16-byte bus: 72 bytes, 5 beats, one burst; the response
    # comes latency + 1 after the last beat
    s = store_cycles(3, 24, 16, 0, 10, 16, 4)
    assert (s.beats, s.bursts) == (5, 1)
    assert store_cycles(3, 24, 16, 0, 20, 16, 4).cycles == s.cycles + 10


def test_timing_counts_dram_bytes_and_transfers():
    program, _, _ = _one_matmul(_cfg())
    t = simulate_timing(program)
    counters = t.counters()
    assert counters["loads"] == 2 and counters["stores"] == 1
    # program fetch: 5 commands of 16 bytes = 10 beats; A: 28 bytes = 4 beats; B: 24 bytes = 3
    assert counters["dram_reads"] == 8 * (10 + 4 + 3)
    assert counters["dram_writes"] == 8 * 21  # 7 x 24 bytes = 168 = 21 beats
    assert t.dram_bytes == {"read": 136, "written": 168}


@pytest.mark.parametrize("load, code, message", [
    ({"dram_addr": 0x104}, "misaligned",
     "command 0 (Load act): DRAM address 0x104 is not a multiple of the 8-byte bus width "
     "(misaligned burst)"),
    ({"dram_addr": 0x3FF0}, "bus",
     "command 0 (Load act): DRAM bytes 0x3ff0..0x400b are outside the 16384-byte DRAM"),
])
def test_faults_name_the_command(load, code, message):
    program, _, _ = _one_matmul(_cfg(), **load)
    with pytest.raises(DmaFault) as info:
        execute(program)
    assert str(info.value) == message
    assert (info.value.command, info.value.code) == (0, code)
    with pytest.raises(DmaFault, match="command 0"):
        Program(program.config, program.commands, dram_inputs=program.dram_inputs,
                dram_outputs=program.dram_outputs, strict=True)


def test_program_larger_than_dram_is_refused():
    cfg = _cfg(dram_capacity=4096)
    with pytest.raises(ProgramError, match=r"^the program needs \d+ bytes of DRAM \(its "
                                           r"commands, inputs and outputs\) but the DRAM has "
                                           r"4096 bytes \(dram_capacity\)$"):
        compile_gemm_dram(cfg, np.ones((30, 4), dtype=np.int64), np.ones((4, 48), dtype=np.int64))


def test_a_race_between_units_is_refused():
    program, _, _ = _one_matmul(_cfg())
    commands = list(program.commands)
    commands[2] = Matmul(0, 0, 0, 7)  # no wait: could read A before its LOAD finished
    with pytest.raises(ProgramError) as info:
        Program(program.config, commands, dram_inputs=program.dram_inputs,
                dram_outputs=program.dram_outputs)
    assert str(info.value) == (
        "command 2 (Matmul) reads weight words 0..3 that command 1 (Load) writes, and nothing "
        "orders the two: set wait=True on command 2 or on a compute command between them")


def test_dma_commands_need_a_bus_interface():
    cfg = AcceleratorConfig(**SMALL)
    with pytest.raises(ProgramError, match="command 0 is a Load but the configuration has no "
                                           r"bus interface \(dram_width 0\)"):
        Program(cfg, [Load("act", 0, 0, 1), Halt()])
    with pytest.raises(ConfigError, match="dram_latency 5 needs a bus interface"):
        AcceleratorConfig(dram_latency=5)
    with pytest.raises(ConfigError, match="dram_width must be one of 0, 4, 8, 16, 32, 64"):
        AcceleratorConfig(dram_width=12, dram_latency=1)


# ---- the RTL in Amaranth's simulator (quick tier) -------------------------------------------

@pytest.mark.amaranth
@pytest.mark.parametrize("dataflow, width, latency, seed", [("ws", 8, 5, 1), ("os", 16, 37, 2)])
def test_rtl_pysim_agrees(dataflow, width, latency, seed):
    from qsim.cosim.dram import run_pysim_dram
    from qsim.cosim.runner import compare

    rng = np.random.default_rng(seed)
    cfg = _cfg(width=width, latency=latency, dataflow=dataflow, max_burst=4, dma_outstanding=2)
    a, b = _gemm(rng, cfg, 9)
    program = compile_gemm_dram(cfg, a, b)
    rtl = run_pysim_dram(program)
    report = compare(program, rtl)
    assert report.agrees, report.to_dict()
    np.testing.assert_array_equal(rtl.outputs["C"], a @ b)


@pytest.mark.amaranth
@pytest.mark.parametrize("load, code", [({"dram_addr": 0x104}, "misaligned"),
                                        ({"dram_addr": 0x3FF0}, "bus"),
                                        ({"memory": "weight", "dram_addr": 0x4000}, "bus")])
def test_rtl_and_model_stop_at_the_same_command(load, code):
    from qsim.cosim.dram import run_pysim_dram

    program, _, _ = _one_matmul(_cfg(), **load)
    with pytest.raises(DmaFault) as info:
        execute(program)
    rtl = run_pysim_dram(program, timeout_cycles=2000)
    assert rtl.error
    assert (rtl.error_code, rtl.error_cmd) == (ERROR_CODES[code], info.value.command)


# ---- Verilator through the front door (AXI4-Lite registers, DRAM model) -------------------

@pytest.mark.verilator
@pytest.mark.parametrize("rows, cols, width, dataflow, seed", [
    (4, 6, 4, "ws", 10), (4, 6, 16, "os", 11), (8, 8, 8, "ws", 12), (8, 8, 16, "os", 13)])
def test_verilator_random_gemms_agree(rows, cols, width, dataflow, seed):
    from qsim.cosim.runner import compare, run_programs

    rng = np.random.default_rng(seed)
    base = _cfg(rows, cols, width, 1, dataflow=dataflow)
    programs, expected = [], []
    for i, latency in enumerate((1, 200, *(int(x) for x in rng.integers(2, 200, 3)))):
        a, b = _gemm(rng, base)
        programs.append(compile_gemm_dram(base.replace(dram_latency=latency), a, b, name=f"g{i}"))
        expected.append(a @ b)
    # one simulator run per latency-independent build: the latency is an input of the DRAM
    # model, so every program shares the Verilator model
    for program, want in zip(programs, expected):
        rtl = run_programs([program])[0]
        report = compare(program, rtl)
        assert report.agrees, (program.config.dram_latency, report.to_dict())
        assert report.counter_diffs == {}
        np.testing.assert_array_equal(rtl.outputs["C"], want)
        assert rtl.counters["dram_reads"] > 0 and rtl.counters["dram_writes"] > 0


@pytest.mark.verilator
def test_verilator_stops_at_the_faulting_command():
    from qsim.cosim.runner import run_programs

    program, _, _ = _one_matmul(_cfg(4, 6, 4, 1, dataflow="ws"), dram_addr=0x3FF0)
    with pytest.raises(DmaFault) as info:
        execute(program)
    rtl = run_programs([program], timeout_cycles=5000)[0]
    assert rtl.error
    assert (rtl.error_code, rtl.error_cmd) == (ERROR_CODES["bus"], info.value.command)


@pytest.mark.verilator
def test_network_estimate_cycles_are_the_rtl_cycles_with_dram():
    """qsim estimate's per-layer cycles with a bus interface (DRAM-bound layers included) are
    what the RTL measures for the same GEMMs run from DRAM."""
    from qsim.cosim.runner import run_programs
    from qsim.nn.estimate import estimate_gemms
    from qsim.nn.graph import GemmShape

    cfg = _cfg(4, 6, 4, 150, act_mem_words=64, acc_mem_words=48)  # slow DRAM, small memories
    shapes = [("fc", "linear", GemmShape(m=3, k=40, n=13)),        # one row block, DRAM-bound
              ("conv", "conv", GemmShape(m=30, k=9, n=7))]         # several row blocks
    est = estimate_gemms("layers", shapes, cfg)
    rng = np.random.default_rng(5)
    for layer, (_, _, g) in zip(est.layers, shapes):
        a = rng.integers(-128, 128, (g.m, g.k))
        b = rng.integers(-128, 128, (g.k, g.n))
        program = compile_gemm_dram(cfg, a, b)
        rtl = run_programs([program])[0]
        assert rtl.counters["cycles"] == layer.cycles
        assert rtl.counters["dram_reads"] + rtl.counters["dram_writes"] == layer.dram_bytes
        np.testing.assert_array_equal(rtl.outputs["C"], a @ b)
    assert est.layers[1].cycles > 0 and program.meta["dram_plan"].blocks > 1


@pytest.mark.amaranth
@pytest.mark.parametrize("dataflow, requant, seed", [("ws", "float32", 1), ("os", "fixed-point", 2)])
def test_rtl_pysim_requantizes_from_dram_in_blocks(dataflow, requant, seed):
    """A GEMM from DRAM whose rows take several blocks, requantized on chip, Y stored to DRAM."""
    from qsim.cli import _gemm_requant
    from qsim.cosim.dram import run_pysim_dram
    from qsim.cosim.runner import compare
    from qsim.model import reference_gemm

    rng = np.random.default_rng(seed)
    cfg = _cfg(width=8, latency=9, dataflow=dataflow, requant=requant, act_mem_words=40,
               acc_mem_words=32, max_burst=4)
    a = rng.integers(-128, 128, (10, 7))
    b = rng.integers(-128, 128, (7, 14))
    product = reference_gemm(a, b, 32)
    rq = _gemm_requant(cfg, product, seed)
    program = compile_gemm_dram(cfg, a, b, requant=rq)
    assert program.meta["dram_plan"].blocks >= 2
    rtl = run_pysim_dram(program)
    report = compare(program, rtl)
    assert report.agrees, report.to_dict()
    np.testing.assert_array_equal(rtl.outputs["C"], product)
    np.testing.assert_array_equal(rtl.outputs["Y"], rq.reference(cfg, product))
