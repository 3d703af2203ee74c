"""Calibration: from observed float tensors to scales and zero points.

This module owns three things:

* which integer range a format uses under the ``symmetric`` and ``reduce_range`` options
  (:func:`quant_range`, ONNX Runtime's tables for the formats ORT supports);
* how a real range ``[rmin, rmax]`` becomes a scale and zero point (:func:`compute_params`,
  bit-exact with ``onnxruntime.quantization.quant_utils.compute_scale_zp``);
* observers that accumulate statistics over calibration batches and produce
  :class:`~qsim.quant.params.QuantParams` (:class:`MinMaxObserver`,
  :class:`MovingAverageMinMaxObserver`, :class:`PercentileObserver`, :class:`MSEObserver`,
  :class:`EntropyObserver`).

Every observer works per tensor or per channel (``per_channel_axis``) and computes in float32,
the type ONNX Runtime calibrates in. Fake quantization (:func:`fake_quantize`) is
``dequantize(quantize(x))`` from :mod:`qsim.quant.ops`; this module never rounds on its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qsim.errors import ConfigError
from qsim.numerics import IntFormat
from qsim.quant.ops import dequantize, quantize
from qsim.quant.params import QuantParams

__all__ = [
    "parse_format",
    "quant_range",
    "compute_params",
    "fake_quantize",
    "Observer",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PercentileObserver",
    "MSEObserver",
    "EntropyObserver",
    "OBSERVERS",
    "make_observer",
]

#: Widest format calibration supports: scales are float32 and ORT stops at 16 bits.
MAX_CALIBRATION_BITS = 16

#: ORT's symmetric tables restrict int8 and int16 to [-max, max] but keep int4 at [-8, 7];
#: qsim follows ORT for int4 and restricts every other signed width.
_SYMMETRIC_FULL_RANGE_BITS = frozenset({4})

#: ORT's reduced ranges for int8 and int16 are [-2**(b-2), 2**(b-2)] (one more positive level
#: than a (b-1)-bit format); its int4 rule, [-4, 3], is the plain (b-1)-bit range.
_REDUCED_EXTRA_LEVEL_BITS = frozenset({8, 16})

#: Smoothing constant of the KL-divergence search (ORT's ``smooth_distribution`` default).
_KL_EPS = 0.0001


# --------------------------------------------------------------------------------------------
# Formats, ranges and the ORT scale/zero-point rule
# --------------------------------------------------------------------------------------------

def parse_format(fmt: IntFormat | str) -> IntFormat:
    """Return ``fmt`` as an :class:`IntFormat` of 2 to 16 bits, or raise :class:`ConfigError`.

    Parameters
    ----------
    fmt : IntFormat or str
        A format or its name: ``"int8"``, ``"uint8"``, ``"int4"``, ``"uint4"``, ``"int2"``, ...
    """
    if isinstance(fmt, IntFormat):
        parsed = fmt
    elif isinstance(fmt, str):
        try:
            parsed = IntFormat.parse(fmt)
        except ValueError:
            raise ConfigError(
                f"unknown integer format {fmt!r}: expected a name like 'int8', 'uint8', 'int4', "
                f"'uint4' or 'int2'"
            ) from None
    else:
        raise ConfigError(f"fmt must be an IntFormat or a name like 'int8', not {fmt!r}")
    if parsed.bits > MAX_CALIBRATION_BITS:
        raise ConfigError(
            f"calibration supports formats of 2 to {MAX_CALIBRATION_BITS} bits, not {parsed.name}"
        )
    return parsed


def quant_range(fmt: IntFormat | str, symmetric: bool = False,
                reduce_range: bool = False) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` a range is mapped onto.

    For int4, uint4, int8, uint8, int16 and uint16 this is ONNX Runtime's
    ``get_qmin_qmax_for_qType``; other widths follow the stated extension.

    ============  =================  ===================  ================================
    format        plain              symmetric            reduce_range (any symmetric)
    ============  =================  ===================  ================================
    int8          [-128, 127]        [-127, 127]          [-64, 64]
    int16         [-32768, 32767]    [-32767, 32767]      [-16384, 16384]
    int4          [-8, 7]            [-8, 7]              [-4, 3]
    uint``b``     [0, 2**b - 1]      [0, 2**b - 1]        [0, 2**(b-1) - 1]
    other int     [min, max]         [-max, max]          [-2**(b-2), 2**(b-2) - 1]
    ============  =================  ===================  ================================

    So symmetric int2 is ternary ([-1, 1]) and reduce_range needs at least 3 bits.

    Parameters
    ----------
    fmt : IntFormat or str
        Storage format.
    symmetric : bool
        Symmetric quantization (zero point fixed at the middle of the range).
    reduce_range : bool
        Drop one bit of range, as ORT and PyTorch do for 8-bit weights on x86 CPUs without VNNI
        (the ``vpmaddubsw`` int16 saturation hazard in NUMERICS.md). Takes precedence over
        ``symmetric`` when choosing the range, as in ORT.
    """
    f = parse_format(fmt)
    b = f.bits
    if reduce_range:
        if b < 3:
            raise ConfigError(
                f"reduce_range drops one bit of range and needs a format of at least 3 bits, "
                f"not {f.name}"
            )
        if not f.signed:
            return 0, (1 << (b - 1)) - 1
        half = 1 << (b - 2)
        return (-half, half) if b in _REDUCED_EXTRA_LEVEL_BITS else (-half, half - 1)
    if symmetric and f.signed and b not in _SYMMETRIC_FULL_RANGE_BITS:
        return -f.max, f.max
    return f.min, f.max


def _range_array(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number or an array of numbers, not {value!r}") from None
    # Ranges are float32 quantities (the calibrated tensors are float32); ORT works in the
    # ranges' own dtype, so round once here and follow ORT's float32/float64 steps below.
    with np.errstate(over="ignore"):
        single = arr.astype(np.float32)
    bad = ~np.isfinite(single)
    if np.any(bad):
        first = arr[bad].ravel()[0]
        raise ConfigError(f"{name} must be a finite float32 value, not {first}")
    return single


def compute_params(rmin: Any, rmax: Any, fmt: IntFormat | str = "int8", symmetric: bool = False,
                   reduce_range: bool = False, axis: int | None = None) -> QuantParams:
    """Scale and zero point of a real range, bit-exact with ONNX Runtime's ``compute_scale_zp``.

    With ``(qmin, qmax) = quant_range(fmt, symmetric, reduce_range)``:

    1. the range is widened to contain 0: ``rmin = min(rmin, 0)``, ``rmax = max(rmax, 0)``
       (float32), so that 0 is exactly representable;
    2. if ``symmetric``: ``rmax = max(|rmin|, |rmax|)``, ``rmin = -rmax``;
    3. ``scale = (float64(rmax) - float64(rmin)) / (qmax - qmin)`` in float64;
    4. if that scale is below the smallest normal float32 (a range of zero width), the result
       is ``scale = 1``, ``zero_point = 0``;
    5. otherwise ``zero_point = rne((qmin + qmax) / 2)`` when symmetric (0 for int8,
       128 for uint8), else ``zero_point = rne(qmin - rmin / scale)`` with the float64 scale;
    6. the scale is stored as float32 (rounded to nearest even).

    Parameters
    ----------
    rmin, rmax : float or array-like
        The observed range, rounded to float32 first. Scalars give per-tensor parameters;
        1-D arrays (one entry per channel) need ``axis``.
    fmt : IntFormat or str
        Storage format of the quantized tensor (the ``QuantParams.fmt``; ``reduce_range`` only
        narrows the range mapped onto, as in ORT, so saturation still uses the full format).
    symmetric, reduce_range : bool
        See :func:`quant_range`.
    axis : int or None
        Quantization axis of per-channel parameters.

    Returns
    -------
    QuantParams
        float32 scale, int64 zero point.
    """
    f = parse_format(fmt)
    qmin, qmax = quant_range(f, symmetric, reduce_range)
    lo = _range_array(rmin, "rmin")
    hi = _range_array(rmax, "rmax")
    if lo.shape != hi.shape:
        raise ConfigError(f"rmin shape {lo.shape} and rmax shape {hi.shape} differ")
    if axis is None and lo.ndim != 0:
        raise ConfigError(
            f"per-channel ranges (shape {lo.shape}) need axis=; give scalars for per-tensor "
            f"parameters"
        )
    if axis is not None and lo.ndim != 1:
        raise ConfigError(f"per-channel ranges must be 1-D, not shape {lo.shape}")
    inverted = lo > hi
    if np.any(inverted):
        i = int(np.argmax(inverted.ravel()))
        where = f"[{i}]" if lo.ndim else ""
        raise ConfigError(
            f"rmin{where} = {lo.ravel()[i]} is above rmax{where} = {hi.ravel()[i]}"
        )

    zero = np.float32(0)
    lo = np.minimum(lo, zero)
    hi = np.maximum(hi, zero)
    if symmetric:
        absmax = np.maximum(np.abs(lo), np.abs(hi))
        lo, hi = -absmax, absmax
    scale64 = (hi.astype(np.float64) - lo.astype(np.float64)) / float(qmax - qmin)
    degenerate = scale64 < np.finfo(np.float32).tiny
    if symmetric:
        zp = np.full(lo.shape, np.rint((qmin + qmax) / 2.0))
    else:
        safe = np.where(degenerate, 1.0, scale64)
        zp = np.rint(float(qmin) - lo.astype(np.float64) / safe)
    zp = np.where(degenerate, 0, zp).astype(np.int64)
    # Cannot overflow float32: the span is at most 2 * FLT_MAX and qmax - qmin >= 2.
    scale = np.where(degenerate, np.float32(1), scale64.astype(np.float32))
    return QuantParams(scale=scale.astype(np.float32), zero_point=zp, fmt=f, axis=axis)


def fake_quantize(x: Any, params: QuantParams) -> np.ndarray:
    """``dequantize(quantize(x, params), params)``: the float32 values the integers stand for."""
    return dequantize(quantize(np.asarray(x, dtype=np.float32), params), params)


# --------------------------------------------------------------------------------------------
# Observers
# --------------------------------------------------------------------------------------------

def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be a bool, not {value!r}")
    return bool(value)


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an int, not {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(f"{name} must be {bound}, not {value}")
    return int(value)


class Observer:
    """Base class: validates batches, keeps exact per-channel min/max, builds ``QuantParams``.

    Subclasses implement ``_update(data)`` (``data`` is float32 of shape ``(channels, n)``;
    one channel when per tensor) and ``_range() -> (lo, hi)`` (float32 arrays of shape
    ``(channels,)``).

    Parameters
    ----------
    fmt : IntFormat or str
        Target format (``"int8"``, ``"uint8"``, ``"int4"``, ``"uint4"``, ``"int2"``, ...).
    symmetric : bool
        Symmetric quantization (zero point in the middle of the range, see :func:`quant_range`).
    per_channel_axis : int or None
        Axis of the observed tensors that indexes channels (negative counts from the end);
        ``None`` for per-tensor statistics.
    reduce_range : bool
        One bit less of range (see :func:`quant_range`).
    """

    def __init__(self, fmt: IntFormat | str = "int8", *, symmetric: bool = False,
                 per_channel_axis: int | None = None, reduce_range: bool = False) -> None:
        self.fmt = parse_format(fmt)
        self.symmetric = _check_bool(symmetric, "symmetric")
        self.reduce_range = _check_bool(reduce_range, "reduce_range")
        quant_range(self.fmt, self.symmetric, self.reduce_range)  # reject 2-bit reduce_range now
        if per_channel_axis is not None and (
                isinstance(per_channel_axis, bool) or not isinstance(per_channel_axis, (int, np.integer))):
            raise ConfigError(f"per_channel_axis must be an int or None, not {per_channel_axis!r}")
        self.per_channel_axis = None if per_channel_axis is None else int(per_channel_axis)
        self.batches = 0
        self.count = 0
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None

    # -- input handling ----------------------------------------------------------------------
    def _as_channels(self, x: Any) -> np.ndarray:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError):
            raise ConfigError(f"calibration batch must be a numeric array, not {type(x).__name__}") from None
        if arr.dtype.kind not in "fiu" and arr.dtype != np.bool_:
            raise ConfigError(f"calibration batch must be a numeric array, not dtype {arr.dtype}")
        arr = arr.astype(np.float32)
        k = self.batches
        if arr.size == 0:
            raise ConfigError(
                f"calibration batch {k} is empty (shape {arr.shape}); every batch needs at "
                f"least one value"
            )
        bad = ~np.isfinite(arr)
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            where = f"x[{', '.join(map(str, idx))}]" if idx else "x"
            n = int(np.count_nonzero(bad))
            raise ConfigError(
                f"calibration batch {k} has {n} non-finite value{'s' if n != 1 else ''} "
                f"(first: {where} = {arr[idx] if idx else arr.item()}); observers need finite data"
            )
        axis = self.per_channel_axis
        if axis is None:
            return arr.reshape(1, -1)
        if not -arr.ndim <= axis < arr.ndim:
            raise ConfigError(
                f"per_channel_axis {axis} is out of range for a batch of shape {arr.shape} "
                f"({arr.ndim} dimension{'s' if arr.ndim != 1 else ''})"
            )
        data = np.moveaxis(arr, axis, 0)
        data = data.reshape(data.shape[0], -1)
        if self._min is not None and data.shape[0] != self._min.size:
            raise ConfigError(
                f"calibration batch {k} has {data.shape[0]} channels on axis {axis} but earlier "
                f"batches had {self._min.size}"
            )
        return data

    def observe(self, x: Any) -> Observer:
        """Accumulate one calibration batch; returns ``self`` so calls can be chained."""
        data = self._as_channels(x)
        lo = data.min(axis=1)
        hi = data.max(axis=1)
        self._update(data, lo, hi)
        if self._min is None:
            self._min, self._max = lo, hi
        else:
            self._min = np.minimum(self._min, lo)
            self._max = np.maximum(self._max, hi)
        self.batches += 1
        self.count += data.shape[1]
        return self

    # -- results -----------------------------------------------------------------------------
    def compute_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated range ``(rmin, rmax)``: float32, 0-d per tensor or ``(channels,)``."""
        if self.batches == 0:
            raise ConfigError(
                f"{type(self).__name__} has no calibration data: call observe() with at least "
                f"one batch before compute()"
            )
        lo, hi = self._range()
        lo = np.asarray(lo, dtype=np.float32)
        hi = np.asarray(hi, dtype=np.float32)
        if self.per_channel_axis is None:
            return lo.reshape(()), hi.reshape(())
        return lo, hi

    def compute(self) -> QuantParams:
        """Quantization parameters of the calibrated range (:func:`compute_params`)."""
        lo, hi = self.compute_range()
        return compute_params(lo, hi, self.fmt, self.symmetric, self.reduce_range,
                              axis=self.per_channel_axis)

    def _update(self, data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        raise NotImplementedError

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        gran = "per-tensor" if self.per_channel_axis is None else f"axis={self.per_channel_axis}"
        return (f"{type(self).__name__}({self.fmt.name}, {gran}, symmetric={self.symmetric}, "
                f"reduce_range={self.reduce_range}, batches={self.batches})")


class MinMaxObserver(Observer):
    """Running minimum and maximum over every batch (ORT ``calibrate_method=MinMax``).

    The range is exactly the smallest and largest value seen (per channel when
    ``per_channel_axis`` is set). Symmetric ranges are made symmetric in :func:`compute_params`,
    which gives the same parameters as ORT's ``CalibTensorRangeSymmetric``.
    """

    def _update(self, data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        pass  # the base class keeps the exact min/max

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        return self._min, self._max


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of each batch's minimum and maximum.

    The first batch sets the range; batch ``k`` then updates it in float32 as
    ``m = m + c * (batch_min - m)`` (and the same for the maximum), with ``c`` the
    ``averaging_constant``. This is PyTorch's ``MovingAverageMinMaxObserver`` rule and ORT's
    ``CalibMovingAverage`` merge rule when every batch is collected separately (ORT averages the
    batches of a single ``collect_data`` call with ``nanmean`` instead).

    Parameters
    ----------
    averaging_constant : float
        Weight of the newest batch, in (0, 1]; 1 keeps only the last batch.
    """

    def __init__(self, averaging_constant: float = 0.01, fmt: IntFormat | str = "int8",
                 **options: Any) -> None:
        super().__init__(fmt, **options)
        c = averaging_constant
        if isinstance(c, bool) or not isinstance(c, (int, float, np.floating, np.integer)) \
                or not (0 < c <= 1):
            raise ConfigError(f"averaging_constant must be in (0, 1], not {c!r}")
        self.averaging_constant = float(c)
        self._avg_min: np.ndarray | None = None
        self._avg_max: np.ndarray | None = None

    def _update(self, data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        if self._avg_min is None:
            self._avg_min, self._avg_max = lo.copy(), hi.copy()
            return
        c = np.float32(self.averaging_constant)
        self._avg_min = self._avg_min + c * (lo - self._avg_min)
        self._avg_max = self._avg_max + c * (hi - self._avg_max)

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        return self._avg_min, self._avg_max


# --------------------------------------------------------------------------------------------
# Histograms with ONNX Runtime's binning (used by the percentile and entropy observers)
# --------------------------------------------------------------------------------------------

class _SignedHistogram:
    """Histogram of one channel over ``[-T, T]``, grown the way ORT's ``HistogramCollector``
    (``collect_value``/``merge_histogram``) grows it.

    The first batch sets ``T = max(|min|, |max|)`` and ``num_bins`` bins. A later batch with a
    larger ``T'`` adds ``k = floor((T' - T) / stride) + 1`` bins of the same stride on each side
    (``T`` becomes ``T + k * stride``) and the old counts are added to the middle bins; a batch
    inside ``[-T, T]`` is binned with the current edges. All edge arithmetic is float32 and
    binning is :func:`numpy.histogram`, as in ORT, so the counts are identical.
    """

    def __init__(self, num_bins: int) -> None:
        self.num_bins = num_bins
        self.counts: np.ndarray | None = None
        self.edges: np.ndarray | None = None
        self.limit: np.float32 | None = None

    def add(self, values: np.ndarray, lo: np.float32, hi: np.float32) -> None:
        limit = np.float32(max(abs(lo), abs(hi)))
        if self.counts is None:
            self.counts, self.edges = np.histogram(values, self.num_bins, range=(-limit, limit))
            self.limit = limit
        elif limit <= self.limit:
            counts, _ = np.histogram(values, self.counts.size, range=(-self.limit, self.limit))
            self.counts = self.counts + counts
        elif self.limit == 0:
            # ORT re-bins the new data over the new range and adds the old counts bin by bin.
            counts, self.edges = np.histogram(values, self.counts.size, range=(-limit, limit))
            self.counts = counts + self.counts
            self.limit = limit
        else:
            n = self.counts.size
            stride = 2 * self.limit / n  # float32, as ORT computes it
            extra = int((limit - self.limit) // stride + 1)
            new_limit = extra * stride + self.limit
            counts, self.edges = np.histogram(values, n + 2 * extra, range=(-new_limit, new_limit))
            counts[extra:extra + n] += self.counts
            self.counts = counts
            self.limit = new_limit


class _AbsoluteHistogram:
    """Histogram of ``|x|`` of one channel, grown like ORT's ``collect_absolute_value``.

    The first batch sets ``num_bins`` bins over ``[min |x|, max |x|]`` of that batch; when a
    later batch exceeds the last edge, bins of the same width are appended (``numpy.arange``,
    which may add one bin beyond the new maximum). Later values below the first edge fall
    outside the histogram, as in ORT; the first edge is the first batch's smallest ``|x|``, so
    this only matters when that batch has no values near 0.
    """

    def __init__(self, num_bins: int) -> None:
        self.num_bins = num_bins
        self.counts: np.ndarray | None = None
        self.edges: np.ndarray | None = None

    def add(self, values: np.ndarray, lo: np.float32, hi: np.float32) -> None:
        magnitude = np.abs(values)
        if self.counts is None:
            self.counts, edges = np.histogram(magnitude, bins=self.num_bins)
            self.edges = edges.astype(magnitude.dtype)
            return
        edges = self.edges
        top = magnitude.max()
        if top > edges[-1]:
            width = edges[1] - edges[0]
            edges = np.hstack((edges, np.arange(edges[-1] + width, top + width, width)))
        counts, edges = np.histogram(magnitude, bins=edges)
        counts[:self.counts.size] += self.counts
        self.counts = counts
        self.edges = edges.astype(magnitude.dtype)


class _HistogramObserver(Observer):
    """Keeps one ORT-style histogram per channel (a Python loop over channels; the binning and
    the threshold search inside each channel are vectorised)."""

    _histogram_type: type = _SignedHistogram

    def __init__(self, fmt: IntFormat | str, num_bins: int, **options: Any) -> None:
        super().__init__(fmt, **options)
        self.num_bins = _check_int(num_bins, "num_bins", 1)
        self._histograms: list[Any] = []

    def _update(self, data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        if not self._histograms:
            self._histograms = [self._new_histogram() for _ in range(data.shape[0])]
        for c, hist in enumerate(self._histograms):
            hist.add(data[c], lo[c], hi[c])

    def _new_histogram(self) -> Any:
        return _SignedHistogram(self.num_bins)

    def histograms(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(counts, edges)`` of each channel's histogram (one entry when per tensor)."""
        return [(h.counts.copy(), h.edges.copy()) for h in self._histograms]

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        los, his = [], []
        for c, hist in enumerate(self._histograms):
            lo, hi = self._threshold(hist)
            # Never report a range beyond the data (ORT clips the same way).
            lo = self._min[c] if lo < self._min[c] else lo
            hi = self._max[c] if hi > self._max[c] else hi
            los.append(lo)
            his.append(hi)
        return np.array(los, dtype=np.float32), np.array(his, dtype=np.float32)

    def _threshold(self, hist: Any) -> tuple[np.float32, np.float32]:
        raise NotImplementedError


class PercentileObserver(_HistogramObserver):
    """Range that keeps ``percentile`` percent of the values (ORT ``calibrate_method=Percentile``).

    Algorithm (ORT's ``HistogramCollector``, reproduced exactly):

    * ``symmetric=True``: a histogram of ``|x|`` (:class:`_AbsoluteHistogram`, ``num_bins``
      bins over the first batch's ``[min |x|, max |x|]``); with ``cdf`` the cumulative share of
      the counts (float64), ``t = edges[searchsorted(cdf, percentile / 100)]`` and the range is
      ``[-t, t]``;
    * ``symmetric=False``: a signed histogram over ``[-T, T]`` (:class:`_SignedHistogram`); a
      share ``c = (100 - percentile) / 200`` is cut from each side:
      ``[edges[searchsorted(cdf, c)], edges[searchsorted(cdf, 1 - c)]]``.

    Either end is then clipped to the observed minimum and maximum. Thresholds are bin edges,
    so the range is accurate to one bin width.

    Parameters
    ----------
    percentile : float
        Share of values to keep, in (0, 100]; 100 gives (up to a bin) the min/max range.
    num_bins : int
        Histogram bins of the first batch (ORT's default for this method is 2048).
    """

    def __init__(self, percentile: float = 99.999, fmt: IntFormat | str = "int8", *,
                 num_bins: int = 2048, **options: Any) -> None:
        p = percentile
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) \
                or not (0 < p <= 100):
            raise ConfigError(f"percentile must be in (0, 100], not {p!r}")
        super().__init__(fmt, num_bins, **options)
        self.percentile = float(p)

    def _new_histogram(self) -> Any:
        return _AbsoluteHistogram(self.num_bins) if self.symmetric else _SignedHistogram(self.num_bins)

    def _threshold(self, hist: Any) -> tuple[np.float32, np.float32]:
        counts, edges = hist.counts, hist.edges
        cdf = np.cumsum(counts / counts.sum())
        if self.symmetric:
            t = edges[np.searchsorted(cdf, self.percentile / 100.0)]
            return -t, t
        cut = (100.0 - self.percentile) / 200.0
        return edges[np.searchsorted(cdf, cut)], edges[np.searchsorted(cdf, 1.0 - cut)]


def _smooth(p: np.ndarray) -> np.ndarray | None:
    """Replace empty bins by ``eps`` and take the same total off the others (float32);
    ``None`` when every bin is empty."""
    empty = p == 0
    n_empty = int(np.count_nonzero(empty))
    n_full = p.size - n_empty
    if n_full == 0:
        return None
    eps_full = _KL_EPS * float(n_empty) / float(n_full)
    if eps_full >= 1:
        raise ConfigError(
            f"entropy calibration: {n_empty} of {p.size} histogram bins are empty, too sparse "
            f"to smooth; use fewer num_bins"
        )
    return p.astype(np.float32) + np.where(empty, np.float32(_KL_EPS), np.float32(-eps_full))


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> np.float32:
    """``sum(P log(P / Q))`` of the normalised float32 distributions (scipy's ``entropy``)."""
    pk = p / np.sum(p)
    qk = q / np.sum(q)
    terms = pk * np.log(pk / qk)
    terms = np.where((pk > 0) & (qk > 0), terms, np.float32(np.inf))
    return np.sum(terms)


def _entropy_threshold(counts: np.ndarray, edges: np.ndarray,
                       num_quantized_bins: int) -> tuple[np.float32, np.float32]:
    """KL-divergence threshold search over a signed histogram (ORT's ``get_entropy_threshold``).

    For ``i`` from ``num_quantized_bins // 2`` to ``n // 2`` (``n`` bins, centre bin
    ``z = n // 2``), the candidate keeps bins ``[z - i, min(z + i + 1, n))``:

    * reference ``P``: the kept counts, with all counts left of the window added to its first
      bin and all counts right of it added to its last bin;
    * candidate ``Q``: the kept counts (without outliers) merged into ``num_quantized_bins``
      groups of ``m = len // num_quantized_bins`` bins (the remainder joins the last group);
      each group's total is spread over the group's bins where ``P`` is non-zero, as an integer
      (truncated) count; bins after the last full group stay 0;
    * both are smoothed (:func:`_smooth`) and ``KL(P || Q)`` is computed in float32.

    The window with the smallest divergence (the first one on ties) gives the range
    ``(edges[z - i], edges[min(z + i + 1, n)])``.
    """
    n = counts.size
    centre = n // 2
    best: tuple[float, int, int] | None = None
    for i in range(num_quantized_bins // 2, centre + 1):
        start, stop = centre - i, min(centre + i + 1, n)
        kept = counts[start:stop]
        p = kept.copy()
        p[0] += counts[:start].sum()
        p[-1] += counts[stop:].sum()
        group = kept.size // num_quantized_bins
        whole = group * num_quantized_bins
        totals = kept[:whole].reshape(num_quantized_bins, group).sum(axis=1)
        totals[-1] += kept[whole:].sum()
        occupied = (p[:whole] != 0).reshape(num_quantized_bins, group).sum(axis=1)
        spread = np.zeros(num_quantized_bins, dtype=np.int64)
        has = occupied != 0
        spread[has] = (totals[has] / occupied[has]).astype(np.int64)  # truncation, as ORT
        q = np.zeros(p.size, dtype=np.int64)
        q[:whole] = np.repeat(spread, group)
        ps, qs = _smooth(p), _smooth(q)
        div = np.inf if ps is None or qs is None else float(_kl_divergence(ps, qs))
        if best is None or div < best[0]:
            best = (div, start, stop)
    _, start, stop = best
    return edges[start], edges[stop]


class EntropyObserver(_HistogramObserver):
    """KL-divergence (TensorRT-style) calibration, reproducing ORT ``calibrate_method=Entropy``.

    Values are collected in a signed histogram over ``[-T, T]`` (:class:`_SignedHistogram`:
    ``num_bins`` bins for the first batch, widened by whole bins of the same stride when a
    later batch exceeds ``T``). The range is the window of bins around the centre whose
    clipped distribution is closest, in KL divergence, to its own quantization into
    ``num_quantized_bins`` levels (:func:`_entropy_threshold`), clipped to the observed min/max.

    Differences from TensorRT's published algorithm (which ORT's follows only loosely): the
    histogram is signed, not of ``|x|``; windows have ``2i + 1`` bins around the centre bin;
    expanded ``Q`` counts are truncated to integers; ``P`` gets the outliers but ``Q`` does not.

    ORT's ``quantize_static`` uses ``num_bins=128, num_quantized_bins=128`` and puts all
    calibration batches in one histogram: with a single histogram of 128 bins there is only
    one window, so its "Entropy" ranges equal the min/max ranges. The defaults here
    (2048 / 2**(bits-1)) follow TensorRT so that the search has candidates; pass
    ``num_bins=128`` to reproduce ``quantize_static``.

    Parameters
    ----------
    num_bins : int
        Histogram bins of the first batch.
    num_quantized_bins : int or None
        Quantization levels of the candidate distributions; ``None`` for ``2**(bits-1)``
        (128 for 8-bit formats, as ORT and TensorRT use). At most ``num_bins``.
    """

    def __init__(self, fmt: IntFormat | str = "int8", *, num_bins: int = 2048,
                 num_quantized_bins: int | None = None, **options: Any) -> None:
        super().__init__(fmt, num_bins, **options)
        nq = 1 << (self.fmt.bits - 1) if num_quantized_bins is None else num_quantized_bins
        self.num_quantized_bins = _check_int(nq, "num_quantized_bins", 1)
        if self.num_quantized_bins > self.num_bins:
            raise ConfigError(
                f"num_quantized_bins ({self.num_quantized_bins}) must not exceed num_bins "
                f"({self.num_bins})"
            )

    def _threshold(self, hist: Any) -> tuple[np.float32, np.float32]:
        return _entropy_threshold(hist.counts, hist.edges, self.num_quantized_bins)


# --------------------------------------------------------------------------------------------
# MSE: a vectorised per-channel histogram and a search over clipping ranges
# --------------------------------------------------------------------------------------------

_NO_DATA_EXPONENT = np.iinfo(np.int64).min // 2


class _PowerOfTwoHistogram:
    """Per-channel histograms with ``num_bins`` bins over ``[-L_c, L_c]``, ``L_c`` a power of two.

    ``L_c`` is the smallest power of two ``>= max |x|`` of the channel; when data exceeds it,
    ``L_c`` doubles and pairs of bins merge into the middle half, so counts are never
    redistributed approximately. Exact zeros are counted apart (they quantize without error).
    With ``num_bins`` a power of two up to 2**20 and float32 data, the bin index is computed
    exactly in float64.
    """

    def __init__(self, channels: int, num_bins: int) -> None:
        self.num_bins = num_bins
        self.counts = np.zeros((channels, num_bins), dtype=np.int64)
        self.zeros = np.zeros(channels, dtype=np.int64)
        self.exponent = np.full(channels, _NO_DATA_EXPONENT, dtype=np.int64)

    def add(self, data: np.ndarray) -> None:
        absmax = np.abs(data).max(axis=1).astype(np.float64)
        mantissa, exp = np.frexp(absmax)
        need = np.where(mantissa == 0.5, exp - 1, exp).astype(np.int64)  # 2**need >= absmax
        need = np.where(absmax == 0, _NO_DATA_EXPONENT, need)
        fresh = (self.exponent == _NO_DATA_EXPONENT) & (need != _NO_DATA_EXPONENT)
        self.exponent[fresh] = need[fresh]  # a channel with only zeros so far has no counts
        while True:
            grow = need > self.exponent
            if not np.any(grow):
                break
            self._double(grow)
        nonzero = data != 0
        empty = self.exponent == _NO_DATA_EXPONENT
        scale = np.where(empty, 1.0, np.ldexp(1.0, -np.where(empty, 0, self.exponent)))[:, None]
        half = self.num_bins // 2
        index = np.floor(data.astype(np.float64) * scale * half).astype(np.int64) + half
        np.clip(index, 0, self.num_bins - 1, out=index)
        index += (np.arange(data.shape[0]) * self.num_bins)[:, None]
        self.counts += np.bincount(index[nonzero], minlength=self.counts.size).reshape(self.counts.shape)
        self.zeros += np.count_nonzero(~nonzero, axis=1)

    def _double(self, rows: np.ndarray) -> None:
        b = self.num_bins
        pairs = self.counts[rows].reshape(-1, b // 2, 2).sum(axis=2)
        merged = np.zeros((pairs.shape[0], b), dtype=np.int64)
        merged[:, b // 4:b // 4 + b // 2] = pairs
        self.counts[rows] = merged
        self.exponent[rows] += 1

    def centres(self) -> np.ndarray:
        """Bin centres, float64, shape ``(channels, num_bins)`` (zeros for empty channels)."""
        b = self.num_bins
        unit = (2 * np.arange(b) + 1 - b) / b  # centre of bin j in [-1, 1], exact for b = 2**k
        empty = self.exponent == _NO_DATA_EXPONENT
        limit = np.where(empty, 0.0, np.ldexp(1.0, np.where(empty, 0, self.exponent)))
        return limit[:, None] * unit[None, :]


class MSEObserver(Observer):
    """Clipping range that minimises the quantization mean squared error.

    Values are collected in a per-channel power-of-two histogram (:class:`_PowerOfTwoHistogram`,
    vectorised over channels). Candidate ranges are ``[a * min, a * max]`` for
    ``a = k / num_candidates``, ``k = 1 .. num_candidates`` (``min``/``max`` the exact observed
    extremes); for each candidate the parameters come from :func:`compute_params` and the error
    is ``sum(count * (fake_quantize(centre) - centre)**2)`` over the bins, with each value
    represented by its bin centre. The candidate with the smallest error wins; on a tie, the
    wider range. ``a = 1`` is the min/max range, so the result is never worse than
    :class:`MinMaxObserver` by this measure.

    Parameters
    ----------
    num_candidates : int
        Number of clipping ratios tried.
    num_bins : int
        Bins per channel, a power of two from 8 to 2**20 (resolution ``2 L / num_bins``).
    """

    def __init__(self, fmt: IntFormat | str = "int8", *, num_candidates: int = 100,
                 num_bins: int = 2048, **options: Any) -> None:
        super().__init__(fmt, **options)
        self.num_candidates = _check_int(num_candidates, "num_candidates", 1)
        bins = _check_int(num_bins, "num_bins", 8, 1 << 20)
        if bins & (bins - 1):
            raise ConfigError(f"num_bins must be a power of two between 8 and {1 << 20}, not {bins}")
        self.num_bins = bins
        self._hist: _PowerOfTwoHistogram | None = None

    def _update(self, data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        if self._hist is None:
            self._hist = _PowerOfTwoHistogram(data.shape[0], self.num_bins)
        self._hist.add(data)

    def candidate_errors(self) -> tuple[np.ndarray, np.ndarray]:
        """Clipping ratios ``a`` (descending) and the histogram MSE of each, shape
        ``(num_candidates, channels)``."""
        if self.batches == 0:
            self.compute_range()  # raises the "no calibration data" error
        hist = self._hist
        channels = hist.counts.shape[0]
        ratios = (np.arange(self.num_candidates, 0, -1) / self.num_candidates).astype(np.float32)
        # Only occupied bins contribute; per-channel weights often occupy a fraction of them.
        rows, cols = np.nonzero(hist.counts)
        centres = hist.centres()[rows, cols].astype(np.float32)
        weights = hist.counts[rows, cols].astype(np.float64)
        total = (hist.counts.sum(axis=1) + hist.zeros).astype(np.float64)
        errors = np.zeros((ratios.size, channels))
        if rows.size == 0:
            return ratios, errors  # only zeros observed: every range is exact
        chunk = max(1, (1 << 22) // rows.size)  # bound the temporaries to about 4 M elements
        for start in range(0, ratios.size, chunk):
            r = ratios[start:start + chunk, None]
            k = r.shape[0]
            params = compute_params((r * self._min).ravel(), (r * self._max).ravel(), self.fmt,
                                    self.symmetric, self.reduce_range, axis=0)
            # One (candidate, channel) parameter pair per occupied bin, as a per-element axis.
            which = (np.arange(k)[:, None] * channels + rows[None, :]).ravel()
            each = QuantParams(params.scale[which], params.zero_point[which], params.fmt, axis=0)
            x = np.tile(centres, k)
            diff = fake_quantize(x, each).astype(np.float64) - x
            sse = np.bincount(which, weights=diff * diff * np.tile(weights, k), minlength=k * channels)
            errors[start:start + k] = sse.reshape(k, channels) / total
        return ratios, errors

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        ratios, errors = self.candidate_errors()
        best = np.argmin(errors, axis=0)  # first minimum = widest range on ties
        r = ratios[best]
        return r * self._min, r * self._max


#: Observers by name, for configuration files and :func:`make_observer`.
OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}


def make_observer(name: str, **options: Any) -> Observer:
    """Build an observer by name (``minmax``, ``moving_average``, ``percentile``, ``mse``,
    ``entropy``) with the given keyword options."""
    try:
        cls = OBSERVERS[name]
    except (KeyError, TypeError):
        names = ", ".join(OBSERVERS)
        raise ConfigError(f"unknown observer {name!r}: expected one of {names}") from None
    return cls(**options)
