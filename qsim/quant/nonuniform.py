"""Power-of-two (logarithmic) weight quantization: weights become 0 or ``±2**k``.

This module owns the code layout of power-of-two weights, how a real weight is rounded to
the nearest code (in the linear or in the log domain, both decided exactly), and how the
largest exponent is chosen per tensor or per channel. A multiplication by ``±2**k`` is a
shift and a conditional negation in hardware, which is why such codes are used for weights.

Code layout (``bits`` bits, sign-magnitude)::

    bit  bits-1 | bits-2 ... 0
         sign   | exponent field f   (f = 0 means the value 0)

    value(code) = 0                                    if f == 0
                = (-1)**sign * 2**(min_exponent + f - 1)  if f >= 1

``f`` runs over ``1 .. levels`` with ``levels = 2**(bits-1) - 1``, so the magnitudes are
``2**min_exponent .. 2**max_exponent`` with ``min_exponent = max_exponent - levels + 1``.
Zero is always encoded with sign 0; the code ``1 << (bits-1)`` ("minus zero") is never produced
and decodes to 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from qsim.errors import ConfigError

__all__ = [
    "Pow2Params",
    "POW2_ROUNDINGS",
    "pow2_levels",
    "choose_max_exponent",
    "quantize_pow2",
    "dequantize_pow2",
    "fake_quantize_pow2",
    "pow2_grid",
]

MIN_POW2_BITS = 2
MAX_POW2_BITS = 8
#: Exponents whose powers of two are exact float32 numbers (subnormals included).
MIN_EXPONENT, MAX_EXPONENT = -149, 127

#: ``linear``: nearest value (midpoints ``1.5 * 2**k``); ``log``: nearest exponent
#: (midpoints ``sqrt(2) * 2**k``).
POW2_ROUNDINGS = ("linear", "log")


def _sqrt_half_ceiling() -> float:
    """The smallest float64 ``>= 1/sqrt(2)``: ``m >= c`` is then exactly ``m >= 1/sqrt(2)``
    for every float64 ``m`` (``1/sqrt(2)`` is irrational, so no float equals it)."""
    c = float(np.sqrt(0.5))
    if Fraction(c) ** 2 < Fraction(1, 2):
        c = float(np.nextafter(c, 1.0))
    return c


_LOG_MIDPOINT_MANTISSA = _sqrt_half_ceiling()
_LINEAR_MIDPOINT_MANTISSA = 0.75  # 1.5 * 2**k has frexp mantissa 0.75


def pow2_levels(bits: int) -> int:
    """Number of non-zero magnitudes of a ``bits``-bit code: ``2**(bits-1) - 1``."""
    return (1 << (_check_bits(bits) - 1)) - 1


def _check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ConfigError(f"bits must be an int, not {bits!r}")
    if not MIN_POW2_BITS <= bits <= MAX_POW2_BITS:
        raise ConfigError(
            f"power-of-two codes need between {MIN_POW2_BITS} and {MAX_POW2_BITS} bits "
            f"(a sign bit and an exponent field), not {bits}"
        )
    return int(bits)


def _check_rounding(rounding: Any) -> str:
    if rounding not in POW2_ROUNDINGS:
        raise ConfigError(f"rounding must be 'linear' or 'log', not {rounding!r}")
    return rounding


@dataclass(frozen=True, eq=False)
class Pow2Params:
    """Parameters of a power-of-two quantized tensor.

    Parameters
    ----------
    bits : int
        Code width, 2 to 8 (one sign bit, ``bits - 1`` exponent bits).
    max_exponent : array-like of int
        Largest exponent: scalar per tensor, 1-D (one per channel) with ``axis``.
    axis : int or None
        Channel axis of per-channel exponents.
    rounding : str
        ``"linear"`` or ``"log"``, recorded so that the same rule is used everywhere.
    """

    bits: int
    max_exponent: np.ndarray
    axis: int | None = None
    rounding: str = "linear"

    def __post_init__(self) -> None:
        bits = _check_bits(self.bits)
        _check_rounding(self.rounding)
        kmax = np.asarray(self.max_exponent)
        if kmax.dtype.kind not in "iu":
            if kmax.dtype.kind == "f" and np.all(np.isfinite(kmax)) and np.all(kmax == np.round(kmax)):
                kmax = kmax.astype(np.int64)
            else:
                raise ConfigError(f"max_exponent must be integers, not {kmax.dtype} values")
        kmax = kmax.astype(np.int64)
        if self.axis is None and kmax.ndim != 0:
            raise ConfigError(
                f"per-tensor power-of-two parameters need a scalar max_exponent, not shape "
                f"{kmax.shape}; give axis= for per-channel exponents"
            )
        if self.axis is not None and kmax.ndim != 1:
            raise ConfigError(f"per-channel max_exponent must be 1-D, not shape {kmax.shape}")
        levels = (1 << (bits - 1)) - 1
        low, high = MIN_EXPONENT + levels - 1, MAX_EXPONENT
        bad = (kmax < low) | (kmax > high)
        if np.any(bad):
            value = int(kmax[bad].ravel()[0])
            raise ConfigError(
                f"max_exponent {value} puts the {bits}-bit codes outside float32: it must be "
                f"between {low} and {high}"
            )
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "max_exponent", kmax)

    @property
    def levels(self) -> int:
        """Non-zero magnitudes: ``2**(bits-1) - 1``."""
        return (1 << (self.bits - 1)) - 1

    @property
    def min_exponent(self) -> np.ndarray:
        """Smallest exponent: ``max_exponent - levels + 1``."""
        return self.max_exponent - (self.levels - 1)

    def broadcast(self, shape: tuple[int, ...]) -> np.ndarray:
        """``max_exponent`` reshaped to broadcast against a tensor of ``shape``."""
        if self.axis is None:
            return self.max_exponent
        ndim = len(shape)
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 0 <= axis < ndim:
            raise ConfigError(f"axis {self.axis} is out of range for a tensor of shape {shape}")
        if shape[axis] != self.max_exponent.size:
            raise ConfigError(
                f"{self.max_exponent.size} per-channel exponents do not match axis {self.axis} "
                f"of shape {shape} ({shape[axis]} channels)"
            )
        view = [1] * ndim
        view[axis] = shape[axis]
        return self.max_exponent.reshape(view)

    def __repr__(self) -> str:
        gran = "per-tensor" if self.axis is None else f"axis={self.axis}"
        return (f"Pow2Params(bits={self.bits}, {gran}, max_exponent="
                f"{self.max_exponent.tolist()}, rounding={self.rounding!r})")


def _weights(w: Any) -> np.ndarray:
    try:
        arr = np.asarray(w)
    except (TypeError, ValueError):
        raise ConfigError(f"weights must be a numeric array, not {type(w).__name__}") from None
    if arr.dtype.kind not in "fiu":
        raise ConfigError(f"weights must be a numeric array, not dtype {arr.dtype}")
    # float64 holds float16/float32 weights exactly, so every decision below is exact.
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if np.any(bad):
        raise ConfigError(
            f"weights have {int(np.count_nonzero(bad))} non-finite value(s); power-of-two "
            f"quantization needs finite weights"
        )
    return arr


def _round_exponent(magnitude: np.ndarray, rounding: str) -> np.ndarray:
    """Exponent ``k`` of the power of two nearest to each positive ``magnitude``.

    With ``magnitude = m * 2**e`` (``numpy.frexp``, ``0.5 <= m < 1``), the candidates are
    ``2**(e-1)`` and ``2**e``; ``2**e`` is chosen when ``m >= 0.75`` (linear domain: at or above
    the midpoint ``1.5 * 2**(e-1)``; a tie goes to the larger magnitude) or when
    ``m >= 1/sqrt(2)`` (log domain: ``log2(magnitude)`` at or above ``e - 1/2``; no float can
    tie). Both comparisons are exact.
    """
    mantissa, exp = np.frexp(magnitude)
    threshold = _LINEAR_MIDPOINT_MANTISSA if rounding == "linear" else _LOG_MIDPOINT_MANTISSA
    return (exp - 1 + (mantissa >= threshold)).astype(np.int64)


def choose_max_exponent(w: Any, bits: int, *, axis: int | None = None,
                        rounding: str = "linear") -> Pow2Params:
    """Largest exponent for ``w``: the largest ``|w|`` (per tensor or per channel) rounded to a
    power of two with the same rule as the weights.

    In the linear domain this is INQ's ``floor(log2(4 * max|w| / 3))`` (Zhou et al. 2017):
    weights up to ``1.5 * 2**max_exponent`` round to the top level, larger ones saturate.
    An all-zero tensor or channel gets ``max_exponent = 0`` (every code is then 0).
    """
    bits = _check_bits(bits)
    rounding = _check_rounding(rounding)
    arr = _weights(w)
    if arr.size == 0:
        raise ConfigError(f"cannot choose an exponent for empty weights (shape {arr.shape})")
    if axis is None:
        top = np.abs(arr).max()
    else:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) \
                or not -arr.ndim <= axis < arr.ndim:
            raise ConfigError(f"axis {axis!r} is out of range for weights of shape {arr.shape}")
        top = np.abs(np.moveaxis(arr, axis, 0)).reshape(arr.shape[axis], -1).max(axis=1)
    kmax = np.where(top > 0, _round_exponent(np.where(top > 0, top, 1.0), rounding), 0)
    levels = (1 << (bits - 1)) - 1
    low = MIN_EXPONENT + levels - 1
    # Weights too small for float32 codes get the smallest usable exponent (they quantize to 0
    # or to its smallest levels), weights beyond float32 are rejected by Pow2Params.
    kmax = np.maximum(kmax, low)
    return Pow2Params(bits, kmax.astype(np.int64), axis=None if axis is None else int(axis),
                      rounding=rounding)


def quantize_pow2(w: Any, bits: int | None = None, *, params: Pow2Params | None = None,
                  max_exponent: Any = None, axis: int | None = None,
                  rounding: str = "linear") -> tuple[np.ndarray, Pow2Params]:
    """Round weights to ``0`` or ``±2**k`` and return their codes.

    Each weight goes to the nearest representable value under ``rounding``:

    * ``"linear"`` (default): nearest in value. The decision point between ``2**k`` and
      ``2**(k+1)`` is the arithmetic midpoint ``1.5 * 2**k`` (ties to the larger magnitude),
      and between 0 and ``2**min_exponent`` it is ``2**(min_exponent - 1)`` (ties to
      ``2**min_exponent``). This minimises ``|w - q(w)|`` for every weight, hence the squared
      error and the SQNR that the rest of qsim measures.
    * ``"log"``: nearest in ``log2|w|`` (LogQuant, Miyashita et al. 2016): decision point
      ``sqrt(2) * 2**k``, the geometric mean; 0 is treated as the level
      ``2**(min_exponent - 1)``, so ``|w| < 2**(min_exponent - 1/2)`` becomes 0. This minimises
      the relative error and is what a datapath that rounds ``log2|w|`` directly computes.

    Magnitudes above ``2**max_exponent`` saturate to it. Both rules are decided exactly from
    the float64 mantissa (``numpy.frexp``), so there is no ``log2`` rounding anywhere.

    Parameters
    ----------
    w : array-like
        Float weights (any float dtype; exact in float64).
    bits : int
        Code width, 2 to 8. Needed unless ``params`` is given.
    params : Pow2Params, optional
        Use these parameters (bits, exponents, axis and rounding) instead of choosing them.
    max_exponent : int or array-like, optional
        Largest exponent (per channel with ``axis``); by default :func:`choose_max_exponent`.
    axis : int or None
        Channel axis for per-channel exponents.
    rounding : str
        ``"linear"`` or ``"log"``.

    Returns
    -------
    codes : numpy.ndarray
        int64 codes in ``[0, 2**bits - 1]``, laid out as the module docstring shows.
    params : Pow2Params
    """
    arr = _weights(w)
    if params is None:
        if bits is None:
            raise ConfigError("quantize_pow2 needs bits (or params)")
        if max_exponent is None:
            params = choose_max_exponent(arr, bits, axis=axis, rounding=rounding)
        else:
            params = Pow2Params(bits, np.asarray(max_exponent), axis=axis,
                                rounding=_check_rounding(rounding))
    kmax = params.broadcast(arr.shape)
    kmin = kmax - (params.levels - 1)
    magnitude = np.abs(arr)
    positive = magnitude > 0
    k = _round_exponent(np.where(positive, magnitude, 1.0), params.rounding)
    k = np.minimum(k, kmax)
    if params.rounding == "linear":
        # Below 2**kmin the choice is between 0 and 2**kmin: midpoint 2**(kmin - 1).
        keep = magnitude >= np.ldexp(1.0, kmin - 1)
    else:
        # The log rule already rounded to kmin - 1 or below exactly when |w| < 2**(kmin - 1/2).
        keep = k >= kmin
    k = np.maximum(k, kmin)
    field = np.where(positive & keep, k - kmin + 1, 0).astype(np.int64)
    sign = (arr < 0) & (field > 0)
    codes = (sign.astype(np.int64) << (params.bits - 1)) | field
    return codes, params


def dequantize_pow2(codes: Any, params: Pow2Params) -> np.ndarray:
    """float32 values of power-of-two codes (exact: every level is a float32 power of two)."""
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise ConfigError(f"power-of-two codes must be integers, not dtype {c.dtype}")
    c = c.astype(np.int64)
    top = (1 << params.bits) - 1
    if c.size and (c.min() < 0 or c.max() > top):
        bad = int(c[(c < 0) | (c > top)].ravel()[0])
        raise ConfigError(f"code {bad} does not fit {params.bits} bits (0 to {top})")
    kmax = params.broadcast(c.shape)
    kmin = kmax - (params.levels - 1)
    field = c & ((1 << (params.bits - 1)) - 1)
    negative = (c >> (params.bits - 1)) & 1
    exponent = np.where(field > 0, kmin + field - 1, 0)
    magnitude = np.where(field > 0, np.ldexp(np.float32(1), exponent.astype(np.int32)), np.float32(0))
    return np.where(negative == 1, -magnitude, magnitude).astype(np.float32)


def fake_quantize_pow2(w: Any, bits: int | None = None, **options: Any) -> np.ndarray:
    """``dequantize_pow2(*quantize_pow2(w, bits, ...))``: the float32 values the codes stand for."""
    codes, params = quantize_pow2(w, bits, **options)
    return dequantize_pow2(codes, params)


def pow2_grid(params: Pow2Params, channel: int | None = None) -> np.ndarray:
    """Sorted float32 values representable by ``params`` (of one channel when per channel)."""
    kmax = params.max_exponent
    if params.axis is not None:
        if channel is None:
            raise ConfigError("per-channel power-of-two parameters need channel= for the grid")
        kmax = kmax[channel]
    elif channel is not None:
        raise ConfigError("per-tensor power-of-two parameters have no channels")
    exps = np.arange(int(kmax) - params.levels + 1, int(kmax) + 1)
    pos = np.ldexp(np.float32(1), exps.astype(np.int32)).astype(np.float32)
    return np.concatenate([-pos[::-1], [np.float32(0)], pos]).astype(np.float32)
