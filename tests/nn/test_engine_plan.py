"""The engine's compiled plans (qsim.nn.engine._compile) against its layer-by-layer route.

A graph run twice at one batch size takes its compiled plan from the second run on (the
first compiles it and already runs it); ``engine._PLANS = False`` forces the layer-by-layer
route. Both must give the same bits: every output is compared as raw bytes (a -0.0 where the
other route has 0.0 counts), on the ORT-quantized digits networks under every instruction
path and on synthetic graphs that reach each plan step and each fallback.
"""

from __future__ import annotations

import numpy as np
import pytest

from qsim.nn import engine
from qsim.nn import layers as L
from qsim.nn.bench_infer import CALIBRATION, digits, digits_cnn, digits_mlp, quantize, report_lines
from qsim.nn.engine import run
from qsim.nn.graph import Graph, TensorType
from qsim.quant.params import QuantParams

S8 = lambda s, z: QuantParams(np.float32(s), z, "int8")  # noqa: E731
U8 = lambda s, z: QuantParams(np.float32(s), z, "uint8")  # noqa: E731


def _layer_by_layer(monkeypatch, graph, feeds, **kwargs):
    with monkeypatch.context() as m:
        m.setattr(engine, "_PLANS", False)
        return run(graph, feeds, **kwargs)


def _assert_same_bits(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        got = ours[name]
        assert got.dtype == value.dtype and got.shape == value.shape, name
        a, b = np.ascontiguousarray(got), np.ascontiguousarray(value)
        assert a.tobytes() == b.tobytes(), f"{name}: {np.count_nonzero(a != b)} values differ"


def _plan(graph, semantics="onnxruntime", isa=None, batch=None):
    from qsim.quant.isa import detect_isa
    from qsim.quant.requant import Semantics

    plans = graph.__dict__["_engine_plans"][1]
    return plans[(Semantics.parse(semantics), isa or detect_isa(), batch)]


def _compare(monkeypatch, graph, feeds, *, fast=None, semantics="onnxruntime", isa="auto"):
    """Plan (first and second run) against the layer-by-layer route; ``fast`` the layers
    that must run a plan step."""
    reference = _layer_by_layer(monkeypatch, graph, feeds, semantics=semantics, isa=isa).outputs
    first = run(graph, feeds, semantics, isa=isa).outputs
    second = run(graph, feeds, semantics, isa=isa)
    _assert_same_bits(first, reference)
    _assert_same_bits(second.outputs, reference)
    assert set(second.layer_seconds) == {layer.name for layer in graph.layers}
    if fast is not None:
        batch = next(iter(feeds.values())).shape[0]
        plan = _plan(graph, semantics, None if isa == "auto" else isa, batch)
        assert plan is not None and plan.fast == list(fast)
    return second.outputs


@pytest.fixture(scope="module")
def digits_models():
    images, _ = digits()
    models = {}
    for name, build, shape in (("cnn", digits_cnn, (-1, 1, 8, 8)), ("mlp", digits_mlp, (-1, 64))):
        for activation in ("int8", "uint8"):
            for per_channel in (True, False):
                models[name, activation, per_channel] = (
                    quantize(build(), images[CALIBRATION].reshape(shape), activation=activation,
                             per_channel=per_channel), shape)
    return models, images


@pytest.mark.parametrize("isa", ["avx2", "sse", "avx512-vnni", "exact"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("activation", ["int8", "uint8"])
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_digits_networks_plan_equals_layer_by_layer(monkeypatch, digits_models, name, activation,
                                                    per_channel, isa):
    from qsim.nn.onnx_import import load_onnx

    models, images = digits_models
    model, shape = models[name, activation, per_channel]
    graph = load_onnx(model)
    for batch in (1, 5, 64):
        x = images[np.arange(batch) * 7 % len(images)].reshape(shape)
        _compare(monkeypatch, graph, {"x": x}, isa=isa)
    plan = _plan(graph, isa=isa, batch=64)
    saturating = activation == "uint8" and isa == "avx2"  # vpmaddubsw: the runner's correction
    gemms = [layer.name for layer in graph.layers if isinstance(layer, (L.Conv2d, L.Linear))]
    assert all((g in plan.fast) != saturating for g in gemms)


def test_digits_networks_plan_matches_onnxruntime(digits_models):
    from qsim.nn.bench_infer import ort_session
    from qsim.nn.onnx_import import load_onnx

    models, images = digits_models
    for (name, activation, per_channel), (model, shape) in models.items():
        graph, session = load_onnx(model), ort_session(model, threads=1)
        x = images[:33].reshape(shape).copy()
        x.reshape(33, -1)[0, :3] = [np.nan, np.inf, -np.inf]  # ORT quantizes NaN to qmin, infinities saturate
        for _ in range(2):
            ours = run(graph, {"x": x}).outputs["y"]
            _assert_same_bits({"y": ours}, {"y": session.run(None, {"x": x})[0]})


def _random_layer_params(rng, out_channels, depth, *, zp_w=0, w_dtype="int8"):
    lo, hi = (-128, 128) if w_dtype == "int8" else (0, 256)
    weight = rng.integers(lo, hi, (out_channels, depth)).astype(w_dtype)
    scales = rng.uniform(0.002, 0.02, out_channels).astype(np.float32)
    return weight, QuantParams(scales, np.full(out_channels, zp_w), w_dtype, axis=0)


def _conv(rng, name, src, dst, cin, cout, xp, yp, *, kernel=3, w_dtype="int8", zp_w=0,
          bias_range=3000, **kwargs):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    cg = cin // kwargs.get("groups", 1)
    weight, wp = _random_layer_params(rng, cout, cg * kh * kw, zp_w=zp_w, w_dtype=w_dtype)
    bias = rng.integers(-bias_range, bias_range + 1, cout).astype(np.int32)
    return L.Conv2d(name, (src,), (dst,), in_channels=cin, out_channels=cout, kernel=(kh, kw),
                    weight=weight.reshape(cout, cg, kh, kw), bias=bias, input_params=xp,
                    weight_params=wp, output_params=yp, **kwargs)


def _linear(rng, name, src, dst, fin, fout, xp, yp, *, bias_range=3000, **kwargs):
    weight, wp = _random_layer_params(rng, fout, fin)
    wp = QuantParams(wp.scale, wp.zero_point, "int8", axis=1)
    bias = rng.integers(-bias_range, bias_range + 1, fout).astype(np.int32)
    return L.Linear(name, (src,), (dst,), in_features=fin, out_features=fout, weight=weight.T.copy(),
                    bias=bias, input_params=xp, weight_params=wp, output_params=yp, **kwargs)


def test_convolution_geometries_and_pools(monkeypatch, rng):
    """Asymmetric padding, strides, dilation, a pointwise convolution on the channels-first
    layout, a tiled and an overlapping padded ceil-mode pool, Relu and Clip steps, Reshape,
    and every intermediate tensor as an output (each materialized from its centered form)."""
    qx, q1, q2, q3, q4 = U8(0.02, 3), S8(0.05, -7), S8(0.04, 5), U8(0.03, 20), S8(0.1, 0)
    layers = [
        L.Quantize("q", ("x",), ("xq",), params=qx),
        _conv(rng, "c1", "xq", "a", 2, 6, qx, q1, pads=(1, 0, 2, 1), strides=(1, 2)),
        L.MaxPool("p1", ("a",), ("ap",), kernel=2, strides=2),
        _conv(rng, "c2", "ap", "b", 6, 5, q1, q2, kernel=1, activation="relu"),
        _conv(rng, "c3", "b", "c", 5, 4, q2, q3, kernel=(2, 3), dilations=(2, 1), pads=1,
              activation=("clip", 0.0, 2.0)),
        L.MaxPool("p2", ("c",), ("cp",), kernel=3, strides=2, pads=(1, 1, 1, 1), ceil_mode=True),
        L.Relu("r", ("cp",), ("cr",), output_params=q3),
        L.Clip("k", ("cr",), ("ck",), lo=0.1, hi=1.5, output_params=q3),
        L.Flatten("f", ("ck",), ("flat",)),
        _linear(rng, "fc", "flat", "y", 4 * 4 * 2, 7, q3, q4),
        L.Reshape("rs", ("y",), ("y3",), shape=(0, 7, 1)),
        L.Dequantize("dq", ("y",), ("out",), params=q4),
    ]
    graph = Graph("geometry", {"x": TensorType((None, 2, 11, 13))}, layers,
                  ["out", "y3", "xq", "a", "ap", "b", "c", "cp", "cr", "ck", "flat"])
    for batch in (1, 3):
        x = rng.normal(0.0, 2.0, (batch, 2, 11, 13)).astype(np.float32)
        outs = _compare(monkeypatch, graph, {"x": x}, isa="avx512-vnni",  # u8 x s8 unsaturated
                        fast=[layer.name for layer in layers])
    assert outs["cp"].shape == (3, 4, 4, 2)
    assert all(np.unique(outs[k]).size > 4 for k in ("y3", "ap", "b", "c", "ck"))


def test_pool_right_after_quantize_and_a_float64_product(monkeypatch, rng):
    """A tiled pool on the quantized input itself (its logical layout), and a linear layer
    whose worst-case accumulator (K = 300, uint8 weights with a zero point) needs float64."""
    qx, qy = U8(0.05, 0), S8(0.5, 3)
    weight = rng.integers(0, 256, (300, 6)).astype(np.uint8)
    wp = QuantParams(np.float32(0.001), 17, "uint8")
    layers = [
        L.Quantize("q", ("x",), ("xq",), params=qx),
        L.MaxPool("p", ("xq",), ("xp",), kernel=(1, 2), strides=(1, 2)),
        L.Flatten("f", ("xp",), ("flat",)),
        L.Linear("fc", ("flat",), ("y",), in_features=300, out_features=6, weight=weight,
                 bias=rng.integers(-10**6, 10**6, 6).astype(np.int32), input_params=qx,
                 weight_params=wp, output_params=qy),
        L.Dequantize("dq", ("y",), ("out",), params=S8(0.5, -4)),  # another zero point
    ]
    graph = Graph("wide", {"x": TensorType((None, 3, 10, 20))}, layers, ["out", "xp"])
    x = rng.uniform(-1.0, 13.0, (4, 3, 10, 20)).astype(np.float32)
    _compare(monkeypatch, graph, {"x": x}, fast=["q", "p", "f", "fc", "dq"])
    prep = engine._prepared_gemm(layers[3], engine._Context(engine.Semantics.ONNXRUNTIME,
                                                            engine.ExactBackend()))
    bound = 300 * engine._span(np.dtype(np.uint8), 0) * engine._span(np.dtype(np.uint8), 17)
    assert engine._exact_dtype(bound) == np.float64 and prep.bias is not None


def test_layers_the_plan_leaves_to_their_runners(monkeypatch, rng):
    """A bias beyond float32's exact range, a grouped convolution, an Add and the litert
    Quantize run their ordinary runners inside the plan; the results are the same."""
    qx, q1, q2 = S8(0.02, 0), S8(0.05, 2), S8(0.07, -1)
    big_bias = _conv(rng, "c1", "xq", "a", 2, 4, qx, q1, bias_range=1 << 25)
    grouped = _conv(rng, "c2", "a", "b", 4, 4, q1, q2, groups=2, pads=1)
    plain = _conv(rng, "c3", "b", "c", 4, 4, q2, q2, kernel=1)
    layers = [L.Quantize("q", ("x",), ("xq",), params=qx), big_bias, grouped, plain,
              L.Add("add", ("b", "c"), ("s",), input_params=(q2, q2), output_params=q1),
              L.Dequantize("dq", ("s",), ("out",), params=q1)]
    graph = Graph("mixed", {"x": TensorType((None, 2, 6, 6))}, layers, ["out", "c"])
    x = rng.normal(0.0, 1.0, (2, 2, 6, 6)).astype(np.float32)
    _compare(monkeypatch, graph, {"x": x}, fast=["q", "c3", "dq"])
    for semantics in ("litert", "onnx", "litert-reference"):
        _compare(monkeypatch, graph, {"x": x}, semantics=semantics)


def test_quantize_edges(monkeypatch):
    """NaN, infinities, huge values, exact ties and -0.0 through the small and the large
    quantize step (the large one saves the floating-point state instead of clamping first)."""
    qp = S8(0.1, -3)
    graph = Graph("qdq", {"x": TensorType((None, 8))}, [
        L.Quantize("q", ("x",), ("xq",), params=qp),
        L.Dequantize("dq", ("xq",), ("out",), params=qp)], ["out", "xq"])
    edge = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 0.25, -0.25, -0.0], np.float32)
    ties = (np.arange(-20, 20, dtype=np.float32) + 0.5) * np.float32(0.1)
    for rows in (1, 600):  # 8 and 4,800 elements: both quantize steps
        x = np.resize(np.concatenate([edge, ties]), (rows, 8)).astype(np.float32)
        outs = _compare(monkeypatch, graph, {"x": x}, fast=["q", "dq"])
        assert outs["xq"][0, 0] == -128 and outs["xq"][0, 1] == 127
        assert not np.signbit(outs["out"][outs["out"] == 0]).any()


def test_feeds_are_checked_and_not_modified(monkeypatch, rng):
    qp = S8(0.1, 0)
    graph = Graph("qdq", {"x": TensorType((None, 4))}, [
        L.Quantize("q", ("x",), ("xq",), params=qp),
        L.Flatten("f", ("x",), ("xf",)),
        L.Dequantize("dq", ("xq",), ("out",), params=qp)], ["out", "xf"])
    x = rng.normal(size=(3, 4)).astype(np.float32)
    keep = x.copy()
    for _ in range(3):
        r = run(graph, {"x": x})
        assert not np.shares_memory(r.outputs["xf"], x)  # the feed is copied, as check_feeds does
    np.testing.assert_array_equal(x, keep)
    _compare(monkeypatch, graph, {"x": x.astype(np.float64)})  # converted like check_feeds
    with pytest.raises(Exception, match="has shape"):
        run(graph, {"x": x[:, :3]})
    with pytest.raises(Exception, match="missing input"):
        run(graph, {})
    with pytest.raises(Exception, match="unknown input"):
        run(graph, {"x": x, "z": x})


def test_a_changed_graph_gets_a_new_plan(monkeypatch, rng):
    qp = S8(0.1, 0)
    graph = Graph("qdq", {"x": TensorType((None, 4))}, [
        L.Quantize("q", ("x",), ("xq",), params=qp),
        L.Dequantize("dq", ("xq",), ("out",), params=qp)], ["out"])
    x = rng.normal(size=(2, 4)).astype(np.float32)
    before = run(graph, {"x": x}).outputs["out"]
    graph.layers[1] = L.Dequantize("dq", ("xq",), ("out",), params=S8(0.2, 1))
    after = _compare(monkeypatch, graph, {"x": x}, fast=["q", "dq"])["out"]
    q = np.clip(np.rint(x / np.float32(0.1)), -128, 127)
    np.testing.assert_array_equal(before, q * np.float32(0.1))
    np.testing.assert_array_equal(after, (q - 1) * np.float32(0.2))  # the new layer's parameters


def test_bench_report_gives_no_verdict_after_a_failure():
    report = {"machine": {"cpu": "CPU", "cpus": 2, "isa": "avx2", "vnni": False},
              "threads": {"onnxruntime": {"intra_op": 1, "inter_op": 1}, "qsim": "numpy BLAS 1"},
              "target_ratio": 2.0, "meets_target": None,
              "runs": [{"model": "cnn", "batch": 1, "error": "RuntimeError: boom"},
                       {"model": "mlp", "batch": 1, "repeats": 3, "ort_s": 1e-5, "qsim_s": 1e-5,
                        "ratio": 1.0, "mismatches": 0}]}
    text = "\n".join(report_lines(report))
    assert "cnn, batch 1" in text and "FAILED: RuntimeError: boom" in text
    assert "no verdict" in text and " met" not in text and "NOT met" not in text
    assert "VNNI: no" in text and "intra_op 1, inter_op 1" in text


def test_bench_measures_both_engines_side_by_side():
    from qsim.nn.bench_infer import bench_ort

    report = bench_ort(batches=(1, 3), repeats=3)
    assert [(r["model"], r["batch"]) for r in report["runs"]] == [
        ("cnn", 1), ("cnn", 3), ("mlp", 1), ("mlp", 3)]
    assert all(r["mismatches"] == 0 and r["ort_s"] > 0 and r["qsim_s"] > 0 for r in report["runs"])
    assert report["meets_target"] in (True, False)
    assert report["threads"]["onnxruntime"] == {"intra_op": 1, "inter_op": 1}
