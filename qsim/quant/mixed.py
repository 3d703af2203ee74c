"""Mixed precision: choose a weight bit width per layer under a model-size or energy budget.

This module owns the sensitivity measurement (how much each layer's weights, or its outputs on
calibration inputs, degrade at each width) and the exact selection of one width per layer that
minimises the total sensitivity subject to an integer budget.

Formulation. Layer ``l`` at width ``b`` has an integer cost ``c[l][b]`` (bytes by default)
and a sensitivity ``e[l][b]``: the noise-to-signal energy ratio
``||ref - quantized||**2 / ||ref||**2`` of its weights, or of its outputs ``X @ W.T`` on
calibration inputs. The plan minimises ``sum_l e[l][b_l]`` subject to
``sum_l c[l][b_l] <= budget``: a multiple-choice knapsack, solved exactly by dynamic
programming over Pareto frontiers (:func:`select_widths`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from qsim.errors import ConfigError
from qsim.numerics import IntFormat
from qsim.quant.calibrate import MSEObserver, MinMaxObserver, fake_quantize

__all__ = [
    "LayerSpec",
    "LayerSensitivity",
    "MixedPrecisionPlan",
    "DEFAULT_WIDTHS",
    "weight_bytes",
    "measure_sensitivity",
    "select_widths",
    "plan_mixed_precision",
]

#: The widths the accelerator's datapath supports, widest first.
DEFAULT_WIDTHS = (8, 4, 2)
_METRICS = ("auto", "weights", "output")
_OBSERVERS = {"minmax": MinMaxObserver, "mse": MSEObserver}


def weight_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` packed ``bits``-bit weights: ``ceil(count * bits / 8)``."""
    return -(-count * bits // 8)


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """One layer to assign a width to.

    Parameters
    ----------
    name : str
        Unique layer name.
    weights : array-like
        Float weights (kept as float32) with output channels on ``channel_axis``
        (``(out, in)`` for a linear layer, ``(out, in, kh, kw)`` for a convolution).
    activations : array-like, optional
        Calibration inputs of shape ``(samples, in_features)`` with
        ``in_features = weights.size // out``; the layer's output is
        ``activations @ W.reshape(out, -1).T`` (a convolution's im2col rows), computed in
        float64 from the float32 activations and weights.
    cost : mapping of int to int, optional
        Integer cost of the layer at each width (bytes, energy units, ...). By default the
        packed weight bytes, :func:`weight_bytes`.
    channel_axis : int
        Axis of ``weights`` holding output channels; weights are quantized symmetric per channel.
    """

    name: str
    weights: np.ndarray
    activations: np.ndarray | None = None
    cost: Mapping[int, int] | None = None
    channel_axis: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"layer name must be a non-empty string, not {self.name!r}")
        w = np.asarray(self.weights)
        if w.dtype.kind not in "fiu" or w.ndim == 0 or w.size == 0:
            raise ConfigError(
                f"layer {self.name!r}: weights must be a non-empty numeric array, not "
                f"{w.dtype} of shape {w.shape}"
            )
        w = w.astype(np.float32)
        if not np.all(np.isfinite(w)):
            raise ConfigError(f"layer {self.name!r}: weights contain non-finite values")
        axis = self.channel_axis
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) \
                or not -w.ndim <= axis < w.ndim:
            raise ConfigError(
                f"layer {self.name!r}: channel_axis {axis!r} is out of range for weights of "
                f"shape {w.shape}"
            )
        object.__setattr__(self, "weights", w)
        if self.activations is not None:
            x = np.asarray(self.activations)
            in_features = w.size // w.shape[axis]
            if x.ndim != 2 or x.shape[1] != in_features or x.shape[0] == 0:
                raise ConfigError(
                    f"layer {self.name!r}: activations must have shape (samples, {in_features}) "
                    f"for weights of shape {w.shape}, not {x.shape}"
                )
            x = x.astype(np.float32)
            if not np.all(np.isfinite(x)):
                raise ConfigError(f"layer {self.name!r}: activations contain non-finite values")
            object.__setattr__(self, "activations", x)

    def matrix(self) -> np.ndarray:
        """Weights as ``(out, in_features)``."""
        w = np.moveaxis(self.weights, self.channel_axis, 0)
        return w.reshape(w.shape[0], -1)

    def cost_at(self, bits: int) -> int:
        """Integer cost at ``bits``, validated."""
        if self.cost is None:
            return weight_bytes(self.weights.size, bits)
        if bits not in self.cost:
            raise ConfigError(
                f"layer {self.name!r} has no cost for int{bits}; costs are given for "
                f"{sorted(self.cost)}"
            )
        return _check_cost(self.cost[bits], self.name, bits)


def _check_cost(value: Any, name: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(
            f"layer {name!r}: cost at int{bits} must be a non-negative integer, not {value!r}"
        )
    return int(value)


@dataclass(frozen=True)
class LayerSensitivity:
    """Cost and sensitivity of one layer at each candidate width.

    Parameters
    ----------
    name : str
    cost : mapping of int to int
        Integer cost at each width.
    nmse : mapping of int to float
        Noise-to-signal energy ratio at each width (0 = lossless).
    metric : str
        What was measured: ``"weights"``, ``"output"`` or ``"given"``.
    """

    name: str
    cost: Mapping[int, int]
    nmse: Mapping[int, float]
    metric: str = "given"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"layer name must be a non-empty string, not {self.name!r}")
        if not self.cost:
            raise ConfigError(f"layer {self.name!r} has no candidate widths")
        if set(self.cost) != set(self.nmse):
            raise ConfigError(
                f"layer {self.name!r}: costs are given for widths {sorted(self.cost)} but "
                f"sensitivities for {sorted(self.nmse)}"
            )
        cost = {int(b): _check_cost(c, self.name, b) for b, c in self.cost.items()}
        nmse = {}
        for b, e in self.nmse.items():
            if isinstance(e, bool) or not isinstance(e, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(e) or e < 0:
                raise ConfigError(
                    f"layer {self.name!r}: sensitivity at int{b} must be a finite number >= 0, "
                    f"not {e!r}"
                )
            nmse[int(b)] = float(e)
        order = sorted(cost, reverse=True)
        object.__setattr__(self, "cost", {b: cost[b] for b in order})
        object.__setattr__(self, "nmse", {b: nmse[b] for b in order})

    @property
    def sqnr_db(self) -> dict[int, float]:
        """``-10 log10(nmse)`` at each width (``inf`` when lossless)."""
        return {b: _db(e) for b, e in self.nmse.items()}


def _db(nmse: float) -> float:
    return math.inf if nmse == 0 else -10.0 * math.log10(nmse)


@dataclass(frozen=True)
class MixedPrecisionPlan:
    """The chosen width of each layer and what it is predicted to cost and lose.

    Attributes
    ----------
    widths : dict of str to int
        Chosen width per layer, in layer order.
    cost : int
        Total cost of the plan (``<= budget``).
    budget : int
    unit : str
        Unit of cost and budget, for messages and reports.
    total_nmse : float
        Objective: sum of the layers' sensitivities at their chosen widths.
    layer_sqnr_db : dict of str to float
        Each layer's SQNR at its chosen width.
    predicted_sqnr_db : float
        ``-10 log10(total_nmse / layers)``: the SQNR of the mean relative noise.
    """

    widths: dict[str, int]
    cost: int
    budget: int
    unit: str
    total_nmse: float
    layer_sqnr_db: dict[str, float]
    predicted_sqnr_db: float
    layers: tuple[LayerSensitivity, ...] = field(repr=False, default=())

    def summary(self) -> str:
        """A fixed-width table: layer, width, cost, SQNR; then the totals."""
        rows = [f"{'layer':<12} {'width':>6} {'cost':>10} {'SQNR dB':>9}"]
        for layer in self.layers:
            b = self.widths[layer.name]
            rows.append(f"{layer.name:<12} {'int' + str(b):>6} {layer.cost[b]:>10} "
                        f"{self.layer_sqnr_db[layer.name]:>9.2f}")
        rows.append(f"{'total':<12} {'':>6} {self.cost:>10} {self.predicted_sqnr_db:>9.2f}")
        rows.append(f"budget {self.budget} {self.unit}")
        return "\n".join(rows)


def _check_widths(widths: Iterable[int]) -> tuple[int, ...]:
    out = []
    for b in widths:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 2 <= b <= 16:
            raise ConfigError(f"widths must be integers between 2 and 16, not {b!r}")
        out.append(int(b))
    if not out:
        raise ConfigError("widths must name at least one bit width")
    if len(set(out)) != len(out):
        raise ConfigError(f"widths must be distinct, not {tuple(out)}")
    return tuple(sorted(out, reverse=True))


def _nmse(reference: np.ndarray, approx: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - approx.astype(np.float64)) ** 2))
    signal = float(np.sum(ref * ref))
    if noise == 0:
        return 0.0
    if signal == 0:
        # An all-zero reference that quantizes to something else: an infinite relative error
        # would make every plan equal, so report the absolute noise instead.
        return noise
    return noise / signal


def measure_sensitivity(layers: Sequence[LayerSpec], widths: Iterable[int] = DEFAULT_WIDTHS, *,
                        observer: str = "minmax", metric: str = "auto") -> list[LayerSensitivity]:
    """Sensitivity of each layer at each width.

    Weights are quantized symmetric, per output channel, to ``int<b>`` with the chosen
    observer (``"minmax"`` or ``"mse"``) and :func:`compute_params` (so int8 uses [-127, 127]
    and int2 is ternary, see :func:`~qsim.quant.calibrate.quant_range`), then fake-quantized.

    ``metric="weights"`` compares the weights; ``"output"`` compares the layer outputs
    ``activations @ W.T`` (float64) and needs activations; ``"auto"`` uses the outputs where a
    layer has activations and the weights elsewhere. Activations stay float: this measures the
    weight quantization alone.
    """
    bits_list = _check_widths(widths)
    if metric not in _METRICS:
        raise ConfigError(f"metric must be one of {', '.join(_METRICS)}, not {metric!r}")
    if observer not in _OBSERVERS:
        raise ConfigError(f"observer must be one of {', '.join(_OBSERVERS)}, not {observer!r}")
    layers = _check_layers(layers)
    result = []
    for layer in layers:
        use_output = metric == "output" or (metric == "auto" and layer.activations is not None)
        if use_output and layer.activations is None:
            raise ConfigError(f"layer {layer.name!r} has no activations for metric='output'")
        w = layer.matrix()
        x = layer.activations.astype(np.float64) if use_output else None
        reference = x @ w.astype(np.float64).T if use_output else w
        nmse = {}
        for b in bits_list:
            obs = _OBSERVERS[observer](IntFormat(b, True), symmetric=True, per_channel_axis=0)
            wq = fake_quantize(w, obs.observe(w).compute())
            nmse[b] = _nmse(reference, x @ wq.astype(np.float64).T if use_output else wq)
        result.append(LayerSensitivity(layer.name, {b: layer.cost_at(b) for b in bits_list}, nmse,
                                       metric="output" if use_output else "weights"))
    return result


def _check_layers(layers: Sequence[Any]) -> list[Any]:
    layers = list(layers)
    if not layers:
        raise ConfigError("mixed-precision selection needs at least one layer")
    seen: set[str] = set()
    for layer in layers:
        if layer.name in seen:
            raise ConfigError(f"layer name {layer.name!r} appears more than once")
        seen.add(layer.name)
    return layers


def select_widths(layers: Sequence[LayerSensitivity], budget: int, *,
                  unit: str = "bytes") -> MixedPrecisionPlan:
    """The widths that minimise the total sensitivity with total cost ``<= budget`` (exact).

    Method: dynamic programming over Pareto frontiers, a sparse form of the multiple-choice
    knapsack DP. After layer ``l`` the frontier holds, for every reachable total cost within
    the budget, the smallest total sensitivity, keeping only entries that are strictly better
    than every cheaper one. Any optimal plan's first ``l`` choices form such an entry (if a
    prefix were dominated, swapping in the dominating prefix would give a plan no worse in cost
    or sensitivity), so the best frontier entry after the last layer is optimal. The frontier
    never has more than ``budget + 1`` entries, so the work is at most
    ``O(layers * widths * (budget + 1))`` like the dense DP, and usually far less. Among equally
    good plans the cheapest is returned.

    Raises
    ------
    ConfigError
        If even the cheapest width of every layer exceeds the budget.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise ConfigError(f"budget must be a non-negative integer, not {budget!r}")
    budget = int(budget)
    layers = _check_layers(layers)
    for layer in layers:
        if not isinstance(layer, LayerSensitivity):
            raise ConfigError(
                f"select_widths needs LayerSensitivity entries (see measure_sensitivity), not "
                f"{type(layer).__name__}"
            )
    cheapest = [min(layer.cost, key=lambda b, l=layer: (l.cost[b], b)) for layer in layers]
    smallest = sum(layer.cost[b] for layer, b in zip(layers, cheapest))
    if smallest > budget:
        if len(set(cheapest)) == 1:
            how = f"all layers at int{cheapest[0]}"
        else:
            how = ", ".join(f"{layer.name} at int{b}" for layer, b in zip(layers, cheapest))
        raise ConfigError(
            f"budget {budget} {unit} is below the smallest possible {smallest} {unit} ({how})"
        )

    front_cost = np.zeros(1, dtype=np.int64)
    front_nmse = np.zeros(1)
    steps: list[tuple[np.ndarray, np.ndarray]] = []  # (parent index, choice index) per layer
    for layer in layers:
        options = list(layer.cost)
        cost = np.array([layer.cost[b] for b in options], dtype=np.int64)
        nmse = np.array([layer.nmse[b] for b in options])
        cand_cost = (front_cost[:, None] + cost[None, :]).ravel()
        cand_nmse = (front_nmse[:, None] + nmse[None, :]).ravel()
        parent = np.repeat(np.arange(front_cost.size), cost.size)
        choice = np.tile(np.arange(cost.size), front_cost.size)
        fits = cand_cost <= budget
        cand_cost, cand_nmse, parent, choice = (a[fits] for a in (cand_cost, cand_nmse, parent, choice))
        order = np.lexsort((cand_nmse, cand_cost))  # by cost, then sensitivity; stable
        cand_cost, cand_nmse, parent, choice = (a[order] for a in (cand_cost, cand_nmse, parent, choice))
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(cand_nmse)[:-1]])
        keep = cand_nmse < best_before
        front_cost, front_nmse = cand_cost[keep], cand_nmse[keep]
        steps.append((parent[keep], choice[keep]))

    # The frontier's sensitivity strictly falls as cost rises: the last entry is the optimum.
    index = front_cost.size - 1
    total_cost, total_nmse = int(front_cost[index]), float(front_nmse[index])
    chosen: list[int] = []
    for layer, (parent, choice) in zip(reversed(layers), reversed(steps)):
        chosen.append(list(layer.cost)[choice[index]])
        index = parent[index]
    chosen.reverse()
    widths = {layer.name: b for layer, b in zip(layers, chosen)}
    return MixedPrecisionPlan(
        widths=widths,
        cost=total_cost,
        budget=budget,
        unit=unit,
        total_nmse=total_nmse,
        layer_sqnr_db={layer.name: _db(layer.nmse[b]) for layer, b in zip(layers, chosen)},
        predicted_sqnr_db=_db(total_nmse / len(layers)),
        layers=tuple(layers),
    )


def plan_mixed_precision(layers: Sequence[LayerSpec], budget: int,
                         widths: Iterable[int] = DEFAULT_WIDTHS, *, observer: str = "minmax",
                         metric: str = "auto", unit: str = "bytes") -> MixedPrecisionPlan:
    """:func:`measure_sensitivity` then :func:`select_widths`."""
    return select_widths(measure_sensitivity(layers, widths, observer=observer, metric=metric),
                         budget, unit=unit)
