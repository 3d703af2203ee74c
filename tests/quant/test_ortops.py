"""qsim.quant.ortops against the installed onnxruntime, bit for bit.

Every op is run as a one-node ONNX model on ORT's CPU execution provider with graph
optimizations disabled (so the node runs as written) and compared element by element with the
numpy model: each test asserts zero mismatches over a stated minimum number of outputs. Inputs
are random with log-uniform scales and zero points across the whole range, plus edge cases
(exact ties, saturation at both ends, zero points at the type's limits, odd spatial sizes,
ceil_mode). Where ORT's arithmetic departs from a simpler formula, a test also shows that the
simpler formula would disagree with ORT on the same data, so the match is not luck.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from qsim.errors import ConfigError  # noqa: E402
from qsim.quant import ortops  # noqa: E402

F32 = np.float32
MS = "com.microsoft"
DOC = Path(__file__).resolve().parents[2] / "docs" / "ort_semantics.md"


# ------------------------------------------------------------------------------- helpers

class OrtNode:
    """A one-node model; ``inputs`` are (name, array or None, constant?) in the node's order."""

    def __init__(self, op: str, inputs: list[tuple[str, np.ndarray | None, bool]], *,
                 out_dtype, attrs: dict | None = None, domain: str = "", opset: int = 21):
        names, graph_inputs, inits = [], [], []
        self.feed_names = []
        for name, value, const in inputs:
            if value is None:
                names.append("")
                continue
            names.append(name)
            value = np.asarray(value)
            if const:
                inits.append(numpy_helper.from_array(value, name))
            else:
                elem = helper.np_dtype_to_tensor_dtype(value.dtype)
                graph_inputs.append(helper.make_tensor_value_info(name, elem, [None] * value.ndim))
                self.feed_names.append(name)
        while names and names[-1] == "":
            names.pop()
        node = helper.make_node(op, names, ["y"], domain=domain, **(attrs or {}))
        out_elem = helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype))
        out = helper.make_tensor_value_info("y", out_elem, None)
        graph = helper.make_graph([node], "g", graph_inputs, [out], initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                        helper.make_opsetid(MS, 1)])
        model.ir_version = 10
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.session.run(None, dict(zip(self.feed_names, arrays)))[0]


def ort_run(op, inputs, *, out_dtype, attrs=None, domain="", opset=21) -> np.ndarray:
    node = OrtNode(op, inputs, out_dtype=out_dtype, attrs=attrs, domain=domain, opset=opset)
    return node(*[np.asarray(v) for _, v, const in inputs if v is not None and not const])


def mismatches(ours: np.ndarray, theirs: np.ndarray) -> int:
    """Elements that differ bit for bit (float32 compared as bit patterns)."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    if ours.dtype == np.float32:
        return int(np.count_nonzero(ours.view(np.int32) != theirs.view(np.int32)))
    return int(np.count_nonzero(ours != theirs))


class Tally:
    """Accumulates outputs and mismatches; ``check`` asserts none differ over >= ``minimum``."""

    def __init__(self) -> None:
        self.outputs = 0
        self.bad = 0
        self.first: list[str] = []

    def add(self, ours: np.ndarray, theirs: np.ndarray, what: str = "") -> None:
        bad = mismatches(ours, theirs)
        self.outputs += theirs.size
        self.bad += bad
        if bad and len(self.first) < 3:
            idx = np.argwhere(ours != theirs)[0]
            self.first.append(f"{what} at {tuple(idx)}: qsim {ours[tuple(idx)]} ort "
                              f"{theirs[tuple(idx)]}")

    def check(self, minimum: int) -> None:
        assert self.bad == 0, f"{self.bad} of {self.outputs} outputs differ: {self.first}"
        assert self.outputs >= minimum, (self.outputs, minimum)


def log_uniform(rng, low, high, size=None) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), size)).astype(F32)


def zero_points(rng, dtype, n):
    """Random zero points, with the type's limits always among them."""
    info = np.iinfo(dtype)
    z = rng.integers(info.min, info.max + 1, n)
    z[:2] = (info.min, info.max)
    return [dtype(v) for v in z]


QTYPES = [np.uint8, np.int8]


# ------------------------------------------------------------------------------- primitives

def test_fma_f32_rounds_once():
    # s = fl64(a*b + c) lands exactly on a float32 midpoint; the error term decides the side.
    a = F32(2.0 ** -24) * F32(1 + 2.0 ** -23)
    c_odd = F32(1 + 2.0 ** -23)
    assert ortops.fma_f32(a, F32(1 - 2.0 ** -23), c_odd) == c_odd  # true value below midpoint
    c_even = F32(1 + 2.0 ** -22)
    assert ortops.fma_f32(a, F32(1 + 2.0 ** -23), c_even) == np.nextafter(c_even, F32(2))
    assert ortops.fma_f32(-a, F32(1 + 2.0 ** -23), -c_even) == -np.nextafter(c_even, F32(2))
    # against exact rational arithmetic
    rng = np.random.default_rng(1)
    x = rng.normal(size=3000).astype(F32) * F32(2) ** rng.integers(-12, 12, 3000).astype(F32)
    y = rng.normal(size=3000).astype(F32)
    z = (-(x.astype(np.float64) * y)).astype(F32)  # heavy cancellation
    z[::2] = rng.normal(size=1500).astype(F32)
    got = ortops.fma_f32(x, y, z)
    for i in range(x.size):
        exact = Fraction(float(x[i])) * Fraction(float(y[i])) + Fraction(float(z[i]))
        near = F32(float(exact))
        best = min((np.nextafter(near, F32(-np.inf)), near, np.nextafter(near, F32(np.inf))),
                   key=lambda v: (abs(Fraction(float(v)) - exact), int(v.view(np.uint32)) & 1))
        assert got[i] == best, (x[i], y[i], z[i])


def test_cvtps_epi32_gives_integer_indefinite():
    v = np.array([2.5, 3.5, -2.5, np.nan, np.inf, -np.inf, 2.0 ** 31, -(2.0 ** 31), 2147483520.0],
                 F32)
    assert ortops.cvtps_epi32(v).tolist() == [2, 4, -2, -2 ** 31, -2 ** 31, -2 ** 31, -2 ** 31,
                                              -2 ** 31, 2147483520]


# ------------------------------------------------------------------------------- QuantizeLinear

@pytest.mark.parametrize("dtype", QTYPES)
def test_quantize_linear_matches_ort(dtype, rng):
    info = np.iinfo(dtype)
    node = OrtNode("QuantizeLinear", [("x", np.zeros(1, F32), False), ("s", F32(1), False),
                                      ("z", dtype(0), False)], out_dtype=dtype)
    tally = Tally()
    reciprocal_disagrees = 0
    scales = log_uniform(rng, 1e-4, 10.0, 60)
    scales[::4] = F32(2.0) ** np.round(np.log2(scales[::4]))  # power-of-two scales: exact ties
    for scale, zp in zip(scales, zero_points(rng, dtype, 60)):
        k = rng.integers(-300, 300, 500)
        ties = ((k + 0.5) * scale).astype(F32)
        x = np.concatenate([
            rng.normal(0, 100 * scale, 500).astype(F32), ties,
            np.nextafter(ties, F32(np.inf)), np.nextafter(ties, F32(-np.inf)),
            np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-45,
                      (info.max - int(zp) + 0.5) * scale, (info.min - int(zp) - 0.5) * scale], F32)])
        theirs = node(x, np.asarray(scale), np.asarray(zp))
        tally.add(ortops.quantize_linear(x, scale, zp), theirs, f"scale {scale} zp {zp}")
        recip = np.clip(np.rint(x[:2000] * (F32(1) / scale)) + int(zp), info.min, info.max)
        reciprocal_disagrees += int(np.count_nonzero(recip != theirs[:2000]))
    tally.check(120_000)
    assert reciprocal_disagrees > 100  # multiplying by 1/scale is not what ORT does


def test_quantize_linear_per_axis_matches_ort(rng):
    tally = Tally()
    for dtype, axis in ((np.uint8, 1), (np.int8, 0), (np.uint8, -1)):
        x = rng.normal(0, 3, (6, 5, 7, 9)).astype(F32)
        n = x.shape[axis]
        s = log_uniform(rng, 1e-3, 1.0, n)
        z = np.array(zero_points(rng, dtype, n), dtype)
        theirs = ort_run("QuantizeLinear", [("x", x, False), ("s", s, True), ("z", z, True)],
                         attrs={"axis": axis}, out_dtype=dtype)
        tally.add(ortops.quantize_linear(x, s, z, axis=axis), theirs, f"axis {axis}")
    tally.check(5_000)


def test_quantize_linear_differs_from_onnx_reference_only_at_nan_and_inf():
    from onnx.reference import ReferenceEvaluator

    x = np.array([np.nan, np.inf, -np.inf, 2.5, 3.5, -0.5, 1e9], F32)
    for dtype, expected in ((np.uint8, [0, 255, 0, 12, 14, 10, 255]),
                            (np.int8, [-128, 127, -128, 12, 14, 10, 127])):
        ours = ortops.quantize_linear(x, 1.0, dtype(10))
        theirs = ort_run("QuantizeLinear", [("x", x, False), ("s", F32(1), True),
                                            ("z", dtype(10), True)], out_dtype=dtype)
        assert ours.tolist() == theirs.tolist() == expected
        node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
            [helper.make_tensor_value_info("y", elem, [None])],
            initializer=[numpy_helper.from_array(F32(1), "s"),
                         numpy_helper.from_array(np.asarray(dtype(10)), "z")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        with np.errstate(invalid="ignore"):
            reference = ReferenceEvaluator(model).run(None, {"x": x})[0]
        assert reference[3:].tolist() == expected[3:]  # finite inputs agree
        assert reference[:2].tolist() != expected[:2]  # the reference maps NaN/+inf to qmin


@pytest.mark.parametrize("dtype", QTYPES)
def test_dequantize_linear_matches_ort(dtype, rng):
    info = np.iinfo(dtype)
    node = OrtNode("DequantizeLinear", [("x", np.zeros(1, dtype), False), ("s", F32(1), False),
                                        ("z", dtype(0), False)], out_dtype=F32)
    tally = Tally()
    q = np.arange(info.min, info.max + 1).astype(dtype).repeat(4)
    for scale, zp in zip(log_uniform(rng, 1e-6, 1e3, 40), zero_points(rng, dtype, 40)):
        tally.add(ortops.dequantize_linear(q, scale, zp), node(q, np.asarray(scale), np.asarray(zp)))
    x = rng.integers(info.min, info.max + 1, (4, 6, 5)).astype(dtype)
    s = log_uniform(rng, 1e-3, 1.0, 6)
    z = np.array(zero_points(rng, dtype, 6), dtype)
    tally.add(ortops.dequantize_linear(x, s, z, axis=1),
              ort_run("DequantizeLinear", [("x", x, False), ("s", s, True), ("z", z, True)],
                      out_dtype=F32))
    tally.check(40_000)


# ------------------------------------------------------------------------------- QGemm

GEMM_CASES = [
    # a dtype, b dtype, per-column, bias shape, alpha, transA, transB, float output
    (np.uint8, np.int8, False, None, 1.0, 0, 0, False),
    (np.uint8, np.int8, True, "N", 1.0, 0, 1, False),
    (np.uint8, np.uint8, True, "MN", 0.7, 1, 0, False),
    (np.int8, np.int8, False, "1N", 1.3, 1, 1, False),
    (np.int8, np.int8, True, "M1", 1.0, 0, 0, False),
    (np.uint8, np.int8, False, "scalar", 2.5, 0, 1, False),
    (np.uint8, np.int8, True, "N", 1.0, 0, 0, True),
    (np.int8, np.int8, False, None, 0.3, 1, 0, True),
    (np.uint8, np.int8, True, None, 1.0, 0, 0, "big-K"),  # |acc| > 2**24: f32(acc) rounds
]


def _gemm_id(case) -> str:
    adt, bdt, per_column, bias, alpha, ta, tb, float_out = case
    out = float_out if isinstance(float_out, str) else ("float" if float_out else "quant")
    return (f"{np.dtype(adt).name}x{np.dtype(bdt).name}-{'col' if per_column else 'tensor'}-"
            f"bias{bias}-alpha{alpha}-t{ta}{tb}-{out}")


@pytest.mark.parametrize("case", GEMM_CASES, ids=_gemm_id)
def test_qgemm_matches_ort(case, rng):
    adt, bdt, per_column, bias, alpha, ta, tb, float_out = case
    ai, bi = np.iinfo(adt), np.iinfo(bdt)
    big = float_out == "big-K"
    float_out = bool(float_out) and not big
    m, k, n = (9, 1500, 23) if big else (37, 45, 83)
    a = rng.integers(ai.min, ai.max + 1, (k, m) if ta else (m, k)).astype(adt)
    b = rng.integers(bi.min, bi.max + 1, (n, k) if tb else (k, n)).astype(bdt)
    if big:  # large same-sign products: accumulators around 4e7
        a = rng.integers(200, 256, a.shape).astype(adt)
        b = rng.integers(100, 128, b.shape).astype(bdt)
    shape = (n,) if per_column else ()
    sa = log_uniform(rng, 1e-3, 1.0)
    sb = log_uniform(rng, 1e-4, 1e-1, shape)
    za = zero_points(rng, adt, 3)[2]
    zb = rng.integers(bi.min, bi.max + 1, shape).astype(bdt)
    c = None if bias is None else rng.integers(-40000, 40000, {
        "N": (n,), "MN": (m, n), "1N": (1, n), "M1": (m, 1), "scalar": ()}[bias]).astype(np.int32)
    sy = None if float_out else log_uniform(rng, 1e-2, 10.0)
    zy = None if float_out else zero_points(rng, adt, 3)[2]
    if big:  # map the accumulator range onto the output codes
        za, zb, zy = adt(0), np.zeros(shape, bdt), adt(0)
        sy = F32(sa * np.max(sb) * 4.3e7 / 255)
    inputs = [("a", a, False), ("sa", sa, True), ("za", za, True), ("b", b, True), ("sb", sb, True),
              ("zb", zb, True), ("c", c, True), ("sy", sy, True), ("zy", zy, True)]
    inputs = [(nm, None if v is None else np.asarray(v), const) for nm, v, const in inputs]
    theirs = ort_run("QGemm", inputs, domain=MS, out_dtype=F32 if float_out else adt,
                     attrs={"alpha": alpha, "transA": ta, "transB": tb})
    ours = ortops.qgemm(a, sa, za, b, sb, zb, c, sy, zy, alpha=alpha, trans_a=bool(ta),
                        trans_b=bool(tb))
    tally = Tally()
    tally.add(ours, theirs)
    tally.check(m * n)


def test_qgemm_accumulator_wraps_like_int32():
    k = 70_000  # 255 * 128 * K exceeds 2**31: MLAS's int32 accumulator wraps
    a = np.full((1, k), 127, np.int8)
    b = np.full((k, 2), -128, np.int8)
    inputs = [("a", a, False), ("sa", F32(1), True), ("za", np.int8(-128), True), ("b", b, True),
              ("sb", F32(1), True), ("zb", np.int8(0), True), ("c", None, True),
              ("sy", F32(1e-6), True), ("zy", np.int8(0), True)]
    theirs = ort_run("QGemm", inputs, domain=MS, out_dtype=np.int8)
    ours = ortops.qgemm(a, 1.0, -128, b, 1.0, 0, None, 1e-6, 0)
    assert ours.tolist() == theirs.tolist() == [[127, 127]]  # wrapped positive, so saturates high


# ------------------------------------------------------------------------------- QLinearAdd / Mul

FUNCTORS = [
    ((2, 3, 5, 7), (2, 3, 5, 7), "general"), ((2, 3, 5, 7), (1, 3, 1, 1), "input1_scalar"),
    ((1, 3, 1, 1), (2, 3, 5, 7), "input0_scalar"), ((2, 3, 5, 7), (), "input1_scalar"),
    ((), (2, 3, 5, 7), "input0_scalar"), ((2, 3, 5, 7), (1,), "input1_scalar"),
    ((5, 1), (1,), "input0_scalar"), ((3, 1), (), "input0_scalar"), ((1, 1), (1, 1), "input0_scalar"),
    ((), (), "input0_scalar"), ((6, 1, 1), (1, 1, 1), "input1_scalar"),
    ((4, 1, 6), (1, 5, 1), "input1_scalar"), ((1, 5, 1), (4, 1, 6), "input0_scalar"),
    ((3, 4), (4,), "general"), ((3, 1), (3, 4), "input0_scalar"), ((2, 1), (2, 1), "general"),
    ((2, 3, 5, 7), (5, 7), "general"), ((2, 1, 64), (2, 8, 64), "general"),
]


@pytest.mark.parametrize("shape0, shape1, functor", FUNCTORS)
def test_broadcast_functor(shape0, shape1, functor):
    assert ortops.broadcast_functor(shape0, shape1) == functor


def _binary_inputs(a, sa, za, b, sb, zb, sc, zc):
    return [("a", a, False), ("sa", np.asarray(sa), True), ("za", np.asarray(za), True),
            ("b", b, False), ("sb", np.asarray(sb), True), ("zb", np.asarray(zb), True),
            ("sc", np.asarray(sc), True), ("zc", np.asarray(zc), True)]


BINARY_SHAPES = [((4, 16, 17, 19), (4, 16, 17, 19)), ((4, 16, 17, 19), (1, 16, 1, 1)),
                 ((1, 16, 1, 1), (4, 16, 17, 19)), ((4, 16, 17, 19), ()), ((), (4, 16, 17, 19)),
                 ((4, 16, 17, 19), (1,)), ((31, 1), (1,)), ((33, 1), (33, 45)),
                 ((7, 1, 45), (1, 33, 1))]


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", QTYPES)
def test_qlinear_binary_matches_ort(op, dtype, rng):
    fn = ortops.qlinear_add if op == "QLinearAdd" else ortops.qlinear_mul
    info = np.iinfo(dtype)
    tally = Tally()
    for i, (s0, s1) in enumerate(BINARY_SHAPES):
        a = rng.integers(info.min, info.max + 1, s0).astype(dtype)
        b = rng.integers(info.min, info.max + 1, s1).astype(dtype)
        sa, sb, sc = log_uniform(rng, 1e-3, 10.0, 3)
        za, zb, zc = zero_points(rng, dtype, 5)[i % 3:i % 3 + 3]
        theirs = ort_run(op, _binary_inputs(a, sa, za, b, sb, zb, sc, zc), domain=MS, out_dtype=dtype)
        tally.add(fn(a, sa, za, b, sb, zb, sc, zc), theirs, f"{s0} {s1}")
    tally.check(60_000)


def _grid(dtype):
    """All 65536 (a, b) pairs: a varies along rows, b along columns."""
    info = np.iinfo(dtype)
    v = np.arange(info.min, info.max + 1).astype(dtype)
    return v[:, None].copy(), v[None, :].copy()


def test_qlinear_add_swaps_operands_for_a_broadcast_input0(monkeypatch):
    # Found by search: with these scales the input0-scalar loop (operands swapped) and the
    # general loop round three (a, b) pairs differently.
    sa, sb, sc = F32(0.5899961590766907), F32(0.06468502432107925), F32(0.4226696491241455)
    za, zb, zc = np.uint8(215), np.uint8(101), np.uint8(211)
    a, b = _grid(np.uint8)  # a (256, 1), b (1, 256): input 0 is scalar in the inner span
    theirs = ort_run("QLinearAdd", _binary_inputs(a, sa, za, b, sb, zb, sc, zc), domain=MS,
                     out_dtype=np.uint8)
    ours = ortops.qlinear_add(a, sa, za, b, sb, zb, sc, zc)  # this CPU's kernel
    assert mismatches(ours, theirs) == 0
    # On the FMA kernel (every AVX2 CPU) the swap decides three codes; the model says so on
    # any CPU, and the test above holds ORT to it wherever that kernel runs.
    fma = ortops.qlinear_add(a, sa, za, b, sb, zb, sc, zc, isa="avx2")
    monkeypatch.setattr(ortops, "broadcast_functor", lambda s0, s1: "general")
    assert mismatches(ortops.qlinear_add(a, sa, za, b, sb, zb, sc, zc, isa="avx2"), fma) == 3


def test_qlinear_add_contracts_fixed_part_into_fma():
    sa, sb, sc = F32(1.7985641956329346), F32(0.20739217102527618), F32(0.027972949668765068)
    za, zb, zc = 221, 14, 66
    a, b = (np.broadcast_to(g, (256, 256)).copy() for g in _grid(np.uint8))
    theirs = ort_run("QLinearAdd", _binary_inputs(a, sa, np.uint8(za), b, sb, np.uint8(zb), sc,
                                                  np.uint8(zc)), domain=MS, out_dtype=np.uint8)
    assert mismatches(ortops.qlinear_add(a, sa, za, b, sb, zb, sc, zc), theirs) == 0
    fma = ortops.qlinear_add(a, sa, za, b, sb, zb, sc, zc, isa="avx2")
    ra, rb = F32(sa / sc), F32(sb / sc)
    plain = F32(F32(zc) - F32(F32(ra * F32(za)) + F32(rb * F32(zb))))  # without contraction
    v = ortops.fma_f32(a.astype(F32), ra, ortops.fma_f32(b.astype(F32), rb, plain))
    assert mismatches(np.clip(ortops.cvtps_epi32(v), 0, 255).astype(np.uint8), fma) == 3
    # the SSE2 kernel of CPUs without AVX2 rounds every step: other codes again
    assert mismatches(ortops.qlinear_add(a, sa, za, b, sb, zb, sc, zc, isa="sse"), fma) > 0


def test_qlinear_add_huge_result_lands_on_lowest_code():
    # v = a * (sa / sc) = a * 1e9: below 2**31 it saturates to 255; from 2**31 on cvtps2dq
    # returns INT32_MIN ("integer indefinite"), which saturates to the lowest code.
    a = np.array([0, 1, 2, 3, 255], np.uint8)
    b = np.zeros(5, np.uint8)
    args = (a, F32(1.0), np.uint8(0), b, F32(1.0), np.uint8(0), F32(1e-9), np.uint8(0))
    theirs = ort_run("QLinearAdd", _binary_inputs(*args), domain=MS, out_dtype=np.uint8)
    assert ortops.qlinear_add(*args).tolist() == theirs.tolist() == [0, 255, 255, 0, 0]


def test_qlinear_mul_adds_zero_point_in_float_without_fma():
    sa, sb, sc = F32(1.4131009578704834), F32(0.005903243087232113), F32(0.2374047189950943)
    za, zb, zc = 52, 72, 207
    a, b = (np.broadcast_to(g, (256, 256)).copy() for g in _grid(np.uint8))
    theirs = ort_run("QLinearMul", _binary_inputs(a, sa, np.uint8(za), b, sb, np.uint8(zb), sc,
                                                  np.uint8(zc)), domain=MS, out_dtype=np.uint8)
    assert mismatches(ortops.qlinear_mul(a, sa, za, b, sb, zb, sc, zc), theirs) == 0
    p = ((a.astype(np.int64) - za) * (b.astype(np.int64) - zb)).astype(F32)
    fused = ortops.fma_f32(p, F32(F32(sa * sb) / sc), F32(zc))
    assert mismatches(np.clip(np.rint(fused), 0, 255).astype(np.uint8), theirs) == 2


# ------------------------------------------------------------------------------- pooling

@pytest.mark.parametrize("dtype", QTYPES)
def test_qlinear_global_average_pool_matches_ort(dtype, rng):
    info = np.iinfo(dtype)
    tally = Tally()
    for i, (shape, channels_last) in enumerate([((3, 2000, 5, 7), False), ((3, 5, 7, 2000), True),
                                                ((2, 2500, 13), False), ((1, 3, 2, 4, 3000), True),
                                                ((4, 1, 9, 11), True), ((2, 1500, 1, 1), False)]):
        x = rng.integers(info.min, info.max + 1, shape).astype(dtype)
        sx = log_uniform(rng, 1e-3, 1.0)
        sy = F32(sx * log_uniform(rng, 0.2, 5.0))
        zx, zy = zero_points(rng, dtype, 4)[i % 3:i % 3 + 2]
        theirs = ort_run("QLinearGlobalAveragePool",
                         [("x", x, False), ("sx", sx, True), ("zx", zx, True), ("sy", sy, True),
                          ("zy", zy, True)], attrs={"channels_last": int(channels_last)},
                         domain=MS, out_dtype=dtype)
        tally.add(ortops.qlinear_global_average_pool(x, sx, zx, sy, zy, channels_last=channels_last),
                  theirs, str(shape))
    tally.check(20_000)


def test_qlinear_global_average_pool_range_check_matches_ort():
    x = np.zeros((1, 2, 4, 4), np.uint8)
    inputs = [("x", x, False), ("sx", F32(1.0), True), ("zx", np.uint8(0), True),
              ("sy", F32(1.0 / 4096), True), ("zy", np.uint8(0), True)]
    with pytest.raises(Exception, match="out of computation range"):
        ort_run("QLinearGlobalAveragePool", inputs, domain=MS, out_dtype=np.uint8)
    with pytest.raises(ConfigError) as err:
        ortops.qlinear_global_average_pool(x, 1.0, 0, 1.0 / 4096, 0)
    assert str(err.value) == (
        "qlinear_global_average_pool: x_scale / (y_scale * image_size) = 256.0 with image_size 16 "
        "is outside ORT's range [2**-32, 256) or image_size >= 2**24 (ORT throws "
        "'QLinearGlobalAveragePool parameter out of computation range!')")


AVG_CASES = [
    # shape (NCHW), kernel, strides, pads, count_include_pad, ceil_mode, auto_pad, channels_last
    ((2, 16, 17, 19), [3, 3], [2, 2], [1, 1, 1, 1], False, False, "NOTSET", False),
    ((2, 16, 17, 19), [3, 3], [2, 2], [1, 1, 1, 1], True, False, "NOTSET", True),
    ((2, 16, 11, 8), [3, 3], [3, 1], [0, 0, 2, 1], False, True, "NOTSET", False),  # last row dropped
    ((2, 16, 10, 8), [2, 4], [3, 2], [1, 1, 1, 1], True, True, "NOTSET", True),
    ((2, 16, 9, 9), [2, 2], [2, 2], [0, 0, 0, 0], False, True, "NOTSET", False),  # odd, ceil
    ((2, 16, 9, 7), [4, 2], [2, 2], [2, 0, 1, 0], False, True, "NOTSET", False),
    ((2, 16, 8, 3), [1, 1], [2, 3], None, False, False, "SAME_LOWER", False),  # negative pads
    ((2, 16, 13, 11), [3, 2], [2, 3], None, True, False, "SAME_UPPER", True),
    ((2, 16, 13, 11), [3, 2], [2, 3], None, False, True, "VALID", False),
    ((3, 40, 31), [4], [3], [1, 2], False, True, "NOTSET", False),
    ((3, 40, 31), [2], [3], [0, 1], True, True, "NOTSET", True),
    ((2, 8, 7, 6, 5), [3, 2, 2], [2, 2, 1], [1, 0, 1, 1, 1, 0], False, True, "NOTSET", False),
    ((2, 8, 7, 6, 5), [2, 2, 3], [1, 2, 2], [0, 1, 1, 1, 0, 2], True, False, "NOTSET", True),
]


@pytest.mark.parametrize("dtype", QTYPES)
def test_qlinear_average_pool_matches_ort(dtype, rng):
    info = np.iinfo(dtype)
    tally = Tally()
    for i, (shape, kernel, strides, pads, cip, ceil, auto_pad, cl) in enumerate(AVG_CASES):
        x = rng.integers(info.min, info.max + 1, (shape[0], 2 * shape[1]) + shape[2:]).astype(dtype)
        if cl:
            x = np.moveaxis(x, 1, -1).copy()
        sx = log_uniform(rng, 1e-3, 1.0)
        sy = sx if i % 3 == 0 else F32(sx * log_uniform(rng, 0.3, 3.0))  # equal scales: many ties
        zx, zy = zero_points(rng, dtype, 4)[i % 3:i % 3 + 2]
        attrs = {"kernel_shape": kernel, "strides": strides, "count_include_pad": int(cip),
                 "ceil_mode": int(ceil), "channels_last": int(cl)}
        if auto_pad == "NOTSET":
            attrs["pads"] = pads
        else:
            attrs["auto_pad"] = auto_pad
        theirs = ort_run("QLinearAveragePool", [("x", x, False), ("sx", sx, True), ("zx", zx, True),
                                                ("sy", sy, True), ("zy", zy, True)],
                         attrs=attrs, domain=MS, out_dtype=dtype)
        ours = ortops.qlinear_average_pool(x, sx, zx, sy, zy, kernel_shape=kernel, strides=strides,
                                           pads=pads, count_include_pad=cip, ceil_mode=ceil,
                                           auto_pad=auto_pad, channels_last=cl)
        tally.add(ours, theirs, f"case {i}")
    tally.check(20_000)


def test_qlinear_average_pool_whole_image_kernel_uses_global_formula(rng):
    # Equal scales and a 2x2 window put many means exactly on .5: the float path (sum, divide,
    # divide, add) and the global path (acc * M) round some of them differently.
    x = rng.integers(-128, 128, (2, 2048, 2, 2)).astype(np.int8)
    s = F32(0.036159977)
    inputs = [("x", x, False), ("sx", s, True), ("zx", np.int8(-45), True), ("sy", s, True),
              ("zy", np.int8(-83), True)]
    theirs = ort_run("QLinearAveragePool", inputs, attrs={"kernel_shape": [2, 2]}, domain=MS,
                     out_dtype=np.int8)
    ours = ortops.qlinear_average_pool(x, s, -45, s, -83, kernel_shape=[2, 2])
    assert mismatches(ours, theirs) == 0
    assert mismatches(ours, ortops.qlinear_global_average_pool(x, s, -45, s, -83)) == 0
    # the same windows through the float path (a zero tail pad defeats the fallback only in
    # shape; reuse the model's float path by padding an extra row that the window never sees)
    padded = np.concatenate([x, np.zeros((2, 2048, 1, 2), np.int8)], axis=2)
    float_path = ortops.qlinear_average_pool(padded, s, -45, s, -83, kernel_shape=[2, 2],
                                             strides=[2, 2])
    assert mismatches(float_path, theirs) > 100


MAX_CASES = [
    # shape, kernel, strides, pads, dilations, ceil_mode, auto_pad
    ((2, 16, 17, 19), [3, 3], [2, 2], [1, 1, 1, 1], None, False, "NOTSET"),
    ((2, 16, 17, 19), [3, 2], [2, 3], [1, 0, 2, 1], [2, 1], True, "NOTSET"),
    ((2, 16, 11, 8), [3, 3], [3, 1], [0, 0, 2, 1], None, True, "NOTSET"),
    ((2, 16, 9, 9), [2, 2], [2, 2], None, None, True, "NOTSET"),
    ((2, 16, 13, 11), [3, 2], [2, 3], None, [2, 2], False, "SAME_UPPER"),
    ((2, 16, 13, 11), [2, 3], [3, 2], None, None, True, "SAME_LOWER"),
    ((2, 16, 13, 11), [3, 3], [1, 2], None, None, False, "VALID"),
    ((3, 40, 31), [4], [3], [1, 2], [2], True, "NOTSET"),
    ((2, 8, 7, 6, 5), [3, 2, 2], [2, 2, 1], [1, 0, 1, 1, 1, 0], [1, 2, 1], True, "NOTSET"),
]


@pytest.mark.parametrize("dtype", QTYPES)
def test_max_pool_matches_ort(dtype, rng):
    info = np.iinfo(dtype)
    tally = Tally()
    for i, (shape, kernel, strides, pads, dilations, ceil, auto_pad) in enumerate(MAX_CASES):
        x = rng.integers(info.min, info.max + 1, (shape[0], 2 * shape[1]) + shape[2:]).astype(dtype)
        attrs = {"kernel_shape": kernel, "strides": strides, "ceil_mode": int(ceil)}
        if dilations:
            attrs["dilations"] = dilations
        if auto_pad == "NOTSET":
            if pads:
                attrs["pads"] = pads
        else:
            attrs["auto_pad"] = auto_pad
        theirs = ort_run("MaxPool", [("x", x, False)], attrs=attrs, out_dtype=dtype, opset=22)
        ours = ortops.max_pool(x, kernel_shape=kernel, strides=strides, pads=pads,
                               dilations=dilations, ceil_mode=ceil, auto_pad=auto_pad)
        tally.add(ours, theirs, f"case {i}")
    tally.check(20_000)


# ------------------------------------------------------------------------------- lookup tables

@pytest.mark.parametrize("dtype", QTYPES)
def test_qlinear_leaky_relu_and_sigmoid_match_ort(dtype, rng):
    info = np.iinfo(dtype)
    x = np.arange(info.min, info.max + 1).astype(dtype).reshape(2, 128)
    leaky, sigmoid = Tally(), Tally()
    for i in range(80):
        sx = log_uniform(rng, 1e-3, 1.0)
        sy = log_uniform(rng, 1e-3, 1.0)
        zx, zy = zero_points(rng, dtype, 4)[i % 3:i % 3 + 2]
        alpha = float(rng.uniform(-1.5, 1.5) if i % 4 == 0 else rng.uniform(0, 0.3))
        const = i % 2 == 0  # constant scales: ORT builds the table once at load time
        inputs = [("x", x, False), ("sx", sx, const), ("zx", zx, const), ("sy", sy, const),
                  ("zy", zy, const)]
        theirs = ort_run("QLinearLeakyRelu", inputs, attrs={"alpha": alpha}, domain=MS,
                         out_dtype=dtype)
        leaky.add(ortops.qlinear_leaky_relu(x, sx, zx, sy, zy, alpha=alpha), theirs)
        sy = log_uniform(rng, 1 / 400, 1 / 60)
        inputs[3] = ("sy", sy, const)
        theirs = ort_run("QLinearSigmoid", inputs, domain=MS, out_dtype=dtype)
        sigmoid.add(ortops.qlinear_sigmoid(x, sx, zx, sy, zy), theirs)
    leaky.check(20_000)
    sigmoid.check(20_000)


def test_mlas_logistic_matches_ort_float_sigmoid():
    x = np.concatenate([np.linspace(-20, 20, 200_001), [-18.0, 18.0, 0.0, -1e-8]]).astype(F32)
    theirs = ort_run("Sigmoid", [("x", x, False)], out_dtype=F32)
    assert mismatches(ortops.mlas_logistic(x), theirs) == 0
    exact = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(F32)
    assert mismatches(exact, theirs) > 10_000  # MLAS's rational approximation is not exact


def test_qlinear_sigmoid_table_uses_mlas_approximation():
    x = np.arange(-128, 128).astype(np.int8)
    sx, zx = F32(0.09273193776607513), np.int8(114)
    sy, zy = F32(1.3130731701949117e-07), np.int8(-128)
    theirs = ort_run("QLinearSigmoid", [("x", x, False), ("sx", sx, True), ("zx", zx, True),
                                        ("sy", sy, True), ("zy", zy, True)],
                     domain=MS, out_dtype=np.int8)
    assert mismatches(ortops.qlinear_sigmoid(x, sx, zx, sy, zy), theirs) == 0
    d = ortops.dequantize_linear(x, sx, zx)
    exact = ortops.quantize_linear((1 / (1 + np.exp(-d.astype(np.float64)))).astype(F32), sy, zy)
    assert mismatches(exact, ortops.qlinear_sigmoid(x, sx, zx, sy, zy, isa="avx2")) == 20
    assert mismatches(exact, ortops.qlinear_sigmoid(x, sx, zx, sy, zy, isa="sse")) > 0


@pytest.mark.parametrize("dtype", QTYPES)
def test_qlinear_concat_matches_ort(dtype, rng):
    info = np.iinfo(dtype)
    tally = Tally()
    for i, axis in enumerate([1, -1, 0, 2, 1, -3] * 5):
        sy = log_uniform(rng, 1e-3, 1.0)
        zy = zero_points(rng, dtype, 3)[i % 3]
        parts, inputs = [], [("ys", sy, True), ("yz", zy, True)]
        for j in range(3):
            shape = [9, 10, 11]
            shape[axis] = int(rng.integers(1, 5))
            xj = rng.integers(info.min, info.max + 1, shape).astype(dtype)
            same = j == 1  # same scale and zero point as the output: ORT copies
            sj = sy if same else log_uniform(rng, 1e-3, 1.0)
            zj = zy if same else zero_points(rng, dtype, 3)[(i + j) % 3]
            parts.append((xj, sj, zj))
            inputs += [(f"x{j}", xj, False), (f"s{j}", sj, i % 2 == 0), (f"z{j}", zj, i % 2 == 0)]
        theirs = ort_run("QLinearConcat", inputs, attrs={"axis": axis}, domain=MS, out_dtype=dtype)
        tally.add(ortops.qlinear_concat(parts, sy, zy, axis=axis), theirs, f"axis {axis}")
    tally.check(20_000)


# ------------------------------------------------------------------------------- a real model

def _float_model() -> onnx.ModelProto:
    """Conv, LeakyRelu, MaxPool, Sigmoid, Mul, Add, AveragePool, Concat, GlobalAveragePool, Gemm."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(F32), name)
             for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 1, 1)), ("g", (10, 16)),
                                 ("gb", (10,)))]
    node = helper.make_node
    nodes = [node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             node("LeakyRelu", ["c1"], ["l1"], alpha=0.1),
             node("MaxPool", ["l1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("Conv", ["p1", "w2"], ["c2"]),
             node("Sigmoid", ["c2"], ["s2"]),
             node("Mul", ["c2", "s2"], ["m2"]),
             node("Add", ["m2", "p1"], ["a2"]),
             node("AveragePool", ["a2"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Concat", ["ap", "a2"], ["cc"], axis=1),
             node("GlobalAveragePool", ["cc"], ["gp"]),
             node("Flatten", ["gp"], ["f"]),
             node("Gemm", ["f", "g", "gb"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 17, 17])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run_node(n, inputs: list, attrs: dict) -> np.ndarray | None:
    """The ortops call for one QOperator node, or None for ops owned elsewhere."""
    pool = {k: attrs.get(k) for k in ("kernel_shape", "strides", "pads")}
    calls = {
        "QuantizeLinear": lambda: ortops.quantize_linear(*inputs),
        "DequantizeLinear": lambda: ortops.dequantize_linear(*inputs),
        "QLinearLeakyRelu": lambda: ortops.qlinear_leaky_relu(*inputs, alpha=attrs.get("alpha", 0.01)),
        "QLinearSigmoid": lambda: ortops.qlinear_sigmoid(*inputs),
        "QLinearMul": lambda: ortops.qlinear_mul(*inputs),
        "QLinearAdd": lambda: ortops.qlinear_add(*inputs),
        "MaxPool": lambda: ortops.max_pool(inputs[0], **pool),
        "QLinearAveragePool": lambda: ortops.qlinear_average_pool(
            *inputs, **pool, count_include_pad=bool(attrs.get("count_include_pad", 0))),
        "QLinearConcat": lambda: ortops.qlinear_concat(
            [tuple(inputs[i:i + 3]) for i in range(2, len(inputs), 3)], inputs[0], inputs[1],
            axis=attrs["axis"]),
        "QLinearGlobalAveragePool": lambda: ortops.qlinear_global_average_pool(
            *inputs, channels_last=bool(attrs.get("channels_last", 0))),
        "QGemm": lambda: ortops.qgemm(*(inputs + [None] * (9 - len(inputs))),
                                      alpha=attrs.get("alpha", 1.0),
                                      trans_a=bool(attrs.get("transA", 0)),
                                      trans_b=bool(attrs.get("transB", 0))),
    }
    return calls[n.op_type]() if n.op_type in calls else None


@pytest.mark.parametrize("activation", ["QUInt8", "QInt8"])
def test_quantize_static_model_matches_ort_node_by_node(activation, tmp_path):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    rng = np.random.default_rng(3)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": rng.normal(size=(1, 3, 17, 17)).astype(F32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    onnx.save(_float_model(), tmp_path / "f.onnx")
    quantize_static(tmp_path / "f.onnx", tmp_path / "q.onnx", Reader(),
                    quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=getattr(QuantType, activation), weight_type=QuantType.QInt8)
    model = onnx.load(tmp_path / "q.onnx")
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    names = [out for n in model.graph.node for out in n.output]
    del model.graph.output[:]
    model.graph.output.extend(helper.make_value_info(nm, onnx.TypeProto()) for nm in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    values["x"] = rng.normal(size=(1, 3, 17, 17)).astype(F32)
    values.update(zip(names, session.run(names, {"x": values["x"]})))
    checked = set()
    for n in model.graph.node:
        inputs = [values[i] if i else None for i in n.input]
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        ours = _run_node(n, inputs, attrs)
        if ours is not None:
            assert mismatches(ours, values[n.output[0]]) == 0, n.op_type
            checked.add(n.op_type)
    assert checked == {"QuantizeLinear", "DequantizeLinear", "QLinearLeakyRelu", "QLinearSigmoid",
                       "QLinearMul", "QLinearAdd", "MaxPool", "QLinearAveragePool", "QLinearConcat",
                       "QLinearGlobalAveragePool", "QGemm"}


# ------------------------------------------------------------------------------- bad input

U8 = np.zeros((2, 3), np.uint8)


@pytest.mark.parametrize("call, message", [
    (lambda: ortops.quantize_linear(np.zeros(3, np.float64), 1.0, np.uint8(0)),
     "quantize_linear: x must be a float32 array, not dtype float64"),
    (lambda: ortops.quantize_linear(np.zeros(3, F32), 0.0, np.uint8(0)),
     "quantize_linear: scale must be a positive finite float32, not 0.0"),
    (lambda: ortops.quantize_linear(np.zeros(3, F32), 1.0, np.int16(300), dtype=np.uint8),
     "quantize_linear: zero_point 300 is outside uint8 [0, 255]"),
    (lambda: ortops.quantize_linear(np.zeros((2, 3), F32), np.ones(2, F32), np.zeros(2, np.uint8)),
     "quantize_linear: per-axis scale has 2 entries but axis 1 of x shape (2, 3) has 3"),
    (lambda: ortops.dequantize_linear(np.zeros(3, np.int32), 1.0, 0),
     "dequantize_linear: x must be a uint8 or int8 array, not dtype int32"),
    (lambda: ortops.dequantize_linear(U8, np.array([1.0, -1.0, 1.0], F32), np.zeros(3, np.uint8)),
     "dequantize_linear: scale[1] must be a positive finite float32, not -1.0"),
    (lambda: ortops.qgemm(U8, 1.0, 0, np.zeros((4, 2), np.int8), 1.0, 0),
     "qgemm: inner dimensions differ: a gives K=3 (shape (2, 3), trans_a=False), "
     "b gives K=4 (shape (4, 2), trans_b=False)"),
    (lambda: ortops.qgemm(np.zeros((2, 3), np.int8), 1.0, 0, np.zeros((3, 2), np.uint8), 1.0, 0),
     "qgemm: with int8 a, b must be int8, not uint8"),
    (lambda: ortops.qgemm(U8, 1.0, 0, np.zeros((3, 2), np.int8), np.ones(3, F32), np.zeros(3, np.int8)),
     "qgemm: b_scale must be a scalar or 1-D of length 1 or N=2, not shape (3,)"),
    (lambda: ortops.qgemm(U8, 1.0, 0, np.zeros((3, 2), np.int8), 1.0, 0, np.zeros((3, 2), np.int32)),
     "qgemm: c shape (3, 2) does not broadcast as (), (N,), (1, N), (M, 1) or (M, N) with M=2, N=2"),
    (lambda: ortops.qgemm(U8, 1.0, 0, np.zeros((3, 2), np.int8), 1.0, 0, None, 1.0, 256),
     "qgemm: y_zero_point 256 is outside uint8 [0, 255]"),
    (lambda: ortops.qlinear_add(U8, 1.0, 0, np.zeros((2, 3), np.int8), 1.0, 0, 1.0, 0),
     "qlinear_add: a and b must have the same dtype, not uint8 and int8"),
    (lambda: ortops.qlinear_mul(U8, 1.0, 0, np.zeros((4,), np.uint8), 1.0, 0, 1.0, 0),
     "qlinear_mul: shapes (2, 3) and (4,) do not broadcast"),
    (lambda: ortops.qlinear_add(U8, 1.0, -1, U8, 1.0, 0, 1.0, 0),
     "qlinear_add: a_zero_point -1 is outside uint8 [0, 255]"),
    (lambda: ortops.qlinear_mul(U8, 1.0, 0, U8, float("nan"), 0, 1.0, 0),
     "qlinear_mul: b_scale must be a positive finite float32, not nan"),
    (lambda: ortops.qlinear_global_average_pool(U8, 1.0, 0, 1.0, 0),
     "qlinear_global_average_pool: x must have at least 3 dimensions, not shape (2, 3)"),
    (lambda: ortops.qlinear_average_pool(np.zeros((1, 1, 4, 4), np.uint8), 1.0, 0, 1.0, 0,
                                         kernel_shape=[2, 2], pads=[2, 0, 0, 0]),
     "qlinear_average_pool: pads must be non-negative and smaller than the kernel (ORT: 'Pad "
     "should be smaller than kernel'), not pads [2, 0, 0, 0] for kernel_shape [2, 2]"),
    (lambda: ortops.max_pool(np.zeros((1, 1, 4, 4), np.int8), kernel_shape=[2]),
     "max_pool: x of shape (1, 1, 4, 4) needs a kernel_shape with one entry per spatial dim "
     "(1 to 3), not [2]"),
    (lambda: ortops.max_pool(np.zeros((1, 1, 4, 4), np.int8), kernel_shape=[2, 2], auto_pad="SAME"),
     "max_pool: auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER, not 'SAME'"),
    (lambda: ortops.max_pool(np.zeros((1, 1, 2, 4), np.int8), kernel_shape=[5, 2]),
     "max_pool: spatial dim 0 of size 2 gives output size -2 with kernel 5, stride 1, "
     "dilation 1, pads (0, 0); it must not be negative"),
    (lambda: ortops.qlinear_concat([(U8, 1.0, 0), (np.zeros((2, 3), np.int8), 1.0, 0)], 1.0, 0, axis=0),
     "qlinear_concat: inputs[1] has dtype int8 but inputs[0] has uint8"),
    (lambda: ortops.qlinear_concat([(U8, 1.0, 0), (np.zeros((3, 3), np.uint8), 0.5, 0)], 1.0, 0,
                                   axis=1),
     "qlinear_concat: inputs[1] shape (3, 3) differs from inputs[0] shape (2, 3) outside axis 1"),
    (lambda: ortops.qlinear_leaky_relu(U8, 1.0, 0, 1.0, 256),
     "qlinear_leaky_relu: y_zero_point 256 is outside uint8 [0, 255]"),
    (lambda: ortops.qlinear_sigmoid(np.zeros(3, F32), 1.0, 0, 1.0, 0),
     "qlinear_sigmoid: x must be a uint8 or int8 array, not dtype float32"),
])
def test_bad_input_is_rejected_with_a_precise_message(call, message):
    with pytest.raises(ConfigError) as err:
        call()
    assert str(err.value) == message


# ------------------------------------------------------------------------------- the doc
