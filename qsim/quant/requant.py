"""Requantization: int32 accumulators to narrow outputs, under each engine's exact semantics.

This module owns the step after an integer matrix product or convolution: scaling the
accumulator ``acc`` (which already includes any int32 bias) by the real multiplier
``M = in_scale * weight_scale[c] / out_scale``, rounding, adding the output zero point and
clamping to the output format. Each engine does this differently, and qsim reproduces each
one bit for bit as a named :class:`Semantics`:

* ``onnx``: the ONNX reference implementation (float32 multiplier, float64 product);
* ``onnxruntime``: ONNX Runtime's MLAS kernels (all float32);
* ``tflite``: TFLite's integer-only double rounding (gemmlowp primitives);
* ``tflite-single-rounding``: TFLite built with ``TFLITE_SINGLE_ROUNDING``;
* ``pytorch-fbgemm``: PyTorch's fbgemm backend (float32, ``cvtps2dq``; its float bias);
* ``fixed-point``: qsim's hardware requantizer (Q31 multiplier, one add-half-and-shift),
  :class:`FixedPointRequantizer`.

The integer building blocks of TFLite (``QuantizeMultiplier``,
``SaturatingRoundingDoublingHighMul``, ``RoundingDivideByPOT``,
``MultiplyByQuantizedMultiplier``) are public, vectorised over numpy arrays with int64
arithmetic, and refuse inputs on which the C++ originals would overflow int32 instead of
reproducing undefined behaviour.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from qsim.errors import ConfigError
from qsim.numerics import INT32, IntFormat, Rounding, check_fits, round_float, round_shift, saturate

__all__ = [
    "Semantics",
    "requantize",
    "quantize_multiplier",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier",
    "FixedPointRequantizer",
    "requantize_float32",
    "float32_multiplier",
    "litert_requantize",
    "LITERT_SEMANTICS",
    "LITERT_GEMM_OPS",
    "MAX_OUT_BITS",
]

INT32_MIN = INT32.min
INT32_MAX = INT32.max
#: Widest output format of :func:`requantize`.
MAX_OUT_BITS = 32
#: The fixed-point requantizer multiplies a 33-bit accumulator by a 31-bit multiplier: the
#: widest product that still fits int64 (|acc| <= 2**32, qm < 2**31).
FIXED_POINT_ACC = IntFormat(33, True)


class Semantics(str, enum.Enum):
    """The requantization semantics qsim reproduces; see :func:`requantize` for each."""

    ONNX = "onnx"
    ONNXRUNTIME = "onnxruntime"
    LITERT = "litert"
    LITERT_REFERENCE = "litert-reference"
    LITERT_OPTIMIZED = "litert-optimized"
    TFLITE_SINGLE_ROUNDING = "tflite-single-rounding"
    PYTORCH_FBGEMM = "pytorch-fbgemm"
    FIXED_POINT = "fixed-point"
    #: The old name ``tflite``: TFLite's gemmlowp double rounding, which is what the builtin
    #: reference kernels compute (an alias of ``litert-reference``).
    TFLITE = "litert-reference"

    @classmethod
    def _missing_(cls, value):
        return _ALIASES.get(value)

    @classmethod
    def parse(cls, name: str | Semantics) -> Semantics:
        """Accept a member, its value or an alias (``tflite``); reject anything else naming
        the valid values."""
        if isinstance(name, Semantics):
            return name
        try:
            return cls(str(name))
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ConfigError(
                f"requantization semantics must be one of {names} (or tflite, an alias of "
                f"litert-reference), not {name!r}"
            ) from None


#: Old names still accepted by :meth:`Semantics.parse`.
_ALIASES = {"tflite": Semantics.LITERT_REFERENCE}
#: The semantics of the LiteRT (TFLite) interpreter's kernels.
LITERT_SEMANTICS = (Semantics.LITERT, Semantics.LITERT_REFERENCE, Semantics.LITERT_OPTIMIZED)


# --------------------------------------------------------------------------- validation

def _int_array(values: np.ndarray | int, name: str) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype == np.bool_ or v.dtype.kind not in "iu":
        raise ConfigError(f"{name} must be integers, not dtype {v.dtype}")
    if v.dtype == np.uint64 and v.size and int(v.max()) > np.iinfo(np.int64).max:
        check_fits(v.astype(object), IntFormat(64, True), name)
    return v.astype(np.int64)


def _check_range(values: np.ndarray, low: int, high: int, what: str) -> None:
    bad = (values < low) | (values > high)
    if np.any(bad):
        raise ConfigError(
            f"{what} must be between {low} and {high}, not {int(values[bad].ravel()[0])}"
        )


def _positive_scale(value: np.ndarray | float, name: str, *, vector: bool) -> np.ndarray:
    """A float32 scale: scalar, or (``vector``) scalar or 1-D; each positive and finite."""
    scale = np.asarray(value)
    if scale.dtype == np.bool_ or scale.dtype.kind not in "fiu":
        raise ConfigError(f"{name} must be a real number, not dtype {scale.dtype}")
    # ONNX and TFLite store scales as float32; every semantics starts from those values.
    scale = scale.astype(np.float32)
    if vector:
        if scale.ndim > 1:
            raise ConfigError(
                f"{name} must be a scalar or 1-D (one per output channel), not shape {scale.shape}"
            )
    elif scale.size != 1:
        raise ConfigError(f"{name} must be a scalar, not shape {scale.shape}")
    elif scale.ndim:
        scale = scale.reshape(())
    bad = ~np.isfinite(scale) | (scale <= 0)
    if np.any(bad):
        where = f"{name}[{int(np.argwhere(bad)[0][0])}]" if scale.ndim else name
        raise ConfigError(f"{where} = {float(scale[bad][0])!r} is not a positive finite number")
    return scale


def _out_format(out_fmt: IntFormat | str) -> IntFormat:
    try:
        fmt = IntFormat.parse(out_fmt)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"out_fmt: {exc}") from None
    if fmt.bits > MAX_OUT_BITS:
        raise ConfigError(f"out_fmt must be at most {MAX_OUT_BITS} bits wide, not {fmt.name}")
    return fmt


def _zero_point(value: int, fmt: IntFormat) -> int:
    zp = np.asarray(value)
    if zp.size != 1 or zp.dtype == np.bool_ or zp.dtype.kind not in "iu":
        raise ConfigError(f"out_zero_point must be one integer, not {value!r}")
    zp_int = int(zp.reshape(()))
    if not fmt.min <= zp_int <= fmt.max:
        raise ConfigError(
            f"out_zero_point {zp_int} is outside {fmt.name} [{fmt.min}, {fmt.max}]"
        )
    return zp_int


def _channel_view(per_channel: np.ndarray, shape: tuple[int, ...], channel_axis: int,
                  name: str) -> np.ndarray:
    """Reshape a 0-d or 1-D per-channel array so that it broadcasts along ``channel_axis``."""
    if per_channel.size == 1:
        # One value, 0-d or shape (1,): per tensor, as ONNX treats a one-element scale.
        return per_channel.reshape(())
    ndim = len(shape)
    axis = channel_axis + ndim if channel_axis < 0 else channel_axis
    if not 0 <= axis < ndim:
        raise ConfigError(f"channel_axis {channel_axis} is out of range for acc of shape {shape}")
    if per_channel.shape[0] != shape[axis]:
        raise ConfigError(
            f"{name} has {per_channel.shape[0]} entries but axis {channel_axis} of acc shape "
            f"{shape} has {shape[axis]}"
        )
    view = [1] * ndim
    view[axis] = shape[axis]
    return per_channel.reshape(view)


# --------------------------------------------------------------------------- TFLite blocks

def quantize_multiplier(real_multiplier: np.ndarray | float, *,
                        single_rounding: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """TFLite ``QuantizeMultiplier``: ``real_multiplier ~= qm * 2**(shift - 31)``.

    Parameters
    ----------
    real_multiplier : array-like of float
        Non-negative, finite; used as float64 (TFLite's ``double``).
    single_rounding : bool
        Apply the ``TFLITE_SINGLE_ROUNDING`` build's extra rule: a shift above 30 is
        saturated to ``qm = 2**31 - 1, shift = 30``.

    Returns
    -------
    multiplier : np.ndarray
        int64 array of int32 values in ``[0, 2**31 - 1]`` (``[2**30, 2**31)`` unless zero).
    shift : np.ndarray
        int64 array: left shift if positive, right shift if negative.

    Notes
    -----
    tensorflow/lite/kernels/internal/quantization_util.cc: zero gives ``(0, 0)``; otherwise
    ``q, shift = frexp(M)`` (``0.5 <= q < 1``), ``qm = round_half_away(q * 2**31)``; a ``qm``
    that rounds up to ``2**31`` becomes ``2**30`` with ``shift + 1``; a shift below -31
    (``M < 2**-32`` roughly) flushes both to 0.
    """
    m = np.asarray(real_multiplier, dtype=np.float64)
    bad = ~np.isfinite(m) | (m < 0)
    if np.any(bad):
        raise ConfigError(
            f"real multiplier must be a finite non-negative number, not {float(m[bad][0])!r}"
        )
    fraction, exponent = np.frexp(m)
    # q * 2**31 is exact in float64 (a power-of-two scaling), so only the rounding is inexact.
    fixed = round_float(np.ldexp(fraction, 31), Rounding.HALF_AWAY).astype(np.int64)
    shift = exponent.astype(np.int64)
    carried = fixed == (1 << 31)
    fixed = np.where(carried, fixed // 2, fixed)
    shift = np.where(carried, shift + 1, shift)
    tiny = shift < -31
    fixed = np.where(tiny, 0, fixed)
    shift = np.where(tiny, 0, shift)
    if single_rounding:
        big = shift > 30
        fixed = np.where(big, (1 << 31) - 1, fixed)
        shift = np.where(big, 30, shift)
    return fixed.astype(np.int64), shift.astype(np.int64)


def saturating_rounding_doubling_high_mul(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul``: ``a * b / 2**31`` rounded (ARM VQRDMULH).

    Parameters
    ----------
    a, b : array-like of int
        int32 values; broadcast against each other.

    Returns
    -------
    np.ndarray
        int64 array of int32 values.

    Notes
    -----
    gemmlowp/fixedpoint/fixedpoint.h: ``INT32_MAX`` if ``a == b == INT32_MIN`` (the only
    product whose quotient exceeds int32); else ``(a*b + nudge) / 2**31`` with C's truncating
    division, ``nudge = 2**30`` if ``a*b >= 0`` else ``1 - 2**30``. Ties therefore go toward
    +infinity (``-0.5 -> 0``, ``0.5 -> 1``): round half up, not half away from zero.
    """
    x = _int_array(a, "a")
    y = _int_array(b, "b")
    check_fits(x, INT32, "a")
    check_fits(y, INT32, "b")
    product = x * y  # |a*b| <= 2**62 fits int64
    nudged = product + np.where(product >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    # C integer division truncates toward zero; numpy's // floors, so divide magnitudes.
    high = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))
    overflow = (x == INT32_MIN) & (y == INT32_MIN)
    return np.asarray(np.where(overflow, np.int64(INT32_MAX), high), dtype=np.int64)


def rounding_divide_by_pot(x: np.ndarray | int, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded half away from zero.

    Parameters
    ----------
    x : array-like of int
        int32 values.
    exponent : array-like of int
        0 to 31, broadcast against ``x`` (per-channel shifts).

    Returns
    -------
    np.ndarray
        int64 array of int32 values.

    Notes
    -----
    gemmlowp/fixedpoint/fixedpoint.h: ``mask = 2**e - 1``,
    ``threshold = (mask >> 1) + (x < 0)``, result ``(x >> e) + ((x & mask) > threshold)``.
    """
    v = _int_array(x, "x")
    e = _int_array(exponent, "exponent")
    check_fits(v, INT32, "x")
    _check_range(e, 0, 31, "exponent")
    mask = (np.int64(1) << e) - 1
    threshold = (mask >> 1) + (v < 0)
    return np.asarray((v >> e) + ((v & mask) > threshold), dtype=np.int64)


def multiply_by_quantized_multiplier(x: np.ndarray | int, quantized_multiplier: np.ndarray | int,
                                     shift: np.ndarray | int, single_rounding: bool = False
                                     ) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier(int32 x, int32 qm, int shift)``.

    Parameters
    ----------
    x : array-like of int
        int32 values (accumulators).
    quantized_multiplier : array-like of int
        0 to ``2**31 - 1``, broadcast against ``x``.
    shift : array-like of int
        -31 to 30, broadcast against ``x``.
    single_rounding : bool
        False: the default build (double rounding); True: ``TFLITE_SINGLE_ROUNDING``.

    Returns
    -------
    np.ndarray
        int64 array of int32 values.

    Raises
    ------
    QsimOverflowError
        Double rounding: when ``x * 2**max(shift, 0)`` leaves int32 (TFLite's int32 product
        would overflow). Single rounding: when the result leaves int32 (TFLite's DCHECK).

    Notes
    -----
    tensorflow/lite/kernels/internal/common.cc. Double rounding:
    ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2**max(shift, 0), qm),
    max(-shift, 0))``, two roundings (half up, then half away). Single rounding:
    ``(x * qm + 2**(30 - shift)) >> (31 - shift)``, one rounding, half up.
    """
    v = _int_array(x, "x")
    qm = _int_array(quantized_multiplier, "quantized multiplier")
    s = _int_array(shift, "shift")
    check_fits(v, INT32, "x")
    _check_range(qm, 0, INT32_MAX, "quantized multiplier")
    _check_range(s, -31, 30, "shift")
    if single_rounding:
        total = 31 - s
        result = (v * qm + (np.int64(1) << (total - 1))) >> total
        check_fits(result, INT32, "MultiplyByQuantizedMultiplier result")
        return np.asarray(result, dtype=np.int64)
    shifted = v << np.maximum(s, 0)
    check_fits(shifted, INT32, "x * 2**left_shift")
    high = saturating_rounding_doubling_high_mul(shifted, qm)
    return rounding_divide_by_pot(high, np.maximum(-s, 0))


# --------------------------------------------------------------------------- hardware

@dataclass(frozen=True, eq=False)
class FixedPointRequantizer:
    """The hardware requantizer: ``clamp(round((acc * qm) / 2**(31 - shift)) + zp)``.

    One integer multiplier (``qm``, Q31) and one rounding right shift per output channel,
    then the output zero point and a clamp: what a multiplier, an adder of ``2**(n-1)`` and
    an arithmetic shifter build. With the default ``HALF_UP`` rounding it is *identical* to
    TFLite's ``TFLITE_SINGLE_ROUNDING`` requantization (same multipliers, same
    ``(x*qm + 2**(n-1)) >> n``) on every int32 accumulator; it additionally accepts
    accumulators of up to 33 bits, for which TFLite has no definition.

    Parameters
    ----------
    multiplier : array-like of int
        Scalar or 1-D (per channel); each in ``[0, 2**31 - 1]``.
    shift : array-like of int
        Same shape as ``multiplier``; each in ``[-31, 30]`` so that the right shift
        ``31 - shift`` is 1 to 62.
    out_zero_point : int
        In ``out_fmt``.
    out_fmt : IntFormat or str
        Output format, at most 32 bits.
    rounding : Rounding or str
        Rounding of the shift; ``half_up`` (add half, then shift) by default.
    """

    multiplier: np.ndarray
    shift: np.ndarray
    out_zero_point: int
    out_fmt: IntFormat
    rounding: Rounding = Rounding.HALF_UP

    def __post_init__(self) -> None:
        fmt = _out_format(self.out_fmt)
        multiplier = _int_array(self.multiplier, "multiplier")
        shift = _int_array(self.shift, "shift")
        if multiplier.ndim > 1:
            raise ConfigError(
                f"multiplier must be a scalar or 1-D (one per output channel), "
                f"not shape {multiplier.shape}"
            )
        if shift.shape != multiplier.shape:
            raise ConfigError(
                f"shift shape {shift.shape} does not match multiplier shape {multiplier.shape}"
            )
        _check_range(multiplier, 0, INT32_MAX, "multiplier")
        _check_range(shift, -31, 30, "shift")
        multiplier.setflags(write=False)
        shift.setflags(write=False)
        object.__setattr__(self, "multiplier", multiplier)
        object.__setattr__(self, "shift", shift)
        object.__setattr__(self, "out_fmt", fmt)
        object.__setattr__(self, "out_zero_point", _zero_point(self.out_zero_point, fmt))
        object.__setattr__(self, "rounding", Rounding.parse(self.rounding))

    @classmethod
    def from_scales(cls, in_scale: float, weight_scale: np.ndarray | float, out_scale: float,
                    out_zero_point: int, out_fmt: IntFormat | str,
                    rounding: Rounding | str = Rounding.HALF_UP) -> FixedPointRequantizer:
        """Multipliers and shifts for ``M = in_scale * weight_scale / out_scale``.

        The scales are taken as float32 and ``M`` is computed in float64 exactly as TFLite
        does (``double(in) * double(w[c]) / double(out)``), then :func:`quantize_multiplier`;
        so the tables equal TFLite's. ``M`` must be below ``2**30`` (shift at most 30).
        """
        s_in = _positive_scale(in_scale, "in_scale", vector=False)
        s_w = _positive_scale(weight_scale, "weight_scale", vector=True)
        s_out = _positive_scale(out_scale, "out_scale", vector=False)
        real = s_in.astype(np.float64) * s_w.astype(np.float64) / s_out.astype(np.float64)
        multiplier, shift = quantize_multiplier(real)
        too_big = shift > 30
        if np.any(too_big):
            channel = int(np.argwhere(too_big)[0][0]) if shift.ndim else 0
            raise ConfigError(
                f"real multiplier {float(np.ravel(real)[channel])!r} (channel {channel}) needs "
                f"shift {int(np.ravel(shift)[channel])}; the fixed-point requantizer supports "
                f"shifts up to 30 (multipliers below 2**30)"
            )
        return cls(multiplier, shift, out_zero_point, out_fmt, rounding)

    def __call__(self, acc: np.ndarray, channel_axis: int = -1) -> np.ndarray:
        """Requantize ``acc`` (up to 33-bit integers); per-channel tables along ``channel_axis``.

        Returns int64 values in ``out_fmt``. Raises ``QsimOverflowError`` for accumulators
        beyond 33 bits, whose product with the multiplier would not fit int64.
        """
        values = _int_array(acc, "acc")
        check_fits(values, FIXED_POINT_ACC, "acc")
        multiplier = _channel_view(self.multiplier, values.shape, channel_axis, "multiplier")
        shift = _channel_view(self.shift, values.shape, channel_axis, "shift")
        scaled = round_shift(values * multiplier, 31 - shift, self.rounding)
        return saturate(scaled + self.out_zero_point, self.out_fmt)


# --------------------------------------------------------------------------- semantics

def float32_multiplier(in_scale, weight_scale, out_scale) -> np.ndarray:
    """``f32(f32(in_scale * weight_scale) / out_scale)``: the multiplier ONNX Runtime (and the
    ONNX reference) form from float32 scales, left to right, as C++ ``a * b[j] / y``."""
    return (np.float32(in_scale) * np.asarray(weight_scale, np.float32)) / np.float32(out_scale)


#: The TFLite operators :func:`litert_requantize` distinguishes.
LITERT_GEMM_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def litert_float_multiplier(in_scale, weight_scale, out_scale) -> np.ndarray:
    """XNNPACK's requantization scale ``f32(f32(in * w) / out)`` (as ONNX Runtime's)."""
    return float32_multiplier(in_scale, weight_scale, out_scale)


def litert_requantize(acc: np.ndarray, in_scale: float, weight_scale: np.ndarray | float,
                      out_scale: float, out_zero_point: int, out_fmt: IntFormat | str,
                      semantics: Semantics | str, *, op: str = "CONV_2D",
                      channel_axis: int = -1) -> np.ndarray:
    """Requantize the accumulators of a TFLite ``op`` as the LiteRT kernel named by ``semantics``.

    ``litert`` (XNNPACK) and ``litert-reference`` differ per operator (``CONV_2D``,
    ``DEPTHWISE_CONV_2D``, ``FULLY_CONNECTED``); the other semantics ignore ``op`` and are
    :func:`requantize`. Returns int64 values in ``out_fmt`` (before any fused activation).

    ``litert``
        XNNPACK's ``fp32`` requantization for all three: ``v = f32(f32(acc) * M)``,
        ``M = f32(f32(in * w) / out)``, round half to even, ``+ zp``.
    ``litert-optimized``
        ``CONV_2D``, ``FULLY_CONNECTED`` (ruy): ``SaturatingRoundingDoublingHighMul`` of
        ``acc << left_shift`` and TFLite's ``qm``, then ``(v + 2**(e-1)) >> e`` (half up; the
        reference rounds half away); ``DEPTHWISE_CONV_2D``: the optimized depthwise output
        stage, :func:`litert_optimized_depthwise_requantize` (ruy's rounding in complete
        blocks of 8 output channels along ``channel_axis``, the reference's on the others).
    ``litert-reference``
        ``CONV_2D``, ``DEPTHWISE_CONV_2D``: ``MultiplyByQuantizedMultiplier`` (double
        rounding, as :func:`requantize`'s ``litert-reference``); ``FULLY_CONNECTED``:
        ``round_half_away(f64(acc) * f64(qm) * 2**(shift - 31))`` with TFLite's quantized
        multiplier ``qm, shift`` (:func:`quantize_multiplier`), one rounding.
    """
    kind = Semantics.parse(semantics)
    if op not in LITERT_GEMM_OPS:
        raise ConfigError(f"op must be one of {', '.join(LITERT_GEMM_OPS)}, not {op!r}")
    if kind is Semantics.LITERT_OPTIMIZED:
        rule = litert_optimized_depthwise_requantize if op == "DEPTHWISE_CONV_2D" else _ruy_requantize
        return rule(acc, in_scale, weight_scale, out_scale, out_zero_point, out_fmt,
                    channel_axis=channel_axis)
    if kind is not Semantics.LITERT_REFERENCE or op != "FULLY_CONNECTED":
        return requantize(acc, in_scale, weight_scale, out_scale, out_zero_point, out_fmt, kind,
                          channel_axis=channel_axis)
    fmt, zp, values, qm, shift = _tflite_operands(acc, in_scale, weight_scale, out_scale,
                                                  out_zero_point, out_fmt, channel_axis)
    multiplier = np.ldexp(qm.astype(np.float64), (shift - 31).astype(np.int64))
    scaled = round_float(values.astype(np.float64) * multiplier, Rounding.HALF_AWAY)
    return saturate(np.clip(scaled, -2.0 ** 62, 2.0 ** 62).astype(np.int64) + zp, fmt)


def _tflite_operands(acc, in_scale, weight_scale, out_scale, out_zero_point, out_fmt, channel_axis):
    """Checked output format, zero point, int32 accumulators and TFLite's ``QuantizeMultiplier``
    of ``double(in) * double(w[c]) / double(out)`` (per channel along ``channel_axis``)."""
    fmt = _out_format(out_fmt)
    zp = _zero_point(out_zero_point, fmt)
    values = _int_array(acc, "acc")
    check_fits(values, INT32, "acc")
    s_in = _positive_scale(in_scale, "in_scale", vector=False)
    per_channel = _positive_scale(weight_scale, "weight_scale", vector=True)
    s_w = _channel_view(per_channel, values.shape, channel_axis, "weight_scale")
    s_out = _positive_scale(out_scale, "out_scale", vector=False)
    qm, shift = quantize_multiplier(np.float64(s_in) * s_w.astype(np.float64) / np.float64(s_out))
    return fmt, zp, values, qm, shift


def _ruy_requantize(acc, in_scale, weight_scale, out_scale, out_zero_point, out_fmt, *, channel_axis=-1):
    """ruy's requantization (LiteRT's optimized ``CONV_2D`` and ``FULLY_CONNECTED`` on x86):
    TFLite's multiplier, ``x << left_shift``, ``SaturatingRoundingDoublingHighMul`` and then a
    rounding right shift that rounds half *up* (``(v + 2**(e-1)) >> e``), where the reference
    ``RoundingDivideByPOT`` rounds half away from zero: they differ on negative ties."""
    fmt, zp, values, qm, shift = _tflite_operands(acc, in_scale, weight_scale, out_scale,
                                                  out_zero_point, out_fmt, channel_axis)
    shifted = values << np.maximum(shift, 0)
    check_fits(shifted, INT32, "x * 2**left_shift")
    high = saturating_rounding_doubling_high_mul(shifted, qm)
    right = np.maximum(-shift, 0)
    half = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    return saturate(((high + half) >> right) + zp, fmt)


def litert_optimized_depthwise_requantize(acc: np.ndarray, in_scale: float,
                                          weight_scale: np.ndarray | float, out_scale: float,
                                          out_zero_point: int, out_fmt: IntFormat | str, *,
                                          channel_axis: int = -1) -> np.ndarray:
    """LiteRT's builtin optimized int8 ``DEPTHWISE_CONV_2D`` output stage (``litert-optimized``).

    The optimized kernel requantizes its int32 accumulators by blocks of 8 output channels:
    channel ``c`` of ``C`` in a complete block (``c < 8 * (C // 8)``) takes the vector path,
    ``SaturatingRoundingDoublingHighMul(acc << left_shift, qm)`` and then a rounding right
    shift that rounds half *up* (``(v + 2**(e-1)) >> e``, as ruy's; :func:`litert_requantize`
    ``op="CONV_2D"``); the leftover channels (``c >= 8 * (C // 8)``, all of them when
    ``C < 8``) take TFLite's scalar ``MultiplyByQuantizedMultiplier``, whose second rounding
    is half away from zero (the reference kernels' arithmetic). The two differ only on
    negative ties of the second step. ``qm, shift`` are TFLite's per-channel multipliers.
    Measured against LiteRT 2.3.0 on x86-64 (AVX2; docs/tflite.md). Returns int64 values in
    ``out_fmt`` (before the fused activation).
    """
    fmt, zp, values, qm, shift = _tflite_operands(acc, in_scale, weight_scale, out_scale,
                                                  out_zero_point, out_fmt, channel_axis)
    channels = values.shape[channel_axis] if values.ndim else 1
    index = _channel_view(np.arange(channels, dtype=np.int64), values.shape, channel_axis, "channel")
    shifted = values << np.maximum(shift, 0)
    check_fits(shifted, INT32, "x * 2**left_shift")
    high = saturating_rounding_doubling_high_mul(shifted, qm)
    right = np.maximum(-shift, 0)
    half = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    vector = (high + half) >> right
    scalar = rounding_divide_by_pot(high, right)
    return saturate(np.where(index < 8 * (channels // 8), vector, scalar) + zp, fmt)


def litert_optimized_add(a: np.ndarray, b: np.ndarray, a_scale: float, b_scale: float,
                         out_scale: float, out_zero_point: int) -> np.ndarray:
    """LiteRT's builtin optimized int8 ``ADD`` without broadcasting (``litert-optimized``).

    ``a`` and ``b`` are the zero-point-free inputs (``x - zp``) of equal shape in TFLite's
    (NHWC, row-major) element order. TFLite's parameters: ``left_shift = 20``,
    ``twice = 2 max(s_a, s_b)``, input multipliers ``qm_i, shift_i`` of ``s_i / twice`` and
    output ``qm_o, shift_o`` of ``twice / (2**20 s_out)`` (:func:`quantize_multiplier`).
    The kernel adds the flat tensor in blocks of 16 elements: for element ``k`` of ``n``
    with ``k < 16 * (n // 16)`` the vector path shifts each input left by ``20 + shift_i``
    *before* ``SaturatingRoundingDoublingHighMul(., qm_i)`` (one rounding, where the scalar
    path rounds twice), sums, ``SaturatingRoundingDoublingHighMul(., qm_o)`` and
    ``RoundingDivideByPOT(., -shift_o)`` (half away), narrows to int16 (wrapping) and adds the
    zero point in int16; the leftover elements take the reference arithmetic
    (``MultiplyByQuantizedMultiplier`` of ``x << 20`` per input, then of the sum). Returns
    int64 values with the zero point (before the activation clamp and the int8 saturation).
    """
    x = _int_array(a, "a")
    y = _int_array(b, "b")
    if x.shape != y.shape:
        raise ConfigError(f"litert_optimized_add needs equal shapes, not {x.shape} and {y.shape}")
    sa, sb, so = (np.float64(np.float32(v)) for v in (a_scale, b_scale, out_scale))
    twice = 2.0 * max(sa, sb)
    qa, ea = quantize_multiplier(sa / twice)
    qb, eb = quantize_multiplier(sb / twice)
    qo, eo = quantize_multiplier(twice / (float(1 << 20) * so))
    flat_x, flat_y = x.reshape(-1), y.reshape(-1)
    n = flat_x.size
    cut = 16 * (n // 16)
    out = np.empty(n, np.int64)
    # vector path: one rounding per input
    va = saturating_rounding_doubling_high_mul(_wrap32(_shift_left(flat_x[:cut], 20 + int(ea))), qa)
    vb = saturating_rounding_doubling_high_mul(_wrap32(_shift_left(flat_y[:cut], 20 + int(eb))), qb)
    total = saturating_rounding_doubling_high_mul(_wrap32(va + vb), qo)
    v = rounding_divide_by_pot(total, -int(eo))
    v16 = ((v + (1 << 15)) & 0xFFFF) - (1 << 15)
    out[:cut] = ((v16 + int(out_zero_point) + (1 << 15)) & 0xFFFF) - (1 << 15)
    # leftover elements: the reference kernel's arithmetic
    sa_ = multiply_by_quantized_multiplier(flat_x[cut:] << 20, qa, ea)
    sb_ = multiply_by_quantized_multiplier(flat_y[cut:] << 20, qb, eb)
    out[cut:] = multiply_by_quantized_multiplier(sa_ + sb_, qo, eo) + int(out_zero_point)
    return out.reshape(x.shape)


def _shift_left(values: np.ndarray, count: int) -> np.ndarray:
    """NEON's ``vshlq_s32`` by one count: left for ``count >= 0``, else an arithmetic right
    shift (``20 + shift_i`` is negative only when one input scale is over 2**20 times the
    other's)."""
    return values << count if count >= 0 else values >> -count


def _wrap32(values: np.ndarray) -> np.ndarray:
    """int64 ``values`` as a 32-bit lane holds them (two's complement, no saturation)."""
    return ((values + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _onnx(acc, s_in, s_w, s_out, zp, fmt):
    multiplier = float32_multiplier(s_in, s_w, s_out)
    # The reference multiplies its int32 tensor by a float32 one: numpy promotes both to
    # float64, and adds the zero point in float64 before rint.
    scaled = acc.astype(np.float64) * multiplier.astype(np.float64) + np.float64(zp)
    return saturate(np.clip(np.rint(scaled), fmt.min, fmt.max).astype(np.int64), fmt)


def requantize_float32(acc: np.ndarray, multiplier: np.ndarray | float, out_zero_point: int,
                       out_fmt: IntFormat, *, clamp: tuple[int, int] | None = None,
                       overwrite: bool = False) -> np.ndarray:
    """ONNX Runtime's MLAS ``MlasRequantizeOutput`` with a ready-made float32 multiplier.

    ``v = f32(f32(acc) * multiplier)`` (one float32 product; the int32 to float32 conversion
    rounds to nearest even), clamped in float32 to ``[qmin - zp, qmax - zp]`` (a NaN takes the
    lower bound, as ``maxps`` returns its second operand), then ``rne(v) + zp``. The
    ``onnxruntime`` semantics of :func:`requantize` and every ORT kernel in
    :mod:`qsim.quant.ortops` that requantizes (QGemm with its ``alpha``, the pools) use it.

    ``acc`` may be integers or floats holding the accumulators' float32 image (what MLAS's
    conversion gives); with ``overwrite`` a float32 ``acc`` is scaled in place. ``clamp``
    narrows the output range to ``[lo, hi]`` (a fused activation): clamping to integer bounds
    commutes with rounding, so it is applied with the format's clamp. The zero point and the
    bounds may be arrays broadcast against ``acc`` (the post-processing unit's lanes).
    """
    lo_q, hi_q = (out_fmt.min, out_fmt.max) if clamp is None else clamp
    lo, hi = np.float32(lo_q - out_zero_point), np.float32(hi_q - out_zero_point)
    m = np.asarray(multiplier, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        if overwrite and isinstance(acc, np.ndarray) and acc.dtype == np.float32:
            scaled = acc
            scaled *= m
        else:
            scaled = np.asarray(acc).astype(np.float32) * m
    if not np.all(np.isfinite(m)):  # only an infinite multiplier times 0 gives NaN
        scaled[np.isnan(scaled)] = lo
    np.clip(scaled, lo, hi, out=scaled)
    np.rint(scaled, out=scaled)
    out = scaled.astype(np.int64)
    out += out_zero_point
    return out


def _onnxruntime(acc, s_in, s_w, s_out, zp, fmt):
    return requantize_float32(acc, float32_multiplier(s_in, s_w, s_out), zp, fmt)


def _pytorch_fbgemm(acc, s_in, s_w, s_out, zp, fmt, float_bias=None, per_tensor=True):
    """fbgemm's ``requantizeOutputProcessingAvx2`` (and its depthwise and groupwise twins).

    ``x = f32(acc)``; a float bias adds ``fma(bias, f32(1 / ats), x)`` with per-tensor weights
    and ``f32(x + f32(bias / ats[c]))`` with per-channel ones (``ats = f32(s_in * s_w)``); then
    ``cvtps2dq(f32(x * M))``: rne, and a value outside int32 (or NaN) becomes ``-2**31``; then
    ``+ zp`` and the clamp."""
    from qsim.quant.ortops import cvtps_epi32, fma_f32  # ortops imports this module

    act_times_w = np.float32(s_in) * np.asarray(s_w, np.float32)
    multiplier = act_times_w / np.float32(s_out)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        x = acc.astype(np.float32)
        if float_bias is not None:
            if per_tensor:
                x = fma_f32(float_bias, np.float32(1.0) / act_times_w, x)
            else:
                x = (x + (float_bias / act_times_w).astype(np.float32)).astype(np.float32)
        scaled = (x * multiplier).astype(np.float32)
    return saturate(cvtps_epi32(scaled) + zp, fmt)


def _float_bias(values, shape, channel_axis, kind) -> np.ndarray:
    """PyTorch's float bias as a float32 array broadcasting against ``acc`` (``shape``)."""
    if kind is not Semantics.PYTORCH_FBGEMM:
        raise ConfigError(f"float_bias is PyTorch's float bias (fbgemm adds it in float32 while "
                          f"requantizing); it needs semantics pytorch-fbgemm, not {kind.value}: "
                          f"give an int32 bias in acc instead")
    bias = np.asarray(values)
    if bias.dtype == np.bool_ or bias.dtype.kind not in "fiu":
        raise ConfigError(f"float_bias must be real numbers, not dtype {bias.dtype}")
    if bias.ndim > 1:
        raise ConfigError(f"float_bias must be a scalar or 1-D (one per output channel), "
                          f"not shape {bias.shape}")
    return _channel_view(bias.astype(np.float32), shape, channel_axis, "float_bias")


def _tflite(acc, s_in, s_w, s_out, zp, fmt, single_rounding):
    real = np.float64(s_in) * s_w.astype(np.float64) / np.float64(s_out)
    multiplier, shift = quantize_multiplier(real, single_rounding=single_rounding)
    scaled = multiply_by_quantized_multiplier(acc, multiplier, shift, single_rounding)
    return saturate(scaled + zp, fmt)


def requantize(acc: np.ndarray, in_scale: float, weight_scale: np.ndarray | float,
               out_scale: float, out_zero_point: int, out_fmt: IntFormat | str,
               semantics: Semantics | str = "onnx", *, channel_axis: int = -1,
               float_bias: np.ndarray | float | None = None) -> np.ndarray:
    """Requantize accumulators to ``out_fmt`` exactly as the named engine does.

    Parameters
    ----------
    acc : np.ndarray
        Integer accumulators including any int32 bias, ``Σ (x - x_zp)(w - w_zp) + bias``.
        int32 values for every semantics except ``fixed-point`` (up to 33 bits).
    in_scale : float
        Input (activation) scale, scalar.
    weight_scale : float or 1-D array
        Scalar, or one scale per output channel along ``channel_axis`` of ``acc``.
    out_scale : float
        Output scale, scalar.
    out_zero_point : int
        Output zero point, in ``out_fmt``.
    out_fmt : IntFormat or str
        Output format (at most 32 bits).
    semantics : Semantics or str
        Which engine to reproduce; see the table below.
    channel_axis : int
        Axis of ``acc`` that per-channel scales index (default: the last).
    float_bias : float or 1-D array, optional
        ``pytorch-fbgemm`` only: PyTorch's float bias (one value per output channel along
        ``channel_axis``, or one for all), which fbgemm adds in float32 while requantizing
        instead of an int32 bias in ``acc`` (``quantized::linear`` and ``quantized::conv2d``
        always pass theirs so).

    Returns
    -------
    np.ndarray
        int64 values in ``out_fmt``, the shape of ``acc``.

    Raises
    ------
    ConfigError
        For an unknown semantics, a scale that is not positive and finite, a zero point
        outside ``out_fmt``, an invalid format, or per-channel scales that do not match.
    QsimOverflowError
        For accumulators outside int32 (33 bits for ``fixed-point``), or where TFLite's own
        int32 arithmetic would overflow.

    Notes
    -----
    The scales are float32 (as ONNX and TFLite store them). With ``rne`` round half to
    even, ``f32(.)``/``f64(.)`` one IEEE rounding:

    ``onnx``
        onnx/reference/ops/op_qlinear_matmul.py and op_qlinear_conv.py:
        ``M = f32(f32(in * w) / out)``; ``clip(rne(f64(f64(acc) * M) + zp))``.
    ``onnxruntime``
        MLAS ``MlasRequantizeOutput``: ``M`` as above; ``v = f32(f32(acc) * M)`` clamped to
        ``[qmin - zp, qmax - zp]``, ``rne(v) + zp``. One float32 product, so a value such
        as -43.4999996 becomes -43.5 and then -44 where ``onnx`` gives -43.
    ``tflite``
        tensorflow/lite/kernels/internal/common.cc (default build): ``M = f64(in * w) / out``
        (float64), :func:`quantize_multiplier`, :func:`multiply_by_quantized_multiplier`
        (double rounding), ``+ zp``, clamp.
    ``tflite-single-rounding``
        The same with ``TFLITE_SINGLE_ROUNDING``: ``(acc * qm + 2**(n-1)) >> n``,
        ``n = 31 - shift``.
    ``pytorch-fbgemm``
        fbgemm's ``requantizeOutputProcessingAvx2`` (torch 2.13, measured against it:
        ``tests/golden/record_fbgemm.py``): ``C = f32(f32(in * w) / out)``,
        ``v = cvtps2dq(f32(f32(acc) * C))`` (rne; a product outside int32, ``|v| >= 2**31``,
        gives ``-2**31``, so such an output is ``qmin``, not ``qmax``), ``+ zp``, clamp. With
        ``float_bias`` ``b``: ``f32(acc)`` becomes ``fma(b, f32(1 / ats), f32(acc))`` with
        per-tensor weights (a scalar ``weight_scale``) and ``f32(f32(acc) + f32(b / ats[c]))``
        with per-channel ones, ``ats = f32(in * w)``. With an int32 bias in ``acc`` and
        products inside int32 this equals ``onnxruntime``.
    ``fixed-point``
        :class:`FixedPointRequantizer` (round half up); identical to
        ``tflite-single-rounding`` on int32 accumulators.
    """
    kind = Semantics.parse(semantics)
    if float_bias is not None and kind is not Semantics.PYTORCH_FBGEMM:
        _float_bias(float_bias, (), channel_axis, kind)  # raises
    fmt = _out_format(out_fmt)
    zp = _zero_point(out_zero_point, fmt)
    values = _int_array(acc, "acc")
    s_in = _positive_scale(in_scale, "in_scale", vector=False)
    per_channel = _positive_scale(weight_scale, "weight_scale", vector=True)
    s_w = _channel_view(per_channel, values.shape, channel_axis, "weight_scale")
    s_out = _positive_scale(out_scale, "out_scale", vector=False)
    if kind is Semantics.FIXED_POINT:
        requantizer = FixedPointRequantizer.from_scales(s_in, per_channel, s_out, zp, fmt)
        return requantizer(values, channel_axis)
    check_fits(values, INT32, "acc")
    if kind is Semantics.ONNX:
        return _onnx(values, s_in, s_w, s_out, zp, fmt)
    if kind is Semantics.ONNXRUNTIME:
        return _onnxruntime(values, s_in, s_w, s_out, zp, fmt)
    if kind is Semantics.PYTORCH_FBGEMM:
        bias = None if float_bias is None else _float_bias(float_bias, values.shape, channel_axis, kind)
        # fbgemm's per-tensor kernels multiply the bias by a reciprocal (fused into an FMA),
        # its per-channel kernels divide it by each channel's scale
        return _pytorch_fbgemm(values, s_in, s_w, s_out, zp, fmt, bias, per_channel.size == 1)
    if kind is Semantics.LITERT:
        # XNNPACK's requantization (the default interpreter): MLAS's float32 arithmetic
        return requantize_float32(values, litert_float_multiplier(s_in, s_w, s_out), zp, fmt)
    return _tflite(values, s_in, s_w, s_out, zp, fmt,
                   single_rounding=kind is Semantics.TFLITE_SINGLE_ROUNDING)
