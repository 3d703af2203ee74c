"""Export of float IR graphs to ONNX, so that ONNX Runtime can run and quantize qsim's networks.

This module owns the mapping from the float layers of :mod:`qsim.nn.layers` to ONNX nodes
(:func:`export_onnx`). It is the way ONNX-Runtime-quantized versions of qsim's networks are
made: export the float graph, quantize it with ``onnxruntime.quantization.quantize_static``,
and read the result back with :mod:`qsim.nn.onnx_import`.

==================  ==========================================================================
layer               ONNX (default opset 13)
==================  ==========================================================================
``Conv2d``          ``Conv`` (``kernel_shape``, ``strides``, ``pads``, ``dilations``, ``group``)
``Linear``          ``Gemm`` with ``transB=1`` (B is the weight transposed to ``(out, in)``, as
                    PyTorch exports it) for a 2-D input; ``MatMul`` + ``Add`` otherwise
``MatMul``          ``MatMul``
``Add``             ``Add``
``Relu``, ``Clip``  ``Relu``; ``Clip`` with ``min``/``max`` initializers (an infinite bound is an
                    omitted input)
fused activation    a ``Relu`` or ``Clip`` node after the ``Conv``/``Gemm``/``Add``
``MaxPool``         ``MaxPool`` (``ceil_mode``, ``dilations``)
``AvgPool``         ``AveragePool`` (``count_include_pad``; dilations need opset 19)
``GlobalAvgPool``   ``GlobalAveragePool``
``Flatten``         ``Flatten``; ``Reshape``: ``Reshape`` with an int64 shape initializer
``Concat``          ``Concat``; ``Transpose``: ``Transpose``
``Softmax``         ``Softmax`` (opset 13 semantics: one axis)
``BatchNorm``       ``BatchNormalization``
==================  ==========================================================================

Quantized graphs (layers with quantization parameters, ``Quantize``/``Dequantize``) and the
transformer layers ``LayerNorm``/``Gelu`` are refused with a :class:`~qsim.errors.ConfigError`.
``onnx`` is imported inside the functions: it is an optional (test) dependency of qsim.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qsim.errors import ConfigError
from qsim.nn import layers as L
from qsim.nn.graph import Graph, Layer, TensorType

__all__ = ["export_onnx", "MIN_OPSET"]

#: Oldest opset written: Softmax's single-axis semantics and per-axis QuantizeLinear (which
#: ORT's per-channel quantization of the exported model needs) start at 13.
MIN_OPSET = 13


class _Writer:
    """Collects nodes and initializers; names initializers after the layer they belong to."""

    def __init__(self, opset: int) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> None:
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=name, **attrs))

    def activation(self, layer: Layer, activation: object, source: str, target: str) -> None:
        """The fused activation of ``layer`` as its own node from ``source`` to ``target``."""
        if activation == "relu":
            self.node("Relu", [source], [target], f"{layer.name}/relu")
        elif isinstance(activation, tuple) and len(activation) == 3 and activation[0] == "clip":
            self.clip(layer, float(activation[1]), float(activation[2]), source, target,
                      f"{layer.name}/clip")
        else:
            raise layer._fail(f"unknown activation {activation!r} (use None, 'relu' or ('clip', lo, hi))")

    def clip(self, layer: Layer, lo: float, hi: float, source: str, target: str, name: str) -> None:
        # An omitted optional input ("") is an unbounded side of the Clip.
        lo_name = self.constant(f"{name}.min", np.float32(lo)) if np.isfinite(lo) else ""
        hi_name = self.constant(f"{name}.max", np.float32(hi)) if np.isfinite(hi) else ""
        inputs = [source, lo_name, hi_name]
        while inputs[-1] == "":
            inputs.pop()
        self.node("Clip", inputs, [target], name)


def _float32(layer: Layer, value: np.ndarray | None, what: str) -> np.ndarray:
    if value is None:
        raise layer._fail(f"has no {what} (a shape-only graph cannot be exported)")
    return np.asarray(value, dtype=np.float32)


def _check_float(layer: Layer) -> None:
    if isinstance(layer, (L.Quantize, L.Dequantize)):
        raise layer._fail("is a quantization layer; export_onnx writes float graphs only")
    for attr in ("input_params", "weight_params", "output_params"):
        if getattr(layer, attr, None) is not None:
            raise layer._fail(f"has {attr}; export_onnx writes float graphs only (export the float "
                              f"graph and quantize it with onnxruntime.quantization)")


def _pool_attrs(layer: L._Pool) -> dict[str, Any]:
    return {"kernel_shape": list(layer.kernel), "strides": list(layer.strides),
            "pads": list(layer.pads), "ceil_mode": int(layer.ceil_mode)}


def _emit(w: _Writer, layer: Layer, ranks: dict[str, int]) -> None:
    ins, outs, name = list(layer.inputs), list(layer.outputs), layer.name
    activation = getattr(layer, "activation", None)
    # A layer with a fused activation writes its pre-activation value under a derived name.
    target = f"{outs[0]}/preact" if activation is not None else outs[0]
    if isinstance(layer, L.Conv2d):
        inputs = ins + [w.constant(f"{name}.weight", _float32(layer, layer.weight, "weights"))]
        if layer.bias is not None:
            inputs.append(w.constant(f"{name}.bias", _float32(layer, layer.bias, "bias")))
        w.node("Conv", inputs, [target], name, kernel_shape=list(layer.kernel),
               strides=list(layer.strides), pads=list(layer.pads), dilations=list(layer.dilations),
               group=layer.groups)
    elif isinstance(layer, L.Linear):
        weight = _float32(layer, layer.weight, "weights")
        if ranks[ins[0]] == 2:
            inputs = ins + [w.constant(f"{name}.weight", weight.T)]
            if layer.bias is not None:
                inputs.append(w.constant(f"{name}.bias", _float32(layer, layer.bias, "bias")))
            w.node("Gemm", inputs, [target], name, transB=1)
        elif layer.bias is None:
            w.node("MatMul", ins + [w.constant(f"{name}.weight", weight)], [target], name)
        else:
            product = f"{outs[0]}/matmul"
            w.node("MatMul", ins + [w.constant(f"{name}.weight", weight)], [product], name)
            w.node("Add", [product, w.constant(f"{name}.bias", _float32(layer, layer.bias, "bias"))],
                   [target], f"{name}/bias")
    elif isinstance(layer, L.MatMul):
        w.node("MatMul", ins, outs, name)
    elif isinstance(layer, L.Add):
        w.node("Add", ins, [target], name)
    elif isinstance(layer, L.Relu):
        w.node("Relu", ins, outs, name)
    elif isinstance(layer, L.Clip):
        w.clip(layer, layer.lo, layer.hi, ins[0], outs[0], name)
    elif isinstance(layer, L.MaxPool):
        attrs = _pool_attrs(layer)
        if layer.dilations != (1, 1):
            attrs["dilations"] = list(layer.dilations)
        w.node("MaxPool", ins, outs, name, **attrs)
    elif isinstance(layer, L.AvgPool):
        attrs = _pool_attrs(layer)
        attrs["count_include_pad"] = int(layer.count_include_pad)
        if layer.dilations != (1, 1):
            if w.opset < 19:
                raise layer._fail(f"AveragePool has dilations only from opset 19; export with "
                                  f"opset >= 19, not {w.opset}")
            attrs["dilations"] = list(layer.dilations)
        w.node("AveragePool", ins, outs, name, **attrs)
    elif isinstance(layer, L.GlobalAvgPool):
        w.node("GlobalAveragePool", ins, outs, name)
    elif isinstance(layer, L.Flatten):
        w.node("Flatten", ins, outs, name, axis=layer.axis)
    elif isinstance(layer, L.Reshape):
        shape = w.constant(f"{name}.shape", np.asarray(layer.shape, dtype=np.int64))
        w.node("Reshape", ins + [shape], outs, name)
    elif isinstance(layer, L.Concat):
        w.node("Concat", ins, outs, name, axis=layer.axis)
    elif isinstance(layer, L.Transpose):
        w.node("Transpose", ins, outs, name, perm=list(layer.perm))
    elif isinstance(layer, L.Softmax):
        w.node("Softmax", ins, outs, name, axis=layer.axis)
    elif isinstance(layer, L.BatchNorm):
        params = [w.constant(f"{name}.{attr}", _float32(layer, getattr(layer, attr), attr))
                  for attr in ("gamma", "beta", "mean", "var")]
        w.node("BatchNormalization", ins + params, outs, name, epsilon=float(layer.eps))
    else:
        raise layer._fail("has no ONNX export (supported: conv2d, linear, matmul, add, relu, clip, "
                          "maxpool, avgpool, globalavgpool, flatten, reshape, concat, transpose, "
                          "softmax, batchnorm)")
    if activation is not None:
        w.activation(layer, activation, target, outs[0])


def _value_info(helper: Any, name: str, t: TensorType | None) -> Any:
    from onnx import TensorProto

    dtype = TensorProto.FLOAT if t is None else helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
    shape = None if t is None else ["N" if d is None else d for d in t.shape]
    return helper.make_tensor_value_info(name, dtype, shape)


def export_onnx(graph: Graph, *, opset: int = MIN_OPSET) -> Any:
    """Write a float graph as an ONNX model.

    Parameters
    ----------
    graph : Graph
        A float graph with weights (see the module docstring for the layers). An unspecified
        batch dimension becomes the symbolic dimension ``"N"``.
    opset : int
        ONNX opset of the default domain, from :data:`MIN_OPSET` to the newest the installed
        ``onnx`` knows. The IR version is the oldest that supports it.

    Returns
    -------
    onnx.ModelProto
        Checked with ``onnx.checker.check_model``. Node names are the layer names (a fused
        activation adds a node ``<layer>/relu`` or ``<layer>/clip``), initializers are named
        ``<layer>.weight``, ``<layer>.bias``, ...; tensor names are the graph's.

    Raises
    ------
    ConfigError
        For a quantized graph, a layer without ONNX export or without weights, or an opset
        out of range.
    """
    import onnx
    from onnx import helper

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) \
            or not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"opset must be an int from {MIN_OPSET} to {newest}, not {opset!r}")
    for layer in graph.layers:
        _check_float(layer)
    for name, t in graph.inputs.items():
        if np.dtype(t.dtype).kind != "f":
            raise ConfigError(f"graph {graph.name!r}: input {name!r} is {t}; export_onnx writes float "
                              f"graphs only")
    # Ranks do not depend on the batch size; full shapes do when a Reshape bakes one in.
    ranks = {n: len(t.shape) for n, t in graph.infer(1).items()}
    try:
        types: dict[str, TensorType] | None = graph.infer()
    except ConfigError:
        types = None
    writer = _Writer(int(opset))
    for layer in graph.layers:
        _emit(writer, layer, ranks)
    inputs = [_value_info(helper, n, t) for n, t in graph.inputs.items()]
    outputs = [_value_info(helper, n, None if types is None else types[n]) for n in graph.outputs]
    body = helper.make_graph(writer.nodes, graph.name, inputs, outputs, writer.initializers)
    opsets = [helper.make_opsetid("", int(opset))]
    model = helper.make_model(body, opset_imports=opsets, producer_name="qsim",
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    return model
