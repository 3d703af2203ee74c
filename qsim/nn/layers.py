"""The layer types of the graph IR: parameters, shape inference and GEMM mapping.

Layers are data. A layer is *float* when it has no quantization parameters and *quantized*
when it carries them (``input_params``, ``weight_params``, ``output_params``...); quantized
layers hold integer weights and an int32 bias. How a layer computes (in float, or in
integers under a chosen requantization semantics) is the business of :mod:`qsim.nn.engine`.

Weights may be ``None`` in shape-only graphs (cost estimates); ``weight_shape`` then says
what they would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from qsim.nn.graph import GemmShape, Layer, TensorType, _pairs, window_output
from qsim.quant.params import QuantParams

__all__ = [
    "Conv2d", "Linear", "MatMul", "Add", "Relu", "Clip", "MaxPool", "AvgPool", "GlobalAvgPool",
    "Flatten", "Reshape", "Concat", "Softmax", "BatchNorm", "Transpose", "LayerNorm", "Gelu",
    "Quantize", "Dequantize", "Constant", "LAYERS",
]


def _check_rank(layer: Layer, t: TensorType, rank: int, what: str) -> None:
    if len(t.shape) != rank:
        raise layer._fail(f"expects a rank-{rank} {what} input, got {t}")


@dataclass
class _GemmParams:
    """Weights, bias, fused activation and quantization parameters of a conv or linear layer.

    A layer is quantized when it has ``output_params``; it then holds integer weights in
    ``weight_params.fmt`` and an int32 bias.
    """

    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    activation: object = None
    input_params: QuantParams | None = None
    weight_params: QuantParams | None = None
    output_params: QuantParams | None = None

    @property
    def quantized(self) -> bool:
        return self.output_params is not None


@dataclass
class _Windowed(Layer):
    """A layer that slides a 2-D window: kernel, strides, pads (top, left, bottom, right)
    and dilations, validated and normalised once for convolutions and pools."""

    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        self.kernel = _pairs("kernel", self.kernel, 2)
        self.strides = _pairs("strides", self.strides, 2)
        self.pads = _pairs("pads", self.pads, 4)
        self.dilations = _pairs("dilations", self.dilations, 2)
        if min(self.strides) < 1 or min(self.dilations) < 1 or min(self.kernel) < 1 or min(self.pads) < 0:
            raise self._fail(f"kernel, strides and dilations must be positive and pads not "
                             f"negative: kernel {self.kernel}, strides {self.strides}, "
                             f"dilations {self.dilations}, pads {self.pads}")

    def out_hw(self, h: int, w: int, ceil_mode: bool = False) -> tuple[int, int]:
        t, l, b, r = self.pads
        return (window_output(h, self.kernel[0], self.strides[0], t, b, self.dilations[0], ceil_mode),
                window_output(w, self.kernel[1], self.strides[1], l, r, self.dilations[1], ceil_mode))


@dataclass
class Conv2d(_GemmParams, _Windowed):
    """2-D convolution, NCHW, ONNX Conv semantics (pads = top, left, bottom, right).

    ``weight`` has shape ``(out_channels, in_channels // groups, kh, kw)``. ``activation`` is
    fused: ``None``, ``"relu"`` or ``("clip", lo, hi)`` (real-valued bounds).
    """

    kind: ClassVar[str] = "conv2d"
    in_channels: int = 0
    out_channels: int = 0
    groups: int = 1

    def __post_init__(self) -> None:
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise self._fail(
                f"groups = {self.groups} must divide in_channels = {self.in_channels} and "
                f"out_channels = {self.out_channels}")
        super().__post_init__()
        if self.weight is not None and tuple(self.weight.shape) != self.weight_shape:
            raise self._fail(f"weight shape {tuple(self.weight.shape)} is not {self.weight_shape}")
        if self.bias is not None and tuple(np.shape(self.bias)) != (self.out_channels,):
            raise self._fail(f"bias shape {tuple(np.shape(self.bias))} is not ({self.out_channels},)")

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        (x,) = types
        _check_rank(self, x, 4, "NCHW")
        if x.shape[1] != self.in_channels:
            raise self._fail(f"expects {self.in_channels} input channels, got {x}")
        try:
            oh, ow = self.out_hw(x.shape[2], x.shape[3])
        except Exception as exc:
            raise self._fail(str(exc)) from None
        dtype = self.output_params.fmt.numpy_dtype().name if self.quantized else "float32"
        return [TensorType((x.shape[0], self.out_channels, oh, ow), dtype)]

    def gemms(self, types: Sequence[TensorType]) -> list[GemmShape]:
        (x,) = types
        oh, ow = self.out_hw(x.shape[2], x.shape[3])
        batch = x.shape[0] or 1
        k = (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]
        return [GemmShape(batch * oh * ow, k, self.out_channels // self.groups, self.groups)]


@dataclass
class Linear(_GemmParams, Layer):
    """``y = x @ weight + bias`` over the last axis; ``weight`` is ``(in_features, out_features)``.

    Covers ONNX Gemm (with its transposes resolved at import) and MatMul by a constant.
    """

    kind: ClassVar[str] = "linear"
    in_features: int = 0
    out_features: int = 0

    def __post_init__(self) -> None:
        if self.in_features < 1 or self.out_features < 1:
            raise self._fail(f"features must be positive, not {self.in_features} -> {self.out_features}")
        if self.weight is not None and tuple(self.weight.shape) != (self.in_features, self.out_features):
            raise self._fail(f"weight shape {tuple(self.weight.shape)} is not "
                             f"({self.in_features}, {self.out_features})")
        if self.bias is not None and tuple(np.shape(self.bias)) != (self.out_features,):
            raise self._fail(f"bias shape {tuple(np.shape(self.bias))} is not ({self.out_features},)")

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        (x,) = types
        if len(x.shape) < 2 or x.shape[-1] != self.in_features:
            raise self._fail(f"expects (..., {self.in_features}) input, got {x}")
        dtype = self.output_params.fmt.numpy_dtype().name if self.quantized else "float32"
        return [TensorType((*x.shape[:-1], self.out_features), dtype)]

    def gemms(self, types: Sequence[TensorType]) -> list[GemmShape]:
        (x,) = types
        rows = int(np.prod([d or 1 for d in x.shape[:-1]]))
        return [GemmShape(rows, self.in_features, self.out_features)]


@dataclass
class MatMul(Layer):
    """Product of two activations, ``a @ b`` with batch broadcasting (attention scores)."""

    kind: ClassVar[str] = "matmul"

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 2)
        a, b = types
        if len(a.shape) < 2 or len(b.shape) < 2 or a.shape[-1] != b.shape[-2]:
            raise self._fail(f"cannot multiply {a} by {b}")
        batch = a.shape[:-2] if len(a.shape) >= len(b.shape) else b.shape[:-2]
        return [TensorType((*batch, a.shape[-2], b.shape[-1]), "float32")]

    def gemms(self, types: Sequence[TensorType]) -> list[GemmShape]:
        a, b = types
        batch = int(np.prod([d or 1 for d in (a.shape[:-2] if len(a.shape) >= len(b.shape) else b.shape[:-2])]))
        return [GemmShape(a.shape[-2], a.shape[-1], b.shape[-1], batch)]


@dataclass
class _Elementwise(Layer):
    """Base for layers whose output has the input's shape (and, unless quantized, dtype)."""

    output_params: QuantParams | None = None

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        return [types[0]]


@dataclass
class Add(Layer):
    """Element-wise sum with numpy broadcasting (residual connections)."""

    kind: ClassVar[str] = "add"
    activation: object = None
    input_params: tuple[QuantParams, QuantParams] | None = None
    output_params: QuantParams | None = None

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 2)
        a, b = types
        try:
            shape = list(np.broadcast_shapes(tuple(d or 1 for d in a.shape), tuple(d or 1 for d in b.shape)))
        except ValueError:
            raise self._fail(f"cannot broadcast {a} with {b}") from None
        # An output axis is unknown (None) when an input of full rank leaves it unknown.
        for t in (a, b):
            if len(t.shape) == len(shape):
                shape = [None if d is None else s for d, s in zip(t.shape, shape)]
        dtype = self.output_params.fmt.numpy_dtype().name if self.output_params else a.dtype
        return [TensorType(tuple(shape), dtype)]


@dataclass
class Relu(_Elementwise):
    kind: ClassVar[str] = "relu"


@dataclass
class Clip(_Elementwise):
    """``min(max(x, lo), hi)`` with real-valued bounds (ReLU6 is ``Clip(0, 6)``)."""

    kind: ClassVar[str] = "clip"
    lo: float = float("-inf")
    hi: float = float("inf")

    def __post_init__(self) -> None:
        if not self.lo <= self.hi:
            raise self._fail(f"lo = {self.lo} must not exceed hi = {self.hi}")


@dataclass
class _Pool(_Windowed):
    ceil_mode: bool = False

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        (x,) = types
        _check_rank(self, x, 4, "NCHW")
        try:
            oh, ow = self.out_hw(x.shape[2], x.shape[3], self.ceil_mode)
        except Exception as exc:
            raise self._fail(str(exc)) from None
        dtype = self.output_params.fmt.numpy_dtype().name if getattr(self, "output_params", None) else x.dtype
        return [TensorType((x.shape[0], x.shape[1], oh, ow), dtype)]


@dataclass
class MaxPool(_Pool):
    kind: ClassVar[str] = "maxpool"


@dataclass
class AvgPool(_Pool):
    kind: ClassVar[str] = "avgpool"
    count_include_pad: bool = False
    input_params: QuantParams | None = None
    output_params: QuantParams | None = None


@dataclass
class GlobalAvgPool(Layer):
    kind: ClassVar[str] = "globalavgpool"
    input_params: QuantParams | None = None
    output_params: QuantParams | None = None

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        (x,) = types
        _check_rank(self, x, 4, "NCHW")
        dtype = self.output_params.fmt.numpy_dtype().name if self.output_params else x.dtype
        return [TensorType((x.shape[0], x.shape[1], 1, 1), dtype)]


@dataclass
class Flatten(Layer):
    """ONNX Flatten: ``(d0 ... d{axis-1}, d{axis} ...)`` → 2-D."""

    kind: ClassVar[str] = "flatten"
    axis: int = 1

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        (x,) = types
        axis = self.axis + len(x.shape) if self.axis < 0 else self.axis
        if not 0 <= axis <= len(x.shape):
            raise self._fail(f"axis {self.axis} is out of range for {x}")
        head = x.shape[:axis]
        lead = None if any(d is None for d in head) else int(np.prod(head, dtype=np.int64))
        return [TensorType((lead, int(np.prod(x.shape[axis:], dtype=np.int64))), x.dtype)]


@dataclass
class Reshape(Layer):
    """Reshape to ``shape`` (ONNX rules: 0 copies the input dimension, one -1 is inferred)."""

    kind: ClassVar[str] = "reshape"
    shape: tuple[int, ...] = ()

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        (x,) = types
        if x.shape and x.shape[0] is None:
            raise self._fail(f"needs a concrete batch size, got {x}")
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)]
        total = int(np.prod(x.shape, dtype=np.int64))
        if target.count(-1) > 1:
            raise self._fail(f"shape {self.shape} has more than one -1")
        if -1 in target:
            known = int(np.prod([d for d in target if d != -1], dtype=np.int64))
            if known == 0 or total % known:
                raise self._fail(f"cannot reshape {x} to {self.shape}")
            target[target.index(-1)] = total // known
        if int(np.prod(target, dtype=np.int64)) != total:
            raise self._fail(f"cannot reshape {x} ({total} elements) to {tuple(target)}")
        return [TensorType(tuple(target), x.dtype)]


@dataclass
class Concat(Layer):
    kind: ClassVar[str] = "concat"
    axis: int = 1
    input_params: tuple[QuantParams, ...] | None = None
    output_params: QuantParams | None = None

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        if not types:
            raise self._fail("needs at least one input")
        rank = len(types[0].shape)
        axis = self.axis + rank if self.axis < 0 else self.axis
        for t in types[1:]:
            if len(t.shape) != rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, types[0].shape))
                                           if i != axis):
                raise self._fail(f"cannot concatenate {types[0]} and {t} on axis {self.axis}")
        size = sum(t.shape[axis] for t in types)
        shape = (*types[0].shape[:axis], size, *types[0].shape[axis + 1:])
        dtype = self.output_params.fmt.numpy_dtype().name if self.output_params else types[0].dtype
        return [TensorType(shape, dtype)]


@dataclass
class Softmax(_Elementwise):
    """Float softmax (at a network's output)."""

    kind: ClassVar[str] = "softmax"
    axis: int = -1


@dataclass
class Transpose(Layer):
    """ONNX Transpose with permutation ``perm``."""

    kind: ClassVar[str] = "transpose"
    perm: tuple[int, ...] = ()

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        (x,) = types
        if sorted(self.perm) != list(range(len(x.shape))):
            raise self._fail(f"perm {self.perm} is not a permutation of the axes of {x}")
        return [TensorType(tuple(x.shape[i] for i in self.perm), x.dtype)]


@dataclass
class LayerNorm(_Elementwise):
    """Float layer normalization over the last axis (transformer blocks)."""

    kind: ClassVar[str] = "layernorm"
    eps: float = 1e-12


@dataclass
class Gelu(_Elementwise):
    """Float GELU (transformer feed-forward blocks)."""

    kind: ClassVar[str] = "gelu"


@dataclass
class BatchNorm(_Elementwise):
    """Inference batch normalization (folded into the preceding conv or linear by PTQ)."""

    kind: ClassVar[str] = "batchnorm"
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    mean: np.ndarray | None = None
    var: np.ndarray | None = None
    eps: float = 1e-5


@dataclass
class _Convert(Layer):
    """Base of the float <-> integer conversions: one input, the same shape, ``params``."""

    params: QuantParams | None = None

    def _dtype(self) -> str:  # pragma: no cover
        raise NotImplementedError

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        if self.params is None:
            raise self._fail("has no quantization parameters")
        return [TensorType(types[0].shape, self._dtype())]


@dataclass
class Quantize(_Convert):
    """Float to integer (ONNX QuantizeLinear) with ``params``."""

    kind: ClassVar[str] = "quantize"

    def _dtype(self) -> str:
        return self.params.fmt.numpy_dtype().name


@dataclass
class Dequantize(_Convert):
    """Integer to float (ONNX DequantizeLinear) with ``params``."""

    kind: ClassVar[str] = "dequantize"

    def _dtype(self) -> str:
        return "float32"


@dataclass
class Constant(Layer):
    """A tensor stored in the graph: no inputs, one output equal to ``value``.

    ONNX models feed initializers straight into element-wise ops (the quantized bias operand
    of a ``QLinearAdd`` after a ``QLinearMatMul``, a constant addend); the value keeps its
    dtype (float32, or the integers of a quantized tensor) and has no batch dimension.
    """

    kind: ClassVar[str] = "constant"
    value: np.ndarray | None = None

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 0)
        if self.value is None:
            raise self._fail("has no value")
        return [TensorType(tuple(int(d) for d in np.shape(self.value)), np.asarray(self.value).dtype.name)]


#: Every layer type by its ``kind``.
LAYERS = {cls.kind: cls for cls in (Conv2d, Linear, MatMul, Add, Relu, Clip, MaxPool, AvgPool,
                                    GlobalAvgPool, Flatten, Reshape, Concat, Softmax, BatchNorm,
                                    Transpose, LayerNorm, Gelu, Quantize, Dequantize, Constant)}
