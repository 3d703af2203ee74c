from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from qsim.errors import ConfigError
from qsim.quant.analysis import sqnr_db
from qsim.quant.calibrate import MinMaxObserver, fake_quantize
from qsim.quant.mixed import (
    LayerSensitivity, LayerSpec, measure_sensitivity, plan_mixed_precision, select_widths,
    weight_bytes,
)

A = LayerSensitivity("a", {8: 100, 4: 50, 2: 25}, {8: 0.0001, 4: 0.01, 2: 0.3})
B = LayerSensitivity("b", {8: 200, 4: 100, 2: 50}, {8: 0.0001, 4: 0.002, 2: 0.05})
C = LayerSensitivity("c", {8: 40, 4: 20, 2: 10}, {8: 0.0001, 4: 0.05, 2: 0.9})


@pytest.mark.parametrize("budget, widths, cost", [
    (85, (2, 2, 2), 85),      # the smallest possible plan
    (100, (2, 2, 4), 95),     # c gains most per byte: 0.9 -> 0.05 for 10 bytes
    (135, (4, 2, 4), 120),    # 0.01 + 0.05 + 0.05 = 0.11 beats (2, 2, 8) = 0.3501
    (170, (4, 2, 8), 140),    # 0.0601 beats (4, 4, 4) = 0.062, which costs all 170
    (200, (4, 4, 8), 190),
    (250, (8, 4, 8), 240),
    (339, (8, 4, 8), 240),    # one byte short of all-int8
    (340, (8, 8, 8), 340),
    (10_000, (8, 8, 8), 340),
])
def test_hand_checked_plans(budget, widths, cost):
    plan = select_widths([A, B, C], budget)
    assert tuple(plan.widths.values()) == widths and list(plan.widths) == ["a", "b", "c"]
    assert plan.cost == cost and plan.budget == budget and plan.unit == "bytes"
    expected = A.nmse[widths[0]] + B.nmse[widths[1]] + C.nmse[widths[2]]
    assert plan.total_nmse == pytest.approx(expected, rel=1e-15)
    assert plan.layer_sqnr_db == {n: -10 * math.log10(s.nmse[b])
                                  for n, s, b in zip("abc", (A, B, C), widths)}
    assert plan.predicted_sqnr_db == -10 * math.log10(plan.total_nmse / 3)


def test_summary_table():
    plan = select_widths([A, B, C], 170)
    assert plan.summary().splitlines() == [
        "layer         width       cost   SQNR dB",
        "a              int4         50     20.00",
        "b              int2         50     13.01",
        "c              int8         40     40.00",
        "total                      140     16.98",
        "budget 170 bytes",
    ]


def brute_force(layers, budget):
    best = None
    for choice in itertools.product(*[list(layer.cost) for layer in layers]):
        cost = sum(layer.cost[b] for layer, b in zip(layers, choice))
        if cost > budget:
            continue
        total = 0.0
        for layer, b in zip(layers, choice):
            total += layer.nmse[b]
        if best is None or (total, cost) < best[:2]:
            best = (total, cost, choice)
    return best


def test_dynamic_programming_is_optimal_and_within_budget(rng):
    for trial in range(40):
        count = int(rng.integers(1, 6))
        layers = []
        for i in range(count):
            widths = [8, 4, 2] if trial % 4 else [8, 6, 4, 3, 2]
            cost = {b: int(rng.integers(1, 30)) * b for b in widths}
            nmse = {b: float(rng.uniform(0, 1) * 4.0 ** -b) for b in widths}
            layers.append(LayerSensitivity(f"l{i}", cost, nmse))
        low = sum(min(layer.cost.values()) for layer in layers)
        high = sum(max(layer.cost.values()) for layer in layers)
        for budget in np.unique(rng.integers(low, high + 2, size=12)):
            plan = select_widths(layers, int(budget))
            total, _, _ = brute_force(layers, int(budget))
            assert plan.cost <= budget
            assert plan.cost == sum(layer.cost[plan.widths[layer.name]] for layer in layers)
            assert plan.total_nmse == pytest.approx(total, rel=1e-12, abs=0)


def test_equal_plans_prefer_the_cheaper():
    x = LayerSensitivity("x", {8: 10, 4: 5}, {8: 0.0, 4: 0.0})
    plan = select_widths([x], 100)
    assert plan.widths == {"x": 4} and plan.cost == 5 and plan.predicted_sqnr_db == math.inf


def test_infeasible_budget_message(rng):
    layers = [LayerSpec("conv1", rng.standard_normal((16, 16))),   # 256 weights: 64 bytes at int2
              LayerSpec("fc", rng.standard_normal((10, 32)))]      # 320 weights: 80 bytes at int2
    with pytest.raises(ConfigError) as exc:
        plan_mixed_precision(layers, 100)
    assert str(exc.value) == "budget 100 bytes is below the smallest possible 144 bytes (all layers at int2)"
    assert plan_mixed_precision(layers, 144).widths == {"conv1": 2, "fc": 2}


def test_infeasible_budget_with_mixed_cheapest_widths():
    energy = [LayerSensitivity("conv", {8: 30, 4: 12, 2: 20}, {8: 0.0, 4: 0.1, 2: 0.5}),
              LayerSensitivity("fc", {8: 9, 4: 5, 2: 3}, {8: 0.0, 4: 0.1, 2: 0.5})]
    with pytest.raises(ConfigError) as exc:
        select_widths(energy, 10, unit="pJ")
    assert str(exc.value) == ("budget 10 pJ is below the smallest possible 15 pJ "
                              "(conv at int4, fc at int2)")


def test_measure_sensitivity_weights(rng):
    w = rng.standard_normal((6, 10)).astype(np.float32)
    exact = np.round(rng.standard_normal((4, 8)) * 40).astype(np.float32)
    exact[:, 0] = 127  # per-channel absmax 127: scale exactly 1 at int8 symmetric
    table = measure_sensitivity([LayerSpec("w", w), LayerSpec("exact", exact)])
    s, e = table
    assert s.metric == "weights" and list(s.cost) == [8, 4, 2]
    assert s.cost == {8: 60, 4: 30, 2: 15}
    for b in (8, 4, 2):
        params = MinMaxObserver(f"int{b}", symmetric=True, per_channel_axis=0).observe(w).compute()
        assert s.sqnr_db[b] == pytest.approx(sqnr_db(w, fake_quantize(w, params)), rel=1e-12)
    assert s.sqnr_db[8] > s.sqnr_db[4] > s.sqnr_db[2]
    assert e.nmse[8] == 0.0 and e.sqnr_db[8] == math.inf


def test_measure_sensitivity_output_metric(rng):
    w = rng.standard_normal((5, 2, 3, 3)).astype(np.float32)  # conv: 5 out, 18 in-features
    identity = LayerSpec("conv", w, activations=np.eye(18))
    by_weights, by_output = (measure_sensitivity([identity], metric=m)[0] for m in ("weights", "output"))
    assert by_output.metric == "output"
    for b in (8, 4, 2):  # with identity inputs the outputs are the weights
        assert by_output.nmse[b] == pytest.approx(by_weights.nmse[b], rel=1e-12)
    x = rng.standard_normal((32, 18)).astype(np.float32)  # LayerSpec keeps float32 inputs
    auto = measure_sensitivity([LayerSpec("conv", w, activations=x)], (4,))[0]
    params = MinMaxObserver("int4", symmetric=True, per_channel_axis=0).observe(w.reshape(5, -1)).compute()
    wq = fake_quantize(w.reshape(5, -1), params).astype(np.float64)
    x = x.astype(np.float64)
    ref = x @ w.reshape(5, -1).astype(np.float64).T
    assert auto.metric == "output" and auto.cost == {4: 45}
    assert auto.sqnr_db[4] == pytest.approx(sqnr_db(ref, x @ wq.T), rel=1e-12)


def test_mse_observer_improves_int2(rng):
    w = rng.standard_normal((8, 64))
    minmax = measure_sensitivity([LayerSpec("w", w)], (2,))[0]
    mse = measure_sensitivity([LayerSpec("w", w)], (2,), observer="mse")[0]
    assert mse.sqnr_db[2] > minmax.sqnr_db[2] + 1


def test_weight_bytes_and_custom_costs(rng):
    assert [weight_bytes(27, b) for b in (8, 4, 2)] == [27, 14, 7]
    layer = LayerSpec("l", rng.standard_normal((3, 9)), cost={8: 90, 4: 40, 2: 25})
    assert measure_sensitivity([layer])[0].cost == {8: 90, 4: 40, 2: 25}


@pytest.mark.parametrize("call, text", [
    (lambda: select_widths([], 10), "mixed-precision selection needs at least one layer"),
    (lambda: select_widths([A, A], 1000), "layer name 'a' appears more than once"),
    (lambda: select_widths([A], -1), "budget must be a non-negative integer, not -1"),
    (lambda: select_widths([A], 10.5), "budget must be a non-negative integer, not 10.5"),
    (lambda: select_widths([LayerSpec("w", np.ones(4))], 10),
     "select_widths needs LayerSensitivity entries (see measure_sensitivity), not LayerSpec"),
    (lambda: LayerSensitivity("x", {8: 1}, {4: 0.1}),
     "layer 'x': costs are given for widths [8] but sensitivities for [4]"),
    (lambda: LayerSensitivity("x", {8: 1.5}, {8: 0.1}),
     "layer 'x': cost at int8 must be a non-negative integer, not 1.5"),
    (lambda: LayerSensitivity("x", {8: 1}, {8: math.nan}),
     "layer 'x': sensitivity at int8 must be a finite number >= 0, not nan"),
    (lambda: LayerSensitivity("x", {}, {}), "layer 'x' has no candidate widths"),
    (lambda: LayerSpec("", np.ones(3)), "layer name must be a non-empty string, not ''"),
    (lambda: LayerSpec("w", np.ones((2, 3)), activations=np.ones((4, 2))),
     "layer 'w': activations must have shape (samples, 3) for weights of shape (2, 3), not (4, 2)"),
    (lambda: LayerSpec("w", np.ones((2, 3)), channel_axis=2),
     "layer 'w': channel_axis 2 is out of range for weights of shape (2, 3)"),
    (lambda: LayerSpec("w", np.zeros((0, 3))),
     "layer 'w': weights must be a non-empty numeric array, not float64 of shape (0, 3)"),
    (lambda: measure_sensitivity([LayerSpec("w", np.ones((2, 3)))], (8, 1)),
     "widths must be integers between 2 and 16, not 1"),
    (lambda: measure_sensitivity([LayerSpec("w", np.ones((2, 3)))], (8, 8)),
     "widths must be distinct, not (8, 8)"),
    (lambda: measure_sensitivity([LayerSpec("w", np.ones((2, 3)))], metric="output"),
     "layer 'w' has no activations for metric='output'"),
    (lambda: measure_sensitivity([LayerSpec("w", np.ones((2, 3)))], metric="hessian"),
     "metric must be one of auto, weights, output, not 'hessian'"),
    (lambda: measure_sensitivity([LayerSpec("w", np.ones((2, 3)))], observer="kl"),
     "observer must be one of minmax, mse, not 'kl'"),
    (lambda: measure_sensitivity([LayerSpec("w", np.ones((2, 3)), cost={8: 1})]),
     "layer 'w' has no cost for int4; costs are given for [8]"),
])
def test_errors(call, text):
    with pytest.raises(ConfigError) as exc:
        call()
    assert str(exc.value) == text
