"""Post-training quantization (PTQ) of float IR graphs into integer graphs the engine runs.

This module owns three steps and the choices made in them:

1. **Fold and fuse** (:func:`fold_and_fuse`): a ``BatchNorm`` that alone reads the output of
   a ``Conv2d`` or ``Linear`` is folded into its weight and bias
   (:func:`qsim.quant.fold.fold_batchnorm`, ONNX Runtime's float32 order); a ``Relu`` or
   ``Clip`` (ReLU6 is ``Clip(0, 6)``) that alone reads the output of a ``Conv2d``, ``Linear``
   or ``Add`` becomes that layer's fused ``activation``. The fused layer keeps its name and
   writes the tensor the absorbed layer wrote.
2. **Calibrate** (:func:`quantize_graph`): the fused float graph runs on the calibration
   batches with ``keep=True``; one observer per tensor (:mod:`qsim.quant.calibrate`) gives
   per-tensor, asymmetric activation parameters with ONNX Runtime's rules
   (:func:`~qsim.quant.calibrate.compute_params`). Because the activation is fused, a layer's
   output range is the range *after* its ReLU, which is what ORT's ``adjust_tensor_ranges``
   does for a Conv/Gemm followed by Relu or Clip.
3. **Quantize**: weights per output channel (or per tensor), symmetric by default, always
   with a min/max range as ORT does (the ``observer`` option is for activations): int8 in
   [-127, 127], int4 in [-8, 7], int2 ternary in [-1, 1]
   (:func:`~qsim.quant.calibrate.quant_range`). Weights are stored as int8 arrays holding
   values of their format. Biases become int32 with scale ``float32(s_in * s_w[c])`` and
   zero point 0: ``rne(float64(b) / float64(scale))``, ORT's ``quantize_bias_static_impl``.

Layers in the quantized graph:

===============================  ===========================================================
float layer                      quantized graph
===============================  ===========================================================
float tensor an integer layer    ``Quantize`` ``quantize_<name>`` writing ``<name>_quantized``
reads (the graph input)          with the tensor's calibrated parameters
``Conv2d``, ``Linear``           integer weights, int32 bias, input/weight/output parameters
``Add``, ``AvgPool``,            input parameters of each input, calibrated output parameters
``GlobalAvgPool``, ``Concat``    (ORT's QLinearAdd, QLinearAveragePool, ...)
``MaxPool``, ``Flatten``,        unchanged; integer when their input is, and then the output
``Reshape``, ``Transpose``       shares the input's parameters (ORT's ``Direct8BitOp``)
``Relu``, ``Clip`` (not fused)   an integer clamp on the input's grid when the input is integer
``Softmax``, ``LayerNorm``,      float: a ``Dequantize`` ``dequantize_<name>`` is inserted
``Gelu``                         before them
graph output                     a ``Dequantize`` writes it when it is integer: the layer
                                 that computes it writes ``<name>_quantized``
===============================  ===========================================================

Other intermediate tensors keep their names, so the float and the quantized value of a tensor
can be compared by name; :class:`PTQRecord` (``graph.meta["ptq"]``) lists every integer
tensor's parameters and the float tensor it stands for.

Mixed precision: :func:`plan_weight_bits` measures each Conv2d/Linear layer's sensitivity
(:mod:`qsim.quant.mixed`, the noise of its output ``X W`` on the calibration inputs) and picks
the widths that fit a byte budget; :func:`choose_weight_bits` returns just the mapping that
``quantize_graph(weight_bits=...)`` takes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from qsim.errors import ConfigError
from qsim.nn import layers as L
from qsim.nn.engine import run
from qsim.nn.graph import Graph, Layer
from qsim.numerics import IntFormat
from qsim.quant.calibrate import (
    EntropyObserver, MinMaxObserver, MSEObserver, Observer, PercentileObserver,
)
from qsim.quant.fold import fold_batchnorm
from qsim.quant.kernels import conv_geometry, im2col
from qsim.quant.mixed import DEFAULT_WIDTHS, LayerSpec, MixedPrecisionPlan, plan_mixed_precision
from qsim.quant.ops import quantize
from qsim.quant.params import QuantParams

__all__ = [
    "ACTIVATION_FORMATS", "WEIGHT_BITS", "OBSERVERS", "PTQRecord", "fold_and_fuse",
    "quantize_graph", "weight_layers", "plan_weight_bits", "choose_weight_bits",
]

#: Formats of quantized activations.
ACTIVATION_FORMATS = ("int8", "uint8")
#: Weight widths the int8 kernels and the accelerator take (narrower values fit int8).
WEIGHT_BITS = (8, 4, 2)
#: Activation observers by name (weights always use min/max, as ONNX Runtime does).
OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver,
    "entropy": EntropyObserver,
}

_GEMM = (L.Conv2d, L.Linear)
_REQUANTIZED = (L.Add, L.AvgPool, L.GlobalAvgPool, L.Concat)
_PASS_THROUGH = (L.MaxPool, L.Flatten, L.Reshape, L.Transpose)
_FLOAT_KEPT = (L.Softmax, L.LayerNorm, L.Gelu)
_SUPPORTED = "conv2d, linear, add, avgpool, globalavgpool, concat, maxpool, flatten, reshape, " \
             "transpose, relu, clip, softmax, layernorm, gelu"

Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class PTQRecord:
    """What :func:`quantize_graph` did, kept in ``graph.meta["ptq"]`` of the quantized graph.

    Attributes
    ----------
    weight_bits : dict of str to int
        Width of each Conv2d/Linear layer's weights.
    tensor_params : dict of str to QuantParams
        Parameters of every integer tensor of the quantized graph.
    float_tensor : dict of str to str
        For every integer tensor, the tensor of the float graph it quantizes (``"logits"``
        for ``"logits_quantized"``, the same name for most).
    options : dict
        The options of the call (activation format, observer, per_channel, ...).
    """

    weight_bits: dict[str, int]
    tensor_params: dict[str, QuantParams]
    float_tensor: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Folding and fusion
# --------------------------------------------------------------------------------------------

def _consumers(graph: Graph) -> dict[str, list[Layer]]:
    readers: dict[str, list[Layer]] = {}
    for layer in graph.layers:
        for tensor in layer.inputs:
            readers.setdefault(tensor, []).append(layer)
    return readers


def _activation_of(layer: Layer) -> object:
    if isinstance(layer, L.Relu):
        return "relu"
    return ("clip", float(layer.lo), float(layer.hi))


def fold_and_fuse(graph: Graph, *, fold_bn: bool = True) -> Graph:
    """The float graph with BatchNorms folded and activations fused (see the module docstring).

    A layer is absorbed only when it is the single reader of its producer's output and that
    output is not a graph output; the producer then writes the absorbed layer's output tensor.
    Returns a new graph: layers that change are new objects with new weight arrays, the others
    are shared; ``graph`` itself is unchanged.
    """
    readers = _consumers(graph)
    outputs = set(graph.outputs)
    ranks = {name: len(t.shape) for name, t in graph.infer(1).items()}
    absorbed: set[str] = set()
    result: list[Layer] = []
    for layer in graph.layers:
        if layer.name in absorbed:
            continue
        if not isinstance(layer, (*_GEMM, L.Add)) or getattr(layer, "output_params", None) is not None:
            result.append(layer)
            continue
        fused = dataclasses.replace(layer)
        while True:
            tensor = fused.outputs[0]
            following = readers.get(tensor, [])
            if tensor in outputs or len(following) != 1 or fused.activation is not None:
                break
            (reader,) = following
            # BatchNorm normalises axis 1: the features of a 2-D Linear output, the channels of NCHW.
            channels_on_axis_1 = ranks[tensor] == (2 if isinstance(fused, L.Linear) else 4)
            if (fold_bn and isinstance(reader, L.BatchNorm) and isinstance(fused, _GEMM)
                    and fused.weight is not None and channels_on_axis_1):
                missing = [a for a in ("gamma", "beta", "mean", "var") if getattr(reader, a) is None]
                if missing:
                    raise reader._fail(f"has no {', '.join(missing)}; it cannot be folded")
                # Linear weights are (in, out): their output channels are on axis 1.
                axis = 1 if isinstance(fused, L.Linear) else 0
                weight, bias = fold_batchnorm(fused.weight, fused.bias, reader.gamma, reader.beta,
                                              reader.mean, reader.var, reader.eps, channel_axis=axis)
                fused = dataclasses.replace(fused, weight=weight, bias=bias, outputs=reader.outputs)
            elif isinstance(reader, (L.Relu, L.Clip)):
                fused = dataclasses.replace(fused, activation=_activation_of(reader), outputs=reader.outputs)
            else:
                break
            absorbed.add(reader.name)
        result.append(fused)
    return Graph(graph.name, dict(graph.inputs), result, list(graph.outputs), dict(graph.meta))


def weight_layers(graph: Graph) -> list[str]:
    """Names of the Conv2d and Linear layers (the layers :func:`quantize_graph` gives weight bits)."""
    return [layer.name for layer in graph.layers if isinstance(layer, _GEMM)]


# --------------------------------------------------------------------------------------------
# Option checks
# --------------------------------------------------------------------------------------------

def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be a bool, not {value!r}")
    return bool(value)


def _check_bits(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in WEIGHT_BITS:
        raise ConfigError(f"{what} must be 8, 4 or 2, not {value!r}")
    return int(value)


def _resolve_bits(graph: Graph, weight_bits: int | Mapping[str, int]) -> dict[str, int]:
    names = weight_layers(graph)
    if isinstance(weight_bits, Mapping):
        unknown = [n for n in weight_bits if n not in names]
        if unknown:
            what = ("is not a Conv2d or Linear layer" if len(unknown) == 1
                    else "are not Conv2d or Linear layers")
            raise ConfigError(
                f"weight_bits names {', '.join(map(repr, unknown))}, which {what} of graph {graph.name!r} "
                f"(those are {', '.join(map(repr, names))})")
        return {n: _check_bits(weight_bits.get(n, 8), f"weight_bits[{n!r}]") for n in names}
    bits = _check_bits(weight_bits, "weight_bits")
    return {n: bits for n in names}


def _batches(graph: Graph, calibration_feeds: Feeds | Iterable[Feeds]) -> list[Feeds]:
    """The calibration data as a list of feed mappings (one mapping is one batch)."""
    if isinstance(calibration_feeds, Mapping):
        batches = [calibration_feeds]
    else:
        try:
            batches = list(calibration_feeds)
        except TypeError:
            raise ConfigError(f"calibration_feeds must be a mapping of input names to arrays or a "
                              f"sequence of such mappings, not {type(calibration_feeds).__name__}") from None
    if not batches:
        raise ConfigError(f"calibration_feeds is empty: quantizing graph {graph.name!r} needs at "
                          f"least one calibration batch")
    for k, batch in enumerate(batches):
        if not isinstance(batch, Mapping):
            raise ConfigError(f"calibration batch {k} must be a mapping of input names to arrays, "
                              f"not {type(batch).__name__}")
        for name, value in batch.items():
            shape = np.shape(value)
            if not shape or shape[0] == 0:
                raise ConfigError(f"calibration batch {k}: input {name!r} has no samples (shape {shape})")
    return batches


def _make_observer(observer: str, fmt: str) -> Observer:
    if not isinstance(observer, str) or observer not in OBSERVERS:
        raise ConfigError(f"observer must be one of {', '.join(map(repr, OBSERVERS))}, not {observer!r}")
    return OBSERVERS[observer](fmt=fmt)


def _check_quantizable(graph: Graph) -> None:
    for layer in graph.layers:
        params = ("input_params", "weight_params", "output_params")
        if isinstance(layer, (L.Quantize, L.Dequantize)) or any(
                getattr(layer, a, None) is not None for a in params):
            raise layer._fail("is already quantized; quantize_graph takes a float graph")
        if isinstance(layer, L.BatchNorm):
            raise layer._fail("is not folded (only a BatchNorm that alone reads the output of a "
                              "Conv2d or Linear folds, with fold_bn=True) and has no integer version")
        if not isinstance(layer, (*_GEMM, *_REQUANTIZED, *_PASS_THROUGH, *_FLOAT_KEPT, L.Relu, L.Clip)):
            raise layer._fail(f"cannot be quantized (quantize_graph supports {_SUPPORTED})")
        if isinstance(layer, _GEMM) and layer.weight is None:
            raise layer._fail("has no weights (a shape-only graph cannot be quantized)")


# --------------------------------------------------------------------------------------------
# Calibration and weight quantization
# --------------------------------------------------------------------------------------------

def _calibrate(graph: Graph, batches: list[Feeds], observer: str, fmt: str) -> dict[str, QuantParams]:
    """Per-tensor activation parameters of every float tensor of ``graph``."""
    observers: dict[str, Observer] = {}
    for batch in batches:
        values = run(graph, batch, keep=True).values
        for name, value in values.items():
            if value.dtype.kind == "f":
                observers.setdefault(name, _make_observer(observer, fmt)).observe(value)
    return {name: obs.compute() for name, obs in observers.items()}


def _quantize_weights(layer: L.Conv2d | L.Linear, bits: int, per_channel: bool, symmetric: bool,
                      reduce_range: bool) -> tuple[np.ndarray, QuantParams]:
    axis = 1 if isinstance(layer, L.Linear) else 0  # output channels: Linear (in, out), Conv OIHW
    weight = np.asarray(layer.weight, dtype=np.float32)
    try:
        observer = MinMaxObserver(IntFormat(bits, True), symmetric=symmetric,
                                  per_channel_axis=axis if per_channel else None, reduce_range=reduce_range)
    except ConfigError as err:
        raise layer._fail(f"int{bits} weights: {err}") from None
    params = observer.observe(weight).compute()
    return quantize(weight, params).astype(np.int8), params


def _quantize_bias(bias: np.ndarray | None, x_params: QuantParams,
                   w_params: QuantParams) -> np.ndarray | None:
    """int32 bias with scale ``float32(s_x * s_w)``: the quotient in float64, rounded half to
    even and clipped to int32, as ORT's ``quantize_bias_static_impl`` computes it."""
    if bias is None:
        return None
    scale = np.float32(x_params.scale) * np.asarray(w_params.scale, dtype=np.float32)
    q = np.rint(np.asarray(bias, dtype=np.float64) / scale.astype(np.float64))
    info = np.iinfo(np.int32)
    return np.clip(q, info.min, info.max).astype(np.int32)


# --------------------------------------------------------------------------------------------
# The quantized graph
# --------------------------------------------------------------------------------------------

class _Builder:
    """Tracks, for every tensor of the float graph, its float and integer versions."""

    def __init__(self, graph: Graph, calibrated: dict[str, QuantParams]) -> None:
        self.graph = graph
        self.calibrated = calibrated
        self.outputs = set(graph.outputs)
        self.layers: list[Layer] = []
        self.float_name = {name: name for name in graph.inputs}
        self.int_name: dict[str, str] = {}
        self.params: dict[str, QuantParams] = {}
        self.source: dict[str, str] = {}

    def integer(self, tensor: str) -> tuple[str, QuantParams]:
        """The integer version of ``tensor``, quantized here with its calibrated parameters
        if it only exists in float so far."""
        if tensor not in self.int_name:
            name = f"{tensor}_quantized"
            params = self.calibrated[tensor]
            self.layers.append(L.Quantize(f"quantize_{tensor}", (self.float_name[tensor],), (name,),
                                          params=params))
            self.record(tensor, name, params)
        name = self.int_name[tensor]
        return name, self.params[name]

    def floating(self, tensor: str) -> str:
        if tensor not in self.float_name:
            name = tensor if tensor in self.outputs else f"{tensor}_dequantized"
            source = self.int_name[tensor]
            self.layers.append(L.Dequantize(f"dequantize_{tensor}", (source,), (name,),
                                            params=self.params[source]))
            self.float_name[tensor] = name
        return self.float_name[tensor]

    def int_output(self, tensor: str) -> str:
        # A graph output keeps its name for the float value the final Dequantize writes.
        return f"{tensor}_quantized" if tensor in self.outputs else tensor

    def record(self, tensor: str, name: str, params: QuantParams) -> None:
        self.int_name[tensor] = name
        self.params[name] = params
        self.source[name] = tensor


def quantize_graph(graph: Graph, calibration_feeds: Feeds | Iterable[Feeds], *,
                   activation_format: str = "int8", weight_bits: int | Mapping[str, int] = 8,
                   per_channel: bool = True, symmetric_weights: bool = True,
                   observer: str = "minmax", reduce_range: bool = False, fold_bn: bool = True) -> Graph:
    """Post-training quantization of a float graph (see the module docstring for every rule).

    Parameters
    ----------
    graph : Graph
        A float graph with weights.
    calibration_feeds : mapping or sequence of mappings
        One batch (``{input name: array}``) or several; every batch is run through the fused
        float graph and observed.
    activation_format : {"int8", "uint8"}
        Format of every quantized activation (asymmetric, per tensor).
    weight_bits : int or mapping of str to int
        8, 4 or 2 for every Conv2d/Linear layer, or per layer name (unnamed layers get 8).
    per_channel : bool
        One weight scale per output channel (else one per layer).
    symmetric_weights : bool
        Symmetric weights (zero point 0) or asymmetric ones with a zero point per scale.
    observer : {"minmax", "percentile", "mse", "entropy"}
        How activation ranges are calibrated (the observers' defaults: percentile 99.999,
        2048 histogram bins, ...). Weights always use their min/max.
    reduce_range : bool
        Map weights onto one bit less (int8 [-64, 64]), as ORT does for CPUs without VNNI;
        like ORT, activations keep their full range.
    fold_bn : bool
        Fold a BatchNorm that follows a Conv2d/Linear into it.

    Returns
    -------
    Graph
        The integer graph, with the inputs and outputs of ``graph`` (float) and a
        :class:`PTQRecord` in ``meta["ptq"]``.

    Raises
    ------
    ConfigError
        For an unknown option value, weight bits other than 8, 4, 2, a weight_bits mapping
        naming something that is not a Conv2d/Linear layer, empty calibration data, a layer
        without an integer version, or an already quantized graph.
    """
    if activation_format not in ACTIVATION_FORMATS:
        raise ConfigError(f"activation_format must be 'int8' or 'uint8', not {activation_format!r}")
    per_channel = _check_bool(per_channel, "per_channel")
    symmetric_weights = _check_bool(symmetric_weights, "symmetric_weights")
    reduce_range = _check_bool(reduce_range, "reduce_range")
    fold_bn = _check_bool(fold_bn, "fold_bn")
    _make_observer(observer, activation_format)  # reject an unknown name before any work
    prepared = fold_and_fuse(graph, fold_bn=fold_bn)
    _check_quantizable(prepared)
    bits = _resolve_bits(prepared, weight_bits)
    batches = _batches(graph, calibration_feeds)
    calibrated = _calibrate(prepared, batches, observer, activation_format)

    b = _Builder(prepared, calibrated)
    for layer in prepared.layers:
        out = layer.outputs[0]
        if isinstance(layer, _GEMM):
            x, x_params = b.integer(layer.inputs[0])
            weight, w_params = _quantize_weights(layer, bits[layer.name], per_channel, symmetric_weights,
                                                 reduce_range)
            y_params = calibrated[out]
            b.layers.append(dataclasses.replace(
                layer, inputs=(x,), outputs=(b.int_output(out),), weight=weight,
                bias=_quantize_bias(layer.bias, x_params, w_params), input_params=x_params,
                weight_params=w_params, output_params=y_params))
            b.record(out, b.int_output(out), y_params)
        elif isinstance(layer, _REQUANTIZED):
            ins = [b.integer(t) for t in layer.inputs]
            pooled = isinstance(layer, (L.AvgPool, L.GlobalAvgPool))
            in_params: Any = ins[0][1] if pooled else tuple(p for _, p in ins)
            y_params = calibrated[out]
            b.layers.append(dataclasses.replace(
                layer, inputs=tuple(n for n, _ in ins), outputs=(b.int_output(out),),
                input_params=in_params, output_params=y_params))
            b.record(out, b.int_output(out), y_params)
        elif isinstance(layer, (*_PASS_THROUGH, L.Relu, L.Clip)) and layer.inputs[0] in b.int_name:
            x, x_params = b.integer(layer.inputs[0])
            extra = {"output_params": x_params} if isinstance(layer, (L.Relu, L.Clip)) else {}
            b.layers.append(dataclasses.replace(layer, inputs=(x,), outputs=(b.int_output(out),), **extra))
            b.record(out, b.int_output(out), x_params)
        else:
            # Float layers: the kept float ones, and layout/clamp layers on float data (ORT
            # leaves those float too when their input is not quantized).
            ins = tuple(b.floating(t) for t in layer.inputs)
            b.layers.append(dataclasses.replace(layer, inputs=ins))
            for tensor in layer.outputs:
                b.float_name[tensor] = tensor
    for tensor in prepared.outputs:
        b.floating(tensor)
    record = PTQRecord(
        weight_bits=bits, tensor_params=dict(b.params), float_tensor=dict(b.source),
        options={"activation_format": activation_format, "per_channel": per_channel,
                 "symmetric_weights": symmetric_weights, "observer": observer,
                 "reduce_range": reduce_range, "fold_bn": fold_bn})
    return Graph(graph.name, dict(graph.inputs), b.layers, list(graph.outputs), {**graph.meta, "ptq": record})


# --------------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------------

def _gemm_rows(layer: L.Conv2d | L.Linear, x: np.ndarray) -> np.ndarray:
    """The rows ``X`` whose product with the ``(in, out)`` weight matrix is the layer output."""
    if isinstance(layer, L.Linear):
        return x.reshape(-1, x.shape[-1])
    geometry = conv_geometry(x.shape[2:], layer.kernel, strides=layer.strides, pads=layer.pads,
                             dilations=layer.dilations)
    cols = im2col(x, geometry)  # (N, C, oh, ow, kh, kw): columns ordered (c, kh, kw) like OIHW
    return np.moveaxis(cols, 1, 3).reshape(-1, int(np.prod(cols.shape[1:2] + cols.shape[4:])))


def plan_weight_bits(graph: Graph, calibration_feeds: Feeds | Iterable[Feeds], budget_bytes: int, *,
                     widths: Sequence[int] = DEFAULT_WIDTHS, metric: str = "output",
                     observer: str = "minmax", fold_bn: bool = True) -> MixedPrecisionPlan:
    """Choose a weight width per Conv2d/Linear layer under a budget of packed weight bytes.

    Each layer's sensitivity at each width is the noise-to-signal ratio of its output
    ``X W`` (``metric="output"``, ``X`` its float inputs on the calibration data: im2col rows
    for a convolution, float activations so only the weights' error counts) or of its weights
    (``metric="weights"``), with the weights quantized symmetric per output channel like
    :func:`quantize_graph` does; :func:`qsim.quant.mixed.select_widths` then minimises the
    summed sensitivity with ``sum ceil(weights * bits / 8) <= budget_bytes`` exactly. A
    grouped convolution is measured on its weights (its product is not one matrix).

    Returns
    -------
    MixedPrecisionPlan
        ``plan.widths`` is the ``weight_bits`` mapping for :func:`quantize_graph`.
    """
    for b in widths:
        _check_bits(b, "each width")
    fold_bn = _check_bool(fold_bn, "fold_bn")
    prepared = fold_and_fuse(graph, fold_bn=fold_bn)
    gemms = [layer for layer in prepared.layers if isinstance(layer, _GEMM)]
    if not gemms:
        raise ConfigError(f"graph {graph.name!r} has no Conv2d or Linear layer to choose weight bits for")
    for layer in gemms:
        if layer.weight is None:
            raise layer._fail("has no weights (a shape-only graph cannot be quantized)")
    rows: dict[str, list[np.ndarray]] = {layer.name: [] for layer in gemms}
    if metric != "weights":
        for batch in _batches(graph, calibration_feeds):
            values = run(prepared, batch, keep=True).values
            for layer in gemms:
                if not (isinstance(layer, L.Conv2d) and layer.groups > 1):
                    rows[layer.name].append(_gemm_rows(layer, values[layer.inputs[0]]))
    specs = [LayerSpec(layer.name, layer.weight, channel_axis=1 if isinstance(layer, L.Linear) else 0,
                       activations=np.concatenate(rows[layer.name]) if rows[layer.name] else None)
             for layer in gemms]
    return plan_mixed_precision(specs, budget_bytes, widths, observer=observer,
                                metric="auto" if metric == "output" else metric)


def choose_weight_bits(graph: Graph, calibration_feeds: Feeds | Iterable[Feeds], budget_bytes: int,
                       **options: Any) -> dict[str, int]:
    """The per-layer weight bits of :func:`plan_weight_bits`, ready for
    ``quantize_graph(weight_bits=...)``."""
    return dict(plan_weight_bits(graph, calibration_feeds, budget_bytes, **options).widths)
