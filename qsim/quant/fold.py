"""Batch-norm folding and Conv/Linear + BatchNorm + activation fusion, bit-exact in float32.

This module owns how an inference-mode ``BatchNormalization`` that follows a Conv, Gemm/Linear
or MatMul is folded into that layer's weight and bias (:func:`fold_batchnorm`), how a
following ReLU / ReLU6 / Clip is carried along as an output clamp (:func:`fuse_conv_bn_relu`),
and how far two folding orders are apart (:func:`ulp_distance`).

Folding is not exact arithmetic: every step rounds to float32, so the folded weights depend on
the order of operations, and that order differs between engines. Two orders are reproduced
bit for bit:

``"onnxruntime"``
    ONNX Runtime's ``ConvBNFusion`` and ``MatmulBNFusion`` graph transformers (level 1,
    "basic"; also run by ``onnxruntime.quantization.quant_pre_process``), read from
    ``onnxruntime/core/optimizer/conv_bn_fusion.cc`` and ``matmul_bn_fusion.cc``::

        s  = gamma / sqrt(var + eps)
        W' = W * s                         (s broadcast along the channel axis)
        b' = (b - mean) * s + beta         with a bias
        b' = beta - mean * s               without one (Conv without bias, MatMul)

``"pytorch"``
    ``torch.nn.utils.fusion.fuse_conv_bn_weights`` (Conv, weights of 3 or more dimensions)
    and ``fuse_linear_bn_weights`` (Linear, 2-D weights)::

        r  = rsqrt(var + eps)              = 1 / sqrt(var + eps) on CPU, two roundings
        W' = W * (gamma * r)
        b' = ((b - mean) * r) * gamma + beta   Conv
        b' = (b - mean) * (gamma * r) + beta   Linear
        b  = 0 when absent

    PyTorch's CPU ``rsqrt`` for float32 is ``_mm256_div_ps(1, _mm256_sqrt_ps(x))`` (and
    ``1 / std::sqrt(a)`` in the scalar path; ``aten/src/ATen/cpu/vec/vec256/vec256_float.h``,
    ``aten/src/ATen/native/cpu/UnaryOpsKernel.cpp``), not the approximate ``rsqrtps``
    instruction, so it is a correctly rounded square root followed by a correctly rounded
    division, which numpy's float32 ``sqrt`` and ``/`` reproduce.

In both, ``eps`` is rounded to float32 first (ONNX stores it as a float attribute; PyTorch adds
a Python float to a float32 tensor in float32), and every other operation is one IEEE float32
operation, exactly what numpy does element-wise on float32 arrays (no FMA contraction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qsim.errors import ConfigError
from qsim.numerics import Rounding
from qsim.quant.ops import quantize
from qsim.quant.params import QuantParams

__all__ = ["FOLD_ORDERS", "ACTIVATIONS", "fold_batchnorm", "FusedLayer", "fuse_conv_bn_relu",
           "ulp_distance"]

#: Folding orders :func:`fold_batchnorm` reproduces, by engine.
FOLD_ORDERS = ("onnxruntime", "pytorch")

#: Activations :func:`fuse_conv_bn_relu` can fuse.
ACTIVATIONS = ("none", "relu", "relu6", "clip")


def _float32_array(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an array of real numbers, not {type(value).__name__}") from None
    if arr.dtype == np.bool_ or arr.dtype.kind not in "fiu":
        raise ConfigError(f"{name} must be an array of real numbers, not dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        single = arr.astype(np.float32)
    bad = ~np.isfinite(single)
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f"{name}[{', '.join(map(str, idx))}]" if idx else name
        raise ConfigError(f"{where} = {arr[idx] if idx else arr.item()} is not a finite float32 value")
    return single


def _channel_param(value: Any, name: str, channels: int, axis: int, shape: tuple[int, ...]) -> np.ndarray:
    arr = _float32_array(value, name)
    if arr.shape != (channels,):
        raise ConfigError(
            f"{name} has shape {arr.shape} but the weight has {channels} channels on axis {axis} "
            f"(weight shape {shape}); each BatchNorm parameter must be 1-D with {channels} entries"
        )
    return arr


def _check_eps(eps: Any) -> np.float32:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise ConfigError(f"eps must be a positive number, not {eps!r}")
    value = float(eps)
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"eps must be a positive finite number, not {eps!r}")
    single = np.float32(value)
    if single == 0:
        raise ConfigError(f"eps = {eps!r} rounds to 0 in float32; BatchNorm epsilon must be positive")
    return single


def fold_batchnorm(weight: Any, bias: Any, gamma: Any, beta: Any, mean: Any, var: Any, eps: float,
                   *, order: str = "onnxruntime", channel_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fold an inference-mode BatchNormalization into the weight and bias of the layer before it.

    ``BN(layer(x)) = gamma * (W x + b - mean) / sqrt(var + eps) + beta = W' x + b'``, computed in
    float32 in the order of ``order`` (see the module docstring for both formulas).

    Parameters
    ----------
    weight : array-like
        The layer's weight, at least 2-D. Output channels lie along ``channel_axis``: Conv
        ``OIHW`` / ``OIW`` / ``OIDHW``, PyTorch ``Linear`` ``(out, in)`` and ONNX Gemm with
        ``transB=1`` use ``channel_axis=0``; ONNX MatMul ``B`` and Gemm with ``transB=0``
        (``(in, out)``) and ConvTranspose ``IOHW`` use ``channel_axis=1``.
    bias : array-like or None
        The layer's bias, 1-D with one entry per output channel; ``None`` for no bias.
    gamma, beta, mean, var : array-like
        BatchNorm scale, shift, running mean and running variance, 1-D with one entry per
        output channel. ``var`` must be ``>= 0``.
    eps : float
        BatchNorm epsilon, positive; rounded to float32 first, as both engines do.
    order : {"onnxruntime", "pytorch"}
        Whose arithmetic to reproduce. ``"pytorch"`` uses ``fuse_linear_bn_weights`` for 2-D
        weights and ``fuse_conv_bn_weights`` otherwise (their bias formulas differ).
    channel_axis : int
        Axis of ``weight`` that indexes output channels (negative counts from the end).

    Returns
    -------
    weight, bias : np.ndarray
        float32; the folded weight has the shape of ``weight``, the folded bias shape
        ``(channels,)``.

    Raises
    ------
    ConfigError
        For an unknown order, a weight of fewer than 2 dimensions, an out-of-range channel
        axis, parameters that are not 1-D with one entry per channel, non-finite values, a
        negative variance, ``eps <= 0``, or a folded value that overflows float32.

    Notes
    -----
    All inputs are rounded to float32 first; the engines fold float32 initializers.
    ``"onnxruntime"`` is bit-identical to the initializers ONNX Runtime 1.32 writes for
    Conv -> BatchNormalization and MatMul -> BatchNormalization (checked in
    ``tests/quant/test_fold.py``). The two orders give scales ``gamma / sqrt(var + eps)`` at
    most 1 ULP apart, hence folded weights at most 2 ULP apart; folded biases can differ by
    more ULPs of the (possibly small) result where ``(b - mean) * s`` and ``beta`` cancel.
    """
    if order not in FOLD_ORDERS:
        raise ConfigError(f"order must be one of {', '.join(map(repr, FOLD_ORDERS))}, not {order!r}")
    w = _float32_array(weight, "weight")
    if w.ndim < 2:
        raise ConfigError(
            f"weight must have at least 2 dimensions (out x in for Linear/Gemm, OIHW for Conv), "
            f"not shape {w.shape}"
        )
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
        raise ConfigError(f"channel_axis must be an int, not {channel_axis!r}")
    if not -w.ndim <= channel_axis < w.ndim:
        raise ConfigError(f"channel_axis {channel_axis} is out of range for a weight of shape {w.shape}")
    axis = int(channel_axis) % w.ndim
    channels = w.shape[axis]
    shape = tuple(w.shape)
    g = _channel_param(gamma, "gamma", channels, axis, shape)
    be = _channel_param(beta, "beta", channels, axis, shape)
    mu = _channel_param(mean, "mean", channels, axis, shape)
    v = _channel_param(var, "var", channels, axis, shape)
    b = None if bias is None else _channel_param(bias, "bias", channels, axis, shape)
    negative = v < 0
    if np.any(negative):
        i = int(np.argmax(negative))
        raise ConfigError(f"var[{i}] = {str(v[i])} is negative; a BatchNorm running variance must be >= 0")
    e = _check_eps(eps)

    view = [1] * w.ndim
    view[axis] = channels
    with np.errstate(over="ignore", under="ignore"):
        std = np.sqrt(v + e)  # var >= 0 and eps > 0, so std > 0: no division by zero below
        if order == "onnxruntime":
            scale = g / std
            folded_w = w * scale.reshape(view)
            # ORT has two code paths; they differ in the sign of zero results, so keep both.
            folded_b = be - mu * scale if b is None else (b - mu) * scale + be
        else:
            rsqrt = np.float32(1) / std
            scale = g * rsqrt
            folded_w = w * scale.reshape(view)
            centred = (np.zeros_like(mu) if b is None else b) - mu
            if w.ndim == 2:  # fuse_linear_bn_weights
                folded_b = centred * scale + be
            else:  # fuse_conv_bn_weights
                folded_b = (centred * rsqrt) * g + be
    for name, arr in (("scale gamma / sqrt(var + eps)", scale), ("weight", folded_w), ("bias", folded_b)):
        bad = ~np.isfinite(arr)
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            c = idx[axis] if arr.ndim == w.ndim else idx[0]
            raise ConfigError(
                f"folding overflows float32: the folded {name} of channel {c} is {str(arr[idx])} "
                f"(gamma = {str(g[c])}, var = {str(v[c])}, eps = {str(e)})"
            )
    return folded_w, folded_b.astype(np.float32)


@dataclass(frozen=True, eq=False)
class FusedLayer:
    """A Conv/Linear with BatchNorm folded in and the activation that follows it.

    The layer computes ``clip(W' x + b', clip_min, clip_max)``: the fused activation is an
    output clamp, which an integer engine applies for free when it requantizes (the clamp
    becomes the integer range :meth:`quantized_range`).

    Attributes
    ----------
    weight, bias : np.ndarray
        Folded float32 weight and bias (:func:`fold_batchnorm`).
    activation : str
        ``"none"``, ``"relu"``, ``"relu6"`` or ``"clip"``.
    clip_min, clip_max : np.float32
        The clamp: ``(-inf, inf)`` for none, ``(0, inf)`` for ReLU, ``(0, 6)`` for ReLU6.
    channel_axis : int
        Output-channel axis of ``weight`` (non-negative).
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: str
    clip_min: np.float32
    clip_max: np.float32
    channel_axis: int = 0

    @property
    def has_activation(self) -> bool:
        """Whether an activation was fused (``activation != "none"``)."""
        return self.activation != "none"

    def activate(self, y: np.ndarray) -> np.ndarray:
        """Apply the fused activation to the layer's pre-activation output ``y`` (float32)."""
        out = np.asarray(y, dtype=np.float32)
        if not self.has_activation:
            return out
        return np.clip(out, self.clip_min, self.clip_max)

    def quantized_range(self, params: QuantParams,
                        rounding: Rounding | str = Rounding.HALF_EVEN) -> tuple[int, int]:
        """Integer clamp that implements the activation on an output quantized with ``params``.

        ``(max(qmin, quantize(clip_min)), min(qmax, quantize(clip_max)))`` with ``(qmin, qmax)``
        the range of ``params.fmt`` (TFLite's ``CalculateActivationRangeQuantized``, with the
        rounding of :func:`qsim.quant.ops.quantize`). ``params`` must be per tensor.
        """
        if not params.per_tensor:
            raise ConfigError(
                f"quantized_range needs per-tensor output parameters, not axis={params.axis}"
            )
        fmt = params.fmt
        bounds = np.array([self.clip_min, self.clip_max], dtype=np.float32)
        finite = np.isfinite(bounds)
        q = quantize(np.where(finite, bounds, 0), params, rounding)
        lo = int(q[0]) if finite[0] else fmt.min
        hi = int(q[1]) if finite[1] else fmt.max
        return max(fmt.min, lo), min(fmt.max, hi)


def fuse_conv_bn_relu(weight: Any, bias: Any, gamma: Any, beta: Any, mean: Any, var: Any,
                      eps: float, *, activation: str = "relu", clip: tuple[float, float] | None = None,
                      order: str = "onnxruntime", channel_axis: int = 0) -> FusedLayer:
    """Fuse Conv/Linear -> BatchNorm -> activation into one layer with an output clamp.

    Parameters
    ----------
    weight, bias, gamma, beta, mean, var, eps, order, channel_axis
        As for :func:`fold_batchnorm`.
    activation : {"relu", "relu6", "clip", "none"}
        The activation after the BatchNorm. ``"clip"`` (ONNX ``Clip``) needs ``clip``.
    clip : (float, float) or None
        ``(min, max)`` of a ``"clip"`` activation, ``min <= max``; only with ``"clip"``.

    Returns
    -------
    FusedLayer
        Folded weight and bias with the activation's clamp range.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, not {activation!r}"
        )
    if activation == "clip":
        if clip is None:
            raise ConfigError("activation 'clip' needs clip=(min, max)")
        try:
            lo, hi = (float(c) for c in clip)
        except (TypeError, ValueError):
            raise ConfigError(f"clip must be a pair of numbers (min, max), not {clip!r}") from None
        if np.isnan(lo) or np.isnan(hi) or lo > hi:
            raise ConfigError(f"clip must satisfy min <= max, not {clip!r}")
    elif clip is not None:
        raise ConfigError(f"clip is only used with activation 'clip', not {activation!r}")
    else:
        lo, hi = {"none": (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0)}[activation]
    w, b = fold_batchnorm(weight, bias, gamma, beta, mean, var, eps, order=order,
                          channel_axis=channel_axis)
    return FusedLayer(w, b, activation, np.float32(lo), np.float32(hi), int(channel_axis) % w.ndim)


def ulp_distance(a: Any, b: Any) -> np.ndarray:
    """Element-wise distance in float32 units in the last place: how many float32 values lie
    between ``a`` and ``b`` (0 when equal, 1 for neighbours; ``+0`` and ``-0`` are 0 apart).

    Both are converted to float32; the result is int64. Non-finite inputs raise
    :class:`ConfigError`.
    """
    x = _float32_array(a, "a")
    y = _float32_array(b, "b")

    def ordered(v: np.ndarray) -> np.ndarray:
        # Map the sign-magnitude bit patterns onto a monotone integer line.
        bits = v.view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    return np.abs(ordered(x) - ordered(y))
