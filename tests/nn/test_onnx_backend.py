"""ONNX's own backend test cases of the quantization operators, run through ``qsim infer``.

The installed ``onnx`` package ships the case generators of its backend node tests
(``onnx.backend.test.case.node.<op>``): each ``export*`` static method builds inputs and
expected outputs and hands them to ``onnx.backend.test.case.node.expect``, which builds the
test model (every operand a graph input, the opset and IR version onnx's own runner uses) and,
for operators defined by a function such as ``DynamicQuantizeLinear``, the ``_expanded`` model
of that function's nodes too. :func:`backend_cases` calls those export methods with the
registry ``expect`` writes to swapped for a private list, so the cases are exactly onnx's
(models included) and nothing global is changed, whatever else ran in the process.

Every case is written to disk (model and ``.npz`` inputs; int4/uint4/int2/uint2 tensors
unpacked, one value per element, in int8/uint8 arrays), run with ``qsim.cli.main(["infer",
...])`` and compared with onnx's expected outputs exactly: dtype, shape and every value. The
float8/float4 cases are not supported and must fail with one exact message.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qsim.cli import main

#: The seven operators and their case modules.
MODULES = {"QuantizeLinear": "quantizelinear", "DequantizeLinear": "dequantizelinear",
           "DynamicQuantizeLinear": "dynamicquantizelinear", "QLinearMatMul": "qlinearmatmul",
           "QLinearConv": "qlinearconv", "MatMulInteger": "matmulinteger",
           "ConvInteger": "convinteger"}
_NARROW = {TensorProto.INT4: np.int8, TensorProto.INT2: np.int8, TensorProto.UINT4: np.uint8,
           TensorProto.UINT2: np.uint8}
_FLOAT8_4 = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
             TensorProto.FLOAT8E5M2FNUZ, TensorProto.FLOAT4E2M1}


def backend_cases() -> list:
    """onnx's ``TestCase`` objects of :data:`MODULES`, in the generators' order."""
    import onnx.backend.test.case.node as registry

    saved = registry._NodeTestCases, registry._existing_names, registry._TargetOpType
    cases = []
    try:
        for op, module_name in MODULES.items():
            # A first import runs the exports itself (onnx's metaclass): into a scratch list.
            registry._NodeTestCases, registry._existing_names, registry._TargetOpType = [], {}, None
            module = importlib.import_module(f"onnx.backend.test.case.node.{module_name}")
            registry._NodeTestCases, registry._existing_names = [], {}
            for attribute, export in vars(getattr(module, op)).items():
                if attribute.startswith("export"):
                    np.random.seed(0)  # as onnx's collector does before each export
                    export.__func__()
            cases.extend(registry._NodeTestCases)
    finally:
        registry._NodeTestCases, registry._existing_names, registry._TargetOpType = saved
    return cases


CASES = backend_cases()


def _array(value) -> np.ndarray:
    """A case's input or output as the npz convention has it (narrow integers unpacked)."""
    if isinstance(value, onnx.TensorProto):
        array = np.asarray(numpy_helper.to_array(value))
        return array.astype(_NARROW[value.data_type]) if value.data_type in _NARROW else array
    return np.asarray(value)


def _unsupported(case) -> str | None:
    """The message qsim gives for a float8/float4 case (the first such graph input)."""
    for value in case.model.graph.input:
        elem = value.type.tensor_type.elem_type
        if elem in _FLOAT8_4:
            return (f"graph input {value.name!r} has element type "
                    f"{TensorProto.DataType.Name(elem)}; qsim supports FLOAT, FLOAT16, UINT8, INT8, "
                    f"UINT16, INT16, INT32, UINT4, INT4, UINT2 and INT2 inputs")
    return None


def _run(case, tmp_path, capsys, semantics: str) -> tuple[int, str, dict]:
    model_path, inputs_path, output = tmp_path / "m.onnx", tmp_path / "x.npz", tmp_path / "y.npz"
    onnx.save(case.model, model_path)
    inputs, _ = case.data_sets[0]
    names = [v.name for v in case.model.graph.input]
    np.savez(inputs_path, **{name: _array(v) for name, v in zip(names, inputs)})
    status = main(["infer", str(model_path), "--inputs", str(inputs_path), "--output", str(output),
                   "--semantics", semantics])
    err = capsys.readouterr().err
    results = {}
    if status == 0:
        with np.load(output) as archive:
            results = {name: archive[name] for name in archive.files}
    else:
        assert not output.exists()
    return status, err, results


@pytest.mark.parametrize("semantics", ["onnx", "onnxruntime"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_backend_case_through_qsim_infer(case, semantics, tmp_path, capsys):
    status, err, results = _run(case, tmp_path, capsys, semantics)
    message = _unsupported(case)
    if message is not None:
        assert (status, err) == (2, f"qsim: error: {message}\n")
        return
    assert status == 0, err
    _, expected = case.data_sets[0]
    names = [v.name for v in case.model.graph.output]
    assert sorted(results) == sorted(names)
    for name, want in zip(names, expected):
        want = _array(want)
        got = results[name]
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        np.testing.assert_array_equal(got, want, strict=True)


def test_case_counts():
    """45 cases (42 node tests and 3 expanded DynamicQuantizeLinear functions): the 37 integer
    cases run (above) and the 8 float8/float4 cases are refused."""
    by_op = {}
    for case in CASES:
        op = next(op for op, module in MODULES.items() if case.name.startswith(f"test_{module}"))
        by_op[op] = by_op.get(op, 0) + 1
    assert by_op == {"QuantizeLinear": 13, "DequantizeLinear": 14, "DynamicQuantizeLinear": 6,
                     "QLinearMatMul": 8, "QLinearConv": 1, "MatMulInteger": 1, "ConvInteger": 2}
    refused = sorted(case.name for case in CASES if _unsupported(case))
    assert refused == [
        "test_dequantizelinear_e4m3fn", "test_dequantizelinear_e4m3fn_float16",
        "test_dequantizelinear_e4m3fn_zero_point", "test_dequantizelinear_e5m2",
        "test_dequantizelinear_float4e2m1", "test_quantizelinear_e4m3fn",
        "test_quantizelinear_e5m2", "test_quantizelinear_float4e2m1"]
    assert len(CASES) - len(refused) == 37
    assert sum(c.name.endswith("_expanded") for c in CASES) == 3


# ------------------------------------------------------------------ the npz conventions

def _model(nodes, inputs, outputs, opset=21, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def test_int4_inputs_are_unpacked_and_range_checked(tmp_path, capsys):
    model = _model([helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
                   [helper.make_tensor_value_info("q", TensorProto.INT4, [2, 3]),
                    helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                   initializers=[helper.make_tensor("z", TensorProto.INT4, [], [-1])])
    onnx.save(model, tmp_path / "m.onnx")
    q = np.array([[-8, -1, 0], [1, 6, 7]], np.int8)
    np.savez(tmp_path / "x.npz", q=q, s=np.float32(0.5))
    args = ["infer", str(tmp_path / "m.onnx"), "--inputs", str(tmp_path / "x.npz"), "--output",
            str(tmp_path / "y.npz")]
    assert main(args) == 0
    capsys.readouterr()
    with np.load(tmp_path / "y.npz") as result:
        assert result["y"].tolist() == [[-3.5, 0.0, 0.5], [1.0, 3.5, 4.0]]
    q[1, 2] = 8
    np.savez(tmp_path / "x.npz", q=q, s=np.float32(0.5))
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "qsim: error: input 'q' holds 8 at [1, 2], outside int4 [-8, 7] (int4 inputs are given "
        "unpacked, one value per element, as int8)\n")
    np.savez(tmp_path / "x.npz", q=q.astype(np.int16), s=np.float32(0.5))
    assert main(args) == 2
    assert capsys.readouterr().err == "qsim: error: input 'q' has dtype int16, expected int8\n"


# ------------------------------------------------------------------ against live ONNX Runtime

ort = pytest.importorskip("onnxruntime")


def _ort(model, feeds: dict) -> dict:
    from qsim.nn.bench_infer import ort_run, ort_session

    return ort_run(ort_session(model), {k: np.asarray(v) for k, v in feeds.items()})


def _qsim(model, feeds: dict) -> dict:
    from qsim.nn.infer import infer

    return infer(model, feeds)  # onnxruntime semantics, isa="auto": this CPU's ORT kernels


def _same(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype, name
        np.testing.assert_array_equal(ours[name], value, strict=True)


@pytest.mark.parametrize("network", ["mlp", "cnn"])
@pytest.mark.parametrize("weight", ["QInt8", "QUInt8"])
def test_quantize_dynamic_models_equal_onnxruntime(network, weight, tmp_path):
    """``quantize_dynamic`` writes DynamicQuantizeLinear -> MatMulInteger/ConvInteger -> Cast ->
    Mul -> Add, with the activation scale computed at run time: every output equal."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from qsim.nn.bench_infer import HELD_OUT, _quiet, digits, digits_cnn, digits_mlp

    model = digits_mlp() if network == "mlp" else digits_cnn()
    onnx.save(model, tmp_path / "f.onnx")
    with _quiet():
        quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"),
                         weight_type=getattr(QuantType, weight))
    quantized = onnx.load(tmp_path / "q.onnx")
    ops = {n.op_type for n in quantized.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert ("ConvInteger" in ops) == (network == "cnn")
    x = digits()[0][HELD_OUT][:200]
    x = x.reshape(len(x), -1) if network == "mlp" else x
    _same(_qsim(quantized, {"x": x}), _ort(quantized, {"x": x}))


def test_qlinear_matmul_of_two_activations_equals_onnxruntime(rng):
    """Full-range uint8 x int8 operands, so that ORT's pair saturation shows on AVX2 paths."""
    names = ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale",
             "y_zero_point"]
    model = _model([helper.make_node("QLinearMatMul", names, ["y"])],
                   [helper.make_tensor_value_info("a", TensorProto.UINT8, ["N", 3, 64]),
                    helper.make_tensor_value_info("b", TensorProto.INT8, [64, 24]),
                    helper.make_tensor_value_info("a_scale", TensorProto.FLOAT, [])],
                   [helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", 3, 24])],
                   initializers=[numpy_helper.from_array(np.uint8(128), "a_zero_point"),
                                 numpy_helper.from_array(np.float32(0.02), "b_scale"),
                                 numpy_helper.from_array(np.int8(0), "b_zero_point"),
                                 numpy_helper.from_array(np.float32(40.0), "y_scale"),
                                 numpy_helper.from_array(np.uint8(120), "y_zero_point")])
    feeds = {"a": rng.integers(0, 256, (5, 3, 64)).astype(np.uint8),
             "b": rng.integers(-128, 128, (64, 24)).astype(np.int8), "a_scale": np.float32(0.05)}
    _same(_qsim(model, feeds), _ort(model, feeds))


def test_conv_integer_and_qlinear_conv_with_run_time_weights_equal_onnxruntime(rng):
    """1-D and 2-D ConvInteger/QLinearConv whose weights and parameters are graph inputs."""
    for spatial in ((11,), (7, 6)):
        rank = len(spatial)
        kernel = (3,) * rank
        attrs = dict(pads=[1] * (2 * rank), strides=[2] * rank, group=2)
        x_shape, w_shape = (2, 4, *spatial), (6, 2, *kernel)
        y_shape = [2, 6, *((d + 2 - 3) // 2 + 1 for d in spatial)]
        q_names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "bias"]
        model = _model(
            [helper.make_node("ConvInteger", ["x", "w", "xz"], ["acc"], **attrs),
             helper.make_node("QLinearConv", q_names, ["y"], **attrs)],
            [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape),
             helper.make_tensor_value_info("w", TensorProto.UINT8, w_shape),
             helper.make_tensor_value_info("xz", TensorProto.UINT8, []),
             helper.make_tensor_value_info("ws", TensorProto.FLOAT, [6]),
             helper.make_tensor_value_info("bias", TensorProto.INT32, [6])],
            [helper.make_tensor_value_info("acc", TensorProto.INT32, y_shape),
             helper.make_tensor_value_info("y", TensorProto.UINT8, y_shape)],
            initializers=[numpy_helper.from_array(np.float32(0.03), "xs"),
                          numpy_helper.from_array(np.uint8(7), "wz"),
                          numpy_helper.from_array(np.float32(0.9), "ys"),
                          numpy_helper.from_array(np.uint8(100), "yz")])
        feeds = {"x": rng.integers(0, 256, x_shape).astype(np.uint8),
                 "w": rng.integers(0, 256, w_shape).astype(np.uint8), "xz": np.uint8(131),
                 "ws": rng.uniform(0.001, 0.01, 6).astype(np.float32),
                 "bias": rng.integers(-2000, 2000, 6).astype(np.int32)}
        _same(_qsim(model, feeds), _ort(model, feeds))


@pytest.mark.parametrize("elem, dtype", [(TensorProto.INT16, np.int16), (TensorProto.UINT16, np.uint16),
                                         (TensorProto.INT8, np.int8)])
def test_quantize_dequantize_with_run_time_parameters_equal_onnxruntime(elem, dtype, rng):
    """Scale and zero point as graph inputs (per tensor and per axis), a computed scale
    (``Div`` of a graph input), and a float16 scale."""
    model = _model(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], axis=1),
         helper.make_node("Div", ["t", "four"], ["s4"]),
         helper.make_node("QuantizeLinear", ["x", "s4", "z4"], ["q4"]),
         helper.make_node("DequantizeLinear", ["q4", "h"], ["d16"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [5]),
         helper.make_tensor_value_info("z", elem, [5]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("h", TensorProto.FLOAT16, [])],
        [helper.make_tensor_value_info(n, t, ["N", 5]) for n, t in
         (("q", elem), ("d", TensorProto.FLOAT), ("q4", elem), ("d16", TensorProto.FLOAT16))],
        initializers=[numpy_helper.from_array(np.float32(4), "four"),
                      numpy_helper.from_array(np.zeros((), dtype), "z4")])
    info = np.iinfo(dtype)
    x = (rng.standard_normal((9, 5)) * 40).astype(np.float32)
    x[0] = [-2.5, -1.5, 0.5, 1.5, 2.5]  # ties with s = 1 and s = t / 4 = 1
    feeds = {"x": x, "s": np.float32([1, 0.5, 0.25, 3, 0.7]),
             "z": rng.integers(info.min // 4, info.max // 4, 5).astype(dtype),
             "t": np.float32(4), "h": np.float16(0.0999)}
    _same(_qsim(model, feeds), _ort(model, feeds))


def test_dynamic_quantize_linear_all_zero_input_follows_the_semantics():
    """ONNX Runtime gives an all-zero input scale 1, the ONNX reference 1/255."""
    from qsim.nn.infer import infer

    model = _model([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                   [helper.make_tensor_value_info("y", TensorProto.UINT8, [4]),
                    helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
                    helper.make_tensor_value_info("z", TensorProto.UINT8, [])], opset=11)
    feeds = {"x": np.zeros(4, np.float32)}
    _same(_qsim(model, feeds), _ort(model, feeds))
    assert infer(model, feeds, "onnx")["s"] == np.float32(1 / 255)


def test_clip_with_run_time_bounds_equals_onnxruntime(rng):
    model = _model([helper.make_node("Clip", ["x", "lo", ""], ["y"]),
                    helper.make_node("Clip", ["x", "", "hi"], ["z"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6]),
                    helper.make_tensor_value_info("lo", TensorProto.FLOAT, []),
                    helper.make_tensor_value_info("hi", TensorProto.FLOAT, [])],
                   [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 6]) for n in "yz"])
    feeds = {"x": rng.standard_normal((3, 6)).astype(np.float32), "lo": np.float32(-0.25),
             "hi": np.float32(0.5)}
    _same(_qsim(model, feeds), _ort(model, feeds))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_ort_contrib_elementwise_ops_equal_onnxruntime(dtype, rng):
    """com.microsoft QLinearMul (broadcast, parameters as graph inputs), QLinearSigmoid (MLAS's
    logistic on this CPU's path) and QLinearLeakyRelu (omitted x zero point)."""
    elem = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8
    info = np.iinfo(dtype)
    ms = "com.microsoft"
    graph = helper.make_graph(
        [helper.make_node("QLinearMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["m"],
                          domain=ms),
         helper.make_node("QLinearSigmoid", ["a", "sa", "za", "sy", "zy"], ["g"], domain=ms),
         helper.make_node("QLinearLeakyRelu", ["a", "sa", "", "sy", "zy"], ["l"], domain=ms, alpha=0.3)],
        "contrib",
        [helper.make_tensor_value_info("a", elem, ["N", 4, 16]),
         helper.make_tensor_value_info("b", elem, [16]),
         helper.make_tensor_value_info("sa", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("za", elem, [])],
        [helper.make_tensor_value_info(n, elem, ["N", 4, 16]) for n in "mgl"],
        initializer=[numpy_helper.from_array(np.float32(0.07), "sb"),
                     numpy_helper.from_array(np.asarray(3, dtype), "zb"),
                     numpy_helper.from_array(np.float32(0.011), "sy"),
                     numpy_helper.from_array(np.asarray(info.min + 100, dtype), "zy")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ms, 1)])
    model.ir_version = 8
    feeds = {"a": rng.integers(info.min, info.max + 1, (6, 4, 16)).astype(dtype),
             "b": rng.integers(info.min, info.max + 1, 16).astype(dtype),
             "sa": np.float32(0.05), "za": np.asarray(info.min + 120, dtype)}
    _same(_qsim(model, feeds), _ort(model, feeds))
