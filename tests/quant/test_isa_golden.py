"""The emulation of each instruction path, checked on any machine against recorded engine outputs.

``tests/golden/isa_<path>.npz`` hold what the engines returned on that path (``meta`` says
which versions and how; ``tests/golden/record_isa.py`` wrote them) for the operands and models
of ``tests/golden/cases.py``:

* ``isa_avx2.npz``: ONNX Runtime 1.32 and torch 2.13's fbgemm on an AMD EPYC with AVX2 and no
  VNNI (u8 x s8 pairs saturate in int16);
* ``isa_sse.npz``: ONNX Runtime 1.32 under ``qemu-x86_64 -cpu Nehalem``, an x86-64 without
  AVX2 (exact integer kernels, SSE2 element-wise kernels without FMA).

qsim, told the path, must reproduce every output whatever CPU runs this test; told another
path it must not (where the paths differ), so the recorded data does tell the paths apart.
The live engines are compared on the running CPU in ``tests/nn/test_isa_parity.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qsim.nn.infer import infer
from qsim.quant import ortops
from qsim.quant.kernels import matmul_integer, qlinear_conv, qlinear_matmul
from tests.golden.cases import (ADDS, CONVS, MATMULS, SIGMOIDS, add_grid, conv_operands, logistic_inputs,
                                matmul_operands)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
PATHS = ("avx2", "sse")
OTHER = {"avx2": "sse", "sse": "avx2"}


@pytest.fixture(scope="module")
def golden():
    recorded = {}
    for path in PATHS:
        with np.load(GOLDEN / f"isa_{path}.npz", allow_pickle=False) as data:
            recorded[path] = {name: data[name] for name in data.files}
        meta = json.loads(str(recorded[path].pop("meta")))
        assert meta["isa"] == path and meta["onnxruntime"] == "1.32.0"
    return recorded


def _conv(case, semantics, isa):
    o = conv_operands(case, seed=sum(case))
    _, outputs, _, stride, pad, dilation, group = case
    return qlinear_conv(o["x"], o["x_scale"], o["x_zero_point"], o["w"], o["w_scale"],
                        np.zeros(outputs, np.int8), o["y_scale"], o["y_zero_point"],
                        strides=(stride,) * 2, pads=(pad,) * 4, dilations=(dilation,) * 2,
                        group=group, semantics=semantics, isa=isa)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("index", range(len(CONVS)))
def test_qlinear_conv(golden, path, index):
    case = CONVS[index]
    recorded = golden[path][f"ort/conv{index}"]
    assert np.array_equal(_conv(case, "onnxruntime", path), recorded)
    depthwise = case[0] == case[1] == case[6]
    # avx2 saturates (but not in ORT's depthwise kernel); sse is exact
    exact = np.array_equal(_conv(case, "onnxruntime", "exact"), recorded)
    assert exact == (path == "sse" or depthwise)


@pytest.mark.parametrize("index", range(len(CONVS)))
def test_fbgemm_conv_and_depthwise(golden, index):
    case = CONVS[index]
    recorded = golden["avx2"][f"fbgemm/conv{index}"]
    assert np.array_equal(_conv(case, "pytorch-fbgemm", "avx2"), recorded)
    assert not np.array_equal(_conv(case, "pytorch-fbgemm", "exact"), recorded)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("index", range(len(MATMULS)))
def test_matmul_integer_and_qgemm(golden, path, index):
    o = matmul_operands(MATMULS[index], seed=sum(MATMULS[index]))
    n = o["b"].shape[1]
    for isa in (path, OTHER[path]):
        same = isa == path
        acc = matmul_integer(o["a"], o["b"], o["a_zero_point"], isa=isa)
        assert np.array_equal(acc, golden[path][f"ort/matmul_integer{index}"]) == same
        y = ortops.qgemm(o["a"], o["a_scale"], o["a_zero_point"], o["b"], o["b_scale"], np.zeros(n, np.int8),
                         np.zeros(n, np.int32), o["y_scale"], o["y_zero_point"], isa=isa)
        assert np.array_equal(y, golden[path][f"ort/qgemm{index}"]) == same


@pytest.mark.parametrize("index", range(len(MATMULS)))
def test_fbgemm_linear(golden, index):
    o = matmul_operands(MATMULS[index], seed=sum(MATMULS[index]))
    for isa in ("avx2", "exact"):
        y = qlinear_matmul(o["a"], o["a_scale"], o["a_zero_point"], o["b"], o["b_scale"], np.int8(0),
                           o["y_scale"], o["y_zero_point"], semantics="pytorch-fbgemm", isa=isa)
        assert np.array_equal(y, golden["avx2"][f"fbgemm/linear{index}"]) == (isa == "avx2")


@pytest.mark.parametrize("path", PATHS)
def test_qlinear_add(golden, path):
    a, b = add_grid()
    differ = 0
    for i, (sa, za, sb, zb, sc, zc) in enumerate(ADDS):
        args = (np.float32(sa), np.uint8(za), np.float32(sb), np.uint8(zb), np.float32(sc), np.uint8(zc))
        for name, (left, right) in (("broadcast", (a, b)), ("full", np.broadcast_arrays(a, b))):
            recorded = golden[path][f"ort/add{i}_{name}"]

            def ours(isa):
                return ortops.qlinear_add(left, *args[:2], right, *args[2:4], *args[4:], isa=isa)

            assert np.array_equal(ours(path), recorded), (i, name)
            differ += int(np.count_nonzero(ours(OTHER[path]) != recorded))
    assert differ > 0  # the FMA and SSE2 kernels round some sums differently


@pytest.mark.parametrize("path", PATHS)
def test_qlinear_sigmoid_and_logistic(golden, path):
    codes = np.arange(-128, 128).astype(np.int8)
    differ = 0
    for i, (sx, zx, sy, zy) in enumerate(SIGMOIDS):
        recorded = golden[path][f"ort/sigmoid{i}"]
        args = (codes, np.float32(sx), np.int8(zx), np.float32(sy), np.int8(zy))
        assert np.array_equal(ortops.qlinear_sigmoid(*args, isa=path), recorded), i
        differ += int(np.count_nonzero(ortops.qlinear_sigmoid(*args, isa=OTHER[path]) != recorded))
    values = logistic_inputs()
    recorded = golden[path]["ort/logistic"]
    assert np.array_equal(ortops.mlas_logistic(values, isa=path), recorded)
    differ += int(np.count_nonzero(ortops.mlas_logistic(values, isa=OTHER[path]) != recorded))
    assert differ > 0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", ["QOperator", "QDQ"])
def test_quantize_static_models(golden, path, fmt):
    """ORT-quantized full-range models (per channel, uint8 x int8), run through the importer and
    engine exactly as `qsim infer --isa PATH` runs them."""
    model = golden[path][f"ort/cnn_{fmt}/model"].tobytes()
    x = golden[path]["ort/cnn_x"]
    recorded = golden[path][f"ort/cnn_{fmt}/y"]
    assert np.array_equal(infer(model, {"x": x}, isa=path)["y"], recorded)
    saturated = np.count_nonzero(infer(model, {"x": x}, isa="avx2")["y"] != infer(model, {"x": x}, isa="exact")["y"])
    assert saturated > recorded.size // 4  # the model is one where the GEMM path matters
