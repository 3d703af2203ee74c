"""Verilator builds of the accelerator, cached per configuration and RTL source.

A build takes tens of seconds, so each one is kept under the cache directory
(``$QSIM_CACHE_DIR``, default ``$XDG_CACHE_HOME/qsim`` or ``~/.cache/qsim``) in a folder named
by a key that hashes what shapes the simulator binary: the configuration fields that change
the generated Verilog (not ``clock_mhz``), every source that shapes the Verilog (``rtl/``, the
config and command-layout modules), the harness, the tool versions and the build flags.

Concurrent processes (pytest-xdist workers) building the same key wait on a file lock
(opened without following symbolic links) instead of building twice. A build is usable only
once its ``BUILD_OK.json`` stamp exists, and the stamp records the size and SHA-256 of the
simulator binary: a missing, truncated or altered binary is rebuilt, never run. The build
tools run in their own process group (:mod:`qsim.cosim.procs`), so an interrupted qsim
leaves no compiler writing into the cache, and the half-built folder is removed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from qsim.config import AcceleratorConfig
from qsim.errors import ConfigError, SimulationError, ToolchainError

__all__ = ["CosimBuild", "cache_root", "usable_cache_root", "build_key", "ensure_build",
           "cached_build", "BUILD_ARGS", "MAKE_ARGS", "NOT_IN_VERILOG"]

#: The two kinds of build: the cocotb harness, and a plain C++ loop (the speed baseline).
FLAVORS = ("cocotb", "native")

#: Verilator options of every build: the harness clock needs --timing (and C++20); -O3 and fast X
#: handling make the model quicker (every register has a reset value, so X never matters).
BUILD_ARGS = ("--timing", "-CFLAGS", "-std=c++20", "-O3", "--x-assign", "fast", "--x-initial", "fast", "-Wno-fatal")

#: Arguments of the ``make`` that compiles the model. Verilator compiles the model's per-cycle
#: code with ``OPT_FAST`` (``-Os`` by default); ``-O2`` was measured on a 32 x 32 array
#: (plain C++ loop, 2 cores): 218 k cycles/s in 75 s of make, against 86 k (-Os, 97 s) and
#: 137 k (-O1, 73 s). The code that runs once (``OPT_SLOW``) and the runtime keep their defaults.
MAKE_ARGS = ("OPT_FAST=-O2",)

#: AcceleratorConfig fields that do not change the generated Verilog, so not the build either
#: (tests/cosim/test_build_cache.py checks that the Verilog is the same whatever their value).
NOT_IN_VERILOG = ("clock_mhz", "dram_latency")

#: Name of the stamp that marks a finished build.
STAMP = "BUILD_OK.json"

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_RTL_DIR = _PACKAGE_DIR.parent / "rtl"
# Modules whose code decides the Verilog text (besides rtl/ itself).
_SHAPING_MODULES = ("config.py", "program.py", "numerics.py", "hw.py", "cosim/harness.py",
                    "cosim/build.py")
# The simulator binary of each flavor, relative to the build folder.
_BINARIES = {"cocotb": Path("sim_build") / "qsim_harness", "native": Path("obj") / "qsim_native"}


@dataclass(frozen=True)
class CosimBuild:
    """A finished Verilator build: where it is and what it was built from."""

    config: AcceleratorConfig
    key: str
    directory: Path
    waves: bool
    build_s: float  # 0.0 when it came from the cache
    flavor: str = "cocotb"

    @property
    def sim_build(self) -> Path:
        return self.directory / "sim_build"

    @property
    def native_binary(self) -> Path:
        return self.directory / _BINARIES["native"]

    @property
    def binary(self) -> Path:
        return self.directory / _BINARIES[self.flavor]


def cache_root() -> Path:
    """``$QSIM_CACHE_DIR``, else ``$XDG_CACHE_HOME/qsim``, else ``~/.cache/qsim`` (empty = unset).

    The Makefile's ``clean-cache`` target uses the same rule.
    """
    root = os.environ.get("QSIM_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "qsim"
    return base.expanduser()


def usable_cache_root() -> Path:
    """:func:`cache_root`, created if needed and checked to be a writable directory.

    Raises
    ------
    ConfigError
        The path is a file, cannot be created, or is not writable (one line naming the path).
    """
    root = cache_root()
    where = f"cannot use the build cache directory {root} (set QSIM_CACHE_DIR to a writable directory)"
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{where}: it is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}") from None
    return root


def _sources_digest() -> str:
    digest = hashlib.sha256()
    files = sorted(_RTL_DIR.glob("*.py")) + sorted(_RTL_DIR.glob("*.vlt"))
    files += [_PACKAGE_DIR / name for name in _SHAPING_MODULES]
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def verilog_fields(config: AcceleratorConfig) -> dict:
    """The configuration as far as it shapes the Verilog (the build key's part of it)."""
    return {k: v for k, v in config.to_dict().items() if k not in NOT_IN_VERILOG}


def build_key(config: AcceleratorConfig, waves: bool = False, flavor: str = "cocotb") -> str:
    """Hash of everything that determines the simulation binary."""
    from qsim.cosim.toolchain import find_toolchain

    versions = {pkg: importlib.metadata.version(pkg) for pkg in ("amaranth", "cocotb")}
    payload = json.dumps({
        "config": verilog_fields(config),
        "sources": _sources_digest(),
        "verilator": find_toolchain().version,
        "versions": versions,
        "args": BUILD_ARGS,
        "make_args": MAKE_ARGS,
        "waves": waves,
        "flavor": flavor,
        "native_main": (_PACKAGE_DIR / "cosim" / "native_main.cpp").read_bytes().hex()
        if flavor == "native" else "",
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def log_tail(path: Path, lines: int = 30, *, missing: str = "(no log)", empty: str = "") -> str:
    """The last ``lines`` lines of a tool's log for an error message (``missing`` if the log
    cannot be read, ``empty`` if it holds nothing)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return missing
    return "\n".join(text[-lines:]) or empty


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry_problem(directory: Path, key: str, flavor: str) -> str | None:
    """Why the cache entry cannot be used (None: it can). ``"absent"`` if there is none."""
    if directory.is_symlink():
        return f"{directory.name} is a symbolic link"
    if not directory.exists():
        return "absent"
    stamp = directory / STAMP
    if not stamp.is_file():
        return "a previous build was never finished"
    try:
        info = json.loads(stamp.read_text())
        size, sha = int(info["binary_size"]), str(info["binary_sha256"])
        if info["key"] != key:
            return f"{STAMP} names another build"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{STAMP} is unreadable"
    binary = directory / _BINARIES[flavor]
    try:
        st = binary.lstat()
    except OSError:
        return f"{_BINARIES[flavor]} is missing"
    if not stat.S_ISREG(st.st_mode):
        return f"{_BINARIES[flavor]} is not a regular file"
    if st.st_size != size:
        return f"{_BINARIES[flavor]} has {st.st_size} bytes instead of {size}"
    if _sha256(binary) != sha:
        return f"{_BINARIES[flavor]} differs from the binary that was built (SHA-256)"
    return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``; a symbolic link there is refused, not followed."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"the build cache lock {path} is a symbolic link; qsim does not "
                              f"follow it (remove it)") from None
        raise ConfigError(f"cannot open the build cache lock {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"the build cache lock {path} is not a regular file (remove it)")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _discard(directory: Path) -> None:
    if directory.is_symlink() or directory.is_file():
        directory.unlink()
    elif directory.exists():
        shutil.rmtree(directory)


def failed_log_path(root: Path, flavor: str, key: str) -> Path:
    """Where the log of a failed build is kept (the half-built folder itself is removed)."""
    return root / f"{flavor}-{key}.failed.log"


def cached_build(config: AcceleratorConfig, waves: bool = False,
                 flavor: str = "cocotb") -> CosimBuild | None:
    """The cached build of ``config`` if there is a finished, intact one; never builds."""
    key = build_key(config, waves, flavor)
    directory = cache_root() / f"{flavor}-{key}"
    if _entry_problem(directory, key, flavor) is not None:
        return None
    return CosimBuild(config, key, directory, waves, 0.0, flavor)


def ensure_build(config: AcceleratorConfig, waves: bool = False,
                 flavor: str = "cocotb") -> CosimBuild:
    """Return a Verilator build for ``config``, building it if the cache has no intact one.

    ``flavor`` is ``"cocotb"`` (the harness the co-simulation runs) or ``"native"`` (a plain
    C++ loop over the same Verilog, used as the speed baseline). A build prints one line to
    stderr (what, where, how long); a cache hit prints nothing.
    """
    from qsim.cosim.toolchain import activate

    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, not {flavor!r}")
    root = usable_cache_root()
    activate()
    key = build_key(config, waves, flavor)
    directory = root / f"{flavor}-{key}"
    with _locked(root / f"{flavor}-{key}.lock"):
        problem = _entry_problem(directory, key, flavor)
        if problem is None:
            return CosimBuild(config, key, directory, waves, 0.0, flavor)
        what, why = ("building", "") if problem == "absent" else ("rebuilding", f" ({problem})")
        print(f"qsim: {what} the Verilator model ({flavor}{', waves' if waves else ''}) for "
              f"{config.rows}x{config.cols}, config {config.stable_hash()}, in {directory}{why} ...",
              end="", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        outcome = "failed"
        try:
            _discard(directory)  # a build that died half way, or a damaged one
            directory.mkdir(parents=True)
            _build(config, directory, flavor, waves, root, key)
            if build_key(config, waves, flavor) != key:
                # a source file changed while the model was being built: what was compiled
                # may not be what the key names, so it is not kept
                raise SimulationError(
                    f"the qsim sources changed during the Verilator build of "
                    f"{config.describe()}; run again")
            elapsed = time.perf_counter() - t0
            binary = directory / _BINARIES[flavor]
            info = {"key": key, "config": config.to_dict(), "waves": waves, "flavor": flavor,
                    "build_s": round(elapsed, 2), "binary_size": binary.stat().st_size,
                    "binary_sha256": _sha256(binary)}
            partial = directory / f".{STAMP}.part"
            partial.write_text(json.dumps(info, indent=1))
            os.replace(partial, directory / STAMP)  # the build is usable from this instant on
            outcome = f"done in {elapsed:.1f} s"
            return CosimBuild(config, key, directory, waves, elapsed, flavor)
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise
        except SystemExit:
            outcome = "terminated"
            raise
        finally:
            if not outcome.startswith("done"):
                shutil.rmtree(directory, ignore_errors=True)  # never leave a half-built entry
                outcome += f" after {time.perf_counter() - t0:.1f} s"
            print(f" {outcome}", file=sys.stderr, flush=True)


def _build(config: AcceleratorConfig, directory: Path, flavor: str, waves: bool,
           root: Path, key: str) -> None:
    """Write the sources and run the build; on failure keep its log outside the folder."""
    top, controls = _write_sources(config, directory)
    log = directory / "build.log"
    try:
        if flavor == "native":
            code = _build_native(directory, top, controls, log)
        else:
            code = _build_cocotb(directory, top, controls, waves, log)
    except OSError as exc:
        raise ToolchainError(f"the Verilator build of {config.describe()} could not run: {exc}") from None
    if code != 0:
        kept = failed_log_path(root, flavor, key)
        try:
            shutil.copyfile(log, kept)
            where = f"full log: {kept}"
        except OSError:
            where = "no log was written"
        raise SimulationError(
            f"the Verilator build of {config.describe()} failed (exit {code}); {where}; "
            f"last lines:\n{log_tail(log)}")


def public_signals_vlt() -> str:
    """Verilator control file making public only what a testbench reads or writes.

    Making every signal public (``--public-flat-rw``, what cocotb's runner passes) stops
    Verilator from optimising the model: measured on an 8 x 8 array, the plain C++ loop ran
    0.38 M cycles/s with it and 2.9 M cycles/s with only these signals public, and the build
    took 50 s instead of 8 s.
    """
    from qsim.cosim.harness import HARNESS_NAME
    from rtl.sram import SRAM_ARRAY, SRAM_MODULE

    return "\n".join([
        "`verilator_config",
        "// Generated by qsim.cosim.build: the signals testbenches access through VPI.",
        f'public_flat_rw -module "{HARNESS_NAME}" -var "*"',
        f'public_flat_rw -module "{SRAM_MODULE}" -var "{SRAM_ARRAY}"',
    ]) + "\n"


def _write_sources(config: AcceleratorConfig, directory: Path) -> tuple[Path, list[Path]]:
    from rtl.export import TOP_NAME, generate_verilog

    top = directory / f"{TOP_NAME}.v"
    waivers = directory / "verilator.vlt"
    public = directory / "public.vlt"
    try:
        top.write_text(generate_verilog(config, bench=config.has_dram))
    except Exception as exc:  # Yosys (WebAssembly) failures surface here
        raise ToolchainError(f"generating Verilog for {config.describe()} failed: {exc}") from exc
    shutil.copyfile(_RTL_DIR / "verilator.vlt", waivers)
    public.write_text(public_signals_vlt())
    return top, [waivers, public]


def _verilator_runner():
    """cocotb's Verilator runner, minus ``--public-flat-rw`` (see :func:`public_signals_vlt`),
    running every command in its own process group (:func:`qsim.cosim.procs.run_process`).

    ``extra_env`` given to ``test()`` is applied last: cocotb lets the caller's environment
    override it, and a stray ``QSIM_COSIM_*`` variable must not redirect a run.
    """
    from cocotb_tools.runner import Verilator

    from qsim.cosim.procs import run_process

    class SelectivelyPublicVerilator(Verilator):
        qsim_env: dict[str, str] = {}
        #: Called as ``before_make(make_cmd, cwd, env, log)`` just before the C++ build.
        before_make = None

        def _build_command(self):
            commands = super()._build_command()
            commands[0] = [arg for arg in commands[0] if arg != "--public-flat-rw"]
            for cmd in commands[1:]:
                if cmd[0] == "make":
                    cmd.extend(MAKE_ARGS)
            return commands

        def _execute_cmds(self, cmds, cwd, stdout=None):
            env = {**self.env, **self.qsim_env}
            for cmd in cmds:
                if cmd[0] == "make" and self.before_make is not None:
                    self.before_make(list(cmd), Path(cwd), env, stdout)
                code = run_process(cmd, cwd=cwd, env=env, stdout=stdout,
                                   stderr=None if stdout is None else subprocess.STDOUT)
                if code != 0:
                    raise _CommandFailed(code)

    return SelectivelyPublicVerilator()


class _CommandFailed(RuntimeError):
    def __init__(self, code: int) -> None:
        super().__init__(f"exit {code}")
        self.code = code


def native_counters_header() -> str:
    """``qsim_counters.h`` for the native loop: the counter ports, from :data:`qsim.hw.COUNTERS`."""
    from qsim.hw import COUNTERS

    entries = " ".join(f"X({name})" for name in COUNTERS)
    return ("// Generated by qsim.cosim.build from qsim.hw.COUNTERS.\n"
            f"#define QSIM_COUNTERS(X) {entries}\n")


def _build_native(directory: Path, top: Path, controls: list[Path], log: Path) -> int:
    from qsim.cosim.procs import run_process
    from qsim.cosim.toolchain import find_toolchain
    from rtl.export import TOP_NAME

    main = _PACKAGE_DIR / "cosim" / "native_main.cpp"
    (directory / "qsim_counters.h").write_text(native_counters_header())
    # The same options and public signals as the cocotb build, minus the timing scheduler.
    args = [a for a in BUILD_ARGS if a != "--timing"]
    cmd = [str(find_toolchain().binary), "--cc", "--exe", "--build", "-j", "2",
           "--top-module", TOP_NAME, "--prefix", f"V{TOP_NAME}", "--vpi",
           "-CFLAGS", f"-I{directory}",
           *args, *(arg for make_arg in MAKE_ARGS for arg in ("-MAKEFLAGS", make_arg)),
           "-Mdir", str(directory / "obj"), "-o", "qsim_native",
           *map(str, controls), str(top), str(main)]
    with open(log, "w") as f:
        return run_process(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=directory)


def _build_cocotb(directory: Path, top: Path, controls: list[Path], waves: bool, log: Path) -> int:
    from qsim.cosim.harness import HARNESS_NAME, harness_verilog
    from qsim.cosim.procs import Terminated

    harness = directory / f"{HARNESS_NAME}.sv"
    harness.write_text(harness_verilog(dram=top.read_text().find("csr__awaddr") >= 0))
    args = list(BUILD_ARGS)
    if waves:
        # VCD rather than FST: Verilator's FST writer needs the system's lz4 headers, which a
        # pip-only install does not have.
        args += ["--trace-structs"]
    runner = _verilator_runner()
    runner.before_make = lambda cmd, cwd, env, log: _reuse_runtime(cmd, cwd, env, log, directory.parent)
    try:
        runner.build(
            sources=[*controls, top, harness],
            hdl_toplevel=HARNESS_NAME,
            build_dir=directory / "sim_build",
            build_args=args,
            waves=waves,
            always=True,
            log_file=log,
        )
    except _CommandFailed as exc:
        return exc.code
    except Terminated:
        raise
    except SystemExit as exc:  # cocotb: "verilator executable not found"
        raise ToolchainError(f"the Verilator build could not start: {exc}") from None
    return 0


# ---- runtime objects shared between builds --------------------------------------------------
#
# Most of a cold build is spent compiling Verilator's runtime (verilated.cpp, verilated_vpi.cpp,
# verilated_timing.cpp, ...) and cocotb's verilator.cpp main, which are the same for every
# configuration. They are compiled once per distinct compile command line and kept in
# ``runtime-<hash>/``; later builds copy them in before ``make``, which then only compiles and
# links the model. The hash covers the exact compile commands (``make -n``: compiler, flags,
# defines, include paths), the generated ``Vtop.h`` that cocotb's main includes, the
# compiler's ``--version``, and the Verilator and cocotb releases.

RUNTIME_STAMP = "RUNTIME_OK.json"


def _capture(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    from qsim.cosim.procs import run_process

    with tempfile.TemporaryFile("w+") as out:
        code = run_process(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.seek(0)
        text = out.read()
    if code != 0:
        raise _CommandFailed(code)
    return text


def _runtime_key(make: list[str], cwd: Path, env: dict[str, str], objects: list[str]) -> str:
    commands = _capture([*make, "-n", *objects], cwd, env).replace(str(cwd), "<build>")
    compiler = _capture([*make, "-s", "--eval", "qsim-cxx: ; @$(CXX) --version", "qsim-cxx"], cwd, env)
    vtop_h = hashlib.sha256((cwd / "Vtop.h").read_bytes()).hexdigest()
    versions = {pkg: importlib.metadata.version(pkg) for pkg in ("verilator", "cocotb")}
    payload = json.dumps({"commands": commands, "compiler": compiler, "vtop_h": vtop_h,
                          "versions": versions}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _runtime_intact(shared: Path, objects: list[str]) -> bool:
    try:
        info = json.loads((shared / RUNTIME_STAMP).read_text())
        return all(info[name] == _sha256(shared / name) for name in objects)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _reuse_runtime(make: list[str], cwd: Path, env: dict[str, str], log, root: Path) -> None:
    """Put the shared runtime objects into build folder ``cwd``, compiling them once if needed.

    Anything unexpected here only costs time: ``make`` then compiles the objects itself.
    """
    try:
        listed = _capture([*make, "-s", "--eval",
                           "qsim-objs: ; @echo $(VK_GLOBAL_OBJS) $(VK_USER_OBJS)", "qsim-objs"], cwd, env)
        objects = sorted(set(listed.split()))
        if not objects or any("/" in name or not name.endswith(".o") for name in objects):
            return
        key = _runtime_key(make, cwd, env, objects)
    except (OSError, _CommandFailed):
        return
    shared = root / f"runtime-{key}"
    with _locked(root / f"runtime-{key}.lock"):
        try:
            _fill_runtime(make, cwd, env, log, root, key, shared, objects)
        except OSError:
            pass  # e.g. a full disk: make compiles whatever is missing


def _fill_runtime(make: list[str], cwd: Path, env: dict[str, str], log, root: Path, key: str,
                  shared: Path, objects: list[str]) -> None:
    from qsim.cosim.procs import run_process

    if _runtime_intact(shared, objects):
        for name in objects:  # the copies are newer than their sources, so make keeps them
            shutil.copyfile(shared / name, cwd / name)
        return
    if run_process([*make, *objects], cwd=cwd, env=env, stdout=log,
                   stderr=None if log is None else subprocess.STDOUT) != 0:
        return  # the full make repeats the failure and reports it
    staging = Path(tempfile.mkdtemp(prefix=f".runtime-{key}-", dir=root))
    try:
        for name in objects:
            shutil.copyfile(cwd / name, staging / name)
        (staging / RUNTIME_STAMP).write_text(json.dumps(
            {name: _sha256(staging / name) for name in objects}, indent=1))
        _discard(shared)
        os.replace(staging, shared)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
