"""Small ONNX operators in numpy: constant folding at import and the ``onnx_op`` layer at run time.

ONNX models compute some tensors with plain operators around the quantized ones: a scale as
``Div(range, 255)``, a zero point as ``Cast(Round(Clip(...)))`` (the expanded
``DynamicQuantizeLinear``), a shape with ``Unsqueeze``. The importer folds such a node when all
its inputs are constants (:func:`evaluate` on the constants) and otherwise emits an
:class:`~qsim.nn.layers.OnnxOp` layer, which the engine runs with the same function.

Most operators here are exact under IEEE arithmetic in the tensor's own dtype (``+ - * /``,
``sqrt``, comparisons, min/max, rounding, reductions by min/max, casts between exactly
representable values), so their result does not depend on the engine that computes it. The
exceptions compute, in float32, exactly what ONNX Runtime's CPU kernels compute (the operation
order and the MLAS approximations, verified against ORT 1.32 in ``tests/nn/test_bert_block.py``):
``Erf`` and ``Gelu`` (MLAS's FMA3 erf kernel, bit-exact). ``LayerNormalization`` is the one
float operator here that is *not* bit-exact with ORT (see :func:`layer_norm`). Other
transcendental functions (``Exp``, ``Tanh``, ...) are absent.

:data:`CONTRIB` holds ONNX Runtime ``com.microsoft`` operators that run the same way:
``QLinearSoftmax`` (ORT's lookup-table kernel) and ``QLinearReduceMean`` (which ORT 1.32 has no
CPU kernel for; qsim uses the arithmetic of ORT's ``QLinearGlobalAveragePool``).

:data:`OPS` maps each operator name to ``(function, static)``: ``function(inputs, attrs,
opset)`` takes the node's inputs by position (``None`` for an omitted optional input) and
returns its outputs; ``static`` lists the input positions that must be constants (axes,
shapes) for the output's shape to be known at import.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from qsim.errors import ConfigError

__all__ = ["OPS", "CONTRIB", "evaluate", "ONNX_DTYPES", "mlas_erf", "layer_norm", "qlinear_softmax",
           "qlinear_reduce_mean"]

#: numpy dtypes of the ONNX element types ``Cast`` can produce here (TensorProto numbers).
ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
               7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
               13: np.uint64}

Inputs = Sequence["np.ndarray | None"]


def _same_type(op: str, values: Sequence[np.ndarray]) -> np.dtype:
    dtypes = {v.dtype for v in values}
    if len(dtypes) != 1:
        raise ConfigError(f"{op} needs inputs of one element type, not "
                          f"{', '.join(sorted(d.name for d in dtypes))}")
    return dtypes.pop()


def _binary(op: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def run(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
        a, b = (np.asarray(v) for v in inputs[:2])
        dtype = _same_type(op, (a, b))
        with np.errstate(all="ignore"):  # IEEE results (inf, nan) or integer wrap-around
            return [np.asarray(fn(a, b)).astype(dtype, copy=False)]
    return run


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        if np.any(b == 0):
            raise ConfigError("integer Div by zero")
        # C's division truncates toward zero (ONNX Runtime); numpy's // floors
        q = np.abs(a.astype(np.int64)) // np.abs(b.astype(np.int64))
        return np.where((a < 0) != (b < 0), -q, q)
    return a / b


def _variadic(op: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def run(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
        values = [np.asarray(v) for v in inputs if v is not None]
        if not values:
            raise ConfigError(f"{op} needs at least one input")
        dtype = _same_type(op, values)
        out = values[0]
        for v in values[1:]:
            out = fn(out, v)
        return [np.asarray(out).astype(dtype, copy=False)]
    return run


def _unary(fn: Callable[[np.ndarray], np.ndarray], *, floats_only: bool = False, op: str = ""):
    def run(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
        x = np.asarray(inputs[0])
        if floats_only and x.dtype.kind != "f":
            raise ConfigError(f"{op} needs a floating-point input, not {x.dtype}")
        with np.errstate(all="ignore"):
            return [np.asarray(fn(x)).astype(x.dtype, copy=False)]
    return run


def _reciprocal(x: np.ndarray) -> np.ndarray:
    return np.asarray(1, x.dtype) / x


def _clip(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    if opset < 11:
        lo = attrs.get("min", -np.inf)
        hi = attrs.get("max", np.inf)
    else:
        lo = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
        hi = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    out = x
    if lo is not None:
        out = np.maximum(out, np.asarray(lo).astype(x.dtype).reshape(()))
    if hi is not None:
        out = np.minimum(out, np.asarray(hi).astype(x.dtype).reshape(()))
    return [np.asarray(out).astype(x.dtype, copy=False)]


def _cast(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    to = int(attrs.get("to", 0))
    if to not in ONNX_DTYPES:
        raise ConfigError(f"Cast to element type {to} is not supported")
    x = np.asarray(inputs[0])
    target = np.dtype(ONNX_DTYPES[to])
    if target.kind in "iu" and x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise ConfigError("Cast of a non-finite float to an integer type is undefined")
        info = np.iinfo(target)
        t = np.trunc(x.astype(np.float64))
        if np.any((t < info.min) | (t > info.max)):
            raise ConfigError(f"Cast of a value outside {target.name} to {target.name} is "
                              f"undefined in ONNX")
        return [t.astype(target)]
    with np.errstate(all="ignore"):
        return [x.astype(target)]


def _axes(inputs: Inputs, attrs: dict, opset: int, since: int, position: int = 1) -> tuple | None:
    if opset >= since:
        value = inputs[position] if len(inputs) > position else None
        return None if value is None else tuple(int(a) for a in np.asarray(value).reshape(-1))
    axes = attrs.get("axes")
    return None if axes is None else tuple(int(a) for a in axes)


def _reduce(op: str, fn: Callable[..., np.ndarray]):
    def run(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
        x = np.asarray(inputs[0])
        axes = _axes(inputs, attrs, opset, 18)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if int(attrs.get("noop_with_empty_axes", 0)):
                return [x]
            axes = tuple(range(x.ndim))
        if x.size == 0:
            raise ConfigError(f"{op} of an empty tensor is not supported")
        return [np.asarray(fn(x, axis=tuple(a % max(x.ndim, 1) for a in axes),
                              keepdims=keep)).astype(x.dtype, copy=False)]
    return run


def _where(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    cond, a, b = (np.asarray(v) for v in inputs[:3])
    if cond.dtype != np.bool_:
        raise ConfigError(f"Where needs a bool condition, not {cond.dtype}")
    dtype = _same_type("Where", (a, b))
    return [np.where(cond, a, b).astype(dtype, copy=False)]


def _compare(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def run(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
        a, b = (np.asarray(v) for v in inputs[:2])
        _same_type("a comparison", (a, b))
        return [np.asarray(fn(a, b), dtype=np.bool_)]
    return run


def _unsqueeze(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    axes = _axes(inputs, attrs, opset, 13)
    if axes is None:
        raise ConfigError("Unsqueeze needs axes")
    rank = x.ndim + len(axes)
    out = x
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return [out]


def _squeeze(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    axes = _axes(inputs, attrs, opset, 13)
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


def _reshape(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    shape = [int(d) for d in np.asarray(inputs[1]).reshape(-1)]
    if not int(attrs.get("allowzero", 0)):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _flatten(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    axis = int(attrs.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)]


def _transpose(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    perm = attrs.get("perm")
    return [np.transpose(x, None if perm is None else tuple(int(p) for p in perm))]


def _concat(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    values = [np.asarray(v) for v in inputs if v is not None]
    _same_type("Concat", values)
    return [np.concatenate(values, axis=int(attrs["axis"]))]


def _shape(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    dims = np.asarray(np.shape(inputs[0]), np.int64)
    start = int(attrs.get("start", 0))
    end = attrs.get("end")
    return [dims[start:None if end is None else int(end)]]


def _gather(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x, idx = np.asarray(inputs[0]), np.asarray(inputs[1])
    if idx.dtype.kind not in "iu":
        raise ConfigError(f"Gather needs integer indices, not {idx.dtype}")
    axis = int(attrs.get("axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < max(x.ndim, 1):
        raise ConfigError(f"Gather axis {attrs.get('axis', 0)} is out of range for rank {x.ndim}")
    size = x.shape[axis]
    if np.any((idx < -size) | (idx >= size)):
        raise ConfigError(f"Gather index out of range [-{size}, {size - 1}]")
    return [np.take(x, np.where(idx < 0, idx + size, idx).astype(np.int64), axis=axis)]


# ------------------------------------------------------------------------------------------
# float32 operators as ONNX Runtime's CPU kernels compute them
# ------------------------------------------------------------------------------------------

_F32 = np.float32
# MlasErfConstants (onnxruntime/core/mlas/lib/erf.cpp), used by MlasErfKernelFma3
_ERF_UPPER, _ERF_SPLIT = _F32(3.925), _F32(0.921875)
_ERF_SMALL = tuple(_F32(v) for v in (-5.99104969e-4, 4.99339588e-3, -2.67667342e-2,
                                     1.12818025e-1, -3.76124859e-1, 1.28379151e-1))
_ERF_BIG = tuple(_F32(v) for v in (1.72948930e-5, -3.83208680e-4, 3.88393435e-3, -2.42545605e-2,
                                   1.06777847e-1, 6.34846687e-1, 1.28717512e-1))
_EXP_LOWER, _EXP_LOG2E = _F32(-88.3762626647949), _F32(1.44269504088896341)
_EXP_LOG2_HI, _EXP_LOG2_LO = _F32(-6.93145752e-1), _F32(-1.42860677e-6)
_EXP_P = tuple(_F32(v) for v in (1.38319808e-3, 8.37550033e-3, 4.16689515e-2, 1.66664466e-1,
                                 4.99999851e-1, 1.0, 1.0))
_EXP_C = _F32(1.25829120e+7)


def mlas_erf(x: np.ndarray) -> np.ndarray:
    """``erf`` as MLAS's ``MlasErfKernelFma3`` computes it (every x86-64 CPU with AVX2/FMA3).

    ``a = min(|x|, 3.925)``; for ``a < 0.921875`` the odd polynomial ``fma(p(a*a), a, a)``, else
    ``1 - exp(-fma(q(a), a, a))`` with MLAS's own ``exp`` (range reduction by the 1.5 * 2^23
    rounding constant, a degree-6 polynomial, the power of two built in the exponent bits); the
    sign copied back. Every step is one float32 operation or one fused multiply-add, in the
    kernel's order (:func:`qsim.quant.ortops.fma_f32`).
    """
    from qsim.quant.ortops import fma_f32

    x = np.asarray(x, _F32)
    with np.errstate(all="ignore"):
        sign = np.signbit(x)
        a = np.abs(x)
        a = np.where(np.isnan(a), _ERF_UPPER, np.minimum(a, _ERF_UPPER))  # vminps(a, upper)
        s = (a * a).astype(_F32)
        p = np.full(a.shape, _ERF_SMALL[0], _F32)
        for c in _ERF_SMALL[1:]:
            p = fma_f32(p, s, c)
        p = fma_f32(p, a, a)
        big = a >= _ERF_SPLIT
        small = np.where(big, _F32(0), p)
        ab = np.where(big, a, _F32(0))
        r = np.full(a.shape, _ERF_BIG[0], _F32)
        for c in _ERF_BIG[1:]:
            r = fma_f32(r, ab, c)
        r = fma_f32(r, ab, ab)
        e = -r
        e = np.where(np.isnan(e), _EXP_LOWER, np.maximum(e, _EXP_LOWER))  # vmaxps(e, lower)
        t = (fma_f32(_EXP_LOG2E, e, _EXP_C) - _EXP_C).astype(_F32)
        f = fma_f32(t, _EXP_LOG2_HI, e)
        f = fma_f32(t, _EXP_LOG2_LO, f)
        y = np.full(a.shape, _EXP_P[0], _F32)
        for c in _EXP_P[1:]:
            y = fma_f32(y, f, c)
        power = ((np.trunc(t).astype(np.int64) + 127) << 23).astype(np.uint32).view(_F32)
        y = (y * power).astype(_F32)
        big_value = (_F32(1) - y).astype(_F32)
    bits = big_value.view(np.uint32) | small.astype(_F32).view(np.uint32)
    bits = bits | (sign.astype(np.uint32) << 31)
    out = bits.view(_F32).reshape(x.shape)
    return np.where(np.isnan(x), x, out)  # ORT 1.32 returns NaN for NaN


def _erf(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    if x.dtype != np.float32:
        raise ConfigError(f"Erf is supported on float32, not {x.dtype}")
    return [mlas_erf(x)]


def _gelu(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    """ORT's ``Gelu`` (opset 20 and com.microsoft): ``t = x * f32(1/sqrt(2))``, MLAS erf,
    ``(0.5 * x) * (erf + 1)``, each a float32 operation."""
    x = np.asarray(inputs[0])
    if x.dtype != np.float32:
        raise ConfigError(f"Gelu is supported on float32, not {x.dtype}")
    approximate = attrs.get("approximate", "none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    if approximate != "none":
        raise ConfigError(f"Gelu approximate={approximate!r} (MLAS's tanh kernel) is not supported; "
                          f"only 'none'")
    with np.errstate(all="ignore"):
        t = (x * _F32(0.7071067811865476)).astype(_F32)
        e = mlas_erf(t)
        return [((_F32(0.5) * x).astype(_F32) * (e + _F32(1)).astype(_F32)).astype(_F32)]


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, *, axis: int = -1,
               epsilon: float = 1e-5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``LayerNormalization`` (float32), close to but **not** bit-exact with ORT 1.32's CPU kernel.

    Per row of the trailing axes (``n`` values): the mean and ``E[x^2] - mean^2`` in float64
    (sequential sums), ``d = sqrt(f32(var) + eps)`` and ``inv = 1 / d`` in float32, then
    ``y = fma(f32((x - mean) * inv), scale, bias)``. ORT 1.32's kernel is not the float32 loop
    of its published ``layer_norm_impl.cc`` (that formula disagrees with the installed ORT on
    86 % of random values); among the variants measured this one is the closest (the mean
    agrees on every row, about 14 % of ``y`` differ by 1 ulp, see ``docs/onnx.md``). Returns
    ``y``, the mean and ``inv`` (the optional outputs)."""
    from qsim.quant.ortops import fma_f32

    x = np.asarray(x, _F32)
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < x.ndim:
        raise ConfigError(f"LayerNormalization axis {axis} is out of range for rank {x.ndim}")
    n = int(np.prod(x.shape[axis:], dtype=np.int64))
    rows = x.reshape(-1, n)
    scale = np.asarray(scale, _F32)
    if scale.size != n or (bias is not None and np.asarray(bias).size != n):
        raise ConfigError(f"LayerNormalization scale and bias must have {n} values (the size of "
                          f"the normalized axes), not {scale.size}"
                          + ("" if bias is None else f" and {np.asarray(bias).size}"))
    g = np.broadcast_to(scale, x.shape[axis:]).reshape(n)
    b = np.zeros(n, _F32) if bias is None else \
        np.broadcast_to(np.asarray(bias, _F32), x.shape[axis:]).reshape(n)
    with np.errstate(all="ignore"):
        wide = rows.astype(np.float64)
        total = np.zeros(rows.shape[0])
        squares = np.zeros(rows.shape[0])
        for h in range(n):
            total = total + wide[:, h]
            squares = squares + wide[:, h] * wide[:, h]
        mean64 = total / max(n, 1)
        var = (squares / max(n, 1) - mean64 * mean64).astype(_F32)
        denom = np.sqrt((var + _F32(epsilon)).astype(_F32)).astype(_F32)
        inv = (_F32(1) / denom).astype(_F32)
        mean = mean64.astype(_F32)
        centered = ((rows - mean[:, None]).astype(_F32) * inv[:, None]).astype(_F32)
        y = fma_f32(centered, g, b)
    stat_shape = tuple(x.shape[:axis]) + (1,) * (x.ndim - axis)
    return y.reshape(x.shape), mean.reshape(stat_shape), inv.reshape(stat_shape)


def _layer_normalization(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    if x.dtype != np.float32:
        raise ConfigError(f"LayerNormalization is supported on float32, not {x.dtype}")
    if int(attrs.get("stash_type", 1)) != 1:
        raise ConfigError("LayerNormalization stash_type other than 1 (float) is not supported")
    bias = inputs[2] if len(inputs) > 2 else None
    return list(layer_norm(x, inputs[1], bias, axis=int(attrs.get("axis", -1)),
                           epsilon=float(attrs.get("epsilon", 1e-5))))


# ------------------------------------------------------------------------------------------
# ONNX Runtime com.microsoft operators
# ------------------------------------------------------------------------------------------

def _scalar_param(value, what: str, op: str, dtype=None):
    if value is None:
        return None
    v = np.asarray(value)
    if v.size != 1:
        raise ConfigError(f"{op} {what} must be a scalar, not shape {v.shape}")
    if dtype is not None and v.dtype != dtype:
        raise ConfigError(f"{op} {what} must be {np.dtype(dtype).name}, not {v.dtype}")
    return v.reshape(())


def _softmax_table(x_scale: np.float32, reduce_len: int, signed: bool) -> np.ndarray:
    """ORT's ``QlinearBuildLookupTableUint32`` with float entries: entry ``i`` (index
    ``uint8(i - 128)`` for int8) is ``f32(exp((i - 255 + shift) * x_scale))`` in double,
    ``shift = max(0, log(f32(FLT_MAX / n)) - 5) / x_scale``; libm's ``exp`` and ``log`` (Python's
    ``math`` calls the same C functions ORT does)."""
    import math

    s = float(np.float32(x_scale))
    limit = float(np.float32(np.finfo(np.float32).max) / np.float32(reduce_len))
    shift = max(0.0, math.log(limit) - 5.0)
    shift = shift / s if s != 0 else math.inf
    table = np.zeros(256, _F32)
    for i in range(256):
        try:
            value = math.exp((float(i) - 255.0 + shift) * s)
        except OverflowError:
            value = math.inf
        if math.isnan(value):
            value = math.nan
        table[(i - 128) & 0xFF if signed else i] = _F32(value) if math.isfinite(value) or \
            math.isnan(value) else _F32(math.inf)
    return table


def qlinear_softmax(x: np.ndarray, x_scale, x_zero_point, y_scale, y_zero_point, *,
                    axis: int = -1, opset: int = 13) -> np.ndarray:
    """``com.microsoft.QLinearSoftmax`` as ORT 1.32's CPU kernel computes it
    (``contrib_ops/cpu/quantization/qlinear_softmax.cc``).

    Per row of ``n`` values along ``axis`` (opset >= 13; below 13, the axes from ``axis`` on
    flattened): ``T`` = :func:`_softmax_table` of ``x_scale``; ``t_j = T[255 - max + x_j]``
    (uint8; int8 indexes ``uint8(127 - max + x_j)``); the float32 sum ``s = ((t_0 + t_1) + ...)``
    in element order; ``y_j = (uint32) nearbyintf(f32(t_j * Y) / s) + y_zp`` with ``Y =
    floor(f32(1 / y_scale))``, 255 where that exceeds 255 (int8: ``int32(nearbyintf(...)) +
    y_zp`` saturated to [-128, 127]; measured, ORT 1.32 does not wrap). The zero points do not enter the table: ORT
    ignores ``x_zero_point``.
    """
    x = np.asarray(x)
    if x.dtype not in (np.uint8, np.int8):
        raise ConfigError(f"QLinearSoftmax needs a uint8 or int8 input, not {x.dtype}")
    signed = x.dtype == np.int8
    xs = _F32(_scalar_param(x_scale, "x_scale", "QLinearSoftmax", np.float32))
    ys = _F32(_scalar_param(y_scale, "y_scale", "QLinearSoftmax", np.float32))
    yz = _scalar_param(y_zero_point, "y_zero_point", "QLinearSoftmax")
    yz = 0 if yz is None else int(yz)
    if x.ndim == 0:
        raise ConfigError("QLinearSoftmax needs an input of rank 1 or more")
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < x.ndim:
        raise ConfigError(f"QLinearSoftmax axis {axis} is out of range for rank {x.ndim}")
    if x.size == 0:
        return x.copy()
    if opset < 13:
        rows = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        moved = None
    else:
        moved = np.moveaxis(x, axis, -1)
        rows = moved.reshape(-1, x.shape[axis])
    n = rows.shape[1]
    table = _softmax_table(xs, n, signed)
    if signed:
        index = ((127 - rows.max(axis=1, keepdims=True).astype(np.int32)) + rows.astype(np.int32)) & 0xFF
    else:
        index = 255 - rows.max(axis=1, keepdims=True).astype(np.int32) + rows.astype(np.int32)
    t = table[index]
    with np.errstate(all="ignore"):
        total = np.zeros(rows.shape[0], _F32)
        for j in range(n):
            total = (total + t[:, j]).astype(_F32)
        if np.any(total == 0):
            raise ConfigError("QLinearSoftmax: a row's sum of exponentials is 0 (ORT leaves such "
                              "a row unwritten)")
        big = _F32(np.floor((_F32(1) / ys).astype(_F32)))
        ratio = (((t * big).astype(_F32)) / total[:, None]).astype(_F32)
        rounded = np.rint(ratio)
    finite = np.isfinite(rounded) & (np.abs(rounded) < 2.0 ** 62)
    r = np.where(finite, rounded, 0).astype(np.int64)
    if signed:
        v = (r + yz).astype(np.int64)
        out = np.clip(v, -128, 127).astype(np.int8)
    else:
        v = (r & 0xFFFFFFFF) + yz  # (uint32) cast, then + zero point in uint32
        v = v & 0xFFFFFFFF
        out = np.where(v > 255, 255, v).astype(np.uint8)
    if moved is None:
        return out.reshape(x.shape)
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def _qlinear_softmax(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    if "opset" not in attrs:
        raise ConfigError("QLinearSoftmax needs its opset attribute")
    version = int(attrs["opset"])
    axis = int(attrs.get("axis", 1 if version < 13 else -1))
    return [qlinear_softmax(inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None,
                            inputs[3], inputs[4] if len(inputs) > 4 else None, axis=axis,
                            opset=version)]


def qlinear_reduce_mean(x: np.ndarray, x_scale, x_zero_point, y_scale, y_zero_point, *,
                        axes: Sequence[int], keepdims: bool = True) -> np.ndarray:
    """``com.microsoft.QLinearReduceMean``: the mean over ``axes`` with the arithmetic of ORT's
    ``QLinearGlobalAveragePool`` (:func:`qsim.quant.ortops.qlinear_global_average_pool`): the
    exact int32 sum of ``x - x_zp`` over the ``S`` reduced values, multiplied by
    ``f32(x_s / f32(y_s * S))`` in float32 and rounded to nearest even. ONNX Runtime 1.32 has no
    CPU kernel for the operator (``NOT_IMPLEMENTED``); for the spatial axes of an NCHW tensor
    this is exactly ORT's ``QLinearGlobalAveragePool``."""
    from qsim.quant import ortops

    x = np.asarray(x)
    if x.dtype not in (np.uint8, np.int8):
        raise ConfigError(f"QLinearReduceMean needs a uint8 or int8 input, not {x.dtype}")
    if not axes:
        raise ConfigError("QLinearReduceMean needs axes")
    reduced = sorted({a + x.ndim if a < 0 else a for a in axes})
    if any(not 0 <= a < x.ndim for a in reduced):
        raise ConfigError(f"QLinearReduceMean axes {list(axes)} are out of range for rank {x.ndim}")
    kept = [a for a in range(x.ndim) if a not in reduced]
    moved = np.transpose(x, kept + reduced)
    c = int(np.prod([x.shape[a] for a in kept], dtype=np.int64))
    s = int(np.prod([x.shape[a] for a in reduced], dtype=np.int64))
    if s == 0:
        raise ConfigError("QLinearReduceMean of an empty axis is not supported")
    xz = _scalar_param(x_zero_point, "x_zero_point", "QLinearReduceMean")
    yz = _scalar_param(y_zero_point, "y_zero_point", "QLinearReduceMean")
    y = ortops.qlinear_global_average_pool(
        np.ascontiguousarray(moved).reshape(1, c, s),
        _F32(_scalar_param(x_scale, "x_scale", "QLinearReduceMean", np.float32)),
        np.zeros((), x.dtype) if xz is None else xz.astype(x.dtype),
        _F32(_scalar_param(y_scale, "y_scale", "QLinearReduceMean", np.float32)),
        np.zeros((), x.dtype) if yz is None else yz.astype(x.dtype))
    shape = [1 if a in reduced else x.shape[a] for a in range(x.ndim)] if keepdims else \
        [x.shape[a] for a in kept]
    return np.asarray(y).reshape(shape)


def _qlinear_reduce_mean(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    if "axes" not in attrs or "keepdims" not in attrs:
        raise ConfigError("QLinearReduceMean needs its axes and keepdims attributes")
    return [qlinear_reduce_mean(inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None,
                                inputs[3], inputs[4] if len(inputs) > 4 else None,
                                axes=tuple(int(a) for a in attrs["axes"]),
                                keepdims=bool(int(attrs["keepdims"])))]


#: op -> (function, input positions that must be constants for a run-time layer)
OPS: dict[str, tuple[Callable[[Inputs, dict, int], list[np.ndarray]], tuple[int, ...]]] = {
    "Add": (_binary("Add", np.add), ()),
    "Sub": (_binary("Sub", np.subtract), ()),
    "Mul": (_binary("Mul", np.multiply), ()),
    "Div": (_binary("Div", _div), ()),
    "Min": (_variadic("Min", np.minimum), ()),
    "Max": (_variadic("Max", np.maximum), ()),
    "Neg": (_unary(np.negative), ()),
    "Abs": (_unary(np.abs), ()),
    "Sqrt": (_unary(np.sqrt, floats_only=True, op="Sqrt"), ()),
    "Reciprocal": (_unary(_reciprocal, floats_only=True, op="Reciprocal"), ()),
    "Floor": (_unary(np.floor, floats_only=True, op="Floor"), ()),
    "Ceil": (_unary(np.ceil, floats_only=True, op="Ceil"), ()),
    "Round": (_unary(np.rint, floats_only=True, op="Round"), ()),
    "Clip": (_clip, ()),
    "Cast": (_cast, ()),
    "ReduceMin": (_reduce("ReduceMin", np.min), (1,)),
    "ReduceMax": (_reduce("ReduceMax", np.max), (1,)),
    "Where": (_where, ()),
    "Equal": (_compare(np.equal), ()),
    "Less": (_compare(np.less), ()),
    "LessOrEqual": (_compare(np.less_equal), ()),
    "Greater": (_compare(np.greater), ()),
    "GreaterOrEqual": (_compare(np.greater_equal), ()),
    "Unsqueeze": (_unsqueeze, (1,)),
    "Squeeze": (_squeeze, (1,)),
    "Reshape": (_reshape, (1,)),
    "Flatten": (_flatten, ()),
    "Transpose": (_transpose, ()),
    "Concat": (_concat, ()),
    "Shape": (_shape, ()),
    "Gather": (_gather, ()),
    "Erf": (_erf, ()),
    "Gelu": (_gelu, ()),
    "LayerNormalization": (_layer_normalization, ()),
}

#: com.microsoft operators -> (function, input positions that must be constants)
CONTRIB: dict[str, tuple[Callable[[Inputs, dict, int], list[np.ndarray]], tuple[int, ...]]] = {
    "QLinearSoftmax": (_qlinear_softmax, ()),
    "QLinearReduceMean": (_qlinear_reduce_mean, ()),
}


def evaluate(op: str, inputs: Inputs, attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    """Outputs of ``op`` on ``inputs`` (``None`` for an omitted optional input)."""
    if op in OPS:
        return OPS[op][0](inputs, attrs, opset)
    if op in CONTRIB:
        return CONTRIB[op][0](inputs, attrs, opset)
    raise ConfigError(f"operator {op!r} cannot be evaluated by qsim.nn.onnx_ops")
