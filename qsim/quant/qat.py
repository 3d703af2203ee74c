"""Quantization-aware training for plain numpy training loops.

This module owns :class:`FakeQuant`: the quantize-dequantize node a training loop inserts on a
weight or an activation, its straight-through gradient, and how its quantization range follows
the data while training (an observer from :mod:`qsim.quant.calibrate`) until it is frozen; and
:class:`LearnedScaleFakeQuant`, the variant whose scale is a trained parameter (LSQ).

The forward pass is exactly :func:`qsim.quant.ops.dequantize` of :func:`qsim.quant.ops.quantize`
(ONNX QuantizeLinear / DequantizeLinear), so a trained network evaluates to the same numbers
as the integer model that is deployed with the frozen parameters. Nothing here rounds on its
own: scales and zero points come from :func:`qsim.quant.calibrate.compute_params` through the
observers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qsim.errors import ConfigError
from qsim.numerics import INT32, IntFormat
from qsim.quant.calibrate import MinMaxObserver, MovingAverageMinMaxObserver, Observer, parse_format
from qsim.quant.ops import dequantize, quantize
from qsim.quant.params import QuantParams

__all__ = ["FakeQuant", "LearnedScaleFakeQuant", "RANGE_TRACKING"]

#: How a :class:`FakeQuant` tracks its range while training.
#:
#: ``"moving_average"``: exponential moving average of each batch's min/max
#: (:class:`~qsim.quant.calibrate.MovingAverageMinMaxObserver`, PyTorch's default for
#: activations); ``"minmax"``: the extremes of everything seen so far
#: (:class:`~qsim.quant.calibrate.MinMaxObserver`); ``"current"``: the min/max of the tensor of
#: the current step only, the natural choice for weights, whose past values are gone.
RANGE_TRACKING = ("moving_average", "minmax", "current")


class FakeQuant:
    """Quantize-dequantize with a straight-through gradient, for one weight or activation tensor.

    Parameters
    ----------
    fmt : IntFormat or str
        Integer format, 2 to 16 bits (``"int8"``, ``"uint8"``, ``"int4"``, ...).
    symmetric : bool
        Symmetric range (zero point in the middle), see :func:`qsim.quant.calibrate.quant_range`.
    per_channel_axis : int or None
        Axis with one scale per index (weights: the output-channel axis); ``None`` per tensor.
    reduce_range : bool
        Map onto one bit less of range (:func:`qsim.quant.calibrate.quant_range`).
    tracking : {"moving_average", "minmax", "current"}
        How the range follows the data (:data:`RANGE_TRACKING`).
    averaging_constant : float
        Weight of the newest batch for ``"moving_average"``, in (0, 1].

    Notes
    -----
    **Forward.** ``x_hat = dequantize(quantize(x, p), p)`` with ``p`` the current parameters.
    While not frozen, each call first feeds ``x`` to the observer and recomputes ``p``.

    **Backward: the clipped straight-through estimator.** Rounding has zero derivative almost
    everywhere; the STE replaces it by the identity. Saturation is kept: the gradient passes
    where the rounded integer ``round(x / scale) + zero_point`` lies within the format's range
    ``[fmt.min, fmt.max]`` and is 0 where the forward pass saturated. The test is made on the
    rounded integer, not on ``x`` itself (PyTorch's ``fake_quantize_*_cachemask`` rule), so a
    value just beyond the last level that still rounds onto it keeps its gradient, and a tie
    that rounds to even outside the range loses it. No gradient flows to the scale or zero
    point: they come from the observer (:class:`LearnedScaleFakeQuant` trains the scale).

    **Freezing.** :meth:`freeze` stops the observer; the parameters stay as they are, as when
    the range has settled late in training and for export.
    """

    def __init__(self, fmt: IntFormat | str = "int8", *, symmetric: bool = False,
                 per_channel_axis: int | None = None, reduce_range: bool = False,
                 tracking: str = "moving_average", averaging_constant: float = 0.01) -> None:
        if tracking not in RANGE_TRACKING:
            raise ConfigError(
                f"tracking must be one of {', '.join(map(repr, RANGE_TRACKING))}, not {tracking!r}"
            )
        self.fmt = parse_format(fmt)
        self.tracking = tracking
        self._options: dict[str, Any] = {"symmetric": symmetric, "per_channel_axis": per_channel_axis,
                                         "reduce_range": reduce_range}
        self.averaging_constant = averaging_constant
        self.observer: Observer = self._new_observer()  # validates the options now
        self.symmetric = self.observer.symmetric
        self.per_channel_axis = self.observer.per_channel_axis
        self.reduce_range = self.observer.reduce_range
        self.frozen = False
        self._params: QuantParams | None = None
        self._mask: np.ndarray | None = None

    def _new_observer(self) -> Observer:
        if self.tracking == "moving_average":
            return MovingAverageMinMaxObserver(self.averaging_constant, self.fmt, **self._options)
        return MinMaxObserver(self.fmt, **self._options)

    # -- state -------------------------------------------------------------------------------
    @property
    def params(self) -> QuantParams | None:
        """The current quantization parameters (``None`` before the first observation)."""
        return self._params

    def observe(self, x: Any) -> QuantParams:
        """Feed ``x`` to the observer and recompute the parameters (no quantization)."""
        if self.frozen:
            raise ConfigError("FakeQuant is frozen: call unfreeze() before observing more data")
        if self.tracking == "current":
            self.observer = self._new_observer()
        self.observer.observe(x)
        self._params = self.observer.compute()
        return self._params

    def freeze(self) -> FakeQuant:
        """Stop updating the range; the current parameters are kept. Returns ``self``."""
        if self._params is None:
            raise ConfigError(
                "FakeQuant has no quantization parameters to freeze: run forward() or observe() "
                "on data first, or give them with set_params()"
            )
        self.frozen = True
        return self

    def unfreeze(self) -> FakeQuant:
        """Resume updating the range from the observer's state. Returns ``self``."""
        self.frozen = False
        return self

    def set_params(self, params: QuantParams) -> FakeQuant:
        """Use ``params`` from now on and freeze (for example parameters from calibration)."""
        if not isinstance(params, QuantParams):
            raise ConfigError(f"params must be a QuantParams, not {type(params).__name__}")
        if params.fmt != self.fmt:
            raise ConfigError(f"params are {params.fmt.name} but this FakeQuant is {self.fmt.name}")
        if params.block_size is not None:
            raise ConfigError("FakeQuant supports per-tensor and per-axis parameters, not blocked ones")
        self._params = params
        self.frozen = True
        return self

    # -- passes ------------------------------------------------------------------------------
    def forward(self, x: Any) -> np.ndarray:
        """Quantize-dequantize ``x`` (float32 result of the same shape); updates the range
        first unless frozen, and remembers which elements saturated for :meth:`backward`."""
        try:
            values = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError):
            raise ConfigError(f"FakeQuant input must be a real array, not {type(x).__name__}") from None
        if not self.frozen:
            self.observe(values)
        params = self._params
        # Quantizing into int32 with the same scale and zero point gives the rounded integer
        # before the format's saturation (int32 saturation is far outside every format here),
        # which decides both the clipped value and the gradient mask in one pass.
        wide = quantize(values, QuantParams(params.scale, params.zero_point, INT32, axis=params.axis))
        inside = (wide >= self.fmt.min) & (wide <= self.fmt.max)
        self._mask = inside
        return dequantize(np.clip(wide, self.fmt.min, self.fmt.max), params)

    __call__ = forward

    def backward(self, grad: Any) -> np.ndarray:
        """Straight-through gradient of the last :meth:`forward`: ``grad`` where that input was
        inside the format's range, 0 where it saturated."""
        if self._mask is None:
            raise ConfigError("FakeQuant.backward() needs a forward() first")
        g = np.asarray(grad)
        if g.shape != self._mask.shape:
            raise ConfigError(
                f"gradient shape {g.shape} does not match the last forward input shape "
                f"{self._mask.shape}"
            )
        return np.where(self._mask, g, np.zeros((), dtype=g.dtype))

    @property
    def mask(self) -> np.ndarray | None:
        """Boolean mask of the last forward: True where the gradient passes."""
        return self._mask

    def __repr__(self) -> str:
        gran = "per-tensor" if self.per_channel_axis is None else f"axis={self.per_channel_axis}"
        return (f"FakeQuant({self.fmt.name}, {gran}, symmetric={self.symmetric}, "
                f"tracking={self.tracking!r}, frozen={self.frozen}, params={self._params!r})")


class LearnedScaleFakeQuant:
    """Fake quantization with a trained scale: learned step size quantization (LSQ).

    Esser et al., "Learned Step Size Quantization" (ICLR 2020): the scale is a parameter of
    the network, updated by the training loop's optimizer from the gradient :meth:`backward`
    returns. The zero point stays fixed (symmetric formats: the middle of the range).

    Parameters
    ----------
    scale : array-like of float
        Initial scale: a scalar, or one per index of ``axis`` (for example from an observer's
        ``compute().scale``). Positive.
    fmt : IntFormat or str
        Integer format, 2 to 16 bits.
    zero_point : int or array-like of int
        Fixed zero point, in ``fmt`` (0 by default, the symmetric choice for signed formats).
    axis : int or None
        Axis with one scale per index; ``None`` per tensor.

    Notes
    -----
    **Forward**: ``dequantize(quantize(x, p), p)`` with ``p`` built from the current scale.

    **Backward** returns ``(grad_x, grad_scale)``. ``grad_x`` is the clipped STE of
    :class:`FakeQuant`. With ``v = x / s`` and ``q = round(v) + zp``, the derivative of
    ``x_hat = (clip(q) - zp) * s`` with respect to ``s`` is ``round(v) - v`` where ``q`` is
    inside the format, ``fmt.min - zp`` where it saturates low and ``fmt.max - zp`` where it
    saturates high (the STE applied to ``round``). It is summed per scale and multiplied by
    LSQ's gradient scale ``1 / sqrt(n * fmt.max)`` (``n`` elements per scale), which keeps
    the step of the scale commensurate with the steps of the weights.
    """

    def __init__(self, scale: Any, fmt: IntFormat | str = "int8", *, zero_point: Any = 0,
                 axis: int | None = None) -> None:
        self.fmt = parse_format(fmt)
        params = QuantParams(np.asarray(scale, dtype=np.float32), zero_point, self.fmt, axis=axis)
        self.scale = params.scale.copy()  # the trained parameter, float32, updated in place
        self.zero_point = params.zero_point
        self.axis = axis
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def params(self) -> QuantParams:
        """Quantization parameters of the current scale."""
        bad = ~np.isfinite(self.scale) | (self.scale <= 0)
        if np.any(bad):
            raise ConfigError(
                f"the learned scale must stay positive and finite, but it is "
                f"{self.scale.tolist()}; lower the learning rate of the scale"
            )
        return QuantParams(self.scale, self.zero_point, self.fmt, axis=self.axis)

    def forward(self, x: Any) -> np.ndarray:
        """Quantize-dequantize ``x`` with the current scale (float32)."""
        values = np.asarray(x, dtype=np.float32)
        params = self.params
        wide = quantize(values, QuantParams(params.scale, params.zero_point, INT32, axis=params.axis))
        scale, zero_point = params.broadcast(values.shape)
        self._cache = (values / scale, wide, zero_point)
        return dequantize(np.clip(wide, self.fmt.min, self.fmt.max), params)

    __call__ = forward

    def backward(self, grad: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(grad_x, grad_scale)`` of the last :meth:`forward` (see the class notes)."""
        if self._cache is None:
            raise ConfigError("LearnedScaleFakeQuant.backward() needs a forward() first")
        v, wide, zero_point = self._cache
        g = np.asarray(grad)
        if g.shape != v.shape:
            raise ConfigError(
                f"gradient shape {g.shape} does not match the last forward input shape {v.shape}"
            )
        low, high = wide < self.fmt.min, wide > self.fmt.max
        inside = ~(low | high)
        rounded = (wide - zero_point).astype(np.float32)  # round(v) where inside
        local = np.where(inside, rounded - v,
                         np.where(low, self.fmt.min - zero_point, self.fmt.max - zero_point))
        contrib = (g * local).astype(np.float64)
        if self.axis is None:
            n = v.size
            total = np.asarray(contrib.sum())
        else:
            axis = self.axis % v.ndim
            n = v.size // v.shape[axis]
            total = contrib.sum(axis=tuple(i for i in range(v.ndim) if i != axis))
        grad_scale = (total / np.sqrt(n * self.fmt.max)).astype(np.float32).reshape(self.scale.shape)
        return np.where(inside, g, np.zeros((), dtype=g.dtype)), grad_scale

    def __repr__(self) -> str:
        gran = "per-tensor" if self.axis is None else f"axis={self.axis}"
        return f"LearnedScaleFakeQuant({self.fmt.name}, {gran}, scale={self.scale.tolist()})"
