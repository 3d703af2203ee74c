"""The CLI: output keys, exit codes and error messages (no RTL builds in this file)."""

from __future__ import annotations

import json

import pytest

from qsim.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_json(capsys):
    code, out, _ = run(capsys, "estimate", "--m", "256", "--k", "256", "--n", "256", "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["cycles"], data["matmuls"], data["useful_macs"]) == (262163, 1024, 256**3)


@pytest.mark.parametrize("argv, message", [
    (("cosim", "--rows", "0", "--m", "1", "--k", "1", "--n", "1"),
     "qsim: error: rows must be between 2 and 64, not 0\n"),
    (("cosim", "--cols", "100000", "--m", "1", "--k", "1", "--n", "1"),
     "qsim: error: cols must be between 2 and 64, not 100000\n"),
    (("cosim", "--m", "0", "--k", "1", "--n", "1"), "qsim: error: GEMM M must be at least 1, not 0\n"),
    (("estimate", "--m", "4096", "--k", "512", "--n", "64"),
     "qsim: error: GEMM 4096x512x64 does not fit the 8x8 accelerator: the act memory needs "
     "262144 words (64 K tiles x 4096 rows) but has 16384 (245760 too many); the acc memory "
     "needs 32768 words (8 N tiles x 4096 rows) but has 16384 (16384 too many)\n"),
    (("cosim", "--preset", "huge", "--m", "1", "--k", "1", "--n", "1"),
     "qsim: error: unknown accelerator preset 'huge' (available: tiny-4x4, default-8x8, "
     "edge-16x16, server-32x32)\n"),
    (("run", "does-not-exist.toml"),
     "qsim: error: cannot read scenario does-not-exist.toml: No such file or directory\n"),
])
def test_errors_are_one_line_with_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (2, "", message)


def test_fit_sizes_memories(capsys):
    code, out, _ = run(capsys, "estimate", "--m", "4096", "--k", "512", "--n", "64", "--fit", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["config"]["act_mem_words"] == 262144 and data["config"]["acc_mem_words"] == 32768


def test_config_file_and_overrides(capsys, tmp_path):
    from qsim.config import AcceleratorConfig

    path = tmp_path / "cfg.json"
    path.write_text(AcceleratorConfig(rows=4, cols=16).to_json())
    code, out, _ = run(capsys, "estimate", "--config", str(path), "--cols", "8",
                       "--m", "8", "--k", "8", "--n", "8", "--json")
    data = json.loads(out)
    assert (code, data["config"]["rows"], data["config"]["cols"]) == (0, 4, 8)


def test_argparse_rejects_non_integers(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["cosim", "--rows", "eight", "--m", "1", "--k", "1", "--n", "1"])
    assert exc.value.code == 2
    assert capsys.readouterr() == ("", "qsim: error: argument --rows: invalid int value: 'eight' "
                                       "(see qsim cosim --help)\n")
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("qsim: error: the following arguments are required: COMMAND "
                                       "(see qsim --help)\n")


def test_isa_option_of_infer(capsys):
    from qsim.cli import build_parser
    from qsim.quant.isa import ISA_NAMES

    parser = build_parser()
    for isa in ("exact", "avx2"):
        args = parser.parse_args(["infer", "m.onnx", "--inputs", "x.npz", "--output", "y.npz", "--isa", isa])
        assert args.isa == isa
    assert parser.parse_args(["infer", "m.onnx", "--inputs", "x.npz", "--output", "y.npz"]).isa == "auto"
    code, out, err = run(capsys, "infer", "m.onnx", "--inputs", "x.npz", "--output", "y.npz", "--isa", "bogus")
    assert (code, out, err) == (2, "", f"qsim: error: --isa must be one of {', '.join(ISA_NAMES)}, "
                                       f"not 'bogus'\n")
    assert ISA_NAMES == ("auto", "sse", "avx2", "avx512bw", "avx-vnni", "avx512-vnni", "amx-int8", "exact")


def test_presets_listing(capsys):
    code, out, _ = run(capsys, "presets", "--json")
    assert code == 0 and json.loads(out)["tiny-4x4"]["rows"] == 4
