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
        assert scenario.workloads or scenario.networks


def test_default_scenario_contents():
    s = load_scenario(ROOT / "scenarios" / "default.toml")
    assert (s.name, s.seed, s.rtl, s.config.rows, s.config.cols) == ("default", 2026, True, 8, 8)
    assert [(w.name, w.m, w.k, w.n) for w in s.workloads] == [
        ("square", 128, 128, 128), ("primes", 37, 101, 29), ("single-row", 1, 64, 64),
        ("tall", 512, 72, 24)]
    assert [(n.name, n.model, n.weight_bits, n.batch) for n in s.networks] == [("digits-cnn", "digits_cnn", 8, 8)]


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
     "x.toml: unknown key(s) extra (allowed: accelerator, gemm, network, run, scenario)"),
    ({"gemm": []}, "x.toml: at least one [[gemm]] or [[network]] workload is needed"),
    ({"network": [{"weight_bits": 8}]},
     "x.toml [[network]] 1: missing model (one of digits_mlp, digits_cnn, or an ONNX path)"),
    ({"network": [{"model": "resnet"}]},
     "x.toml [[network]] 1: model must be one of digits_mlp, digits_cnn or a path ending in .onnx, "
     "not 'resnet'"),
    ({"network": [{"model": "digits_cnn", "weight_bits": 3}]},
     "x.toml [[network]] 1: weight_bits must be 8, 4 or 2, not 3"),
    ({"network": [{"model": "digits_cnn", "semantics": "tensorrt"}]},
     "requantization semantics must be one of onnx, onnxruntime, tflite, tflite-single-rounding, "
     "pytorch-fbgemm, fixed-point, not 'tensorrt'"),
    ({"network": [{"model": "digits_cnn", "layers": 3}]},
     "x.toml [[network]] 1: unknown key(s) layers (allowed: activation_format, batch, model, name, "
     "semantics, weight_bits)"),
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


def test_network_runs_on_the_model_without_rtl():
    s = parse_scenario({"accelerator": {"preset": "tiny-4x4"}, "network": [{"model": "digits_mlp", "batch": 3}],
                        "run": {"rtl": False}}, "x.toml")
    (n,) = run_scenario(s).networks
    assert (n.network, n.output_elements, n.output_mismatches, n.programs) == ("digits_mlp", 30, 0, 3)
    assert n.model_cycles == n.rtl_cycles > 0 and n.agrees


def test_network_tables_parse():
    s = parse_scenario({"network": [{"model": "digits_cnn", "weight_bits": 4, "batch": 2},
                                    {"name": "m", "model": "models/x.onnx", "semantics": "tflite"}]}, "x.toml")
    assert [(n.name, n.model, n.weight_bits, n.semantics, n.batch) for n in s.networks] == [
        ("digits_cnn", "digits_cnn", 4, "onnxruntime", 2), ("m", "models/x.onnx", 8, "tflite", 4)]
    assert s.workloads == ()


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read scenario .*nope.toml: No such file or directory"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\nname = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML: "):
        load_scenario(bad)
