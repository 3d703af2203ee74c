"""Execution of a graph: float layers in float32, quantized layers in integers only.

:func:`run` evaluates a :class:`~qsim.nn.graph.Graph` layer by layer and can keep every
intermediate tensor for debugging. A layer with quantization parameters computes with
integers under the chosen requantization :class:`~qsim.quant.requant.Semantics`:

=========================  =================================================================
layer                      quantized computation
=========================  =================================================================
``Conv2d``, ``Linear``,    exact int32 accumulator ``Σ (x - zx)(w - zw) + bias`` from the
``MatMul``                 *accumulator backend*, then :func:`~qsim.quant.requant.requantize`
                           under the semantics, then the fused activation as an integer clamp
``Add``, ``AvgPool``,      ``onnxruntime``: ONNX Runtime's kernels (:mod:`qsim.quant.ortops`);
``GlobalAvgPool``,         ``onnx``/``pytorch-fbgemm``: the float QDQ reference (dequantize,
``Concat``                 float32 op, ONNX QuantizeLinear); ``tflite``,
                           ``tflite-single-rounding``, ``fixed-point``: integer-only, each
                           input rescaled to the output with the semantics' integer
                           requantizer (see :func:`_integer_rescale`)
``MaxPool``, ``Flatten``,  the same on integers as on floats (order-preserving or layout-only)
``Reshape``, ``Transpose``
``Relu``, ``Clip``         an integer clamp at the quantized bounds
``Quantize``               ONNX QuantizeLinear (``onnxruntime``: ORT's kernel, NaN → qmin)
``Dequantize``             ONNX DequantizeLinear
``Constant``               its stored value (float or integer), as is
``Softmax``, ``LayerNorm``,  float only
``Gelu``, ``BatchNorm``
=========================  =================================================================

The accumulator backend is the one seam between the integer reference and the accelerator:
:class:`ExactBackend` computes accumulators with exact numpy kernels; the accelerator's
backend (:mod:`qsim.nn.accelerate`) computes the same integers by running Programs on the
bit-accurate model or the RTL, so a network compiled for the accelerator goes through the
same requantization code as the reference.

With :class:`ExactBackend` the engine takes a faster route to the same integers: convolutions
and products run in float32 (or float64) BLAS whenever the worst-case accumulator, known from
the operand types and zero points, proves every partial sum exact, and under ``onnxruntime``
the requantization then stays in float32 exactly as MLAS computes it (see
:func:`_fast_requantize`); ``tests/nn/test_ort_parity.py`` checks both routes agree.

Run repeatedly (the exact backend, without ``keep``), a graph is compiled once per batch size,
semantics and instruction path into a plan (:func:`_compile`): the same arithmetic with every
constant prepared, im2col as one precomputed gather, and integer tensors kept between layers
as exact float32 values centered on their zero points; a layer the plan does not cover runs
its ordinary runner inside it. ``tests/nn/test_engine_plan.py`` checks the plan against the
layer-by-layer route bit for bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import numpy as np

from qsim.errors import ConfigError
from qsim.nn import layers as L
from qsim.nn.graph import Graph, Layer
from qsim.numerics import INT32, IntFormat, saturate, wrap
from qsim.quant.hazards import u8s8_conv_correction, u8s8_matmul_correction
from qsim.quant.isa import resolve_isa, u8s8_saturates
from qsim.quant.kernels import ISA_DEPENDENT, conv_columns, conv_geometry, conv_integer, matmul_integer
from qsim.quant.ops import dequantize, quantize
from qsim.quant.params import QuantParams
from qsim.quant.requant import (LITERT_GEMM_OPS, LITERT_SEMANTICS, Semantics, float32_multiplier,
                                litert_optimized_add, litert_requantize,
                                multiply_by_quantized_multiplier, quantize_multiplier, requantize,
                                requantize_float32)

__all__ = ["run", "check_feeds", "RunResult", "ExactBackend", "AccumulatorBackend", "FLOAT_ONLY"]

#: Layer kinds that exist only in float (their integer versions are not defined).
FLOAT_ONLY = ("softmax", "layernorm", "gelu", "batchnorm")


class AccumulatorBackend:
    """Computes the exact int32 accumulators of quantized convolutions and matrix products.

    ``matmul(x, x_zp, w, w_zp)`` returns ``(x - x_zp) @ (w - w_zp)`` for an (M x K) and a
    (K x N) integer matrix (``w_zp`` scalar or per column) as int64.
    :meth:`conv` lowers a convolution to one such product per group (im2col with the input
    zero point as padding, which is real zero), so a backend only has to multiply matrices.
    """

    def matmul(self, x: np.ndarray, x_zp: int, w: np.ndarray, w_zp: np.ndarray,
               layer: Layer) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def conv(self, layer: L.Conv2d, x: np.ndarray, x_zp: int, w: np.ndarray,
             w_zp: np.ndarray) -> np.ndarray:
        geometry = conv_geometry(x.shape[2:], layer.kernel, strides=layer.strides,
                                 pads=_onnx_pads(layer.pads), dilations=layer.dilations)
        n = x.shape[0]
        groups, out_ch = layer.groups, layer.out_channels
        mg = out_ch // groups
        depth = (layer.in_channels // groups) * layer.kernel[0] * layer.kernel[1]
        # raw values, padded with the zero point (real zero): the backend folds the zero points
        cols = conv_columns(x, geometry, np.int16, pad_value=x_zp)  # (C * taps, N * oh * ow)
        oh, ow = geometry.output
        zw = np.broadcast_to(np.asarray(w_zp, dtype=np.int64).reshape(-1), (out_ch,))
        parts = []
        for g in range(groups):
            field = cols[g * depth:(g + 1) * depth].T  # (N * oh * ow, Cg * taps)
            kernel = w[g * mg:(g + 1) * mg].reshape(mg, -1).T  # (Cg * taps, Mg)
            acc = self.matmul(field, x_zp, kernel, zw[g * mg:(g + 1) * mg], layer)
            parts.append(acc.reshape(n, oh, ow, mg).transpose(0, 3, 1, 2))
        return np.concatenate(parts, axis=1) if groups > 1 else parts[0]


class ExactBackend(AccumulatorBackend):
    """Accumulators from qsim's exact numpy kernels (the integer reference)."""

    def matmul(self, x, x_zp, w, w_zp, layer):
        return matmul_integer(_narrow(x), _narrow(w), _zp_array(x_zp, x), _zp_array(w_zp, w))

    def conv(self, layer, x, x_zp, w, w_zp):
        return conv_integer(_narrow(x), _narrow(w), _zp_array(x_zp, x), _zp_array(w_zp, w),
                            strides=layer.strides, pads=_onnx_pads(layer.pads),
                            dilations=layer.dilations, group=layer.groups)


def _narrow(values: np.ndarray) -> np.ndarray:
    """int8/uint8 view of 8-bit (or narrower) integers, as the ONNX kernels take them."""
    v = np.asarray(values)
    if v.dtype in (np.int8, np.uint8):
        return v
    lo, hi = int(v.min(initial=0)), int(v.max(initial=0))
    if -128 <= lo and hi <= 127:
        return v.astype(np.int8)
    if 0 <= lo and hi <= 255:
        return v.astype(np.uint8)
    raise ConfigError(f"integer operands must fit int8 or uint8, not the range {lo}..{hi}")


def _zp_array(zp, like: np.ndarray) -> np.ndarray:
    z = np.asarray(zp, dtype=np.int64)
    dtype = _narrow(like).dtype
    return z.astype(dtype)


def _onnx_pads(pads: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The IR's (top, left, bottom, right) is ONNX's (begin_h, begin_w, end_h, end_w)."""
    return pads


@dataclass
class RunResult:
    """Outputs by name, every intermediate tensor when asked, and the time per layer."""

    outputs: dict[str, np.ndarray]
    values: dict[str, np.ndarray] = field(default_factory=dict)
    layer_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Context:
    semantics: Semantics
    backend: AccumulatorBackend
    isa: str = "exact"  # a concrete instruction path (qsim.quant.isa), never "auto"
    #: The TFLite operator of each layer (``graph.meta["tflite_ops"]``) where the graph came
    #: from a .tflite file: ``litert-optimized`` picks a kernel's arithmetic from it.
    ops: Mapping[str, str] | None = None


#: The context of each (semantics, isa) argument pair with the default backend (its parse
#: and the CPU's path are the same on every call).
_DEFAULT_CONTEXTS: dict[tuple, _Context] = {}


def run(graph: Graph, feeds: Mapping[str, np.ndarray], semantics: Semantics | str = "onnxruntime",
        *, isa: str = "auto", keep: bool = False,
        backend: AccumulatorBackend | None = None) -> RunResult:
    """Evaluate ``graph`` on ``feeds`` (one array per graph input, batch first).

    Parameters
    ----------
    graph : Graph
    feeds : mapping of str to array
        Every graph input, with the shape (batch included) and dtype it declares; floats are
        converted to float32.
    semantics : Semantics or str
        Requantization semantics of the quantized layers.
    isa : str
        The x86 instruction path of the engine the semantics is named after
        (:data:`qsim.quant.isa.ISA_NAMES`; ``auto``, the default, is the running CPU's). It
        matters to ``onnxruntime`` and ``pytorch-fbgemm``, whose uint8 x int8 kernels saturate
        int16 pair sums on ``avx2`` and ``avx512bw``; the other semantics ignore it, and so
        does any backend other than :class:`ExactBackend` (the accelerator never saturates).
    keep : bool
        Keep every intermediate tensor in :attr:`RunResult.values`.
    backend : AccumulatorBackend, optional
        Where quantized convolutions and products get their accumulators
        (default :class:`ExactBackend`).

    Raises
    ------
    ConfigError
        A missing or unexpected input, a wrong shape or dtype, or a layer that cannot run.
    """
    ctx = _DEFAULT_CONTEXTS.get((semantics, isa)) if backend is None and \
        isinstance(semantics, (str, Semantics)) and isinstance(isa, str) else None
    if ctx is None:
        ctx = _Context(Semantics.parse(semantics), backend or ExactBackend(), resolve_isa(isa))
        if backend is None and isinstance(semantics, (str, Semantics)) and isinstance(isa, str):
            _DEFAULT_CONTEXTS[(semantics, isa)] = ctx
    if ctx.semantics is Semantics.LITERT_OPTIMIZED:
        refused = first_not_exact_under_litert_optimized(graph)
        if refused is not None:
            raise refused._fail(LITERT_OPTIMIZED_REFUSAL)
        ops = graph.meta.get("tflite_ops") if isinstance(graph.meta, Mapping) else None
        if ops and ctx.ops is not ops:
            ctx = replace(ctx, ops=ops)
    if _PLANS and not keep and type(ctx.backend) is ExactBackend:
        result = _planned_run(graph, feeds, ctx)
        if result is not None:
            return result
    return _run_layers(graph, check_feeds(graph, feeds), ctx, keep)


def _run_layers(graph: Graph, values: dict[str, np.ndarray], ctx: _Context, keep: bool) -> RunResult:
    """The layer-by-layer route: every layer's runner on plain arrays, shapes checked."""
    batch = next((values[name].shape[0] for name, t in graph.inputs.items()
                  if t.shape and t.shape[0] is None), None)
    types = graph.infer(batch)
    times: dict[str, float] = {}
    for layer in graph.layers:
        t0 = time.perf_counter()
        fn = _RUNNERS.get(type(layer))
        if fn is None:
            raise layer._fail("has no implementation in the engine")
        if layer.kind in FLOAT_ONLY and getattr(layer, "output_params", None) is None and \
                any(values[i].dtype.kind in "iu" for i in layer.inputs):
            raise layer._fail("is float only and cannot take an integer input")
        outs = fn(layer, [values[i] for i in layer.inputs], ctx)
        for name, value in zip(layer.outputs, outs):
            expected = types[name]
            if tuple(value.shape) != tuple(expected.shape):
                raise layer._fail(f"produced shape {value.shape}, expected {expected}")
            values[name] = value
        times[layer.name] = time.perf_counter() - t0
    outputs = {name: values[name] for name in graph.outputs}
    return RunResult(outputs, values if keep else {}, times)


# Layers whose litert-optimized kernels qsim does not reproduce exactly (see docs/tflite.md);
# a quantized Add or Conv2d only in the cases not_exact_under_litert_optimized names.
_NOT_EXACT_OPTIMIZED = (L.Quantize, L.Rescale, L.Dequantize, L.GlobalAvgPool)

#: The error of a layer :func:`run` refuses under ``litert-optimized`` (after its name).
LITERT_OPTIMIZED_REFUSAL = (
    "is not modelled exactly under litert-optimized (LiteRT's builtin optimized quantize, "
    "requantize, dequantize, mean, mul, broadcasting add and non-int8 add and depthwise kernels "
    "round differently; measured against LiteRT 2.3); use litert or litert-reference")


def not_exact_under_litert_optimized(layer: Layer, types: Mapping | None = None,
                                     ops: Mapping[str, str] | None = None) -> bool:
    """Whether ``run`` refuses ``layer`` under ``litert-optimized``: a quantized quantize,
    requantize, dequantize, mean or mul layer, a quantized add that broadcasts (or is not
    int8), a depthwise convolution that is not int8.

    ``types`` are the graph's tensor types (:meth:`Graph.infer`): an int8 ADD is modelled when
    its inputs have the same shape once the shorter is extended with leading ones (LiteRT's
    ``ProcessBroadcastShapes`` then takes the element-wise kernel); without ``types`` every
    quantized add counts as broadcasting. ``ops`` is ``graph.meta["tflite_ops"]`` (which
    convolutions are ``DEPTHWISE_CONV_2D``); without it, a convolution with one input channel
    per group (more than one group) is. The builtin optimized MUL differs from the reference
    arithmetic on 10,255 of 491,520 measured values (LiteRT 2.3); its rule is not modelled.
    """
    if isinstance(layer, L.Mul):
        return layer.output_params is not None
    if isinstance(layer, L.Add):
        if layer.output_params is None:
            return False
        if layer.input_params is None or not all(_is_int8(p) for p in (*layer.input_params,
                                                                         layer.output_params)):
            return True
        return types is None or _extended_shape(types[layer.inputs[0]].shape,
                                                types[layer.inputs[1]].shape) is None
    if not getattr(layer, "quantized", True):
        return False
    if isinstance(layer, L.Conv2d):
        return _litert_op(layer, ops) == "DEPTHWISE_CONV_2D" and not (
            _is_int8(layer.input_params) and _is_int8(layer.output_params)
            and layer.weight is not None and layer.weight.dtype == np.int8)
    return isinstance(layer, _NOT_EXACT_OPTIMIZED)


def first_not_exact_under_litert_optimized(graph: Graph) -> Layer | None:
    """The first layer of ``graph`` that ``run`` refuses under ``litert-optimized`` (the one
    its error names), or ``None``: :func:`not_exact_under_litert_optimized` with the graph's
    types and TFLite operators."""
    types = graph.infer()
    ops = graph.meta.get("tflite_ops") if isinstance(graph.meta, Mapping) else None
    return next((layer for layer in graph.layers
                 if not_exact_under_litert_optimized(layer, types, ops)), None)


def _is_int8(params: QuantParams | None) -> bool:
    return params is not None and params.fmt.name == "int8"


def _extended_shape(a: tuple, b: tuple) -> tuple | None:
    """The common shape of ``a`` and ``b`` when they are equal once the shorter is extended
    with leading ones (no broadcasting; an unknown axis equals only an unknown one), else
    ``None``."""
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    return a if a == b else None


def check_feeds(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` checked against ``graph``'s inputs (names, shapes, dtypes; floats as float32),
    or :class:`ConfigError` with one message: what :func:`run` checks before any layer runs."""
    missing = [n for n in graph.inputs if n not in feeds]
    if missing:
        raise ConfigError(f"graph {graph.name!r}: missing input(s) {', '.join(missing)} "
                          f"(inputs: {', '.join(graph.inputs)})")
    extra = [n for n in feeds if n not in graph.inputs]
    if extra:
        raise ConfigError(f"graph {graph.name!r}: unknown input(s) {', '.join(extra)} "
                          f"(inputs: {', '.join(graph.inputs)})")
    values = {}
    for name, declared in graph.inputs.items():
        value = np.asarray(feeds[name])
        if value.ndim != len(declared.shape) or any(
                d is not None and d != v for d, v in zip(declared.shape, value.shape)):
            raise ConfigError(f"input {name!r} has shape {value.shape}, expected {declared}")
        want = np.dtype(declared.dtype)
        if want == np.float32:
            if value.dtype.kind != "f":
                raise ConfigError(f"input {name!r} has dtype {value.dtype}, expected {want}")
            value = value.astype(np.float32)
        elif value.dtype != want:
            raise ConfigError(f"input {name!r} has dtype {value.dtype}, expected {want}")
        if declared.fmt is not None:
            fmt = IntFormat.parse(declared.fmt)
            outside = (value < fmt.min) | (value > fmt.max)
            if np.any(outside):
                where = tuple(int(i) for i in np.argwhere(outside)[0])
                raise ConfigError(f"input {name!r} holds {int(value[where])} at {list(where)}, "
                                  f"outside {fmt.name} [{fmt.min}, {fmt.max}] ({fmt.name} inputs "
                                  f"are given unpacked, one value per element, as {want})")
        values[name] = value
    return values


# ------------------------------------------------------------------------- helpers

def _params(layer: Layer, value: QuantParams | None, what: str) -> QuantParams:
    if value is None:
        raise layer._fail(f"is quantized but has no {what}")
    if not value.per_tensor:
        raise layer._fail(f"needs per-tensor {what}, got {value}")
    return value


def _scalar(params: QuantParams) -> tuple[np.float32, int]:
    return np.float32(params.scale), int(params.zero_point)


def _int_out(values: np.ndarray, fmt: IntFormat) -> np.ndarray:
    return np.asarray(values).astype(fmt.numpy_dtype())


def _activation_bounds(layer: Layer, activation: object, out: QuantParams,
                       rounding: str = "half_even") -> tuple[int, int]:
    """Integer clamp of a fused activation on the output grid of ``out`` (the real bounds
    rounded by ``rounding``: ONNX's half to even, TFLite's ``TfLiteRound`` half away)."""
    fmt = out.fmt
    if activation is None:
        return fmt.min, fmt.max
    if activation == "relu":
        lo, hi = 0.0, None
    elif isinstance(activation, tuple) and len(activation) == 3 and activation[0] == "clip":
        lo, hi = float(activation[1]), float(activation[2])
    else:
        raise layer._fail(f"unknown activation {activation!r} (use None, 'relu' or ('clip', lo, hi))")
    qlo = int(quantize(np.float32(lo), out, rounding)) if lo is not None and np.isfinite(lo) else fmt.min
    qhi = int(quantize(np.float32(hi), out, rounding)) if hi is not None and np.isfinite(hi) else fmt.max
    return qlo, qhi


def _float_activation(layer: Layer, activation: object, y: np.ndarray) -> np.ndarray:
    if activation is None:
        return y
    if activation == "relu":
        return np.maximum(y, np.float32(0))
    if isinstance(activation, tuple) and len(activation) == 3 and activation[0] == "clip":
        return np.clip(y, np.float32(activation[1]), np.float32(activation[2]))
    raise layer._fail(f"unknown activation {activation!r} (use None, 'relu' or ('clip', lo, hi))")


# ------------------------------------------------------------------------- exact float fast paths

# The reference kernels (qsim.quant.kernels) validate every operand and accumulate in int64.
# With the exact backend the engine instead multiplies in float32 (float64) BLAS whenever the
# worst case |sum| of the product, known from the operand types and zero points alone, stays
# below 2**24 (2**53): then every partial sum is an exactly representable integer, whatever
# order BLAS adds in, and the result is the exact accumulator. Under the onnxruntime semantics
# the requantization then stays in float32 too (_fast_requantize), which is MLAS's arithmetic.

_EXACT_FLOATS = ((np.dtype(np.float32), 1 << 24), (np.dtype(np.float64), 1 << 53))
_EIGHT_BIT = (np.dtype(np.int8), np.dtype(np.uint8))


_RANGES = {dtype: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)) for dtype in _EIGHT_BIT}


def _span(dtype: np.dtype, zero_point) -> int:
    """Largest ``|v - zero_point|`` over every value ``v`` of the 8-bit ``dtype``."""
    lo, hi = _RANGES[dtype]
    if np.ndim(zero_point) == 0:
        zp = int(zero_point)
        return max(hi - zp, zp - lo)
    return max(hi - int(np.min(zero_point)), int(np.max(zero_point)) - lo)


def _exact_dtype(bound: int) -> np.dtype | None:
    return next((dtype for dtype, limit in _EXACT_FLOATS if bound < limit), None)


@dataclass
class _PreparedGemm:
    """What a quantized conv or linear layer needs on every run, computed once per layer.

    ``weight`` is the (N x K) weight matrix (conv kernels flattened per output channel),
    ``zw`` the per-channel weight zero points, ``clamp`` the output clamp of the fused
    activation, ``multiplier`` ONNX Runtime's float32 multiplier per channel (N, 1).
    """

    x_p: QuantParams
    w_p: QuantParams
    y_p: QuantParams
    weight: np.ndarray
    zw: np.ndarray
    clamp: tuple[int, int]
    multiplier: np.ndarray
    bias: np.ndarray | None
    bias_top: int
    float_bias: np.ndarray | None = None  # PyTorch's float bias (pytorch-fbgemm only)
    centered: dict = field(default_factory=dict)  # float dtype -> (N x K) weight - zw

    def centered_weight(self, dtype: np.dtype) -> np.ndarray:
        if dtype not in self.centered:
            self.centered[dtype] = _centered_as(self.weight, self.zw.reshape(-1, 1), dtype)
        return self.centered[dtype]


def _prepared_gemm(layer: L.Conv2d | L.Linear, ctx: _Context | None = None) -> _PreparedGemm:
    """The layer's :class:`_PreparedGemm` (cached on the layer per activation rounding: layers
    are fixed once they run); a float bias is refused unless ``ctx`` is ``pytorch-fbgemm``."""
    prep = _build_prepared(layer, ctx)
    if prep.float_bias is not None and (ctx is None or ctx.semantics is not Semantics.PYTORCH_FBGEMM):
        where = f"under {ctx.semantics.value}" if ctx is not None else "here"
        raise layer._fail(f"has a float bias, which only pytorch-fbgemm adds (in float32, while "
                          f"requantizing); {where} a quantized layer needs an int32 bias")
    return prep


def _build_prepared(layer: L.Conv2d | L.Linear, ctx: _Context | None) -> _PreparedGemm:
    rounding = "half_away" if ctx is not None and ctx.semantics in LITERT_SEMANTICS else "half_even"
    cached = layer.__dict__.get("_engine_prepared_" + rounding)
    if cached is not None:
        return cached
    x_p = _params(layer, layer.input_params, "input_params")
    y_p = _params(layer, layer.output_params, "output_params")
    w_p = layer.weight_params
    if w_p is None:
        raise layer._fail("is quantized but has no weight_params")
    outputs = layer.out_channels if isinstance(layer, L.Conv2d) else layer.out_features
    _, w_zp = w_p.broadcast(layer.weight.shape)
    zw = np.broadcast_to(np.asarray(w_zp, dtype=np.int64).reshape(-1) if np.ndim(w_zp) else
                         np.int64(w_zp), (outputs,)).copy()
    weight = layer.weight.reshape(outputs, -1) if isinstance(layer, L.Conv2d) else layer.weight.T
    bias = float_bias = None
    if layer.bias is not None:
        b = np.asarray(layer.bias)
        if b.dtype.kind == "f":
            float_bias = b.astype(np.float32)  # fbgemm's: added while requantizing
        elif b.dtype.kind not in "iu":
            raise layer._fail(f"a quantized layer needs an int32 bias, not dtype {b.dtype}")
        else:
            bias = b.astype(np.int64)
    prepared = _PreparedGemm(
        x_p, w_p, y_p, weight, zw, _activation_bounds(layer, layer.activation, y_p, rounding),
        np.asarray(float32_multiplier(x_p.scale, w_p.scale, y_p.scale), np.float32).reshape(-1, 1)
        * np.ones((outputs, 1), np.float32),
        bias, 0 if bias is None else max(-int(bias.min()), int(bias.max())), float_bias)
    layer.__dict__["_engine_prepared_" + rounding] = prepared
    return prepared


def _fast_accumulate(prep: _PreparedGemm, columns: Callable[[np.dtype], np.ndarray], k: int,
                     x_dtype: np.dtype, ctx: _Context) -> tuple[np.ndarray, int] | None:
    """Exact ``(w - zw) @ columns`` as floats (N x P), and its magnitude bound, or ``None``.

    ``columns(dtype)`` gives the centered input as a (K x P) matrix of ``dtype``. Taken only
    with the exact backend and 8-bit operands, when the worst case sum proves every partial
    sum exact in the float type.
    """
    w_dtype = prep.weight.dtype
    if type(ctx.backend) is not ExactBackend or x_dtype not in _EIGHT_BIT or w_dtype not in _EIGHT_BIT:
        return None
    bound = k * _span(x_dtype, int(prep.x_p.zero_point)) * _span(w_dtype, prep.zw)
    dtype = _exact_dtype(bound)
    if dtype is None:
        return None
    return prep.centered_weight(dtype) @ columns(dtype), bound


def _centered_as(values: np.ndarray, zero_point, dtype: np.dtype) -> np.ndarray:
    if np.ndim(zero_point) == 0 or np.any(zero_point):
        return np.subtract(values, np.asarray(zero_point, dtype=dtype), dtype=dtype)
    return values.astype(dtype)


def _fast_requantize(prep: _PreparedGemm, acc: np.ndarray, bound: int, ctx: _Context) -> np.ndarray | None:
    """MLAS's requantization of exact float accumulators (N x P), or ``None`` outside it.

    ``v = f32(f32(acc + bias) * M)`` with ``M`` ONNX Runtime's float32 multiplier, clamped to
    the output format and the fused activation, rounded half to even, plus the zero point:
    :func:`qsim.quant.requant.requantize_float32`. ``acc + bias`` is one IEEE addition of exact
    values, so it is the correctly rounded int32 sum that MLAS converts; the path is taken only
    when that sum provably fits int32 and the bias is exact in the accumulator's float type.
    """
    if ctx.semantics not in (Semantics.ONNXRUNTIME, Semantics.LITERT):
        return None
    limit = 1 << 24 if acc.dtype == np.float32 else 1 << 53
    if prep.bias is not None:
        if prep.bias_top >= limit or bound + prep.bias_top >= 1 << 31:
            return None
        acc += prep.bias.astype(acc.dtype).reshape(-1, 1)  # acc is the fresh product: in place
    values = acc if acc.dtype == np.float32 else acc.astype(np.float32)
    y = requantize_float32(values, prep.multiplier, int(prep.y_p.zero_point), prep.y_p.fmt,
                           clamp=prep.clamp, overwrite=True)
    return y.astype(prep.y_p.fmt.numpy_dtype())


def _exact_gemm(layer, prep: _PreparedGemm, acc: np.ndarray, ctx: _Context, channel_axis: int) -> np.ndarray:
    """The general route: exact int64 accumulators from the backend, plus bias, requantized."""
    if prep.bias is not None:
        shape = [1] * acc.ndim
        shape[channel_axis] = -1
        acc = acc + prep.bias.reshape(shape)
    if ctx.semantics in LITERT_SEMANTICS:
        # the operator's own rule (litert-optimized: ruy for CONV_2D and FULLY_CONNECTED, the
        # optimized depthwise output stage for DEPTHWISE_CONV_2D, whatever its group count)
        y = litert_requantize(acc, np.float32(prep.x_p.scale), prep.w_p.scale, np.float32(prep.y_p.scale),
                              int(prep.y_p.zero_point), prep.y_p.fmt, ctx.semantics,
                              op=_litert_op(layer, ctx.ops), channel_axis=channel_axis)
    else:
        y = requantize(acc, np.float32(prep.x_p.scale), prep.w_p.scale, np.float32(prep.y_p.scale),
                       int(prep.y_p.zero_point), prep.y_p.fmt, ctx.semantics, channel_axis=channel_axis,
                       float_bias=prep.float_bias)
    return _int_out(np.clip(y, *prep.clamp), prep.y_p.fmt)


def _litert_op(layer, ops: Mapping[str, str] | None = None) -> str:
    """The TFLite kernel a conv or linear layer is: the operator it was imported from when
    ``ops`` (``graph.meta["tflite_ops"]``) names it (a ``DEPTHWISE_CONV_2D`` with one input
    channel is a convolution with one group, and still LiteRT's depthwise kernel); otherwise
    a Linear is ``FULLY_CONNECTED``, a convolution with one input channel per group (more than
    one group) ``DEPTHWISE_CONV_2D``."""
    op = ops.get(layer.name) if ops else None
    if op in LITERT_GEMM_OPS:
        return op
    if isinstance(layer, L.Linear):
        return "FULLY_CONNECTED"
    if layer.groups > 1 and layer.groups == layer.in_channels:
        return "DEPTHWISE_CONV_2D"
    return "CONV_2D"


def _saturating(ctx: _Context, x: np.ndarray, prep: _PreparedGemm) -> bool:
    """Whether this layer's engine kernel adds u8 x s8 pairs in saturating int16.

    Under ``onnxruntime`` or ``pytorch-fbgemm`` on a ``vpmaddubsw`` path
    (:func:`qsim.quant.isa.u8s8_saturates`), for uint8 activations times int8 weights, and only
    with the exact backend: the accelerator's accumulators come from its own datapath, which
    never saturates.
    """
    return (ctx.semantics in ISA_DEPENDENT and isinstance(ctx.backend, ExactBackend)
            and u8s8_saturates(ctx.isa, ctx.semantics.value) and x.dtype == np.uint8
            and prep.weight.dtype == np.int8)


def _with_correction(acc: np.ndarray, correction: np.ndarray) -> np.ndarray:
    """Exact int64 accumulators plus an engine's saturation correction, wrapped like int32."""
    return wrap(acc.astype(np.int64) + correction, INT32)


# ------------------------------------------------------------------------- GEMM layers

def _conv(layer: L.Conv2d, inputs, ctx):
    (x,) = inputs
    if layer.weight is None:
        raise layer._fail("has no weights (a shape-only graph cannot run)")
    if not layer.quantized:
        geometry = conv_geometry(x.shape[2:], layer.kernel, strides=layer.strides,
                                 pads=_onnx_pads(layer.pads), dilations=layer.dilations)
        y = _float_conv(x, layer.weight.astype(np.float32), layer.groups, geometry)
        if layer.bias is not None:
            y = y + layer.bias.astype(np.float32).reshape(1, -1, 1, 1)
        return [_float_activation(layer, layer.activation, y.astype(np.float32))]
    prep = _prepared_gemm(layer, ctx)
    x_zp = int(prep.x_p.zero_point)
    geometry = conv_geometry(x.shape[2:], layer.kernel, strides=layer.strides,
                             pads=_onnx_pads(layer.pads), dilations=layer.dilations)
    correction = (u8s8_conv_correction(x, layer.weight, x_zp, geometry, layer.groups,
                                       ctx.semantics.value)
                  if _saturating(ctx, x, prep) else None)
    if correction is not None:  # the engine's own integers, then its requantization
        acc = _with_correction(ctx.backend.conv(layer, x, x_zp, layer.weight, prep.zw), correction)
        return [_exact_gemm(layer, prep, acc, ctx, 1)]
    if layer.groups == 1:
        fast = _fast_accumulate(prep, lambda dtype: conv_columns(x, geometry, dtype, subtract=x_zp),
                                prep.weight.shape[1], x.dtype, ctx)
        if fast is not None:
            acc, bound = fast  # (M, N * oh * ow) exact floats, channels first
            cnhw = (layer.out_channels, x.shape[0]) + geometry.output
            y = _fast_requantize(prep, acc, bound, ctx)
            if y is not None:
                return [y.reshape(cnhw).transpose(1, 0, 2, 3)]
            return [_exact_gemm(layer, prep, acc.reshape(cnhw).astype(np.int64), ctx, 0)
                    .transpose(1, 0, 2, 3)]
    acc = ctx.backend.conv(layer, x, x_zp, layer.weight, prep.zw)
    return [_exact_gemm(layer, prep, acc, ctx, 1)]


def _float_conv(x: np.ndarray, w: np.ndarray, groups: int, geometry) -> np.ndarray:
    n = x.shape[0]
    m = w.shape[0]
    mg = m // groups
    depth = w[0].size  # Cg * kh * kw
    cols = conv_columns(x, geometry, np.float32)  # (C * taps, N * oh * ow)
    parts = [(w[g * mg:(g + 1) * mg].reshape(mg, depth) @ cols[g * depth:(g + 1) * depth])
             .reshape((mg, n) + geometry.output) for g in range(groups)]
    return np.moveaxis(np.concatenate(parts, axis=0), 0, 1)


def _linear(layer: L.Linear, inputs, ctx):
    (x,) = inputs
    if layer.weight is None:
        raise layer._fail("has no weights (a shape-only graph cannot run)")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if not layer.quantized:
        y = x2 @ layer.weight.astype(np.float32)
        if layer.bias is not None:
            y = y + layer.bias.astype(np.float32)
        return [_float_activation(layer, layer.activation, y.astype(np.float32)).reshape(*lead, -1)]
    prep = _prepared_gemm(layer, ctx)
    x_zp = int(prep.x_p.zero_point)
    correction = u8s8_matmul_correction(x2, prep.weight.T) if _saturating(ctx, x2, prep) else None
    if correction is not None:  # the engine's own integers, then its requantization
        acc = _with_correction(ctx.backend.matmul(x2, x_zp, layer.weight, prep.zw, layer), correction)
        return [_exact_gemm(layer, prep, acc, ctx, 1).reshape(*lead, -1)]
    fast = _fast_accumulate(prep, lambda dtype: _centered_as(x2, x_zp, dtype).T, layer.in_features,
                            x2.dtype, ctx)
    if fast is not None:
        acc, bound = fast  # (N, P) exact floats
        y = _fast_requantize(prep, acc, bound, ctx)
        if y is not None:
            return [y.T.reshape(*lead, -1)]
        return [_exact_gemm(layer, prep, acc.T.astype(np.int64), ctx, 1).reshape(*lead, -1)]
    acc = ctx.backend.matmul(x2, x_zp, layer.weight, prep.zw, layer)
    return [_exact_gemm(layer, prep, acc, ctx, 1).reshape(*lead, -1)]


def _matmul(layer: L.MatMul, inputs, ctx):
    a, b = inputs
    if a.dtype.kind == "f":
        return [np.matmul(a, b).astype(np.float32)]
    raise layer._fail("quantized products of two activations are not supported yet")


# ------------------------------------------------------------------------- element-wise and pools

def _float_qdq(params: QuantParams, fn: Callable[..., np.ndarray], *ints_and_params) -> np.ndarray:
    """The float QDQ reference: dequantize the inputs, run ``fn`` in float32, quantize."""
    floats = [dequantize(v, p) for v, p in ints_and_params]
    return _int_out(quantize(fn(*floats).astype(np.float32), params), params.fmt)


def _integer_rescale(centered: np.ndarray, in_scale: float, dst_scale: float, count: int,
                     semantics: Semantics) -> np.ndarray:
    """``centered * in_scale / (dst_scale * count)`` rounded to integers (no zero point).

    The integer-only rescaling of the ``tflite``, ``tflite-single-rounding`` and
    ``fixed-point`` semantics: zero-point-free integers (or their sum over ``count`` taps)
    are requantized with the semantics' own integer multiplier and shift (``requantize`` with
    ``in_scale``, ``weight_scale = 1 / count``, ``out_scale = dst_scale``) into int32.
    """
    return requantize(centered, np.float32(in_scale), np.float32(1.0 / count), np.float32(dst_scale),
                      0, IntFormat(32, True), semantics)


def _centered(values: np.ndarray, params: QuantParams) -> np.ndarray:
    return values.astype(np.int64) - int(params.zero_point)


_INTEGER_SEMANTICS = (Semantics.TFLITE_SINGLE_ROUNDING, Semantics.FIXED_POINT)


def _add(layer: L.Add, inputs, ctx):
    a, b = inputs
    if layer.output_params is None:
        if a.dtype.kind != "f" or b.dtype.kind != "f":
            raise layer._fail("integer inputs need output_params (and input_params)")
        return [_float_activation(layer, layer.activation, (a + b).astype(np.float32))]
    if layer.input_params is None:
        raise layer._fail("is quantized but has no input_params")
    pa, pb = layer.input_params
    py = layer.output_params
    if ctx.semantics in LITERT_SEMANTICS:
        lo, hi = _activation_bounds(layer, layer.activation, py, "half_away")
        if ctx.semantics is Semantics.LITERT_OPTIMIZED and _extended_shape(a.shape, b.shape) is None:
            raise layer._fail(LITERT_OPTIMIZED_REFUSAL)  # run refuses it first; a guard
        y = _litert_add(_centered(a, pa), _centered(b, pb), pa, pb, py, ctx.semantics)
        return [_int_out(np.clip(y, lo, hi), py.fmt)]
    if ctx.semantics is Semantics.ONNXRUNTIME:
        from qsim.quant.ortops import qlinear_add

        y = qlinear_add(_narrow_like(a, pa), *_scalar(pa), _narrow_like(b, pb), *_scalar(pb),
                        *_as_onnx_zp(py), isa=ctx.isa)
    elif ctx.semantics in _INTEGER_SEMANTICS:
        # Each input is brought to a common grid 2**-20 finer than the output (TFLite's
        # left shift of 20 bits), summed exactly, and requantized once.
        fine = np.float32(py.scale) / np.float32(1 << 20)
        total = (_integer_rescale(_centered(a, pa), pa.scale, fine, 1, ctx.semantics)
                 + _integer_rescale(_centered(b, pb), pb.scale, fine, 1, ctx.semantics))
        y = requantize(total, fine, np.float32(1.0), np.float32(py.scale), int(py.zero_point), py.fmt,
                       ctx.semantics) if np.abs(total).max(initial=0) < 1 << 31 else None
        if y is None:
            raise layer._fail("the integer sum leaves int32; the inputs' ranges are too wide for "
                              "the output scale")
    else:
        y = _float_qdq(py, np.add, (a, pa), (b, pb))
    lo, hi = _activation_bounds(layer, layer.activation, py)
    return [_int_out(np.clip(y, lo, hi), py.fmt)]


def _narrow_like(values: np.ndarray, params: QuantParams) -> np.ndarray:
    return np.asarray(values).astype(params.fmt.numpy_dtype())


def _as_onnx_zp(params: QuantParams) -> tuple[np.float32, np.ndarray]:
    return np.float32(params.scale), np.asarray(params.zero_point).astype(params.fmt.numpy_dtype())


def _relu_clip(layer, inputs, ctx):
    (x,) = inputs
    lo, hi = (0.0, np.inf) if isinstance(layer, L.Relu) else (layer.lo, layer.hi)
    if x.dtype.kind == "f":
        return [np.clip(x, np.float32(lo), np.float32(hi)).astype(np.float32)]
    params = _params(layer, layer.output_params, "output_params (the tensor's quantization)")
    rounding = "half_away" if ctx.semantics in LITERT_SEMANTICS else "half_even"
    qlo, qhi = _activation_bounds(layer, ("clip", lo, hi), params, rounding)
    return [np.clip(x, qlo, qhi).astype(x.dtype)]


def _windows(layer: L._Pool, x: np.ndarray, pad_value) -> tuple[np.ndarray, np.ndarray]:
    """Every pooling window ``(N, C, oh, ow, kh, kw)`` and a mask of its real (unpadded) taps."""
    t, l, b, r = layer.pads
    n, c, h, w = x.shape
    oh, ow = layer.out_hw(h, w, layer.ceil_mode)
    ext_h = (layer.kernel[0] - 1) * layer.dilations[0] + 1
    ext_w = (layer.kernel[1] - 1) * layer.dilations[1] + 1
    # ceil_mode may need extra padding at the end
    need_h = (oh - 1) * layer.strides[0] + ext_h - (h + t)
    need_w = (ow - 1) * layer.strides[1] + ext_w - (w + l)
    pad = ((0, 0), (0, 0), (t, max(b, need_h)), (l, max(r, need_w)))
    padded = np.pad(x, pad, constant_values=pad_value)
    mask = np.pad(np.ones((h, w), dtype=bool), pad[2:], constant_values=False)
    view = np.lib.stride_tricks.sliding_window_view(padded, (ext_h, ext_w), axis=(2, 3))
    mview = np.lib.stride_tricks.sliding_window_view(mask, (ext_h, ext_w))
    pick = (slice(0, (oh - 1) * layer.strides[0] + 1, layer.strides[0]),
            slice(0, (ow - 1) * layer.strides[1] + 1, layer.strides[1]),
            slice(None, None, layer.dilations[0]), slice(None, None, layer.dilations[1]))
    return view[(slice(None), slice(None)) + pick], mview[pick]


def _maxpool(layer: L.MaxPool, inputs, ctx):
    """Running maximum over the kernel taps, each tap one strided slice of the padded input
    (a reduction over a window view of every tap at once is an order of magnitude slower)."""
    (x,) = inputs
    low = np.finfo(np.float32).min if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    windows, _ = _windows(layer, x, low)  # a view; only its strides and shape are used
    best = None
    for i in range(layer.kernel[0]):
        for j in range(layer.kernel[1]):
            tap = windows[..., i, j]
            best = tap.copy() if best is None else np.maximum(best, tap, out=best)
    return [best.astype(x.dtype, copy=False)]


def _avgpool(layer: L.AvgPool, inputs, ctx):
    (x,) = inputs
    if layer.output_params is None:
        if x.dtype.kind != "f":
            raise layer._fail("integer input needs input_params and output_params")
        return [_float_avgpool(layer, x)]
    px = _params(layer, layer.input_params, "input_params")
    py = layer.output_params
    same = (float(px.scale) == float(py.scale) and int(px.zero_point) == int(py.zero_point))
    if ctx.semantics in LITERT_SEMANTICS and same:
        # TFLite averages the stored integers (input and output share their parameters)
        windows, mask = _windows(layer, x, 0)
        sums = (windows.astype(np.int64) * mask).sum(axis=(-2, -1))
        counts = mask.sum(axis=(-2, -1))
        return [_int_out(saturate(_round_away_div(sums, counts), py.fmt), py.fmt)]
    if ctx.semantics is Semantics.ONNXRUNTIME:
        from qsim.quant.ortops import qlinear_average_pool

        y = qlinear_average_pool(_narrow_like(x, px), *_scalar(px), *_as_onnx_zp(py),
                                 kernel_shape=layer.kernel, strides=layer.strides,
                                 pads=layer.pads, ceil_mode=int(layer.ceil_mode),
                                 count_include_pad=int(layer.count_include_pad))
        return [_int_out(y, py.fmt)]
    if ctx.semantics in _INTEGER_SEMANTICS or ctx.semantics in LITERT_SEMANTICS:
        windows, mask = _windows(layer, x, int(px.zero_point))
        sums = (windows.astype(np.int64) - int(px.zero_point)).sum(axis=(-2, -1))
        counts = np.full(mask.shape[:2], mask.shape[2] * mask.shape[3]) if layer.count_include_pad \
            else mask.sum(axis=(-2, -1))
        y = np.empty(sums.shape, dtype=np.int64)
        for count in np.unique(counts):  # a handful of distinct window sizes
            where = counts == count
            y[:, :, where] = _integer_rescale(sums[:, :, where], px.scale, float(py.scale),
                                              int(count), ctx.semantics)
        return [_int_out(saturate(y + int(py.zero_point), py.fmt), py.fmt)]
    return [_float_qdq(py, lambda v: _float_avgpool(layer, v), (x, px))]


def _float_avgpool(layer: L.AvgPool, x: np.ndarray) -> np.ndarray:
    windows, mask = _windows(layer, x.astype(np.float32), 0.0)
    sums = windows.sum(axis=(-2, -1), dtype=np.float32)
    counts = (np.full(mask.shape[:2], mask.shape[2] * mask.shape[3]) if layer.count_include_pad
              else mask.sum(axis=(-2, -1)))
    return (sums / counts.astype(np.float32)).astype(np.float32)


def _globalavgpool(layer: L.GlobalAvgPool, inputs, ctx):
    (x,) = inputs
    if layer.output_params is None:
        if x.dtype.kind != "f":
            raise layer._fail("integer input needs input_params and output_params")
        return [x.mean(axis=(2, 3), keepdims=True, dtype=np.float32)]
    px = _params(layer, layer.input_params, "input_params")
    py = layer.output_params
    if ctx.semantics in LITERT_SEMANTICS:
        count = x.shape[2] * x.shape[3]
        sums = _centered(x, px).sum(axis=(2, 3), keepdims=True)
        ratio = np.float32(np.float32(px.scale) / np.float32(py.scale))
        if ctx.semantics is Semantics.LITERT:
            # XNNPACK: one float32 scale, ratio / count, round half to even
            y = requantize_float32(sums, np.float32(ratio / np.float32(count)), int(py.zero_point), py.fmt)
        else:
            # TFLite's QuantizedMeanOrSum: the multiplier of s_in / s_out divided by the count
            qm, shift = quantize_multiplier(np.float64(np.float32(px.scale)) / np.float64(np.float32(py.scale)))
            qm, shift = int(qm), int(shift)
            extra = min(int(count).bit_length() - 1, 32, 31 + shift)
            y = multiply_by_quantized_multiplier(sums, (qm << extra) // count, shift - extra) + int(py.zero_point)
        return [_int_out(saturate(y, py.fmt), py.fmt)]
    if ctx.semantics is Semantics.ONNXRUNTIME:
        from qsim.quant.ortops import qlinear_global_average_pool

        y = qlinear_global_average_pool(_narrow_like(x, px), *_scalar(px), *_as_onnx_zp(py))
        return [_int_out(y, py.fmt)]
    if ctx.semantics in _INTEGER_SEMANTICS:
        count = x.shape[2] * x.shape[3]
        sums = _centered(x, px).sum(axis=(2, 3), keepdims=True)
        y = _integer_rescale(sums, px.scale, float(py.scale), count, ctx.semantics)
        return [_int_out(saturate(y + int(py.zero_point), py.fmt), py.fmt)]
    return [_float_qdq(py, lambda v: v.mean(axis=(2, 3), keepdims=True, dtype=np.float32), (x, px))]


def _concat(layer: L.Concat, inputs, ctx):
    if layer.output_params is None:
        return [np.concatenate(inputs, axis=layer.axis)]
    if layer.input_params is None or len(layer.input_params) != len(inputs):
        raise layer._fail("is quantized but has no input_params for every input")
    py = layer.output_params
    if ctx.semantics is Semantics.ONNXRUNTIME:
        from qsim.quant.ortops import qlinear_concat

        parts = [(_narrow_like(v, p), *_scalar(p)) for v, p in zip(inputs, layer.input_params)]
        y = qlinear_concat(parts, *_as_onnx_zp(py), axis=layer.axis)
        return [_int_out(y, py.fmt)]
    if ctx.semantics in _INTEGER_SEMANTICS:
        parts = [saturate(_integer_rescale(_centered(v, p), p.scale, float(py.scale), 1, ctx.semantics)
                          + int(py.zero_point), py.fmt) for v, p in zip(inputs, layer.input_params)]
        return [_int_out(np.concatenate(parts, axis=layer.axis), py.fmt)]
    return [_float_qdq(py, lambda *v: np.concatenate(v, axis=layer.axis),
                       *zip(inputs, layer.input_params))]


# ------------------------------------------------------------------------- layout, float-only, conversions

def _flatten(layer: L.Flatten, inputs, ctx):
    (x,) = inputs
    axis = layer.axis + x.ndim if layer.axis < 0 else layer.axis
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)]


def _reshape(layer: L.Reshape, inputs, ctx):
    (x,) = inputs
    target = [x.shape[i] if d == 0 else d for i, d in enumerate(layer.shape)]
    return [x.reshape(target)]


def _transpose(layer: L.Transpose, inputs, ctx):
    return [np.transpose(inputs[0], layer.perm)]


def _softmax(layer: L.Softmax, inputs, ctx):
    (x,) = inputs
    if layer.output_params is not None:
        return [_quantized_softmax(layer, x, ctx)]
    if layer.beta != 1.0:
        x = x * np.float32(layer.beta)
    shifted = x - x.max(axis=layer.axis, keepdims=True)
    e = np.exp(shifted, dtype=np.float32)
    return [(e / e.sum(axis=layer.axis, keepdims=True)).astype(np.float32)]


def _layernorm(layer: L.LayerNorm, inputs, ctx):
    (x,) = inputs
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return [((x - mean) / np.sqrt(var + np.float32(layer.eps))).astype(np.float32)]


_ERF = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(layer: L.Gelu, inputs, ctx):
    """Exact GELU, ``x * (1 + erf(x / sqrt(2))) / 2`` (erf per element: float-only, small use)."""
    (x,) = inputs
    return [(0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)))).astype(np.float32)]


def _batchnorm(layer: L.BatchNorm, inputs, ctx):
    (x,) = inputs
    for name in ("gamma", "beta", "mean", "var"):
        if getattr(layer, name) is None:
            raise layer._fail(f"has no {name}")
    view = (1, -1) + (1,) * (x.ndim - 2)
    scale = layer.gamma.astype(np.float32) / np.sqrt(layer.var.astype(np.float32) + np.float32(layer.eps))
    y = (x - layer.mean.astype(np.float32).reshape(view)) * scale.reshape(view) + layer.beta.astype(np.float32).reshape(view)
    return [y.astype(np.float32)]


def _quantize(layer: L.Quantize, inputs, ctx):
    (x,) = inputs
    params = layer.params
    # ONNX Runtime's kernel gives a NaN the format's minimum; the ONNX reference leaves it undefined.
    nan = params.fmt.min if ctx.semantics is Semantics.ONNXRUNTIME else None
    if ctx.semantics is Semantics.LITERT:
        # XNNPACK: x * f32(1 / scale), round half to even
        inv = np.float32(1) / np.float32(params.scale)
        y = np.rint(np.asarray(x, np.float32) * inv).astype(np.int64) + int(params.zero_point)
        return [_int_out(saturate(y, params.fmt), params.fmt)]
    if ctx.semantics in LITERT_SEMANTICS:
        return [_int_out(quantize(x, params, "half_away"), params.fmt)]
    return [_int_out(quantize(x, params, nan=nan), params.fmt)]


def _dequantize(layer: L.Dequantize, inputs, ctx):
    return [dequantize(inputs[0], layer.params).astype(layer._dtype(), copy=False)]


# ------------------------------------------------------------------------- ONNX operators with tensor operands

def _runtime_params(layer: Layer, scale: np.ndarray, zero_point: np.ndarray | None,
                    fmt: IntFormat, axis: int, block_size: int, ndim: int) -> QuantParams:
    """QuantParams from scale and zero point tensors, by ONNX's rule: a one-element scale
    without ``block_size`` is per tensor, otherwise per ``axis`` (blocked with ``block_size``)."""
    scale = np.asarray(scale)
    if scale.dtype.kind != "f":
        raise layer._fail(f"scale must be a float tensor, not {scale.dtype}")
    zp = np.zeros(scale.shape, np.int64) if zero_point is None else np.asarray(zero_point)
    if zp.shape != scale.shape and zp.size != scale.size:
        raise layer._fail(f"zero point shape {zp.shape} does not match scale shape {scale.shape}")
    try:
        if scale.size == 1 and not block_size:
            return QuantParams(scale.reshape(()), zp.astype(np.int64).reshape(()), fmt)
        axis = axis + ndim if axis < 0 else axis
        if not 0 <= axis < ndim:
            raise ConfigError(f"axis {axis} is out of range for a rank-{ndim} input")
        return QuantParams(scale, zp.astype(np.int64).reshape(scale.shape), fmt, axis=axis,
                           block_size=int(block_size) or None)
    except ConfigError as exc:
        raise layer._fail(str(exc)) from None


def _guarded(layer: Layer, fn: Callable[[], list]) -> list:
    """Run ``fn``; a ConfigError from a qsim.quant function gets the layer's name."""
    try:
        return fn()
    except ConfigError as exc:
        text = str(exc)
        raise (exc if text.startswith("layer ") else layer._fail(text)) from None


def _quantize_linear(layer: L.QuantizeLinear, inputs, ctx):
    x, scale, *zp = inputs
    fmt = layer.fmt
    params = _runtime_params(layer, scale, zp[0] if zp else None, fmt, layer.axis,
                             layer.block_size, x.ndim)
    nan = fmt.min if ctx.semantics is Semantics.ONNXRUNTIME else None
    return _guarded(layer, lambda: [_int_out(quantize(x, params, nan=nan), fmt)])


def _dequantize_linear(layer: L.DequantizeLinear, inputs, ctx):
    x, scale, *zp = inputs
    params = _runtime_params(layer, scale, zp[0] if zp else None, layer.fmt, layer.axis,
                             layer.block_size, x.ndim)
    return _guarded(layer, lambda: [dequantize(x, params).astype(layer.dtype, copy=False)])


def _dynamic_quantize_linear(layer: L.DynamicQuantizeLinear, inputs, ctx):
    from qsim.quant.ops import dynamic_quantize

    (x,) = inputs
    q, params = _guarded(layer, lambda: list(dynamic_quantize(x)))
    scale = np.float32(params.scale)
    if ctx.semantics is Semantics.ONNXRUNTIME and not np.any(x):
        # ONNX Runtime's kernel gives an all-zero input scale 1 (the reference 1/255); q and
        # the zero point (0) are the same either way.
        scale = np.float32(1.0)
    return [q.astype(np.uint8), np.asarray(scale, np.float32),
            np.asarray(int(params.zero_point), np.uint8)]


def _engine(ctx: _Context) -> tuple[str, str]:
    """(isa, engine) of the integer products: the engine's path under ``onnxruntime`` and
    ``pytorch-fbgemm`` with the exact backend, exact otherwise."""
    if ctx.semantics in ISA_DEPENDENT and isinstance(ctx.backend, ExactBackend):
        return ctx.isa, ctx.semantics.value
    return "exact", "onnxruntime"


def _matmul_integer(layer: L.MatMulInteger, inputs, ctx):
    a, b, a_zp, b_zp = inputs
    isa, engine = _engine(ctx)
    return _guarded(layer, lambda: [matmul_integer(a, b, a_zp, b_zp, isa=isa, engine=engine)
                                    .astype(np.int32)])


def _conv_kwargs(layer) -> dict:
    return dict(strides=layer.strides, pads=layer.pads, dilations=layer.dilations,
                group=layer.group, auto_pad=layer.auto_pad, kernel_shape=layer.kernel_shape)


def _conv_integer(layer: L.ConvInteger, inputs, ctx):
    x, w, x_zp, w_zp = inputs
    return _guarded(layer, lambda: [conv_integer(x, w, x_zp, w_zp, **_conv_kwargs(layer))
                                    .astype(np.int32)])


def _qlinear_matmul(layer: L.QLinearMatMul, inputs, ctx):
    from qsim.quant.kernels import qlinear_matmul

    isa, _ = _engine(ctx)
    return _guarded(layer, lambda: [_int_out(qlinear_matmul(*inputs, semantics=ctx.semantics,
                                                            out_fmt=layer.fmt, isa=isa), layer.fmt)])


def _qlinear_conv(layer: L.QLinearConv, inputs, ctx):
    from qsim.quant.kernels import qlinear_conv

    isa, _ = _engine(ctx)
    bias = inputs[8] if len(inputs) > 8 else None
    return _guarded(layer, lambda: [_int_out(qlinear_conv(*inputs[:8], bias=bias,
                                                          semantics=ctx.semantics,
                                                          out_fmt=layer.fmt, isa=isa,
                                                          **_conv_kwargs(layer)), layer.fmt)])


def _onnx_op(layer: L.OnnxOp, inputs, ctx):
    return layer.evaluate(inputs)


def _ort_contrib(layer: L.OrtContribOp, inputs, ctx):
    """ONNX Runtime's kernel whatever the semantics: the op exists only in ONNX Runtime."""
    from qsim.quant import ortops

    args = layer.arguments(inputs)
    if layer.op == "QLinearMul":
        return _guarded(layer, lambda: [ortops.qlinear_mul(*args[:8])])
    if layer.op == "QLinearSigmoid":
        return _guarded(layer, lambda: [ortops.qlinear_sigmoid(*args[:5], isa=ctx.isa)])
    if layer.op == "QLinearLeakyRelu":
        return _guarded(layer, lambda: [ortops.qlinear_leaky_relu(*args[:5], alpha=layer.alpha)])
    raise layer._fail(f"has no implementation of {layer.op}")


def _constant(layer: L.Constant, inputs, ctx):
    if layer.value is None:
        raise layer._fail("has no value")
    return [np.asarray(layer.value)]


# ------------------------------------------------------------------------- LiteRT (TFLite) kernels
#
# The element-wise and pooling kernels of the LiteRT interpreter on int8 tensors; see
# docs/tflite.md for which kernel each semantics names and how each was measured.

def _mbqm(x: np.ndarray, real: np.ndarray | float) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier(x, QuantizeMultiplier(real))`` (double rounding)."""
    qm, shift = quantize_multiplier(np.float64(real))
    return multiply_by_quantized_multiplier(x, qm, shift)


def _round_away_div(x: np.ndarray, count) -> np.ndarray:
    """C's ``x > 0 ? (x + n/2) / n : (x - n/2) / n`` with truncating division."""
    half = np.asarray(count) // 2
    num = np.where(x > 0, x + half, x - half)
    return np.sign(num) * (np.abs(num) // count)


def _litert_add(a: np.ndarray, b: np.ndarray, pa: QuantParams, pb: QuantParams, py: QuantParams,
                semantics: Semantics) -> np.ndarray:
    """int8 ``ADD`` of zero-point-free inputs ``a``, ``b``: int64 outputs with the zero point,
    before the activation clamp.

    ``litert-reference``: TFLite's kernel (``left_shift = 20``, each input scaled by
    ``s_i / (2 max(s_a, s_b))``, the sum by ``2 max / (2**20 s_out)``, each with
    ``MultiplyByQuantizedMultiplier``). ``litert-optimized`` (inputs of one shape, up to
    leading ones): the builtin optimized kernel,
    :func:`qsim.quant.requant.litert_optimized_add`, on the flat tensor in TFLite's element
    order (a 4-D IR tensor is NCHW: NHWC is its TFLite order). ``litert``: XNNPACK's ``qs8``
    add (multipliers ``round(s_i / s_out * 2**shift)`` with 20 significant bits, one rounding
    half up).
    """
    if semantics is Semantics.LITERT_OPTIMIZED:
        shape = _extended_shape(a.shape, b.shape)
        a, b = a.reshape(shape), b.reshape(shape)
        if len(shape) == 4:  # the IR's NCHW, added in TFLite's NHWC order
            y = litert_optimized_add(a.transpose(0, 2, 3, 1), b.transpose(0, 2, 3, 1), pa.scale,
                                     pb.scale, py.scale, int(py.zero_point))
            return y.transpose(0, 3, 1, 2)
        return litert_optimized_add(a, b, pa.scale, pb.scale, py.scale, int(py.zero_point))
    sa, sb, so = (np.float32(p.scale) for p in (pa, pb, py))
    if semantics is Semantics.LITERT:
        ra, rb = np.float32(sa / so), np.float32(sb / so)
        exponent = int(np.frexp(max(ra, rb))[1]) - 1
        shift = 20 - exponent
        ma = int(np.rint(np.ldexp(np.float64(ra), shift)))
        mb = int(np.rint(np.ldexp(np.float64(rb), shift)))
        acc = a.astype(np.int64) * ma + b.astype(np.int64) * mb
        return ((acc + (1 << (shift - 1))) >> shift) + int(py.zero_point)
    twice = 2.0 * max(float(sa), float(sb))
    xa = _mbqm(np.left_shift(a.astype(np.int64), 20), float(sa) / twice)
    xb = _mbqm(np.left_shift(b.astype(np.int64), 20), float(sb) / twice)
    total = np.broadcast_arrays(xa, xb)
    return _mbqm(total[0] + total[1], twice / (float(1 << 20) * float(so))) + int(py.zero_point)


def _mul(layer: L.Mul, inputs, ctx):
    a, b = inputs
    if layer.output_params is None:
        if a.dtype.kind != "f" or b.dtype.kind != "f":
            raise layer._fail("integer inputs need output_params (and input_params)")
        return [_float_activation(layer, layer.activation, (a * b).astype(np.float32))]
    if layer.input_params is None:
        raise layer._fail("is quantized but has no input_params")
    pa, pb = layer.input_params
    py = layer.output_params
    if ctx.semantics in LITERT_SEMANTICS:
        product = _centered(a, pa) * _centered(b, pb)
        if ctx.semantics is Semantics.LITERT:
            m = np.float32(np.float32(pa.scale) * np.float32(pb.scale)) / np.float32(py.scale)
            y = requantize_float32(product, m, int(py.zero_point), py.fmt)
        else:
            real = np.float64(np.float32(pa.scale)) * np.float64(np.float32(pb.scale)) / np.float64(np.float32(py.scale))
            y = _mbqm(product, real) + int(py.zero_point)
        lo, hi = _activation_bounds(layer, layer.activation, py, "half_away")
    else:
        y = _float_qdq(py, np.multiply, (a, pa), (b, pb))
        lo, hi = _activation_bounds(layer, layer.activation, py)
    return [_int_out(np.clip(y, lo, hi), py.fmt)]


def _pad(layer: L.Pad, inputs, ctx):
    (x,) = inputs
    return [np.pad(x, layer.pads, constant_values=np.asarray(layer.value).astype(x.dtype))]


def _rescale(layer: L.Rescale, inputs, ctx):
    (x,) = inputs
    px, py = layer.input_params, layer.output_params
    if ctx.semantics is Semantics.LITERT:
        # XNNPACK's qs8 convert: an 8-bit fixed-point multiplier, rounded half up
        m = int(np.rint(np.float64(np.float32(np.float32(px.scale) / np.float32(py.scale))) * 256))
        y = ((_centered(x, px) * m + 128) >> 8) + int(py.zero_point)
        return [_int_out(saturate(y, py.fmt), py.fmt)]
    if ctx.semantics in LITERT_SEMANTICS:
        real = np.float64(np.float32(px.scale)) / np.float64(np.float32(py.scale))
        y = _mbqm(_centered(x, px), real) + int(py.zero_point)
        return [_int_out(saturate(y, py.fmt), py.fmt)]
    return [_float_qdq(py, lambda v: v, (x, px))]


def _quantized_softmax(layer: L.Softmax, x: np.ndarray, ctx) -> np.ndarray:
    px, py = layer.input_params, layer.output_params
    if px is None:
        raise layer._fail("is quantized but has no input_params")
    real = dequantize(x, px).astype(np.float64) * float(layer.beta)
    shifted = real - real.max(axis=layer.axis, keepdims=True)
    e = np.exp(shifted)
    probs = (e / e.sum(axis=layer.axis, keepdims=True)).astype(np.float32)
    rounding = "half_away" if ctx.semantics in LITERT_SEMANTICS else "half_even"
    return _int_out(quantize(probs, py, rounding), py.fmt)


_RUNNERS: dict[type, Callable] = {
    L.Conv2d: _conv, L.Linear: _linear, L.MatMul: _matmul, L.Add: _add, L.Relu: _relu_clip,
    L.Clip: _relu_clip, L.MaxPool: _maxpool, L.AvgPool: _avgpool, L.GlobalAvgPool: _globalavgpool,
    L.Flatten: _flatten, L.Reshape: _reshape, L.Transpose: _transpose, L.Concat: _concat,
    L.Softmax: _softmax, L.LayerNorm: _layernorm, L.Gelu: _gelu, L.BatchNorm: _batchnorm,
    L.Quantize: _quantize, L.Dequantize: _dequantize, L.Constant: _constant,
    L.QuantizeLinear: _quantize_linear, L.DequantizeLinear: _dequantize_linear,
    L.DynamicQuantizeLinear: _dynamic_quantize_linear, L.MatMulInteger: _matmul_integer,
    L.ConvInteger: _conv_integer, L.QLinearMatMul: _qlinear_matmul, L.QLinearConv: _qlinear_conv,
    L.OnnxOp: _onnx_op, L.OrtContribOp: _ort_contrib, L.Mul: _mul, L.Pad: _pad, L.Rescale: _rescale,
}


# ------------------------------------------------------------------------- compiled plans
#
# Run repeatedly on one graph, the layer-by-layer route spends most of its time outside the
# arithmetic: feeds and shapes re-checked, parameters re-derived, integers converted to floats
# for every product and back to int8 after every requantization. The first run() of a graph
# at a batch size (under one semantics and instruction path, with the exact backend, without
# ``keep``) therefore compiles a plan: one step per layer, with everything that depends only
# on the layer and the shapes prepared once (centered weight matrices in the exact float type,
# the bias and the float32 multipliers as columns, clamp bounds, im2col gather indices).
#
# Integer tensors that flow between the steps the plan knows are held *centered*: float32
# arrays of ``value - zero`` (exact for 8-bit values), the form a product consumes and
# requantization produces, so they become int8/uint8 only where a graph output or another
# layer's runner needs them. Products are laid out channels first (``W @ columns``, outputs
# (M, N * oh * ow) or (N, rows)), so the per-channel bias and multiplier broadcast along long
# rows; a slot remembers that layout (``perm``) so that the next step reads the memory as it
# lies. Every step does the same arithmetic as the layer-by-layer route: the same IEEE float32
# operations on the same values, exact products proved by the same worst-case bound. A layer
# or case the plan does not know runs its ordinary runner on plain arrays.

#: Whether run() may take a compiled plan (tests switch it off to compare both routes).
_PLANS = True

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
#: Largest im2col gather index (entries) a plan precomputes for one convolution.
_GATHER_LIMIT = 1 << 23
_ZERO = np.zeros(1, np.float32)


@dataclass(frozen=True)
class _Slot:
    """Where and how a plan holds a tensor: ``plain`` (the array the layer-by-layer route
    makes, of ``dtype``) or ``centered``: float32 holding ``value - zero`` exactly, for an
    integer tensor of ``dtype``. The slot holds the tensor in its logical shape; ``perm``
    (a hint, never needed for correctness) is the transpose of it that is C-contiguous in
    memory, ``None`` for the logical order itself."""

    index: int
    dtype: np.dtype
    centered: bool = False
    zero: int = 0
    perm: tuple[int, ...] | None = None


class _Plan:
    """A compiled graph: feeds, steps (one per layer) and output conversions over a list."""

    __slots__ = ("graph", "ctx", "size", "feeds", "steps", "outputs", "fast")

    def __init__(self, graph: Graph, ctx: _Context, size: int, feeds: list, steps: list,
                 outputs: list, fast: list[str]) -> None:
        self.graph, self.ctx, self.size, self.feeds = graph, ctx, size, feeds
        self.steps, self.outputs = steps, outputs
        self.fast = fast  # the layers that run a plan step (the others run their runner)

    def run(self, feeds: Mapping[str, np.ndarray]) -> RunResult:
        env: list = [None] * self.size
        if len(feeds) == len(self.feeds):
            for name, index, shape, dtype, copy in self.feeds:
                value = feeds.get(name)
                if type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape:
                    break
                env[index] = value.copy() if copy else value
            else:
                return self._execute(env)
        # anything unusual (another array type or dtype, a wrong name or shape): the full check
        return self.run_checked(check_feeds(self.graph, feeds))

    def run_checked(self, values: dict[str, np.ndarray]) -> RunResult:
        env: list = [None] * self.size
        for name, index, shape, _, _ in self.feeds:
            if values[name].shape != shape:  # another batch size: the layer-by-layer route
                return _run_layers(self.graph, values, self.ctx, False)
            env[index] = values[name]
        return self._execute(env)

    def _execute(self, env: list) -> RunResult:
        times = {}
        clock = time.perf_counter
        for name, step in self.steps:
            t0 = clock()
            step(env)
            times[name] = clock() - t0
        return RunResult({name: env[index] if convert is None else convert(env[index])
                          for name, index, convert in self.outputs}, {}, times)


_MISSING = object()


def _planned_run(graph: Graph, feeds: Mapping[str, np.ndarray], ctx: _Context) -> RunResult | None:
    """``graph`` on ``feeds`` through its compiled plan, or ``None`` for the layer-by-layer
    route (a graph the plan cannot help, or feeds only the full check can judge)."""
    batch = None
    for name, t in graph.inputs.items():
        if t.shape and t.shape[0] is None:
            value = feeds.get(name)
            shape = value.shape if type(value) is np.ndarray else np.shape(value)
            if not shape:
                return None
            batch = int(shape[0])
            break
    fingerprint = (tuple(map(id, graph.layers)), tuple(graph.outputs))
    cache = graph.__dict__.get("_engine_plans")
    if cache is None or cache[0] != fingerprint:
        cache = graph.__dict__["_engine_plans"] = (fingerprint, {})
    key = (ctx.semantics, ctx.isa, batch)
    plan = cache[1].get(key, _MISSING)
    if plan is _MISSING:
        values = check_feeds(graph, feeds)  # the same errors, in the same order, as run's
        if any(values[n].shape[0] != batch for n, t in graph.inputs.items()
               if t.shape and t.shape[0] is None):
            return _run_layers(graph, values, ctx, False)  # inconsistent batches: its error
        plan = cache[1][key] = _compile(graph, ctx, batch)
        if plan is None:
            return _run_layers(graph, values, ctx, False)
        return plan.run_checked(values)
    return None if plan is None else plan.run(feeds)


def _compile(graph: Graph, ctx: _Context, batch: int | None) -> _Plan | None:
    """The plan of ``graph`` at ``batch``, or ``None`` when no layer has a plan step."""
    types = graph.infer(batch)
    slots: dict[str, _Slot] = {}
    feeds = []
    for name, t in graph.inputs.items():
        slot = slots[name] = _Slot(len(slots), np.dtype(t.dtype))
        shape = tuple(types[name].shape)
        if t.fmt is not None or any(d is None for d in shape):
            return None  # narrow formats need check_feeds's range check
        feeds.append([name, slot.index, shape, slot.dtype, np.dtype(t.dtype) == _F32])
    size = len(slots)
    steps, fast, borrowed = [], [], set()
    for layer in graph.layers:
        runner = _RUNNERS.get(type(layer))
        if runner is None:
            return None
        ins = [slots[i] for i in layer.inputs]
        in_types = [types[i] for i in layer.inputs]
        out_types = [types[o] for o in layer.outputs]
        if any(d is None for t in in_types + out_types for d in t.shape):
            return None
        out_index = list(range(size, size + len(layer.outputs)))
        size += len(layer.outputs)
        built = None
        builder = _PLAN_STEPS.get(type(layer))
        if builder is not None:
            try:
                built = builder(layer, ins, in_types, out_types, out_index, ctx)
            except ConfigError:
                built = None  # the ordinary runner raises it when the layer runs
        if built is None:
            if layer.kind in FLOAT_ONLY and getattr(layer, "output_params", None) is None and \
                    any(np.dtype(t.dtype).kind in "iu" for t in in_types):
                return None
            step = _generic_step(layer, runner, ins, out_types, out_index, ctx)
            specs = [_Slot(0, np.dtype(t.dtype)) for t in out_types]
            borrowed.update(s.index for s in ins)
        else:
            step, specs = built
            fast.append(layer.name)
            if isinstance(layer, (L.Flatten, L.Reshape)):
                borrowed.update(s.index for s in ins)  # views of their input
        for name, index, spec in zip(layer.outputs, out_index, specs):
            slots[name] = _Slot(index, spec.dtype, spec.centered, spec.zero, spec.perm)
        steps.append((layer.name, step))
    if not fast:
        return None
    outputs = [(name, slots[name].index, _plain_of(slots[name])) for name in graph.outputs]
    borrowed.update(index for _, index, _ in outputs)
    for feed in feeds:  # a float32 feed that only plan steps read (into new arrays): no copy
        feed[4] = feed[4] and feed[1] in borrowed
    return _Plan(graph, ctx, size, feeds, steps, outputs, fast)


def _plain_of(slot: _Slot) -> Callable[[np.ndarray], np.ndarray] | None:
    """The conversion of a slot's content to the plain array (``None``: it is plain)."""
    if not slot.centered:
        return None
    dtype = slot.dtype
    if slot.zero:
        zero = np.array(slot.zero, np.float32)
        return lambda c: np.add(c, zero).astype(dtype)
    return lambda c: c.astype(dtype)


def _centered_of(slot: _Slot, zero_point: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """The conversion of an integer slot's content to float32 ``value - zero_point``
    (``None``: it already is)."""
    if slot.centered:
        if slot.zero == zero_point:
            return None
        shift = np.array(slot.zero - zero_point, np.float32)
        return lambda c: np.add(c, shift)
    zp = np.array(zero_point, np.float32)
    return lambda x: np.subtract(x, zp, dtype=np.float32)


def _generic_step(layer: Layer, runner: Callable, ins: list[_Slot], out_types, out_index, ctx):
    """A layer's ordinary runner on plain arrays, its output shapes checked as run() does."""
    reads = [(s.index, _plain_of(s)) for s in ins]
    shapes = [tuple(t.shape) for t in out_types]

    def step(env: list) -> None:
        outs = runner(layer, [env[i] if f is None else f(env[i]) for i, f in reads], ctx)
        for index, value, shape, expected in zip(out_index, outs, shapes, out_types):
            if tuple(value.shape) != shape:
                raise layer._fail(f"produced shape {value.shape}, expected {expected}")
            env[index] = value
    return step


def _byte_format(fmt: IntFormat) -> bool:
    """Whether ``fmt`` is exactly int8 or uint8 (a whole byte, no narrower range)."""
    dtype = fmt.numpy_dtype()
    return dtype in _EIGHT_BIT and (fmt.min, fmt.max) == _RANGES[dtype]


def _memory(value: np.ndarray, perm: tuple[int, ...] | None) -> np.ndarray:
    """The slot's tensor in its memory order (a view when the hint holds)."""
    return value if perm is None else value.transpose(perm)


#: From this many elements on, the quantize step saves and restores the floating-point state
#: once instead of clamping its input first (two passes more).
_QUANTIZE_ERRSTATE = 4096


def _plan_quantize(layer: L.Quantize, ins, in_types, out_types, out_index, ctx):
    """ONNX Runtime's QuantizeLinear (per tensor, float32 scale, 8 bits) as in
    ``qsim.quant.ops._quantize_per_tensor_f32``: one float32 division, the clamp to
    ``[qmin - zp, qmax - zp]`` with a NaN at the lower bound (ONNX Runtime's qmin), rounding
    half to even; the result stays centered on the zero point."""
    (x,) = ins
    params = layer.params
    if (ctx.semantics is not Semantics.ONNXRUNTIME or params is None or x.centered
            or x.dtype != _F32 or not params.per_tensor or params.scale.dtype != np.float32
            or not _byte_format(params.fmt)
            or np.dtype(out_types[0].dtype) != params.fmt.numpy_dtype()):
        return None
    zp = int(params.zero_point)
    scale = np.array(params.scale, np.float32).reshape(())
    if not (np.isfinite(scale) and scale > 0):
        return None
    lo = np.array(params.fmt.min - zp, np.float32)
    hi = np.array(params.fmt.max - zp, np.float32)
    i, (o,) = x.index, out_index
    spec = [_Slot(0, params.fmt.numpy_dtype(), True, zp, x.perm)]
    if int(np.prod(in_types[0].shape)) >= _QUANTIZE_ERRSTATE:
        def quantize_large(env: list) -> None:
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                q = np.divide(env[i], scale)
            np.fmax(q, lo, out=q)  # NaN -> lo
            np.fmin(q, hi, out=q)
            np.rint(q, out=q)
            env[o] = q
        return quantize_large, spec
    # Small inputs: clamped first to +-2**40 * scale (exact; or the largest float32): every
    # quotient beyond it saturates anyway, the division cannot overflow (no floating-point
    # state to save), and fmax turns a NaN into the lower bound.
    with np.errstate(over="ignore"):
        big = np.float32(scale * np.float32(2.0 ** 40))
    big = np.array(big if np.isfinite(big) else np.finfo(np.float32).max, np.float32)
    small = -big

    def quantize_small(env: list) -> None:
        q = np.fmax(env[i], small)
        np.fmin(q, big, out=q)
        np.divide(q, scale, out=q)
        np.maximum(q, lo, out=q)
        np.minimum(q, hi, out=q)
        np.rint(q, out=q)
        env[o] = q
    return quantize_small, spec


def _plan_dequantize(layer: L.Dequantize, ins, in_types, out_types, out_index, ctx):
    """DequantizeLinear of 8-bit integers (per tensor, float32 scale): ``f32(q - zp) * scale``,
    ``q - zp`` exact in float32 (``qsim.quant.ops.dequantize``'s 8-bit route)."""
    (x,) = ins
    params = layer.params
    if (params is None or not params.per_tensor or params.scale.dtype != np.float32
            or x.dtype not in _EIGHT_BIT or (params.fmt.min, params.fmt.max) != _RANGES[x.dtype]
            or np.dtype(out_types[0].dtype) != _F32):
        return None
    scale = np.array(params.scale, np.float32).reshape(())
    zp = int(params.zero_point)
    i, (o,) = x.index, out_index
    if not x.centered:
        center = _centered_of(x, zp)

        def plain(env: list) -> None:
            v = center(env[i])
            v *= scale
            env[o] = v
        return plain, [_Slot(0, _F32, perm=x.perm)]
    # ``+ shift`` (0 when the zero points agree) also turns a centered -0.0 (rint of a small
    # negative product) into the +0.0 that f32(q - zp) is
    shift = np.array(x.zero - zp, np.float32)

    def step(env: list) -> None:
        v = np.add(env[i], shift)
        v *= scale
        env[o] = v
    return step, [_Slot(0, _F32, perm=x.perm)]


def _plan_gemm(layer: L.Conv2d | L.Linear, ins, in_types, out_types, out_index, ctx):
    """A quantized convolution (one group) or linear layer on the exact float route of
    :func:`_fast_accumulate` and :func:`_fast_requantize`, with the same conditions: 8-bit
    operands, no u8 x s8 saturation on this path, a worst-case accumulator exact in float32
    (or float64), a bias that keeps the sum inside int32, and a finite multiplier."""
    (x,) = ins
    if not layer.quantized or layer.weight is None or \
            ctx.semantics not in (Semantics.ONNXRUNTIME, Semantics.LITERT):
        return None
    conv = isinstance(layer, L.Conv2d)
    if conv and layer.groups != 1:
        return None
    x_dtype = np.dtype(in_types[0].dtype)
    prep = _prepared_gemm(layer, ctx)
    w_dtype = prep.weight.dtype
    if x_dtype not in _EIGHT_BIT or w_dtype not in _EIGHT_BIT or x.dtype != x_dtype:
        return None
    if (ctx.semantics in ISA_DEPENDENT and u8s8_saturates(ctx.isa, ctx.semantics.value)
            and x_dtype == np.uint8 and w_dtype == np.int8):
        return None  # the engine's saturating pairs: the ordinary runner adds the correction
    out_dtype = prep.y_p.fmt.numpy_dtype()
    if np.dtype(out_types[0].dtype) != out_dtype or not _byte_format(prep.y_p.fmt):
        return None
    x_zp = int(prep.x_p.zero_point)
    depth = prep.weight.shape[1]
    bound = depth * _span(x_dtype, x_zp) * _span(w_dtype, prep.zw)
    dtype = _exact_dtype(bound)
    if dtype is None:
        return None
    top, bias = bound, None
    if prep.bias is not None:
        if prep.bias_top >= (1 << 24 if dtype == _F32 else 1 << 53) or bound + prep.bias_top >= 1 << 31:
            return None
        top += prep.bias_top
        if np.any(prep.bias):
            bias = prep.bias.astype(dtype).reshape(-1, 1)
    multiplier = np.ascontiguousarray(prep.multiplier.reshape(-1, 1), dtype=np.float32)
    if not np.all(np.isfinite(multiplier)):
        return None
    # |acc| <= top < 2**31: the product overflows float32 only for an enormous multiplier
    quiet = float(np.max(np.abs(multiplier), initial=0.0)) * top < 1e38
    y_zp = int(prep.y_p.zero_point)
    lo = np.array(prep.clamp[0] - y_zp, np.float32)
    hi = np.array(prep.clamp[1] - y_zp, np.float32)
    weight = prep.centered_weight(dtype)  # (M, K)
    wide = dtype == _F64

    def requantize(acc: np.ndarray) -> np.ndarray:
        """:func:`_fast_requantize` on a fresh (M, columns) product, in place."""
        if bias is not None:
            acc += bias
        v = acc.astype(np.float32) if wide else acc
        if quiet:
            v *= multiplier
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                v *= multiplier
        np.maximum(v, lo, out=v)
        np.minimum(v, hi, out=v)
        np.rint(v, out=v)
        return v

    center = _centered_of(x, x_zp)
    i, (o,) = x.index, out_index
    if not conv:
        in_shape, out_shape = tuple(in_types[0].shape), tuple(out_types[0].shape)
        rows = int(np.prod(in_shape[:-1], dtype=np.int64))
        flat = len(in_shape) != 2

        def linear(env: list) -> None:
            v = env[i] if center is None else center(env[i])
            if flat:
                v = v.reshape(rows, depth)
            if wide:
                v = v.astype(np.float64)
            y = requantize(weight @ v.T).T  # (N, rows) in memory
            env[o] = y.reshape(out_shape) if flat else y
        return linear, [_Slot(0, out_dtype, True, y_zp, None if flat else (1, 0))]

    n, c, h, w = in_types[0].shape
    oh, ow = out_types[0].shape[2:]
    t, left = layer.pads[:2]
    kh, kw = layer.kernel
    sh, sw = layer.strides
    dh, dw = layer.dilations
    # The im2col matrix (C * kh * kw, N * oh * ow), rows in the weight's (c, i, j) order,
    # gathered from the input's memory with one precomputed index; a tap in the padding reads
    # an appended zero (the input zero point: real zero).
    perm = x.perm if x.perm in (None, (1, 0, 2, 3)) else None
    ys = np.arange(kh)[:, None] * dh + np.arange(oh)[None, :] * sh - t  # (kh, oh) input rows
    xs = np.arange(kw)[:, None] * dw + np.arange(ow)[None, :] * sw - left  # (kw, ow) input columns
    ci, ni = np.arange(c), np.arange(n)
    yy = ys[None, :, None, None, :, None]
    xx = xs[None, None, :, None, None, :]
    cc, nn = ci[:, None, None, None, None, None], ni[None, None, None, :, None, None]
    if perm is None:  # (N, C, H, W)
        offset = ((nn * c + cc) * h + yy) * w + xx
    else:  # (C, N, H, W)
        offset = ((cc * n + nn) * h + yy) * w + xx
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    padded = not inside.all()
    index = np.where(inside, offset, n * c * h * w).reshape(depth, n * oh * ow)
    if index.size > _GATHER_LIMIT:
        return None
    pointwise = perm is not None and (kh, kw, sh, sw) == (1, 1, 1, 1) and not padded
    out_c = layer.out_channels

    def convolve(env: list) -> None:
        v = env[i] if center is None else center(env[i])
        memory = (v if perm is None else v.transpose(perm)).reshape(-1)
        if pointwise:
            columns = memory.reshape(c, n * h * w)
        else:
            if padded:
                memory = np.concatenate((memory, _ZERO))
            columns = memory.take(index)
        if wide:
            columns = columns.astype(np.float64)
        y = requantize(weight @ columns)  # (M, N * oh * ow): CNHW
        env[o] = y.reshape(out_c, n, oh, ow).transpose(1, 0, 2, 3)
    return convolve, [_Slot(0, out_dtype, True, y_zp, (1, 0, 2, 3))]


def _plan_maxpool(layer: L.MaxPool, ins, in_types, out_types, out_index, ctx):
    """MaxPool as :func:`_maxpool`: a running maximum over the kernel taps, padded with the
    dtype's lowest value (for a centered tensor, that value minus the zero). Windows that
    tile the input exactly (kernel = strides, no padding or dilation) are reduced over the
    memory's own rows and columns."""
    (x,) = ins
    if x.centered:
        low, storage = np.float32(np.iinfo(x.dtype).min - x.zero), _F32
    elif x.dtype == _F32:
        low, storage = np.finfo(np.float32).min, _F32
    elif x.dtype.kind in "iu":
        low, storage = np.iinfo(x.dtype).min, x.dtype
    else:
        return None
    n, c, h, w = in_types[0].shape
    oh, ow = out_types[0].shape[2:]
    t, left, b, r = layer.pads
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    i, (o,) = x.index, out_index
    spec = [_Slot(0, x.dtype, x.centered, x.zero, x.perm)]
    if (x.perm in (None, (1, 0, 2, 3)) and (kh, kw) == (sh, sw) and (dh, dw) == (1, 1)
            and (oh * kh, ow * kw) == (h, w) and kh * kw > 1 and t == left == 0):
        perm = x.perm
        lead = n * c

        def tiled(env: list) -> None:
            v = env[i]
            rows = (v if perm is None else v.transpose(perm)).reshape(lead * oh, kh, w)
            best = np.maximum(rows[:, 0], rows[:, 1]) if kh > 1 else rows[:, 0].copy()
            for a in range(2, kh):
                np.maximum(best, rows[:, a], out=best)
            if kw > 1:
                cols = best.reshape(lead * oh * ow, kw)
                best = np.maximum(cols[:, 0], cols[:, 1])
                for e in range(2, kw):
                    np.maximum(best, cols[:, e], out=best)
            if perm is None:
                env[o] = best.reshape(n, c, oh, ow)
            else:
                env[o] = best.reshape(c, n, oh, ow).transpose(perm)
        return tiled, spec
    hp = max(h + t + b, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(w + left + r, (ow - 1) * sw + (kw - 1) * dw + 1)
    padded = (hp, wp) != (h, w) or t or left
    taps = [(slice(None), slice(None), slice(a * dh, a * dh + (oh - 1) * sh + 1, sh),
             slice(e * dw, e * dw + (ow - 1) * sw + 1, sw)) for a in range(kh) for e in range(kw)]

    def step(env: list) -> None:
        v = env[i]
        if padded:
            image = np.full((n, c, hp, wp), low, storage)
            image[:, :, t:t + h, left:left + w] = v
            v = image
        best = np.maximum(v[taps[0]], v[taps[1]]) if len(taps) > 1 else v[taps[0]].copy()
        for tap in taps[2:]:
            np.maximum(best, v[tap], out=best)
        env[o] = best
    return step, [_Slot(0, x.dtype, x.centered, x.zero, None if padded else x.perm)]


def _plan_reshape(layer: L.Flatten | L.Reshape, ins, in_types, out_types, out_index, ctx):
    """Flatten and Reshape: the same reshape of whatever the slot holds."""
    (x,) = ins
    shape = tuple(out_types[0].shape)
    i, (o,) = x.index, out_index

    def step(env: list) -> None:
        env[o] = env[i].reshape(shape)
    return step, [_Slot(0, x.dtype, x.centered, x.zero)]


def _plan_clamp(layer: L.Relu | L.Clip, ins, in_types, out_types, out_index, ctx):
    """Relu and Clip of a centered integer tensor: :func:`_relu_clip`'s integer clamp."""
    (x,) = ins
    if not x.centered:
        return None
    lo, hi = (0.0, np.inf) if isinstance(layer, L.Relu) else (layer.lo, layer.hi)
    params = _params(layer, layer.output_params, "output_params (the tensor's quantization)")
    rounding = "half_away" if ctx.semantics in LITERT_SEMANTICS else "half_even"
    qlo, qhi = _activation_bounds(layer, ("clip", lo, hi), params, rounding)
    low, high = _RANGES[x.dtype]
    if not low <= qlo <= qhi <= high:
        return None
    lo_c, hi_c = np.array(qlo - x.zero, np.float32), np.array(qhi - x.zero, np.float32)
    i, (o,) = x.index, out_index

    def step(env: list) -> None:
        y = np.maximum(env[i], lo_c)
        np.minimum(y, hi_c, out=y)
        env[o] = y
    return step, [_Slot(0, x.dtype, True, x.zero, x.perm)]


_PLAN_STEPS: dict[type, Callable] = {
    L.Quantize: _plan_quantize, L.Dequantize: _plan_dequantize, L.Conv2d: _plan_gemm,
    L.Linear: _plan_gemm, L.MaxPool: _plan_maxpool, L.Flatten: _plan_reshape,
    L.Reshape: _plan_reshape, L.Relu: _plan_clamp, L.Clip: _plan_clamp,
}
