from __future__ import annotations

import io
import math

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import StepPatch

from qsim.errors import ConfigError
from qsim.quant.analysis import (
    error_stats, plot_layer_sqnr, plot_value_histogram, quantization_grid, sqnr_db,
)
from qsim.quant.calibrate import MinMaxObserver, compute_params, fake_quantize
from qsim.quant.mixed import LayerSensitivity, select_widths
from qsim.quant.nonuniform import Pow2Params, fake_quantize_pow2


def test_sqnr_exact():
    assert sqnr_db([3.0, 4.0], [3.0, 3.0]) == 10 * math.log10(25.0)
    assert sqnr_db([1.0, -1.0], [1.0, -1.0]) == math.inf
    assert sqnr_db([0.0, 0.0], [0.0, 0.5]) == -math.inf
    assert sqnr_db(np.float32([1, 2]), np.int8([1, 2])) == math.inf


def test_error_stats_exact():
    stats = error_stats([1.0, -2.0, 3.0, 0.0], [1.0, -1.5, 2.0, 0.25])
    assert stats == {
        "max_abs": 1.0,
        "mean_abs": 0.4375,
        "rmse": math.sqrt(1.3125 / 4),
        "sqnr_db": 10 * math.log10(14.0 / 1.3125),
    }
    assert all(type(v) is float for v in stats.values())


@pytest.mark.parametrize("call, text", [
    (lambda: sqnr_db([1.0, 2.0], [1.0]), "reference shape (2,) and quantized shape (1,) differ"),
    (lambda: sqnr_db([], []), "error measures need at least one value, but the arrays are empty"),
    (lambda: error_stats([1.0, np.nan], [1.0, 1.0]), "reference has 1 non-finite value(s)"),
    (lambda: error_stats([1.0], ["a"]), "quantized must be a numeric array, not dtype <U1"),
    (lambda: plot_value_histogram([1.0], [1.0], bins=0), "bins must be a positive int, not 0"),
    (lambda: plot_layer_sqnr({}), "plot_layer_sqnr needs a non-empty mapping of layer names to SQNR values"),
    (lambda: plot_layer_sqnr({"a": "x"}), "SQNR values must be numbers or mappings of bit width to number"),
    (lambda: quantization_grid(compute_params([0.0, 0.0], [1.0, 2.0], axis=0)),
     "per-axis parameters need channel= to draw their grid"),
])
def test_errors(call, text):
    with pytest.raises(ConfigError) as exc:
        call()
    assert str(exc.value) == text


def test_quantization_grid():
    p = compute_params(-1.0, 1.0, "int2", symmetric=True)  # ternary, scale 1
    assert quantization_grid(p).tolist() == [-2.0, -1.0, 0.0, 1.0]  # int2 storage keeps -2
    per_axis = compute_params([0.0, 0.0], [3.0, 15.0], "uint4", axis=0)
    assert quantization_grid(per_axis, channel=1).tolist() == list(range(16))
    assert quantization_grid(Pow2Params(3, 0)).tolist() == [-1, -0.5, -0.25, 0, 0.25, 0.5, 1]
    assert quantization_grid([2.0, 1.0, 2.0]).tolist() == [1.0, 2.0]


def test_value_histogram_artists(rng):
    x = rng.standard_normal(2000).astype(np.float32)
    params = MinMaxObserver("int4", symmetric=True).observe(x).compute()
    xq = fake_quantize(x, params)
    fig = plot_value_histogram(x, xq, params, bins=40)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    steps = [p for p in ax.patches if isinstance(p, StepPatch)]
    assert [s.get_label() for s in steps] == ["float", "dequantized"]
    span = np.array([min(x.min(), xq.min()), max(x.max(), xq.max())], dtype=np.float64)
    edges = np.histogram_bin_edges(span, bins=40)  # the plot bins in float64
    for step, data in zip(steps, (x, xq)):
        counts, step_edges, _ = step.get_data()
        assert np.array_equal(step_edges, edges)
        assert np.array_equal(counts, np.histogram(data.astype(np.float64), bins=edges)[0])
    (grid,) = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_label() == "grid"]
    xs = sorted(seg[0][0] for seg in grid.get_segments())
    assert np.array_equal(xs, quantization_grid(params).astype(np.float64))  # all 16 levels are in range
    assert ax.get_title() == f"SQNR {sqnr_db(x, xq):.2f} dB"
    fig.savefig(io.BytesIO(), format="png")  # renders with the Agg canvas, no pyplot


def test_value_histogram_pow2_grid_and_no_grid(rng):
    w = rng.standard_normal(500) * 0.1
    wq = fake_quantize_pow2(w, 4, max_exponent=-2)
    fig = plot_value_histogram(w, wq, Pow2Params(4, -2), title="pow2")
    (ax,) = fig.axes
    (grid,) = [c for c in ax.collections if c.get_label() == "grid"]
    low, high = min(w.min(), wq.min()), max(w.max(), wq.max())
    pad = (high - low) / 100
    expected = [v for v in quantization_grid(Pow2Params(4, -2)) if low - pad <= v <= high + pad]
    assert sorted(seg[0][0] for seg in grid.get_segments()) == pytest.approx(expected, abs=0)
    assert ax.get_title() == "pow2"
    assert not plot_value_histogram(w, wq).axes[0].collections


def bar_heights(ax):
    return [[rect.get_height() for rect in container] for container in ax.containers]


def test_layer_sqnr_bars():
    values = {"conv1": 31.5, "conv2": 18.25, "fc": 40.0}
    fig = plot_layer_sqnr(values)
    (ax,) = fig.axes
    assert bar_heights(ax) == [[31.5, 18.25, 40.0]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "conv2", "fc"]
    assert ax.get_ylabel() == "SQNR (dB)"


def test_layer_sqnr_bars_grouped_by_width():
    table = [LayerSensitivity("a", {8: 1, 4: 1, 2: 1}, {8: 1e-4, 4: 1e-2, 2: 0.5}),
             LayerSensitivity("b", {8: 1, 4: 1, 2: 1}, {8: 0.0, 4: 1e-3, 2: 0.1})]
    fig = plot_layer_sqnr(table)
    (ax,) = fig.axes
    assert [c.get_label() for c in ax.containers] == ["int8", "int4", "int2"]
    heights = bar_heights(ax)
    assert heights[1] == [pytest.approx(20.0), pytest.approx(30.0)]
    assert heights[2] == [pytest.approx(-10 * math.log10(0.5)), pytest.approx(10.0)]
    # lossless b@int8 is drawn 10 dB above the largest finite SQNR (40 dB) and labelled inf
    assert heights[0] == [pytest.approx(40.0), pytest.approx(50.0)]
    labels = [t.get_text() for t in ax.texts]
    assert "inf" in labels and "40.0" in labels


def test_layer_sqnr_bars_from_plan():
    a = LayerSensitivity("a", {8: 100, 4: 50, 2: 25}, {8: 0.0001, 4: 0.01, 2: 0.3})
    b = LayerSensitivity("b", {8: 200, 4: 100, 2: 50}, {8: 0.0001, 4: 0.002, 2: 0.05})
    plan = select_widths([a, b], 150)
    fig = plot_layer_sqnr(plan)
    (ax,) = fig.axes
    assert bar_heights(ax) == [[plan.layer_sqnr_db["a"], plan.layer_sqnr_db["b"]]]
    texts = [t.get_text() for t in ax.texts]
    assert texts == [f"int{plan.widths['a']}\n{plan.layer_sqnr_db['a']:.1f}",
                     f"int{plan.widths['b']}\n{plan.layer_sqnr_db['b']:.1f}"]
