"""qsim.cocotb.Scoreboard without a simulator: a result made from the models agrees, and every
kind of corruption (an output element, a DRAM byte, the cycles, a counter, an error) fails
with a message that names it."""

from __future__ import annotations

import dataclasses

import pytest

from qsim.cocotb import RunResult, Scoreboard, ScoreboardMismatch
from qsim.compile_dram import compile_gemm_dram
from qsim.config import AcceleratorConfig
from qsim.program import ERROR_CODES, Halt, Load, Program

CFG = AcceleratorConfig(rows=4, cols=6, act_mem_words=256, weight_mem_words=256,
                        acc_mem_words=256, cmd_mem_words=128, dram_width=8, dram_latency=20,
                        dram_capacity=16384)


def _program(rng):
    a = rng.integers(-128, 128, size=(7, 9))
    b = rng.integers(-128, 128, size=(9, 5))
    return compile_gemm_dram(CFG, a, b, name="g"), a, b


def _perfect(board: Scoreboard) -> RunResult:
    """The result a correct RTL run would read back."""
    return RunResult(name=board.program.name, counters=dict(board.expected_counters), status=2,
                     error=False, error_code=0, error_cmd=0, dram=bytes(board.expected_dram),
                     outputs={k: v.copy() for k, v in board.expected_outputs.items()})


def test_a_result_equal_to_the_models_passes(rng):
    program, a, b = _program(rng)
    board = Scoreboard(program)
    assert (board.expected_outputs["C"] == a @ b).all()
    assert board.expected_cycles == board.expected_counters["cycles"] > 0
    result = _perfect(board)
    assert board.mismatches(result) == []
    board.check(result)


def test_a_wrong_output_element_fails_naming_it(rng):
    program, a, b = _program(rng)
    board = Scoreboard(program)
    result = _perfect(board)
    result.outputs["C"][2, 3] += 1
    with pytest.raises(ScoreboardMismatch) as info:
        board.check(result)
    message = str(info.value)
    want = int((a @ b)[2, 3])
    assert f"C[2, 3] = {want + 1} (expected {want})" in message
    assert "1 of 35 elements differ" in message
    assert isinstance(info.value, AssertionError)  # cocotb fails the test


def test_many_wrong_elements_are_listed_first_few(rng):
    program, _, _ = _program(rng)
    board = Scoreboard(program)
    result = _perfect(board)
    result.outputs["C"] = result.outputs["C"] + 1
    problems = board.mismatches(result)
    assert any("35 of 35 elements differ" in p and "and 30 more" in p for p in problems)


def test_dram_cycles_counters_and_errors_are_checked(rng):
    program, _, _ = _program(rng)
    board = Scoreboard(program)
    result = _perfect(board)
    dram = bytearray(result.dram)
    dram[5] ^= 0x40
    result.dram = bytes(dram)
    result.counters["cycles"] += 1
    result.counters["dram_reads"] -= 8
    result.error, result.error_code, result.error_cmd = True, ERROR_CODES["bus"], 3
    problems = board.mismatches(result)
    text = "\n".join(problems)
    assert f"DRAM: 1 of {len(board.expected_dram)} bytes differ: 0x5:" in text
    want = board.expected_counters["cycles"]
    assert f"cycles: {want + 1} (expected {want}, +1)" in text
    assert "counter dram_reads:" in text and "-8)" in text
    assert "ERROR_CODE 2 (bus), ERROR_CMD 0x3" in text
    assert len(problems) == 4
    # a short DRAM read-back is a mismatch too, never an index error
    short = dataclasses.replace(_perfect(board), dram=board.expected_dram[:10])
    assert any(p.startswith("DRAM:") for p in board.mismatches(short))
    missing = dataclasses.replace(_perfect(board), outputs={})
    # the assembled C and every DRAM chunk it is read from
    assert sorted(board.mismatches(missing)) == sorted(
        f"output {name}: missing from the result" for name in board.expected_outputs)
    assert "output C: missing from the result" in board.mismatches(missing)


def test_a_faulting_program_expects_its_error():
    bad = Program(config=CFG, commands=(Load("act", 4, 0, 1), Halt()), strict=False)
    board = Scoreboard(bad)
    assert board.fault is not None and board.fault.code == "misaligned"
    ok = RunResult(name="p", counters={}, status=6, error=True,
                   error_code=ERROR_CODES["misaligned"], error_cmd=0, dram=b"")
    board.check(ok)
    silent = dataclasses.replace(ok, error=False, error_code=0)
    with pytest.raises(ScoreboardMismatch, match="expected 3 \\(misaligned\\) at command 0x0"):
        board.check(silent)
