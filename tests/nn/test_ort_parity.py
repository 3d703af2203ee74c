"""qsim runs ONNX models exactly as ONNX Runtime does: digits networks end to end.

The float MLP and CNN of :mod:`qsim.nn.bench_infer` are quantized with ONNX Runtime's own
``quantize_static`` (calibrated on digits images), run on 200 held-out digits by ONNX Runtime
(CPUExecutionProvider, default graph optimizations and none) and by qsim (``load_onnx`` +
``engine.run`` under the ``onnxruntime`` semantics), and every integer tensor the two have in
common (each quantized activation, including the one before the final DequantizeLinear) and
the float outputs are compared element by element.

QOperator models and QDQ models with int8 weights agree exactly. QDQ models with int4 weights
are measured: ONNX Runtime cannot fuse int4 groups into QLinear kernels and runs the float
convolution between DequantizeLinear and QuantizeLinear, whose float32 rounding moves one
near-tie value (exact 64.500009) below the tie; the count is pinned (see docs/onnx.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qsim.nn import layers as L
from qsim.nn.bench_infer import (CALIBRATION, HELD_OUT, digits, digits_cnn, digits_mlp, ort_run,
                                 ort_session, quantize)
from qsim.nn.engine import ExactBackend, _windows, run
from qsim.nn.graph import Graph, TensorType
from qsim.nn.onnx_import import load_onnx
from qsim.quant import ortops
from qsim.quant.kernels import qlinear_conv
from qsim.quant.ops import dequantize
from qsim.quant.ops import quantize as ref_quantize
from qsim.quant.params import QuantParams

pytest.importorskip("onnxruntime")

F32 = np.float32
SHAPES = {"mlp": (-1, 64), "cnn": (-1, 1, 8, 8)}
BUILD = {"mlp": digits_mlp, "cnn": digits_cnn}


@pytest.fixture(scope="module")
def images():
    return digits()[0]


_MODELS: dict = {}


def quantized(name: str, *, opset: int = 17, **options) -> onnx.ModelProto:
    """The digits model ``name`` quantized with ``options`` (cached for the session)."""
    key = (name, opset, tuple(sorted(options.items())))
    if key not in _MODELS:
        images = digits()[0]
        _MODELS[key] = quantize(BUILD[name](opset=opset), images[CALIBRATION].reshape(SHAPES[name]),
                                **options)
    return _MODELS[key]


def compare(model: onnx.ModelProto, x: np.ndarray, *, optimize: bool = True, isa: str = "auto") -> dict:
    """Every integer tensor qsim and ORT share, and the float outputs: mismatch counts.

    ``isa="auto"``: qsim predicts ORT on this CPU's instruction path (``qsim.quant.isa``)."""
    graph = load_onnx(model)
    ours = run(graph, {"x": x}, "onnxruntime", keep=True, isa=isa).values
    produced = {o for n in model.graph.node for o in n.output}
    ints = sorted(t for t, v in ours.items() if v.dtype.kind in "iu" and t in produced)
    theirs = ort_run(ort_session(model, extra_outputs=tuple(ints), optimize=optimize), {"x": x})
    out = {"integer": {t: int(np.count_nonzero(ours[t] != theirs[t])) for t in ints},
           "float": {t: int(np.count_nonzero(ours[t] != theirs[t])) for t in graph.outputs},
           "elements": sum(theirs[t].size for t in ints) + sum(theirs[t].size for t in graph.outputs),
           "graph": graph}
    for t in ints + list(graph.outputs):
        assert ours[t].dtype == theirs[t].dtype and ours[t].shape == theirs[t].shape, t
    return out


# ------------------------------------------------------------------------------- float models

@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_float_models_match_onnxruntime_within_float_rounding(name, images):
    model = BUILD[name]()
    x = images[HELD_OUT].reshape(SHAPES[name])
    graph = load_onnx(model)
    assert graph.meta["format"] == "float"
    ours = run(graph, {"x": x}).outputs["y"]
    theirs = ort_run(ort_session(model), {"x": x})["y"]
    # Same operations, different float32 summation orders (numpy BLAS vs MLAS).
    assert np.abs(ours - theirs).max() <= 2e-6 * np.abs(theirs).max()
    assert np.array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))


def test_digits_models_classify_held_out_digits(images):
    labels = digits()[1][HELD_OUT]
    accuracy = {name: float((run(load_onnx(BUILD[name]()), {"x": images[HELD_OUT].reshape(SHAPES[name])})
                             .outputs["y"].argmax(axis=1) == labels).mean()) for name in BUILD}
    assert accuracy == {"mlp": 0.925, "cnn": 0.84}


# ------------------------------------------------------------------------------- QOperator

QOPERATOR = [dict(activation="int8", weight="int8", per_channel=True),
             dict(activation="uint8", weight="int8", per_channel=False),
             dict(activation="uint8", weight="int8", per_channel=True),
             dict(activation="int8", weight="int8", per_channel=False)]


def _id(options: dict) -> str:
    return f"{options['activation']}-{options['weight']}-{'channel' if options['per_channel'] else 'tensor'}"


@pytest.mark.parametrize("options", QOPERATOR, ids=_id)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_qoperator_models_match_onnxruntime_exactly(name, options, images):
    model = quantized(name, quant_format="QOperator", **options)
    x = images[HELD_OUT].reshape(SHAPES[name])
    for optimize in (True, False):
        result = compare(model, x, optimize=optimize)
        assert sum(result["integer"].values()) == 0 and sum(result["float"].values()) == 0, result
    graph = result["graph"]
    assert graph.meta["format"] == "qoperator" and graph.meta["float_layers"] == []
    kinds = [layer.kind for layer in graph.layers]
    if name == "cnn":
        assert kinds == ["quantize", "conv2d", "maxpool", "conv2d", "flatten", "linear", "dequantize"]
        assert result["elements"] == 200 * (64 + 8 * 64 + 8 * 16 + 16 * 4 + 64 + 10) + 200 * 10
    else:
        assert kinds == ["quantize", "linear", "linear", "dequantize"]
        assert result["elements"] == 200 * (64 + 32 + 10) + 200 * 10
    # the integer tensor before the final DequantizeLinear is among those compared
    assert graph.layers[-1].inputs[0] in result["integer"]


def test_qoperator_parameters_are_imported_as_written(images):
    model = quantized("cnn", quant_format="QOperator", activation="int8", weight="int8", per_channel=True)
    graph = load_onnx(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "QLinearConv")
    conv = graph.layer(node.name)
    assert isinstance(conv, L.Conv2d) and conv.weight_params.axis == 0
    assert np.array_equal(conv.weight, inits[node.input[3]])
    assert np.array_equal(conv.weight_params.scale, inits[node.input[4]])
    assert np.array_equal(conv.bias, inits[node.input[8]])
    assert conv.input_params.fmt.name == "int8" and conv.output_params.fmt.name == "int8"
    gemm = next(n for n in model.graph.node if n.op_type == "QGemm")
    fc = graph.layer(gemm.name)
    assert isinstance(fc, L.Linear) and fc.weight_params.axis == 1
    assert np.array_equal(fc.weight, inits[gemm.input[3]].T)  # transB=1 resolved
    assert fc.weight.shape == (64, 10)


def _wide_model(seed: int = 1) -> onnx.ModelProto:
    """Conv, ReLU6, Conv, residual Add, Relu, AveragePool, MaxPool, Concat, GlobalAveragePool,
    Reshape, MatMul and a bias Add: every QOperator op quantize_static writes for it."""
    rng = np.random.default_rng(seed)
    inits = {"c1": rng.normal(0, .4, (8, 1, 3, 3)), "c1b": rng.normal(0, .1, 8),
             "c2": rng.normal(0, .15, (8, 8, 3, 3)), "m1": rng.normal(0, .5, (16, 10)),
             "mb": rng.normal(0, .1, 10), "shape": np.array([-1, 16], np.int64),
             "lo": np.array(0.0), "hi": np.array(6.0)}
    inits = {k: v.astype(F32) if v.dtype == np.float64 else v for k, v in inits.items()}
    node = helper.make_node
    nodes = [node("Conv", ["x", "c1", "c1b"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             node("Clip", ["a", "lo", "hi"], ["ar"], name="relu6"),
             node("Conv", ["ar", "c2"], ["b"], name="conv2", pads=[1, 1, 1, 1]),
             node("Add", ["b", "ar"], ["s"], name="residual"),
             node("Relu", ["s"], ["sr"], name="relu"),
             node("AveragePool", ["sr"], ["ap"], name="avgpool", kernel_shape=[3, 3], strides=[2, 2],
                  pads=[1, 1, 1, 1]),
             node("MaxPool", ["sr"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
             node("Concat", ["ap", "mp"], ["cc"], name="concat", axis=1),
             node("GlobalAveragePool", ["cc"], ["g"], name="gap"),
             node("Reshape", ["g", "shape"], ["f"], name="reshape"),
             node("MatMul", ["f", "m1"], ["mm"], name="matmul"),
             node("Add", ["mm", "mb"], ["y"], name="bias")]
    graph = helper.make_graph(nodes, "wide",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("options", QOPERATOR[1:3], ids=_id)
def test_qoperator_contrib_ops_match_onnxruntime_exactly(options, images):
    """QLinearAdd (residual and constant operand), QLinearAveragePool, QLinearConcat,
    QLinearGlobalAveragePool, QLinearMatMul, Reshape and MaxPool on integers."""
    model = quantize(_wide_model(), images[CALIBRATION], quant_format="QOperator", **options)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["QuantizeLinear", "QLinearConv", "QLinearConv", "QLinearAdd", "QLinearAveragePool",
                   "MaxPool", "QLinearConcat", "QLinearGlobalAveragePool", "Reshape", "QLinearMatMul",
                   "QLinearAdd", "DequantizeLinear"]
    for optimize in (True, False):
        result = compare(model, images[HELD_OUT], optimize=optimize)
        assert sum(result["integer"].values()) == 0 and sum(result["float"].values()) == 0, result
    assert result["elements"] == 432_800 + 2_000
    kinds = [layer.kind for layer in result["graph"].layers]
    assert "constant" in kinds  # the quantized bias operand of the last QLinearAdd


# ------------------------------------------------------------------------------- QDQ

@pytest.mark.parametrize("options", QOPERATOR[:2], ids=_id)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_qdq_int8_models_match_onnxruntime_exactly(name, options, images):
    model = quantized(name, quant_format="QDQ", **options)
    result = compare(model, images[HELD_OUT].reshape(SHAPES[name]))
    assert sum(result["integer"].values()) == 0 and sum(result["float"].values()) == 0, result
    graph = result["graph"]
    assert graph.meta["format"] == "qdq" and graph.meta["float_layers"] == []
    assert [layer.kind for layer in graph.layers] == (
        ["quantize", "conv2d", "maxpool", "conv2d", "flatten", "linear", "dequantize"] if name == "cnn"
        else ["quantize", "linear", "linear", "dequantize"])


#: At most this many mismatching integers of QDQ models with int4 weights against ONNX Runtime
#: (default graph optimizations), 200 held-out digits. ORT runs these convolutions in float32,
#: so the count depends on its float kernel: 1 with the AVX2 and AVX-512 kernels (one near-tie
#: below), 0 with the SSE kernels of a CPU without AVX2 (measured under qemu -cpu Nehalem).
INT4_MISMATCHES = {
    ("mlp", "uint8", True): 0, ("mlp", "int8", True): 0, ("mlp", "uint8", False): 0,
    ("mlp", "int8", False): 0,
    ("cnn", "uint8", True): 1, ("cnn", "int8", True): 1, ("cnn", "uint8", False): 0,
    ("cnn", "int8", False): 0,
}


@pytest.mark.parametrize("name, activation, per_channel", list(INT4_MISMATCHES))
def test_qdq_int4_models_mismatch_rate_against_onnxruntime(name, activation, per_channel, images):
    model = quantized(name, quant_format="QDQ", activation=activation, weight="int4",
                      per_channel=per_channel)
    assert {i.data_type for i in model.graph.initializer} >= {TensorProto.INT4}
    result = compare(model, images[HELD_OUT].reshape(SHAPES[name]))
    graph = result["graph"]
    conv_or_fc = [layer for layer in graph.layers if layer.kind in ("conv2d", "linear")]
    assert all(layer.weight_params.fmt.name == "int4" for layer in conv_or_fc)
    assert all(-8 <= layer.weight.min() and layer.weight.max() <= 7 for layer in conv_or_fc)
    bad = sum(result["integer"].values())
    assert bad <= INT4_MISMATCHES[(name, activation, per_channel)], result["integer"]
    assert result["elements"] == (21_200 + 2_000 if name == "mlp" else 168_400 + 2_000)
    if bad:
        # The one value is the first convolution's, an exact 64.500009 that ORT's float32
        # convolution computes just below the tie: qsim gives 65, ORT 64.
        assert result["integer"] == {"ar_QuantizeLinear_Output": 1, "br_QuantizeLinear_Output": 0,
                                     "f_QuantizeLinear_Output": 0, "p_QuantizeLinear_Output": 0,
                                     "x_QuantizeLinear_Output": 0, "y_QuantizeLinear_Output": 0}
        assert sum(result["float"].values()) == 0


def test_qdq_int4_opset21_standard_domain_gives_the_same_graph(images):
    """quantize_static on an opset-21 model writes ai.onnx DequantizeLinear on int4 initializers
    (opset < 21: com.microsoft); the import is the same."""
    old = quantized("cnn", quant_format="QDQ", activation="uint8", weight="int4", per_channel=True)
    new = quantized("cnn", opset=21, quant_format="QDQ", activation="uint8", weight="int4",
                    per_channel=True)
    assert {n.domain for n in old.graph.node if n.op_type == "DequantizeLinear"} == {"com.microsoft"}
    assert {n.domain for n in new.graph.node if n.op_type == "DequantizeLinear"} == {""}
    x = images[HELD_OUT]
    a = run(load_onnx(old), {"x": x}).outputs["y"]
    b = run(load_onnx(new), {"x": x}).outputs["y"]
    assert np.array_equal(a, b)
    assert sum(compare(new, x)["integer"].values()) <= 1  # the near-tie of the test above


def test_qdq_groups_that_onnxruntime_leaves_in_float_explain_the_mismatches(images):
    """With graph optimizations disabled ORT runs every DQ -> op -> Q in float: the wide model's
    float AveragePool and GlobalAveragePool then round differently from QLinearAveragePool
    (which qsim, like optimized ORT, computes)."""
    model = quantize(_wide_model(), images[CALIBRATION], quant_format="QDQ", activation="uint8",
                     weight="int8", per_channel=True)
    fused = compare(model, images[HELD_OUT])
    assert sum(fused["integer"].values()) == 0 and sum(fused["float"].values()) == 0
    assert fused["graph"].meta["fused_qdq_groups"] == 10
    # Unfused, ORT computes the products in float32: no u8 x s8 kernel, so no saturation on any
    # CPU; qsim's exact path is the one to hold against it.
    unfused = compare(model, images[HELD_OUT], optimize=False, isa="exact")
    nonzero = {t: n for t, n in unfused["integer"].items() if n}
    assert nonzero == {"ap_QuantizeLinear_Output": 203, "cc_QuantizeLinear_Output": 203,
                       "g_QuantizeLinear_Output": 26, "f_QuantizeLinear_Output": 26,
                       "mm_QuantizeLinear_Output": 40, "y_QuantizeLinear_Output": 40}
    assert unfused["elements"] == 432_800 + 2_000


def test_blocked_int4_weight_only_matmul_runs_in_float(images, rng):
    """Weight-only blocked int4 (opset 21 DequantizeLinear with block_size): float Linear with the
    exactly dequantized weights. ORT without optimizations computes the same float32 values;
    its default optimizations replace the pair by MatMulNBits (accuracy_level 4: activations
    quantized to int8 per block), which differs by up to 0.6 % of the output range here."""
    w = rng.normal(0, 0.25, (64, 32)).astype(F32)
    scale = (np.abs(w).reshape(4, 16, 32).max(axis=1) / 7).astype(F32)
    params = QuantParams(scale, np.zeros(scale.shape, np.int64), "int4", axis=0, block_size=16)
    wq = ref_quantize(w, params).astype(np.int8)
    node = helper.make_node
    graph = helper.make_graph(
        [node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0, block_size=16),
         node("MatMul", ["x", "w"], ["h"]), node("Relu", ["h"], ["y"])], "weight_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        initializer=[helper.make_tensor("wq", TensorProto.INT4, wq.shape, wq.ravel().tolist()),
                     numpy_helper.from_array(scale, "ws")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    imported = load_onnx(model)
    assert [layer.kind for layer in imported.layers] == ["linear", "relu"]
    assert np.array_equal(imported.layers[0].weight, dequantize(wq, params).astype(F32))
    x = images[HELD_OUT].reshape(-1, 64)
    ours = run(imported, {"x": x}).outputs["y"]
    # Both are float32 products of the same values in different summation orders (numpy's BLAS
    # and MLAS, each picking kernels by CPU): equal within float32 rounding, not bit for bit.
    plain = ort_run(ort_session(model, optimize=False), {"x": x})["y"]
    assert np.abs(ours - plain).max() <= 4e-6 * np.abs(plain).max()
    # MatMulNBits quantizes the activations to int8 per block where the CPU has an int8 kernel
    # for it (AVX2 and later), and stays in float32 elsewhere: at most 0.6 % of the range apart.
    nbits = ort_run(ort_session(model), {"x": x})["y"]
    assert np.abs(ours - nbits).max() <= 0.006 * np.abs(ours).max()


# ------------------------------------------------------------------------------- engine fast paths

class Reference(ExactBackend):
    """Not the ExactBackend type itself: the engine takes its generic int64 path."""


@pytest.mark.parametrize("isa", ["exact", "avx2"])
@pytest.mark.parametrize("case", range(6))
def test_engine_fast_paths_equal_the_generic_integer_path(case, isa, rng):
    """The engine's float-BLAS convolution and product and its float32 requantization (the
    onnxruntime semantics with the exact backend) equal the generic path: int64 accumulators
    from qsim.quant.kernels, then qsim.quant.requant.requantize, then the activation clamp.
    On ``avx2`` the uint8 cases take ORT's saturating accumulators on both routes instead."""
    cin, cout = [(1, 8), (3, 5), (8, 16), (2, 4), (16, 3), (4, 4)][case]
    kernel, stride, pads, dilation = [(3, 1, (1, 1, 1, 1), 1), (2, 2, (0, 1, 1, 0), 1),
                                      (3, 1, (0, 0, 0, 0), 2), (1, 1, (0, 0, 0, 0), 1),
                                      (3, 2, (2, 1, 0, 2), 1), (5, 1, (2, 2, 2, 2), 1)][case]
    xdt = np.dtype(np.int8 if case % 2 == 0 else np.uint8)
    info = np.iinfo(xdt)
    x = rng.integers(info.min, info.max + 1, (3, cin, 9, 8)).astype(xdt)
    w = rng.integers(-128, 128, (cout, cin, kernel, kernel)).astype(np.int8)
    wzp = rng.integers(-5, 6, cout) if case >= 4 else np.zeros(cout, np.int64)
    wscale = (rng.random(cout) * 0.02 + 0.001).astype(F32)
    bias = rng.integers(-30000, 30000, cout).astype(np.int32)
    xp = QuantParams(F32(0.02 + case / 100), int(rng.integers(info.min, info.max + 1)), xdt.name)
    yp = QuantParams(F32(0.05 + case / 50), int(rng.integers(info.min, info.max + 1)), xdt.name)
    activation = [None, "relu", ("clip", -1.0, 2.0), None, "relu", None][case]
    conv = L.Conv2d("c", ("x",), ("y",), in_channels=cin, out_channels=cout, kernel=kernel,
                    strides=stride, pads=pads, dilations=dilation, weight=w, bias=bias,
                    activation=activation, input_params=xp,
                    weight_params=QuantParams(wscale, wzp, "int8", axis=0), output_params=yp)
    k = cin * kernel * kernel
    fc = L.Linear("fc", ("f",), ("z",), in_features=k, out_features=cout,
                  weight=np.ascontiguousarray(w.reshape(cout, k).T), bias=bias,
                  activation=activation, input_params=xp,
                  weight_params=QuantParams(wscale, wzp, "int8", axis=1), output_params=yp)
    graph = Graph("g", {"x": TensorType((None, cin, 9, 8), xdt.name),
                        "f": TensorType((None, k), xdt.name)}, [conv, fc], ["y", "z"])
    feeds = {"x": x, "f": rng.integers(info.min, info.max + 1, (3, k)).astype(xdt)}
    fast = run(graph, feeds, "onnxruntime", isa=isa).outputs
    generic = run(graph, feeds, "onnxruntime", backend=Reference(), isa=isa).outputs
    for name in ("y", "z"):
        assert fast[name].dtype == generic[name].dtype == xdt
        assert np.array_equal(fast[name], generic[name]), name
    conv_ref = qlinear_conv(x, xp.scale, np.asarray(xp.zero_point).astype(xdt), w, wscale,
                            wzp.astype(np.int8), yp.scale, np.asarray(yp.zero_point).astype(xdt),
                            bias, strides=(stride, stride), pads=pads,
                            dilations=(dilation, dilation), semantics="onnxruntime", isa=isa)
    if activation is None:
        assert np.array_equal(fast["y"], conv_ref)
    if isa == "avx2" and case in (1, 5):  # uint8 cases where the saturation survives requantization
        exact = run(graph, feeds, "onnxruntime", isa="exact").outputs
        assert not (np.array_equal(fast["y"], exact["y"]) and np.array_equal(fast["z"], exact["z"]))


def test_engine_quantize_dequantize_and_maxpool_fast_paths_equal_the_references(rng):
    params = QuantParams(F32(0.0371), -7, "int8")
    ties = (np.arange(-300, 300) * F32(0.0371) / 2).astype(F32)  # exact and near ties
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-40], F32)
    x = np.concatenate([ties, np.nextafter(ties, F32(np.inf)), np.nextafter(ties, F32(-np.inf)),
                        specials, rng.normal(0, 3, 5000).astype(F32)]).reshape(1, -1)
    pool = L.MaxPool("p", ("r",), ("p",), kernel=(2, 3), strides=(1, 2), pads=(1, 0, 0, 2),
                     ceil_mode=True)
    graph = Graph("q", {"x": TensorType((None, x.shape[1]))}, [
        L.Quantize("q", ("x",), ("q",), params=params), L.Dequantize("d", ("q",), ("d",), params=params),
        L.Reshape("r", ("q",), ("r",), shape=(1, 1, 2, -1)), pool], ["d", "p"])
    values = run(graph, {"x": x}, "onnxruntime", keep=True).values
    assert np.array_equal(values["q"], ref_quantize(x, params, nan=-128).astype(np.int8))
    assert np.array_equal(values["q"], ortops.quantize_linear(x, params.scale, np.int8(-7)))
    assert values["d"].dtype == F32
    assert np.array_equal(values["d"], dequantize(values["q"], params).astype(F32))
    windows, _ = _windows(pool, values["r"], -128)
    assert np.array_equal(values["p"], windows.max(axis=(-2, -1)))
    assert np.array_equal(values["p"], ortops.max_pool(values["r"], kernel_shape=(2, 3), strides=(1, 2),
                                                       pads=(1, 0, 0, 2), ceil_mode=True))
