"""The CLI: output keys, exit codes and error messages (no RTL builds in this file)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsim.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_with_requant_counts_the_post_processing(capsys):
    code, out, _ = run(capsys, "estimate", "--preset", "tiny-4x4", "--requant", "float32",
                       "--m", "5", "--k", "4", "--n", "4", "--json")
    data = json.loads(out)
    assert code == 0  # the hand-checked schedule of tests/test_timing.py
    assert {k: data[k] for k in ("cycles", "requants", "ppu_outputs", "wait_drain", "wait_ppu")} \
        == {"cycles": 30, "requants": 1, "ppu_outputs": 20, "wait_drain": 15, "wait_ppu": 9}
    assert data["config"]["requant"] == "float32"


def test_int4_doubles_the_macs_per_cycle_in_estimates(capsys):
    cycles = {}
    for precision in ("int8", "int4"):
        code, out, _ = run(capsys, "estimate", "--precision", precision, "--m", "512", "--k", "512",
                           "--n", "512", "--json")
        data = json.loads(out)
        assert code == 0 and data["config"]["input_format"] == data["config"]["weight_format"] == precision
        cycles[precision] = data["cycles"]
    # 8 x 8: 8192 K x N tiles of 512 rows at int8, 4096 at int4 (K tiles of 16)
    assert cycles == {"int8": 2097240, "int4": 1048620}


def test_estimate_json(capsys):
    code, out, _ = run(capsys, "estimate", "--m", "256", "--k", "256", "--n", "256", "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["cycles"], data["matmuls"], data["useful_macs"]) == (262166, 1024, 256**3)


@pytest.mark.parametrize("argv, message", [
    (("cosim", "--rows", "0", "--m", "1", "--k", "1", "--n", "1"),
     "qsim: error: rows must be between 2 and 64, not 0\n"),
    (("cosim", "--cols", "100000", "--m", "1", "--k", "1", "--n", "1"),
     "qsim: error: cols must be between 2 and 64, not 100000\n"),
    (("cosim", "--m", "0", "--k", "1", "--n", "1"), "qsim: error: GEMM M must be at least 1, not 0\n"),
    (("estimate", "--weight-words", "4", "--m", "4096", "--k", "512", "--n", "64"),
     "qsim: error: the 8x8 accelerator cannot hold one weight tile (8 words) and one command: "
     "weight memory 4 words, command memory 4096 words\n"),
    (("cosim", "--m", "3", "--k", "3"),
     "qsim: error: cosim needs --inputs A_B.npz or all of --m --k --n (missing --n)\n"),
    (("cosim", "--preset", "huge", "--m", "1", "--k", "1", "--n", "1"),
     "qsim: error: unknown accelerator preset 'huge' (available: tiny-4x4, default-8x8, "
     "edge-16x16, server-32x32)\n"),
    (("run", "does-not-exist.toml"),
     "qsim: error: cannot read scenario does-not-exist.toml: No such file or directory\n"),
    (("estimate", "--precision", "int2", "--m", "1", "--k", "1", "--n", "1"),
     "qsim: error: --precision must be one of int8, int4, not 'int2'\n"),
    (("estimate", "--requant", "int8", "--m", "1", "--k", "1", "--n", "1"),
     "qsim: error: requant must be one of none, fixed-point, float32, not 'int8'\n"),
    (("estimate", "--requant", "float32", "--acc-bits", "40", "--m", "1", "--k", "1", "--n", "1"),
     "qsim: error: acc_bits must be at most 32 with requant float32 (the post-processing unit "
     "takes int32 accumulators), not 40\n"),
    (("estimate", "--preset", "tiny-4x4", "--requant", "float32", "--weight-words", "8",
      "--m", "4", "--k", "40", "--n", "4"),
     "qsim: error: GEMM 4x40x4 with requantization on chip needs its whole reduction (K = 40, "
     "10 tiles) in one program, which the 4x4 accelerator cannot hold: 40 weight words (has 8), "
     "20 act words for one row and its result (has 4096), 13 commands (has 1024)\n"),
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


def test_estimate_tiles_a_gemm_larger_than_the_memories(capsys):
    from qsim.compile import plan_gemm
    from qsim.config import AcceleratorConfig
    from qsim.timing import simulate_timing

    code, out, _ = run(capsys, "estimate", "--m", "4096", "--k", "512", "--n", "64", "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["programs"], data["block"]) == (16, {"m": 256, "k": 512, "n": 64})
    # each program is a separate run: the cycles are the sum over the 16 programs
    a = np.zeros((4096, 512), dtype=np.int8)
    b = np.zeros((512, 64), dtype=np.int8)
    plan = plan_gemm(AcceleratorConfig(), a, b)
    assert data["cycles"] == sum(simulate_timing(p).cycles for p in plan.programs) == 2097504
    assert (data["matmuls"], data["useful_macs"]) == (16 * 64 * 8, 4096 * 512 * 64)
    code, out, _ = run(capsys, "estimate", "--m", "4096", "--k", "512", "--n", "64")
    assert "programs      16 programs of at most 256x512x64 (M x K x N)" in out.splitlines()


def fake_run_programs(programs, **kwargs):
    """The RTL as the model and the timing model say it behaves (no Verilator)."""
    from qsim.cosim.result import RtlResult
    from qsim.model import execute
    from qsim.timing import simulate_timing

    fake_run_programs.calls.append(len(programs))
    results = []
    for p in programs:
        model = execute(p)
        results.append(RtlResult(counters=simulate_timing(p).counters(), acc=model.memories["acc"],
                                 outputs=dict(model.outputs), wall_s=0.01, sim_wall_s=0.005))
    return results


@pytest.fixture
def fake_rtl(monkeypatch):
    import qsim.cosim.runner

    fake_run_programs.calls = []
    monkeypatch.setattr(qsim.cosim.runner, "run_programs", fake_run_programs)
    return fake_run_programs


SMALL = ("--preset", "tiny-4x4", "--act-words", "16", "--weight-words", "16", "--acc-words", "16",
         "--cmd-words", "8")


def test_cosim_of_a_gemm_larger_than_the_memories(capsys, fake_rtl):
    from qsim.compile import tile_gemm
    from qsim.config import preset

    code, out, err = run(capsys, "cosim", *SMALL, "--m", "19", "--k", "23", "--n", "11", "--json")
    data = json.loads(out)
    cfg = preset("tiny-4x4").replace(act_mem_words=16, weight_mem_words=16, acc_mem_words=16,
                                     cmd_mem_words=8)
    tiling = tile_gemm(cfg, 19, 23, 11)
    assert (code, err, fake_rtl.calls) == (0, "", [tiling.programs])  # one simulator run
    assert (data["name"], data["programs"], data["elements"], data["mismatches"], data["agrees"]) \
        == ("gemm19x23x11", tiling.programs, 19 * 11, 0, True)
    assert tiling.programs > 1
    assert data["model_cycles"] == data["rtl_cycles"] == tiling.estimate().cycles
    assert data["seed"] == 0 and data["inputs"] is None
    code, out, _ = run(capsys, "cosim", *SMALL, "--m", "19", "--k", "23", "--n", "11")
    assert code == 0 and f"programs            {tiling.describe()}" in out.splitlines()


def test_cosim_reports_a_wrong_block(capsys, monkeypatch, fake_rtl):
    import qsim.cosim.runner

    def broken(programs, **kwargs):
        results = fake_run_programs(programs, **kwargs)
        results[1].outputs["C"][0, 0] += 1
        results[1].acc[0, 0] += 1
        results[2].counters["cycles"] += 3
        return results

    monkeypatch.setattr(qsim.cosim.runner, "run_programs", broken)
    code, out, _ = run(capsys, "cosim", *SMALL, "--m", "19", "--k", "23", "--n", "11", "--json")
    data = json.loads(out)
    assert (code, data["mismatches"], data["acc_mismatches"], data["agrees"]) == (1, 1, 1, False)
    assert data["rtl_cycles"] == data["model_cycles"] + 3
    assert list(data["counter_diffs"]) == ["gemm19x23x11[0:7,0:8,16:23] cycles"]
    assert data["first_mismatches"][0].startswith("C[0, 0]: rtl ")
    assert data["first_mismatches"][1].startswith("gemm19x23x11[0:7,0:8,8:16]: acc word 0 lane 0: model ")


def test_cosim_of_the_users_operands(capsys, tmp_path, fake_rtl):
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (9, 30), dtype=np.int16)
    b = rng.integers(-128, 128, (30, 6), dtype=np.int8)
    path = tmp_path / "ab.npz"
    np.savez(path, A=a, B=b)
    code, out, err = run(capsys, "cosim", *SMALL, "--inputs", str(path), "--json")
    data = json.loads(out)
    assert (code, err, data["elements"], data["mismatches"], data["agrees"]) == (0, "", 54, 0, True)
    assert (data["inputs"], data["seed"], data["name"]) == (str(path), None, "gemm9x30x6")
    assert data["programs"] > 1 and data["rtl_cycles"] == data["model_cycles"]
    # --m --k --n may repeat the arrays' sizes
    assert run(capsys, "cosim", *SMALL, "--inputs", str(path), "--k", "30")[0] == 0


def _npz(tmp_path, **arrays):
    path = tmp_path / "ab.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("arrays, extra, message", [
    ({"A": np.zeros((2, 3), np.int8)}, (), "inputs {p}: no array B (it holds A; expected A, M x K, and B, K x N)"),
    ({"a": np.zeros((2, 3), np.int8), "b": np.zeros((3, 2), np.int8)}, (),
     "inputs {p}: no array A or B (it holds a, b; expected A, M x K, and B, K x N)"),
    ({"A": np.zeros((2, 3, 1), np.int8), "B": np.zeros((3, 2), np.int8)}, (),
     "inputs {p}: A must be 2-D (M x K), not of shape (2, 3, 1)"),
    ({"A": np.zeros((2, 3), np.int8), "B": np.zeros(3, np.int8)}, (),
     "inputs {p}: B must be 2-D (K x N), not of shape (3,)"),
    ({"A": np.zeros((2, 3), np.float32), "B": np.zeros((3, 2), np.int8)}, (),
     "inputs {p}: A must hold integers, not float32"),
    ({"A": np.zeros((2, 3), np.int8), "B": np.zeros((3, 2), bool)}, (),
     "inputs {p}: B must hold integers, not bool"),
    ({"A": np.zeros((0, 3), np.int8), "B": np.zeros((3, 2), np.int8)}, (),
     "inputs {p}: A is 0x3 (M x K); every size must be at least 1"),
    ({"A": np.zeros((2, 3), np.int8), "B": np.zeros((4, 2), np.int8)}, (),
     "inputs {p}: A is 2x3 (M x K) but B is 4x2 (K x N): A has 3 columns, B 4 rows"),
    ({"A": np.array([[0, 1, 2], [3, 200, 201]], np.uint8), "B": np.zeros((3, 2), np.int8)}, (),
     "inputs {p}: A[1, 1] = 200 is outside the input format int8 [-128, 127] (2 values of A are)"),
    ({"A": np.zeros((2, 3), np.int8), "B": np.array([[0, 0], [0, -129], [0, 0]])}, (),
     "inputs {p}: B[1, 1] = -129 is outside the weight format int8 [-128, 127]"),
    ({"A": np.zeros((2, 3), np.int8), "B": np.full((3, 2), 2**64 - 1, np.uint64)}, (),
     "inputs {p}: B[0, 0] = 18446744073709551615 is outside the weight format int8 [-128, 127] "
     "(6 values of B are)"),
    ({"A": np.zeros((2, 3), np.int8), "B": np.zeros((3, 2), np.int8)}, ("--m", "4"),
     "--m 4 differs from inputs {p}, whose M is 2"),
    ({"A": np.zeros((2, 3), np.int8), "B": np.zeros((3, 2), np.int8)}, ("--m", "2", "--n", "3"),
     "--n 3 differs from inputs {p}, whose N is 2"),
])
def test_inputs_mistakes_are_one_line_with_exit_2(capsys, tmp_path, arrays, extra, message):
    path = _npz(tmp_path, **arrays)
    code, out, err = run(capsys, "cosim", "--inputs", path, *extra)
    assert (code, out, err) == (2, "", f"qsim: error: {message.format(p=path)}\n")


def test_inputs_files_that_are_not_npz(capsys, tmp_path):
    missing = tmp_path / "missing.npz"
    assert run(capsys, "cosim", "--inputs", str(missing)) == (
        2, "", f"qsim: error: cannot read inputs {missing}: No such file or directory\n")
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros((2, 2), np.int8))
    assert run(capsys, "cosim", "--inputs", str(npy)) == (
        2, "", f"qsim: error: inputs {npy}: not an .npz file (write one with numpy.savez(path, A=a, B=b))\n")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 truncated")
    code, out, err = run(capsys, "cosim", "--inputs", str(broken))
    assert (code, out) == (2, "") and err.startswith(f"qsim: error: cannot read inputs {broken}: not a valid .npz file (")
    assert err.count("\n") == 1
    objects = tmp_path / "objects.npz"
    np.savez(objects, A=np.array([[1, None]], dtype=object), B=np.zeros((2, 1), np.int8))
    code, out, err = run(capsys, "cosim", "--inputs", str(objects))
    assert (code, out) == (2, "") and err.startswith(f"qsim: error: cannot read inputs {objects}: not a valid .npz file (")
