"""Co-simulation results, the build cache and child processes (quick tier: no Verilator build).

The simulator and the C++ build are replaced by fakes here; tests/cosim/test_verilator.py
checks the same guarantees on the real simulator.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qsim.compile import compile_gemm
from qsim.config import AcceleratorConfig
from qsim.cosim import build as build_mod
from qsim.cosim import procs
from qsim.cosim import runner as runner_mod
from qsim.cosim.words import pack_words
from qsim.errors import ConfigError, SimulationError

ROOT = Path(__file__).resolve().parents[2]
CFG = AcceleratorConfig(rows=2, cols=2, act_mem_words=16, weight_mem_words=16,
                        acc_mem_words=16, cmd_mem_words=8)


def _program(cfg=CFG):
    return compile_gemm(cfg, np.array([[1, 2], [3, 4]]), np.array([[5, 6], [7, 8]]))


# ---- helpers: a fake build and a fake simulator ------------------------------------------

class _Marker:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled"))


def _model_results(spec: dict, programs) -> list[dict]:
    from qsim.model import execute
    from qsim.timing import simulate_timing

    out = []
    for program, job in zip(programs, spec["jobs"]):
        acc = execute(program).memories["acc"][: job["reads"]["acc"]]
        out.append({"status": "ok", "counters": simulate_timing(program).counters(), "error": 0,
                    "memories": {"acc": pack_words(acc, program.config.acc_bits)}, "load_s": 0.0,
                    "sim_s": 0.001, "read_s": 0.0})
    return out


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    """ensure_build returns a build folder without running Verilator."""
    def fake(config, waves=False, flavor="cocotb"):
        return build_mod.CosimBuild(config, "k" * 20, tmp_path / "build", waves, 0.0, flavor)

    monkeypatch.setattr(build_mod, "ensure_build", fake)


def _fake_simulator(monkeypatch, behaviour):
    """Replace the simulator launch; ``behaviour(spec, results_path, log)`` plays the testbench."""
    calls = []

    def fake(build, exchange, log, env, waves_file):
        spec = json.loads(Path(env["QSIM_COSIM_JOBS"]).read_text())
        calls.append({"exchange": exchange, "spec": spec})
        behaviour(spec, Path(env["QSIM_COSIM_RESULTS"]), log)

    monkeypatch.setattr(runner_mod, "_simulate", fake)
    return calls


def _plant_stale_and_malicious(directory: Path, marker: Path) -> None:
    """What an earlier run (or an attacker) may have left in a shared --waves DIR."""
    directory.mkdir(parents=True, exist_ok=True)
    stale = [{"status": "ok", "counters": {"cycles": 5}, "error": 0, "memories": {"acc": [0]},
              "load_s": 0, "sim_s": 0, "read_s": 0}]
    for name in ("results.pkl", "jobs.pkl"):
        (directory / name).write_bytes(pickle.dumps(_Marker(marker)))
    (directory / "results.json").write_text(json.dumps({"run_id": "0" * 32, "complete": True,
                                                        "results": stale}))


# ---- 1. results come only from the simulation that just ran ------------------------------

def test_failed_simulation_with_stale_results_in_dir_is_an_error(monkeypatch, tmp_path, fake_build):
    work, marker = tmp_path / "waves", tmp_path / "marker"
    _plant_stale_and_malicious(work, marker)

    def crash(spec, results, log):
        log.write_text("ERROR cocotb: test run_jobs failed\nKeyError: 'bogus'\n")

    calls = _fake_simulator(monkeypatch, crash)
    with pytest.raises(SimulationError) as exc:
        runner_mod.run_programs([_program()], keep_dir=work)
    assert str(exc.value) == (
        "the simulation ended without writing its results; last lines of the simulator's log:\n"
        "ERROR cocotb: test run_jobs failed\nKeyError: 'bogus'")
    assert not marker.exists()
    # the exchange folder was private to the run, not the user's folder, and is gone
    assert calls[0]["exchange"] != work and not calls[0]["exchange"].exists()
    assert sorted(p.name for p in work.iterdir()) == ["jobs.pkl", "results.json", "results.pkl", "sim.log"]


def test_cli_reports_a_failed_simulation_as_one_error_not_a_verdict(monkeypatch, tmp_path, capsys,
                                                                    fake_build):
    from qsim.cli import main

    work, marker = tmp_path / "waves", tmp_path / "marker"
    _plant_stale_and_malicious(work, marker)
    _fake_simulator(monkeypatch, lambda spec, results, log: log.write_text("Segmentation fault\n"))
    code = main(["cosim", "--rows", "2", "--cols", "2", "--m", "2", "--k", "2", "--n", "2",
                 "--waves", str(work)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err == ("qsim: error: the simulation ended without writing its results; last lines "
                            "of the simulator's log:\nSegmentation fault\n")
    assert not marker.exists()


def test_planted_pickles_are_never_loaded_and_results_are_the_runs_own(monkeypatch, tmp_path, fake_build):
    work, marker = tmp_path / "waves", tmp_path / "marker"
    _plant_stale_and_malicious(work, marker)
    program = _program()

    def good(spec, results, log):
        results.write_text(json.dumps({"run_id": spec["run_id"], "complete": True,
                                       "results": _model_results(spec, [program])}))

    _fake_simulator(monkeypatch, good)
    (rtl,) = runner_mod.run_programs([program], keep_dir=work)
    assert rtl.outputs["C"].tolist() == [[19, 22], [43, 50]]
    assert rtl.counters["cycles"] == runner_mod.compare(program, rtl).model_cycles
    assert not marker.exists()
    assert "import pickle" not in "".join(p.read_text() for p in (ROOT / "qsim" / "cosim").glob("*.py"))


def test_two_sequential_runs_sharing_a_dir_each_get_their_own_results(monkeypatch, tmp_path, fake_build):
    work = tmp_path / "shared"
    first = compile_gemm(CFG, np.array([[1]]), np.array([[2]]), name="first")
    second = compile_gemm(CFG, np.array([[3, 1]]), np.array([[4], [5]]), name="second")
    seen = []

    def good(spec, results, log):
        seen.append(spec["run_id"])
        program = {"first": first, "second": second}[spec["jobs"][0]["name"]]
        results.write_text(json.dumps({"run_id": spec["run_id"], "complete": True,
                                       "results": _model_results(spec, [program])}))

    _fake_simulator(monkeypatch, good)
    assert runner_mod.run_programs([first], keep_dir=work)[0].outputs["C"].tolist() == [[2]]
    assert runner_mod.run_programs([second], keep_dir=work)[0].outputs["C"].tolist() == [[17]]
    assert len(set(seen)) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", s) for s in seen)


@pytest.mark.parametrize("write, message", [
    (lambda spec, path: path.write_text(json.dumps({"run_id": "f" * 32, "complete": True, "results": []})),
     "the results file belongs to another run"),
    (lambda spec, path: path.write_text('{"run_id": "' + spec["run_id"] + '", "complete": true, "resu'),
     "the simulation's results file is incomplete or malformed"),
    (lambda spec, path: path.write_text(json.dumps({"run_id": spec["run_id"], "complete": True,
                                                    "results": [{"status": "ok"}]})),
     "the simulation's results file is incomplete or malformed"),
    (lambda spec, path: path.write_text(json.dumps({"run_id": spec["run_id"], "complete": True,
                                                    "results": []})),
     "the simulation returned 0 results for 1 programs"),
])
def test_foreign_partial_or_short_results_are_errors(monkeypatch, tmp_path, fake_build, write, message):
    def behaviour(spec, results, log):
        log.write_text("end of log\n")
        write(spec, results)

    _fake_simulator(monkeypatch, behaviour)
    with pytest.raises(SimulationError) as exc:
        runner_mod.run_programs([_program()])
    assert str(exc.value) == f"{message}; last lines of the simulator's log:\nend of log"


@pytest.mark.parametrize("value, message", [
    (0, "timeout_cycles must be between 1 and 1000000000000, not 0"),
    (-5, "timeout_cycles must be between 1 and 1000000000000, not -5"),
    (10**12 + 1, "timeout_cycles must be between 1 and 1000000000000, not 1000000000001"),
    ("100", "timeout_cycles must be an int, not '100'"),
    (True, "timeout_cycles must be an int, not True"),
    (2.5, "timeout_cycles must be an int, not 2.5"),
])
def test_timeout_is_validated_before_anything_runs(monkeypatch, value, message):
    def must_not_build(*args, **kwargs):
        raise AssertionError("built or launched despite a bad timeout")

    monkeypatch.setattr(build_mod, "ensure_build", must_not_build)
    monkeypatch.setattr(runner_mod, "_simulate", must_not_build)
    with pytest.raises(ConfigError) as exc:
        runner_mod.run_programs([_program()], timeout_cycles=value)
    assert str(exc.value) == message
    from qsim.cosim.native import run_native

    with pytest.raises(ConfigError) as exc:
        run_native(_program(), timeout_cycles=value)
    assert str(exc.value) == message


def test_largest_timeout_is_accepted():
    assert runner_mod.check_timeout_cycles(10**12) == 10**12
    assert runner_mod.check_timeout_cycles(np.int64(7)) == 7


def test_keep_dir_that_is_a_file_is_a_config_error(tmp_path, fake_build):
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(ConfigError) as exc:
        runner_mod.run_programs([_program()], keep_dir=target)
    assert str(exc.value) == f"cannot write the run's files to {target}: File exists"


# ---- 2. the build cache -------------------------------------------------------------------

@pytest.fixture
def cache(monkeypatch, tmp_path):
    root = tmp_path / "cache"
    monkeypatch.setenv("QSIM_CACHE_DIR", str(root))
    return root


@pytest.fixture
def fake_compiler(monkeypatch):
    """Replace Verilog export and the C++ build; ``state`` controls and counts them."""
    state = {"calls": 0, "code": 0, "binary": b"\x7fELF" + bytes(996)}

    def write_sources(config, directory):
        top = directory / "qsim_top.v"
        top.write_text("module qsim_top; endmodule\n")
        return top, []

    def build(directory, top, controls, waves, log):
        state["calls"] += 1
        log.write_text("".join(f"log line {i}\n" for i in range(40)))
        if state["code"] == 0:
            binary = directory / "sim_build" / "qsim_harness"
            binary.parent.mkdir()
            binary.write_bytes(state["binary"])
        return state["code"]

    monkeypatch.setattr(build_mod, "_write_sources", write_sources)
    monkeypatch.setattr(build_mod, "_build_cocotb", build)
    return state


def _progress(what: str, directory: Path, suffix: str = "", outcome: str = r"done in \d+\.\d s") -> str:
    return (rf"qsim: {what} the Verilator model \(cocotb\) for 2x2, config {CFG.stable_hash()}, "
            rf"in {re.escape(str(directory))}{re.escape(suffix)} \.\.\. {outcome}\n")


def test_build_prints_one_progress_line_and_a_hit_is_silent(cache, fake_compiler, capsys):
    first = build_mod.ensure_build(CFG)
    err = capsys.readouterr().err
    assert re.fullmatch(_progress("building", first.directory), err), err
    assert first.directory.parent == cache and first.directory.name == f"cocotb-{first.key}"
    again = build_mod.ensure_build(CFG)
    assert capsys.readouterr().err == ""
    assert (again.directory, again.build_s, fake_compiler["calls"]) == (first.directory, 0.0, 1)
    stamp = json.loads((first.directory / "BUILD_OK.json").read_text())
    assert stamp["binary_size"] == 1000 and stamp["key"] == first.key


@pytest.mark.parametrize("damage, reason", [
    (lambda b: b.unlink(), "sim_build/qsim_harness is missing"),
    (lambda b: b.write_bytes(b.read_bytes()[:10]), "sim_build/qsim_harness has 10 bytes instead of 1000"),
    (lambda b: b.write_bytes(b"\x00" * 1000),
     "sim_build/qsim_harness differs from the binary that was built (SHA-256)"),
    (lambda b: (b.parent.parent / "BUILD_OK.json").write_text("{"), "BUILD_OK.json is unreadable"),
])
def test_damaged_cached_binary_is_detected_and_rebuilt(cache, fake_compiler, capsys, damage, reason):
    build = build_mod.ensure_build(CFG)
    damage(build.binary)
    capsys.readouterr()
    assert build_mod.cached_build(CFG) is None
    again = build_mod.ensure_build(CFG)
    err = capsys.readouterr().err
    assert re.fullmatch(_progress("rebuilding", build.directory, f" ({reason})"), err), err
    assert fake_compiler["calls"] == 2 and again.build_s > 0
    assert again.binary.read_bytes() == fake_compiler["binary"]
    assert build_mod.cached_build(CFG) == build_mod.CosimBuild(CFG, build.key, build.directory, False, 0.0)


def test_unfinished_build_is_never_used(cache, fake_compiler, capsys):
    key = build_mod.build_key(CFG)
    half = cache / f"cocotb-{key}"
    (half / "sim_build").mkdir(parents=True)
    (half / "sim_build" / "qsim_harness").write_bytes(b"half written")
    assert build_mod.cached_build(CFG) is None
    build = build_mod.ensure_build(CFG)
    err = capsys.readouterr().err
    assert re.fullmatch(_progress("rebuilding", half, " (a previous build was never finished)"), err), err
    assert build.binary.read_bytes() == fake_compiler["binary"] and fake_compiler["calls"] == 1


def test_failed_build_keeps_its_log_outside_the_removed_folder(cache, fake_compiler, capsys):
    fake_compiler["code"] = 2
    with pytest.raises(SimulationError) as exc:
        build_mod.ensure_build(CFG)
    key = build_mod.build_key(CFG)
    kept = cache / f"cocotb-{key}.failed.log"
    tail = "\n".join(f"log line {i}" for i in range(10, 40))
    assert str(exc.value) == (f"the Verilator build of {CFG.describe()} failed (exit 2); full log: "
                              f"{kept}; last lines:\n{tail}")
    assert kept.read_text().endswith("log line 39\n")
    assert not (cache / f"cocotb-{key}").exists()
    err = capsys.readouterr().err
    assert re.fullmatch(_progress("building", cache / f"cocotb-{key}", outcome=r"failed after \d+\.\d s"), err)


def test_cache_dir_that_is_a_file_is_one_clear_error(monkeypatch, tmp_path):
    path = tmp_path / "cache-file"
    path.write_text("")
    monkeypatch.setenv("QSIM_CACHE_DIR", str(path))
    with pytest.raises(ConfigError) as exc:
        build_mod.ensure_build(CFG)
    assert str(exc.value) == (f"cannot use the build cache directory {path} (set QSIM_CACHE_DIR to a "
                              f"writable directory): it is not a directory")
    monkeypatch.setenv("QSIM_CACHE_DIR", str(path / "below"))
    with pytest.raises(ConfigError) as exc:
        build_mod.ensure_build(CFG)
    assert str(exc.value) == (f"cannot use the build cache directory {path / 'below'} (set "
                              f"QSIM_CACHE_DIR to a writable directory): Not a directory")


def test_read_only_cache_dir_is_one_clear_error(monkeypatch, tmp_path):
    path = tmp_path / "read-only"
    path.mkdir()
    path.chmod(0o555)
    immutable = False
    try:
        try:
            (path / "probe").write_text("")
        except OSError as exc:
            reason = exc.strerror
        else:  # root ignores the mode; an immutable folder stops root too
            (path / "probe").unlink()
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                pytest.skip("cannot make a folder unwritable for this user")
            immutable = True
            reason = "Operation not permitted"
        monkeypatch.setenv("QSIM_CACHE_DIR", str(path))
        with pytest.raises(ConfigError) as exc:
            build_mod.ensure_build(CFG)
        assert str(exc.value) == (f"cannot use the build cache directory {path} (set QSIM_CACHE_DIR "
                                  f"to a writable directory): {reason}")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o755)


def test_cache_lock_symlink_is_not_followed(cache, fake_compiler, tmp_path):
    cache.mkdir()
    key = build_mod.build_key(CFG)
    target = tmp_path / "victim"
    lock = cache / f"cocotb-{key}.lock"
    lock.symlink_to(target)
    with pytest.raises(ConfigError) as exc:
        build_mod.ensure_build(CFG)
    assert str(exc.value) == (f"the build cache lock {lock} is a symbolic link; qsim does not follow "
                              f"it (remove it)")
    assert not target.exists() and fake_compiler["calls"] == 0


def test_cache_root_follows_the_documented_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("QSIM_CACHE_DIR", str(tmp_path / "a"))
    assert build_mod.cache_root() == tmp_path / "a"
    monkeypatch.setenv("QSIM_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build_mod.cache_root() == tmp_path / "xdg" / "qsim"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build_mod.cache_root() == tmp_path / "home" / ".cache" / "qsim"


def test_build_key_ignores_only_what_does_not_shape_the_verilog():
    base = build_mod.build_key(CFG)
    assert build_mod.NOT_IN_VERILOG == ("clock_mhz", "dram_latency")
    assert build_mod.build_key(CFG.replace(clock_mhz=733.0)) == base
    bus = CFG.replace(dram_width=8, dram_latency=3, dram_capacity=4096)
    assert build_mod.build_key(bus.replace(dram_latency=200)) == build_mod.build_key(bus) != base
    assert build_mod.build_key(bus.replace(dram_width=16)) != build_mod.build_key(bus)
    assert build_mod.build_key(CFG.replace(acc_mem_words=32)) != base
    assert build_mod.build_key(CFG.replace(acc_bits=16)) != base
    assert build_mod.build_key(CFG, waves=True) != base
    assert build_mod.build_key(CFG, flavor="native") != base


# ---- 3. child processes never outlive qsim ----------------------------------------------

def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def test_interrupted_child_group_is_terminated(monkeypatch, tmp_path):
    groups = []

    def interrupt(proc):
        groups.append(proc.pid)
        deadline = time.monotonic() + 10
        while len(_group_members(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # the shell and its background sleep are both running
        raise KeyboardInterrupt

    monkeypatch.setattr(procs, "on_start", interrupt)
    with pytest.raises(KeyboardInterrupt):
        procs.run_process(["sh", "-c", "sleep 60 & sleep 60; wait"])
    (pgid,) = groups
    assert pgid != os.getpgid(0)  # its own group, so Ctrl-C and our kill reach only it
    assert _group_members(pgid) == []
    assert procs.live_groups() == []


def test_sigterm_stops_qsim_and_its_children(tmp_path):
    """A qsim process killed with SIGTERM stops the group it started and exits 143."""
    script = (
        "import sys; from qsim.cosim import procs\n"
        "procs.on_start = lambda p: print(p.pid, flush=True)\n"
        "procs.run_process(['sh', '-c', 'sleep 60 & sleep 60; wait'])\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pgid = int(child.stdout.readline())
    deadline = time.monotonic() + 10
    while len(_group_members(pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 143
    assert _group_members(pgid) == []
