"""ONNX conformance of qsim's integer kernels (``onnx`` semantics), bit for bit.

Two sources of truth from the installed ``onnx`` package:

* the backend node test cases of QLinearMatMul, QLinearConv, MatMulInteger and ConvInteger.
  The wheel ships no pre-built ``.pb`` data, so the cases are generated: each
  ``onnx.backend.test.case.node.<op>`` module defines a ``Base`` subclass whose ``export*``
  static methods build inputs and expected outputs and hand them to ``expect(node, inputs,
  outputs, name)``, which normally appends a model to the package-wide list that
  ``collect_testcases()`` returns (generated only once per process, when a module is first
  imported). :func:`collect_onnx_cases` calls the export methods itself with ``expect``
  swapped for a recorder, so nothing global is read or changed;
* ``onnx.reference.ReferenceEvaluator`` on randomised models (geometry, groups, per-channel
  parameters, float16 scales, auto_pad), which covers what the few backend cases do not.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from qsim.quant.kernels import (
    conv_geometry,
    conv_integer,
    matmul_integer,
    qlinear_conv,
    qlinear_matmul,
)
from tests.quant.onnx_cases import BackendCase, collect_backend_cases

OPS = {"QLinearMatMul": "qlinearmatmul", "QLinearConv": "qlinearconv",
       "MatMulInteger": "matmulinteger", "ConvInteger": "convinteger"}
#: Element types qsim's integer kernels take; anything else (float8, int4, ...) is skipped.
SUPPORTED = {np.dtype(t) for t in (np.uint8, np.int8, np.int32, np.float16, np.float32)}


CASES = collect_backend_cases(OPS)


def _inputs(node: onnx.NodeProto, values) -> list:
    """The node's inputs by position, ``None`` for an omitted optional input."""
    present = iter(values)
    return [next(present) if name else None for name in node.input]


def run_with_qsim(case: BackendCase) -> list[np.ndarray]:
    """Evaluate a one-node ONNX test case with qsim's kernels; skip unsupported element types."""
    node = case.node
    for value in case.inputs:
        if np.asarray(value).dtype not in SUPPORTED:
            pytest.skip(f"{case.name}: element type {np.asarray(value).dtype} (float8/int4) is "
                        f"not an input of qsim's integer kernels")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    conv_attrs = {key: attrs.get(key) for key in ("strides", "pads", "dilations", "kernel_shape")}
    conv_attrs["group"] = attrs.get("group", 1)
    conv_attrs["auto_pad"] = (attrs.get("auto_pad", b"NOTSET") or b"NOTSET").decode()
    args = _inputs(node, case.inputs)
    if node.op_type == "MatMulInteger":
        a, b, a_zp, b_zp = args + [None] * (4 - len(args))
        return [matmul_integer(a, b, a_zp, b_zp)]
    if node.op_type == "ConvInteger":
        x, w, x_zp, w_zp = args + [None] * (4 - len(args))
        return [conv_integer(x, w, x_zp, w_zp, **conv_attrs)]
    if node.op_type == "QLinearMatMul":
        return [qlinear_matmul(*args, semantics="onnx")]
    args = args + [None] * (9 - len(args))
    return [qlinear_conv(*args[:8], bias=args[8], semantics="onnx", **conv_attrs)]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_onnx_backend_case(case):
    expected = [np.asarray(v) for v in case.outputs]
    got = run_with_qsim(case)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        assert g.dtype == e.dtype or (e.dtype == np.int32 and g.dtype == np.int64)
        assert np.array_equal(g, e), f"{case.name}: {g.tolist()} != {e.tolist()}"


def test_onnx_backend_case_counts():
    """Every generated case of the four operators runs; none is silently dropped."""
    outcome: Counter = Counter()
    per_op: Counter = Counter()
    skipped: list[str] = []
    for case in CASES:
        per_op[case.op] += 1
        try:
            got = run_with_qsim(case)
        except pytest.skip.Exception as reason:
            outcome["skipped"] += 1
            skipped.append(str(reason))
            continue
        same = all(np.array_equal(g, e) for g, e in zip(got, case.outputs))
        outcome["passed" if same else "failed"] += 1
    print(f"ONNX backend cases (onnx {onnx.__version__}): {dict(per_op)}; {dict(outcome)}; "
          f"skipped: {skipped or 'none'}")
    assert set(per_op) == set(OPS), f"no generated cases for {set(OPS) - set(per_op)}"
    assert outcome["failed"] == 0
    assert outcome["passed"] + outcome["skipped"] == len(CASES)
    # onnx 1.23: 8 QLinearMatMul, 1 QLinearConv, 1 MatMulInteger, 2 ConvInteger
    assert len(CASES) >= 12


# --------------------------------------------------------------------------- reference evaluator

_ONNX_TYPE = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
              np.dtype(np.int32): TensorProto.INT32, np.dtype(np.float32): TensorProto.FLOAT,
              np.dtype(np.float16): TensorProto.FLOAT16}


def reference(op_type: str, feeds: dict[str, np.ndarray | None], out_type: int,
              **attributes) -> np.ndarray:
    """Run one node in onnx's ReferenceEvaluator; ``None`` feeds are omitted inputs."""
    names = [name if value is not None else "" for name, value in feeds.items()]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op_type, names, ["y"], **attributes)
    inputs = [helper.make_tensor_value_info(name, _ONNX_TYPE[np.asarray(value).dtype],
                                            np.shape(value))
              for name, value in feeds.items() if value is not None]
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info("y", out_type, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    present = {name: value for name, value in feeds.items() if value is not None}
    return ReferenceEvaluator(model).run(None, present)[0]


def log_uniform(rng, low, high, size=None, dtype=np.float32):
    return np.exp(rng.uniform(np.log(low), np.log(high), size)).astype(dtype)


def _q(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, size=shape).astype(dtype)


@pytest.mark.parametrize("trial", range(24))
def test_qlinear_matmul_matches_reference_evaluator(trial, rng):
    a_type = (np.uint8, np.int8)[trial % 2]
    b_type = (np.uint8, np.int8)[(trial // 2) % 2]
    y_type = (np.uint8, np.int8)[(trial // 4) % 2]
    scale_type = np.float16 if trial % 3 == 0 else np.float32
    batch = [(), (2,), (3, 1)][trial % 3]
    m, k, n = (int(v) for v in rng.integers(1, 24, 3))
    a = _q(rng, a_type, batch + (m, k))
    b = _q(rng, b_type, (k, n))
    per_column = trial % 4 == 1
    b_scale = log_uniform(rng, 1e-3, 1e-1, (n,) if per_column else (1,), scale_type)
    b_zp = _q(rng, b_type, (n,) if per_column else (1,))
    a_scale = log_uniform(rng, 1e-3, 1e-1, (1,), scale_type)
    # aim the output scale at the accumulator spread so that few outputs clamp
    spread = float(a_scale[0]) * float(np.max(b_scale)) * 60 * np.sqrt(k)
    y_scale = (spread * log_uniform(rng, 0.5, 2.0, (1,))).astype(scale_type)
    feeds = dict(a=a, a_scale=a_scale, a_zero_point=_q(rng, a_type, (1,)), b=b,
                 b_scale=b_scale, b_zero_point=b_zp, y_scale=y_scale,
                 y_zero_point=_q(rng, y_type, (1,)))
    expected = reference("QLinearMatMul", feeds, _ONNX_TYPE[np.dtype(y_type)])
    got = qlinear_matmul(*feeds.values(), semantics="onnx")
    assert got.dtype == expected.dtype
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("trial", range(24))
def test_qlinear_conv_matches_reference_evaluator(trial, rng):
    x_type = (np.uint8, np.int8)[trial % 2]
    w_type = np.int8 if trial % 3 else np.uint8
    nd = 1 + trial % 2
    group = [1, 2, 3][trial % 3]
    cg, mg = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    if trial % 5 == 0:
        cg, mg = 1, 1  # depthwise
    kernel = tuple(int(v) for v in rng.integers(1, 4, nd))
    strides = tuple(int(v) for v in rng.integers(1, 3, nd))
    dilations = tuple(int(v) for v in rng.integers(1, 3, nd))
    spatial = tuple(int(v) for v in rng.integers(5, 9, nd))
    auto_pad = ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"][trial % 4]
    attrs = dict(strides=list(strides), dilations=list(dilations), group=group)
    if auto_pad == "NOTSET":
        attrs["pads"] = [int(v) for v in rng.integers(0, 3, 2 * nd)]
    else:
        attrs["auto_pad"] = auto_pad
    x = _q(rng, x_type, (2, group * cg) + spatial)
    w = _q(rng, w_type, (group * mg, cg) + kernel)
    outputs = group * mg
    w_scale = log_uniform(rng, 1e-3, 1e-1, (outputs,) if trial % 2 else (1,))
    w_zp = _q(rng, w_type, (outputs,)) if trial % 4 == 3 else _q(rng, w_type, (1,))
    x_scale = log_uniform(rng, 1e-3, 1e-1, ())
    bias = rng.integers(-5000, 5000, outputs).astype(np.int32) if trial % 2 else None
    depth = cg * int(np.prod(kernel))
    y_scale = np.float32(float(x_scale) * float(np.max(w_scale)) * 60 * np.sqrt(depth)
                         * float(log_uniform(rng, 0.5, 2.0)))
    y_zp = _q(rng, x_type, ())
    feeds = dict(x=x, x_scale=x_scale, x_zero_point=_q(rng, x_type, ()), w=w, w_scale=w_scale,
                 w_zero_point=w_zp, y_scale=y_scale, y_zero_point=y_zp, B=bias)
    expected = reference("QLinearConv", feeds, _ONNX_TYPE[np.dtype(x_type)], **attrs)
    got = qlinear_conv(x, x_scale, feeds["x_zero_point"], w, w_scale, w_zp, y_scale, y_zp, bias,
                       semantics="onnx", **{k: v for k, v in attrs.items()})
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("trial", range(12))
def test_integer_ops_match_reference_evaluator(trial, rng):
    a_type = (np.uint8, np.int8)[trial % 2]
    b_type = (np.uint8, np.int8)[(trial // 2) % 2]
    a = _q(rng, a_type, (3, 5, 17))
    b = _q(rng, b_type, (17, 6))
    feeds = dict(A=a, B=b, a_zero_point=_q(rng, a_type, (5, 1) if trial % 3 == 0 else (1,)),
                 b_zero_point=_q(rng, b_type, (6,) if trial % 2 else (1,)))
    expected = reference("MatMulInteger", feeds, TensorProto.INT32)
    assert np.array_equal(matmul_integer(*feeds.values()), expected)

    auto_pad = ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"][trial % 4]
    group = 1 + trial % 2
    x = _q(rng, a_type, (1, 2 * group, 7, 6))
    w = _q(rng, b_type, (2 * group, 2, 3, 2))
    attrs = dict(strides=[2, 1], dilations=[1, 2], group=group)
    if auto_pad == "NOTSET":
        attrs["pads"] = [2, 0, 1, 1]
    else:
        attrs["auto_pad"] = auto_pad
    feeds = dict(x=x, w=w, x_zero_point=_q(rng, a_type, ()),
                 w_zero_point=_q(rng, b_type, (2 * group,)))
    expected = reference("ConvInteger", feeds, TensorProto.INT32, **attrs)
    got = conv_integer(*feeds.values(), **attrs)
    geometry = conv_geometry((7, 6), (3, 2), strides=(2, 1), dilations=(1, 2),
                             pads=attrs.get("pads"), auto_pad=auto_pad)
    assert got.shape == (1, 2 * group) + geometry.output
    assert np.array_equal(got, expected)
