from __future__ import annotations

from pathlib import Path

import numpy as np
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
    assert [(w.name, w.m, w.k, w.n, w.dram_width, w.dram_latency) for w in s.workloads] == [
        ("square", 128, 128, 128, 0, 0), ("primes", 37, 101, 29, 0, 0),
        ("single-row", 1, 64, 64, 0, 0), ("tall", 512, 72, 24, 0, 0),
        ("from-dram", 96, 80, 40, 16, 40)]
    assert s.workloads[-1].config_for(s.config).has_dram
    assert [(n.name, n.model, n.weight_bits, n.batch, n.on_chip) for n in s.networks] == [
        ("digits-cnn", "digits_cnn", 8, 8, False), ("digits-cnn-on-chip", "digits_cnn", 8, 8, True)]


def test_model_only_run_reports_exact_cycles():
    s = parse_scenario({"accelerator": {"preset": "tiny-4x4"},
                        "gemm": [{"m": 5, "k": 9, "n": 3}], "run": {"rtl": False}}, "x.toml")
    report = run_scenario(s)
    (w,) = report.workloads
    # 3 K tiles of 5 rows start at cycles 4, 9, 14; the last row (18) is written at
    # 18 + 4 + 4 + 2 (qsim.hw.array_latency)
    assert (w.name, w.elements, w.model_cycles, w.rtl_cycles) == ("gemm1", 15, 29, None)
    # nothing was compared with the RTL: no verdict, but no disagreement either
    assert (w.agrees, report.agrees, report.stopped, report.unfinished) == (None, None, None, [])


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
     "requantization semantics must be one of onnx, onnxruntime, litert, litert-reference, "
     "litert-optimized, tflite-single-rounding, pytorch-fbgemm, fixed-point (or tflite, an alias "
     "of litert-reference), not 'tensorrt'"),
    ({"network": [{"model": "digits_cnn", "layers": 3}]},
     "x.toml [[network]] 1: unknown key(s) layers (allowed: activation_format, batch, calibration, "
     "inputs, isa, model, name, on_chip, semantics, weight_bits)"),
    ({"gemm": [{"m": 1, "k": 0, "n": 1}]}, "x.toml [[gemm]] 1: k must be an integer of at least 1, not 0"),
    ({"gemm": [{"m": 1, "k": 2}]}, "x.toml [[gemm]] 1: missing n"),
    ({"gemm": [{"m": 1, "k": 2, "n": 3, "dram_width": 8}]},
     "x.toml [[gemm]] 1: dram_width and dram_latency go together"),
    ({"gemm": [{"m": 1, "k": 2, "n": 3, "dram_width": 12, "dram_latency": 5}]},
     "x.toml [[gemm]] 1: dram_width must be one of 0, 4, 8, 16, 32, 64 bytes (0: no bus "
     "interface), not 12"),
    ({"gemm": [{"m": 1, "k": 2, "n": 3, "dtype": "int8"}]},
     "x.toml [[gemm]] 1: unknown key(s) dtype (allowed: dram_latency, dram_width, k, m, n, name)"),
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
    assert n.model_cycles > 0
    # the RTL did not run: its figures are None, not copies of the model's
    assert (n.acc_words, n.rtl_mismatches, n.rtl_cycles, n.counter_diffs, n.agrees) == (None,) * 5


def test_network_tables_parse():
    s = parse_scenario({"network": [{"model": "digits_cnn", "weight_bits": 4, "batch": 2},
                                    {"name": "m", "model": "models/x.onnx", "semantics": "tflite"}]}, "x.toml")
    assert [(n.name, n.model, n.weight_bits, n.semantics, n.batch) for n in s.networks] == [
        ("digits_cnn", "digits_cnn", 4, "onnxruntime", 2), ("m", "models/x.onnx", 8, "litert-reference", 4)]  # tflite: an alias
    assert [(n.inputs, n.calibration, n.isa) for n in s.networks] == [(None, None, "exact")] * 2
    assert s.workloads == ()
    s = parse_scenario({"network": [{"model": "m.onnx", "inputs": "x.npz", "calibration": "c.npz",
                                     "isa": "avx2"}], "run": {"time_limit": 30, "timeout_cycles": 10**12}},
                       "x.toml")
    (n,) = s.networks
    assert (n.inputs, n.calibration, n.isa, n.batch, s.time_limit, s.timeout_cycles) == (
        "x.npz", "c.npz", "avx2", None, 30.0, 10**12)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read scenario .*nope.toml: No such file or directory"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\nname = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML: "):
        load_scenario(bad)


def test_wrong_table_types_are_errors():
    for key in ("accelerator", "run", "scenario"):
        with pytest.raises(ConfigError) as exc:
            parse_scenario({key: 5, "gemm": [{"m": 1, "k": 1, "n": 1}]}, "x.toml")
        assert str(exc.value) == f"x.toml: [{key}] must be a table, not 5"


# ------------------------------------------------------------------ networks from ONNX files

def _float_mlp(directory: Path) -> Path:
    """A float ONNX model written with onnx.helper: Gemm + Relu + MatMul on 6 features."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weights = [numpy_helper.from_array(rng.normal(0, 0.5, (6, 5)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "b1"),
               numpy_helper.from_array(rng.normal(0, 0.5, (5, 3)).astype(np.float32), "w2")]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["features", "w1", "b1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["scores"], name="fc2")], "tiny_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "models" / "mlp.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(model, path)
    np.savez(directory / "x.npz", features=rng.normal(0, 1, (10, 6)).astype(np.float32))
    return path


ONNX_SCENARIO = """[accelerator]
preset = "tiny-4x4"

[[network]]
name = "mine"
model = "models/mlp.onnx"
inputs = "x.npz"
{extra}
[run]
rtl = {rtl}
"""


def test_a_network_from_an_onnx_file_with_its_own_inputs(tmp_path):
    _float_mlp(tmp_path)
    path = tmp_path / "mine.toml"
    path.write_text(ONNX_SCENARIO.format(extra="", rtl="false"))
    report = run_scenario(load_scenario(path))
    (n,) = report.networks
    assert (n.network, n.output_elements, n.output_mismatches, n.programs, n.model_cycles) == (
        "mine", 30, 0, 2, 88)
    assert (n.rtl_cycles, n.agrees, report.stopped) == (None, None, None)
    # batch takes the first samples; a separate calibration file is used when given
    np.savez(tmp_path / "cal.npz", features=np.ones((4, 6), np.float32))
    path.write_text(ONNX_SCENARIO.format(extra='batch = 3\ncalibration = "cal.npz"\nisa = "avx2"', rtl="false"))
    (n,) = run_scenario(load_scenario(path)).networks
    assert (n.output_elements, n.output_mismatches, n.programs) == (9, 0, 2)


@pytest.mark.parametrize("extra, message", [
    ("", "{p} [[network]] 1: models/mlp.onnx does not take digits images (float inputs of 64 values "
         "each; its inputs: features float32[Nx6]): name an inputs file, inputs = \"FILE.npz\", keyed "
         "by the graph's input names"),
    ('inputs = "x.npz"\nbatch = 11', "{p} [[network]] 1: batch = 11, but {d}/x.npz holds 10 samples"),
    ('inputs = "zero.npz"', "{p} [[network]] 1: inputs {d}/zero.npz: input 'features' has batch size 0 "
                            "(shape (0, 6)); at least one sample is needed"),
    ('inputs = "wide.npz"', "{p} [[network]] 1: input 'features' has shape (2, 7), expected float32[Nx6]"),
    ('inputs = "named.npz"', "{p} [[network]] 1: graph 'tiny_mlp': missing input(s) features "
                             "(inputs: features)"),
])
def test_onnx_network_mistakes_are_found_at_load(tmp_path, extra, message):
    _float_mlp(tmp_path)
    np.savez(tmp_path / "zero.npz", features=np.zeros((0, 6), np.float32))
    np.savez(tmp_path / "wide.npz", features=np.zeros((2, 7), np.float32))
    np.savez(tmp_path / "named.npz", x=np.zeros((2, 6), np.float32))
    path = tmp_path / "s.toml"
    path.write_text(f'[[network]]\nmodel = "models/mlp.onnx"\n{extra}\n[run]\nrtl = false\n')
    with pytest.raises(ConfigError) as exc:
        run_scenario(load_scenario(path))
    assert str(exc.value) == message.format(p=path, d=tmp_path)


def test_isa_reaches_the_engine_reference(monkeypatch):
    import qsim.nn.accelerate

    seen = []
    real = qsim.nn.accelerate.run

    def spy(*args, **kwargs):
        seen.append(kwargs.get("isa"))
        return real(*args, **kwargs)

    monkeypatch.setattr(qsim.nn.accelerate, "run", spy)
    s = parse_scenario({"accelerator": {"preset": "tiny-4x4"},
                        "network": [{"model": "digits_mlp", "batch": 2, "isa": "avx2"},
                                    {"model": "digits_mlp", "batch": 2}], "run": {"rtl": False}}, "x.toml")
    run_scenario(s)
    assert seen == ["avx2", "avx2", "exact", "exact"]


@pytest.mark.verilator
def test_a_network_from_an_onnx_file_on_the_rtl(tmp_path):
    """The same user model and inputs, every product on the RTL (tiny-4x4, as other tests)."""
    _float_mlp(tmp_path)
    path = tmp_path / "mine.toml"
    path.write_text(ONNX_SCENARIO.format(extra="", rtl="true"))
    report = run_scenario(load_scenario(path))
    (n,) = report.networks
    assert (n.output_mismatches, n.programs, n.rtl_mismatches, n.counter_diffs) == (0, 2, 0, 0)
    assert n.rtl_cycles == n.model_cycles == 88 and n.agrees is True and report.agrees is True


SMALL_MEMORIES = {"preset": "tiny-4x4", "act_mem_words": 16, "weight_mem_words": 16,
                  "acc_mem_words": 16, "cmd_mem_words": 8}


def test_a_gemm_larger_than_the_memories_is_tiled():
    from qsim.compile import tile_gemm

    s = parse_scenario({"accelerator": SMALL_MEMORIES, "gemm": [{"name": "big", "m": 19, "k": 23, "n": 11}],
                        "run": {"rtl": False}}, "x.toml")
    (w,) = run_scenario(s).workloads
    tiling = tile_gemm(s.config, 19, 23, 11)
    assert (w.elements, w.programs, w.model_cycles) == (209, tiling.programs, tiling.estimate().cycles)
    assert w.programs == 18 and w.to_dict()["programs"] == 18
    assert w.utilization == pytest.approx(19 * 23 * 11 / (16 * w.model_cycles))


def test_a_tiled_gemm_on_the_rtl_across_simulator_runs(monkeypatch):
    import qsim.cosim.runner
    import qsim.scenario
    from tests.test_cli import fake_run_programs

    fake_run_programs.calls = []
    monkeypatch.setattr(qsim.cosim.runner, "run_programs", fake_run_programs)
    monkeypatch.setattr(qsim.scenario, "RTL_BATCH_CYCLES", 200)  # the 18 programs need 3 runs
    s = parse_scenario({"accelerator": SMALL_MEMORIES,
                        "gemm": [{"name": "big", "m": 19, "k": 23, "n": 11}, {"m": 2, "k": 3, "n": 4}]},
                       "x.toml")
    report = run_scenario(s)
    assert report.agrees is True
    assert len(fake_run_programs.calls) > 1 and sum(fake_run_programs.calls) == 19
    big, small = report.workloads
    assert (big.programs, big.mismatches, big.rtl_cycles == big.model_cycles) == (18, 0, True)
    assert (small.programs, small.mismatches, small.rtl_cycles == small.model_cycles) == (1, 0, True)


def test_a_gemm_is_refused_only_when_no_tile_fits():
    with pytest.raises(ConfigError) as exc:
        parse_scenario({"accelerator": {"preset": "tiny-4x4", "weight_mem_words": 2},
                        "gemm": [{"m": 1, "k": 1, "n": 1}]}, "x.toml")
    assert str(exc.value) == ("x.toml [[gemm]] 1: the 4x4 accelerator cannot hold one weight tile "
                              "(4 words) and one command: weight memory 2 words, command memory 1024 words")


def test_networks_with_whole_layers_on_chip_report_their_chains(tmp_path):
    from qsim.scenario import run_scenario

    path = tmp_path / "s.toml"
    path.write_text('[accelerator]\npreset = "default-8x8"\nrequant = "float32"\n'
                    '[[network]]\nmodel = "digits_mlp"\non_chip = true\nbatch = 2\n'
                    '[[network]]\nmodel = "digits_cnn"\non_chip = true\nbatch = 2\n'
                    '[run]\nrtl = false\n')
    report = run_scenario(load_scenario(path))
    mlp, cnn = (n.to_dict() for n in report.networks)
    assert mlp["on_chip"] == {"chains": [["fc1", "fc2", "fc3"]],
                              "host_layers": {"quantize_image": "quantize layers run on the host",
                                              "dequantize_logits": "dequantize layers run on the host"}}
    assert cnn["on_chip"]["chains"] == [["conv1"], ["conv2"], ["fc"]]
    assert sorted(cnn["on_chip"]["host_layers"]) == ["dequantize_logits", "flatten", "pool1",
                                                     "pool2", "quantize_image"]
    assert (mlp["output_mismatches"], cnn["output_mismatches"]) == (0, 0)
    assert mlp["rtl_cycles"] is None and mlp["agrees"] is None  # the RTL was not run
    with pytest.raises(ConfigError, match=r"on_chip must be true or false, not 'yes'"):
        parse_scenario({"network": [{"model": "digits_cnn", "on_chip": "yes"}]}, "x.toml")
