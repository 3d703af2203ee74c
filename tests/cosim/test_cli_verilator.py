"""CLI commands that build and run the RTL (slow tier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qsim.cli import main

pytestmark = pytest.mark.verilator
ROOT = Path(__file__).resolve().parents[2]


def test_cosim_json_keys_and_agreement(capsys):
    code = main(["cosim", "--preset", "tiny-4x4", "--m", "19", "--k", "23", "--n", "7",
                 "--seed", "4", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"elements", "mismatches", "model_cycles", "rtl_cycles", "wall_s",
            "sim_cycles_per_s"} <= set(data)
    assert (data["elements"], data["mismatches"], data["agrees"]) == (133, 0, True)
    assert data["rtl_cycles"] == data["model_cycles"]


def test_cosim_exits_1_on_disagreement(capsys, monkeypatch):
    import qsim.model

    real = qsim.model.execute

    def broken(program):
        result = real(program)
        result.memories["acc"][0, 0] += 1
        result.outputs["C"][0, 0] += 1
        return result

    monkeypatch.setattr(qsim.model, "execute", broken)
    code = main(["cosim", "--preset", "tiny-4x4", "--m", "3", "--k", "3", "--n", "3"])
    out = capsys.readouterr().out
    assert code == 1
    assert "mismatches          2" in out and "DISAGREE" in out
    assert "acc word 0 lane 0: model" in out


def test_default_scenario_end_to_end(capsys):
    code = main(["run", str(ROOT / "scenarios" / "default.toml"), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["agrees"] is True
    assert [w["mismatches"] for w in data["workloads"]] == [0, 0, 0, 0, 0]
    assert [w["rtl_cycles"] for w in data["workloads"]] == [w["model_cycles"] for w in data["workloads"]]
    from_dram = data["workloads"][-1]  # operands in DRAM, over the bus interface
    assert from_dram["name"] == "from-dram" and from_dram["dram_bytes"]["read"] > 0
    assert all(w["dram_bytes"] is None for w in data["workloads"][:-1])
    net, on_chip = data["networks"]
    assert (net["network"], net["output_mismatches"], net["rtl_mismatches"], net["agrees"]) == \
        ("digits-cnn", 0, 0, True)
    assert net["rtl_cycles"] == net["model_cycles"] > 0
    assert (on_chip["network"], on_chip["output_mismatches"], on_chip["rtl_mismatches"],
            on_chip["agrees"]) == ("digits-cnn-on-chip", 0, 0, True)
    assert on_chip["on_chip"]["chains"] == [["conv1"], ["conv2"], ["fc"]]


def test_rtl_export_with_lint(capsys, tmp_path):
    out = tmp_path / "top.v"
    code = main(["rtl", "--rows", "4", "--cols", "6", "-o", str(out), "--lint"])
    err = capsys.readouterr().err
    assert code == 0
    assert "verilator --lint-only -Wall: clean" in err
    text = out.read_text()
    assert "module qsim_top(" in text and "module qsim_sram" in text


def test_rtl_export_of_the_ecp5_pe_with_lint(capsys, tmp_path):
    out = tmp_path / "top.v"
    code = main(["rtl", "--rows", "4", "--cols", "6", "--pe", "ecp5", "-o", str(out), "--lint"])
    err = capsys.readouterr().err
    assert code == 0
    assert "verilator --lint-only -Wall: clean" in err
    text = out.read_text()
    # one PE module, instantiating the vendor's block, whose model is not in the file
    assert text.count("MULT18X18D #(") == 1 and "module MULT18X18D" not in text
    assert text.count("module qsim_pe ") == 1 and text.count("qsim_pe pe_") == 24


def test_bench_cosim_small_gemm():
    from qsim.bench import bench_cosim

    r = bench_cosim(m=64, k=16, n=16, rows=8, cols=8)
    assert r["agrees"] and r["mismatches"] == 0
    assert r["cycles"] == r["model_cycles"] == 4 + 4 * 64 + 18
    assert r["cocotb_sim_cycles_per_s"] > 0 and r["native_sim_cycles_per_s"] > 0
    assert r["meets_target"] is False  # far fewer than a million cycles


def test_cosim_of_users_operands_larger_than_the_memories(capsys, tmp_path):
    """A GEMM that overflows every memory of a 4x4 array: tiled, run in one simulator process."""
    import numpy as np

    from qsim.compile import tile_gemm
    from qsim.config import preset

    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, (19, 23), dtype=np.int8)
    b = rng.integers(-128, 128, (23, 11), dtype=np.int8)
    path = tmp_path / "ab.npz"
    np.savez(path, A=a, B=b)
    code = main(["cosim", "--preset", "tiny-4x4", "--act-words", "16", "--weight-words", "16",
                 "--acc-words", "16", "--cmd-words", "8", "--inputs", str(path), "--json"])
    data = json.loads(capsys.readouterr().out)
    cfg = preset("tiny-4x4").replace(act_mem_words=16, weight_mem_words=16, acc_mem_words=16,
                                     cmd_mem_words=8)
    tiling = tile_gemm(cfg, 19, 23, 11)
    assert code == 0 and tiling.programs == data["programs"] == 18
    assert (data["elements"], data["mismatches"], data["acc_mismatches"], data["agrees"]) == (209, 0, 0, True)
    assert data["rtl_cycles"] == data["model_cycles"] == tiling.estimate().cycles


def test_cosim_with_requantization_on_chip(capsys):
    """A 3 x 5 fixed-point unit, memories small enough that the GEMM is cut into programs:
    the int32 product and its 8-bit requantization agree with the references."""
    code = main(["cosim", "--preset", "tiny-4x4", "--rows", "3", "--cols", "5", "--act-words", "64",
                 "--acc-words", "32", "--weight-words", "64", "--cmd-words", "32",
                 "--param-words", "4", "--requant", "fixed-point", "--m", "50", "--k", "17",
                 "--n", "23", "--seed", "3", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (data["programs"], data["elements"], data["mismatches"], data["act_mismatches"]) \
        == (20, 2 * 50 * 23, 0, 0)
    assert data["model_cycles"] == data["rtl_cycles"] == 2790
    assert data["agrees"] is True


def test_scenario_with_whole_layers_on_chip(capsys, tmp_path):
    """qsim run with on_chip networks: each chain on the RTL, fed what the RTL produced."""
    path = tmp_path / "s.toml"
    path.write_text('[accelerator]\npreset = "default-8x8"\nrequant = "float32"\n'
                    '[[network]]\nmodel = "digits_mlp"\non_chip = true\n'
                    '[[network]]\nmodel = "digits_cnn"\non_chip = true\n')
    code = main(["run", str(path), "--json", "--no-progress"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    mlp, cnn = data["networks"]
    for net in (mlp, cnn):
        assert (net["output_mismatches"], net["rtl_mismatches"], net["counter_diffs"]) == (0, 0, 0)
        assert net["rtl_cycles"] == net["model_cycles"] > 0 and net["agrees"] is True
    assert (mlp["programs"], cnn["programs"]) == (1, 3)  # chains: fc1+fc2+fc3; conv1, conv2, fc
