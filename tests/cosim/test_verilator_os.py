"""The output-stationary RTL under Verilator + cocotb against the bit-accurate model and the
timing model (every counter), its utilization measured on the RTL, and its Verilog lint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from qsim.compile import compile_gemm
from qsim.config import AcceleratorConfig
from qsim.cosim.runner import compare, run_programs
from qsim.model import reference_gemm
from tests.os_cases import os_config, random_os_stream

pytestmark = pytest.mark.verilator


def _config(rows: int, cols: int, precision: str = "int8") -> AcceleratorConfig:
    return AcceleratorConfig(rows=rows, cols=cols, dataflow="os", input_format=precision,
                             weight_format=precision, act_mem_words=4096, weight_mem_words=4096,
                             acc_mem_words=4096, cmd_mem_words=1024)


def _check_random_gemms(rng, cfg, count: int, high: int = 60) -> None:
    f = cfg.input_format
    shapes = [(1, 1, 1), (cfg.rows, 1, cfg.cols), (high, high, high)]
    while len(shapes) < count:
        shapes.append(tuple(int(v) for v in rng.integers(1, high + 1, 3)))
    programs, refs = [], []
    for m, k, n in shapes:
        a = rng.integers(f.min, f.max + 1, (m, k))
        b = rng.integers(f.min, f.max + 1, (k, n))
        programs.append(compile_gemm(cfg, a, b, name=f"{m}x{k}x{n}"))
        refs.append(reference_gemm(a, b, cfg.acc_bits))
    for program, ref, rtl in zip(programs, refs, run_programs(programs)):
        report = compare(program, rtl)
        assert np.array_equal(rtl.outputs["C"], ref), program.name
        assert report.mismatches == 0 and report.acc_mismatches == 0, report.first_mismatches
        assert report.rtl_cycles == report.model_cycles, program.name
        assert report.counter_diffs == {}, (program.name, report.counter_diffs)


@pytest.mark.parametrize("rows, cols, precision", [(4, 4, "int8"), (3, 5, "int8"), (3, 5, "int4")])
def test_random_gemms_bit_and_cycle_exact(rng, rows, cols, precision):
    _check_random_gemms(rng, _config(rows, cols, precision), 12)


@pytest.mark.full
@pytest.mark.parametrize("rows, cols", [(8, 8), (5, 7), (3, 11), (16, 16)])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_random_gemms_full_matrix(rng, rows, cols, precision):
    _check_random_gemms(rng, _config(rows, cols, precision), 20, high=100)


def test_random_command_streams_with_requant(rng):
    cfg = os_config(3, 5, requant="fixed-point")
    programs = [random_os_stream(rng, cfg, 10, requants=True) for _ in range(12)]
    for program, rtl in zip(programs, run_programs(programs)):
        report = compare(program, rtl)
        assert report.agrees, (program.commands, report.to_dict())


def test_utilization_of_an_8x_gemm_measured_on_the_rtl(rng):
    """M = N = K = 8 x the array's dimensions on 4 x 4: at least 95 % of the peak on the RTL."""
    cfg = _config(4, 4)
    m = k = n = 32
    program = compile_gemm(cfg, rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n)))
    rtl = run_programs([program])[0]
    report = compare(program, rtl)
    assert report.agrees, report.to_dict()
    # 64 tiles of 32 steps back to back: 4 to start, 2R + C + 1 to drain the last one
    assert rtl.counters["cycles"] == 4 + 64 * 32 + 2 * 4 + 4 + 1 == 2065
    utilization = m * k * n / (cfg.macs_per_cycle * rtl.counters["cycles"])
    assert utilization >= 0.95 and report.utilization == pytest.approx(utilization)


@pytest.mark.parametrize("rows, cols, requant, precision", [
    (2, 2, "none", "int8"), (3, 7, "fixed-point", "int8"), (5, 3, "float32", "int4")])
def test_generated_verilog_is_lint_clean(tmp_path, rows, cols, requant, precision):
    from qsim.cosim.toolchain import activate
    from rtl.export import generate_verilog

    chain = activate()
    cfg = AcceleratorConfig(rows=rows, cols=cols, dataflow="os", act_mem_words=256,
                            weight_mem_words=256, acc_mem_words=256, cmd_mem_words=64,
                            requant=requant, input_format=precision, weight_format=precision)
    top = tmp_path / "qsim_top.v"
    text = generate_verilog(cfg)
    assert "qsim_os_array" in text and "qsim_systolic_array" not in text
    top.write_text(text)
    waivers = Path(__file__).resolve().parents[2] / "rtl" / "verilator.vlt"
    done = subprocess.run([str(chain.binary), "--lint-only", "-Wall", str(waivers), str(top)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "%Warning" not in done.stderr


@pytest.mark.full
@pytest.mark.parametrize("rows, cols", [(4, 4), (8, 8), (5, 7), (3, 11), (16, 16)])
@pytest.mark.parametrize("mode", ["fixed-point", "float32"])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_requant_streams_full_matrix(rng, rows, cols, mode, precision):
    """Output-stationary MATMUL/REQUANT streams, every size, unit and precision of the matrix."""
    cfg = os_config(rows, cols, precision, requant=mode)
    programs = [random_os_stream(rng, cfg, 10, requants=True) for _ in range(4)]
    for program, rtl in zip(programs, run_programs(programs)):
        report = compare(program, rtl)
        assert report.agrees, (program.commands, report.to_dict())
