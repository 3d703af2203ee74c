"""qsim predicts ONNX Runtime on the CPU it runs on: full-range uint8 x int8, live, on any x86.

ONNX Runtime's uint8 x int8 kernels add pairs of products in saturating int16 on x86 CPUs
without VNNI and accumulate exactly with VNNI or AMX (``qsim.quant.isa``). Every test here
runs the engine live and compares it with qsim told nothing: ``isa="auto"`` detects the path,
so the same assertions hold on both kinds of machine and nothing is skipped. Each also shows
that the operands are ones where the path matters (the ``avx2`` and ``exact`` predictions
differ), so an equality cannot come from operands that never saturate.
The other path's emulation is checked against recorded outputs in
``tests/quant/test_isa_golden.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qsim.cli import main
from qsim.nn.bench_infer import ort_run, ort_session, quantize
from qsim.nn.infer import infer
from qsim.quant.isa import ISA_NAMES, detect_isa
from qsim.quant.kernels import conv_integer, matmul_integer, qlinear_conv, qlinear_matmul
from qsim.quant.ortops import qgemm
from tests.golden.cases import (CONVS, MATMULS, cnn_inputs, conv_operands, float_cnn, matmul_operands,
                                run_single_node)

pytest.importorskip("onnxruntime")

vi = helper.make_tensor_value_info


def test_the_path_is_detected():
    print(f"\nthis CPU's instruction path: {detect_isa()}")
    assert detect_isa() in ISA_NAMES[1:]  # a concrete path, never "auto"


@pytest.mark.parametrize("case", CONVS, ids=lambda c: "c{}m{}k{}s{}p{}d{}g{}".format(*c))
def test_qlinear_conv(case):
    o = conv_operands(case, seed=sum(case))
    _, outputs, _, stride, pad, dilation, group = case
    attributes = dict(strides=[stride] * 2, pads=[pad] * 4, dilations=[dilation] * 2, group=group)
    got = run_single_node("QLinearConv", [vi("x", TensorProto.UINT8, o["x"].shape)],
                  {"x_scale": o["x_scale"], "x_zero_point": o["x_zero_point"], "w": o["w"],
                   "w_scale": o["w_scale"], "w_zero_point": np.zeros(outputs, np.int8),
                   "y_scale": o["y_scale"], "y_zero_point": o["y_zero_point"]},
                  {"x": o["x"]}, TensorProto.UINT8, **attributes)

    def ours(isa):
        return qlinear_conv(o["x"], o["x_scale"], o["x_zero_point"], o["w"], o["w_scale"],
                            np.zeros(outputs, np.int8), o["y_scale"], o["y_zero_point"],
                            strides=(stride,) * 2, pads=(pad,) * 4, dilations=(dilation,) * 2,
                            group=group, semantics="onnxruntime", isa=isa)

    assert np.array_equal(ours("auto"), got)
    depthwise = o["x"].shape[1] == group == outputs
    differ = np.count_nonzero(ours("avx2") != ours("exact"))
    assert (differ == 0) if depthwise else (differ > 0)  # ORT's depthwise kernel is exact
    # ConvInteger is exact on every path (measured): its result is qsim's exact product
    integer = run_single_node("ConvInteger", [vi("x", TensorProto.UINT8, o["x"].shape)],
                      {"w": o["w"], "x_zero_point": o["x_zero_point"]}, {"x": o["x"]},
                      TensorProto.INT32, **attributes)
    assert np.array_equal(integer, conv_integer(o["x"], o["w"], o["x_zero_point"], np.int8(0),
                                                strides=(stride,) * 2, pads=(pad,) * 4,
                                                dilations=(dilation,) * 2, group=group))


@pytest.mark.parametrize("case", MATMULS, ids=lambda c: "m{}k{}n{}".format(*c))
def test_matmul_integer_qlinear_matmul_and_qgemm(case):
    o = matmul_operands(case, seed=sum(case))
    a, b = o["a"], o["b"]
    # MatMulInteger with a constant and with a dynamic B
    for dynamic in (False, True):
        if dynamic:  # node inputs: a, b (graph inputs), then a_zero_point
            got = run_single_node("MatMulInteger", [vi("a", TensorProto.UINT8, a.shape), vi("b", TensorProto.INT8, b.shape)],
                          {"a_zero_point": o["a_zero_point"]}, {"a": a, "b": b}, TensorProto.INT32)
        else:
            got = run_single_node("MatMulInteger", [vi("a", TensorProto.UINT8, a.shape)],
                          {"b": b, "a_zero_point": o["a_zero_point"]}, {"a": a}, TensorProto.INT32)
        assert np.array_equal(got, matmul_integer(a, b, o["a_zero_point"], isa="auto")), dynamic
    assert not np.array_equal(matmul_integer(a, b, 128, isa="avx2"), matmul_integer(a, b, 128, isa="exact"))
    # QLinearMatMul of two activations (b a graph input)
    names = ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point"]
    params = {"a_scale": o["a_scale"], "a_zero_point": o["a_zero_point"], "b_scale": np.float32(0.01),
              "b_zero_point": np.int8(0), "y_scale": o["y_scale"], "y_zero_point": o["y_zero_point"]}
    graph = helper.make_graph([helper.make_node("QLinearMatMul", names, ["y"])], "qmm",
                              [vi("a", TensorProto.UINT8, a.shape), vi("b", TensorProto.INT8, b.shape)],
                              [vi("y", TensorProto.UINT8, None)],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in params.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    got = ort_run(ort_session(model), {"a": a, "b": b})["y"]
    args = (a, o["a_scale"], o["a_zero_point"], b, np.float32(0.01), np.int8(0), o["y_scale"], o["y_zero_point"])
    assert np.array_equal(qlinear_matmul(*args, semantics="onnxruntime"), got)
    # com.microsoft.QGemm, per-column weight scales
    got = run_single_node("QGemm", [vi("a", TensorProto.UINT8, a.shape)],
                  {"a_scale": o["a_scale"], "a_zero_point": o["a_zero_point"], "b": b,
                   "b_scale": o["b_scale"], "b_zero_point": np.zeros(b.shape[1], np.int8),
                   "c": np.zeros(b.shape[1], np.int32), "y_scale": o["y_scale"],
                   "y_zero_point": o["y_zero_point"]},
                  {"a": a}, TensorProto.UINT8, domain="com.microsoft")
    ours = qgemm(a, o["a_scale"], o["a_zero_point"], b, o["b_scale"], np.zeros(b.shape[1], np.int8),
                 np.zeros(b.shape[1], np.int32), o["y_scale"], o["y_zero_point"])
    assert np.array_equal(ours, got)


@pytest.fixture(scope="module")
def fullrange_models():
    model = float_cnn()
    calibration = cnn_inputs(64, seed=1)
    return {fmt: quantize(model, calibration, quant_format=fmt, activation="uint8", weight="int8",
                          per_channel=True, batch=32) for fmt in ("QOperator", "QDQ")}


@pytest.mark.parametrize("fmt", ["QOperator", "QDQ"])
def test_qsim_infer_equals_live_onnxruntime_on_a_full_range_model(fmt, fullrange_models, tmp_path, capsys):
    """quantize_static (per channel, uint8 activations, int8 weights), then `qsim infer` with
    default options against ORT with default graph optimizations: every output equal."""
    model = fullrange_models[fmt]
    x = cnn_inputs(48, seed=2)
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["infer", str(tmp_path / "m.onnx"), "--inputs", str(tmp_path / "x.npz"),
                 "--output", str(tmp_path / "y.npz")]) == 0
    capsys.readouterr()
    with np.load(tmp_path / "y.npz") as result:
        ours = result["y"]
    theirs = ort_run(ort_session(model), {"x": x})["y"]
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    # the model is one where the path matters: the two predictions differ in many outputs (48 %)
    avx2 = infer(model, {"x": x}, isa="avx2")["y"]
    exact = infer(model, {"x": x}, isa="exact")["y"]
    differ = np.count_nonzero(avx2 != exact) / avx2.size
    print(f"\n{fmt}: avx2 and exact predictions differ in {differ:.0%} of {avx2.size} outputs")
    assert differ > 0.25
