"""The emulation of an instruction path, checked on any machine against recorded engine outputs.

``tests/golden/isa_avx2.npz`` holds what ONNX Runtime 1.32 and torch 2.13's fbgemm returned on
an AVX2 CPU without VNNI (``meta`` says which; ``tests/golden/record_isa.py`` wrote it) for
the full-range operands and models of ``tests/golden/cases.py``. qsim, told that path
(``isa="avx2"``), must reproduce every output, whatever CPU runs this test; told ``exact`` it
must not (except for ONNX Runtime's depthwise kernel, which is exact on every path), so the
recorded data does exercise the saturation. The live engines are compared on the running CPU
in ``tests/nn/test_isa_parity.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qsim.nn.infer import infer
from qsim.quant.kernels import matmul_integer, qlinear_conv, qlinear_matmul
from qsim.quant.ortops import qgemm
from tests.golden.cases import CONVS, MATMULS, conv_operands, matmul_operands

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "isa_avx2.npz"


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN, allow_pickle=False) as data:
        recorded = {name: data[name] for name in data.files}
    meta = json.loads(str(recorded.pop("meta")))
    assert meta["isa"] == "avx2" and meta["torch_cpu_capability"] == "AVX2"
    return recorded


def _conv(case, semantics, isa):
    o = conv_operands(case, seed=sum(case))
    _, outputs, _, stride, pad, dilation, group = case
    return qlinear_conv(o["x"], o["x_scale"], o["x_zero_point"], o["w"], o["w_scale"],
                        np.zeros(outputs, np.int8), o["y_scale"], o["y_zero_point"],
                        strides=(stride,) * 2, pads=(pad,) * 4, dilations=(dilation,) * 2,
                        group=group, semantics=semantics, isa=isa)


@pytest.mark.parametrize("index", range(len(CONVS)))
def test_qlinear_conv(golden, index):
    case = CONVS[index]
    recorded = golden[f"ort/conv{index}"]
    assert np.array_equal(_conv(case, "onnxruntime", "avx2"), recorded)
    depthwise = case[0] == case[1] == case[6]
    assert np.array_equal(_conv(case, "onnxruntime", "exact"), recorded) == depthwise


@pytest.mark.parametrize("index", range(len(CONVS)))
def test_fbgemm_conv_and_depthwise(golden, index):
    case = CONVS[index]
    recorded = golden[f"fbgemm/conv{index}"]
    assert np.array_equal(_conv(case, "pytorch-fbgemm", "avx2"), recorded)
    assert not np.array_equal(_conv(case, "pytorch-fbgemm", "exact"), recorded)


@pytest.mark.parametrize("index", range(len(MATMULS)))
def test_matmul_integer_qgemm_and_fbgemm_linear(golden, index):
    o = matmul_operands(MATMULS[index], seed=sum(MATMULS[index]))
    n = o["b"].shape[1]
    for isa in ("avx2", "exact"):
        same = isa == "avx2"
        acc = matmul_integer(o["a"], o["b"], o["a_zero_point"], isa=isa)
        assert np.array_equal(acc, golden[f"ort/matmul_integer{index}"]) == same
        y = qgemm(o["a"], o["a_scale"], o["a_zero_point"], o["b"], o["b_scale"], np.zeros(n, np.int8),
                  np.zeros(n, np.int32), o["y_scale"], o["y_zero_point"], isa=isa)
        assert np.array_equal(y, golden[f"ort/qgemm{index}"]) == same
        y = qlinear_matmul(o["a"], o["a_scale"], o["a_zero_point"], o["b"], o["b_scale"], np.int8(0),
                           o["y_scale"], o["y_zero_point"], semantics="pytorch-fbgemm", isa=isa)
        assert np.array_equal(y, golden[f"fbgemm/linear{index}"]) == same


@pytest.mark.parametrize("fmt", ["QOperator", "QDQ"])
def test_quantize_static_models(golden, fmt):
    """ORT-quantized full-range models (per channel, uint8 x int8), run through the importer and
    engine exactly as `qsim infer --isa avx2` runs them."""
    model = golden[f"ort/cnn_{fmt}/model"].tobytes()
    x = golden["ort/cnn_x"]
    recorded = golden[f"ort/cnn_{fmt}/y"]
    assert np.array_equal(infer(model, {"x": x}, isa="avx2")["y"], recorded)
    assert np.count_nonzero(infer(model, {"x": x}, isa="exact")["y"] != recorded) > recorded.size // 4
