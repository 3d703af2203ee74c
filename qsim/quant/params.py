"""Quantization parameters: scale, zero point, format and granularity of one tensor.

A real value ``x`` is represented by the integer ``q`` with ``x ~= (q - zero_point) * scale``.
Granularity is per tensor (``axis is None``), per axis (one scale per index along ``axis``),
or blocked (one scale per ``block_size`` consecutive elements along ``axis``), as in ONNX
QuantizeLinear/DequantizeLinear (opset 21).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qsim.errors import ConfigError
from qsim.numerics import IntFormat

__all__ = ["QuantParams"]


@dataclass(frozen=True, eq=False)
class QuantParams:
    """Scale, zero point and integer format of a quantized tensor.

    Parameters
    ----------
    scale : array-like of float
        Positive, finite. Scalar for per-tensor; 1-D of length ``shape[axis]`` for per-axis;
        for blocked, the input shape with ``shape[axis]`` replaced by
        ``ceil(shape[axis] / block_size)``. The float dtype is kept (float32 by default)
        because ONNX divides in the scale's type.
    zero_point : array-like of int
        Same shape as ``scale``; each value must lie in ``fmt``.
    fmt : IntFormat or str
        Format of the quantized values (int2 ... int16, uint2 ... uint16, int32 for biases).
    axis : int or None
        Quantization axis (negative counts from the end); ``None`` for per-tensor.
    block_size : int or None
        Block length along ``axis`` for blocked quantization.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    fmt: IntFormat
    axis: int | None = None
    block_size: int | None = None

    def __post_init__(self) -> None:
        fmt = IntFormat.parse(self.fmt)
        scale = np.asarray(self.scale)
        if scale.dtype.kind not in "f":
            scale = scale.astype(np.float32)
        zp = np.asarray(self.zero_point)
        if zp.dtype.kind not in "iu":
            if zp.dtype.kind == "f" and np.all(np.isfinite(zp)) and np.all(zp == np.round(zp)):
                zp = zp.astype(np.int64)
            else:
                raise ConfigError(f"zero point must be integers, not {zp.dtype} values")
        zp = zp.astype(np.int64)
        if zp.shape != scale.shape:
            if zp.size == 1:
                zp = np.broadcast_to(zp.reshape(()), scale.shape).copy()
            else:
                raise ConfigError(
                    f"zero point shape {zp.shape} does not match scale shape {scale.shape}"
                )
        bad = ~np.isfinite(scale) | (scale <= 0)
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0]) if scale.ndim else ()
            where = f"scale[{', '.join(map(str, idx))}]" if idx else "scale"
            value = float(scale[idx]) if idx else float(scale)
            raise ConfigError(f"{where} = {value!r} is not a positive finite number")
        out = (zp < fmt.min) | (zp > fmt.max)
        if np.any(out):
            idx = tuple(int(i) for i in np.argwhere(out)[0]) if zp.ndim else ()
            value = int(zp[idx]) if idx else int(zp)
            raise ConfigError(
                f"zero point {value} is outside {fmt.name} [{fmt.min}, {fmt.max}]"
            )
        if self.axis is None:
            if scale.ndim != 0 and scale.size != 1:
                raise ConfigError(
                    f"per-tensor quantization needs a scalar scale, not shape {scale.shape}; "
                    f"give axis= for per-axis scales"
                )
            scale = scale.reshape(())
            zp = zp.reshape(())
            if self.block_size is not None:
                raise ConfigError("block_size needs an axis")
        else:
            if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)):
                raise ConfigError(f"axis must be an int or None, not {self.axis!r}")
            if self.block_size is None and scale.ndim != 1:
                raise ConfigError(
                    f"per-axis quantization needs a 1-D scale, not shape {scale.shape}"
                )
            if self.block_size is not None and (
                    isinstance(self.block_size, bool) or not isinstance(self.block_size, (int, np.integer))
                    or self.block_size < 1):
                raise ConfigError(f"block_size must be a positive int, not {self.block_size!r}")
        object.__setattr__(self, "fmt", fmt)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)

    @property
    def per_tensor(self) -> bool:
        return self.axis is None

    def broadcast(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Scale and zero point expanded so that they broadcast against a tensor of ``shape``.

        Raises :class:`ConfigError` when the per-axis or blocked parameters do not match
        ``shape``, naming both shapes.
        """
        if self.axis is None:
            return self.scale, self.zero_point
        ndim = len(shape)
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 0 <= axis < ndim:
            raise ConfigError(f"axis {self.axis} is out of range for a tensor of shape {shape}")
        if self.block_size is None:
            if self.scale.shape[0] != shape[axis]:
                raise ConfigError(
                    f"per-axis scale has {self.scale.shape[0]} entries but axis {self.axis} of "
                    f"shape {shape} has {shape[axis]}"
                )
            view = [1] * ndim
            view[axis] = shape[axis]
            return self.scale.reshape(view), self.zero_point.reshape(view)
        blocks = -(-shape[axis] // self.block_size)
        expected = tuple(blocks if i == axis else d for i, d in enumerate(shape))
        if self.scale.shape != expected:
            raise ConfigError(
                f"blocked scale shape {self.scale.shape} does not match {expected} for a tensor "
                f"of shape {shape} with block_size {self.block_size} on axis {self.axis}"
            )
        scale = np.repeat(self.scale, self.block_size, axis=axis)
        zp = np.repeat(self.zero_point, self.block_size, axis=axis)
        index = [slice(None)] * ndim
        index[axis] = slice(0, shape[axis])
        return scale[tuple(index)], zp[tuple(index)]

    def __repr__(self) -> str:
        gran = "per-tensor" if self.axis is None else (
            f"axis={self.axis}" + (f", block_size={self.block_size}" if self.block_size else ""))
        return (f"QuantParams({self.fmt.name}, {gran}, scale={self.scale.tolist()}, "
                f"zero_point={self.zero_point.tolist()})")
