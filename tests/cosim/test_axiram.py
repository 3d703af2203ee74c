"""The accelerator's AXI4 master (its DMA engine) against a third-party AXI slave:
cocotbext-axi's ``AxiRam``.

The co-simulation's cycle-exact comparisons use qsim's own DRAM model in RTL
(:mod:`rtl.dram_model`), whose latency is a run-time input; this test shows that the DMA
engine also works against an independent AXI4 slave model. It builds the bare accelerator
(``generate_verilog(config, bench=False)``, top ``qsim_top``) with Verilator in ``tmp_path``,
without the harness (cocotb drives the clock), and runs tests/cosim/axiram_tb.py: GEMM
programs from DRAM of random shapes, checked bit for bit against the bit-accurate model, with
the DMA byte counters equal to the timing model's, once against a plain AxiRam (whose
timing is that of qsim's DRAM model at latency 1: the cycles equal the timing model's too) and
once with the AxiRam stalling every channel at random, while a monitor checks the master's side of the
AXI handshakes (valid held with a stable payload until ready, no burst across 4 KiB).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from qsim.config import AcceleratorConfig

HERE = Path(__file__).resolve().parent
TB_MODULE = "axiram_tb"
#: The cocotb tests of TB_MODULE, in order.
TESTS = {"gemms_against_axiram": "AxiRam ready whenever it can be",
         "gemms_against_axiram_with_stalls": "AxiRam stalling every channel at random"}

#: 4 x 4 array, 8-byte bus, bursts of at most 4 beats (32 bytes), 4 in flight: every
#: transfer of more than 32 bytes takes several bursts, several outstanding.
CONFIG = AcceleratorConfig(rows=4, cols=4, act_mem_words=64, weight_mem_words=64,
                           acc_mem_words=64, cmd_mem_words=128, param_mem_words=8,
                           dram_width=8, dram_latency=1, dram_capacity=1 << 14,
                           max_burst=4, dma_outstanding=4)

#: Verilator options: those of qsim's builds without --timing (the clock comes from cocotb).
BUILD_ARGS = ("-O3", "--x-assign", "fast", "--x-initial", "fast", "-Wno-fatal")


def _shapes(rng: np.random.Generator) -> list[list[int]]:
    """A small GEMM, one of 9..20 in every dimension (several bursts per transfer, several
    row blocks or weight tiles), and one of any shape up to 20."""
    return [[int(x) for x in rng.integers(1, 9, 3)],
            [int(x) for x in rng.integers(9, 21, 3)],
            [int(x) for x in rng.integers(1, 21, 3)]]


def _public_ports_vlt() -> str:
    """Verilator control file making the top level's ports, and only them, reachable
    through VPI (the clock, reset, host pins, counters, and both buses)."""
    from qsim.hw import COUNTERS
    from rtl.export import TOP_NAME

    names = ["clk", "rst", "start", "busy", "done", "error", "irq", *COUNTERS, "csr__*", "mem__*"]
    return "`verilator_config\n" + "".join(
        f'public_flat_rw -module "{TOP_NAME}" -var "{name}"\n' for name in names)


def _build(directory: Path) -> tuple[object, Path]:
    """Verilator build of ``qsim_top`` for CONFIG in ``directory``; returns the runner and
    the build folder."""
    from qsim.cosim.build import _reuse_runtime, _verilator_runner, usable_cache_root
    from qsim.cosim.toolchain import activate
    from rtl.export import TOP_NAME, generate_verilog

    activate()
    top = directory / f"{TOP_NAME}.v"
    top.write_text(generate_verilog(CONFIG, bench=False))
    waivers = directory / "verilator.vlt"
    shutil.copyfile(HERE.parents[1] / "rtl" / "verilator.vlt", waivers)
    public = directory / "public.vlt"
    public.write_text(_public_ports_vlt())
    runner = _verilator_runner()  # cocotb's, without --public-flat-rw: only the ports are used
    root = usable_cache_root()  # Verilator's runtime objects are compiled once and kept there
    runner.before_make = lambda cmd, cwd, env, log: _reuse_runtime(cmd, cwd, env, log, root)
    build_dir = directory / "sim_build"
    runner.build(sources=[waivers, public, top], hdl_toplevel=TOP_NAME, build_dir=build_dir,
                 build_args=list(BUILD_ARGS), timescale=("1ns", "1ps"), always=True,
                 log_file=directory / "build.log")
    return runner, build_dir


@pytest.mark.verilator
def test_dma_works_against_cocotbext_axi_axiram(tmp_path, rng):
    from cocotb_tools.check_results import get_results

    from rtl.export import TOP_NAME

    shapes = _shapes(rng)
    seed = int(rng.integers(1 << 31))
    t0 = time.perf_counter()
    runner, build_dir = _build(tmp_path)
    built = time.perf_counter() - t0

    report_file = tmp_path / "runs.json"
    junit = tmp_path / "results.xml"
    log = tmp_path / "sim.log"
    runner.qsim_env = {
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        "QSIM_AXIRAM_CONFIG": CONFIG.to_json(),
        "QSIM_AXIRAM_SHAPES": json.dumps(shapes),
        "QSIM_AXIRAM_SEED": str(seed),
        "QSIM_AXIRAM_REPORT": str(report_file),
    }
    try:
        runner.test(hdl_toplevel=TOP_NAME, hdl_toplevel_lang="verilog", test_module=TB_MODULE,
                    build_dir=build_dir, test_dir=tmp_path, log_file=log,
                    results_xml=str(junit))
    except (RuntimeError, SystemExit) as exc:
        pytest.fail(f"the simulator failed ({exc}):\n{log.read_text(errors='replace')[-4000:]}")
    ran = time.perf_counter() - t0 - built

    tail = log.read_text(errors="replace")[-4000:]
    tests, failed = get_results(junit)
    cases = [case.get("name") for case in ET.parse(junit).iter("testcase")]
    assert (tests, failed) == (len(TESTS), 0), f"shapes {shapes}, seed {seed}:\n{tail}"
    assert cases == list(TESTS), cases
    report = json.loads(report_file.read_text())
    assert list(report) == list(TESTS), report
    print(f"\nAxiRam: build {built:.1f} s, simulation {ran:.1f} s")
    for test, runs in report.items():
        assert [run["shape"] for run in runs] == shapes, runs
        # the traffic was what the test is for: many bursts, several reads in flight
        assert all(run["read_bursts"] > run["loads"] + 1 for run in runs), runs
        assert any(run["write_bursts"] > run["stores"] for run in runs), runs
        assert max(run["max_reads_in_flight"] for run in runs) > 1, runs
        print(f" {TESTS[test]}:")
        if test == "gemms_against_axiram":
            # AxiRam (this cocotbext-axi) times its answers as qsim's DRAM model does at
            # latency 1, so the timing model holds cycle for cycle here too
            from importlib.metadata import version

            assert [run["rtl_cycles"] for run in runs] == [run["model_cycles"] for run in runs], \
                f"cocotbext-axi {version('cocotbext-axi')}: {runs}"
        for run in runs:
            print(f"  {run['name']}: {run['rtl_cycles']} cycles under AxiRam, timing model "
                  f"{run['model_cycles']} at latency {CONFIG.dram_latency}; "
                  f"{run['dram_reads']} bytes read in {run['read_bursts']} bursts, "
                  f"{run['dram_writes']} written in {run['write_bursts']}, "
                  f"at most {run['max_reads_in_flight']} reads in flight")
