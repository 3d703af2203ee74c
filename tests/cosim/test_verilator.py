"""The RTL under Verilator + cocotb against the bit-accurate model and the timing model.

These tests build Verilator models (about 10 s each, cached per configuration under
$QSIM_CACHE_DIR) and form the slow tier: `pytest -m "not verilator"` skips them.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from qsim.compile import compile_gemm
from qsim.config import AcceleratorConfig, preset
from qsim.cosim.runner import compare, cosim_program, run_programs
from qsim.errors import SimulationError
from qsim.model import reference_gemm
from qsim.program import Halt, MatrixLayout, Matmul, Program

pytestmark = pytest.mark.verilator

# The presets the CLI tests, the docs and the default scenario also use, so that the suite
# shares their Verilator builds (a build per distinct Verilog; see the build-cache tests).
CONFIGS = {
    "4x4": preset("tiny-4x4"),
    "8x8": preset("default-8x8"),
}
PRIMES = [1, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79]


def _shapes(rng, count):
    """Random shapes in 1..80, a third of them made of primes only."""
    shapes = [(80, 80, 80), (1, 1, 1), (79, 1, 73)]
    while len(shapes) < count:
        if len(shapes) % 3 == 0:
            shapes.append(tuple(int(rng.choice(PRIMES)) for _ in range(3)))
        else:
            shapes.append(tuple(int(v) for v in rng.integers(1, 81, 3)))
    return shapes


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_random_gemms_bit_and_cycle_exact(rng, name):
    cfg = CONFIGS[name]
    shapes = _shapes(rng, 30)
    programs, refs = [], []
    for m, k, n in shapes:
        a = rng.integers(-128, 128, (m, k))
        b = rng.integers(-128, 128, (k, n))
        programs.append(compile_gemm(cfg, a, b, name=f"{m}x{k}x{n}"))
        refs.append(reference_gemm(a, b, cfg.acc_bits))
    results = run_programs(programs)
    total_elements = 0
    for program, ref, rtl in zip(programs, refs, results):
        report = compare(program, rtl)
        assert np.array_equal(rtl.outputs["C"], ref), program.name
        assert report.mismatches == 0 and report.acc_mismatches == 0, report.first_mismatches
        assert report.rtl_cycles == report.model_cycles, program.name
        assert report.counter_diffs == {}, (program.name, report.counter_diffs)
        total_elements += report.elements
    assert len(programs) == 30
    assert total_elements == sum(m * n for m, _, n in shapes)


@pytest.mark.full
@pytest.mark.parametrize("rows, cols", [(5, 7), (3, 11), (16, 16)])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_random_gemms_full_matrix(rng, rows, cols, precision):
    """Weight-stationary GEMMs on the rest of the matrix's sizes, int8 and int4."""
    cfg = AcceleratorConfig(rows=rows, cols=cols, input_format=precision, weight_format=precision,
                            act_mem_words=4096, weight_mem_words=4096, acc_mem_words=4096,
                            cmd_mem_words=1024)
    f = cfg.input_format
    programs, refs = [], []
    for m, k, n in _shapes(rng, 15):
        a, b = rng.integers(f.min, f.max + 1, (m, k)), rng.integers(f.min, f.max + 1, (k, n))
        programs.append(compile_gemm(cfg, a, b, name=f"{m}x{k}x{n}"))
        refs.append(reference_gemm(a, b, cfg.acc_bits))
    for program, ref, rtl in zip(programs, refs, run_programs(programs)):
        report = compare(program, rtl)
        assert np.array_equal(rtl.outputs["C"], ref), program.name
        assert report.agrees, (program.name, report.to_dict())


def test_random_command_streams(rng):
    cfg = AcceleratorConfig(rows=3, cols=5, act_mem_words=64, weight_mem_words=64,
                            acc_mem_words=32, cmd_mem_words=32)
    programs = []
    for i in range(20):
        commands = []
        for _ in range(int(rng.integers(1, 10))):
            n = int(rng.choice([1, 1, 2, 3, 9, 20]))
            commands.append(Matmul(int(rng.integers(0, 64 - n + 1)), int(rng.integers(0, 62)),
                                   int(rng.integers(0, 32 - n + 1)), n, bool(rng.integers(0, 2))))
        inputs = {
            "X": (MatrixLayout("act", 0, 64, 3, 3, 64), rng.integers(-128, 128, (64, 3))),
            "W": (MatrixLayout("weight", 0, 64, 5, 5, 64), rng.integers(-128, 128, (64, 5))),
        }
        programs.append(Program(cfg, (*commands, Halt()), inputs=inputs, name=f"stream{i}"))
    for program, rtl in zip(programs, run_programs(programs)):
        report = compare(program, rtl)
        assert report.agrees, (program.commands, report.to_dict())


def test_accumulator_wraps_in_rtl_as_in_model():
    cfg = AcceleratorConfig(rows=4, cols=4, acc_bits=16, act_mem_words=64, weight_mem_words=64,
                            acc_mem_words=64, cmd_mem_words=16)
    a = np.full((3, 12), -128)
    b = np.full((12, 2), -128)
    b[0, 1] = 127
    report = cosim_program(compile_gemm(cfg, a, b))
    assert report.agrees
    rtl = run_programs([compile_gemm(cfg, a, b)])[0]
    # column 0: 12 * 16384 = 196608 = 3 * 65536 -> 0
    # column 1: 11 * 16384 - 128 * 127 = 163968 = 2 * 65536 + 32896 -> 32896 - 65536 = -32640
    assert rtl.outputs["C"][:, 0].tolist() == [0, 0, 0]
    assert rtl.outputs["C"][:, 1].tolist() == [-32640] * 3


def test_timeout_is_reported():
    cfg = CONFIGS["4x4"]
    program = compile_gemm(cfg, np.ones((40, 40), dtype=int), np.ones((40, 40), dtype=int), name="slow")
    with pytest.raises(SimulationError, match=r"slow: the RTL did not raise done within 50 cycles \(busy=1\)"):
        run_programs([program], timeout_cycles=50)


def test_waveform_is_written(tmp_path):
    cfg = AcceleratorConfig(rows=2, cols=2, act_mem_words=16, weight_mem_words=16,
                            acc_mem_words=16, cmd_mem_words=8)
    program = compile_gemm(cfg, np.array([[1, 2], [3, 4]]), np.array([[5, 6], [7, 8]]))
    rtl = run_programs([program], waves=True, keep_dir=tmp_path)[0]
    assert rtl.outputs["C"].tolist() == [[19, 22], [43, 50]]
    vcd = tmp_path / "waves.vcd"
    assert rtl.extra["waves"] == str(vcd)
    text = vcd.read_text()
    assert "$enddefinitions" in text and " done " in text


def test_native_loop_agrees():
    from qsim.cosim.native import run_native

    cfg = CONFIGS["8x8"]
    rng = np.random.default_rng(5)
    program = compile_gemm(cfg, rng.integers(-128, 128, (50, 33)), rng.integers(-128, 128, (33, 20)))
    report = compare(program, run_native(program))
    assert report.agrees
    # first issue at cycle 4, 15 tiles of 50 rows back to back, R + C + 2 = 18 cycles to drain
    assert report.rtl_cycles == report.model_cycles == 4 + 15 * 50 + 18


@pytest.mark.parametrize("rows, cols, requant, precision", [
    (2, 2, "none", "int8"), (3, 7, "none", "int8"), (8, 8, "none", "int8"),
    (3, 7, "fixed-point", "int8"), (4, 4, "float32", "int8"), (5, 3, "float32", "int4")])
def test_generated_verilog_is_lint_clean(tmp_path, rows, cols, requant, precision):
    from qsim.cosim.toolchain import activate
    from rtl.export import generate_verilog

    chain = activate()
    cfg = AcceleratorConfig(rows=rows, cols=cols, act_mem_words=256, weight_mem_words=256,
                            acc_mem_words=256, cmd_mem_words=64, requant=requant,
                            input_format=precision, weight_format=precision)
    top = tmp_path / "qsim_top.v"
    top.write_text(generate_verilog(cfg))
    waivers = __import__("pathlib").Path(__file__).resolve().parents[2] / "rtl" / "verilator.vlt"
    done = subprocess.run([str(chain.binary), "--lint-only", "-Wall", str(waivers), str(top)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "%Warning" not in done.stderr
