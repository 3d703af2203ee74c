"""Verilator builds of the accelerator, cached per configuration and RTL source.

A build takes tens of seconds, so each one is kept under the cache directory
(``$QSIM_CACHE_DIR``, default ``~/.cache/qsim``) in a folder named by a key that hashes the
configuration, every source that shapes the generated Verilog (``rtl/``, the config and
command-layout modules), the harness, the tool versions and the build flags. Concurrent
processes (pytest-xdist workers) building the same key wait on a file lock instead of
building twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from qsim.config import AcceleratorConfig
from qsim.errors import SimulationError, ToolchainError

__all__ = ["CosimBuild", "cache_root", "build_key", "ensure_build", "BUILD_ARGS"]

#: The two kinds of build: the cocotb harness, and a plain C++ loop (the speed baseline).
FLAVORS = ("cocotb", "native")

#: Verilator options of every build: the harness clock needs --timing (and C++20); -O3 and fast X
#: handling make the model quicker (every register has a reset value, so X never matters).
BUILD_ARGS = ("--timing", "-CFLAGS", "-std=c++20", "-O3", "--x-assign", "fast", "--x-initial", "fast", "-Wno-fatal")

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_RTL_DIR = _PACKAGE_DIR.parent / "rtl"
# Modules whose code decides the Verilog text (besides rtl/ itself).
_SHAPING_MODULES = ("config.py", "program.py", "numerics.py", "cosim/harness.py", "cosim/build.py")


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
        return self.directory / "obj" / "qsim_native"


def cache_root() -> Path:
    root = os.environ.get("QSIM_CACHE_DIR")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qsim"
    return base.expanduser()


def _sources_digest() -> str:
    digest = hashlib.sha256()
    files = sorted(_RTL_DIR.glob("*.py")) + sorted(_RTL_DIR.glob("*.vlt"))
    files += [_PACKAGE_DIR / name for name in _SHAPING_MODULES]
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_key(config: AcceleratorConfig, waves: bool = False, flavor: str = "cocotb") -> str:
    """Hash of everything that determines the simulation binary."""
    from qsim.cosim.toolchain import find_toolchain

    versions = {pkg: importlib.metadata.version(pkg) for pkg in ("amaranth", "cocotb")}
    payload = json.dumps({
        "config": config.to_dict(),
        "sources": _sources_digest(),
        "verilator": find_toolchain().version,
        "versions": versions,
        "args": BUILD_ARGS,
        "waves": waves,
        "flavor": flavor,
        "native_main": (_PACKAGE_DIR / "cosim" / "native_main.cpp").read_bytes().hex()
        if flavor == "native" else "",
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def ensure_build(config: AcceleratorConfig, waves: bool = False,
                 flavor: str = "cocotb") -> CosimBuild:
    """Return a Verilator build for ``config``, building it if the cache has none.

    ``flavor`` is ``"cocotb"`` (the harness the co-simulation runs) or ``"native"`` (a plain
    C++ loop over the same Verilog, used as the speed baseline).
    """
    from qsim.cosim.toolchain import activate

    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, not {flavor!r}")
    activate()
    key = build_key(config, waves, flavor)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    directory = root / f"{flavor}-{key}"
    stamp = directory / "BUILD_OK.json"
    with open(root / f"verilator-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file():
            return CosimBuild(config, key, directory, waves, 0.0, flavor)
        if directory.exists():
            shutil.rmtree(directory)  # a build that died half way
        directory.mkdir(parents=True)
        t0 = time.perf_counter()
        top, controls = _write_sources(config, directory)
        if flavor == "native":
            _build_native(directory, top, controls)
        else:
            _build_cocotb(directory, top, controls, waves)
        elapsed = time.perf_counter() - t0
        stamp.write_text(json.dumps({"key": key, "config": config.to_dict(), "waves": waves,
                                     "flavor": flavor, "build_s": round(elapsed, 2)}, indent=1))
        return CosimBuild(config, key, directory, waves, elapsed, flavor)


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
        top.write_text(generate_verilog(config))
    except Exception as exc:  # Yosys (WebAssembly) failures surface here
        raise ToolchainError(f"generating Verilog for {config.describe()} failed: {exc}") from exc
    shutil.copyfile(_RTL_DIR / "verilator.vlt", waivers)
    public.write_text(public_signals_vlt())
    return top, [waivers, public]


def _verilator_runner():
    """cocotb's Verilator runner, minus ``--public-flat-rw`` (see :func:`public_signals_vlt`)."""
    from cocotb_tools.runner import Verilator

    class SelectivelyPublicVerilator(Verilator):
        def _build_command(self):
            commands = super()._build_command()
            commands[0] = [arg for arg in commands[0] if arg != "--public-flat-rw"]
            return commands

    return SelectivelyPublicVerilator()


def _build_native(directory: Path, top: Path, controls: list[Path]) -> None:
    import subprocess

    from qsim.cosim.toolchain import find_toolchain
    from rtl.export import TOP_NAME

    main = _PACKAGE_DIR / "cosim" / "native_main.cpp"
    # The same options and public signals as the cocotb build, minus the timing scheduler.
    args = [a for a in BUILD_ARGS if a != "--timing"]
    cmd = [str(find_toolchain().binary), "--cc", "--exe", "--build", "-j", "2",
           "--top-module", TOP_NAME, "--prefix", f"V{TOP_NAME}", "--vpi",
           *args, "-Mdir", str(directory / "obj"), "-o", "qsim_native",
           *map(str, controls), str(top), str(main)]
    log = directory / "build.log"
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=directory)
    if done.returncode != 0:
        raise SimulationError(
            f"the native Verilator build failed (exit {done.returncode}); last lines of {log}:\n"
            f"{_log_tail(log)}")


def _build_cocotb(directory: Path, top: Path, controls: list[Path], waves: bool) -> None:
    from qsim.cosim.harness import HARNESS_NAME, harness_verilog

    harness = directory / f"{HARNESS_NAME}.sv"
    harness.write_text(harness_verilog())
    args = list(BUILD_ARGS)
    if waves:
        # VCD rather than FST: Verilator's FST writer needs the system's lz4 headers, which a
        # pip-only install does not have.
        args += ["--trace-structs"]
    log = directory / "build.log"
    runner = _verilator_runner()
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
    except (RuntimeError, SystemExit) as exc:
        raise SimulationError(
            f"the Verilator build failed ({exc}); last lines of {log}:\n{_log_tail(log)}"
        ) from None
