"""Quantization error analysis: error measures and the figures that show them.

This module owns the definitions of the error figures qsim reports (SQNR, max/mean absolute
error, RMSE, all computed in float64) and the plots of quantization results. Plots are
functions that take results and return a :class:`matplotlib.figure.Figure` built with the
object API (no pyplot state, safe under the Agg backend); callers save or show them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from qsim.errors import ConfigError
from qsim.quant.ops import dequantize
from qsim.quant.params import QuantParams

__all__ = [
    "sqnr_db",
    "error_stats",
    "quantization_grid",
    "plot_value_histogram",
    "plot_layer_sqnr",
    "MAX_GRID_LINES",
]

#: Grids with more levels than this inside the plotted range are not drawn (int16 has 65536).
MAX_GRID_LINES = 1024


def _pair(reference: Any, quantized: Any) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference)
    q = np.asarray(quantized)
    for name, arr in (("reference", ref), ("quantized", q)):
        if arr.dtype.kind not in "fiub":
            raise ConfigError(f"{name} must be a numeric array, not dtype {arr.dtype}")
    if ref.shape != q.shape:
        raise ConfigError(f"reference shape {ref.shape} and quantized shape {q.shape} differ")
    if ref.size == 0:
        raise ConfigError("error measures need at least one value, but the arrays are empty")
    ref = ref.astype(np.float64)
    q = q.astype(np.float64)
    for name, arr in (("reference", ref), ("quantized", q)):
        bad = ~np.isfinite(arr)
        if np.any(bad):
            raise ConfigError(f"{name} has {int(np.count_nonzero(bad))} non-finite value(s)")
    return ref, q


def sqnr_db(reference: Any, quantized: Any) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum(ref**2) / sum((ref - q)**2))``.

    Computed in float64. ``inf`` when the arrays are equal; ``-inf`` when the reference is all
    zeros and the quantized array is not.
    """
    ref, q = _pair(reference, quantized)
    noise = float(np.sum((ref - q) ** 2))
    signal = float(np.sum(ref * ref))
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def error_stats(reference: Any, quantized: Any) -> dict[str, float]:
    """``max_abs``, ``mean_abs``, ``rmse`` and ``sqnr_db`` of ``quantized`` against ``reference``
    (float64, returned as Python floats)."""
    ref, q = _pair(reference, quantized)
    err = np.abs(ref - q)
    return {
        "max_abs": float(err.max()),
        "mean_abs": float(err.mean()),
        "rmse": float(np.sqrt(np.mean(err * err))),
        "sqnr_db": sqnr_db(ref, q),
    }


def quantization_grid(params: Any, channel: int | None = None) -> np.ndarray:
    """Sorted float32 values representable by ``params``.

    ``params`` is a per-tensor :class:`QuantParams` (or a per-axis one with ``channel``), a
    :class:`~qsim.quant.nonuniform.Pow2Params`, or an array of values.
    """
    if isinstance(params, QuantParams):
        if params.axis is not None:
            if params.block_size is not None:
                raise ConfigError("quantization_grid does not draw blocked parameters")
            if channel is None:
                raise ConfigError("per-axis parameters need channel= to draw their grid")
            params = QuantParams(params.scale[channel], params.zero_point[channel], params.fmt)
        elif channel is not None:
            raise ConfigError("per-tensor parameters have no channels")
        codes = np.arange(params.fmt.min, params.fmt.max + 1, dtype=np.int64)
        return np.unique(dequantize(codes, params))
    from qsim.quant.nonuniform import Pow2Params, pow2_grid

    if isinstance(params, Pow2Params):
        return pow2_grid(params, channel)
    values = np.asarray(params, dtype=np.float32).ravel()
    return np.unique(values)


def plot_value_histogram(reference: Any, dequantized: Any, grid: Any = None, *,
                         channel: int | None = None, bins: int = 100,
                         title: str | None = None) -> Figure:
    """Histogram of float values against their dequantized values, over the quantization grid.

    Both histograms use the same ``bins`` equal bins over the combined range and are drawn as
    step patches (``Axes.stairs``: ``get_data()`` gives counts and edges); grid levels inside
    the plotted range are vertical lines (a ``LineCollection`` labelled ``"grid"``), unless
    there are more than :data:`MAX_GRID_LINES` of them.

    Parameters
    ----------
    reference, dequantized : array-like
        Float values and the values they were quantized to (same shape).
    grid : QuantParams, Pow2Params or array-like, optional
        The representable values (see :func:`quantization_grid`).
    channel : int, optional
        Channel of per-axis parameters whose grid is drawn.
    bins : int
        Number of histogram bins.
    title : str, optional
        Axes title; by default the SQNR.
    """
    ref, q = _pair(reference, dequantized)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ConfigError(f"bins must be a positive int, not {bins!r}")
    low = min(ref.min(), q.min())
    high = max(ref.max(), q.max())
    edges = np.histogram_bin_edges(np.array([low, high]), bins=bins)
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot()
    ref_counts, _ = np.histogram(ref, bins=edges)
    q_counts, _ = np.histogram(q, bins=edges)
    ax.stairs(ref_counts, edges, fill=True, alpha=0.5, label="float")
    ax.stairs(q_counts, edges, fill=False, linewidth=1.5, label="dequantized")
    if grid is not None:
        levels = quantization_grid(grid, channel).astype(np.float64)
        pad = (high - low) / bins
        levels = levels[(levels >= low - pad) & (levels <= high + pad)]
        if 0 < levels.size <= MAX_GRID_LINES:
            ax.vlines(levels, 0, 1, transform=ax.get_xaxis_transform(), colors="0.5",
                      linewidth=0.6, linestyles="dotted", label="grid")
    ax.set_xlabel("value")
    ax.set_ylabel("count")
    ax.set_title(title if title is not None else f"SQNR {sqnr_db(ref, q):.2f} dB")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def _finite_heights(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Replace infinite SQNRs (lossless) by a bar 10 dB above the largest finite one."""
    finite = values[np.isfinite(values)]
    cap = (finite.max() if finite.size else 0.0) + 10.0
    return np.where(np.isposinf(values), cap, values), cap


def plot_layer_sqnr(sqnr: Any, *, title: str = "SQNR per layer") -> Figure:
    """Bar chart of SQNR (dB) per layer.

    ``sqnr`` may be:

    * a mapping ``{layer: dB}``, or a :class:`~qsim.quant.mixed.MixedPrecisionPlan` (its
      ``layer_sqnr_db``; each bar is labelled with the chosen width): one bar per layer;
    * a mapping ``{layer: {bits: dB}}`` or a sequence of
      :class:`~qsim.quant.mixed.LayerSensitivity`: one group per layer, one bar per width,
      one ``BarContainer`` per width labelled ``int<bits>``.

    Bar heights are the SQNR values; a lossless (infinite) SQNR is drawn 10 dB above the
    largest finite one and labelled ``"inf"``.
    """
    from qsim.quant.mixed import LayerSensitivity, MixedPrecisionPlan

    labels: dict[str, str] = {}
    if isinstance(sqnr, MixedPrecisionPlan):
        labels = {name: f"int{b}" for name, b in sqnr.widths.items()}
        sqnr = sqnr.layer_sqnr_db
    elif isinstance(sqnr, Sequence) and sqnr and all(isinstance(s, LayerSensitivity) for s in sqnr):
        sqnr = {s.name: s.sqnr_db for s in sqnr}
    if not isinstance(sqnr, Mapping) or not sqnr:
        raise ConfigError("plot_layer_sqnr needs a non-empty mapping of layer names to SQNR values")
    names = list(sqnr)
    grouped = all(isinstance(v, Mapping) for v in sqnr.values())
    if grouped:
        widths = sorted({b for v in sqnr.values() for b in v}, reverse=True)
        table = np.array([[float(sqnr[n].get(b, np.nan)) for n in names] for b in widths])
    else:
        widths = []
        try:
            table = np.array([[float(sqnr[n]) for n in names]])
        except (TypeError, ValueError):
            raise ConfigError("SQNR values must be numbers or mappings of bit width to number") from None
    heights, _ = _finite_heights(table)

    fig = Figure(figsize=(max(4.0, 0.9 * len(names) * max(1, len(widths)) + 1.5), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(names), dtype=float)
    series = len(table)
    width = 0.8 / series
    for i, row in enumerate(heights):
        offset = (i - (series - 1) / 2) * width
        label = f"int{widths[i]}" if grouped else "SQNR"
        bars = ax.bar(x + offset, row, width=width, label=label)
        texts = []
        for j, value in enumerate(table[i]):
            text = "inf" if np.isposinf(value) else f"{value:.1f}"
            if not grouped and names[j] in labels:
                text = f"{labels[names[j]]}\n{text}"
            texts.append(text)
        ax.bar_label(bars, labels=texts, fontsize=7)
    ax.set_xticks(x, names, rotation=30 if len(names) > 6 else 0)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(title)
    if grouped:
        ax.legend()
    fig.tight_layout()
    return fig
