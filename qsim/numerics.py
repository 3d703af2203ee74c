"""Integer bit semantics shared by the model, the quantizers and every RTL check.

This module owns the meaning of a fixed-point integer format: its range, what wrapping and
saturation do, how a real number or a rational is rounded to an integer under each named
rounding mode, how a rounding right shift behaves, how narrow integers are packed into bytes,
and how overflow is reported. Everything here is exact: integer arithmetic stays in int64
(or Python integers where int64 could overflow), and no result depends on float rounding.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from qsim.errors import ConfigError, QsimOverflowError

__all__ = [
    "IntFormat",
    "Rounding",
    "Overflow",
    "INT2",
    "UINT2",
    "INT4",
    "UINT4",
    "INT8",
    "UINT8",
    "INT16",
    "UINT16",
    "INT32",
    "UINT32",
    "wrap",
    "saturate",
    "round_float",
    "round_div",
    "round_shift",
    "find_overflows",
    "check_fits",
    "pack_bits",
    "unpack_bits",
    "pack_int4",
    "unpack_int4",
    "pack_int2",
    "unpack_int2",
    "int_matmul",
]

MIN_BITS = 2
MAX_BITS = 64  # signed; unsigned formats stop at 63 bits so that every value fits int64


@dataclass(frozen=True)
class IntFormat:
    """A two's-complement (``signed``) or unsigned integer format of ``bits`` bits.

    Parameters
    ----------
    bits : int
        Width in bits: 2 to 64 when signed, 2 to 63 when unsigned (all arithmetic is int64).
    signed : bool
        Two's complement when true, unsigned otherwise.
    """

    bits: int
    signed: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)):
            raise TypeError(f"IntFormat bits must be an int, not {self.bits!r}")
        if not isinstance(self.signed, (bool, np.bool_)):
            raise TypeError(f"IntFormat signed must be a bool, not {self.signed!r}")
        top = MAX_BITS if self.signed else MAX_BITS - 1
        if not MIN_BITS <= self.bits <= top:
            kind = "signed" if self.signed else "unsigned"
            raise ValueError(
                f"IntFormat bits must be between {MIN_BITS} and {top} for {kind} formats, "
                f"not {self.bits}"
            )
        object.__setattr__(self, "bits", int(self.bits))
        object.__setattr__(self, "signed", bool(self.signed))

    @property
    def min(self) -> int:
        """Smallest representable value."""
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        """Largest representable value."""
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def name(self) -> str:
        """Canonical name, for example ``int8`` or ``uint4``."""
        return f"{'' if self.signed else 'u'}int{self.bits}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str | IntFormat) -> IntFormat:
        """Parse a canonical name such as ``"int8"`` or ``"uint4"``."""
        if isinstance(text, IntFormat):
            return text
        if not isinstance(text, str):
            raise TypeError(f"integer format must be a name like 'int8', not {text!r}")
        name = text.strip().lower()
        signed = not name.startswith("u")
        digits = name[3:] if signed else name[4:]
        prefix = "int" if signed else "uint"
        if not name.startswith(prefix) or not digits.isdigit():
            raise ValueError(
                f"integer format must be a name like 'int8' or 'uint4', not {text!r}"
            )
        return cls(int(digits), signed)

    def contains(self, values: np.ndarray | int) -> np.ndarray | bool:
        """Element-wise: is each value representable in this format?"""
        v = np.asarray(values)
        result = (v >= self.min) & (v <= self.max)
        return bool(result) if result.ndim == 0 else result

    def numpy_dtype(self) -> np.dtype:
        """The narrowest numpy integer dtype that holds every value of this format."""
        return _NUMPY_DTYPES[(self.bits, self.signed)]


_NUMPY_DTYPES = {(bits, signed): np.dtype(f"{'' if signed else 'u'}int{next(w for w in (8, 16, 32, 64) if bits <= w)}")
                 for bits in range(MIN_BITS, MAX_BITS + 1) for signed in (True, False)}

INT2 = IntFormat(2, True)
UINT2 = IntFormat(2, False)
INT4 = IntFormat(4, True)
UINT4 = IntFormat(4, False)
INT8 = IntFormat(8, True)
UINT8 = IntFormat(8, False)
INT16 = IntFormat(16, True)
UINT16 = IntFormat(16, False)
INT32 = IntFormat(32, True)
UINT32 = IntFormat(32, False)


class Rounding(str, enum.Enum):
    """Named rounding modes for turning a real (or rational) value into an integer.

    ``HALF_EVEN`` ties to the even neighbour (IEEE ``roundTiesToEven``, numpy ``rint``, the
    ONNX QuantizeLinear rule); ``HALF_AWAY`` ties away from zero (C ``round``, gemmlowp's
    ``RoundingDivideByPOT``); ``HALF_UP`` ties toward +infinity (``floor(x + 1/2)``, the classic
    add-half-then-shift in hardware, and gemmlowp's ``SaturatingRoundingDoublingHighMul``); ``HALF_DOWN`` ties toward -infinity;
    ``FLOOR`` toward -infinity (an arithmetic right shift); ``CEIL`` toward +infinity;
    ``TOWARD_ZERO`` truncation (C integer division).
    """

    HALF_EVEN = "half_even"
    HALF_AWAY = "half_away"
    HALF_UP = "half_up"
    HALF_DOWN = "half_down"
    FLOOR = "floor"
    CEIL = "ceil"
    TOWARD_ZERO = "toward_zero"

    @classmethod
    def parse(cls, mode: str | Rounding) -> Rounding:
        """Accept a member or its value; reject anything else with the list of names."""
        if isinstance(mode, Rounding):
            return mode
        try:
            return cls(str(mode))
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ConfigError(f"rounding mode must be one of {names}, not {mode!r}") from None


def _as_int64(values: np.ndarray | int | Iterable[int], what: str) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype == object:
        try:
            v = v.astype(np.int64)
        except OverflowError:
            raise QsimOverflowError(f"{what} does not fit in int64") from None
    if not np.issubdtype(v.dtype, np.integer):
        raise TypeError(f"{what} must be an integer array, not dtype {v.dtype}")
    if v.dtype == np.uint64 and v.size and int(v.max()) > np.iinfo(np.int64).max:
        raise QsimOverflowError(f"{what} does not fit in int64")
    return v.astype(np.int64, copy=False)


def wrap(values: np.ndarray | int, fmt: IntFormat) -> np.ndarray:
    """Two's-complement wrap-around into ``fmt`` (what a register of that width keeps)."""
    v = _as_int64(values, "wrap input")
    if fmt.bits == 64:  # int64 arithmetic already wraps at 64 bits
        return np.array(v, dtype=np.int64)
    low = v & np.int64((1 << fmt.bits) - 1)
    if fmt.signed:
        low = np.where(low >= (1 << (fmt.bits - 1)), low - np.int64(1 << fmt.bits), low)
    return np.asarray(low, dtype=np.int64)


def saturate(values: np.ndarray | int, fmt: IntFormat) -> np.ndarray:
    """Clip into the range of ``fmt``."""
    return np.clip(_as_int64(values, "saturate input"), fmt.min, fmt.max)


def round_float(values: np.ndarray | float, mode: Rounding | str = Rounding.HALF_EVEN) -> np.ndarray:
    """Round floating-point values to integers (as float64, exactly) under ``mode``.

    The result is float64 so that values beyond int64 and non-finite inputs pass through;
    the fraction ``x - floor(x)`` is exact in binary floating point, so ties are decided on
    the true value, not on a rounded ``x + 0.5``.
    """
    mode = Rounding.parse(mode)
    x = np.asarray(values, dtype=np.float64)
    if mode is Rounding.HALF_EVEN:
        return np.rint(x)
    if mode is Rounding.FLOOR:
        return np.floor(x)
    if mode is Rounding.CEIL:
        return np.ceil(x)
    if mode is Rounding.TOWARD_ZERO:
        return np.trunc(x)
    lower = np.floor(x)
    with np.errstate(invalid="ignore"):  # inf - inf for infinite x; masked out below
        frac = x - lower  # exact for finite x
    up = frac > 0.5
    tie = frac == 0.5
    if mode is Rounding.HALF_UP:
        up = up | tie
    elif mode is Rounding.HALF_AWAY:
        up = up | (tie & (x > 0))
    # HALF_DOWN: ties stay at the lower neighbour
    return np.where(np.isfinite(x), lower + up, x)


def round_div(numerator: np.ndarray | int, denominator: np.ndarray | int,
              mode: Rounding | str = Rounding.HALF_EVEN) -> np.ndarray:
    """Exact integer quotient ``numerator / denominator`` rounded under ``mode``.

    Both operands are integers (int64); the denominator must be positive. This is the exact
    rational rounding that every fixed-point rescaling reduces to.
    """
    mode = Rounding.parse(mode)
    n = _as_int64(numerator, "numerator")
    d = _as_int64(denominator, "denominator")
    if np.any(d <= 0):
        raise ValueError("round_div denominator must be positive")
    q, r = np.divmod(n, d)  # floor division: 0 <= r < d
    twice = 2 * r
    if mode is Rounding.FLOOR:
        up = np.zeros_like(q, dtype=bool)
    elif mode is Rounding.CEIL:
        up = r != 0
    elif mode is Rounding.TOWARD_ZERO:
        up = (r != 0) & (n < 0)
    elif mode is Rounding.HALF_UP:
        up = twice >= d
    elif mode is Rounding.HALF_DOWN:
        up = twice > d
    elif mode is Rounding.HALF_AWAY:
        up = (twice > d) | ((twice == d) & (n > 0))
    else:  # HALF_EVEN
        up = (twice > d) | ((twice == d) & (q % 2 == 1))
    return np.asarray(q + up, dtype=np.int64)


def round_shift(values: np.ndarray | int, shift: np.ndarray | int,
                mode: Rounding | str = Rounding.HALF_EVEN) -> np.ndarray:
    """Rounding arithmetic right shift: ``values / 2**shift`` rounded under ``mode``.

    ``shift`` may be an array broadcast against ``values`` (per-channel shifts); each element
    must be in 0..62. A shift of 0 returns the input unchanged. ``FLOOR`` is the plain
    arithmetic shift ``>>``; ``HALF_UP`` is ``(x + 2**(s-1)) >> s``.
    """
    s = _as_int64(shift, "shift")
    if np.any(s < 0) or np.any(s > 62):
        bad = s[(s < 0) | (s > 62)].ravel()[0]
        raise ValueError(f"shift must be between 0 and 62, not {int(bad)}")
    return round_div(values, np.left_shift(np.int64(1), s), mode)


@dataclass(frozen=True)
class Overflow:
    """One element that does not fit a format: where it is, its value, and by how much."""

    index: tuple[int, ...]
    value: int
    excess: int  # value - max (positive) or value - min (negative)

    def describe(self, name: str, fmt: IntFormat) -> str:
        where = f"{name}[{', '.join(map(str, self.index))}]" if self.index else name
        side = "above" if self.excess > 0 else "below"
        bound = fmt.max if self.excess > 0 else fmt.min
        return (f"{where} = {self.value} is {abs(self.excess)} {side} the {fmt.name} "
                f"{'maximum' if self.excess > 0 else 'minimum'} {bound}")


def find_overflows(values: np.ndarray | int, fmt: IntFormat, limit: int | None = None) -> list[Overflow]:
    """Every element of ``values`` outside ``fmt`` (at most ``limit``), in C order."""
    v = np.asarray(values)
    if v.dtype != object:
        v = _as_int64(v, "values")
    too_high = v > fmt.max
    too_low = v < fmt.min
    bad = np.argwhere(np.asarray(too_high | too_low))
    if limit is not None:
        bad = bad[:limit]
    result = []
    for idx in bad:
        index = tuple(int(i) for i in idx)
        value = int(v[index]) if v.ndim else int(v)
        excess = value - fmt.max if value > fmt.max else value - fmt.min
        result.append(Overflow(index, value, excess))
    return result


def check_fits(values: np.ndarray | int, fmt: IntFormat, name: str = "value") -> None:
    """Raise :class:`QsimOverflowError` naming the elements that do not fit ``fmt``."""
    v = np.asarray(values)
    if v.dtype != object:
        v = _as_int64(v, name)
    count = int(np.count_nonzero((v > fmt.max) | (v < fmt.min)))
    if count == 0:
        return
    shown = find_overflows(v, fmt, limit=3)
    details = "; ".join(o.describe(name, fmt) for o in shown)
    more = f" (and {count - len(shown)} more)" if count > len(shown) else ""
    raise QsimOverflowError(
        f"{count} element{'s' if count != 1 else ''} of {name} overflow {fmt.name} "
        f"[{fmt.min}, {fmt.max}]: {details}{more}",
        overflows=shown,
        count=count,
    )


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers of ``bits`` (2 or 4) into bytes, lowest-order field first.

    ``values`` is flattened in C order; each value must fit ``bits`` bits as a signed or
    unsigned number (the caller's format decides the interpretation on unpack). The result
    has ``ceil(n * bits / 8)`` bytes; unused high fields of the last byte are zero. With
    ``bits=4`` this is the ONNX int4 layout: ``[1, -2, 7]`` packs to ``e1 07``.
    """
    if bits not in (2, 4):
        raise ValueError(f"pack_bits supports 2 or 4 bits, not {bits}")
    v = _as_int64(values, "values").ravel()
    lo, hi = -(1 << (bits - 1)), (1 << bits) - 1
    if v.size and (v.min() < lo or v.max() > hi):
        bad = v[(v < lo) | (v > hi)][0]
        raise QsimOverflowError(
            f"value {int(bad)} does not fit in {bits} bits (allowed {lo} to {hi})"
        )
    per_byte = 8 // bits
    fields = (v & ((1 << bits) - 1)).astype(np.uint8)
    pad = (-fields.size) % per_byte
    fields = np.concatenate([fields, np.zeros(pad, dtype=np.uint8)]).reshape(-1, per_byte)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(fields << shifts, axis=1).astype(np.uint8)


def unpack_bits(packed: np.ndarray | bytes, bits: int, count: int, signed: bool) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` fields of ``bits`` bits, as int64."""
    if bits not in (2, 4):
        raise ValueError(f"unpack_bits supports 2 or 4 bits, not {bits}")
    data = np.frombuffer(packed, dtype=np.uint8) if isinstance(packed, (bytes, bytearray)) \
        else np.asarray(packed, dtype=np.uint8).ravel()
    per_byte = 8 // bits
    needed = -(-count // per_byte)
    if count < 0 or data.size < needed:
        raise ValueError(
            f"{count} fields of {bits} bits need {needed} bytes, but {data.size} were given"
        )
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    fields = ((data[:needed, None] >> shifts) & ((1 << bits) - 1)).astype(np.int64).ravel()[:count]
    return wrap(fields, IntFormat(bits, signed)) if signed else fields


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Pack int4/uint4 values two per byte, low nibble first (the ONNX layout)."""
    return pack_bits(values, 4)


def unpack_int4(packed: np.ndarray | bytes, count: int, signed: bool = True) -> np.ndarray:
    """Unpack ``count`` int4 (or uint4) values packed low nibble first."""
    return unpack_bits(packed, 4, count, signed)


def pack_int2(values: np.ndarray) -> np.ndarray:
    """Pack int2/uint2 values four per byte, lowest two bits first (the ONNX layout)."""
    return pack_bits(values, 2)


def unpack_int2(packed: np.ndarray | bytes, count: int, signed: bool = True) -> np.ndarray:
    """Unpack ``count`` int2 (or uint2) values packed lowest bits first."""
    return unpack_bits(packed, 2, count, signed)


def _integer_array(values: np.ndarray | int, what: str) -> np.ndarray:
    """``values`` as an integer array without copying narrow dtypes (uint64 must fit int64)."""
    v = np.asarray(values)
    if v.dtype == object or (v.dtype == np.uint64 and v.size and int(v.max()) > np.iinfo(np.int64).max):
        return _as_int64(v, what)
    if not np.issubdtype(v.dtype, np.integer):
        raise TypeError(f"{what} must be an integer array, not dtype {v.dtype}")
    return v


def _magnitude(v: np.ndarray) -> int:
    """Largest ``|v|`` (two reductions, no temporary array)."""
    return max(-int(v.min(initial=0)), int(v.max(initial=0)))


def int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer matrix product ``a @ b`` as int64, at BLAS speed where that is exact.

    Floating-point BLAS is exact for integer operands as long as every partial sum is an
    integer below the format's significand limit (2**24 for float32, 2**53 for float64):
    then no rounding ever happens, whatever order the library sums in. The reduction is cut
    into chunks short enough to honour that bound and the chunk results are summed in int64.
    Where even float64 cannot be exact, numpy's int64 product is used (wrapping only if the
    true result exceeds int64, which is checked). Batched operands broadcast as in
    ``numpy.matmul``; narrow integer dtypes are converted straight to float, never copied to
    int64 first.
    """
    x = _integer_array(a, "a")
    y = _integer_array(b, "b")
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"int_matmul needs operands of at least one dimension, not {x.shape} @ {y.shape}")
    if x.shape[-1] != y.shape[-2 if y.ndim > 1 else 0]:
        raise ValueError(f"int_matmul shapes do not align: {x.shape} @ {y.shape}")
    k = x.shape[-1]
    bound = _magnitude(x) * _magnitude(y)
    if bound == 0 or k == 0:
        return np.matmul(x.astype(np.int64), y.astype(np.int64))
    for dtype, limit in ((np.float32, 1 << 24), (np.float64, 1 << 53)):
        chunk = limit // bound
        if chunk >= min(k, 128):
            xf = x.astype(dtype)
            yf = y.astype(dtype)
            if chunk >= k:
                return np.matmul(xf, yf).astype(np.int64)
            total = None
            for start in range(0, k, chunk):
                ys = yf[..., start:start + chunk, :] if yf.ndim > 1 else yf[start:start + chunk]
                part = np.matmul(xf[..., start:start + chunk], ys).astype(np.int64)
                total = part if total is None else total + part
            return total
    if bound * k >= 1 << 63:
        raise QsimOverflowError(
            f"int_matmul: |a| * |b| * K = {bound * k} may exceed int64; use narrower operands"
        )
    return np.matmul(x.astype(np.int64), y.astype(np.int64))
