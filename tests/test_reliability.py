"""What docs/reliability.md promises: safe output files, one-line errors with exit status 2,
null for what was not measured, and ``qsim run`` stopping cleanly on Ctrl-C or a time limit.

Everything here runs without Verilator: where ``qsim run`` needs RTL results, a fake
``run_programs`` returns what the model and the timing model predict.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import qsim.cosim.runner
import qsim.scenario
from qsim.cli import main
from qsim.cosim.result import RtlResult
from qsim.errors import ConfigError
from qsim.io import check_directory, json_text, open_output, read_text, write_output

ROOT = Path(__file__).resolve().parents[1]


def unprivileged(fn) -> None:
    """Run ``fn()`` in a forked child, as user ``nobody`` when the tests run as root.

    Root may write any file, so permission checks are exercised with root's rights dropped
    (CI runs as root); the child's assertions decide its exit status. The modules the child
    needs are imported first: ``nobody`` may not be allowed to read the Python installation.
    """
    import qsim.cli
    import qsim.cosim.build  # noqa: F401

    qsim.cli.build_parser()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            fn()
            status = 0
        except BaseException:
            import traceback

            os.write(2, traceback.format_exc().encode())  # fd 2: sys.stderr may be captured
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.fixture
def shared_dir():
    """A directory every user may enter (pytest's tmp_path is private to its owner)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="qsim-perm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# ----------------------------------------------------------------------------- safe writer

def test_new_file_gets_0666_less_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_output(tmp_path / "a.txt", "one")
        os.umask(0o002)
        write_output(tmp_path / "b.txt", b"two")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode) == 0o664
    assert (tmp_path / "a.txt").read_text() == "one" and (tmp_path / "b.txt").read_bytes() == b"two"
    assert _files(tmp_path) == ["a.txt", "b.txt"]


def test_existing_file_keeps_its_mode(tmp_path):
    path = tmp_path / "kept.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    write_output(path, "new")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert path.read_text() == "new"
    os.chmod(path, 0o604)
    write_output(path, "newer")
    assert (stat.S_IMODE(os.stat(path).st_mode), path.read_text()) == (0o604, "newer")


def test_symlink_target_is_written_and_the_link_kept(tmp_path):
    target = tmp_path / "real" / "out.txt"
    target.parent.mkdir()
    target.write_text("old")
    os.chmod(target, 0o600)
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    write_output(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new" and stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert _files(target.parent) == ["out.txt"] and _files(tmp_path) == ["link.txt", "real"]
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "real" / "created.txt")
    write_output(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "real" / "created.txt").read_text() == "made"


def test_fifo_is_written_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_output(fifo, b"through the pipe")
    reader.join(10)
    assert received == [b"through the pipe"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and _files(tmp_path) == ["pipe"]


def test_dev_null_stays_a_character_device():
    write_output("/dev/null", b"discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_failure_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with open_output(path) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("the producer failed")
    assert path.read_bytes() == b"previous" and _files(tmp_path) == ["out.bin"]
    with pytest.raises(ConfigError) as err:
        with open_output(path) as handle:
            handle.write(b"half")
            raise OSError(28, "No space left on device")
    assert str(err.value) == f"cannot write {path}: No space left on device"
    assert path.read_bytes() == b"previous" and _files(tmp_path) == ["out.bin"]


def test_a_read_only_file_is_not_replaced(shared_dir):
    path = shared_dir / "ro.txt"
    path.write_text("keep")
    path.chmod(0o444)

    def refused():
        with pytest.raises(ConfigError) as err:
            write_output(path, "new")
        assert str(err.value) == f"cannot write {path}: Permission denied"

    unprivileged(refused)
    assert path.read_text() == "keep" and _files(shared_dir) == ["ro.txt"]


def test_unwritable_targets(tmp_path):
    with pytest.raises(ConfigError) as err:
        write_output(tmp_path, b"x")
    assert str(err.value) == f"cannot write {tmp_path}: Is a directory"
    with pytest.raises(ConfigError) as err:
        write_output(tmp_path / "no" / "f.txt", b"x")
    assert str(err.value) == f"cannot write {tmp_path / 'no' / 'f.txt'}: No such file or directory ({tmp_path / 'no'})"


def test_read_text_reports_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("name = 'caf\xe9'".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        read_text(path, "scenario ")
    assert str(err.value) == f"cannot read scenario {path}: not UTF-8 text (byte 0xe9 at offset 11)"


def test_json_text_never_writes_nan_or_infinity():
    text = json_text({"a": float("inf"), "b": [float("nan"), -float("inf"), 1.5], "c": np.float32(2.0),
                      "d": np.int64(3), "e": (1, 2)})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {
        "a": None, "b": [None, None, 1.5], "c": 2.0, "d": 3, "e": [1, 2]}


# ----------------------------------------------------------------------------- qsim rtl -o

def test_rtl_output_to_dev_null_stdout_and_atomically(tmp_path, capsys, monkeypatch):
    code, out, err = cli(capsys, "rtl", "--preset", "tiny-4x4", "-o", "/dev/null")
    assert code == 0 and out == "" and err.startswith("wrote /dev/null (")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    code, out, _ = cli(capsys, "rtl", "--preset", "tiny-4x4", "-o", "-")
    assert code == 0 and "module qsim_top(" in out
    path = tmp_path / "top.v"
    path.write_text("// the previous Verilog\n")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code, out, err = cli(capsys, "rtl", "--preset", "tiny-4x4", "-o", path)
    assert (code, out, err) == (2, "", f"qsim: error: cannot write {path}: No space left on device\n")
    assert path.read_text() == "// the previous Verilog\n" and _files(tmp_path) == ["top.v"]


# ----------------------------------------------------------------------------- one-line errors

def _scenario(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def no_simulator(monkeypatch):
    """Fail the test if anything tries to build or launch the simulator."""
    import qsim.cosim.build

    def forbidden(*args, **kwargs):
        raise AssertionError("the simulator must not be built or launched")

    monkeypatch.setattr(qsim.cosim.runner, "run_programs", forbidden)
    monkeypatch.setattr(qsim.cosim.build, "ensure_build", forbidden)


GEMM = "[[gemm]]\nm = 2\nk = 3\nn = 4\n"


@pytest.mark.parametrize("argv, message", [
    (("cosim", "--m", "4", "--k", "4", "--n", "4", "--seed", "-1"), "--seed must be at least 0, not -1"),
    (("estimate", "--m", "4", "--k", "4", "--n", "4", "--seed", "-1"), "--seed must be at least 0, not -1"),
    (("cosim", "--m", "4", "--k", "4", "--n", "4", "--timeout-cycles", "0"),
     "--timeout-cycles must be between 1 and 1000000000000, not 0"),
    (("cosim", "--m", "4", "--k", "4", "--n", "4", "--timeout-cycles", "-7"),
     "--timeout-cycles must be between 1 and 1000000000000, not -7"),
    (("cosim", "--m", "4", "--k", "4", "--n", "4", "--timeout-cycles", str(10**12 + 1)),
     "--timeout-cycles must be between 1 and 1000000000000, not 1000000000001"),
    (("cosim", "--m", "4", "--k", "4", "--n", "4", "--native", "--waves", "w"),
     "--waves records through cocotb and cannot be combined with --native"),
    (("run", "s.toml", "--time-limit", "0"),
     "--time-limit must be a number of seconds above 0 and at most 1000000000, not 0.0"),
    (("run", "s.toml", "--time-limit", "nan"),
     "--time-limit must be a number of seconds above 0 and at most 1000000000, not nan"),
    (("cosim", "--rows", "eight", "--m", "1", "--k", "1", "--n", "1"),
     "argument --rows: invalid int value: 'eight' (see qsim cosim --help)"),
])
def test_option_errors_are_one_line_before_any_work(argv, message, capsys, no_simulator, tmp_path,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    _scenario(tmp_path, GEMM)
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors leave through SystemExit
        code = exc.code
    out, err = capsys.readouterr()
    assert (code, out, err) == (2, "", f"qsim: error: {message}\n")


def test_config_and_scenario_files_that_are_not_utf8(tmp_path, capsys):
    config = tmp_path / "cfg.json"
    config.write_bytes(b'{"rows": 4, "name": "\xff"}')
    code, out, err = cli(capsys, "estimate", "--config", config, "--m", "1", "--k", "1", "--n", "1")
    assert (code, out, err) == (2, "", f"qsim: error: cannot read {config}: not UTF-8 text "
                                       f"(byte 0xff at offset 21)\n")
    scenario = tmp_path / "s.toml"
    scenario.write_bytes(b"# \xc3\x28 not utf-8\n" + GEMM.encode())
    code, out, err = cli(capsys, "run", scenario)
    assert (code, out, err) == (2, "", f"qsim: error: cannot read scenario {scenario}: not UTF-8 text "
                                       f"(byte 0xc3 at offset 2)\n")


@pytest.mark.parametrize("text, message", [
    ("accelerator = 5\n" + GEMM, "{p}: [accelerator] must be a table, not 5"),
    ("run = 5\n" + GEMM, "{p}: [run] must be a table, not 5"),
    ("scenario = 'x'\n" + GEMM, "{p}: [scenario] must be a table, not 'x'"),
    (GEMM + "[run]\ntimeout_cycles = 0\n", "{p} [run]: timeout_cycles must be between 1 and 1000000000000, not 0"),
    (GEMM + "[run]\ntimeout_cycles = -3\n",
     "{p} [run]: timeout_cycles must be between 1 and 1000000000000, not -3"),
    (GEMM + "[run]\ntimeout_cycles = 1000000000001\n",
     "{p} [run]: timeout_cycles must be between 1 and 1000000000000, not 1000000000001"),
    (GEMM + "[run]\ntimeout_cycles = 1.5\n", "{p} [run]: timeout_cycles must be an int, not 1.5"),
    (GEMM + "[run]\ntime_limit = -1\n",
     "{p} [run]: time_limit must be a number of seconds above 0 and at most 1000000000, not -1"),
    (GEMM + "[run]\ntime_limit = 'soon'\n",
     "{p} [run]: time_limit must be a number of seconds above 0 and at most 1000000000, not 'soon'"),
    # a GEMM larger than the memories is tiled; only one no tile fits is refused
    ("[accelerator]\npreset = 'tiny-4x4'\nweight_mem_words = 2\n[[gemm]]\nname = 'big'\nm = 4096\nk = 64\nn = 4\n",
     "{p} [[gemm]] 1: the 4x4 accelerator cannot hold one weight tile (4 words) and one command: "
     "weight memory 2 words, command memory 1024 words"),
    ("[[network]]\nmodel = 'digits_mlp'\nisa = 'sse2'\n",
     "{p} [[network]] 1: isa must be one of auto, sse, avx2, avx512bw, avx-vnni, avx512-vnni, amx-int8, "
     "exact, not 'sse2'"),
    ("[[network]]\nmodel = 'digits_mlp'\ninputs = 5\n",
     "{p} [[network]] 1: inputs must be a non-empty string, not 5"),
    ("[[network]]\nmodel = 'digits_mlp'\ninputs = 'nope.npz'\n",
     "{p} [[network]] 1: cannot read inputs {d}/nope.npz: No such file or directory"),
])
def test_scenario_errors_are_one_line_and_never_launch_the_simulator(text, message, tmp_path, capsys,
                                                                     no_simulator):
    path = _scenario(tmp_path, text)
    code, out, err = cli(capsys, "run", path)
    assert (code, out, err) == (2, "", f"qsim: error: {message.format(p=path, d=tmp_path)}\n")


def test_waves_must_be_a_writable_directory_before_any_build(tmp_path, capsys, no_simulator):
    args = ("cosim", "--preset", "tiny-4x4", "--m", "2", "--k", "2", "--n", "2", "--waves")
    a_file = tmp_path / "file.vcd"
    a_file.write_text("")
    code, out, err = cli(capsys, *args, a_file)
    assert (code, out, err) == (2, "", f"qsim: error: cannot write waveforms into {a_file}: Not a directory\n")
    code, out, err = cli(capsys, *args, a_file / "sub")
    assert (code, out, err) == (2, "", f"qsim: error: cannot write waveforms into {a_file / 'sub'}: "
                                       f"Not a directory ({a_file})\n")
    check_directory(tmp_path / "new" / "dir", "waveforms")  # created later, with its parents
    assert not (tmp_path / "new").exists() and _files(tmp_path) == ["file.vcd"]


def test_waves_in_a_read_only_directory(shared_dir, capsys, no_simulator):
    locked = shared_dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)

    def refused():
        code, out, err = cli(capsys, "cosim", "--m", "2", "--k", "2", "--n", "2", "--waves", locked / "w")
        assert (code, out, err) == (2, "", f"qsim: error: cannot write waveforms into {locked / 'w'}: "
                                           f"Permission denied\n")

    unprivileged(refused)
    assert list(locked.iterdir()) == []


def _unwritable_system_dir() -> str | None:
    for candidate in ("/sys", "/proc/sys"):
        try:
            check_directory(candidate, "probe")
        except ConfigError:
            return candidate
    return None


@pytest.mark.skipif(_unwritable_system_dir() is None, reason="no unwritable directory to try")
def test_waves_in_a_directory_even_root_cannot_write(capsys, no_simulator):
    where = Path(_unwritable_system_dir()) / "qsim-waves"
    code, out, err = cli(capsys, "cosim", "--m", "2", "--k", "2", "--n", "2", "--waves", where)
    assert code == 2 and out == ""
    assert re.fullmatch(rf"qsim: error: cannot write waveforms into {where}: [A-Z][a-z -]+\n", err), err


# ----------------------------------------------------------------------------- qsim report --figure

@pytest.fixture
def quick_report(monkeypatch):
    """The accuracy report of the MLP only, computed once for the tests that need one."""
    import qsim.nn.report

    real = qsim.nn.report.accuracy_report
    cache = {}

    def cached(networks, **kwargs):
        key = (tuple(networks), tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = real(["mlp"], **kwargs)
        return cache[key]

    monkeypatch.setattr(qsim.nn.report, "accuracy_report", cached)


def test_figure_with_an_unsupported_extension_is_refused_first(tmp_path, capsys, monkeypatch):
    import qsim.nn.report
    from matplotlib.backend_bases import FigureCanvasBase

    monkeypatch.setattr(qsim.nn.report, "accuracy_report", lambda *a, **k: pytest.fail("computed"))
    supported = sorted(FigureCanvasBase.get_supported_filetypes())
    assert {"png", "pdf", "svg", "jpg"} <= set(supported)
    code, out, err = cli(capsys, "report", "--figure", tmp_path / "f.xyz")
    assert (code, out, err) == (2, "", f"qsim: error: cannot save the figure as {tmp_path / 'f.xyz'}: "
                                       f"unsupported format 'xyz' (supported: {', '.join(supported)})\n")
    code, out, err = cli(capsys, "report", "--figure", tmp_path / "no" / "f.png")
    assert (code, out, err) == (2, "", f"qsim: error: cannot write {tmp_path / 'no' / 'f.png'}: "
                                       f"No such file or directory ({tmp_path / 'no'})\n")


def test_figure_reports_the_path_it_wrote(tmp_path, capsys, quick_report):
    code, out, _ = cli(capsys, "report", "--figure", tmp_path / "fig")
    assert code == 0 and out.splitlines()[-1] == f"figure saved to {tmp_path / 'fig.png'}"
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = cli(capsys, "report", "--figure", tmp_path / "fig.SVG")
    assert code == 0 and out.splitlines()[-1] == f"figure saved to {tmp_path / 'fig.SVG'}"
    assert b"<svg" in (tmp_path / "fig.SVG").read_bytes()[:400]
    assert _files(tmp_path) == ["fig.SVG", "fig.png"]
    code, out, _ = cli(capsys, "report", "--figure", "/dev/null")  # a device: written through
    assert code == 0 and out.splitlines()[-1] == "figure saved to /dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and not os.path.exists("/dev/null.png")


# ----------------------------------------------------------------------------- qsim run

def fake_run_programs(programs, *, timeout_cycles=None, waves=False, keep_dir=None):
    """What a perfect RTL would return: the model's words and the timing model's counters."""
    from qsim.model import execute
    from qsim.timing import simulate_timing

    results = []
    for p in programs:
        model = execute(p)
        results.append(RtlResult(counters=simulate_timing(p).counters(), acc=model.memories["acc"],
                                 outputs=dict(model.outputs), wall_s=0.01, sim_wall_s=0.0))
    fake_run_programs.calls.append([p.name for p in programs])
    return results


THREE = """[scenario]
name = "three"
[accelerator]
preset = "tiny-4x4"
[[gemm]]
name = "a"
m = 5
k = 9
n = 3
[[gemm]]
name = "b"
m = 4
k = 4
n = 4
[[network]]
name = "mlp"
model = "digits_mlp"
batch = 2
"""


@pytest.fixture
def fake_rtl(monkeypatch):
    fake_run_programs.calls = []
    monkeypatch.setattr(qsim.cosim.runner, "run_programs", fake_run_programs)
    return fake_run_programs


def test_rtl_phase_batches_and_agrees(tmp_path, capsys, fake_rtl):
    code, out, err = cli(capsys, "run", _scenario(tmp_path, THREE), "--json")
    data = json.loads(out)
    assert (code, err, data["status"], data["agrees"], data["unfinished"]) == (0, "", "complete", True, [])
    assert fake_rtl.calls == [["a", "b"], ["fc1#0[0:2,0:32,0:64]", "fc2#0[0:2,0:16,0:32]",
                                          "fc3#0[0:2,0:10,0:16]"]]
    # no simulation time was measured (a zero time): the speed is null, never Infinity
    assert [(w["name"], w["rtl_cycles"], w["mismatches"], w["sim_cycles_per_s"]) for w in data["workloads"]] \
        == [("a", 29, 0, None), ("b", 18, 0, None)]
    (net,) = data["networks"]
    assert (net["rtl_mismatches"], net["counter_diffs"], net["rtl_cycles"] == net["model_cycles"],
            net["agrees"]) == (0, 0, True, True)


def test_no_rtl_reports_null_for_everything_not_measured(tmp_path, capsys, no_simulator):
    path = _scenario(tmp_path, THREE)
    code, out, err = cli(capsys, "run", path, "--no-rtl", "--json")
    data = json.loads(out)
    assert (code, err, data["rtl"], data["status"], data["agrees"]) == (0, "", False, "complete", None)
    for w in data["workloads"]:
        assert {k: w[k] for k in ("mismatches", "rtl_cycles", "counter_diffs", "sim_cycles_per_s", "agrees")} \
            == dict.fromkeys(("mismatches", "rtl_cycles", "counter_diffs", "sim_cycles_per_s", "agrees"))
    (net,) = data["networks"]
    assert {k: net[k] for k in ("acc_words", "rtl_mismatches", "rtl_cycles", "counter_diffs", "agrees")} \
        == dict.fromkeys(("acc_words", "rtl_mismatches", "rtl_cycles", "counter_diffs", "agrees"))
    assert (net["output_mismatches"], net["programs"], net["model_cycles"]) == (0, 3, 724)
    code, out, _ = cli(capsys, "run", path, "--no-rtl")
    lines = out.splitlines()
    assert code == 0
    assert lines[1:4] == [
        "workload  M x K x N  elements  mismatches  model cycles  RTL cycles  util   sim cycles/s",
        "a         5x9x3      15        not run     29            not run     29.1%  not run",
        "b         4x4x4      16        not run     18            not run     22.2%  not run"]
    assert lines[4:6] == [
        "network  outputs  vs reference  programs  RTL acc mismatches  model cycles  RTL cycles",
        "mlp      20       0 mismatches  3         not run             724           not run"]
    assert re.fullmatch(r"model and timing only \(RTL not run\) \(\d+\.\d s\)", lines[6])


def test_everything_is_validated_before_any_rtl_work(tmp_path, capsys, no_simulator):
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 1, 8, 8), np.float32))
    path = _scenario(tmp_path, THREE + "[[network]]\nname = 'bad'\nmodel = 'digits_mlp'\ninputs = 'x.npz'\n")
    code, out, err = cli(capsys, "run", path)
    assert (code, out) == (2, "")
    assert err == (f"qsim: error: {path} [[network]] 2: graph 'digits_mlp': missing input(s) image "
                   f"(inputs: image)\n")


def test_progress_lines(tmp_path, capsys, fake_rtl):
    code, out, err = cli(capsys, "run", _scenario(tmp_path, THREE), "--progress")
    assert code == 0 and "AGREE" in out
    lines = [re.sub(r"\d+ s elapsed", "T s elapsed", re.sub(r"ETA \d+ s", "ETA E s", line))
             for line in err.splitlines()]
    assert lines == [
        "qsim run: load [3/3] mlp",
        "qsim run: model [1/3] a (5x9x3)",
        "qsim run: model [2/3] b (4x4x4)",
        "qsim run: model [3/3] mlp",
        "qsim run: model [3/3] mlp: layer fc1",
        "qsim run: model [3/3] mlp: layer fc2",
        "qsim run: model [3/3] mlp: layer fc3",
        "qsim run: RTL [1-2/3] a, b; 0 of 771 cycles done, T s elapsed",
        "qsim run: RTL [3/3] mlp: layers fc1, fc2, fc3 (programs 1-3 of 3); 47 of 771 cycles done, "
        "T s elapsed, ETA E s",
    ]
    code, out, err = cli(capsys, "run", _scenario(tmp_path, THREE), "--no-progress")
    assert code == 0 and err == ""


def _interrupt_on_call(n: int, exc: BaseException, real):
    count = [0]

    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] == n:
            raise exc
        return real(*args, **kwargs)

    return wrapper


def test_ctrl_c_during_the_rtl_keeps_finished_workloads(tmp_path, capsys, fake_rtl, monkeypatch):
    monkeypatch.setattr(qsim.scenario, "RTL_BATCH_CYCLES", 1)  # one simulator run per program
    monkeypatch.setattr(qsim.cosim.runner, "run_programs",
                        _interrupt_on_call(2, KeyboardInterrupt(), fake_run_programs))
    path = _scenario(tmp_path, THREE)
    code, out, err = cli(capsys, "run", path)
    lines = out.splitlines()
    assert (code, err) == (130, "")
    assert lines[1:3] == [
        "workload  M x K x N  elements  mismatches  model cycles  RTL cycles  util   sim cycles/s",
        "a         5x9x3      15        0           29            29          29.1%  not measured"]
    assert len(lines) == 4 and "AGREE" not in out
    assert re.fullmatch(r"interrupted \(Ctrl-C\): 1 of 3 workloads finished; no verdict for b, mlp "
                        r"\(\d+\.\d s\)", lines[3]), lines[3]
    monkeypatch.setattr(qsim.cosim.runner, "run_programs",
                        _interrupt_on_call(4, KeyboardInterrupt(), fake_run_programs))
    code, out, err = cli(capsys, "run", path, "--json")
    data = json.loads(out)
    assert (code, data["status"], data["agrees"], data["unfinished"]) == (130, "interrupted", None, ["mlp"])
    assert [w["name"] for w in data["workloads"]] == ["a", "b"] and data["networks"] == []
    assert err == "qsim: interrupted (Ctrl-C): 2 of 3 workloads finished; no verdict for mlp\n"


def test_ctrl_c_during_the_model_run_without_rtl(tmp_path, capsys, monkeypatch):
    import qsim.model

    monkeypatch.setattr(qsim.model, "execute", _interrupt_on_call(2, KeyboardInterrupt(), qsim.model.execute))
    code, out, err = cli(capsys, "run", _scenario(tmp_path, THREE), "--no-rtl", "--json")
    data = json.loads(out)
    assert (code, data["status"], data["agrees"], data["unfinished"]) == (130, "interrupted", None, ["b", "mlp"])
    assert [(w["name"], w["model_cycles"], w["rtl_cycles"]) for w in data["workloads"]] == [("a", 29, None)]


def test_a_disagreement_found_before_ctrl_c_is_still_reported(tmp_path, capsys, monkeypatch):
    def wrong(programs, **kwargs):
        results = fake_run_programs(programs)
        if len(results) > 0 and programs[0].name == "a":
            results[0].counters["cycles"] += 1
        return results

    fake_run_programs.calls = []
    monkeypatch.setattr(qsim.scenario, "RTL_BATCH_CYCLES", 1)
    monkeypatch.setattr(qsim.cosim.runner, "run_programs", _interrupt_on_call(3, KeyboardInterrupt(), wrong))
    code, out, _ = cli(capsys, "run", _scenario(tmp_path, THREE))
    lines = out.splitlines()
    assert code == 130
    assert lines[-2] == "DISAGREE among the finished workloads"
    assert lines[-1].startswith("interrupted (Ctrl-C): 2 of 3 workloads finished; no verdict for mlp (")
    monkeypatch.setattr(qsim.cosim.runner, "run_programs", wrong)
    code, out, _ = cli(capsys, "run", _scenario(tmp_path, THREE))
    assert code == 1 and out.splitlines()[-1].startswith("DISAGREE (")


def test_time_limit_stops_like_ctrl_c(tmp_path, capsys, fake_rtl, monkeypatch):
    def slow(programs, **kwargs):
        if programs[0].name.startswith("fc1"):
            time.sleep(30)
        return fake_run_programs(programs)

    monkeypatch.setattr(qsim.cosim.runner, "run_programs", slow)
    path = _scenario(tmp_path, THREE)
    t0 = time.perf_counter()
    code, out, err = cli(capsys, "run", path, "--time-limit", "1.5")
    assert time.perf_counter() - t0 < 10
    lines = out.splitlines()
    assert (code, err) == (130, "")
    assert [line.split()[0] for line in lines[2:4]] == ["a", "b"]
    assert re.fullmatch(r"stopped at the time limit of 1\.5 s: 2 of 3 workloads finished; no verdict "
                        r"for mlp \(\d+\.\d s\)", lines[-1]), lines[-1]
    # the same limit from the scenario file
    path.write_text(THREE + "[run]\ntime_limit = 1.5\n")
    code, out, _ = cli(capsys, "run", path, "--json")
    data = json.loads(out)
    assert (code, data["status"], data["time_limit_s"], data["unfinished"]) == (130, "time-limit", 1.5, ["mlp"])


def _terminal_signals() -> None:
    """In the child, SIGINT as a terminal delivers it: not blocked, default disposition (the
    test process may have inherited another state from the libraries earlier tests loaded)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_a_real_process(tmp_path):
    """SIGINT to `qsim run`: the finished workloads are printed and the exit status is 130."""
    text = "[accelerator]\npreset = 'tiny-4x4'\nact_mem_words = 262144\nacc_mem_words = 262144\n"
    # enough work (400 workloads of 4000 x 64 x 64) that the signal, sent once the third one
    # starts, arrives long before the last one ends even on a loaded machine
    text += "".join(f"[[gemm]]\nname = 'g{i}'\nm = 4000\nk = 64\nn = 64\n" for i in range(400))
    path = _scenario(tmp_path, text + "[run]\nrtl = false\n")
    proc = subprocess.Popen([sys.executable, "-m", "qsim.cli", "run", str(path), "--progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=_terminal_signals)
    try:
        for line in proc.stderr:
            if line.startswith("qsim run: model [3/400]"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    rows = [line.split()[0] for line in out.splitlines()[2:-1]]
    assert rows[:2] == ["g0", "g1"] and len(rows) < 400
    assert re.match(rf"interrupted \(Ctrl-C\): {len(rows)} of 400 workloads finished; no verdict for "
                    rf"g{len(rows)}, ", out.splitlines()[-1])
