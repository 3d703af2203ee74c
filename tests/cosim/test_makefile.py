"""The Makefile cleans the build cache qsim really uses, and says what its bootstrap does."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from qsim.cosim.build import cache_root

ROOT = Path(__file__).resolve().parents[2]


def _make(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("QSIM_CACHE_DIR", "XDG_CACHE_HOME", "MAKEFLAGS")}
    full.update(env)
    return subprocess.run(["make", "-s", "-C", str(ROOT), *args], capture_output=True, text=True, env=full)


def _fill(cache: Path) -> None:
    (cache / "cocotb-0123" / "sim_build").mkdir(parents=True)
    (cache / "native-4567" / "obj").mkdir(parents=True)
    (cache / "runtime-89ab").mkdir()
    for name in ("cocotb-0123.lock", "cocotb-0123.failed.log", "runtime-89ab.lock", "verilator-old.lock"):
        (cache / name).write_text("")


def test_clean_cache_removes_only_qsim_entries_of_qsim_cache_dir(tmp_path, monkeypatch):
    cache = tmp_path / "my cache"
    _fill(cache)
    (cache / "unrelated.txt").write_text("keep me")
    done = _make("clean-cache", QSIM_CACHE_DIR=str(cache), HOME=str(tmp_path / "home"))
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"removing the Verilator build cache in {cache}\n", "")
    assert sorted(p.name for p in cache.iterdir()) == ["unrelated.txt"]
    monkeypatch.setenv("QSIM_CACHE_DIR", str(cache))
    assert cache_root() == cache
    (cache / "unrelated.txt").unlink()
    assert _make("clean-cache", QSIM_CACHE_DIR=str(cache)).returncode == 0
    assert not cache.exists()  # an emptied cache folder goes too


@pytest.mark.parametrize("env", [
    {"QSIM_CACHE_DIR": "", "XDG_CACHE_HOME": "{tmp}/xdg"},
    {"XDG_CACHE_HOME": ""},
    {},
    {"QSIM_CACHE_DIR": "~/custom"},
])
def test_clean_cache_uses_the_same_default_as_the_code(tmp_path, monkeypatch, env):
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    home = tmp_path / "home"
    for name in ("QSIM_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = cache_root()
    assert str(expected).startswith(str(tmp_path))
    _fill(expected)
    done = _make("clean-cache", HOME=str(home), **env)
    assert done.stdout == f"removing the Verilator build cache in {expected}\n"
    assert not expected.exists()


def test_bootstrap_says_what_it_does(tmp_path):
    venv = tmp_path / "venv"
    done = _make(f"VENV={venv}", "PYTHON=false", f"{venv}/.qsim-installed")
    assert done.returncode == 2  # `false -m venv` fails, after saying what it was doing
    assert done.stdout == f"creating {venv} with false -m venv\n"
    dry = _make("-n", "-B", "VENV=.venv", ".venv/.qsim-installed")
    assert 'echo "upgrading pip in .venv"' in dry.stdout
    assert ('echo "installing qsim and its test dependencies into .venv (first time: a few minutes)"'
            in dry.stdout)


def test_isa_tier_runs_the_engine_parity_tests_under_both_emulated_cpus():
    done = _make("-n", "test-isa")
    assert done.returncode == 0, done.stderr
    assert "for cpu in Nehalem Haswell; do" in done.stdout
    assert "qemu-x86_64 -cpu $cpu .venv/bin/python -m pytest -p no:xdist" in done.stdout
    for test_file in ("tests/nn/test_isa_parity.py", "tests/quant/test_isa_golden.py", "tests/quant/test_ortops.py"):
        assert test_file in done.stdout
