"""ONNX import: each operator's mapping onto the IR, QDQ recognition, and every error message."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qsim.errors import ConfigError
from qsim.nn.bench_infer import ort_run, ort_session
from qsim.nn.engine import run
from qsim.nn.graph import TensorType
from qsim.nn.onnx_import import SUPPORTED_OPS, import_model, load_onnx

pytest.importorskip("onnxruntime")

F32 = np.float32
node = helper.make_node


def make(nodes, inputs, outputs, inits=None, opset=17, ms=False, name="m") -> onnx.ModelProto:
    """A model from nodes, ``{name: (elem_type, shape)}`` inputs/outputs and initializers."""
    def info(items):  # ONNX's checker wants a shape on every graph input and output
        return [helper.make_tensor_value_info(k, t, [] if s is None else s)
                for k, (t, s) in items.items()]

    initializers = []
    for key, value in (inits or {}).items():
        initializers.append(value if isinstance(value, onnx.TensorProto)
                            else numpy_helper.from_array(np.asarray(value), key))
    graph = helper.make_graph(nodes, name, info(inputs), info(outputs), initializer=initializers)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8 if opset < 21 else 10
    return model


def floats(rng, *shape, scale=0.5):
    return rng.normal(0, scale, shape).astype(F32)


def assert_matches_ort(model, feeds, atol=1e-5):
    graph = load_onnx(model)
    ours = run(graph, feeds).outputs
    theirs = ort_run(ort_session(model), feeds)
    assert set(ours) == set(theirs)
    for name in theirs:
        assert ours[name].shape == theirs[name].shape and ours[name].dtype == theirs[name].dtype
        assert np.abs(ours[name] - theirs[name]).max() <= atol, name
    return graph


# ------------------------------------------------------------------------------- float models

def test_float_operators_match_onnxruntime(rng):
    x = ("x", (TensorProto.FLOAT, ["N", 3, 10, 10]))
    inits = {
        "c1": floats(rng, 4, 3, 3, 3), "gamma": floats(rng, 4) + 1, "beta": floats(rng, 4),
        "mean": floats(rng, 4), "var": np.abs(floats(rng, 4)) + 0.5,
        "lo": np.array(-1.0, F32), "hi": np.array(1.0, F32), "c2": floats(rng, 4, 2, 1, 1),
        "flat": np.array([0, -1], np.int64), "w": floats(rng, 72, 6), "c": floats(rng, 6),
        "m": floats(rng, 8, 6), "mb": floats(rng, 6), "pair": np.array([-1, 2, 3], np.int64),
    }
    nodes = [
        node("Conv", ["x", "c1"], ["a"], name="conv_same", strides=[2, 2], auto_pad="SAME_UPPER"),
        node("BatchNormalization", ["a", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
        node("Clip", ["bn", "lo", "hi"], ["cl"]),
        node("Conv", ["cl", "c2"], ["g2"], name="grouped", group=2),
        node("MaxPool", ["g2"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        node("AveragePool", ["cl"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
             count_include_pad=1),
        node("Concat", ["mp", "ap"], ["cc"], axis=1),
        node("GlobalAveragePool", ["cc"], ["gp"]),
        node("Transpose", ["cc"], ["tr"], perm=[0, 2, 3, 1]),
        node("Reshape", ["tr", "flat"], ["rs"]),
        node("Identity", ["rs"], ["id"]),
        node("Gemm", ["id", "w", "c"], ["gm"], name="gemm", alpha=0.5, beta=2.0),
        node("Flatten", ["gp"], ["fg"]),
        node("MatMul", ["fg", "m"], ["mm0"], name="matmul"),
        node("Add", ["mm0", "mb"], ["mm"], name="bias"),
        node("Add", ["gm", "mm"], ["s"]),
        node("Dropout", ["s"], ["dr"]),
        node("Relu", ["dr"], ["r"]),
        node("Reshape", ["r", "pair"], ["r3"]),
        node("Transpose", ["r3"], ["r3t"], perm=[0, 2, 1]),
        node("MatMul", ["r3", "r3t"], ["mm2"], name="activations"),
        node("Softmax", ["mm2"], ["y"]),
    ]
    model = make(nodes, dict([x]), {"y": (TensorProto.FLOAT, ["N", 2, 2])}, inits)
    graph = assert_matches_ort(model, {"x": floats(rng, 5, 3, 10, 10, scale=1.0)})
    kinds = [layer.kind for layer in graph.layers]
    assert kinds == ["conv2d", "batchnorm", "clip", "conv2d", "maxpool", "avgpool", "concat",
                     "globalavgpool", "transpose", "flatten", "linear", "flatten", "linear", "add",
                     "relu", "reshape", "transpose", "matmul", "softmax"]
    assert graph.layer("conv_same").pads == (0, 0, 1, 1)  # SAME_UPPER: the odd pixel at the end
    gemm = graph.layer("gemm")
    assert np.array_equal(gemm.weight, 0.5 * inits["w"]) and np.array_equal(gemm.bias, 2 * inits["c"])
    matmul = graph.layer("matmul")  # the constant Add became its bias
    assert matmul.outputs == ("mm",) and np.array_equal(matmul.bias, inits["mb"])
    assert graph.inputs == {"x": TensorType((None, 3, 10, 10), "float32")}
    assert graph.meta == {"source": "onnx", "format": "float", "opset": 17}


def test_opset_10_attributes(rng):
    inits = {"w": floats(rng, 5, 4), "b": floats(rng, 5)}
    nodes = [node("Gemm", ["x", "w", "b"], ["g"], transB=1),
             node("Clip", ["g"], ["c"], min=-0.5, max=0.75),
             node("Dropout", ["c"], ["d"], ratio=0.3),
             node("Softmax", ["d"], ["y"])]
    model = make(nodes, {"x": (TensorProto.FLOAT, [2, 4])}, {"y": (TensorProto.FLOAT, [2, 5])},
                 inits, opset=10)
    model.ir_version = 5
    graph = assert_matches_ort(model, {"x": floats(rng, 2, 4, scale=2.0)})
    assert [layer.kind for layer in graph.layers] == ["linear", "clip", "softmax"]
    assert (graph.layers[1].lo, graph.layers[1].hi) == (-0.5, 0.75)
    assert graph.layers[2].axis == 1
    assert graph.inputs["x"] == TensorType((2, 4), "float32")


def test_outputs_keep_their_onnx_names_through_identity(rng):
    nodes = [node("Relu", ["x"], ["r"]), node("Identity", ["r"], ["y"]), node("Identity", ["x"], ["z"])]
    model = make(nodes, {"x": (TensorProto.FLOAT, ["N", 3])},
                 {"y": (TensorProto.FLOAT, ["N", 3]), "x_copy": (TensorProto.FLOAT, ["N", 3])})
    model.graph.output[1].name = "z"
    with pytest.raises(ConfigError) as err:
        load_onnx(model)
    assert str(err.value) == ("graph output 'z' is a copy of 'x', which qsim cannot express as a "
                              "separate tensor")
    del model.graph.output[1]
    del model.graph.node[2]
    graph = load_onnx(model)
    assert graph.outputs == ["y"] and graph.layers[0].outputs == ("y",)


def test_load_onnx_takes_a_path_bytes_or_a_model(tmp_path, rng):
    model = make([node("Relu", ["x"], ["y"])], {"x": (TensorProto.FLOAT, [1, 2])},
                 {"y": (TensorProto.FLOAT, [1, 2])})
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for source in (path, str(path), model.SerializeToString(), model):
        graph = load_onnx(source)
        assert [layer.kind for layer in graph.layers] == ["relu"]
    assert import_model(model).outputs == ["y"]
    with pytest.raises(ConfigError) as err:
        load_onnx(42)
    assert str(err.value) == "load_onnx takes a path, bytes or an onnx.ModelProto, not int"


# ------------------------------------------------------------------------------- QDQ groups

def _qdq_conv(rng, between: list, y_zp: int, y_dtype=TensorProto.INT8):
    """x -> Q -> DQ -> Conv(DQ(w), DQ(b)) [-> between] -> Q -> DQ -> y, int8 activations."""
    w = rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8)
    ws = (rng.random(4) * 0.01 + 0.005).astype(F32)
    b = rng.integers(-500, 500, 4).astype(np.int32)
    inits = {"xs": np.array(0.02, F32), "xz": np.array(3, np.int8), "w": w, "ws": ws,
             "wz": np.zeros(4, np.int8), "b": b, "bs": (F32(0.02) * ws).astype(F32),
             "bz": np.zeros(4, np.int32), "ys": np.array(0.03, F32),
             "yz": np.array(y_zp, np.int8 if y_dtype == TensorProto.INT8 else np.uint8),
             "lo": np.array(-0.5, F32), "hi": np.array(1.0, F32)}
    nodes = [node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"]),
             node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
             node("DequantizeLinear", ["b", "bs", "bz"], ["bf"], axis=0),
             node("Conv", ["xf", "wf", "bf"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    last = "c"
    for i, op in enumerate(between):
        args = [last, "lo", "hi"] if op == "Clip" else [last]
        nodes.append(node(op, args, [f"t{i}"]))
        last = f"t{i}"
    nodes += [node("QuantizeLinear", [last, "ys", "yz"], ["yq"]),
              node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    return make(nodes, {"x": (TensorProto.FLOAT, ["N", 2, 6, 6])},
                {"y": (TensorProto.FLOAT, ["N", 4, 6, 6])}, inits)


@pytest.mark.parametrize("between, activation", [([], None), (["Relu"], "relu"),
                                                 (["Clip"], ("clip", -0.5, 1.0))])
def test_qdq_conv_with_activation_becomes_one_quantized_conv(between, activation, rng):
    model = _qdq_conv(rng, between, y_zp=5)
    graph = load_onnx(model)
    assert [layer.kind for layer in graph.layers] == ["quantize", "conv2d", "dequantize"]
    conv = graph.layer("conv")
    assert conv.quantized and conv.activation == activation and conv.outputs == ("yq",)
    assert conv.weight.dtype == np.int8 and conv.bias.dtype == np.int32
    assert graph.meta["fused_qdq_groups"] == 1 and graph.meta["float_layers"] == []
    x = floats(rng, 3, 2, 6, 6, scale=1.0)
    ours = run(graph, {"x": x}, keep=True).values["yq"]
    theirs = ort_run(ort_session(model, extra_outputs=("yq",)), {"x": x})["yq"]
    assert np.array_equal(ours, theirs)


def test_qdq_float_op_between_dq_and_q_runs_in_float(rng):
    # uint8 in, int8 out: not a QLinearSoftmax (which needs one type), so the Softmax runs in float
    scale = {"s": np.array(0.05, F32), "z": np.array(0, np.uint8), "t": np.array(1 / 255, F32),
             "zi": np.array(-128, np.int8)}
    nodes = [node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
             node("Softmax", ["xf"], ["sm"]),
             node("QuantizeLinear", ["sm", "t", "zi"], ["yq"]),
             node("DequantizeLinear", ["yq", "t", "zi"], ["y"])]
    model = make(nodes, {"x": (TensorProto.FLOAT, ["N", 10])}, {"y": (TensorProto.FLOAT, ["N", 10])},
                 scale)
    graph = load_onnx(model)
    assert [layer.kind for layer in graph.layers] == ["quantize", "dequantize", "softmax", "quantize",
                                                      "dequantize"]
    assert graph.meta["format"] == "qdq" and graph.meta["float_layers"] == ["Softmax_2"]
    x = floats(rng, 64, 10, scale=3.0)
    ours = run(graph, {"x": x}).outputs["y"]
    theirs = ort_run(ort_session(model, optimize=False), {"x": x})["y"]
    assert np.abs(ours - theirs).max() <= 1 / 255 + 1e-7  # float softmax: at most 1 LSB apart


def test_qdq_layout_ops_with_equal_parameters_stay_integer(rng):
    params = {"s": np.array(0.05, F32), "z": np.array(7, np.uint8), "s2": np.array(0.07, F32)}
    nodes = [node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
             node("MaxPool", ["xf"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
             node("QuantizeLinear", ["mp", "s", "z"], ["mq"]),
             node("DequantizeLinear", ["mq", "s", "z"], ["mf"]),
             node("Relu", ["mf"], ["r"]),
             node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
             node("DequantizeLinear", ["rq", "s", "z"], ["rf"]),
             node("Flatten", ["rf"], ["f"]),
             node("QuantizeLinear", ["f", "s2", "z"], ["fq"]),  # other parameters: float Flatten
             node("DequantizeLinear", ["fq", "s2", "z"], ["y"])]
    model = make(nodes, {"x": (TensorProto.FLOAT, ["N", 2, 4, 4])},
                 {"y": (TensorProto.FLOAT, ["N", 8])}, params)
    graph = load_onnx(model)
    assert [layer.kind for layer in graph.layers] == ["quantize", "maxpool", "relu", "dequantize",
                                                      "flatten", "quantize", "dequantize"]
    x = floats(rng, 5, 2, 4, 4, scale=1.0)
    ours = run(graph, {"x": x}).outputs["y"]
    assert np.array_equal(ours, ort_run(ort_session(model), {"x": x})["y"])


# ------------------------------------------------------------------------------- errors

def _relu_model():
    return make([node("Relu", ["x"], ["y"], name="relu")], {"x": (TensorProto.FLOAT, ["N", 4])},
                {"y": (TensorProto.FLOAT, ["N", 4])})


def test_supported_operator_list():
    assert SUPPORTED_OPS[""][:3] == ("Add", "AveragePool", "BatchNormalization")
    assert "QGemm" in SUPPORTED_OPS["com.microsoft"]


SUPPORTED = ("Abs, Add, AveragePool, BatchNormalization, Cast, Ceil, Clip, Concat, Constant, Conv, "
             "ConvInteger, DequantizeLinear, Div, Dropout, DynamicQuantizeLinear, Equal, Erf, "
             "Flatten, Floor, Gather, Gelu, Gemm, GlobalAveragePool, Greater, GreaterOrEqual, "
             "Identity, LayerNormalization, Less, LessOrEqual, "
             "MatMul, MatMulInteger, Max, MaxPool, Min, Mul, Neg, QLinearConv, QLinearMatMul, "
             "QuantizeLinear, Reciprocal, ReduceMax, ReduceMin, Relu, Reshape, Round, Shape, Softmax, "
             "Sqrt, Squeeze, Sub, Transpose, Unsqueeze, Where, com.microsoft.QGemm, "
             "com.microsoft.QLinearAdd, com.microsoft.QLinearAveragePool, "
             "com.microsoft.QLinearConcat, com.microsoft.QLinearGlobalAveragePool, "
             "com.microsoft.QLinearLeakyRelu, com.microsoft.QLinearMul, "
             "com.microsoft.QLinearReduceMean, com.microsoft.QLinearSigmoid, "
             "com.microsoft.QLinearSoftmax")
INPUT_TYPES = ("FLOAT, FLOAT16, UINT8, INT8, UINT16, INT16, INT32, UINT4, INT4, UINT2 and INT2")


def _error(model) -> str:
    with pytest.raises(ConfigError) as err:
        load_onnx(model)
    return str(err.value)


def test_unsupported_operators_are_named_with_their_node():
    lstm = make([node("LSTM", ["x", "w", "r"], ["y"], name="lstm_1", hidden_size=2)],
                {"x": (TensorProto.FLOAT, [1, 1, 2])}, {"y": (TensorProto.FLOAT, None)},
                {"w": np.zeros((1, 8, 2), F32), "r": np.zeros((1, 8, 2), F32)})
    assert _error(lstm) == f"unsupported operator 'LSTM' in node 'lstm_1' (supported: {SUPPORTED})"
    attention = make([node("QAttention", ["x", "w", "b", "s", "s"], ["y"], domain="com.microsoft",
                           num_heads=2)],
                     {"x": (TensorProto.UINT8, [1, 4, 8])}, {"y": (TensorProto.FLOAT, [1, 4, 8])},
                     {"w": np.zeros((8, 24), np.int8), "b": np.zeros(24, F32),
                      "s": np.array(0.1, F32)}, ms=True)
    assert _error(attention) == (f"unsupported operator 'com.microsoft.QAttention' in node "
                                 f"'QAttention_0' (supported: {SUPPORTED})")


def test_malformed_and_truncated_files(tmp_path):
    data = _relu_model().SerializeToString()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \xff\xff\xff")
    assert _error(garbage) == (f"{garbage} is not a valid ONNX model: Error parsing message with "
                               f"type 'onnx.ModelProto': Wire format was corrupt")
    for cut in (0, len(data) // 2, len(data) - 3):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        message = _error(path)
        assert message.startswith(f"{path} is not a valid ONNX model: "), message
    assert _error(tmp_path / "cut0.onnx") == (f"{tmp_path / 'cut0.onnx'} is not a valid ONNX model: "
                                              f"it has no graph (no nodes and no outputs)")
    assert _error(data[:len(data) // 2]) == ("the serialized model is not a valid ONNX model: Error "
                                             "parsing message with type 'onnx.ModelProto': Wire "
                                             "format was corrupt")
    missing = tmp_path / "missing.onnx"
    assert _error(missing) == f"cannot read {missing}: No such file or directory"
    assert _error(tmp_path) == f"cannot read {tmp_path}: Is a directory"
    no_opset = _relu_model()
    del no_opset.opset_import[:]
    assert _error(no_opset) == ("the model is not a valid ONNX model: model with IR version >= 3 "
                                "must specify opset_import for ONNX")


def _conv_model(kernel=3, **attrs):
    return make([node("Conv", ["x", "w"], ["y"], name="conv", **attrs)],
                {"x": (TensorProto.FLOAT, [1, 1, 5, 5])}, {"y": (TensorProto.FLOAT, None)},
                {"w": np.ones((2, 1, kernel, kernel), F32)})


@pytest.mark.parametrize("model, message", [
    (lambda: make([node("Conv", ["x", "w"], ["y"], name="conv")], {"x": (TensorProto.FLOAT, [1, 1, 5, 5])},
                  {"y": (TensorProto.FLOAT, None)}),
     "node 'conv' (Conv) reads 'w', which is neither a graph input, an initializer nor the output "
     "of a node (missing initializer?)"),
    (lambda: _conv_model(auto_pad="SAME"),
     "node 'conv' (Conv): auto_pad 'SAME' is not supported (NOTSET, VALID, SAME_UPPER, SAME_LOWER)"),
    (lambda: _conv_model(1, auto_pad="SAME_LOWER", strides=[3, 3]),
     "node 'conv' (Conv): auto_pad 'SAME_LOWER' needs negative padding (-1) for an input of 5 with "
     "kernel 1 and stride 3; give explicit pads"),
    (lambda: make([node("Conv", ["x", "w"], ["y"], name="conv1d")], {"x": (TensorProto.FLOAT, [1, 1, 5])},
                  {"y": (TensorProto.FLOAT, None)}, {"w": np.ones((2, 1, 3), F32)}),
     "node 'conv1d' (Conv): only 2-D convolutions are supported, not a weight of shape (2, 1, 3)"),
    (lambda: make([node("Conv", ["x", "w"], ["y"], name="conv")], {"x": (TensorProto.FLOAT, [1, 1, 5, 5]),
                                                                   "w": (TensorProto.FLOAT, [2, 1, 3, 3])},
                  {"y": (TensorProto.FLOAT, None)}),
     "node 'conv' (Conv): weight must be a constant (an initializer), but 'w' is computed at run time"),
    (lambda: make([node("Reshape", ["x", "s"], ["y"], name="reshape")],
                  {"x": (TensorProto.FLOAT, [2, 6]), "s": (TensorProto.INT64, [2])},
                  {"y": (TensorProto.FLOAT, None)}),
     f"graph input 's' has element type INT64; qsim supports {INPUT_TYPES} inputs"),
    (lambda: make([node("Shape", ["x"], ["s"]), node("Reshape", ["x", "s"], ["y"], name="reshape")],
                  {"x": (TensorProto.FLOAT, ["N", 6])}, {"y": (TensorProto.FLOAT, None)}),
     "node 'reshape' (Reshape): shape must be a constant (an initializer), but 's' is computed at "
     "run time"),
    (lambda: make([node("Gemm", ["x", "w", "c"], ["y"], name="gemm")], {"x": (TensorProto.FLOAT, [2, 3])},
                  {"y": (TensorProto.FLOAT, None)}, {"w": np.ones((3, 4), F32), "c": np.ones((2, 4), F32)}),
     "node 'gemm' (Gemm): C of shape (2, 4) is not a bias of the 4 outputs ((), (4,) or (1, 4)); a "
     "per-row C is not supported"),
    (lambda: make([node("Relu", ["x"], ["y"])], {"x": (TensorProto.FLOAT, ["N", "C"])},
                  {"y": (TensorProto.FLOAT, None)}),
     "graph input 'x' has a symbolic dimension 'C' at axis 1; only the batch dimension (axis 0) may "
     "be symbolic"),
    (lambda: make([node("Relu", ["x"], ["y"])], {"x": (TensorProto.DOUBLE, [1, 2])},
                  {"y": (TensorProto.DOUBLE, None)}),
     f"graph input 'x' has element type DOUBLE; qsim supports {INPUT_TYPES} inputs"),
    (lambda: make([node("MaxPool", ["x"], ["y", "i"], name="pool", kernel_shape=[2, 2])],
                  {"x": (TensorProto.FLOAT, [1, 1, 4, 4])}, {"y": (TensorProto.FLOAT, None)}),
     "node 'pool' (MaxPool): the Indices output is not supported"),
    (lambda: make([node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], dilations=[2, 2])],
                  {"x": (TensorProto.FLOAT, [1, 1, 6, 6])}, {"y": (TensorProto.FLOAT, None)}, opset=19),
     "node 'pool' (AveragePool): dilations [2, 2] are not supported"),
    (lambda: make([node("Softmax", ["x"], ["y"], name="softmax", axis=1)],
                  {"x": (TensorProto.FLOAT, [1, 2, 3])}, {"y": (TensorProto.FLOAT, None)}, opset=11),
     "node 'softmax' (Softmax): opset 11 Softmax over axes 1.. of a rank-3 tensor (flattened to 2-D) "
     "is not supported; only the last axis"),
    (lambda: make([node("QGemm", ["x", "s", "z", "w", "s", "wz"], ["y"], name="qgemm",
                        domain="com.microsoft")],
                  {"x": (TensorProto.UINT8, [1, 3])}, {"y": (TensorProto.FLOAT, None)},
                  {"s": np.array(0.1, F32), "z": np.array(0, np.uint8), "w": np.ones((3, 2), np.int8),
                   "wz": np.array(0, np.int8)}, ms=True),
     "node 'qgemm' (QGemm): a QGemm without y_scale (float output) is not supported"),
    (lambda: make([node("Sin", ["x"], ["y"], name="sin")], {"x": (TensorProto.FLOAT, [2])},
                  {"y": (TensorProto.FLOAT, None)}),
     f"unsupported operator 'Sin' in node 'sin' (supported: {SUPPORTED})"),
    (lambda: make([node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q")], {"x": (TensorProto.FLOAT, [2])},
                  {"y": (TensorProto.UINT8, None)}, {"s": np.array(0.0, F32), "z": np.array(0, np.uint8)}),
     "node 'q' (QuantizeLinear): scale = 0.0 is not a positive finite number"),
])
def test_import_errors_name_the_problem(model, message):
    assert _error(model()) == message


def test_layer_shape_errors_name_the_layer():
    model = make([node("Gemm", ["x", "w"], ["y"], name="fc")], {"x": (TensorProto.FLOAT, ["N", 5])},
                 {"y": (TensorProto.FLOAT, None)}, {"w": np.ones((4, 3), F32)})
    assert _error(model) == "layer 'fc' (linear): expects (..., 4) input, got float32[1x5]"
