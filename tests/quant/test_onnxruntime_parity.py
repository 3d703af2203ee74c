"""qsim's QLinearMatMul/QLinearConv with ``onnxruntime`` semantics equal ONNX Runtime's exactly.

The models are int8 activations x int8 weights, which ONNX Runtime computes exactly on every
x86 CPU (the u8 x s8 ``vpmaddubsw`` saturation is a separate matter, see test_hazards.py), so
the only thing compared is the integer arithmetic plus MLAS's float32 requantization. Scales
are drawn log-uniformly (never powers of two) and the output scale is aimed at the spread of
the accumulators, so that most outputs are interior values rather than clamped ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from qsim.quant.kernels import qlinear_conv, qlinear_matmul

ort = pytest.importorskip("onnxruntime")

#: Minimum number of outputs the parity tests compare in total.
MIN_OUTPUTS = 100_000


def log_uniform(rng, low, high, size=None):
    return np.exp(rng.uniform(np.log(low), np.log(high), size)).astype(np.float32)


def q8(rng, shape):
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def run_model(nodes, inputs, initializers, feeds):
    graph = helper.make_graph(nodes, "parity", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
                              initializer=[numpy_helper.from_array(v, k)
                                           for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _tensor(name, value):
    kind = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.float32): TensorProto.FLOAT,
            np.dtype(np.int32): TensorProto.INT32}[value.dtype]
    return helper.make_tensor_value_info(name, kind, value.shape)


MATMUL_SHAPES = [((64, 96), (96, 160)), ((128, 33), (33, 70)), ((1, 500), (500, 130)),
                 ((3, 40, 64), (64, 48)), ((200, 8), (8, 100)), ((96, 257), (257, 64)),
                 ((2, 2, 30, 50), (50, 90)), ((160, 128), (128, 128))]


def matmul_case(index, rng, semantics="onnxruntime"):
    """ONNX Runtime's and qsim's QLinearMatMul output for case ``index``: (qsim, ort)."""
    a_shape, b_shape = MATMUL_SHAPES[index]
    n = b_shape[-1]
    a, b = q8(rng, a_shape), q8(rng, b_shape)
    per_column = index % 2 == 1
    a_scale = log_uniform(rng, 1e-3, 5e-1)
    b_scale = log_uniform(rng, 1e-3, 5e-1, n if per_column else None)
    a_zp, b_zp = q8(rng, ()), np.int8(0)
    depth = a_shape[-1]
    y_scale = np.float32(float(a_scale) * float(np.max(b_scale)) * 100 * np.sqrt(depth)
                         * float(log_uniform(rng, 0.5, 2.0)))
    y_zp = np.int8(rng.integers(-20, 21))
    constants = dict(a_scale=a_scale, a_zero_point=a_zp, b=b, b_scale=b_scale,
                     b_zero_point=b_zp, y_scale=y_scale, y_zero_point=y_zp)
    constants = {k: np.asarray(v) for k, v in constants.items()}
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zero_point", "b", "b_scale",
                                              "b_zero_point", "y_scale", "y_zero_point"], ["y"])
    if index % 3 == 2:  # weights fed at run time instead of prepacked from an initializer
        b_value = constants.pop("b")
        expected = run_model([node], [_tensor("a", a), _tensor("b", b_value)], constants,
                             {"a": a, "b": b_value})
    else:
        expected = run_model([node], [_tensor("a", a)], constants, {"a": a})
    got = qlinear_matmul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp,
                         semantics=semantics)
    return got, expected


@pytest.mark.parametrize("index", range(len(MATMUL_SHAPES)))
def test_qlinear_matmul_equals_onnxruntime(index, rng):
    got, expected = matmul_case(index, rng)
    assert got.shape == expected.shape and got.dtype == expected.dtype == np.int8
    assert np.array_equal(got, expected)


CONV_CASES = [
    # (x shape, w shape, attributes)
    ((2, 16, 20, 20), (32, 16, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((1, 8, 33, 31), (24, 8, 3, 3), dict(strides=[2, 2], pads=[0, 1, 2, 1])),
    ((2, 12, 18, 18), (12, 4, 3, 3), dict(group=3, pads=[1, 1, 1, 1], dilations=[2, 2])),
    ((2, 32, 16, 16), (32, 1, 3, 3), dict(group=32, pads=[1, 1, 1, 1])),   # depthwise
    ((1, 3, 40, 40), (16, 3, 5, 5), dict(strides=[2, 2], pads=[2, 2, 2, 2])),
    ((4, 24, 12, 12), (48, 24, 1, 1), {}),                                  # pointwise
    ((2, 10, 50), (20, 10, 5), dict(pads=[2, 2], strides=[1])),             # 1-D
    ((1, 7, 15, 17), (9, 7, 2, 3), dict(auto_pad="SAME_UPPER", strides=[2, 1])),
]


def conv_case(index, rng, semantics="onnxruntime"):
    """ONNX Runtime's and qsim's QLinearConv output for case ``index``: (qsim, ort)."""
    x_shape, w_shape, attrs = CONV_CASES[index]
    outputs = w_shape[0]
    x, w = q8(rng, x_shape), q8(rng, w_shape)
    x_scale = log_uniform(rng, 1e-3, 5e-1)
    w_scale = log_uniform(rng, 1e-3, 5e-1, outputs)  # per output channel
    x_zp, w_zp = q8(rng, ()), np.int8(0)
    depth = int(np.prod(w_shape[1:]))
    bias = rng.integers(-20000, 20000, outputs).astype(np.int32)
    y_scale = np.float32(float(x_scale) * float(np.median(w_scale)) * 100 * np.sqrt(depth)
                         * float(log_uniform(rng, 0.5, 2.0)))
    y_zp = np.int8(rng.integers(-20, 21))
    constants = {k: np.asarray(v) for k, v in dict(
        x_scale=x_scale, x_zero_point=x_zp, w=w, w_scale=w_scale, w_zero_point=w_zp,
        y_scale=y_scale, y_zero_point=y_zp, B=bias).items()}
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zero_point", "w", "w_scale",
                                            "w_zero_point", "y_scale", "y_zero_point", "B"],
                            ["y"], **attrs)
    expected = run_model([node], [_tensor("x", x)], constants, {"x": x})
    got = qlinear_conv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias,
                       semantics=semantics, **attrs)
    return got, expected


@pytest.mark.parametrize("index", range(len(CONV_CASES)))
def test_qlinear_conv_equals_onnxruntime(index, rng):
    got, expected = conv_case(index, rng)
    assert got.shape == expected.shape and got.dtype == expected.dtype == np.int8
    assert np.array_equal(got, expected)


def test_parity_totals():
    """All cases again, counted: at least MIN_OUTPUTS outputs, no mismatch, mostly unclamped."""
    rng = np.random.default_rng(20261123)
    compared = mismatches = interior = 0
    for case, count in ((matmul_case, len(MATMUL_SHAPES)), (conv_case, len(CONV_CASES))):
        for index in range(count):
            got, expected = case(index, rng)
            compared += got.size
            mismatches += int(np.count_nonzero(got != expected))
            interior += int(np.count_nonzero((expected > -128) & (expected < 127)))
    print(f"onnxruntime {ort.__version__} parity: {compared} outputs compared, {mismatches} "
          f"mismatches, {interior} not clamped")
    assert compared >= MIN_OUTPUTS
    assert mismatches == 0
    assert interior >= compared // 2


@pytest.mark.parametrize("scales, acc, onnx_value, ort_value", [
    # float32 acc * M rounds onto a tie that the float64 product is not on
    (("0.054420367", "0.16878122", "0.013271915"), -164, -113, -114),   # -113.49999928...
    (("0.02594597", "0.014381567", "0.0021159444"), -241, -43, -42),    # -42.50000105...
])
def test_near_tie_separates_the_two_semantics(scales, acc, onnx_value, ort_value):
    """A constructed near-tie: ONNX Runtime agrees with ``onnxruntime``, not with ``onnx``."""
    a_scale, b_scale, y_scale = (np.float32(s) for s in scales)
    a_zp = np.int8(-128 - acc if acc < -128 else 0)
    a = np.array([[int(a_zp) + acc]], np.int8)  # a - a_zp = acc, with K = 1 and b = 1
    b = np.array([[1]], np.int8)
    constants = {k: np.asarray(v) for k, v in dict(
        a_scale=a_scale, a_zero_point=a_zp, b=b, b_scale=b_scale, b_zero_point=np.int8(0),
        y_scale=y_scale, y_zero_point=np.int8(0)).items()}
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zero_point", "b", "b_scale",
                                              "b_zero_point", "y_scale", "y_zero_point"], ["y"])
    expected = run_model([node], [_tensor("a", a)], constants, {"a": a})
    args = (a, a_scale, a_zp, b, b_scale, np.int8(0), y_scale, np.int8(0))
    assert expected.tolist() == [[ort_value]]
    assert qlinear_matmul(*args, semantics="onnxruntime").tolist() == [[ort_value]]
    assert qlinear_matmul(*args, semantics="onnx").tolist() == [[onnx_value]]
