"""Bit-exact numpy models of ONNX Runtime's CPU kernels for the QOperator ops around the GEMMs.

This module owns what ONNX Runtime (1.32, x86-64 CPU execution provider, the MLAS kernels its
dispatcher picks on this project's reference machine: AVX512F QuantizeLinear, AVX2/FMA3
QLinearAdd and logistic, SSE2 code elsewhere) computes for ``QuantizeLinear``, ``DequantizeLinear``,
``MaxPool`` on 8-bit tensors and the ``com.microsoft`` ops ``QGemm``, ``QLinearAdd``,
``QLinearMul``, ``QLinearGlobalAveragePool``, ``QLinearAveragePool``, ``QLinearConcat``,
``QLinearLeakyRelu`` and ``QLinearSigmoid``: every float32 operation, in ORT's order, with ORT's
rounding, including the places where ORT departs from the ONNX specification (fused
multiply-adds, a fixed part folded before the per-element work, an out-of-range conversion
that yields the lowest code, a float average pool). QLinearConv and QLinearMatMul live in
:mod:`qsim.quant.kernels`.

Each public function names its ORT source (path in github.com/microsoft/onnxruntime and the
function) and states the exact arithmetic; ``docs/ort_semantics.md`` tabulates the same facts
with the mismatch counts measured against the installed onnxruntime.

Conventions: quantized tensors are numpy ``uint8`` or ``int8`` arrays; scales are read as
float32 (as ORT reads a float tensor) and must be positive and finite; zero points are integers
in the range of the tensor's type. Results have the input's dtype. Float32 arithmetic is done in
numpy float32, which rounds every operation to nearest even like SSE/AVX; a fused multiply-add is
emulated exactly by :func:`fma_f32`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import numpy as np

from qsim.errors import ConfigError
from qsim.numerics import INT32, IntFormat, int_matmul, wrap
from qsim.quant.isa import ort_fma_kernels, resolve_isa
from qsim.quant.kernels import _engine_correction
from qsim.quant.ops import dequantize, quantize
from qsim.quant.params import QuantParams
from qsim.quant.requant import requantize_float32

__all__ = [
    "fma_f32",
    "cvtps_epi32",
    "quantize_linear",
    "dequantize_linear",
    "qgemm",
    "broadcast_functor",
    "qlinear_add",
    "qlinear_mul",
    "qlinear_global_average_pool",
    "qlinear_average_pool",
    "max_pool",
    "qlinear_concat",
    "qlinear_leaky_relu",
    "qlinear_sigmoid",
    "mlas_logistic",
]

_F32 = np.float32
_INT32_MIN = -(1 << 31)
_QTYPES = (np.dtype(np.uint8), np.dtype(np.int8))


# --------------------------------------------------------------------------------------------
# float32 primitives
# --------------------------------------------------------------------------------------------

def fma_f32(a: np.ndarray | float, b: np.ndarray | float, c: np.ndarray | float) -> np.ndarray:
    """Fused multiply-add ``round_f32(a * b + c)`` with a single rounding, as ``vfmadd*ps`` does.

    ``a * b`` of two float32 values is exact in float64 (48 significant bits). The float64 sum
    ``s = fl64(a*b + c)`` and its exact error ``e`` (Knuth's TwoSum) give the true value
    ``s + e``. Rounding ``s`` to float32 is correct unless ``s`` lies exactly halfway between two
    float32 neighbours, in which case the sign of ``e`` says which side the true value is on.
    Products or sums beyond the float32 range round to infinity like the hardware.
    """
    x = np.asarray(a, dtype=_F32).astype(np.float64)
    y = np.asarray(b, dtype=_F32).astype(np.float64)
    z = np.asarray(c, dtype=_F32).astype(np.float64)
    p = x * y
    with np.errstate(over="ignore", invalid="ignore"):
        s = p + z
        bp = s - z
        ap = s - bp
        e = (z - ap) + (p - bp)
        r = s.astype(_F32)
        r64 = r.astype(np.float64)
        up = np.nextafter(r, _F32(np.inf))
        down = np.nextafter(r, _F32(-np.inf))
        above_mid = (r64 + up.astype(np.float64)) / 2
        below_mid = (r64 + down.astype(np.float64)) / 2
    finite = np.isfinite(s) & np.isfinite(e)
    r = np.where(finite & (s == above_mid) & (e > 0), up, r)
    r = np.where(finite & (s == below_mid) & (e < 0), down, r)
    return np.asarray(r, dtype=_F32)


def _x86_float_to_int32(v: np.ndarray, rounding: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """x86 float32 to int32 conversion with ``rounding``, as int64: a NaN or a result outside
    int32 becomes the "integer indefinite" value ``-2**31``."""
    v = np.asarray(v, dtype=_F32)
    with np.errstate(invalid="ignore"):
        r = rounding(v.astype(np.float64))
        ok = np.isfinite(r) & (r >= _INT32_MIN) & (r < (1 << 31))
    return np.where(ok, np.where(ok, r, 0).astype(np.int64), np.int64(_INT32_MIN))


def cvtps_epi32(v: np.ndarray) -> np.ndarray:
    """``_mm_cvtps_epi32``: round float32 to int32 with ties to even, as int64.

    A NaN or a value whose rounded result is outside int32 becomes ``-2**31`` (so a huge
    positive value ends up at the *lowest* code after saturation).
    """
    return _x86_float_to_int32(v, np.rint)


def _cvttss_epi32(v: np.ndarray) -> np.ndarray:
    """``(int32_t)float`` on x86 (``cvttss2si``): truncate; NaN or out of range gives ``-2**31``."""
    return _x86_float_to_int32(v, np.trunc)


def _i32_to_f32(values: np.ndarray) -> np.ndarray:
    """``cvtdq2ps``: int32 to float32, rounding to nearest even (exact below 2**24)."""
    return np.asarray(values, dtype=np.int64).astype(np.float64).astype(_F32)


def _requantize_f32(acc: np.ndarray, scale: np.ndarray | np.float32, zero_point: int,
                    dtype: np.dtype) -> np.ndarray:
    """MLAS ``MlasRequantizeOutput`` on int32 accumulators, as ``dtype``."""
    info = np.iinfo(dtype)
    fmt = IntFormat(info.bits, info.min < 0)
    return requantize_float32(acc, scale, zero_point, fmt).astype(dtype)


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------

def _qtensor(x: np.ndarray, op: str, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype not in _QTYPES:
        raise ConfigError(f"{op}: {name} must be a uint8 or int8 array, not dtype {arr.dtype}")
    return arr


def _scale(value: float | np.ndarray, op: str, name: str) -> np.float32:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ConfigError(f"{op}: {name} must be a single value, not shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ConfigError(f"{op}: {name} must be a number, not dtype {arr.dtype}")
    s = _F32(arr.reshape(()))
    if not np.isfinite(s) or s <= 0:
        raise ConfigError(f"{op}: {name} must be a positive finite float32, not {float(s)!r}")
    return s


def _zero_point(value: int | np.ndarray | None, dtype: np.dtype, op: str, name: str) -> int:
    if value is None:
        return 0
    arr = np.asarray(value)
    if arr.size != 1:
        raise ConfigError(f"{op}: {name} must be a single value, not shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"{op}: {name} must be an integer, not dtype {arr.dtype}")
    zp = int(arr.reshape(()))
    info = np.iinfo(dtype)
    if not info.min <= zp <= info.max:
        raise ConfigError(f"{op}: {name} {zp} is outside {np.dtype(dtype).name} "
                          f"[{info.min}, {info.max}]")
    return zp


def _check_scales(values: np.ndarray, op: str, name: str) -> np.ndarray:
    """A 1-D array of scales as float32; each must be positive and finite."""
    if values.dtype.kind not in "fiu":
        raise ConfigError(f"{op}: {name} must be numbers, not dtype {values.dtype}")
    s = values.astype(_F32)
    bad = ~np.isfinite(s) | (s <= 0)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ConfigError(f"{op}: {name}[{i}] must be a positive finite float32, "
                          f"not {float(s[i])!r}")
    return s


def _check_zero_points(values: np.ndarray, dtype: np.dtype, op: str, name: str) -> np.ndarray:
    """A 1-D array of zero points as int64; each must lie in ``dtype``."""
    if values.dtype.kind not in "iu":
        raise ConfigError(f"{op}: {name} must be integers, not dtype {values.dtype}")
    z = values.astype(np.int64)
    info = np.iinfo(dtype)
    bad = (z < info.min) | (z > info.max)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ConfigError(f"{op}: {name}[{i}] {int(z[i])} is outside {np.dtype(dtype).name} "
                          f"[{info.min}, {info.max}]")
    return z


# --------------------------------------------------------------------------------------------
# QuantizeLinear / DequantizeLinear
# --------------------------------------------------------------------------------------------

def quantize_linear(x: np.ndarray, scale: float | np.ndarray,
                    zero_point: int | np.ndarray | None = None, *, axis: int = 1,
                    dtype: np.dtype | type | str | None = None) -> np.ndarray:
    """ONNX ``QuantizeLinear`` float32 -> uint8/int8 as ORT's CPU kernel computes it.

    ``y = rne(clamp(f32(x / s), qmin - zp, qmax - zp)) + zp``: one IEEE float32 division (not a
    multiplication by ``1/s``, which disagrees on a few percent of exact ties), clamping in float
    *before* rounding, then ``cvtps2dq`` (round half to even) and the integer zero point.
    Because the bounds are integers this equals the ONNX reference ``sat(rne(x / s) + zp)`` for
    every finite input, ties included. ``+inf`` gives ``qmax`` and ``-inf`` ``qmin``; a NaN gives
    ``qmin`` (``maxps`` returns its second operand for a NaN). The ONNX reference (onnx 1.23)
    returns ``qmin`` for both NaN and ``+inf``.

    Per-axis: ``scale``/``zero_point`` 1-D of length ``x.shape[axis]`` (ORT's default axis is 1).

    Parameters
    ----------
    x : array of float32
    scale : float or 1-D array of float32
    zero_point : int or array, optional
        Its numpy dtype (uint8/int8) selects the output type unless ``dtype`` is given; ORT's
        default without a zero point is uint8 with zero point 0.
    axis : int
        Quantization axis for per-axis scales.
    dtype : uint8 or int8, optional

    Returns
    -------
    numpy.ndarray
        Same shape as ``x``, dtype uint8 or int8.

    Notes
    -----
    Source: ``onnxruntime/core/providers/cpu/quantization/quantize_linear.cc``
    (``QuantizeLinear<T>::Compute`` -> ``ParQuantizeLinearStd``) ->
    ``onnxruntime/core/mlas/lib/quantize.cpp`` ``MlasQuantizeLinear`` -> the platform kernel,
    ``intrinsics/avx512/quantize_avx512f.cpp`` ``MlasQuantizeLinearAvx512F`` on AVX512F machines
    and ``MlasQuantizeLinearKernel`` (SSE2) otherwise; both do the same divide/clamp/convert.
    """
    op = "quantize_linear"
    xs = np.asarray(x)
    if xs.dtype != np.float32:
        raise ConfigError(f"{op}: x must be a float32 array, not dtype {xs.dtype}")
    if dtype is None:
        zdt = np.asarray(zero_point).dtype if zero_point is not None else np.dtype(np.uint8)
        out = zdt if zdt in _QTYPES else np.dtype(np.uint8)
    else:
        out = np.dtype(dtype)
        if out not in _QTYPES:
            raise ConfigError(f"{op}: dtype must be uint8 or int8, not {out}")
    # An empty zero point counts as absent (ORT's optional input), as it always has here.
    absent = zero_point is None or np.size(zero_point) == 0
    params = _linear_params(xs.shape, scale, None if absent else zero_point, axis, out, op)
    # Dividing in float32, clamping to integer bounds, then rounding half to even is the ONNX
    # rule for every finite quotient (the bounds are integers); only NaN differs: MLAS's
    # maxps returns the lower bound.
    info = np.iinfo(out)
    return quantize(xs, params, nan=info.min).astype(out)


def dequantize_linear(x: np.ndarray, scale: float | np.ndarray,
                      zero_point: int | np.ndarray | None = None, *, axis: int = 1) -> np.ndarray:
    """ONNX ``DequantizeLinear`` uint8/int8 -> float32 as ORT computes it.

    ``y = f32(int32(x) - int32(zp)) * s``: the integer difference is exact, converted to float32
    exactly (|difference| <= 255), then one float32 multiplication; identical to the ONNX
    reference. Per-axis with 1-D ``scale``/``zero_point`` along ``axis`` (default 1).

    Notes
    -----
    Source: ``onnxruntime/core/providers/cpu/quantization/quantize_linear.cc``
    ``DequantizeLinearApply<T, float>::op``; the MLAS per-tensor kernels
    ``onnxruntime/core/mlas/lib/dequantize.cpp`` ``MlasDequantizeLinearU8Kernel``/``S8Kernel``
    compute the same expression.
    """
    op = "dequantize_linear"
    xq = _qtensor(x, op, "x")
    # f32(x - zp) is exact for 8-bit values, so one float32 product equals ops.dequantize's
    # single correctly rounded product.
    return dequantize(xq, _linear_params(xq.shape, scale, zero_point, axis, xq.dtype, op))


def _linear_params(shape: tuple[int, ...], scale, zero_point, axis: int, dtype: np.dtype,
                   op: str) -> QuantParams:
    """Validated ``QuantParams`` of Quantize/DequantizeLinear inputs for a tensor of ``shape``.

    A one-element ``scale`` is per tensor; otherwise 1-D along ``axis`` with a zero point of
    the same shape (zeros when ``zero_point`` is None). ``dtype`` (uint8/int8) is the format.
    """
    info = np.iinfo(dtype)
    fmt = IntFormat(info.bits, info.min < 0)
    scale_arr = np.asarray(scale)
    if scale_arr.size == 1:
        return QuantParams(_scale(scale_arr, op, "scale"),
                           _zero_point(zero_point, dtype, op, "zero_point"), fmt)
    if scale_arr.ndim != 1:
        raise ConfigError(f"{op}: per-axis scale must be 1-D, not shape {scale_arr.shape}")
    ax = axis + len(shape) if axis < 0 else axis
    if not 0 <= ax < len(shape):
        raise ConfigError(f"{op}: axis {axis} is out of range for x of shape {shape}")
    if scale_arr.shape[0] != shape[ax]:
        raise ConfigError(f"{op}: per-axis scale has {scale_arr.shape[0]} entries but axis {axis} "
                          f"of x shape {shape} has {shape[ax]}")
    zp_arr = np.zeros(scale_arr.shape, np.int64) if zero_point is None else np.asarray(zero_point)
    if zp_arr.shape != scale_arr.shape:
        raise ConfigError(f"{op}: zero_point shape {zp_arr.shape} does not match scale shape "
                          f"{scale_arr.shape}")
    _check_scales(scale_arr, op, "scale")
    _check_zero_points(zp_arr, dtype, op, "zero_point")
    return QuantParams(scale_arr.astype(_F32), zp_arr, fmt, axis=ax)


# --------------------------------------------------------------------------------------------
# QGemm
# --------------------------------------------------------------------------------------------

def qgemm(a: np.ndarray, a_scale: float, a_zero_point: int | np.ndarray,
          b: np.ndarray, b_scale: float | np.ndarray, b_zero_point: int | np.ndarray,
          c: np.ndarray | None = None, y_scale: float | None = None,
          y_zero_point: int | np.ndarray | None = None, *, alpha: float = 1.0,
          trans_a: bool = False, trans_b: bool = False, isa: str = "auto") -> np.ndarray:
    """``com.microsoft.QGemm`` as ORT computes it (on the instruction path ``isa``).

    ``acc[m, n] = wrap_int32(C[m, n] + sum_k (A[m, k] - a_zp) * (B[k, n] - b_zp[n]))`` (exact
    integer products, int32 wrap-around like MLAS), then per column
    ``M[n] = f32(f32(f32(alpha * a_scale) * b_scale[n]) / y_scale)`` (float32, in that order)
    and MLAS's float requantization ``rne(clamp(f32(f32(acc) * M[n]), qmin - y_zp, qmax - y_zp))
    + y_zp``. Without ``y_scale`` the output is float32 ``f32(f32(acc) * f32(f32(alpha *
    a_scale) * b_scale[n]))``.

    ``A`` is uint8 or int8; ``B`` is int8 (or uint8 when ``A`` is uint8), per tensor or per
    column (``b_scale``/``b_zero_point`` of length N); ``C`` is int32 of shape (), (N,), (1, N),
    (M, 1) or (M, N); the output type is ``A``'s (ORT's type constraint ``TYZ``).

    The integer product is the one MLAS computes on the instruction path ``isa`` (default
    ``auto``: the running CPU's, :mod:`qsim.quant.isa`): exact with VNNI or AMX, and for uint8
    ``A`` times int8 ``B`` on ``avx2``/``avx512bw`` with adjacent K pairs of raw products
    saturated to int16 (``vpmaddubsw``, :func:`qsim.quant.hazards.u8s8_matmul_correction`).

    Notes
    -----
    Source: ``onnxruntime/contrib_ops/cpu/quantization/quant_gemm.cc`` ``QGemm::Compute``,
    ``ComputeOutputScale`` (the scale order), ``SetPostProcessor``; requantization
    ``MLAS_QGEMM_REQUANT_OUTPUT_PROCESSOR`` -> ``onnxruntime/core/mlas/lib/quantize.cpp``
    ``MlasRequantizeOutput``; float output ``MLAS_QGEMM_SCALE_BIAS_OUTPUT_PROCESSOR``
    (``ZeroMode``, no bias). ``K == 0`` (ORT's ``HandleZeroKCase``) is rejected.
    """
    op = "qgemm"
    aq = _qtensor(a, op, "a")
    bq = _qtensor(b, op, "b")
    if aq.ndim != 2 or bq.ndim != 2:
        raise ConfigError(f"{op}: a and b must be 2-D, not shapes {aq.shape} and {bq.shape}")
    if aq.dtype == np.int8 and bq.dtype != np.int8:
        raise ConfigError(f"{op}: with int8 a, b must be int8, not {bq.dtype}")
    am = aq.T if trans_a else aq
    bm = bq.T if trans_b else bq
    m, k = am.shape
    k2, n = bm.shape
    if k != k2:
        raise ConfigError(f"{op}: inner dimensions differ: a gives K={k} (shape {aq.shape}, "
                          f"trans_a={bool(trans_a)}), b gives K={k2} (shape {bq.shape}, "
                          f"trans_b={bool(trans_b)})")
    if k == 0:
        raise ConfigError(f"{op}: K must be at least 1, not 0")
    sa = _scale(a_scale, op, "a_scale")
    za = _zero_point(a_zero_point, aq.dtype, op, "a_zero_point")
    sb_arr = np.asarray(b_scale)
    zb_arr = np.asarray(b_zero_point)
    if sb_arr.size not in (1, n) or sb_arr.ndim > 1:
        raise ConfigError(f"{op}: b_scale must be a scalar or 1-D of length 1 or N={n}, "
                          f"not shape {sb_arr.shape}")
    if zb_arr.shape != sb_arr.shape:
        raise ConfigError(f"{op}: b_zero_point shape {zb_arr.shape} does not match b_scale shape "
                          f"{sb_arr.shape}")
    sb = _check_scales(sb_arr.reshape(-1), op, "b_scale")
    zb = _check_zero_points(zb_arr.reshape(-1), bq.dtype, op, "b_zero_point")
    acc = int_matmul(am.astype(np.int64) - za, bm.astype(np.int64) - zb.reshape(1, -1))
    correction = _engine_correction(isa, am, bm)
    if correction is not None:
        acc = acc + correction
    if c is not None:
        cq = np.asarray(c)
        if cq.dtype != np.int32:
            raise ConfigError(f"{op}: c must be int32, not dtype {cq.dtype}")
        if cq.size != 1 and cq.shape not in ((n,), (1, n), (m, 1), (m, n)):
            raise ConfigError(f"{op}: c shape {cq.shape} does not broadcast as (), (N,), (1, N), "
                              f"(M, 1) or (M, N) with M={m}, N={n}")
        acc = acc + (cq.reshape(()) if cq.size == 1 else cq).astype(np.int64)
    acc = wrap(acc, INT32)
    scale = (_F32(alpha) * sa * sb).astype(_F32)  # (alpha * a_scale) * b_scale[n], left to right
    if y_scale is None:
        if y_zero_point is not None:
            raise ConfigError(f"{op}: y_zero_point needs y_scale")
        return (_i32_to_f32(acc) * scale.reshape(1, -1)).astype(_F32)
    sy = _scale(y_scale, op, "y_scale")
    zy = _zero_point(y_zero_point, aq.dtype, op, "y_zero_point")
    mult = (scale / sy).astype(_F32)
    return _requantize_f32(acc, mult.reshape(1, -1), zy, aq.dtype)


# --------------------------------------------------------------------------------------------
# QLinearAdd / QLinearMul
# --------------------------------------------------------------------------------------------

Functor = Literal["input0_scalar", "input1_scalar", "general"]


def broadcast_functor(shape0: Sequence[int], shape1: Sequence[int]) -> Functor:
    """Which of ORT's three broadcast loops runs for two input shapes.

    ORT's ``Broadcaster`` walks the dimensions from the innermost outwards; the first one where
    the broadcast output is larger than 1 (or the outermost common one) fixes whether each input
    is *scalar* in the innermost span (its extent there is 1). ``BroadcastLooper`` then runs the
    ``input0scalar`` loop if input 0 is, else ``input1scalar`` if input 1 is, else ``general``.
    The choice matters for QLinearAdd: ``input0_scalar`` hands input 1 to MLAS as the first
    operand, which changes the order of its fused multiply-adds and so some roundings.

    Source: ``onnxruntime/core/providers/cpu/math/element_wise_ops.h`` ``Broadcaster``
    constructor, ``BroadcastIterator::Init``, ``IsInput0Scalar``/``IsInput1Scalar`` and
    ``BroadcastLooper``.
    """
    s0 = [int(d) for d in shape0]
    s1 = [int(d) for d in shape1]
    nmin = min(len(s0), len(s1))
    if nmin == 0:
        if not s0:  # input 0 is a rank-0 scalar (both scalars also lands here)
            return "input0_scalar"
        return "input0_scalar" if s0[-1] <= 1 else "input1_scalar"
    d0 = d1 = 1
    for i in range(1, nmin + 1):
        d0, d1 = s0[-i], s1[-i]
        if max(d0, d1) == 1 and i < nmin:
            continue
        break
    if d0 <= 1:
        return "input0_scalar"
    if d1 <= 1:
        return "input1_scalar"
    return "general"


def _binary_operands(a: np.ndarray, b: np.ndarray,
                     op: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    aq = _qtensor(a, op, "a")
    bq = _qtensor(b, op, "b")
    if aq.dtype != bq.dtype:
        raise ConfigError(f"{op}: a and b must have the same dtype, not {aq.dtype} and {bq.dtype}")
    try:
        shape = np.broadcast_shapes(aq.shape, bq.shape)
    except ValueError:
        raise ConfigError(f"{op}: shapes {aq.shape} and {bq.shape} do not broadcast") from None
    return aq, bq, shape


def _saturate_cvt(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``cvtps2dq`` then the saturating packs (int32 -> int16 -> 8 bit)."""
    info = np.iinfo(dtype)
    return np.clip(cvtps_epi32(v), info.min, info.max).astype(dtype)


def qlinear_add(a: np.ndarray, a_scale: float, a_zero_point: int | np.ndarray,
                b: np.ndarray, b_scale: float, b_zero_point: int | np.ndarray,
                c_scale: float, c_zero_point: int | np.ndarray, *, isa: str = "auto") -> np.ndarray:
    """``com.microsoft.QLinearAdd`` (uint8/int8, numpy broadcasting) as ORT computes it.

    ORT calls the MLAS kernel with a *span* operand ``X`` (scale ``sX``, zero point ``zX``) and
    an operand ``Y`` that is either a span or one scalar value; which input is which follows
    :func:`broadcast_functor` (``input0_scalar`` swaps the inputs: X = b, Y = a). With
    ``rX = f32(sX / sC)``, ``rY = f32(sY / sC)``, all float32, FMA single-rounded:

    * ``F = f32(f32(zC) - fma(rX, f32(zX), f32(rY * f32(zY))))``  (GCC contracts
      ``rX*zX + rY*zY`` into one FMA);
    * span Y (``general``): ``v = fma(x, rX, fma(y, rY, F))``;
    * scalar Y: ``F' = fma(y, rY, F)`` once, then ``v = fma(x, rX, F')`` (the same value as the
      general loop; GCC also contracts this ``F + y*rY`` into an FMA);
    * ``q = cvtps_epi32(v)`` (ties to even; NaN or |v| >= 2**31 give -2**31), saturated to int16
      then to the 8-bit type. There is no float clamp: a huge ``v`` lands on ``qmin``.

    On a CPU without AVX2 (``isa="sse"``; default ``auto``, the running CPU's, see
    :mod:`qsim.quant.isa`) MLAS runs its SSE2 kernel instead, every operation rounded:
    ``F = f32(f32(zC) - f32(f32(rX*zX) + f32(rY*zY)))``; span Y:
    ``v = f32(f32(F + f32(x*rX)) + f32(y*rY))``; scalar Y: ``F' = f32(F + f32(y*rY))`` once,
    ``v = f32(F' + f32(x*rX))``.

    Notes
    -----
    Source: ``onnxruntime/contrib_ops/cpu/quantization/qlinear_binary_op.cc``
    ``QLinearAdd<T>::Compute`` (the three functors and the operand swap) ->
    ``onnxruntime/core/mlas/lib/qladd.cpp`` ``MlasQLinearAdd`` -> platform kernel
    ``onnxruntime/core/mlas/lib/intrinsics/avx2/qladd_avx2.cpp``
    ``MlasQLinearAddKernelAvx2Helper`` (selected on every AVX2/FMA3 machine; there is no
    AVX512 variant); without AVX2 the SSE2 ``MlasQLinearAddKernelHelper`` in ``qladd.cpp``.
    """
    op = "qlinear_add"
    aq, bq, shape = _binary_operands(a, b, op)
    sa, sb, sc = (_scale(v, op, n) for v, n in ((a_scale, "a_scale"), (b_scale, "b_scale"),
                                                  (c_scale, "c_scale")))
    za = _zero_point(a_zero_point, aq.dtype, op, "a_zero_point")
    zb = _zero_point(b_zero_point, aq.dtype, op, "b_zero_point")
    zc = _zero_point(c_zero_point, aq.dtype, op, "c_zero_point")
    functor = broadcast_functor(aq.shape, bq.shape)
    xa = np.broadcast_to(aq, shape).astype(_F32)
    xb = np.broadcast_to(bq, shape).astype(_F32)
    if functor == "input0_scalar":  # ORT passes input 1 as the span operand
        x, sx, zx, y, sy, zy = xb, sb, zb, xa, sa, za
    else:
        x, sx, zx, y, sy, zy = xa, sa, za, xb, sb, zb
    rx = _F32(sx / sc)
    ry = _F32(sy / sc)
    if not ort_fma_kernels(resolve_isa(isa)):
        fixed = _F32(_F32(zc) - _F32(_F32(rx * _F32(zx)) + _F32(ry * _F32(zy))))
        with np.errstate(over="ignore", invalid="ignore"):
            if functor == "general":
                v = ((fixed + (x * rx).astype(_F32)).astype(_F32) + (y * ry).astype(_F32)).astype(_F32)
            else:  # the scalar Y is folded into the fixed part once
                folded = (fixed + (y * ry).astype(_F32)).astype(_F32)
                v = (folded + (x * rx).astype(_F32)).astype(_F32)
        return _saturate_cvt(v, aq.dtype)
    fixed = _F32(_F32(zc) - fma_f32(rx, _F32(zx), _F32(ry * _F32(zy))))
    # The scalar loop computes F' = fma(y, rY, F) once and the general loop computes the same
    # fma per element, so one expression covers both; only the operand swap differs.
    v = fma_f32(x, rx, fma_f32(y, ry, fixed))
    return _saturate_cvt(v, aq.dtype)


def qlinear_mul(a: np.ndarray, a_scale: float, a_zero_point: int | np.ndarray,
                b: np.ndarray, b_scale: float, b_zero_point: int | np.ndarray,
                c_scale: float, c_zero_point: int | np.ndarray) -> np.ndarray:
    """``com.microsoft.QLinearMul`` (uint8/int8, numpy broadcasting) as ORT computes it.

    ``p = (a - za) * (b - zb)`` exactly (int16 operands, 32-bit product),
    ``ratio = f32(f32(sa * sb) / sc)``, ``v = f32(f32(f32(p) * ratio) + f32(zc))`` (two
    roundings: this file is built for SSE2, so no FMA), ``q = cvtps_epi32(v)`` (ties to even;
    NaN or |v| >= 2**31 give -2**31) saturated to int16 then to the 8-bit type. Adding the zero
    point in float before rounding can differ from ``rne(p * ratio) + zc``. Which input is the
    span does not matter (both products commute).

    Notes
    -----
    Source: ``onnxruntime/contrib_ops/cpu/quantization/qlinear_binary_op.cc``
    ``QLinearMul<T>::Compute`` -> ``onnxruntime/core/mlas/lib/qlmul.cpp`` ``MlasQLinearMul``
    -> ``MlasQLinearMulKernel`` / ``MlasQLinearMulVectorS16`` (``MLAS_SSE2_INTRINSICS`` branch).
    """
    op = "qlinear_mul"
    aq, bq, shape = _binary_operands(a, b, op)
    sa, sb, sc = (_scale(v, op, n) for v, n in ((a_scale, "a_scale"), (b_scale, "b_scale"),
                                                  (c_scale, "c_scale")))
    za = _zero_point(a_zero_point, aq.dtype, op, "a_zero_point")
    zb = _zero_point(b_zero_point, aq.dtype, op, "b_zero_point")
    zc = _zero_point(c_zero_point, aq.dtype, op, "c_zero_point")
    p = ((np.broadcast_to(aq, shape).astype(np.int64) - za)
         * (np.broadcast_to(bq, shape).astype(np.int64) - zb))
    ratio = _F32(_F32(sa * sb) / sc)
    with np.errstate(over="ignore", invalid="ignore"):
        v = ((_i32_to_f32(p) * ratio).astype(_F32) + _F32(zc)).astype(_F32)
    return _saturate_cvt(v, aq.dtype)


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------

def _global_pool_scale(x_scale: np.float32, y_scale: np.float32, image_size: int,
                       op: str) -> np.float32:
    scale = _F32(x_scale / _F32(y_scale * _F32(image_size)))
    if image_size >= 0x1000000 or scale < _F32(2.0 ** -32) or scale >= _F32(256.0):
        raise ConfigError(
            f"{op}: x_scale / (y_scale * image_size) = {float(scale)!r} with image_size "
            f"{image_size} is outside ORT's range [2**-32, 256) or image_size >= 2**24 "
            f"(ORT throws 'QLinearGlobalAveragePool parameter out of computation range!')")
    return scale


def qlinear_global_average_pool(x: np.ndarray, x_scale: float, x_zero_point: int | np.ndarray,
                                y_scale: float, y_zero_point: int | np.ndarray, *,
                                channels_last: bool = False) -> np.ndarray:
    """``com.microsoft.QLinearGlobalAveragePool`` as ORT computes it (NCHW or NHWC, rank >= 3).

    ``S = image_size`` (product of the spatial dims), ``acc = sum(x) - x_zp * S`` in int32,
    ``M = f32(x_scale / f32(y_scale * f32(S)))`` and MLAS's float requantization
    ``rne(clamp(f32(f32(acc) * M), qmin - y_zp, qmax - y_zp)) + y_zp``. ORT refuses
    ``S >= 2**24`` or ``M`` outside ``[2**-32, 256)``; so does this function (ConfigError).
    Output keeps rank with spatial dims 1.

    Notes
    -----
    Source: ``onnxruntime/contrib_ops/cpu/quantization/qlinear_global_average_pool.cc``
    ``ComputeQLinearGlobalAvgPool`` -> ``onnxruntime/core/mlas/lib/qlgavgpool.cpp``
    ``CheckQLinearGlobalAveragePoolScaleAndSize``, ``MlasQLinearGlobalAveragePoolNchw`` and
    ``MlasQLinearGlobalAveragePoolNhwc`` (``MLAS_SSE2_INTRINSICS`` branch, requantization by
    ``MlasRequantizeOutputVector`` in ``quantize.cpp``). Both layouts compute the same sums.
    """
    op = "qlinear_global_average_pool"
    xq = _qtensor(x, op, "x")
    if xq.ndim < 3:
        raise ConfigError(f"{op}: x must have at least 3 dimensions, not shape {xq.shape}")
    sx = _scale(x_scale, op, "x_scale")
    sy = _scale(y_scale, op, "y_scale")
    zx = _zero_point(x_zero_point, xq.dtype, op, "x_zero_point")
    zy = _zero_point(y_zero_point, xq.dtype, op, "y_zero_point")
    spatial = tuple(range(1, xq.ndim - 1)) if channels_last else tuple(range(2, xq.ndim))
    image_size = int(np.prod([xq.shape[d] for d in spatial]))
    scale = _global_pool_scale(sx, sy, image_size, op)
    acc = wrap(xq.astype(np.int64).sum(axis=spatial, keepdims=True) - zx * image_size, INT32)
    return _requantize_f32(acc, scale, zy, xq.dtype)


def _pool_output_size(in_size: int, kernel: int, stride: int, head: int, pad_sum: int,
                      dilation: int, ceil_mode: bool) -> int:
    """``PoolAttributes::ComputeOutputSize``: float32 division, then truncation or ceil.

    With ``ceil_mode`` a last window that would start in the tail padding is dropped
    (``(out - 1) * stride >= in + pad_head``), as in PyTorch; measured on ORT 1.32.
    """
    span = _F32(in_size + pad_sum - dilation * (kernel - 1) - 1) / _F32(stride)
    value = np.ceil(_F32(span + _F32(1))) if ceil_mode else _F32(span + _F32(1))
    out = int(np.trunc(value))
    if ceil_mode and (out - 1) * stride >= in_size + head:
        out -= 1
    return out


def _cdiv(a: int, b: int) -> int:
    """C/C++ integer division, truncating toward zero (Python's ``//`` floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


@dataclass(frozen=True)
class _PoolGeometry:
    """Effective pooling geometry per spatial dim, after ORT's auto_pad and output-size rules."""

    outs: tuple[int, ...]
    heads: tuple[int, ...]
    tails: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    kernel: tuple[int, ...]


def _pool_geometry(op: str, spatial: Sequence[int], kernel_shape: Sequence[int],
                   strides: Sequence[int] | None, pads: Sequence[int] | None,
                   dilations: Sequence[int] | None, ceil_mode: bool,
                   auto_pad: str) -> _PoolGeometry:
    """``PoolAttributes`` (constructor checks, ``ComputeSizePadDilations``) for one input."""
    nd = len(kernel_shape)
    if nd != len(spatial):
        raise ConfigError(f"{op}: kernel_shape has {nd} dims but the input has {len(spatial)} "
                          f"spatial dims")
    kernel = [int(k) for k in kernel_shape]
    stride = [int(v) for v in strides] if strides else [1] * nd
    dilation = [int(v) for v in dilations] if dilations else [1] * nd
    pad = [int(v) for v in pads] if pads else [0] * (2 * nd)
    if len(stride) != nd or len(dilation) != nd or len(pad) != 2 * nd:
        raise ConfigError(f"{op}: strides {stride}, dilations {dilation} and pads {pad} must have "
                          f"{nd}, {nd} and {2 * nd} entries for kernel_shape {kernel}")
    if min(kernel + stride + dilation) < 1:
        raise ConfigError(f"{op}: kernel_shape, strides and dilations must be positive, not "
                          f"{kernel}, {stride}, {dilation}")
    if any(not (0 <= pad[d] < kernel[d] and 0 <= pad[d + nd] < kernel[d]) for d in range(nd)):
        raise ConfigError(f"{op}: pads must be non-negative and smaller than the kernel "
                          f"(ORT: 'Pad should be smaller than kernel'), not pads {pad} for "
                          f"kernel_shape {kernel}")
    if auto_pad not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise ConfigError(f"{op}: auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER, "
                          f"not {auto_pad!r}")
    outs, heads, tails = [], [], []
    for d in range(nd):
        n, k, s, dil = int(spatial[d]), kernel[d], stride[d], dilation[d]
        if auto_pad in ("NOTSET", ""):
            head, tail = pad[d], pad[d + nd]
        elif auto_pad == "VALID":
            head, tail = 0, 0
        else:  # SAME_*: ORT's legacy target size, ignoring dilation
            needed = ((n + s - 1) // s - 1) * s + k - n  # may be negative; ORT keeps it
            head = _cdiv(needed + 1, 2) if auto_pad == "SAME_LOWER" else _cdiv(needed, 2)
            tail = needed - head
        out = _pool_output_size(n, k, s, head, head + tail, dil, ceil_mode)
        if out < 0:  # ORT allows an empty output dimension but not a negative one
            raise ConfigError(f"{op}: spatial dim {d} of size {n} gives output size {out} with "
                              f"kernel {k}, stride {s}, dilation {dil}, pads ({head}, {tail}); "
                              f"it must not be negative")
        outs.append(out)
        heads.append(head)
        tails.append(tail)
    return _PoolGeometry(tuple(outs), tuple(heads), tuple(tails), tuple(stride),
                         tuple(dilation), tuple(kernel))


def _window_index(out: int, in_size: int, kernel: int, stride: int, head: int,
                  dilation: int) -> tuple[np.ndarray, np.ndarray]:
    """Input index of every (output, kernel tap) and whether it lies inside the input."""
    start = np.arange(out)[:, None] * stride - head
    idx = start + np.arange(kernel)[None, :] * dilation
    return np.clip(idx, 0, max(in_size - 1, 0)), (idx >= 0) & (idx < in_size)


def _to_nchw(x: np.ndarray, channels_last: bool) -> np.ndarray:
    return np.moveaxis(x, -1, 1) if channels_last else x


def _from_nchw(x: np.ndarray, channels_last: bool) -> np.ndarray:
    return np.moveaxis(x, 1, -1) if channels_last else x


def _gather_taps(x: np.ndarray, geo: _PoolGeometry,
                 spatial: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield, for each kernel tap in row-major order, the gathered values and validity mask.

    The loop runs over kernel taps (at most a few dozen), each step vectorised over the whole
    tensor; row-major tap order is ORT's summation order.
    """
    nd = len(geo.kernel)
    outs = geo.outs
    idx_valid = [_window_index(outs[d], spatial[d], geo.kernel[d], geo.strides[d], geo.heads[d],
                               geo.dilations[d]) for d in range(nd)]
    for tap in np.ndindex(*geo.kernel):
        index: list = [slice(None), slice(None)]
        mask = np.ones((), dtype=bool)
        for d in range(nd):
            idx, valid = idx_valid[d]
            shape = [1] * nd
            shape[d] = outs[d]
            index.append(idx[:, tap[d]].reshape(shape))
            mask = mask & valid[:, tap[d]].reshape(shape)
        yield x[tuple(index)], mask


def qlinear_average_pool(x: np.ndarray, x_scale: float, x_zero_point: int | np.ndarray | None,
                         y_scale: float, y_zero_point: int | np.ndarray | None, *,
                         kernel_shape: Sequence[int], strides: Sequence[int] | None = None,
                         pads: Sequence[int] | None = None, count_include_pad: bool = False,
                         ceil_mode: bool = False, auto_pad: str = "NOTSET",
                         channels_last: bool = False) -> np.ndarray:
    """``com.microsoft.QLinearAveragePool`` (1-D, 2-D, 3-D; NCHW or NHWC) as ORT computes it.

    ORT does this one in float32. Each input is dequantized ``d = f32(x_scale * f32(x - x_zp))``;
    each window sums its in-bounds taps in row-major order with float32 additions starting from
    0, divides by ``f32(count)`` (``count`` = the kernel size with ``count_include_pad``, else
    the number of in-bounds taps; an empty window gives NaN), then
    ``q = (int32)nearbyintf(f32(f32(sum / count) / y_scale) + f32(y_zp))`` (ties to even, NaN or
    out of int32 gives -2**31) clamped to the 8-bit range. Window geometry: ``start = o *
    stride - pad_head``, the window is clipped to the input (not to the padding), output size
    ``trunc_or_ceil(f32(in + pads - kernel) / stride + 1)``, and with ``ceil_mode`` a last window
    that would start in the tail padding is dropped. ``auto_pad`` SAME pads follow ORT (they
    ignore dilation and may be negative).

    When the kernel covers the whole (unpadded) image ORT switches to the global average pool
    and its fixed formula (:func:`qlinear_global_average_pool`), including its range check.

    Notes
    -----
    Source: ``onnxruntime/contrib_ops/cpu/quantization/qlinear_pool.cc``
    ``QLinearAveragePool::ComputeImpl`` (the ``fallback_to_global`` test),
    ``dequantize_array``/``dequantize_value``, ``QLinearPool{1,2,3}DTask`` and
    ``QLinearPoolNhwc{1,2,3}DTask``, ``quantize_value``; ``AveragePool::Process``/``Finalize``
    in ``onnxruntime/core/providers/cpu/nn/pool_base.h``; geometry
    ``onnxruntime/core/providers/cpu/nn/pool_attributes.h`` ``ComputeOutputSize``.
    """
    op = "qlinear_average_pool"
    xq = _qtensor(x, op, "x")
    if xq.ndim < 3:
        raise ConfigError(f"{op}: x must have at least 3 dimensions, not shape {xq.shape}")
    if len(kernel_shape) > 3:
        raise ConfigError(f"{op}: ORT supports 1-D to 3-D pooling, not kernel_shape "
                          f"{list(kernel_shape)}")
    sx = _scale(x_scale, op, "x_scale")
    sy = _scale(y_scale, op, "y_scale")
    zx = _zero_point(x_zero_point, xq.dtype, op, "x_zero_point")
    zy = _zero_point(y_zero_point, xq.dtype, op, "y_zero_point")
    nchw = _to_nchw(xq, channels_last)
    spatial = nchw.shape[2:]
    geo = _pool_geometry(op, spatial, kernel_shape, strides, pads, None, ceil_mode, auto_pad)
    if tuple(spatial) == geo.kernel and not any(geo.heads) and not any(geo.tails):
        return qlinear_global_average_pool(xq, sx, zx, sy, zy, channels_last=channels_last)
    deq = (_i32_to_f32(nchw.astype(np.int64) - zx) * sx).astype(_F32)
    total = np.zeros(nchw.shape[:2] + geo.outs, dtype=_F32)
    count = np.zeros(geo.outs, dtype=np.int64)
    for values, mask in _gather_taps(deq, geo, spatial):
        total = (total + np.where(mask, values, _F32(0))).astype(_F32)
        count = count + mask
    divisor = np.full(count.shape, int(np.prod(kernel_shape))) if count_include_pad else count
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = (total / divisor.astype(_F32)).astype(_F32)
        v = ((mean / sy).astype(_F32) + _F32(zy)).astype(_F32)
    info = np.iinfo(xq.dtype)
    q = np.clip(_cvttss_epi32(np.rint(v)), info.min, info.max).astype(xq.dtype)
    return _from_nchw(q, channels_last)


def max_pool(x: np.ndarray, *, kernel_shape: Sequence[int], strides: Sequence[int] | None = None,
             pads: Sequence[int] | None = None, dilations: Sequence[int] | None = None,
             ceil_mode: bool = False, auto_pad: str = "NOTSET") -> np.ndarray:
    """ONNX ``MaxPool`` on uint8/int8 (NCHW, 1-D to 3-D) as ORT computes it.

    Each output is the maximum over its window's in-bounds taps ``start + j * dilation``,
    ``start = o * stride - pad_head``; a window without an in-bounds tap would give the type's
    lowest value. Output size ``trunc_or_ceil(f32(in + pads - dilation * (kernel - 1) - 1) /
    stride + 1)``, minus the last window with ``ceil_mode`` when it would start in the tail
    padding. Exact (no arithmetic); ``storage_order`` only affects the optional Indices output,
    not produced here.

    Notes
    -----
    Source: ``onnxruntime/core/providers/cpu/nn/pool.cc`` ``MaxPoolV8::ComputeImpl`` and the
    ``MaxPool{1,2,3}DTask`` functors in ``onnxruntime/core/providers/cpu/nn/pool_functors.h``;
    geometry ``onnxruntime/core/providers/cpu/nn/pool_attributes.h``.
    """
    op = "max_pool"
    xq = _qtensor(x, op, "x")
    if xq.ndim < 3 or len(kernel_shape) != xq.ndim - 2 or len(kernel_shape) > 3:
        raise ConfigError(f"{op}: x of shape {xq.shape} needs a kernel_shape with one entry per "
                          f"spatial dim (1 to 3), not {list(kernel_shape)}")
    spatial = xq.shape[2:]
    geo = _pool_geometry(op, spatial, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
    info = np.iinfo(xq.dtype)
    best = np.full(xq.shape[:2] + geo.outs, info.min, dtype=xq.dtype)
    for values, mask in _gather_taps(xq, geo, spatial):
        best = np.maximum(best, np.where(mask, values, xq.dtype.type(info.min)))
    return best


# --------------------------------------------------------------------------------------------
# Lookup-table ops: QLinearConcat, QLinearLeakyRelu, QLinearSigmoid
# --------------------------------------------------------------------------------------------

def _lookup_table(dtype: np.dtype, x_scale: np.float32, x_zero_point: int, y_scale: np.float32,
                  y_zero_point: int,
                  transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``QlinearBuildLookupTable``: dequantize all 256 codes, transform, ``MlasQuantizeLinear``."""
    info = np.iinfo(dtype)
    codes = np.arange(info.min, info.max + 1, dtype=np.int64)
    deq = (_i32_to_f32(codes - x_zero_point) * x_scale).astype(_F32)
    table = quantize_linear(transform(deq), y_scale, np.array(y_zero_point, dtype=dtype))
    return table  # indexed by code - info.min


def _apply_table(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    info = np.iinfo(x.dtype)
    return table[x.astype(np.int64) - info.min]


def qlinear_concat(inputs: Sequence[tuple[np.ndarray, float, int | np.ndarray]], y_scale: float,
                   y_zero_point: int | np.ndarray, *, axis: int) -> np.ndarray:
    """``com.microsoft.QLinearConcat`` as ORT computes it.

    Each input ``(x, x_scale, x_zp)`` is requantized through a 256-entry table
    ``T[q] = rne(clamp(f32(f32(x_scale * f32(q - x_zp)) / y_scale), qmin - y_zp, qmax - y_zp))
    + y_zp`` (dequantize, then exactly :func:`quantize_linear`); inputs whose scale and zero
    point equal the output's are copied (the table would be the identity anyway), then the
    results are concatenated along ``axis``. The output dtype is the inputs' dtype.

    Notes
    -----
    Source: ``onnxruntime/contrib_ops/cpu/quantization/qlinear_concat.cc``
    ``QLinearConcat::Compute``; table ``qlinear_lookup_table.cc`` ``QlinearBuildLookupTable``
    (``MlasQuantizeLinear`` for the quantization) and ``QLinearLookupTableTransform``.
    """
    op = "qlinear_concat"
    if not inputs:
        raise ConfigError(f"{op}: needs at least one input, not 0")
    first = _qtensor(inputs[0][0], op, "inputs[0]")
    dtype = first.dtype
    sy = _scale(y_scale, op, "y_scale")
    zy = _zero_point(y_zero_point, dtype, op, "y_zero_point")
    parts = []
    for i, item in enumerate(inputs):
        if len(item) != 3:
            raise ConfigError(f"{op}: inputs[{i}] must be (tensor, scale, zero_point), not "
                              f"{len(item)} items")
        xi = _qtensor(item[0], op, f"inputs[{i}]")
        if xi.dtype != dtype:
            raise ConfigError(f"{op}: inputs[{i}] has dtype {xi.dtype} but inputs[0] has {dtype}")
        if xi.ndim != first.ndim:
            raise ConfigError(f"{op}: inputs[{i}] has rank {xi.ndim} but inputs[0] has rank "
                              f"{first.ndim}")
        sx = _scale(item[1], op, f"inputs[{i}] scale")
        zx = _zero_point(item[2], dtype, op, f"inputs[{i}] zero_point")
        if sx == sy and zx == zy:
            parts.append(xi)
        else:
            parts.append(_apply_table(xi, _lookup_table(dtype, sx, zx, sy, zy, lambda v: v)))
    ax = axis + first.ndim if axis < 0 else axis
    if not 0 <= ax < first.ndim:
        raise ConfigError(f"{op}: axis {axis} is out of range for rank {first.ndim}")
    for i, p in enumerate(parts):
        if p.shape[:ax] + p.shape[ax + 1:] != first.shape[:ax] + first.shape[ax + 1:]:
            raise ConfigError(f"{op}: inputs[{i}] shape {p.shape} differs from inputs[0] shape "
                              f"{first.shape} outside axis {axis}")
    return np.concatenate(parts, axis=ax)


def qlinear_leaky_relu(x: np.ndarray, x_scale: float, x_zero_point: int | np.ndarray | None,
                       y_scale: float, y_zero_point: int | np.ndarray | None, *,
                       alpha: float = 0.01) -> np.ndarray:
    """``com.microsoft.QLinearLeakyRelu`` as ORT computes it: a 256-entry lookup table.

    ``d = f32(x_scale * f32(q - x_zp))``; ``f = d if d >= 0 else f32(alpha * d)`` (alpha read as
    float32); ``T[q] = quantize_linear(f, y_scale, y_zp)``; ``y = T[x]``.

    Notes
    -----
    Source: ``onnxruntime/contrib_ops/cpu/quantization/qlinear_activations.cc``
    ``QLinearLeakyRelu<T>`` (the lambda) and ``QLinearLookupBase<T>::ComputeBase``;
    ``qlinear_lookup_table.cc`` ``QlinearBuildLookupTable``.
    """
    op = "qlinear_leaky_relu"
    xq = _qtensor(x, op, "x")
    sx, sy = _scale(x_scale, op, "x_scale"), _scale(y_scale, op, "y_scale")
    zx = _zero_point(x_zero_point, xq.dtype, op, "x_zero_point")
    zy = _zero_point(y_zero_point, xq.dtype, op, "y_zero_point")
    a = _F32(alpha)
    table = _lookup_table(xq.dtype, sx, zx, sy, zy,
                          lambda d: np.where(d >= 0, d, (a * d).astype(_F32)).astype(_F32))
    return _apply_table(xq, table)


_LOGISTIC = {name: _F32(v) for name, v in (
    ("lower", -18.0), ("upper", 18.0),
    ("a9", 4.37031012579801e-11), ("a7", 1.15627324459942e-07), ("a5", 6.08574864600143e-05),
    ("a3", 8.51377133304701e-03), ("a1", 2.48287947061529e-01),
    ("b10", 6.10247389755681e-13), ("b8", 5.76102136993427e-09), ("b6", 6.29106785017040e-06),
    ("b4", 1.70198817374094e-03), ("b2", 1.16817656904453e-01), ("b0", 9.93151921023180e-01))}


def mlas_logistic(x: np.ndarray, *, isa: str = "auto") -> np.ndarray:
    """MLAS's float32 logistic (a rational approximation) on the instruction path ``isa``.

    ``t = min(max(x, -18), 18)``, ``t2 = t*t``; ``p = fma(fma(fma(fma(t2, a9, a7), t2, a5), t2,
    a3), t2, a1)``, ``p = t * p``; ``q = fma(fma(fma(fma(fma(t2, b10, b8), t2, b6), t2, b4), t2,
    b2), t2, b0)``; ``y = max(0, f32(f32(p / q) + 0.5))`` (no upper clamp in this kernel):
    ``MlasComputeLogisticF32KernelFma3``, selected on every CPU with AVX2 and FMA3. Without
    AVX2 (``isa="sse"``; default ``auto``, the running CPU's) MLAS runs the SSE2
    ``MlasLogisticKernel``: the same steps with each product and sum rounded separately and
    the result clamped to ``[0, 1]``.

    Source: ``onnxruntime/core/mlas/lib/x86_64/LogisticKernelFma3.S`` (same as
    ``amd64/LogisticKernelFma3.asm``); ``MlasLogisticKernel`` and the constants
    ``MlasLogisticConstants`` in ``onnxruntime/core/mlas/lib/logistic.cpp``.
    """
    c = _LOGISTIC
    t = np.asarray(x, dtype=_F32)
    t = np.minimum(np.maximum(t, c["lower"]), c["upper"])
    t2 = (t * t).astype(_F32)
    fma = ort_fma_kernels(resolve_isa(isa))
    if fma:
        def step(acc, coefficient):
            return fma_f32(t2, acc, coefficient)
    else:
        def step(acc, coefficient):
            return ((acc * t2).astype(_F32) + coefficient).astype(_F32)
    p = step(c["a9"], c["a7"])
    for name in ("a5", "a3", "a1"):
        p = step(p, c[name])
    p = (t * p).astype(_F32)
    q = step(c["b10"], c["b8"])
    for name in ("b6", "b4", "b2", "b0"):
        q = step(q, c[name])
    y = ((p / q).astype(_F32) + _F32(0.5)).astype(_F32)
    if fma:
        return np.maximum(_F32(0), y).astype(_F32)
    return np.minimum(np.maximum(_F32(0), y), _F32(1)).astype(_F32)


def qlinear_sigmoid(x: np.ndarray, x_scale: float, x_zero_point: int | np.ndarray | None,
                    y_scale: float, y_zero_point: int | np.ndarray | None, *,
                    isa: str = "auto") -> np.ndarray:
    """``com.microsoft.QLinearSigmoid`` as ORT computes it: a 256-entry lookup table.

    ``d = f32(x_scale * f32(q - x_zp))``, ``T[q] = quantize_linear(mlas_logistic(d), y_scale,
    y_zp)``, ``y = T[x]``; :func:`mlas_logistic` is MLAS's rational approximation on the
    instruction path ``isa`` (FMA3, or SSE2 without AVX2), not the exact sigmoid.

    Notes
    -----
    Source: ``onnxruntime/contrib_ops/cpu/quantization/qlinear_activations.cc``
    ``QLinearSigmoid<T>`` (``MlasComputeLogistic``), ``qlinear_lookup_table.cc``
    ``QlinearBuildLookupTable``.
    """
    op = "qlinear_sigmoid"
    xq = _qtensor(x, op, "x")
    sx, sy = _scale(x_scale, op, "x_scale"), _scale(y_scale, op, "y_scale")
    zx = _zero_point(x_zero_point, xq.dtype, op, "x_zero_point")
    zy = _zero_point(y_zero_point, xq.dtype, op, "y_zero_point")
    logistic = resolve_isa(isa)
    return _apply_table(xq, _lookup_table(xq.dtype, sx, zx, sy, zy,
                                          lambda d: mlas_logistic(d, isa=logistic)))
