"""Reliability of co-simulation and builds on the real simulator (slow tier).

The runs use the tiny-4x4 preset, whose build the CLI tests and the docs share; only the
interrupted build uses a fresh cache folder (and is stopped a few seconds in).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from qsim.compile import compile_gemm
from qsim.config import AcceleratorConfig, preset
from qsim.cosim import runner as runner_mod
from qsim.errors import SimulationError
from qsim.model import reference_gemm
from tests.cosim.test_reliability import _group_members

pytestmark = pytest.mark.verilator
CFG = preset("tiny-4x4")


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled"))


def _gemm(rng, m, k, n, name):
    a, b = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
    return compile_gemm(CFG, a, b, name=name), reference_gemm(a, b, CFG.acc_bits)


def test_failing_simulation_with_stale_and_planted_results_is_an_error(monkeypatch, tmp_path, rng):
    work, marker = tmp_path / "waves", tmp_path / "marker"
    program, ref = _gemm(rng, 9, 5, 6, "good")
    # a successful run leaves its files in the shared folder ...
    assert np.array_equal(runner_mod.run_programs([program], keep_dir=work)[0].outputs["C"], ref)
    # ... and someone plants the files the old runner unpickled
    for name in ("results.pkl", "jobs.pkl"):
        (work / name).write_bytes(pickle.dumps(_Marker(marker)))
    (work / "results.json").write_text(json.dumps({"complete": True, "results": []}))
    real_job = runner_mod._job

    def broken_job(program, timeout_cycles):
        job = real_job(program, timeout_cycles)
        job["images"]["bogus"] = [1]  # the testbench fails on an unknown memory
        return job

    monkeypatch.setattr(runner_mod, "_job", broken_job)
    with pytest.raises(SimulationError) as exc:
        runner_mod.run_programs([program], keep_dir=work)
    message = str(exc.value)
    assert message.startswith("the testbench failed (1 of 1 tests); last lines of the simulator's log:\n")
    assert "KeyError: 'bogus'" in (work / "sim.log").read_text()
    assert not marker.exists()


def test_runs_sharing_a_dir_each_get_their_own_results(tmp_path, rng):
    work = tmp_path / "shared"
    cases = [_gemm(rng, m, k, n, f"g{i}") for i, (m, k, n) in enumerate([(7, 3, 5), (2, 11, 9), (13, 4, 1)])]
    # sequential
    for program, ref in cases[:2]:
        assert np.array_equal(runner_mod.run_programs([program], keep_dir=work)[0].outputs["C"], ref)
    # concurrent, into the same folder
    outputs = {}

    def run(program):
        outputs[program.name] = runner_mod.run_programs([program], keep_dir=work)[0].outputs["C"]

    threads = [threading.Thread(target=run, args=(program,)) for program, _ in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outputs) == ["g0", "g1", "g2"]
    for program, ref in cases:
        assert np.array_equal(outputs[program.name], ref), program.name


def test_clock_does_not_shape_the_verilog():
    from qsim.cosim.build import NOT_IN_VERILOG
    from rtl.export import generate_verilog

    cfg = AcceleratorConfig(rows=2, cols=3, act_mem_words=8, weight_mem_words=8, acc_mem_words=8,
                            cmd_mem_words=4)
    assert NOT_IN_VERILOG == ("clock_mhz", "dram_latency")
    assert generate_verilog(cfg) == generate_verilog(cfg.replace(clock_mhz=1234.5))
    # the DRAM latency is an input of the simulated DRAM model, not a parameter of the design
    bus = cfg.replace(dram_width=8, dram_latency=3, dram_capacity=4096)
    assert generate_verilog(bus, bench=True) == generate_verilog(bus.replace(dram_latency=200),
                                                                 bench=True)


def _descendant_groups(pid: int) -> dict[int, str]:
    """Process groups led by direct children of ``pid``: {pgid: command name}."""
    groups = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, rest = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        if int(fields[1]) == pid and int(fields[2]) == int(entry.name):
            groups[int(entry.name)] = comm.split("(", 1)[1]
    return groups


def test_sigterm_during_a_build_leaves_no_compiler_and_no_cache_entry(tmp_path):
    cache = tmp_path / "cache"
    script = ("from qsim.config import AcceleratorConfig\n"
              "from qsim.cosim.build import ensure_build\n"
              "ensure_build(AcceleratorConfig(rows=2, cols=3, act_mem_words=8, weight_mem_words=8, "
              "acc_mem_words=8, cmd_mem_words=4))\n")
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "QSIM_CACHE_DIR": str(cache)})
    groups: dict[int, str] = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and child.poll() is None:
        groups.update(_descendant_groups(child.pid))
        if "make" in groups.values():
            break
        time.sleep(0.05)
    assert "make" in groups.values(), groups  # the C++ compile is under way
    time.sleep(1.0)  # let make start the compilers
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 143
    err = child.stderr.read()
    assert err.startswith("qsim: building the Verilator model (cocotb) for 2x3, config ")
    assert " ... terminated after " in err and err.endswith(" s\n")
    for pgid in groups:
        assert _group_members(pgid) == [], f"{groups[pgid]} (group {pgid}) survived"
    # no build folder, no staged runtime objects: only the lock files stay
    assert all(p.name.endswith(".lock") for p in cache.iterdir()), sorted(p.name for p in cache.iterdir())
    env = {**os.environ, "QSIM_CACHE_DIR": str(cache)}
    check = subprocess.run([sys.executable, "-c",
                            "from qsim.config import AcceleratorConfig\n"
                            "from qsim.cosim.build import cached_build\n"
                            "print(cached_build(AcceleratorConfig(rows=2, cols=3, act_mem_words=8, "
                            "weight_mem_words=8, acc_mem_words=8, cmd_mem_words=4)))\n"],
                           capture_output=True, text=True, env=env)
    assert check.stdout == "None\n", check.stderr
