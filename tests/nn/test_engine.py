from __future__ import annotations

import numpy as np
import pytest

from qsim.errors import ConfigError
from qsim.nn import layers as L
from qsim.nn.engine import AccumulatorBackend, ExactBackend, run
from qsim.nn.graph import Graph, TensorType
from qsim.quant.kernels import qlinear_conv, qlinear_matmul
from qsim.quant.ortops import qlinear_add, qlinear_global_average_pool
from qsim.quant.params import QuantParams
from qsim.quant.requant import Semantics

U8 = lambda s, z: QuantParams(np.float32(s), z, "uint8")  # noqa: E731


def _naive_conv(x, w, b, stride, pad):
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    y = np.zeros((n, m, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, :, i, j] = np.einsum("nchw,mchw->nm", patch, w) + b
    return y


def test_float_conv_pool_softmax(rng):
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    g = Graph("f", {"x": TensorType((None, 2, 9, 9))}, [
        L.Conv2d("c", ("x",), ("y",), in_channels=2, out_channels=3, kernel=3, strides=2, pads=1,
                 weight=w, bias=b, activation="relu"),
        L.MaxPool("p", ("y",), ("z",), kernel=2, strides=2, ceil_mode=True),
        L.Flatten("f", ("z",), ("o",)),
        L.Softmax("s", ("o",), ("sm",)),
    ], ["sm"])
    x = rng.standard_normal((2, 2, 9, 9)).astype(np.float32)
    r = run(g, {"x": x}, keep=True)
    ref = np.maximum(_naive_conv(x, w, b, 2, 1), 0)
    assert np.allclose(r.values["y"], ref, atol=1e-5)
    assert r.values["z"].shape == (2, 3, 3, 3)  # 5x5 pooled 2x2 with ceil_mode
    assert np.allclose(r.values["z"][:, :, 2, 2], ref[:, :, 4, 4])
    assert np.allclose(r.outputs["sm"].sum(axis=1), 1.0)


@pytest.mark.parametrize("semantics", [s.value for s in Semantics if s is not Semantics.LITERT_OPTIMIZED])
def test_quantized_conv_and_linear_equal_the_kernels(rng, semantics):
    wq = rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8)
    bq = rng.integers(-2000, 2000, 4).astype(np.int32)
    xp, yp = U8(0.05, 128), U8(0.2, 10)
    wp = QuantParams(np.array([0.01, 0.02, 0.03, 0.04], np.float32), np.zeros(4), "int8", axis=0)
    fc_w = rng.integers(-127, 128, (64, 5)).astype(np.int8)
    fc_p = QuantParams(np.float32(0.003), 0, "int8")
    out_p = U8(0.1, 128)
    g = Graph("q", {"x": TensorType((None, 2, 7, 7), "uint8")}, [
        L.Conv2d("c", ("x",), ("y",), in_channels=2, out_channels=4, kernel=3, strides=2,
                 pads=(1, 0, 1, 2), weight=wq, bias=bq, input_params=xp, weight_params=wp,
                 output_params=yp),
        L.Flatten("f", ("y",), ("v",)),
        L.Linear("fc", ("v",), ("o",), in_features=64, out_features=5, weight=fc_w,
                 input_params=yp, weight_params=fc_p, output_params=out_p),
    ], ["o"])
    xq = rng.integers(0, 256, (3, 2, 7, 7)).astype(np.uint8)
    r = run(g, {"x": xq}, semantics, keep=True)
    conv = qlinear_conv(xq, np.float32(0.05), np.uint8(128), wq, wp.scale, np.int8(0),
                        np.float32(0.2), np.uint8(10), bq, strides=(2, 2), pads=(1, 0, 1, 2),
                        semantics=semantics)
    assert np.array_equal(r.values["y"], conv)
    fc = qlinear_matmul(conv.reshape(3, 64), np.float32(0.2), np.uint8(10), fc_w, np.float32(0.003),
                        np.int8(0), np.float32(0.1), np.uint8(128), semantics=semantics)
    assert np.array_equal(r.outputs["o"], fc)


def test_fused_relu_clamps_at_the_zero_point(rng):
    w = np.ones((1, 1, 1, 1), np.int8)
    yp = QuantParams(np.float32(1.0), 100, "uint8")
    g = Graph("r", {"x": TensorType((1, 1, 1, 4), "uint8")}, [
        L.Conv2d("c", ("x",), ("y",), in_channels=1, out_channels=1, weight=w, activation="relu",
                 input_params=U8(1.0, 50), weight_params=QuantParams(np.float32(1.0), 0, "int8"),
                 output_params=yp)], ["y"])
    y = run(g, {"x": np.array([[[[0, 49, 50, 60]]]], np.uint8)}).outputs["y"]
    assert y.ravel().tolist() == [100, 100, 100, 110]  # x - 50 + 100, clamped at the real zero (100)


def test_add_and_global_pool_follow_onnxruntime(rng):
    pa, pb, py = U8(0.031, 120), U8(0.017, 3), U8(0.05, 90)
    g = Graph("a", {"a": TensorType((None, 3, 5, 5), "uint8"), "b": TensorType((None, 3, 5, 5), "uint8")}, [
        L.Add("add", ("a", "b"), ("s",), input_params=(pa, pb), output_params=py),
        L.GlobalAvgPool("gap", ("s",), ("p",), input_params=py, output_params=U8(0.02, 7)),
    ], ["p"])
    a = rng.integers(0, 256, (4, 3, 5, 5)).astype(np.uint8)
    b = rng.integers(0, 256, (4, 3, 5, 5)).astype(np.uint8)
    r = run(g, {"a": a, "b": b}, "onnxruntime", keep=True)
    s = qlinear_add(a, np.float32(0.031), np.uint8(120), b, np.float32(0.017), np.uint8(3),
                    np.float32(0.05), np.uint8(90))
    assert np.array_equal(r.values["s"], s)
    p = qlinear_global_average_pool(s, np.float32(0.05), np.uint8(90), np.float32(0.02), np.uint8(7))
    assert np.array_equal(r.outputs["p"], p)
    # the integer-only semantics never leave integers and stay within 1 of the float reference
    onnx = run(g, {"a": a, "b": b}, "onnx").outputs["p"].astype(int)
    tfl = run(g, {"a": a, "b": b}, "tflite").outputs["p"].astype(int)
    assert np.abs(onnx - tfl).max() <= 1


def test_generic_backend_lowers_grouped_conv_to_one_gemm_per_group(rng):
    calls = []

    class Recording(AccumulatorBackend):  # only matmul: conv goes through the generic lowering
        def matmul(self, x, x_zp, w, w_zp, layer):
            calls.append((layer.name, x.shape, w.shape))
            return ExactBackend().matmul(x, x_zp, w, w_zp, layer)

    wq = rng.integers(-127, 128, (6, 1, 3, 3)).astype(np.int8)
    params = dict(input_params=U8(0.1, 7), weight_params=QuantParams(np.float32(0.01), 0, "int8"),
                  output_params=U8(0.1, 0))
    g = Graph("g", {"x": TensorType((2, 3, 5, 5), "uint8")}, [
        L.Conv2d("c", ("x",), ("y",), in_channels=3, out_channels=6, kernel=3, pads=1, groups=3,
                 weight=wq, **params)], ["y"])
    x = rng.integers(0, 256, (2, 3, 5, 5)).astype(np.uint8)
    # isa="exact": a custom backend is not ONNX Runtime, so no engine saturation is applied to it
    assert np.array_equal(run(g, {"x": x}, backend=Recording()).outputs["y"],
                          run(g, {"x": x}, isa="exact").outputs["y"])
    assert calls == [("c", (50, 9), (9, 2))] * 3  # per group: 2 images x 5 x 5 rows, K = 1 x 3 x 3


@pytest.mark.parametrize("feeds, message", [
    ({}, "graph 'g': missing input(s) x (inputs: x)"),
    ({"x": np.zeros((1, 4), np.float32), "y": np.zeros(1)}, "graph 'g': unknown input(s) y (inputs: x)"),
    ({"x": np.zeros((1, 5), np.float32)}, r"input 'x' has shape (1, 5), expected float32[Nx4]"),
    ({"x": np.zeros((1, 4), np.int8)}, "input 'x' has dtype int8, expected float32"),
])
def test_input_errors(feeds, message):
    g = Graph("g", {"x": TensorType((None, 4))}, [L.Relu("r", ("x",), ("y",))], ["y"])
    with pytest.raises(ConfigError) as exc:
        run(g, feeds)
    assert str(exc.value) == message


def test_shape_only_and_float_only_layers_refuse_to_run():
    g = Graph("g", {"x": TensorType((1, 4))}, [L.Linear("fc", ("x",), ("y",), in_features=4, out_features=2)], ["y"])
    with pytest.raises(ConfigError, match=r"layer 'fc' \(linear\): has no weights \(a shape-only graph cannot run\)"):
        run(g, {"x": np.zeros((1, 4), np.float32)})
    g = Graph("g", {"x": TensorType((1, 4), "uint8")}, [L.Softmax("s", ("x",), ("y",))], ["y"])
    with pytest.raises(ConfigError, match=r"layer 's' \(softmax\): is float only and cannot take an integer input"):
        run(g, {"x": np.zeros((1, 4), np.uint8)})
