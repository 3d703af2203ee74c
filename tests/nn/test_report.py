"""The accuracy report: pinned table, figure checked through its artists, command line."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import numpy as np
import pytest

from qsim.errors import ConfigError

pytest.importorskip("sklearn")
from qsim.nn.report import VARIANTS, accuracy_report, format_report, main, plot_report  # noqa: E402

#: The report of the shipped weights (also in docs/digits.md).
TABLE = """\
| network | variant | weights | activations | weight bytes | correct | accuracy |
|---|---|---|---|---:|---:|---:|
| mlp | float | float32 | float32 | 10880 | 436/449 | 97.10% |
| mlp | int8 | int8 | int8 | 2720 | 436/449 | 97.10% |
| mlp | int4 | int4 | int8 | 1360 | 430/449 | 95.77% |
| mlp | mixed | fc1 int4, fc2 int8, fc3 int8 | int8 | 1696 | 433/449 | 96.44% |
| cnn | float | float32 | float32 | 7456 | 443/449 | 98.66% |
| cnn | int8 | int8 | int8 | 1864 | 443/449 | 98.66% |
| cnn | int4 | int4 | int8 | 932 | 438/449 | 97.55% |
| cnn | mixed | conv1 int8, conv2 int4, fc int4 | int8 | 968 | 437/449 | 97.33% |

| network | layer | int8 SQNR dB | int4 SQNR dB | mixed SQNR dB |
|---|---|---:|---:|---:|
| mlp | fc1 | 45.40 (int8) | 23.59 (int4) | 23.59 (int4) |
| mlp | fc2 | 43.62 (int8) | 21.86 (int4) | 29.93 (int8) |
| mlp | fc3 | 36.60 (int8) | 16.11 (int4) | 26.19 (int8) |
| cnn | conv1 | 45.47 (int8) | 25.07 (int4) | 45.47 (int8) |
| cnn | conv2 | 39.67 (int8) | 16.84 (int4) | 17.63 (int4) |
| cnn | fc | 38.16 (int8) | 18.48 (int4) | 18.86 (int4) |"""


@pytest.fixture(scope="module")
def report():
    return accuracy_report()


def test_table_is_pinned(report):
    assert format_report(report) == TABLE
    assert report.semantics == "onnxruntime" and report.calibration_images == 1348
    mixed = report.result("cnn", "mixed")
    assert mixed.weight_bits == {"conv1": 8, "conv2": 4, "fc": 4} and mixed.correct == 437
    assert report.result("mlp", "float").layer_sqnr_db == {}


def test_figure_shows_the_report(report):
    fig = plot_report(report)
    accuracy, mlp, cnn = fig.axes
    assert [c.get_label() for c in accuracy.containers] == list(VARIANTS)
    for container, variant in zip(accuracy.containers, VARIANTS):
        heights = [bar.get_height() for bar in container]
        expected = [100 * report.result(n, variant).correct / 449 for n in ("mlp", "cnn")]
        assert np.allclose(heights, expected)
    assert [t.get_text() for t in accuracy.get_xticklabels()] == ["mlp", "cnn"]
    counts = [t.get_text() for t in accuracy.texts]
    assert counts == ["436", "443", "436", "443", "430", "438", "433", "437"]
    for ax, network in ((mlp, "mlp"), (cnn, "cnn")):
        assert ax.get_title() == f"{network}: SQNR per layer"
        assert [c.get_label() for c in ax.containers] == ["int8", "int4", "mixed"]
        layers = [t.get_text() for t in ax.get_xticklabels()]
        assert layers == (["fc1", "fc2", "fc3"] if network == "mlp" else ["conv1", "conv2", "fc"])
        for container, variant in zip(ax.containers, ("int8", "int4", "mixed")):
            r = report.result(network, variant)
            assert [bar.get_height() for bar in container] == [r.layer_sqnr_db[n] for n in layers]
    assert [t.get_text() for t in mlp.texts][-3:] == ["int4", "int8", "int8"]  # the mixed plan's widths
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(VARIANTS)


@pytest.mark.parametrize("options, message", [
    ({"networks": ("resnet",)}, "networks must be a non-empty selection of 'mlp', 'cnn', not ('resnet',)"),
    ({"budget_bits": 1}, "budget_bits must be a number from 2 to 8, not 1"),
    ({"calibration_images": 0}, "calibration_images must be an int from 1 to 1348, not 0"),
    ({"semantics": "tpu"}, "requantization semantics must be one of onnx, onnxruntime, litert, litert-reference, litert-optimized, "
                           "tflite-single-rounding, pytorch-fbgemm, fixed-point (or tflite, an alias of litert-reference), not 'tpu'"),
])
def test_errors(options, message):
    with pytest.raises(ConfigError) as exc:
        accuracy_report(**options)
    assert str(exc.value) == message


def test_command_line(tmp_path):
    out = io.StringIO()
    path = tmp_path / "report.png"
    with redirect_stdout(out):
        # tflite, the alias of litert-reference, is accepted as everywhere else
        assert main(["--networks", "mlp", "--semantics", "tflite", "--figure", str(path)]) == 0
    lines = out.getvalue().splitlines()
    assert lines[:6] == TABLE.splitlines()[:6]  # the integer MLP agrees under tflite semantics
    assert f"figure saved to {path}" in lines
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


UNKNOWN = ("requantization semantics must be one of onnx, onnxruntime, litert, litert-reference, "
           "litert-optimized, tflite-single-rounding, pytorch-fbgemm, fixed-point (or tflite, an "
           "alias of litert-reference), not 'tpu'")


def test_unknown_semantics_is_one_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--semantics", "tpu"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m qsim.nn.report: error: argument --semantics: {UNKNOWN}")
    from qsim.cli import main as qsim_main

    # qsim report: the same message, before any work (the figure's directory is not checked)
    assert qsim_main(["report", "--semantics", "tpu", "--figure", str(tmp_path / "no" / "x.png")]) != 0
    assert capsys.readouterr().err.splitlines() == [f"qsim: error: {UNKNOWN}"]
