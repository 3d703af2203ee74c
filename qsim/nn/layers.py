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
from qsim.numerics import IntFormat
from qsim.quant.params import QuantParams

__all__ = [
    "Conv2d", "Linear", "MatMul", "Add", "Mul", "Pad", "Rescale", "Relu", "Clip", "MaxPool", "AvgPool", "GlobalAvgPool",
    "Flatten", "Reshape", "Concat", "Softmax", "BatchNorm", "Transpose", "LayerNorm", "Gelu",
    "Quantize", "Dequantize", "Constant", "QuantizeLinear", "DequantizeLinear",
    "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv",
    "OnnxOp", "OrtContribOp", "LAYERS",
]


def _check_rank(layer: Layer, t: TensorType, rank: int, what: str) -> None:
    if len(t.shape) != rank:
        raise layer._fail(f"expects a rank-{rank} {what} input, got {t}")


@dataclass
class _GemmParams:
    """Weights, bias, fused activation and quantization parameters of a conv or linear layer.

    A layer is quantized when it has ``output_params``; it then holds integer weights in
    ``weight_params.fmt`` and an int32 bias (or PyTorch's float bias, which only the
    ``pytorch-fbgemm`` semantics accepts: fbgemm adds it in float32 while requantizing).
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
class Mul(Add):
    """Element-wise product with numpy broadcasting (TFLite ``MUL``); quantized with
    ``input_params`` and ``output_params`` like :class:`Add`."""

    kind: ClassVar[str] = "mul"


@dataclass
class Pad(Layer):
    """Constant padding: ``pads`` holds ``(before, after)`` per axis; ``value`` fills (for a
    quantized tensor the stored integer, usually its zero point)."""

    kind: ClassVar[str] = "pad"
    pads: tuple[tuple[int, int], ...] = ()
    value: float = 0

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        (x,) = types
        if len(self.pads) != len(x.shape) or any(min(p) < 0 for p in self.pads):
            raise self._fail(f"pads {self.pads} do not fit {x}")
        shape = tuple(None if d is None else d + a + b for d, (a, b) in zip(x.shape, self.pads))
        return [TensorType(shape, x.dtype, x.fmt)]


@dataclass
class Rescale(Layer):
    """An integer tensor brought from ``input_params`` to ``output_params`` (TFLite's
    int8 -> int8 ``QUANTIZE``): ``q_out = zp_out + round((q_in - zp_in) * s_in / s_out)``."""

    kind: ClassVar[str] = "rescale"
    input_params: QuantParams | None = None
    output_params: QuantParams | None = None

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        if self.input_params is None or self.output_params is None:
            raise self._fail("needs input_params and output_params")
        return [TensorType(types[0].shape, self.output_params.fmt.numpy_dtype().name)]


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
    """Softmax over ``axis`` of ``beta * x``: float, or quantized with ``input_params`` and
    ``output_params`` (TFLite's int8 ``SOFTMAX``)."""

    kind: ClassVar[str] = "softmax"
    axis: int = -1
    beta: float = 1.0
    input_params: QuantParams | None = None

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        if self.output_params is not None:
            return [TensorType(types[0].shape, self.output_params.fmt.numpy_dtype().name)]
        return [types[0]]


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
        # ONNX: the output has the scale's type (float16 for a float16 scale)
        return "float16" if self.params.scale.dtype == np.float16 else "float32"


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


# ------------------------------------------------------------------ ONNX operators with tensor operands
#
# The layers below take every operand as a tensor of the graph, as the ONNX operators do:
# scales, zero points and weights may be graph inputs or computed, and are read at run time.
# The importer emits them when the parameters are not constants (or the operator has no
# dedicated layer); the engine runs each with the matching function of qsim.quant.


def _narrow_type(fmt: IntFormat) -> TensorType:
    """dtype and ``fmt`` of a TensorType holding values of ``fmt``."""
    dtype = fmt.numpy_dtype().name
    return TensorType((), dtype, None if fmt.bits in (8, 16, 32, 64) else fmt.name)


def _with_shape(t: TensorType, shape) -> TensorType:
    return TensorType(tuple(shape), t.dtype, t.fmt)


@dataclass
class QuantizeLinear(Layer):
    """ONNX QuantizeLinear with run-time parameters: inputs ``(x, scale[, zero_point])``.

    ``fmt`` is the output format (the zero point's type, or ``output_dtype``), ``axis`` and
    ``block_size`` the ONNX attributes (per tensor when the scale has one element).
    """

    kind: ClassVar[str] = "quantize_linear"
    fmt: IntFormat | None = None
    axis: int = 1
    block_size: int = 0

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        if len(types) not in (2, 3):
            raise self._fail(f"expects 2 or 3 inputs, got {len(types)}")
        if self.fmt is None:
            raise self._fail("has no output format")
        return [_with_shape(_narrow_type(self.fmt), types[0].shape)]


@dataclass
class DequantizeLinear(Layer):
    """ONNX DequantizeLinear with run-time parameters: inputs ``(x, scale[, zero_point])``.

    ``fmt`` is the input's format, ``dtype`` the output's (the scale's float type).
    """

    kind: ClassVar[str] = "dequantize_linear"
    fmt: IntFormat | None = None
    axis: int = 1
    block_size: int = 0
    dtype: str = "float32"

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        if len(types) not in (2, 3):
            raise self._fail(f"expects 2 or 3 inputs, got {len(types)}")
        return [TensorType(types[0].shape, self.dtype)]


@dataclass
class DynamicQuantizeLinear(Layer):
    """ONNX DynamicQuantizeLinear: ``x`` -> uint8 ``y``, float32 scale, uint8 zero point."""

    kind: ClassVar[str] = "dynamic_quantize_linear"

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 1)
        return [TensorType(types[0].shape, "uint8"), TensorType((), "float32"),
                TensorType((), "uint8")]


def _matmul_shape(layer: Layer, a: TensorType, b: TensorType) -> tuple:
    """``numpy.matmul``'s output shape (1-D operands and batch broadcasting)."""
    sa, sb = list(a.shape), list(b.shape)
    if not sa or not sb:
        raise layer._fail(f"cannot multiply {a} by {b}")
    ka = sa[-1]
    kb = sb[0] if len(sb) == 1 else sb[-2]
    if ka is not None and kb is not None and ka != kb:
        raise layer._fail(f"cannot multiply {a} by {b}")
    rows = sa[:-1]
    cols = [] if len(sb) == 1 else [sb[-1]]
    if len(sa) > 2 or len(sb) > 2:
        try:
            batch = np.broadcast_shapes(tuple(d or 1 for d in sa[:-2]), tuple(d or 1 for d in sb[:-2]))
        except ValueError:
            raise layer._fail(f"cannot multiply {a} by {b}: batch dimensions do not broadcast") from None
        return (*batch, *rows[-1:], *cols)
    return (*rows, *cols)


@dataclass
class MatMulInteger(Layer):
    """ONNX MatMulInteger: inputs ``(a, b, a_zero_point, b_zero_point)``, int32 output."""

    kind: ClassVar[str] = "matmul_integer"

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 4)
        return [TensorType(_matmul_shape(self, types[0], types[1]), "int32")]

    def gemms(self, types: Sequence[TensorType]) -> list[GemmShape]:
        a, b = types[:2]
        out = _matmul_shape(self, a, b)
        m = a.shape[-2] if len(a.shape) > 1 else 1
        n = b.shape[-1] if len(b.shape) > 1 else 1
        count = int(np.prod([d or 1 for d in out], dtype=np.int64)) // max(m * n, 1)
        return [GemmShape(m or 1, a.shape[-1], n or 1, max(count, 1))]


@dataclass
class _ConvAttrs(Layer):
    """ONNX convolution attributes (any number of spatial axes), as the ONNX node gives them."""

    strides: tuple[int, ...] | None = None
    pads: tuple[int, ...] | None = None
    dilations: tuple[int, ...] | None = None
    group: int = 1
    auto_pad: str = "NOTSET"
    kernel_shape: tuple[int, ...] | None = None

    def _output(self, x: TensorType, w: TensorType) -> tuple:
        from qsim.errors import ConfigError
        from qsim.quant.kernels import conv_geometry

        if len(x.shape) < 3 or len(w.shape) != len(x.shape):
            raise self._fail(f"cannot convolve {x} with a weight {w}")
        if self.group < 1 or (x.shape[1] is not None and x.shape[1] != w.shape[1] * self.group) \
                or w.shape[0] % self.group:
            raise self._fail(f"{x} and weight {w} do not fit group {self.group}")
        try:
            geometry = conv_geometry(x.shape[2:], w.shape[2:], strides=self.strides, pads=self.pads,
                                     dilations=self.dilations, auto_pad=self.auto_pad)
        except ConfigError as exc:
            raise self._fail(str(exc)) from None
        return (x.shape[0], w.shape[0], *geometry.output)

    def gemms(self, types: Sequence[TensorType]) -> list[GemmShape]:
        x, w = types[:2]
        out = self._output(x, w)
        rows = int(np.prod([d or 1 for d in (out[0], *out[2:])], dtype=np.int64))
        depth = int(np.prod(w.shape[1:], dtype=np.int64))
        return [GemmShape(rows, depth, w.shape[0] // self.group, self.group)]


@dataclass
class ConvInteger(_ConvAttrs):
    """ONNX ConvInteger: inputs ``(x, w, x_zero_point, w_zero_point)``, int32 output."""

    kind: ClassVar[str] = "conv_integer"

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 4)
        return [TensorType(self._output(types[0], types[1]), "int32")]


@dataclass
class QLinearMatMul(Layer):
    """ONNX QLinearMatMul of any operands: ``(a, a_scale, a_zero_point, b, b_scale,
    b_zero_point, y_scale, y_zero_point)``; ``fmt`` is the output format."""

    kind: ClassVar[str] = "qlinear_matmul"
    fmt: IntFormat | None = None

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        self._expect_inputs(types, 8)
        return [_with_shape(_narrow_type(self.fmt), _matmul_shape(self, types[0], types[3]))]

    def gemms(self, types: Sequence[TensorType]) -> list[GemmShape]:
        return MatMulInteger.gemms(self, [types[0], types[3]])


@dataclass
class QLinearConv(_ConvAttrs):
    """ONNX QLinearConv of any operands: ``(x, x_scale, x_zero_point, w, w_scale, w_zero_point,
    y_scale, y_zero_point[, bias])``; ``fmt`` is the output format."""

    kind: ClassVar[str] = "qlinear_conv"
    fmt: IntFormat | None = None

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        if len(types) not in (8, 9):
            raise self._fail(f"expects 8 or 9 inputs, got {len(types)}")
        return [_with_shape(_narrow_type(self.fmt), self._output(types[0], types[3]))]

    def gemms(self, types: Sequence[TensorType]) -> list[GemmShape]:
        return _ConvAttrs.gemms(self, [types[0], types[3]])


@dataclass
class OnnxOp(Layer):
    """A small ONNX operator run by :mod:`qsim.nn.onnx_ops` (``Div``, ``Cast``, ``ReduceMax``...).

    ``slots`` gives the ONNX input position of each layer input (omitted optional inputs have
    none); ``attrs`` are the node's attributes and ``opset`` the model's default opset. The
    output types are those of the operator on zeros of the input types, so only operators
    whose output shape does not depend on input values are emitted (the importer checks).
    """

    kind: ClassVar[str] = "onnx_op"
    op: str = ""
    attrs: dict | None = None
    slots: tuple[int, ...] = ()
    opset: int = 21
    constants: dict | None = None  # ONNX position -> value of a constant input (axes, shape)

    def arguments(self, values: Sequence[np.ndarray]) -> list:
        """The operator's inputs by ONNX position (``None`` where omitted)."""
        count = max([*self.slots, *(self.constants or {})], default=-1) + 1
        args: list = [None] * count
        for slot, value in zip(self.slots, values):
            args[slot] = value
        for slot, value in (self.constants or {}).items():
            args[slot] = value
        return args

    def evaluate(self, values: Sequence[np.ndarray]) -> list[np.ndarray]:
        from qsim.errors import ConfigError
        from qsim.nn.onnx_ops import evaluate

        try:  # an operator with optional outputs (LayerNormalization) may return more
            return evaluate(self.op, self.arguments(values), self.attrs or {},
                            self.opset)[:len(self.outputs)]
        except ConfigError as exc:
            raise self._fail(str(exc)) from None

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        if len(types) != len(self.slots):
            raise self._fail(f"expects {len(self.slots)} input(s), got {len(types)}")
        dummies = [np.zeros(tuple(d or 1 for d in t.shape), np.dtype(t.dtype)) for t in types]
        with np.errstate(all="ignore"):
            try:
                outs = self.evaluate(dummies)
            except (ValueError, IndexError, TypeError) as exc:
                raise self._fail(f"does not fit its inputs {', '.join(map(str, types))}: {exc}") from None
        batch = types[0].shape[0] if types and types[0].shape else None
        result = []
        for out in outs:
            shape = tuple(out.shape)
            if batch is None and shape and types and types[0].shape and shape[0] == 1:
                shape = (None, *shape[1:])
            result.append(TensorType(shape, out.dtype.name))
        return result


@dataclass
class OrtContribOp(Layer):
    """An ONNX Runtime ``com.microsoft`` element-wise QOperator op run with ORT's own kernel
    (:mod:`qsim.quant.ortops`): ``QLinearMul``, ``QLinearSigmoid``, ``QLinearLeakyRelu``.

    ``slots`` gives the ONNX input position of each layer input (an omitted optional zero point
    has none); the output has the first input's type, broadcast for ``QLinearMul``.
    """

    kind: ClassVar[str] = "ort_contrib"
    op: str = ""
    slots: tuple[int, ...] = ()
    alpha: float = 0.01

    def arguments(self, values: Sequence[np.ndarray]) -> list:
        args: list = [None] * 8
        for slot, value in zip(self.slots, values):
            args[slot] = value
        return args

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:
        if len(types) != len(self.slots):
            raise self._fail(f"expects {len(self.slots)} input(s), got {len(types)}")
        x = types[0]
        if x.dtype not in ("uint8", "int8"):
            raise self._fail(f"expects a uint8 or int8 input, got {x}")
        shape = x.shape
        if self.op == "QLinearMul":
            b = types[self.slots.index(3)]
            if b.dtype != x.dtype:
                raise self._fail(f"expects operands of one type, got {x} and {b}")
            try:
                shape = np.broadcast_shapes(tuple(d or 1 for d in x.shape), tuple(d or 1 for d in b.shape))
            except ValueError:
                raise self._fail(f"cannot broadcast {x} with {b}") from None
            if x.shape and x.shape[0] is None and len(shape) == len(x.shape):
                shape = (None, *shape[1:])
        return [TensorType(tuple(shape), x.dtype)]


#: Every layer type by its ``kind``.
LAYERS = {cls.kind: cls for cls in (Conv2d, Linear, MatMul, Add, Mul, Pad, Rescale, Relu, Clip, MaxPool, AvgPool,
                                    GlobalAvgPool, Flatten, Reshape, Concat, Softmax, BatchNorm,
                                    Transpose, LayerNorm, Gelu, Quantize, Dequantize, Constant,
                                    QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
                                    MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv, OnnxOp,
                                    OrtContribOp)}
