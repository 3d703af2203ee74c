"""Exact integer kernels of the ONNX quantized operators.

This module owns the integer arithmetic of ``MatMulInteger``, ``ConvInteger``, ``QLinearMatMul``
and ``QLinearConv``: zero-point subtraction, ONNX's batched-matmul broadcasting, convolution
geometry (strides, explicit or automatic padding, dilations, groups) lowered to im2col, and the
int32 accumulator those operators are defined with. Every product and sum is exact: the heavy
lifting goes through :func:`qsim.numerics.int_matmul`, which uses float BLAS only where no
partial sum can be rounded. Requantization of the int32 accumulators to 8 bits is not decided
here; :func:`qlinear_matmul` and :func:`qlinear_conv` hand them to
:func:`qsim.quant.requant.requantize` under a named engine semantics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qsim.errors import ConfigError
from qsim.numerics import INT8, INT32, UINT8, IntFormat, check_fits, int_matmul, wrap
from qsim.quant.requant import Semantics, requantize

__all__ = [
    "conv_columns",
    "AUTO_PAD_MODES",
    "ConvGeometry",
    "conv_geometry",
    "im2col",
    "matmul_integer",
    "conv_integer",
    "qlinear_matmul",
    "qlinear_conv",
]

#: ``auto_pad`` values of ONNX Conv/ConvInteger/QLinearConv.
AUTO_PAD_MODES = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")

_INT32_LIMIT = 1 << 31
_EIGHT_BIT = {np.dtype(np.uint8): UINT8, np.dtype(np.int8): INT8}


# --------------------------------------------------------------------------- validation


def _int8_tensor(name: str, value: object) -> np.ndarray:
    """The operand as a numpy array, which must hold uint8 or int8 (ONNX's T1/T2)."""
    array = np.asarray(value)
    if array.dtype not in _EIGHT_BIT:
        raise ConfigError(f"{name} must be a uint8 or int8 array, not dtype {array.dtype}")
    return array


def _zero_point(name: str, value: object, tensor_name: str, tensor: np.ndarray) -> np.ndarray:
    """A zero point as int64, checked against the format of the tensor it belongs to.

    ONNX requires a zero point tensor to have its tensor's element type; a Python int (or a
    wider integer array) is accepted as long as its values lie in that format.
    """
    fmt = _EIGHT_BIT[tensor.dtype]
    zp = np.asarray(0 if value is None else value)
    if zp.dtype in _EIGHT_BIT and zp.dtype != tensor.dtype:
        raise ConfigError(
            f"{name} dtype {zp.dtype} does not match {tensor_name} dtype {tensor.dtype}"
        )
    if zp.dtype.kind not in "iu":
        raise ConfigError(f"{name} must be integers, not dtype {zp.dtype}")
    zp = zp.astype(np.int64)
    bad = (zp < fmt.min) | (zp > fmt.max)
    if np.any(bad):
        value = int(zp[bad].ravel()[0])
        raise ConfigError(f"{name} {value} is outside {fmt.name} [{fmt.min}, {fmt.max}]")
    return zp


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


def _shaped_a_zero_point(zp: np.ndarray, a_shape: tuple[int, ...]) -> np.ndarray:
    """Per-tensor or per-row zero point of MatMulInteger's A, shaped to broadcast against A."""
    if zp.size == 1:
        return zp.reshape(())
    if len(a_shape) >= 2:
        rows = a_shape[-2]
        if zp.shape == (rows,):
            return zp.reshape(rows, 1)
        target = a_shape[:-1] + (1,)
        if zp.ndim >= 2 and zp.shape[-1] == 1 and _broadcasts_to(zp.shape, target):
            return zp
    expected = "a scalar" if len(a_shape) < 2 else (
        f"a scalar, ({a_shape[-2]},) or a shape that broadcasts to {a_shape[:-1] + (1,)}")
    raise ConfigError(
        f"a_zero_point shape {zp.shape} does not fit a of shape {a_shape}: expected {expected}"
    )


def _shaped_b_zero_point(zp: np.ndarray, b_shape: tuple[int, ...]) -> np.ndarray:
    """Per-tensor or per-column zero point of MatMulInteger's B, shaped to broadcast against B."""
    if zp.size == 1:
        return zp.reshape(())
    if len(b_shape) >= 2:
        cols = b_shape[-1]
        target = b_shape[:-2] + (1, cols)
        if zp.shape == (cols,) or (zp.ndim >= 2 and zp.shape[-2] == 1
                                   and _broadcasts_to(zp.shape, target)):
            return zp
    expected = "a scalar" if len(b_shape) < 2 else (
        f"a scalar, ({b_shape[-1]},) or a shape that broadcasts to "
        f"{b_shape[:-2] + (1, b_shape[-1])}")
    raise ConfigError(
        f"b_zero_point shape {zp.shape} does not fit b of shape {b_shape}: expected {expected}"
    )


def _check_int32(acc: np.ndarray, bound: int, what: str) -> None:
    """Raise if any accumulator leaves int32; skipped when the a-priori bound proves none can."""
    if bound < _INT32_LIMIT:
        return
    check_fits(acc, INT32, what)


def _subtract(values: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """``values - zp``, in place when the zero point does not widen the shape."""
    if not zp.any():
        return values
    if np.broadcast_shapes(values.shape, zp.shape) != values.shape:
        return values - zp
    values -= zp
    return values


def _zero_point_span(tensor: np.ndarray, zp: np.ndarray) -> int:
    """Largest possible ``|tensor - zp|`` from the format and the zero points alone (no scan)."""
    fmt = _EIGHT_BIT[tensor.dtype]
    return max(fmt.max - int(zp.min()), int(zp.max()) - fmt.min)


# --------------------------------------------------------------------------- matmul


def matmul_integer(a: np.ndarray, b: np.ndarray, a_zero_point: object = 0,
                   b_zero_point: object = 0, *, isa: str = "exact",
                   engine: str = "onnxruntime") -> np.ndarray:
    """ONNX ``MatMulInteger``: ``(a - a_zero_point) @ (b - b_zero_point)`` in int32, exactly.

    With ``isa`` an instruction path on which ``engine`` (``onnxruntime``, the default, or
    ``pytorch-fbgemm``) saturates (``avx2``, ``avx512bw``, for fbgemm also ``avx-vnni``, or
    ``auto`` on such a CPU; :mod:`qsim.quant.isa`) and uint8 ``a`` times int8 ``b``, the result
    is what that engine's kernel returns there instead: adjacent K pairs of raw products
    saturated to int16 (:func:`qsim.quant.hazards.u8s8_matmul_correction`). The default
    ``isa="exact"`` is ONNX's definition.

    Parameters
    ----------
    a : ndarray of uint8 or int8
        Shape ``(..., M, K)`` (or ``(K,)``); batch dimensions broadcast as in ``numpy.matmul``.
    b : ndarray of uint8 or int8
        Shape ``(..., K, N)`` (or ``(K,)``).
    a_zero_point : int or ndarray
        Per tensor (a scalar), or per row of ``a``: shape ``(M,)`` or ``(..., M, 1)``.
    b_zero_point : int or ndarray
        Per tensor, or per column of ``b``: shape ``(N,)`` or ``(..., 1, N)``.

    Returns
    -------
    ndarray of int64
        The int32 result of the operator (values in int32, held as int64).

    Raises
    ------
    ConfigError
        Wrong dtypes, shapes that do not align, or zero points of the wrong shape, type or range.
    QsimOverflowError
        A true sum does not fit int32 (ONNX's accumulator type).
    """
    a = _int8_tensor("a", a)
    b = _int8_tensor("b", b)
    if a.ndim == 0 or b.ndim == 0:
        raise ConfigError(f"MatMulInteger needs operands of at least 1 dimension, not shapes "
                          f"{a.shape} and {b.shape}")
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if k_a != k_b:
        raise ConfigError(f"MatMulInteger shapes do not align: a {a.shape} has K = {k_a} but "
                          f"b {b.shape} has K = {k_b}")
    if a.ndim > 2 and b.ndim > 2:
        try:
            np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ConfigError(f"MatMulInteger batch dimensions do not broadcast: a {a.shape} "
                              f"and b {b.shape}") from None
    a_zp = _shaped_a_zero_point(_zero_point("a_zero_point", a_zero_point, "a", a), a.shape)
    b_zp = _shaped_b_zero_point(_zero_point("b_zero_point", b_zero_point, "b", b), b.shape)

    # An 8-bit value minus an 8-bit zero point spans -255..255: int16 holds it, and
    # int_matmul converts int16 straight to float for BLAS (no int64 temporaries).
    x = _subtract(a.astype(np.int16), a_zp.astype(np.int16))
    y = _subtract(b.astype(np.int16), b_zp.astype(np.int16))
    squeeze = []
    if x.ndim == 1:
        x = x[None, :]
        squeeze.append(-2)
    if y.ndim == 1:
        y = y[:, None]
        squeeze.append(-1)
    acc = int_matmul(x, y)
    _check_int32(acc, k_a * _zero_point_span(a, a_zp) * _zero_point_span(b, b_zp),
                 "MatMulInteger accumulator")
    correction = _engine_correction(isa, a[None, :] if a.ndim == 1 else a,
                                    b[:, None] if b.ndim == 1 else b, engine)
    if correction is not None:
        acc = wrap(acc + correction, INT32)
    if squeeze:
        acc = acc.squeeze(axis=tuple(squeeze))
    return acc


def _engine_correction(isa: str, a: np.ndarray, b: np.ndarray,
                       engine: str = "onnxruntime") -> np.ndarray | None:
    """The saturation correction of ``engine``'s u8 x s8 product on ``isa``, or ``None`` where exact."""
    from qsim.quant.hazards import u8s8_matmul_correction
    from qsim.quant.isa import resolve_isa, u8s8_saturates

    if a.dtype != np.uint8 or b.dtype != np.int8 or not u8s8_saturates(resolve_isa(isa), engine):
        return None
    return u8s8_matmul_correction(a, b)


# --------------------------------------------------------------------------- convolution


def _int_tuple(name: str, value: object, length: int, minimum: int) -> tuple[int, ...]:
    items = tuple(value) if isinstance(value, (Sequence, np.ndarray)) else None
    if items is None or len(items) != length or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        raise ConfigError(f"{name} must be a sequence of {length} ints, not {value!r}")
    if any(v < minimum for v in items):
        raise ConfigError(f"{name} must be {'positive' if minimum else 'non-negative'} "
                          f"ints, not {list(items)}")
    return tuple(int(v) for v in items)


@dataclass(frozen=True)
class ConvGeometry:
    """The resolved geometry of an N-d ONNX convolution: explicit pads and output size.

    Attributes
    ----------
    kernel : tuple of int
        Kernel extent per spatial axis.
    strides, dilations : tuple of int
        One per spatial axis.
    pads : tuple of int
        ONNX layout ``(begin_1, ..., begin_n, end_1, ..., end_n)`` after ``auto_pad``.
    output : tuple of int
        Output extent per spatial axis.
    """

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    output: tuple[int, ...]


def conv_geometry(input_shape: Sequence[int], kernel: Sequence[int], *,
                  strides: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                  dilations: Sequence[int] | None = None,
                  auto_pad: str = "NOTSET") -> ConvGeometry:
    """Resolve ONNX convolution attributes for spatial ``input_shape`` and ``kernel``.

    ``SAME_UPPER``/``SAME_LOWER`` pad so that ``output = ceil(input / stride)``, the odd pixel
    going to the end (upper) or the beginning (lower); ``VALID`` pads nothing. ``pads`` may
    only be given with ``auto_pad="NOTSET"``, as ONNX requires.
    """
    spatial = tuple(int(v) for v in input_shape)
    kernel = tuple(int(v) for v in kernel)
    nd = len(spatial)
    strides = (1,) * nd if strides is None else _int_tuple("strides", strides, nd, 1)
    dilations = (1,) * nd if dilations is None else _int_tuple("dilations", dilations, nd, 1)
    if auto_pad not in AUTO_PAD_MODES:
        raise ConfigError(f"auto_pad must be one of {', '.join(AUTO_PAD_MODES)}, not {auto_pad!r}")
    if auto_pad != "NOTSET" and pads is not None:
        raise ConfigError(f"pads {list(pads)} cannot be combined with auto_pad={auto_pad!r}")
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, ext, stride in zip(spatial, extent, strides):
            out = -(-size // stride)
            total = max(0, (out - 1) * stride + ext - size)
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
        resolved = tuple(begin) + tuple(end)
    elif auto_pad == "VALID" or pads is None:
        resolved = (0,) * (2 * nd)
    else:
        resolved = _int_tuple("pads", pads, 2 * nd, 0)
    output = []
    for axis, (size, ext, stride) in enumerate(zip(spatial, extent, strides)):
        padded = size + resolved[axis] + resolved[axis + nd]
        if padded < ext:
            raise ConfigError(
                f"spatial axis {axis}: the dilated kernel spans {ext} but the padded input has "
                f"only {padded} (input {size}, pads {resolved[axis]} + {resolved[axis + nd]})"
            )
        output.append((padded - ext) // stride + 1)
    return ConvGeometry(kernel, strides, dilations, resolved, tuple(output))


def im2col(x: np.ndarray, geometry: ConvGeometry, pad_value: int = 0) -> np.ndarray:
    """Strided view of every receptive field: ``(N, C, *output, *kernel)``.

    ``x`` is ``(N, C, *spatial)``; the padded copy is the only copy made (the windows are a
    view), padded with ``pad_value``. Indexing ``[n, c, *o, *t]`` gives the input element that
    kernel tap ``t`` of output position ``o`` multiplies.
    """
    nd = len(geometry.kernel)
    width = [(0, 0), (0, 0)] + [(geometry.pads[i], geometry.pads[i + nd]) for i in range(nd)]
    padded = np.pad(x, width, constant_values=pad_value) if any(geometry.pads) else x
    extent = tuple((k - 1) * d + 1 for k, d in zip(geometry.kernel, geometry.dilations))
    windows = sliding_window_view(padded, extent, axis=tuple(range(2, 2 + nd)))
    pick = ((slice(None), slice(None))
            + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(geometry.output, geometry.strides))
            + tuple(slice(None, None, d) for d in geometry.dilations))
    return windows[pick]


def conv_columns(x: np.ndarray, geometry: ConvGeometry, dtype: np.dtype | type, *,
                 subtract: int = 0, pad_value: int | None = None) -> np.ndarray:
    """The im2col matrix ``(C * taps, N * positions)`` of ``x - subtract``, copied as ``dtype``.

    Row ``c * taps + t`` holds channel ``c`` under kernel tap ``t`` (taps in C order) for every
    output position of every image (images outermost), so the rows of group ``g`` are the
    contiguous block ``[g * Cg * taps, (g + 1) * Cg * taps)``. The padding holds
    ``pad_value - subtract`` (by default 0: with ``subtract`` the input zero point, the padding
    is real zero, as ONNX pads quantized convolutions with the zero point). Each tap is one
    strided copy: copying a window view at once walks it element by element, several times
    slower.
    """
    dtype = np.dtype(dtype)
    n, c = x.shape[:2]
    nd = len(geometry.kernel)
    spatial = x.shape[2:]
    padded_shape = tuple(size + geometry.pads[i] + geometry.pads[i + nd] for i, size in enumerate(spatial))
    fill = 0 if pad_value is None else pad_value - subtract
    padded = np.full((n, c) + padded_shape, fill, dtype=dtype)
    inner = (slice(None), slice(None)) + tuple(slice(geometry.pads[i], geometry.pads[i] + size)
                                               for i, size in enumerate(spatial))
    np.subtract(x, dtype.type(subtract), out=padded[inner], dtype=dtype)
    field = np.empty((c,) + geometry.kernel + (n,) + geometry.output, dtype=dtype)
    for tap in np.ndindex(*geometry.kernel):
        window = tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in
                       zip(tap, geometry.dilations, geometry.output, geometry.strides))
        field[(slice(None),) + tap] = np.moveaxis(padded[(slice(None), slice(None)) + window], 1, 0)
    taps, positions = int(np.prod(geometry.kernel)), int(np.prod(geometry.output))
    return field.reshape(c * taps, n * positions)


def _conv_operands(x: np.ndarray, w: np.ndarray, group: object,
                   kernel_shape: Sequence[int] | None) -> int:
    """Validate NCHW shapes and groups; return the group count as an int."""
    if x.ndim < 3:
        raise ConfigError(f"x must be (N, C, *spatial) with at least one spatial axis, "
                          f"not shape {x.shape}")
    if w.ndim != x.ndim:
        raise ConfigError(f"w must be (M, C/group, *kernel) with {x.ndim} dimensions like x "
                          f"{x.shape}, not shape {w.shape}")
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 1:
        raise ConfigError(f"group must be a positive int, not {group!r}")
    group = int(group)
    channels, outputs = x.shape[1], w.shape[0]
    if channels % group:
        raise ConfigError(f"group {group} does not divide the {channels} input channels of x")
    if outputs % group:
        raise ConfigError(f"group {group} does not divide the {outputs} output channels of w")
    if w.shape[1] != channels // group:
        raise ConfigError(
            f"w has {w.shape[1]} input channels per group, but x has {channels} channels in "
            f"{group} group{'s' if group > 1 else ''} ({channels // group} per group)"
        )
    if kernel_shape is not None and tuple(int(k) for k in kernel_shape) != w.shape[2:]:
        raise ConfigError(f"kernel_shape {list(kernel_shape)} does not match w's kernel "
                          f"{list(w.shape[2:])}")
    if 0 in w.shape[2:]:
        raise ConfigError(f"w has an empty kernel: shape {w.shape}")
    return group


def _shaped_w_zero_point(zp: np.ndarray, outputs: int, ndim: int) -> np.ndarray:
    if zp.size == 1:
        return zp.reshape(())
    if zp.shape == (outputs,):
        return zp.reshape((outputs,) + (1,) * (ndim - 1))
    raise ConfigError(f"w_zero_point shape {zp.shape} does not fit w with {outputs} output "
                      f"channels: expected a scalar or ({outputs},)")


def _conv_accumulate(x: np.ndarray, w: np.ndarray, group: int, geometry: ConvGeometry
                     ) -> np.ndarray:
    """Exact grouped convolution of zero-point-free integer tensors, as int64 ``(N, M, *out)``."""
    n, channels = x.shape[:2]
    outputs = w.shape[0]
    cg, mg = channels // group, outputs // group
    nd = len(geometry.kernel)
    taps = int(np.prod(geometry.kernel))
    if cg == 1 and group > 1:
        # One input channel per group (depthwise and its channel multipliers): K is only the
        # kernel taps, so a multiply-add per tap over every channel at once beats one tiny
        # GEMM per group.
        cols = im2col(x, geometry)  # (N, C, *out, *k), a view
        acc = np.zeros((n, group, mg) + geometry.output, dtype=np.int64)
        weights = w.reshape(group, mg, taps).astype(np.int64)
        for t, tap in enumerate(np.ndindex(*geometry.kernel)):
            field = cols[(Ellipsis,) + tap].astype(np.int64)  # (N, G, *out)
            acc += field[:, :, None] * weights[:, :, t].reshape((1, group, mg) + (1,) * nd)
        return acc.reshape((n, outputs) + geometry.output)
    cols = conv_columns(x, geometry, x.dtype)  # (C * taps, N * positions)
    parts = []
    for g in range(group):  # one GEMM per group: (Mg, Cg*taps) @ (Cg*taps, N*L)
        kernel = w[g * mg:(g + 1) * mg].reshape(mg, cg * taps)
        y = int_matmul(kernel, cols[g * cg * taps:(g + 1) * cg * taps])
        parts.append(np.moveaxis(y.reshape((mg, n) + geometry.output), 0, 1))
    return parts[0] if group == 1 else np.concatenate(parts, axis=1)


def conv_integer(x: np.ndarray, w: np.ndarray, x_zero_point: object = 0,
                 w_zero_point: object = 0, *, strides: Sequence[int] | None = None,
                 pads: Sequence[int] | None = None, dilations: Sequence[int] | None = None,
                 group: int = 1, auto_pad: str = "NOTSET",
                 kernel_shape: Sequence[int] | None = None) -> np.ndarray:
    """ONNX ``ConvInteger`` (NCHW, any number of spatial axes), exactly, in int32.

    Padding contributes zero after zero-point subtraction, i.e. padded pixels equal
    ``x_zero_point``, as in the ONNX reference.

    Parameters
    ----------
    x : ndarray of uint8 or int8
        ``(N, C, *spatial)``.
    w : ndarray of uint8 or int8
        ``(M, C / group, *kernel)``.
    x_zero_point : int or ndarray
        Per tensor only.
    w_zero_point : int or ndarray
        Per tensor, or per output channel with shape ``(M,)``.
    strides, pads, dilations, group, auto_pad, kernel_shape
        The ONNX attributes; ``None`` means the ONNX default (unit strides and dilations, no
        padding). ``pads`` is ``(begin_1, ..., begin_n, end_1, ..., end_n)``.

    Returns
    -------
    ndarray of int64
        ``(N, M, *output)`` with int32 values.

    Raises
    ------
    ConfigError
        Wrong dtypes or shapes, a group that does not divide the channels, bad attributes or
        zero points.
    QsimOverflowError
        A true sum does not fit int32.
    """
    x = _int8_tensor("x", x)
    w = _int8_tensor("w", w)
    group = _conv_operands(x, w, group, kernel_shape)
    x_zp = _zero_point("x_zero_point", x_zero_point, "x", x)
    if x_zp.size != 1:
        raise ConfigError(f"x_zero_point must be a scalar (per tensor), not shape {x_zp.shape}")
    w_zp = _shaped_w_zero_point(_zero_point("w_zero_point", w_zero_point, "w", w),
                                w.shape[0], w.ndim)
    geometry = conv_geometry(x.shape[2:], w.shape[2:], strides=strides, pads=pads,
                             dilations=dilations, auto_pad=auto_pad)
    xs = x.astype(np.int16) - np.int16(x_zp.reshape(()))
    ws = w.astype(np.int16) - w_zp.astype(np.int16)
    acc = _conv_accumulate(xs, ws, group, geometry)
    depth = (x.shape[1] // group) * int(np.prod(geometry.kernel))
    _check_int32(acc, depth * _zero_point_span(x, x_zp) * _zero_point_span(w, w_zp),
                 "ConvInteger accumulator")
    return acc


# --------------------------------------------------------------------------- QLinear operators


def _scale(name: str, value: object, allowed: tuple[int, ...], what: str) -> np.ndarray:
    """A positive finite float scale: a scalar, or a 1-D array whose length is in ``allowed``."""
    scale = np.asarray(value)
    if scale.dtype.kind not in "fiu":
        raise ConfigError(f"{name} must be a real number, not dtype {scale.dtype}")
    if scale.dtype.kind != "f":
        scale = scale.astype(np.float32)
    if scale.size != 1 and not (scale.ndim == 1 and scale.shape[0] in allowed):
        raise ConfigError(f"{name} shape {scale.shape} is not {what}")
    if not np.all(np.isfinite(scale) & (scale > 0)):
        bad = scale.ravel()[~(np.isfinite(scale.ravel()) & (scale.ravel() > 0))][0]
        raise ConfigError(f"{name} must be positive and finite, not {float(bad)!r}")
    return scale.reshape(()) if scale.size == 1 else scale


def _output_format(y_zero_point: object, out_fmt: IntFormat | str | None,
                   default: IntFormat) -> tuple[int, IntFormat]:
    """The output zero point and format: ONNX takes the format from y_zero_point's type."""
    fmt = None if out_fmt is None else IntFormat.parse(out_fmt)
    if y_zero_point is None:
        return 0, fmt or default
    zp = np.asarray(y_zero_point)
    if zp.size != 1:
        raise ConfigError(f"y_zero_point must be a scalar (per tensor), not shape {zp.shape}")
    if zp.dtype.kind not in "iu":
        raise ConfigError(f"y_zero_point must be an integer, not dtype {zp.dtype}")
    typed = _EIGHT_BIT.get(zp.dtype) if isinstance(y_zero_point, (np.ndarray, np.generic)) \
        else None
    if typed is not None and fmt is not None and fmt != typed:
        raise ConfigError(f"out_fmt {fmt.name} contradicts y_zero_point dtype {zp.dtype}")
    fmt = fmt or typed
    if fmt is None:
        raise ConfigError(f"the output format is ambiguous: y_zero_point {int(zp.ravel()[0])} has "
                          f"no 8-bit dtype; give out_fmt (for example 'uint8' or 'int8')")
    value = int(zp.ravel()[0])
    if not fmt.min <= value <= fmt.max:
        raise ConfigError(f"y_zero_point {value} is outside {fmt.name} [{fmt.min}, {fmt.max}]")
    return value, fmt


def _requantize(acc: np.ndarray, in_scale: np.ndarray, weight_scale: np.ndarray,
                out_scale: np.ndarray, out_zero_point: int, fmt: IntFormat, semantics: object,
                channel_axis: int) -> np.ndarray:
    kind = Semantics.parse(semantics)
    narrow = [s.dtype for s in (in_scale, weight_scale, out_scale) if s.dtype.itemsize < 4]
    if kind is Semantics.ONNX and narrow:
        # The ONNX reference forms ``in * w / out`` in the scales' own type (float16 in the
        # opset-21 tests). That multiplier is exact in float32, and requantize's float32
        # ``1 * M / 1`` reproduces it bit for bit, so pass the multiplier as the weight scale.
        multiplier = in_scale * weight_scale / out_scale
        in_scale = out_scale = np.float32(1.0)
        weight_scale = multiplier.astype(np.float32)
    y = requantize(acc, in_scale, weight_scale, out_scale, out_zero_point, fmt, kind,
                   channel_axis=channel_axis)
    return np.asarray(y).astype(fmt.numpy_dtype())


#: Semantics named after an engine whose u8 x s8 integers depend on the instruction path.
ISA_DEPENDENT = (Semantics.ONNXRUNTIME, Semantics.PYTORCH_FBGEMM)


def _engine_isa(semantics: object, isa: str) -> str:
    """``isa`` where the semantics is an engine whose integers depend on it, else ``exact``."""
    from qsim.quant.isa import parse_isa

    name = parse_isa(isa)
    return name if Semantics.parse(semantics) in ISA_DEPENDENT else "exact"


def qlinear_matmul(a: np.ndarray, a_scale: object, a_zero_point: object, b: np.ndarray,
                   b_scale: object, b_zero_point: object, y_scale: object,
                   y_zero_point: object, *, semantics: object = "onnx",
                   out_fmt: IntFormat | str | None = None, isa: str = "auto") -> np.ndarray:
    """ONNX ``QLinearMatMul``: an exact int32 product, requantized under ``semantics``.

    Under ``semantics="onnxruntime"`` or ``"pytorch-fbgemm"`` the product is the one that engine
    computes on the instruction path ``isa`` (default: the running CPU's; see
    :func:`matmul_integer`); other semantics ignore ``isa``.

    Parameters
    ----------
    a, b : ndarray of uint8 or int8
        As in :func:`matmul_integer`.
    a_scale, a_zero_point : scalar
        Per-tensor quantization of ``a``.
    b_scale, b_zero_point : scalar or 1-D of length N
        Per tensor or per column of ``b``.
    y_scale : scalar
    y_zero_point : scalar or None
        Its dtype (uint8 or int8) is the output format, as in ONNX; a plain int needs
        ``out_fmt``. ``None`` means zero in ``a``'s format.
    semantics : str or Semantics
        The requantization rule (``"onnx"``, ``"onnxruntime"``, ``"tflite"``, ...).
    out_fmt : IntFormat or str, optional
        Output format when ``y_zero_point`` does not carry one.

    Returns
    -------
    ndarray
        In the output format's numpy dtype.

    Raises
    ------
    ConfigError
        Bad dtypes, shapes, scales or zero points, or an ambiguous output format.
    QsimOverflowError
        The int32 accumulator would wrap.
    """
    a = _int8_tensor("a", a)
    b = _int8_tensor("b", b)
    zp, fmt = _output_format(y_zero_point, out_fmt, _EIGHT_BIT[a.dtype])
    columns = b.shape[-1] if b.ndim >= 2 else 1
    a_s = _scale("a_scale", a_scale, (), "a scalar (per tensor)")
    b_s = _scale("b_scale", b_scale, (columns,), f"a scalar or ({columns},) (per column of b)")
    y_s = _scale("y_scale", y_scale, (), "a scalar (per tensor)")
    if np.asarray(a_zero_point).size != 1:
        raise ConfigError(f"a_zero_point must be a scalar (per tensor), not shape "
                          f"{np.asarray(a_zero_point).shape}")
    kind = Semantics.parse(semantics)
    acc = matmul_integer(a, b, a_zero_point, b_zero_point, isa=_engine_isa(kind, isa),
                         engine=kind.value if kind in ISA_DEPENDENT else "onnxruntime")
    return _requantize(acc, a_s, b_s, y_s, zp, fmt, semantics, channel_axis=-1)


def _conv_engine_accumulators(acc: np.ndarray, x: np.ndarray, w: np.ndarray, x_zero_point: object,
                              isa: str, group: int, geometry: ConvGeometry,
                              semantics: object) -> np.ndarray:
    """``acc`` plus the engine's u8 x s8 saturation on ``isa`` (unchanged where exact)."""
    from qsim.quant.hazards import u8s8_conv_correction
    from qsim.quant.isa import resolve_isa, u8s8_saturates

    kind = Semantics.parse(semantics)
    if (kind not in ISA_DEPENDENT or x.dtype != np.uint8 or w.dtype != np.int8
            or not u8s8_saturates(resolve_isa(isa), kind.value)):
        return acc
    engine = kind.value
    correction = u8s8_conv_correction(x, w, int(np.asarray(x_zero_point).reshape(-1)[0]), geometry,
                                      int(group), engine)
    return acc if correction is None else wrap(acc + correction, INT32)


def qlinear_conv(x: np.ndarray, x_scale: object, x_zero_point: object, w: np.ndarray,
                 w_scale: object, w_zero_point: object, y_scale: object, y_zero_point: object,
                 bias: np.ndarray | None = None, *, strides: Sequence[int] | None = None,
                 pads: Sequence[int] | None = None, dilations: Sequence[int] | None = None,
                 group: int = 1, auto_pad: str = "NOTSET",
                 kernel_shape: Sequence[int] | None = None, semantics: object = "onnx",
                 out_fmt: IntFormat | str | None = None, isa: str = "auto") -> np.ndarray:
    """ONNX ``QLinearConv``: exact int32 convolution plus bias, requantized under ``semantics``.

    Under ``semantics="onnxruntime"`` or ``"pytorch-fbgemm"`` with uint8 ``x``, int8 ``w`` and a
    saturating ``isa`` (default: the running CPU's), the accumulators are those of that engine's
    lowering on that path (:func:`qsim.quant.hazards.u8s8_conv_correction`: ONNX Runtime's
    depthwise convolutions stay exact, fbgemm's pair consecutive kernel taps).

    Parameters
    ----------
    x, w, x_zero_point, w_zero_point, strides, pads, dilations, group, auto_pad, kernel_shape
        As in :func:`conv_integer`.
    x_scale, y_scale : scalar
    w_scale : scalar or 1-D of length M
        Per tensor or per output channel.
    y_zero_point : scalar
        Its dtype is the output format (see :func:`qlinear_matmul`).
    bias : ndarray of int32, optional
        ``(M,)``, quantized with scale ``x_scale * w_scale`` and zero point 0; it is added to
        the int32 accumulator before requantization.
    semantics, out_fmt
        As in :func:`qlinear_matmul`.

    Returns
    -------
    ndarray
        ``(N, M, *output)`` in the output format's numpy dtype.
    """
    x = _int8_tensor("x", x)
    w = _int8_tensor("w", w)
    zp, fmt = _output_format(y_zero_point, out_fmt, _EIGHT_BIT[x.dtype])
    outputs = w.shape[0] if w.ndim else 0
    x_s = _scale("x_scale", x_scale, (), "a scalar (per tensor)")
    w_s = _scale("w_scale", w_scale, (outputs,),
                 f"a scalar or ({outputs},) (per output channel)")
    y_s = _scale("y_scale", y_scale, (), "a scalar (per tensor)")
    acc = conv_integer(x, w, x_zero_point, w_zero_point, strides=strides, pads=pads,
                       dilations=dilations, group=group, auto_pad=auto_pad,
                       kernel_shape=kernel_shape)
    acc = _conv_engine_accumulators(acc, x, w, x_zero_point, _engine_isa(semantics, isa), group,
                                    conv_geometry(x.shape[2:], w.shape[2:], strides=strides, pads=pads,
                                                  dilations=dilations, auto_pad=auto_pad),
                                    semantics)
    if bias is not None:
        b = np.asarray(bias)
        if b.dtype.kind not in "iu":
            raise ConfigError(f"bias must be int32, not dtype {b.dtype}")
        if b.shape != (outputs,):
            raise ConfigError(f"bias shape {b.shape} does not match the {outputs} output "
                              f"channels of w: expected ({outputs},)")
        check_fits(b, INT32, "bias")
        acc = acc + b.astype(np.int64).reshape((1, outputs) + (1,) * (acc.ndim - 2))
        check_fits(acc, INT32, "QLinearConv accumulator (with bias)")
    return _requantize(acc, x_s, w_s, y_s, zp, fmt, semantics, channel_axis=1)
