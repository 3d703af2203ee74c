from __future__ import annotations

from pathlib import Path

import pytest

from qsim.errors import ConfigError
from qsim.scenario import load_scenario, parse_scenario, run_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_every_shipped_scenario_parses():
    files = sorted((ROOT / "scenarios").glob("*.toml"))
    assert files, "no scenarios shipped"
    for path in files:
        scenario = load_scenario(path)
        assert scenario.workloads


def test_default_scenario_contents():
    s = load_scenario(ROOT / "scenarios" / "default.toml")
    assert (s.name, s.seed, s.rtl, s.config.rows, s.config.cols) == ("default", 2026, True, 8, 8)
    assert [(w.name, w.m, w.k, w.n) for w in s.workloads] == [
        ("square", 128, 128, 128), ("primes", 37, 101, 29), ("single-row", 1, 64, 64),
        ("tall", 512, 72, 24)]


def test_model_only_run_reports_exact_cycles():
    s = parse_scenario({"accelerator": {"preset": "tiny-4x4"},
                        "gemm": [{"m": 5, "k": 9, "n": 3}], "run": {"rtl": False}}, "x.toml")
    report = run_scenario(s)
    (w,) = report.workloads
    # 3 K tiles of 5 rows start at cycles 3, 8, 13; the last row (17) is written at 17 + 4 + 4
    assert (w.name, w.elements, w.model_cycles, w.rtl_cycles) == ("gemm1", 15, 26, None)
    assert report.agrees


@pytest.mark.parametrize("data, message", [
    ({"gemm": [{"m": 1, "k": 1, "n": 1}], "extra": {}},
     "x.toml: unknown key(s) extra (allowed: accelerator, gemm, run, scenario)"),
    ({"gemm": []}, "x.toml: at least one [[gemm]] workload is needed"),
    ({"gemm": [{"m": 1, "k": 0, "n": 1}]}, "x.toml [[gemm]] 1: k must be an integer of at least 1, not 0"),
    ({"gemm": [{"m": 1, "k": 2}]}, "x.toml [[gemm]] 1: missing n"),
    ({"gemm": [{"m": 1, "k": 2, "n": 3, "dtype": "int8"}]},
     "x.toml [[gemm]] 1: unknown key(s) dtype (allowed: k, m, n, name)"),
    ({"accelerator": {"rows": 1}, "gemm": [{"m": 1, "k": 1, "n": 1}]},
     "x.toml [accelerator]: rows must be between 2 and 64, not 1"),
    ({"accelerator": {"preset": "big"}, "gemm": [{"m": 1, "k": 1, "n": 1}]},
     "unknown accelerator preset 'big' (available: tiny-4x4, default-8x8, edge-16x16, server-32x32)"),
    ({"gemm": [{"m": 1, "k": 1, "n": 1}], "run": {"rtl": "yes"}},
     "x.toml [run]: rtl must be true or false, not 'yes'"),
])
def test_bad_scenarios(data, message):
    with pytest.raises(ConfigError) as exc:
        parse_scenario(data, "x.toml")
    assert str(exc.value) == message


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read scenario .*nope.toml: No such file or directory"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\nname = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML: "):
        load_scenario(bad)
