"""BatchNorm folding: bit-exact parity with ONNX Runtime's fusion, the PyTorch order, errors."""

from __future__ import annotations

import numpy as np
import pytest

from qsim.errors import ConfigError
from qsim.numerics import INT8, UINT8
from qsim.quant.fold import FusedLayer, fold_batchnorm, fuse_conv_bn_relu, ulp_distance
from qsim.quant.params import QuantParams

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def bn_params(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    """Random BatchNorm statistics with exact, tiny and moderate variances."""
    var = (rng.random(channels) ** 3 * 4).astype(np.float32)
    tiny = [0.0, 1e-30, 1e-12, 1e-7, 3e-6]
    var[:len(tiny)] = tiny[:channels]  # near zero: sqrt(var + eps) is dominated by eps
    return {
        "gamma": (rng.standard_normal(channels) * 2).astype(np.float32),
        "beta": rng.standard_normal(channels).astype(np.float32),
        "mean": rng.standard_normal(channels).astype(np.float32),
        "var": var,
    }


def ort_optimized(model: onnx.ModelProto, path) -> onnx.ModelProto:
    """Let ONNX Runtime optimise ``model`` at the basic level (where its BN fusions live) and
    return the saved optimised graph."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def conv_bn_model(weight, bias, p, eps) -> onnx.ModelProto:
    out_c, in_c = weight.shape[:2]
    inits = [numpy_helper.from_array(weight, "W")] + [
        numpy_helper.from_array(p[k], k) for k in ("gamma", "beta", "mean", "var")]
    inputs = ["x", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "B"))
        inputs.append("B")
    nodes = [
        helper.make_node("Conv", inputs, ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["y"],
                         epsilon=eps),
    ]
    graph = helper.make_graph(
        nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_c, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_c, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
def test_conv_bn_fold_is_bit_exact_with_onnxruntime(with_bias, eps, rng, tmp_path):
    weight = rng.standard_normal((24, 5, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32) if with_bias else None
    p = bn_params(rng, 24)
    if not with_bias:
        p["mean"][5:8] = 0.0  # zero results: ORT's bias-free path decides the sign of zero
        p["beta"][5:8] = [-0.0, 0.0, -0.0]
    optimised = ort_optimized(conv_bn_model(weight, bias, p, eps), tmp_path / "fused.onnx")
    assert [n.op_type for n in optimised.graph.node] == ["Conv"]
    conv = optimised.graph.node[0]
    found = initializers(optimised)
    ort_w, ort_b = found[conv.input[1]], found[conv.input[2]]

    w, b = fold_batchnorm(weight, bias, **p, eps=eps)
    assert w.dtype == b.dtype == np.float32
    assert np.array_equal(bits(w), bits(ort_w))
    assert np.array_equal(bits(b), bits(ort_b))


def test_quant_pre_process_folds_the_same_way(rng, tmp_path):
    """The path NUMERICS.md names: ``quant_pre_process`` runs the same ORT fusion."""
    from onnxruntime.quantization import quant_pre_process

    weight = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    p = bn_params(rng, 8)
    src, dst = tmp_path / "model.onnx", tmp_path / "pre.onnx"
    onnx.save(conv_bn_model(weight, bias, p, 1e-5), str(src))
    # sympy (symbolic shape inference) is not installed here; the ORT optimisation still runs.
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    pre = onnx.load(str(dst))
    assert [n.op_type for n in pre.graph.node] == ["Conv"]
    found = initializers(pre)
    w, b = fold_batchnorm(weight, bias, **p, eps=1e-5)
    assert np.array_equal(bits(w), bits(found[pre.graph.node[0].input[1]]))
    assert np.array_equal(bits(b), bits(found[pre.graph.node[0].input[2]]))


def matmul_bn_model(weight, p, eps, op="MatMul", trans_b=0) -> onnx.ModelProto:
    k, n = weight.shape if not trans_b else weight.shape[::-1]
    inits = [numpy_helper.from_array(weight, "W")] + [
        numpy_helper.from_array(p[name], name) for name in ("gamma", "beta", "mean", "var")]
    attrs = {"transB": trans_b} if op == "Gemm" else {}
    nodes = [
        helper.make_node(op, ["x", "W"], ["mm"], **attrs),
        helper.make_node("BatchNormalization", ["mm", "gamma", "beta", "mean", "var"], ["y"],
                         epsilon=eps),
    ]
    graph = helper.make_graph(
        nodes, "mm_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_matmul_bn_fold_is_bit_exact_with_onnxruntime(rng, tmp_path):
    """ORT rewrites MatMul -> BN into a Gemm (transB=0, B is (in, out): channel axis 1)."""
    weight = rng.standard_normal((20, 12)).astype(np.float32)
    p = bn_params(rng, 12)
    optimised = ort_optimized(matmul_bn_model(weight, p, 1e-3), tmp_path / "fused.onnx")
    (gemm,) = optimised.graph.node
    assert gemm.op_type == "Gemm"
    assert {a.name: helper.get_attribute_value(a) for a in gemm.attribute}["transB"] == 0
    found = initializers(optimised)
    w, b = fold_batchnorm(weight, None, **p, eps=1e-3, channel_axis=1)
    assert np.array_equal(bits(w), bits(found[gemm.input[1]]))
    assert np.array_equal(bits(b), bits(found[gemm.input[2]]))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_onnxruntime_does_not_fold_gemm_bn(trans_b, rng, tmp_path):
    """ORT 1.32 has no Gemm -> BatchNormalization fusion: the graph keeps both nodes, so a
    qsim fold of a Gemm has no ORT counterpart to compare with (MatMul does, above)."""
    weight = rng.standard_normal((6, 4) if not trans_b else (4, 6)).astype(np.float32)
    p = bn_params(rng, 4)
    optimised = ort_optimized(matmul_bn_model(weight, p, 1e-5, "Gemm", trans_b), tmp_path / "g.onnx")
    assert [n.op_type for n in optimised.graph.node] == ["Gemm", "BatchNormalization"]


def test_gemm_transb_conventions_agree():
    """A (out, in) weight folded on axis 0 is the transpose of its (in, out) form on axis 1."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((7, 5)).astype(np.float32)
    p = bn_params(rng, 7)
    w0, b0 = fold_batchnorm(w, None, **p, eps=1e-5, channel_axis=0)
    w1, b1 = fold_batchnorm(w.T, None, **p, eps=1e-5, channel_axis=1)
    w2, _ = fold_batchnorm(w.T, None, **p, eps=1e-5, channel_axis=-1)
    assert np.array_equal(bits(w0), bits(w1.T))
    assert np.array_equal(bits(w1), bits(w2))
    assert np.array_equal(bits(b0), bits(b1))


def test_folded_layer_matches_layer_then_batchnorm():
    """Folding is algebraically exact: Conv -> BN in float64 agrees with the folded layer."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    p = bn_params(rng, 4)
    x = rng.standard_normal((10, 6))
    y = x @ w.T.astype(np.float64) + b
    eps = np.float32(1e-3)
    ref = (p["gamma"] * (y - p["mean"]) / np.sqrt(p["var"].astype(np.float64) + eps)) + p["beta"]
    for order in ("onnxruntime", "pytorch"):
        fw, fb = fold_batchnorm(w, b, **p, eps=1e-3, order=order)
        np.testing.assert_allclose(x @ fw.T.astype(np.float64) + fb, ref, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------
# The PyTorch order and how far it is from ORT's
# ------------------------------------------------------------------------------------------

def test_pytorch_order_formulas_on_hand_values():
    """The PyTorch arithmetic, written out with numpy float32 scalars (torch is not installed):
    ``r = 1 / sqrt(var + eps)``, ``W' = W * (gamma * r)``, conv bias ``((b - mean) * r) * gamma
    + beta``, linear bias ``(b - mean) * (gamma * r) + beta``."""
    f = np.float32
    gamma, beta, mean, var, b = f(0.7), f(-0.3), f(0.11), f(2.9), f(1.3)
    eps = f(1e-5)
    r = f(1) / np.sqrt(var + eps)
    conv_w, conv_b = fold_batchnorm(np.full((1, 1, 1, 1), 1.9, np.float32), [b], [gamma], [beta],
                                    [mean], [var], 1e-5, order="pytorch")
    lin_w, lin_b = fold_batchnorm(np.full((1, 1), 1.9, np.float32), [b], [gamma], [beta], [mean],
                                  [var], 1e-5, order="pytorch")
    assert bits(conv_w.ravel()[0]) == bits(f(1.9) * (gamma * r))
    assert bits(lin_w.ravel()[0]) == bits(f(1.9) * (gamma * r))
    assert bits(conv_b[0]) == bits(((b - mean) * r) * gamma + beta)
    assert bits(lin_b[0]) == bits((b - mean) * (gamma * r) + beta)
    ort_w, ort_b = fold_batchnorm(np.full((1, 1), 1.9, np.float32), [b], [gamma], [beta], [mean],
                                  [var], 1e-5)
    assert bits(ort_w.ravel()[0]) == bits(f(1.9) * (gamma / np.sqrt(var + eps)))
    assert bits(ort_b[0]) == bits((b - mean) * (gamma / np.sqrt(var + eps)) + beta)


def random_layer(seed: int, channels: int, per_channel: int):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((channels, per_channel, 1, 1)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    return w, b, bn_params(rng, channels)


def test_orders_differ_by_at_most_two_ulp_in_weights():
    """Counted on fixed random data: 64 x 4096 channels of 16 weights.

    The scales differ by at most 1 ULP: ``gamma * fl(1/q)`` is within 2**-24 (relative) of
    ``gamma / q``, and rounding is monotone. A 1-ULP change of the scale moves ``W * s`` by
    at most 2 ULP of the product (``ulp(s)/s <= 2**-23``, ``ulp(Ws)/Ws > 2**-24``).
    """
    w, b, p = random_layer(2026, 64 * 4096, 16)
    ort_w, _ = fold_batchnorm(w, b, **p, eps=1e-5)
    pt_w, _ = fold_batchnorm(w, b, **p, eps=1e-5, order="pytorch")
    d = ulp_distance(ort_w, pt_w)
    assert np.bincount(d.ravel()).tolist() == [3199246, 867236, 127822]
    assert int(d.max()) == 2
    # The scales themselves (a weight of ones folds to the scale).
    ones = np.ones((w.shape[0], 1, 1, 1), np.float32)
    s_ort, _ = fold_batchnorm(ones, b, **p, eps=1e-5)
    s_pt, _ = fold_batchnorm(ones, b, **p, eps=1e-5, order="pytorch")
    ds = ulp_distance(s_ort, s_pt)
    assert np.bincount(ds.ravel()).tolist() == [191888, 70256]


def test_orders_bias_difference_is_bounded_by_the_terms():
    """Biases can differ by many ULPs of a result that cancels to near 0, so the bound is in
    ULPs of the larger of ``|(b - mean) * s|`` and ``|b'|``: measured at most 4 for the conv
    formula and 2 for the linear one (the error analysis allows 6)."""
    w, b, p = random_layer(7, 1 << 20, 1)
    ort_w, ort_b = fold_batchnorm(w, b, **p, eps=1e-3)
    conv_w, conv_b = fold_batchnorm(w, b, **p, eps=1e-3, order="pytorch")
    lin_w, lin_b = fold_batchnorm(w[:, :, 0, 0], b, **p, eps=1e-3, order="pytorch")
    assert np.array_equal(bits(conv_w[:, :, 0, 0]), bits(lin_w))
    scale = fold_batchnorm(np.ones((b.size, 1)), b, **p, eps=1e-3)[0][:, 0]  # W = 1 folds to s
    term = (b - p["mean"]) * scale
    ref = np.maximum(np.spacing(np.abs(term)), np.spacing(np.abs(ort_b)))
    conv_gap = np.abs(conv_b.astype(np.float64) - ort_b) / ref
    lin_gap = np.abs(lin_b.astype(np.float64) - ort_b) / ref
    assert float(conv_gap.max()) == 4.0
    assert float(lin_gap.max()) == 2.0
    assert int(np.count_nonzero(conv_b != ort_b)) == 321055
    assert int(np.count_nonzero(lin_b != ort_b)) == 182410
    assert int(ulp_distance(conv_b, ort_b).max()) > 2  # in ULPs of the result itself: unbounded


def test_ulp_distance():
    f = np.float32
    assert ulp_distance(f(1), np.nextafter(f(1), f(2))).tolist() == 1
    assert ulp_distance([f(0.0), f(-0.0)], [f(-0.0), np.nextafter(f(0), f(-1))]).tolist() == [0, 1]
    tiny = np.nextafter(f(0), f(1))
    assert ulp_distance(-tiny, tiny).tolist() == 2
    with pytest.raises(ConfigError) as err:
        ulp_distance([np.inf], [1.0])
    assert str(err.value) == "a[0] = inf is not a finite float32 value"


# ------------------------------------------------------------------------------------------
# Fusion with the activation
# ------------------------------------------------------------------------------------------

def test_fuse_conv_bn_relu_variants():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    p = bn_params(rng, 3)
    relu = fuse_conv_bn_relu(w, None, **p, eps=1e-5)
    fw, fb = fold_batchnorm(w, None, **p, eps=1e-5)
    assert isinstance(relu, FusedLayer)
    assert np.array_equal(bits(relu.weight), bits(fw)) and np.array_equal(bits(relu.bias), bits(fb))
    assert (relu.activation, relu.clip_min, relu.clip_max, relu.has_activation) == ("relu", 0, np.inf, True)
    y = np.array([-2.0, 0.5, 7.0], np.float32)
    assert relu.activate(y).tolist() == [0.0, 0.5, 7.0]
    relu6 = fuse_conv_bn_relu(w, None, **p, eps=1e-5, activation="relu6")
    assert (relu6.clip_min, relu6.clip_max) == (0, 6) and relu6.activate(y).tolist() == [0.0, 0.5, 6.0]
    clip = fuse_conv_bn_relu(w, None, **p, eps=1e-5, activation="clip", clip=(-1, 1))
    assert clip.activate(y).tolist() == [-1.0, 0.5, 1.0]
    none = fuse_conv_bn_relu(w, None, **p, eps=1e-5, activation="none")
    assert not none.has_activation and none.activate(y).tolist() == y.tolist()
    lin = fuse_conv_bn_relu(w[:, :, 0, 0].T, None, **p, eps=1e-5, channel_axis=-1)
    assert lin.channel_axis == 1


def test_fused_activation_as_integer_clamp():
    layer = fuse_conv_bn_relu(np.ones((2, 2), np.float32), None, [1, 1], [0, 0], [0, 0], [1, 1],
                              1e-5, activation="relu6")
    # int8 output, scale 0.05, zero point -20: 0 -> -20, 6 -> 100.
    assert layer.quantized_range(QuantParams(np.float32(0.05), -20, INT8)) == (-20, 100)
    # uint8 with a small scale: 6 / 0.01 saturates at 255.
    assert layer.quantized_range(QuantParams(np.float32(0.01), 10, UINT8)) == (10, 255)
    relu = fuse_conv_bn_relu(np.ones((2, 2), np.float32), None, [1, 1], [0, 0], [0, 0], [1, 1], 1e-5)
    assert relu.quantized_range(QuantParams(np.float32(0.1), 5, INT8)) == (5, 127)
    with pytest.raises(ConfigError) as err:
        relu.quantized_range(QuantParams(np.ones(2, np.float32), 0, INT8, axis=0))
    assert str(err.value) == "quantized_range needs per-tensor output parameters, not axis=0"


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------

W = np.ones((2, 3, 1, 1), np.float32)
GOOD = {"gamma": [1.0, 2.0], "beta": [0.0, 0.5], "mean": [0.1, 0.2], "var": [1.0, 0.5]}


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        fold_batchnorm(*args, **kwargs)
    return str(err.value)


def test_negative_variance_is_rejected():
    assert error_of(W, None, **{**GOOD, "var": [1.0, -0.25]}, eps=1e-5) == (
        "var[1] = -0.25 is negative; a BatchNorm running variance must be >= 0")


def test_shape_mismatches_are_rejected():
    assert error_of(W, None, **{**GOOD, "gamma": [1.0, 2.0, 3.0]}, eps=1e-5) == (
        "gamma has shape (3,) but the weight has 2 channels on axis 0 (weight shape (2, 3, 1, 1)); "
        "each BatchNorm parameter must be 1-D with 2 entries")
    assert error_of(W, [1.0, 2.0, 3.0], **GOOD, eps=1e-5, channel_axis=1) == (
        "gamma has shape (2,) but the weight has 3 channels on axis 1 (weight shape (2, 3, 1, 1)); "
        "each BatchNorm parameter must be 1-D with 3 entries")
    assert error_of(W, [[1.0, 2.0]], **GOOD, eps=1e-5) == (
        "bias has shape (1, 2) but the weight has 2 channels on axis 0 (weight shape (2, 3, 1, 1)); "
        "each BatchNorm parameter must be 1-D with 2 entries")
    assert error_of(np.ones(2), None, **GOOD, eps=1e-5) == (
        "weight must have at least 2 dimensions (out x in for Linear/Gemm, OIHW for Conv), "
        "not shape (2,)")
    assert error_of(W, None, **GOOD, eps=1e-5, channel_axis=4) == (
        "channel_axis 4 is out of range for a weight of shape (2, 3, 1, 1)")


def test_unknown_order_is_rejected():
    assert error_of(W, None, **GOOD, eps=1e-5, order="tensorflow") == (
        "order must be one of 'onnxruntime', 'pytorch', not 'tensorflow'")


@pytest.mark.parametrize("eps, text", [
    (0.0, "eps must be a positive finite number, not 0.0"),
    (-1e-5, "eps must be a positive finite number, not -1e-05"),
    (float("nan"), "eps must be a positive finite number, not nan"),
    (1e-50, "eps = 1e-50 rounds to 0 in float32; BatchNorm epsilon must be positive"),
    ("1e-5", "eps must be a positive number, not '1e-5'"),
])
def test_bad_eps_is_rejected(eps, text):
    assert error_of(W, None, **GOOD, eps=eps) == text


def test_non_finite_and_overflowing_values_are_rejected():
    assert error_of(W, None, **{**GOOD, "mean": [0.0, np.nan]}, eps=1e-5) == (
        "mean[1] = nan is not a finite float32 value")
    assert error_of(W, None, **{**GOOD, "gamma": [1e39, 1.0]}, eps=1e-5) == (
        "gamma[0] = 1e+39 is not a finite float32 value")
    assert error_of(W, None, **{**GOOD, "gamma": [3e38, 1.0], "var": [0.0, 1.0]}, eps=1e-5) == (
        "folding overflows float32: the folded scale gamma / sqrt(var + eps) of channel 0 is inf "
        "(gamma = 3e+38, var = 0.0, eps = 1e-05)")


def test_fusion_errors():
    args = (W, None, *GOOD.values(), 1e-5)
    cases = [
        ({"activation": "gelu"},
         "activation must be one of 'none', 'relu', 'relu6', 'clip', not 'gelu'"),
        ({"activation": "clip"}, "activation 'clip' needs clip=(min, max)"),
        ({"activation": "clip", "clip": (1, 0)}, "clip must satisfy min <= max, not (1, 0)"),
        ({"activation": "clip", "clip": 3}, "clip must be a pair of numbers (min, max), not 3"),
        ({"activation": "relu", "clip": (0, 1)},
         "clip is only used with activation 'clip', not 'relu'"),
    ]
    for kwargs, text in cases:
        with pytest.raises(ConfigError) as err:
            fuse_conv_bn_relu(*args, **kwargs)
        assert str(err.value) == text
