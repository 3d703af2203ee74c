"""ONNX backend conformance of qsim.quant.ops, and agreement with ONNX Runtime on random data.

The onnx wheel ships the node-test *generators* (``onnx.backend.test.case.node``), not the
generated protobuf data. Each generator class runs its ``export*`` static methods, which
call ``expect(node, inputs, outputs, name)``. We call those methods ourselves with ``expect``
swapped for a recorder, so every case of QuantizeLinear, DequantizeLinear and
DynamicQuantizeLinear is collected without touching onnx's global test registry, and run
every integer-typed case through qsim's functions with exact equality.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from qsim.numerics import IntFormat  # noqa: E402
from qsim.quant.ops import dequantize, dynamic_quantize, quantize  # noqa: E402
from qsim.quant.params import QuantParams  # noqa: E402
from tests.quant.onnx_cases import BackendCase, collect_backend_cases

INTEGER_TYPES = {
    TensorProto.INT2: IntFormat(2, True), TensorProto.UINT2: IntFormat(2, False),
    TensorProto.INT4: IntFormat(4, True), TensorProto.UINT4: IntFormat(4, False),
    TensorProto.INT8: IntFormat(8, True), TensorProto.UINT8: IntFormat(8, False),
    TensorProto.INT16: IntFormat(16, True), TensorProto.UINT16: IntFormat(16, False),
    TensorProto.INT32: IntFormat(32, True),
}
GENERATORS = {
    "QuantizeLinear": "quantizelinear",
    "DequantizeLinear": "dequantizelinear",
    "DynamicQuantizeLinear": "dynamicquantizelinear",
}


CASES = collect_backend_cases(GENERATORS)


def _elem_type(value: Any) -> int:
    if isinstance(value, onnx.TensorProto):
        return value.data_type
    return helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype)


def _array(value: Any) -> np.ndarray:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value)


def _ints(value: Any) -> np.ndarray:
    return _array(value).astype(np.int64)


def _attrs(node) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _params(scale: np.ndarray, zero_point: np.ndarray | None, fmt: IntFormat, attrs: dict,
            data_ndim: int) -> QuantParams:
    """QuantParams for ONNX's granularity rule (one-element scale: per tensor)."""
    zp = np.zeros(scale.shape, np.int64) if zero_point is None else zero_point
    block = attrs.get("block_size", 0)
    if scale.size == 1 and not block:
        return QuantParams(scale.reshape(()), zp.reshape(()), fmt)
    axis = attrs.get("axis", 1)
    return QuantParams(scale, zp, fmt, axis=axis if axis >= 0 else axis + data_ndim,
                       block_size=block or None)


def _skip_reason(case: BackendCase) -> str | None:
    if case.op == "QuantizeLinear":
        types = [_elem_type(case.outputs[0])]
    elif case.op == "DequantizeLinear":
        types = [_elem_type(case.inputs[0])]
    else:
        types = [TensorProto.UINT8]
    for t in types:
        if t not in INTEGER_TYPES:
            return (f"{TensorProto.DataType.Name(t)} is a floating-point quantized type; "
                    f"qsim.quant.ops quantizes to integer formats only")
    return None


def _run(case: BackendCase) -> None:
    attrs = _attrs(case.node)
    if case.op == "QuantizeLinear":
        x, scale = np.asarray(case.inputs[0]), _array(case.inputs[1])
        expected = case.outputs[0]
        fmt = INTEGER_TYPES[_elem_type(expected)]
        zp = _ints(case.inputs[2]) if len(case.inputs) > 2 else None
        got = quantize(x, _params(scale, zp, fmt, attrs, x.ndim))
        want = _ints(expected)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want, strict=True)
    elif case.op == "DequantizeLinear":
        q = case.inputs[0]
        fmt = INTEGER_TYPES[_elem_type(q)]
        scale = _array(case.inputs[1])
        zp = _ints(case.inputs[2]) if len(case.inputs) > 2 else None
        qi = _ints(q)
        got = dequantize(qi, _params(scale, zp, fmt, attrs, qi.ndim))
        want = _array(case.outputs[0])
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, strict=True)
    else:
        q, params = dynamic_quantize(np.asarray(case.inputs[0]))
        want_q, want_scale, want_zp = (_array(v) for v in case.outputs)
        np.testing.assert_array_equal(q, want_q.astype(np.int64), strict=True)
        assert params.scale.dtype == np.float32
        assert params.scale.tobytes() == np.asarray(want_scale, np.float32).tobytes()
        assert int(params.zero_point) == int(want_zp)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_onnx_backend_case(case: BackendCase):
    reason = _skip_reason(case)
    if reason:
        pytest.skip(reason)
    _run(case)


def test_conformance_counts(capsys):
    """Every generated case is either run (and passes) or skipped for a stated reason."""
    passed, skipped = [], []
    for case in CASES:
        reason = _skip_reason(case)
        if reason:
            skipped.append((case.name, reason))
        else:
            _run(case)
            passed.append(case.name)
    with capsys.disabled():
        print(f"\nONNX QDQ conformance: {len(passed)} passed, {len(skipped)} skipped "
              f"of {len(CASES)} generated cases")
        for name, reason in skipped:
            print(f"  skipped {name}: {reason}")
    by_op = {op: sum(c.op == op for c in CASES) for op in GENERATORS}
    assert by_op == {"QuantizeLinear": 13, "DequantizeLinear": 14, "DynamicQuantizeLinear": 3}
    assert (len(passed), len(skipped)) == (22, 8)
    assert sorted(name for name, _ in skipped) == [
        "test_dequantizelinear_e4m3fn", "test_dequantizelinear_e4m3fn_float16",
        "test_dequantizelinear_e4m3fn_zero_point", "test_dequantizelinear_e5m2",
        "test_dequantizelinear_float4e2m1", "test_quantizelinear_e4m3fn",
        "test_quantizelinear_e5m2", "test_quantizelinear_float4e2m1",
    ]


# ------------------------------------------------------------------ ONNX Runtime, random data

def _reference_dynamic(x: np.ndarray):
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "zp"])
    return ReferenceEvaluator(node).run(None, {"x": x})


def _session(nodes, inputs, outputs, opset: int = 21):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("fmt_name, onnx_type, axis", [
    ("uint8", TensorProto.UINT8, None), ("int8", TensorProto.INT8, 1),
    ("int16", TensorProto.INT16, None), ("uint16", TensorProto.UINT16, 0),
    ("int4", TensorProto.INT4, 1), ("uint4", TensorProto.UINT4, None),
])
def test_quantize_dequantize_match_onnxruntime(rng, fmt_name, onnx_type, axis):
    fmt = IntFormat.parse(fmt_name)
    x = (rng.standard_normal((6, 40)) * 3).astype(np.float32)
    # Include exact ties of x / scale so the rounding rule is exercised, not just the ulps.
    x[0, :8] = np.float32([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, -3.5]) * np.float32(0.25)
    shape = () if axis is None else (x.shape[axis],)
    scale = rng.uniform(0.01, 0.4, shape).astype(np.float32)
    if axis is None:
        scale = np.float32(0.25)
    zp = rng.integers(fmt.min, fmt.max + 1, shape)
    params = QuantParams(scale, zp, fmt, axis=axis)
    zp_tensor = helper.make_tensor("zp", onnx_type, list(shape), np.atleast_1d(zp).tolist())
    attrs = {} if axis is None else {"axis": axis}
    # The zero point is an initializer and y is cast to int32 on the way out: ORT cannot
    # exchange int4 tensors with numpy.
    graph_q = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"], **attrs),
         helper.make_node("Cast", ["y"], ["y32"], to=TensorProto.INT32),
         helper.make_node("DequantizeLinear", ["y", "s", "zp"], ["d"], **attrs)], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y32", TensorProto.INT32, list(x.shape)),
         helper.make_tensor_value_info("d", TensorProto.FLOAT, list(x.shape))],
        initializer=[zp_tensor])
    model = helper.make_model(graph_q, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, d = sess.run(None, {"x": x, "s": np.asarray(scale, np.float32)})
    q = quantize(x, params)
    np.testing.assert_array_equal(q, y.astype(np.int64), strict=True)
    np.testing.assert_array_equal(dequantize(q, params), d, strict=True)


def test_dynamic_quantize_matches_onnxruntime(rng):
    sess = _session(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "zp"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [None]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("zp", TensorProto.UINT8, [])], opset=11)
    inputs = [
        rng.standard_normal(257).astype(np.float32) * 7,
        rng.uniform(0.1, 5, 64).astype(np.float32),      # min widened to 0
        -rng.uniform(0.1, 5, 64).astype(np.float32),     # max widened to 0
        np.float32([-1.0, -2.1, -1.3, -2.5, -3.34, -4.0]),
        np.float32([1e-30, 3e-30, 0]),                  # tiny but nonzero range
    ]
    for x in inputs:
        y, s, zp = sess.run(None, {"x": x})
        q, params = dynamic_quantize(x)
        np.testing.assert_array_equal(q, y.astype(np.int64), strict=True)
        assert params.scale.tobytes() == np.asarray(s, np.float32).tobytes()
        assert int(params.zero_point) == int(zp)


def test_dynamic_quantize_all_zero_follows_the_reference_not_onnxruntime():
    """hi == lo: the ONNX reference gives scale 1/255, ORT 1.0; q and zero point agree."""
    x = np.zeros(5, np.float32)
    sess = _session(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "zp"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [5]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("zp", TensorProto.UINT8, [])], opset=11)
    y, s, zp = sess.run(None, {"x": x})
    ref_y, ref_s, ref_zp = _reference_dynamic(x)
    q, params = dynamic_quantize(x)
    assert q.tolist() == y.tolist() == ref_y.tolist() == [0] * 5
    assert int(params.zero_point) == int(zp) == int(ref_zp) == 0
    assert float(s) == 1.0
    assert params.scale.tobytes() == np.float32(ref_s).tobytes() == np.float32(1 / 255).tobytes()


def test_dequantize_float16_scale_matches_both_engines():
    """A case where float16 output needs the reference's float32 product then float16 cast."""
    from onnx.reference import ReferenceEvaluator

    scale = np.uint16(15349).view(np.float16)
    sess_inputs = [helper.make_tensor_value_info("x", TensorProto.INT16, [3]),
                   helper.make_tensor_value_info("s", TensorProto.FLOAT16, []),
                   helper.make_tensor_value_info("zp", TensorProto.INT16, [])]
    node = helper.make_node("DequantizeLinear", ["x", "s", "zp"], ["y"])
    graph = helper.make_graph([node], "dq16", sess_inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    feeds = {"x": np.array([-27741, 100, 5], np.int16), "s": np.array(scale),
             "zp": np.array(0, np.int16)}
    by_ort = ort.InferenceSession(model.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    by_reference = ReferenceEvaluator(model).run(None, feeds)[0]
    got = dequantize(feeds["x"], QuantParams(scale, 0, "int16"))
    assert got.dtype == np.float16
    assert got.tobytes() == by_ort.tobytes() == by_reference.tobytes()
