"""Quantize, dequantize and dynamic quantization with the exact ONNX operator semantics.

This module owns the conversions between real tensors and quantized integer tensors:
``QuantizeLinear`` (:func:`quantize`), ``DequantizeLinear`` (:func:`dequantize`) and
``DynamicQuantizeLinear`` (:func:`dynamic_quantize`), per tensor, per axis and blocked, for
every integer format of :mod:`qsim.numerics` from int2 to int32. Each result is bit-identical
to the ONNX reference implementation (``onnx/reference/ops/op_quantize_linear.py``,
``op_dequantize_linear.py``, ``op_dynamic_quantize_linear.py``, onnx 1.23) on the inputs that
implementation defines; where the reference relies on undefined conversions (out-of-range
float to int32) qsim saturates instead, as the operator specification says.

Granularity and validation of scales and zero points belong to
:class:`qsim.quant.params.QuantParams`; int4/int2 byte packing to :func:`qsim.numerics.pack_int4`
and :func:`qsim.numerics.pack_int2`.
"""

from __future__ import annotations

import numpy as np

from qsim.errors import ConfigError
from qsim.numerics import UINT8, Rounding, check_fits, round_float, saturate
from qsim.quant.params import QuantParams

__all__ = ["quantize", "dequantize", "dynamic_quantize", "MAX_QUANT_BITS"]

#: Widest format :func:`quantize` produces (int32 is used for biases). Wider formats would
#: need integers beyond float64's 53-bit significand to be exact.
MAX_QUANT_BITS = 32

# Largest magnitude a rounded quotient is clipped to before conversion to int64; every
# format up to 32 bits saturates well inside it, and it keeps ``astype`` defined for inf.
_CLIP = float(1 << 62)


def _first_index(mask: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(mask)[0]) if mask.ndim else ()
    return f"[{', '.join(map(str, idx))}]" if idx else ""


def _real_array(x: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(x)
    if v.dtype == np.bool_ or v.dtype.kind not in "fiu":
        raise ConfigError(f"{name} must be a real (float or integer) array, not dtype {v.dtype}")
    return v


def quantize(x: np.ndarray, params: QuantParams,
             rounding: Rounding | str = Rounding.HALF_EVEN, *, nan: int | None = None) -> np.ndarray:
    """ONNX ``QuantizeLinear``: ``y = saturate(round(x / scale) + zero_point)``.

    Parameters
    ----------
    x : np.ndarray
        Real values. They are first converted to the scale's float dtype, because ONNX does
        the division in the scale's type (opset 21+: "the type of ``y_scale`` determines the
        precision of the division"); for a float32 scale and float32 ``x`` nothing changes.
    params : QuantParams
        Scale, zero point, format and granularity (per tensor, per axis or blocked); the
        per-axis and blocked parameters must match ``x.shape``.
    rounding : Rounding or str
        How the quotient is rounded; ``half_even`` (the ONNX rule) by default.
    nan : int, optional
        Quantized value of NaN inputs. By default a NaN is an error (the ONNX reference's
        conversion of NaN is undefined); ONNX Runtime's CPU kernel gives the format's minimum.

    Returns
    -------
    np.ndarray
        int64 values in ``params.fmt``, the shape of ``x``.

    Raises
    ------
    ConfigError
        When ``x`` contains NaN, when the format is wider than 32 bits, or when the
        parameters do not fit ``x.shape``.

    Notes
    -----
    The division is one IEEE operation in the scale's dtype (float32 normally, float16 for a
    float16 scale), so its rounding is exactly the engines'. The quotient is then rounded
    exactly under ``rounding`` (:func:`qsim.numerics.round_float`), the zero point added in
    integers, and the sum clipped to the format; ``±inf`` quotients saturate. The ONNX
    reference differs only where it is undefined: it converts quotients beyond int32 with
    ``astype(np.int32)``, and with a float32 ``x`` and a float16 scale numpy promotes its
    division to float32 although the specification asks for float16.
    """
    mode = Rounding.parse(rounding)
    fmt = params.fmt
    if fmt.bits > MAX_QUANT_BITS:
        raise ConfigError(
            f"quantize supports formats of at most {MAX_QUANT_BITS} bits, not {fmt.name}"
        )
    values = _real_array(x, "quantize input")
    if (params.per_tensor and params.scale.dtype == np.float32 and fmt.bits <= 16
            and mode is Rounding.HALF_EVEN and values.dtype in (np.float32, np.float64)):
        return _quantize_per_tensor_f32(values, params, nan)
    scale, zero_point = params.broadcast(values.shape)
    dtype = params.scale.dtype
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        quotient = values.astype(dtype) / scale.astype(dtype)
    nans = np.isnan(quotient)
    if np.any(nans):
        if nan is None:
            # NaN has no integer image; the reference's astype(int32) of NaN is undefined.
            raise ConfigError(f"quantize input{_first_index(nans)} is NaN, which has no quantized value")
        quotient = np.where(nans, 0, quotient)
    # Clipping first keeps infinities out of round_float; it changes no result, since every
    # format saturates far inside +-2**62 and the bound is an integer.
    rounded = round_float(np.clip(quotient.astype(np.float64), -_CLIP, _CLIP), mode)
    rounded = rounded.astype(np.int64)
    result = saturate(rounded + zero_point, fmt)
    return np.where(nans, saturate(nan, fmt), result) if nan is not None else result


def _quantize_per_tensor_f32(values: np.ndarray, params: QuantParams, nan: int | None) -> np.ndarray:
    """The common case of :func:`quantize` in a few in-place float32 passes.

    One float32 division (as in the general path), then a clamp to ``[qmin - zp, qmax - zp]``
    before rounding half to even: the bounds are integers, so clamping and rounding commute
    and the result is the general path's ``saturate(rne(x / s) + zp)``. Every integer of a
    format of up to 16 bits is exact in float32.
    """
    fmt, zp = params.fmt, int(params.zero_point)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # IEEE gives +-inf, NaN
        quotient = np.array(np.divide(values, params.scale, dtype=np.float32), dtype=np.float32)
    nans = np.isnan(quotient)
    if nans.any():
        if nan is None:
            raise ConfigError(f"quantize input{_first_index(nans)} is NaN, which has no quantized value")
        quotient[nans] = np.float32(saturate(nan, fmt) - zp)
    np.clip(quotient, np.float32(fmt.min - zp), np.float32(fmt.max - zp), out=quotient)
    np.rint(quotient, out=quotient)
    result = quotient.astype(np.int64)
    result += zp
    return result


def dequantize(q: np.ndarray, params: QuantParams) -> np.ndarray:
    """ONNX ``DequantizeLinear``: ``y = (q - zero_point) * scale``.

    Parameters
    ----------
    q : np.ndarray
        Integers in ``params.fmt`` (any integer dtype).
    params : QuantParams
        Scale, zero point, format and granularity.

    Returns
    -------
    np.ndarray
        Values of the scale's dtype (float32 normally, float16 for a float16 scale): the
        ONNX output type rule when ``output_dtype`` is not given.

    Raises
    ------
    QsimOverflowError
        When a value of ``q`` is outside ``params.fmt``.
    ConfigError
        When the parameters do not fit ``q.shape``.

    Notes
    -----
    ``q - zero_point`` is exact (int64). For a float32 (or float64) scale the product is
    formed in float64 and rounded once to the output type: for every format up to 24 bits
    ``|q - zero_point| < 2**24`` is exact in float32 too, so this is the single correctly
    rounded product that both the ONNX reference and ONNX Runtime compute. For a float16
    scale the product is formed in float32 and then rounded to float16, as the reference
    does (``x.astype(float32) * scale`` then ``astype(scale.dtype)``). For int32 inputs the
    reference first rounds ``q`` itself to float32; qsim keeps it exact (the results agree
    whenever ``|q| <= 2**24``).
    """
    values = np.asarray(q)
    if values.dtype == np.bool_ or values.dtype.kind not in "iu":
        raise ConfigError(f"dequantize input must be an integer array, not dtype {values.dtype}")
    fmt = params.fmt
    if values.dtype.itemsize == 1 and params.per_tensor and params.scale.dtype == np.float32 \
            and (fmt.min, fmt.max) == (np.iinfo(values.dtype).min, np.iinfo(values.dtype).max):
        # An 8-bit array of its own format cannot overflow it; f32(q - zp) is exact and one
        # float32 product of exact values is the correctly rounded result of the general path.
        out = values.astype(np.float32)
        out -= np.float32(params.zero_point)
        out *= params.scale
        return out
    check_fits(values, params.fmt, "dequantize input")
    scale, zero_point = params.broadcast(values.shape)
    centered = values.astype(np.int64) - zero_point
    out_dtype = params.scale.dtype
    wide = np.float32 if out_dtype.itemsize < 4 else np.float64
    with np.errstate(over="ignore"):  # beyond the output type's range IEEE gives +-inf
        return (centered.astype(wide) * scale.astype(wide)).astype(out_dtype)


def dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, QuantParams]:
    """ONNX ``DynamicQuantizeLinear``: uint8 quantization with a range computed from ``x``.

    Parameters
    ----------
    x : np.ndarray
        Finite real values, converted to float32 (the operator's only input type).

    Returns
    -------
    q : np.ndarray
        int64 values in uint8, the shape of ``x``.
    params : QuantParams
        Per-tensor uint8 parameters with the float32 scale and the zero point used.

    Raises
    ------
    ConfigError
        When ``x`` is empty, contains a non-finite value, or its range is so small or so
        large that the float32 scale underflows to 0 or overflows.

    Notes
    -----
    Every step is float32 and in this order (ONNX specification and reference
    ``op_dynamic_quantize_linear.py``): ``hi = max(0, max(x))``, ``lo = min(0, min(x))``
    (the range is widened to include 0 so that 0 is exact); ``scale = (hi - lo) / 255``, or
    ``1 / 255`` when ``hi == lo``; ``zero_point = rne(clip(0 - lo / scale, 0, 255))``;
    ``q = clip(rne(x / scale) + zero_point, 0, 255)``.
    """
    values = _real_array(x, "dynamic_quantize input").astype(np.float32)
    if values.size == 0:
        raise ConfigError("dynamic_quantize needs at least one value to compute a range, got none")
    bad = ~np.isfinite(values)
    if np.any(bad):
        raise ConfigError(
            f"dynamic_quantize input{_first_index(bad)} = {values[bad][0]!r} is not finite"
        )
    qmin, qmax = np.float32(UINT8.min), np.float32(UINT8.max)
    hi = np.maximum(np.float32(0), values.max())
    lo = np.minimum(np.float32(0), values.min())
    with np.errstate(over="ignore"):  # an overflowing range is reported just below
        span = np.float32(1) if hi == lo else np.float32(hi - lo)
        scale = np.float32(span / (qmax - qmin))
    if not 0 < scale < np.inf:
        # The reference would go on with a zero or infinite scale and produce NaN zero points.
        raise ConfigError(
            f"dynamic_quantize: the input range [{float(lo)!r}, {float(hi)!r}] gives scale "
            f"{float(scale)!r} in float32; the range must be between about 1.2e-43 and 3.4e38"
        )
    initial = np.float32(qmin - lo / scale)
    zero_point = int(np.rint(np.clip(initial, qmin, qmax)))
    params = QuantParams(np.float32(scale), zero_point, UINT8)
    return quantize(values, params, Rounding.HALF_EVEN), params

