"""SCALE-Sim topology CSVs and .cfg files: formats, the conv-to-GEMM mapping, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qsim.cli import main
from qsim.errors import ConfigError
from qsim.nn.estimate import workload_gemms
from qsim.scalesim import read_scalesim_cfg, read_topology

DATA = Path(__file__).parent / "data"
HEADER = "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"


def test_resnet18_topology_maps_to_the_zoo_gemms():
    # written from the architecture: IFMAP sizes include the padding, as SCALE-Sim expects
    _, topo = workload_gemms(topology=str(DATA / "resnet18_conv.csv"))
    _, zoo = workload_gemms(network="resnet18")
    assert sorted((g.m, g.k, g.n) for *_, g in topo) == sorted((g.m, g.k, g.n) for *_, g in zoo)
    first = read_topology(DATA / "resnet18_conv.csv")[0]
    assert (first.name, first.line, first.gemm.m, first.gemm.k, first.gemm.n) == ("conv1", 2, 112 * 112, 147, 64)


def test_formats(tmp_path):
    conv = tmp_path / "c.csv"
    conv.write_text(HEADER + "a, 9, 9, 3, 3, 4, 8, 2,\n\nb,9,9,3,3,4,8,1,2\nDP1, 10, 10, 3, 3, 16, 1, 1,\n")
    a, b, dp = read_topology(conv)
    assert (a.gemm.m, a.gemm.k, a.gemm.n) == (16, 36, 8)       # (9-3)//2+1 = 4 per side
    assert (b.gemm.m, b.line) == (7 * 4, 4)                    # column stride 2: 7 x 4
    assert (dp.kind, dp.gemm.m, dp.gemm.k, dp.gemm.n, dp.gemm.count) == ("dwconv", 64, 9, 1, 16)
    gemm = tmp_path / "g.csv"
    gemm.write_text("Layer, M, N, K,\nfc, 128, 64, 256,\n")
    (fc,) = read_topology(gemm, gemm=True)
    assert (fc.gemm.m, fc.gemm.k, fc.gemm.n) == (128, 256, 64)
    assert fc.at_batch(4).m == 512


@pytest.mark.parametrize("body, gemm, message", [
    (HEADER + "a, 9, 9, 3, 3, 4, 8, 1,\nb, 9, 9, 3, x, 4, 8, 1,\n", False,
     "{p}:3: Filter Width must be an integer, not 'x'"),
    (HEADER + "a, 9, 9, 3, 3, 0, 8, 1,\n", False, "{p}:2: Channels must be at least 1, not 0"),
    (HEADER + "a, 9, -9, 3, 3, 4, 8, 1,\n", False, "{p}:2: IFMAP Width must be at least 1, not -9"),
    (HEADER + "a, 9, 9, 3, 3, 4,\n", False, "{p}:2: a convolution row has 8 fields (or 9 with a "
                                             "separate column stride), this one has 6"),
    (HEADER + "a, 128, 64, 256,\n", False, "{p}:2: a convolution row has 8 fields (or 9 with a "
     "separate column stride), this one has 4 (is this a GEMM file? use --gemm)"),
    (HEADER + "a, 2, 9, 3, 3, 4, 8, 1,\n", False, "{p}:2: the filter (3x3) is larger than the "
     "IFMAP (2x9); SCALE-Sim topologies give padded IFMAP sizes"),
    ("Layer, M, N, K,\nfc, 128, 0, 256,\n", True, "{p}:2: N must be at least 1, not 0"),
    ("fc, 128, 64, 256,\n", True, "{p}:1: the first line must be the header (Layer name, M, N, K), "
                                  "not a layer"),
    (HEADER, False, "{p}: no layers after the header"),
])
def test_bad_topologies(tmp_path, body, gemm, message):
    path = tmp_path / "t.csv"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        read_topology(path, gemm=gemm)
    assert str(err.value) == message.format(p=path)


def test_cfg(tmp_path):
    cfg = read_scalesim_cfg(DATA / "scalesim_16x16_ws.cfg")
    assert (cfg.rows, cfg.cols, cfg.dataflow, cfg.ifmap_kb, cfg.filter_kb, cfg.ofmap_kb,
            cfg.bandwidth_words) == (16, 16, "ws", 256, 256, 128, 10)
    bad = tmp_path / "is.cfg"
    bad.write_text("[architecture_presets]\nArrayHeight: 8\nDataflow : is\n")
    with pytest.raises(ConfigError, match="Dataflow 'is' \\(input-stationary\\) has no counterpart"):
        read_scalesim_cfg(bad)
    bad.write_text("[architecture_presets]\nDataflow : rs\n")
    with pytest.raises(ConfigError, match="Dataflow must be ws or os, not 'rs'"):
        read_scalesim_cfg(bad)


def test_cli_topology_with_cfg_and_flags(capsys):
    topo, cfg = str(DATA / "resnet18_conv.csv"), str(DATA / "scalesim_16x16_ws.cfg")
    assert main(["estimate", "--topology", topo, "--scalesim-cfg", cfg, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    c = data["config"]
    assert (c["rows"], c["cols"], c["dataflow"]) == (16, 16, "weight_stationary")
    # 256 KB of 16-byte activation words, 256 KB of 16-byte weight words, 128 KB of 64-byte sums
    assert (c["act_mem_words"], c["weight_mem_words"], c["acc_mem_words"]) == (16384, 16384, 2048)
    assert data["macs"] == 1_814_073_344 and len(data["layers"]) == 21 and data["energy_pj"] > 0
    # explicit flags override the cfg
    assert main(["estimate", "--topology", topo, "--scalesim-cfg", cfg, "--rows", "8",
                 "--dataflow", "os", "--precision", "int4", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)["config"]
    assert (c["rows"], c["cols"], c["dataflow"], c["input_format"]) == (8, 16, "output_stationary", "int4")
    assert main(["estimate", "--topology", topo, "--dataflow", "is"]) == 2
    assert "--dataflow must be ws (weight-stationary) or os (output-stationary), not 'is'" in \
        capsys.readouterr().err
    assert main(["estimate", "--network", "resnet18", "--gemm"]) == 2
    assert "--gemm (the Layer, M, N, K format) applies to a topology file only" in capsys.readouterr().err


def test_cli_onnx(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    w = numpy_helper.from_array(np.ones((16, 8), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["estimate", "--onnx", str(path), "--batch", "32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["macs"] == 32 * 16 * 8 and data["batch"] == 32
    assert main(["estimate", "--onnx", str(path), "--layers", "--energy"]) == 0
    out = capsys.readouterr().out
    assert "pJ/MAC" in out and "m=1 " in out
