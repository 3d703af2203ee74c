"""Import of ONNX models into the graph IR: float models, ONNX Runtime QOperator and QDQ models.

This module owns the translation of an ONNX file into a :class:`~qsim.nn.graph.Graph`: reading
and validating the file, the mapping of each supported operator onto IR layers (the table is in
``docs/onnx.md``), the recognition of QDQ groups (``DequantizeLinear -> op -> QuantizeLinear``)
that become quantized layers, and every error message about a model qsim cannot import.

Three kinds of model are imported:

* **float** models: each operator becomes its float layer (``Gemm``/``MatMul`` by a constant
  become :class:`~qsim.nn.layers.Linear` with ``transA``/``transB``/``alpha``/``beta`` resolved).
* **QOperator** models (``quantize_static(..., quant_format=QOperator)``): ``QLinearConv``,
  ``QLinearMatMul`` and ``com.microsoft`` ``QGemm``, ``QLinearAdd``, ``QLinearAveragePool``,
  ``QLinearGlobalAveragePool``, ``QLinearConcat`` become the quantized IR layers, which the
  engine runs with ONNX Runtime's kernels under the ``onnxruntime`` semantics.
* **QDQ** models (``quant_format=QDQ``, int8 or int4 weights): a float ``Conv``, ``Gemm``,
  ``MatMul``, ``Add``, ``AveragePool``, ``GlobalAveragePool`` or ``Concat`` whose activations
  come from ``DequantizeLinear`` and whose only consumer is a ``QuantizeLinear`` becomes the
  quantized layer (an optional ``Relu``/``Clip`` in between becomes the fused activation), as
  ONNX Runtime's QDQ transformer fuses them; ``MaxPool``, ``Flatten``, ``Reshape``,
  ``Transpose``, ``Relu`` and ``Clip`` between a DQ and a Q with the same parameters run on the
  integers. Anything else runs in float between a :class:`~qsim.nn.layers.Dequantize` and a
  :class:`~qsim.nn.layers.Quantize` layer, with the constant weights dequantized exactly as
  ``DequantizeLinear`` does. Int4 weights stay int4 values (int8 storage, ``int4`` format).

``onnx`` is imported inside the functions, so that ``qsim`` itself imports without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from qsim.errors import ConfigError
from qsim.nn import layers as L
from qsim.nn import onnx_ops as _onnx_ops
from qsim.nn.graph import Graph, Layer, TensorType
from qsim.numerics import IntFormat
from qsim.quant.ops import dequantize, quantize
from qsim.quant.params import QuantParams

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["load_onnx", "import_model", "SUPPORTED_OPS"]

_MS = "com.microsoft"

#: Operators qsim imports, by domain ("" is the default ONNX domain).
SUPPORTED_OPS: dict[str, tuple[str, ...]] = {
    "": ("Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "Conv",
         "ConvInteger", "DequantizeLinear", "Dropout", "DynamicQuantizeLinear", "Flatten", "Gemm",
         "GlobalAveragePool", "Identity", "MatMul", "MatMulInteger", "MaxPool", "QLinearConv",
         "QLinearMatMul", "QuantizeLinear", "Relu", "Reshape", "Softmax", "Transpose"),
    _MS: ("DequantizeLinear", "QGemm", "QLinearAdd", "QLinearAveragePool", "QLinearConcat",
          "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearMul", "QLinearReduceMean",
          "QLinearSigmoid", "QLinearSoftmax", "QuantizeLinear"),
}


#: Small operators run by :mod:`qsim.nn.onnx_ops` (folded when their inputs are constants).
ONNX_OPS: tuple[str, ...] = tuple(sorted(op for op in _onnx_ops.OPS if op not in SUPPORTED_OPS[""]))


def _supported_list() -> str:
    names = sorted(set(SUPPORTED_OPS[""]) | set(ONNX_OPS))
    names += [f"{_MS}.{op}" for op in SUPPORTED_OPS[_MS] if op not in SUPPORTED_OPS[""]]
    return ", ".join(names)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def load_onnx(source: str | os.PathLike | bytes | bytearray | memoryview | Any) -> Graph:
    """Read an ONNX model and translate it into a :class:`~qsim.nn.graph.Graph`.

    Parameters
    ----------
    source : path, bytes or onnx.ModelProto
        A file (external data next to it is loaded too), the serialized model, or a parsed one.

    Returns
    -------
    Graph
        Inputs with the model's shapes and element types (a symbolic batch dimension becomes
        ``None``), the layers in the model's order, the model's outputs by name. ``meta`` records
        ``format`` (``float``, ``qoperator`` or ``qdq``), the default-domain ``opset`` and, for
        quantized models, ``float_layers`` (compute layers left in float) and
        ``fused_qdq_groups`` (QDQ groups turned into quantized layers).

    Raises
    ------
    ConfigError
        An unreadable file (``cannot read PATH: reason``), a file that is not a valid ONNX model
        (``PATH is not a valid ONNX model: reason``), an unsupported operator or attribute, a
        missing initializer, or shapes that do not fit.
    """
    try:
        import onnx
    except ImportError:
        raise ConfigError("importing ONNX models needs the onnx package (pip install onnx)") from None

    if isinstance(source, onnx.ModelProto):
        return import_model(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = "the serialized model"
        try:
            model = onnx.load_model_from_string(bytes(source))
        except Exception as exc:  # protobuf's DecodeError and friends
            raise ConfigError(f"{label} is not a valid ONNX model: {_first_line(exc)}") from None
    elif isinstance(source, (str, os.PathLike)):
        label = os.fspath(source)
        if not os.path.exists(label):
            raise ConfigError(f"cannot read {label}: No such file or directory")
        if os.path.isdir(label):
            raise ConfigError(f"cannot read {label}: Is a directory")
        try:
            model = onnx.load(label)
        except OSError as exc:
            raise ConfigError(f"cannot read {label}: {exc.strerror or exc}") from None
        except Exception as exc:
            raise ConfigError(f"{label} is not a valid ONNX model: {_first_line(exc)}") from None
    else:
        raise ConfigError(f"load_onnx takes a path, bytes or an onnx.ModelProto, not "
                          f"{type(source).__name__}")
    return import_model(model, label=label)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def import_model(model: onnx.ModelProto, *, label: str = "the model") -> Graph:
    """Translate a parsed ONNX model (see :func:`load_onnx`); ``label`` names it in errors."""
    import onnx

    _check_defined(model, label)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ConfigError(f"{label} is not a valid ONNX model: {_first_line(exc)}") from None
    return _Importer(model).run()


def _check_defined(model: onnx.ModelProto, label: str) -> None:
    """Every node input must be a graph input, an initializer or an earlier node's output.

    Checked before ONNX's checker so that a missing initializer gets its own message.
    """
    graph = model.graph
    if not graph.node and not graph.output:
        raise ConfigError(f"{label} is not a valid ONNX model: it has no graph (no nodes and no "
                          f"outputs)")
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    defined |= {i.name for i in graph.sparse_initializer}
    everything = defined | {o for n in graph.node for o in n.output}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in everything:
                raise ConfigError(
                    f"node {_node_label(node, index)!r} ({node.op_type}) reads {name!r}, which is "
                    f"neither a graph input, an initializer nor the output of a node "
                    f"(missing initializer?)")
    for out in graph.output:
        if out.name not in everything:
            raise ConfigError(f"graph output {out.name!r} is neither a graph input, an initializer "
                              f"nor the output of a node")


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


# --------------------------------------------------------------------------------------------
# ONNX types
# --------------------------------------------------------------------------------------------

# TensorProto element types qsim reads (initializers, graph inputs, Q/DQ formats).
_FLOAT, _UINT8, _INT8, _UINT16, _INT16, _INT32, _INT64, _UINT4, _INT4 = 1, 2, 3, 4, 5, 6, 7, 21, 22
_FLOAT16, _UINT2, _INT2 = 10, 25, 26
_INT_FORMATS = {_UINT8: "uint8", _INT8: "int8", _UINT16: "uint16", _INT16: "int16",
                _INT32: "int32", _UINT4: "uint4", _INT4: "int4", _UINT2: "uint2", _INT2: "int2"}
#: Element types of graph inputs: (numpy dtype, narrower format held in it).
_INPUT_DTYPES = {_FLOAT: ("float32", None), _FLOAT16: ("float16", None), _UINT8: ("uint8", None),
                 _INT8: ("int8", None), _UINT16: ("uint16", None), _INT16: ("int16", None),
                 _INT32: ("int32", None), _UINT4: ("uint8", "uint4"), _INT4: ("int8", "int4"),
                 _UINT2: ("uint8", "uint2"), _INT2: ("int8", "int2")}
_INPUT_NAMES = "FLOAT, FLOAT16, UINT8, INT8, UINT16, INT16, INT32, UINT4, INT4, UINT2 and INT2"


def _type_name(elem_type: int) -> str:
    import onnx

    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return str(elem_type)


def _tensor_value(tensor: onnx.TensorProto) -> np.ndarray:
    """An initializer as numpy: int4/uint4/int2/uint2 unpacked to int8/uint8 storage, the rest
    as stored."""
    from onnx import numpy_helper

    value = numpy_helper.to_array(tensor)
    if tensor.data_type in (_INT4, _INT2):
        return np.asarray(value).astype(np.int8)
    if tensor.data_type in (_UINT4, _UINT2):
        return np.asarray(value).astype(np.uint8)
    return np.asarray(value)


# --------------------------------------------------------------------------------------------
# the importer
# --------------------------------------------------------------------------------------------

@dataclass
class _QSource:
    """The integer tensor a ``DequantizeLinear`` of an activation reads, with its parameters."""

    tensor: str
    params: QuantParams


class _NodeError(Exception):
    """Internal: a message about the node being imported (prefixed with its name)."""


_ACTIVATIONS = ("Relu", "Clip")
# Layer kinds that make a graph quantized (besides layers with output parameters).
_INTEGER_KINDS = {"quantize", "dequantize", "quantize_linear", "dequantize_linear",
                  "dynamic_quantize_linear", "matmul_integer", "conv_integer", "qlinear_matmul",
                  "qlinear_conv", "ort_contrib"}
# Layers that compute (not layout, not conversions): in a quantized model, the ones without
# output parameters run in float.
_COMPUTE = (L.Conv2d, L.Linear, L.MatMul, L.Add, L.AvgPool, L.GlobalAvgPool, L.Concat, L.Softmax,
            L.BatchNorm)


class _Importer:
    """One pass over the nodes in order, emitting layers; dead layers are dropped at the end."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.consts: dict[str, np.ndarray] = {}
        self.const_fmt: dict[str, IntFormat] = {}  # integer initializers' own formats (int4 ...)
        self.qconsts: dict[str, tuple[np.ndarray, QuantParams]] = {}  # DQ of a constant
        self.dq: dict[str, _QSource] = {}  # float output of DQ(activation) -> its source
        self.qparams: dict[str, QuantParams] = {}  # integer activation -> its parameters
        self.act_fmt: dict[str, IntFormat] = {}  # activations of a format narrower than dtype
        self.symbolic = False  # some graph input has a symbolic batch dimension
        self.alias: dict[str, str] = {}
        self.layers: list[Layer] = []
        self.producer: dict[str, Layer] = {}
        self.types: dict[str, TensorType] = {}
        self.inputs: dict[str, TensorType] = {}
        self.names: set[str] = set()
        self.skip: set[int] = set()  # nodes absorbed into a fused layer
        self.fused = 0
        self.kinds: set[str] = set()
        self.consumers: dict[str, list[int]] = {}
        self.outputs = [o.name for o in self.graph.output]
        for index, node in enumerate(self.graph.node):
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(index)

    # ---------------------------------------------------------------- driver

    def run(self) -> Graph:
        for init in self.graph.initializer:
            self.consts[init.name] = _tensor_value(init)
            if init.data_type in _INT_FORMATS:
                self.const_fmt[init.name] = IntFormat.parse(_INT_FORMATS[init.data_type])
        if len(self.graph.sparse_initializer):
            raise ConfigError("sparse initializers are not supported")
        self._graph_inputs()
        for index, node in enumerate(self.graph.node):
            if index in self.skip:
                continue
            self.index = index
            self.node = node
            self.label = _node_label(node, index)
            domain = node.domain if node.domain not in ("ai.onnx",) else ""
            op = node.op_type
            dedicated = domain in SUPPORTED_OPS and op in SUPPORTED_OPS[domain]
            generic = domain == "" and op in _onnx_ops.OPS
            if not dedicated and not generic:
                shown = op if domain == "" else f"{domain}.{op}"
                raise ConfigError(f"unsupported operator {shown!r} in node {self.label!r} "
                                  f"(supported: {_supported_list()})")
            if generic and self._foldable():
                handler: Callable[[], None] = self._fold
            elif dedicated:
                handler = getattr(self, f"_op_{op}")
            else:
                handler = self._onnx_op
            try:
                handler()
            except _NodeError as exc:
                raise ConfigError(f"node {self.label!r} ({op}): {exc}") from None
            except ConfigError as exc:
                text = str(exc)
                if text.startswith(("layer ", "node ", "graph ", "unsupported ")):
                    raise
                raise ConfigError(f"node {self.label!r} ({op}): {text}") from None
        return self._finish()

    def _graph_inputs(self) -> None:
        for value in self.graph.input:
            if value.name in self.consts:
                continue  # IR < 4 lists initializers among the inputs
            kind = value.type.WhichOneof("value")
            if kind != "tensor_type":
                raise ConfigError(f"graph input {value.name!r} is a {kind}, not a tensor")
            tensor = value.type.tensor_type
            dtype, fmt = _INPUT_DTYPES.get(tensor.elem_type, (None, None))
            if dtype is None:
                raise ConfigError(f"graph input {value.name!r} has element type "
                                  f"{_type_name(tensor.elem_type)}; qsim supports "
                                  f"{_INPUT_NAMES} inputs")
            if not tensor.HasField("shape"):
                raise ConfigError(f"graph input {value.name!r} has no shape")
            dims: list[int | None] = []
            for axis, dim in enumerate(tensor.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    dims.append(int(dim.dim_value))
                elif axis == 0:
                    dims.append(None)
                else:
                    what = dim.dim_param or "unknown"
                    raise ConfigError(f"graph input {value.name!r} has a symbolic dimension "
                                      f"{what!r} at axis {axis}; only the batch dimension "
                                      f"(axis 0) may be symbolic")
            t = TensorType(tuple(dims), dtype, fmt)
            if fmt is not None:
                self.act_fmt[value.name] = IntFormat.parse(fmt)
            self.inputs[value.name] = t
            self.symbolic = self.symbolic or bool(dims and dims[0] is None)
            # Shapes are tracked with a batch of 1 so that every layer can check its input.
            self.types[value.name] = t.with_batch(1) if dims and dims[0] is None else t

    def _finish(self) -> Graph:
        outputs = []
        renames: dict[str, str] = {}
        for name in self.outputs:
            resolved = self._resolve(name)
            if resolved in self.consts and resolved not in self.types:
                self._materialize(resolved)
            if resolved != name:
                if (resolved in self.producer and resolved not in self.outputs
                        and resolved not in renames):
                    renames[resolved] = name
                else:
                    raise ConfigError(f"graph output {name!r} is a copy of {resolved!r}, which qsim "
                                      f"cannot express as a separate tensor")
            outputs.append(name)
        layers = [self._renamed(layer, renames) for layer in self.layers] if renames else self.layers
        layers = _live(layers, outputs)
        name = self.graph.name or "onnx"
        kinds = {layer.kind for layer in layers}
        quantized = any(getattr(layer, "output_params", None) is not None
                        for layer in layers) or bool(kinds & _INTEGER_KINDS) \
            or "qoperator" in self.kinds
        if not quantized:
            fmt = "float"
        elif self.kinds & {"qoperator"}:
            fmt = "qoperator"
        else:
            fmt = "qdq"
        meta: dict[str, object] = {"source": "onnx", "format": fmt, "opset": self.opset}
        if quantized:
            meta["float_layers"] = [layer.name for layer in layers if isinstance(layer, _COMPUTE)
                                    and getattr(layer, "output_params", None) is None]
            meta["fused_qdq_groups"] = self.fused
        graph = Graph(name, dict(self.inputs), layers, outputs, meta)
        symbolic = any(t.shape and t.shape[0] is None for t in self.inputs.values())
        graph.infer(1 if symbolic else None)
        return graph

    @staticmethod
    def _renamed(layer: Layer, renames: dict[str, str]) -> Layer:
        layer.inputs = tuple(renames.get(t, t) for t in layer.inputs)
        layer.outputs = tuple(renames.get(t, t) for t in layer.outputs)
        return layer

    # ---------------------------------------------------------------- helpers

    def _fail(self, message: str) -> _NodeError:
        return _NodeError(message)

    def _resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def _in(self, i: int) -> str | None:
        """Resolved name of input ``i`` of the current node, ``None`` if absent or empty."""
        if i >= len(self.node.input) or not self.node.input[i]:
            return None
        return self._resolve(self.node.input[i])

    def _out(self, i: int = 0) -> str:
        return self.node.output[i]

    def _attrs(self) -> dict[str, Any]:
        from onnx import helper

        out = {}
        for a in self.node.attribute:
            value = helper.get_attribute_value(a)
            out[a.name] = value.decode() if isinstance(value, bytes) else value
        return out

    def _const(self, i: int, what: str, *, required: bool = True) -> np.ndarray | None:
        name = self._in(i)
        if name is None:
            if required:
                raise self._fail(f"needs input {i} ({what})")
            return None
        if name in self.consts:
            return self.consts[name]
        raise self._fail(f"{what} must be a constant (an initializer), but {name!r} is computed "
                         f"at run time")

    def _is_const(self, name: str | None) -> bool:
        return name is not None and name in self.consts

    def _act(self, i: int) -> str:
        """Input ``i`` as a tensor some layer (or a Constant layer) defines."""
        name = self._in(i)
        if name is None:
            raise self._fail(f"needs input {i}")
        if name not in self.types:
            if name in self.consts:
                self._materialize(name)
            else:  # pragma: no cover - _check_defined and the topological order rule it out
                raise self._fail(f"reads {name!r} before it is defined")
        return name

    def _materialize(self, name: str) -> None:
        """A Constant layer that outputs an initializer (or a folded constant)."""
        value = self.consts[name]
        if value.dtype.kind == "f" and value.dtype != np.float16:
            value = value.astype(np.float32)
        self._emit(L.Constant(self._unique(f"{name}_constant"), (), (name,), value=value))

    def _unique(self, base: str) -> str:
        name = base or "layer"
        n = 1
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        return name

    def _emit(self, layer: Layer, params: QuantParams | None = None) -> Layer:
        """Append ``layer``, infer its output types (which checks its inputs)."""
        self.names.add(layer.name)
        out = layer.infer([self.types[t] for t in layer.inputs])
        for name, t in zip(layer.outputs, out):
            self.types[name] = t
            self.producer[name] = layer
        if params is not None:
            for name in layer.outputs:
                self.qparams[name] = params
        self.layers.append(layer)
        return layer

    def _layer_name(self) -> str:
        return self._unique(self.label)

    def _ints(self, value: Any, name: str) -> tuple[int, ...]:
        return tuple(int(v) for v in value)

    def _dtype(self, name: str) -> str:
        return self.types[name].dtype

    def _is_int(self, name: str) -> bool:
        return np.dtype(self._dtype(name)).kind in "iu"

    def _format_of(self, zp_name: str | None, fallback: IntFormat) -> IntFormat:
        if zp_name is not None and zp_name in self.const_fmt:
            return self.const_fmt[zp_name]
        return fallback

    def _quant_params(self, scale_i: int, zp_i: int, fallback: IntFormat | None, *,
                      axis: int | None = None, block_size: int = 0,
                      what: str = "", half: bool = False) -> QuantParams:
        """Scale/zero point inputs of the current node as QuantParams (format from the zp type);
        ``half`` also accepts a float16 scale (QuantizeLinear, DequantizeLinear)."""
        scale = self._const(scale_i, f"{what}scale")
        zp_name = self._in(zp_i)
        zp = self._const(zp_i, f"{what}zero point", required=False)
        if scale.dtype != np.float32 and not (half and scale.dtype == np.float16):
            raise self._fail(f"{what}scale must be float32{' or float16' if half else ''}, not "
                             f"{scale.dtype}")
        if zp is not None and (zp.dtype.kind not in "iu" or zp_name not in self.const_fmt):
            raise self._fail(f"{what}zero point must be an 8-, 16- or 4-bit integer tensor (or "
                             f"int32 for a bias), not {zp.dtype}")
        fmt = self.const_fmt[zp_name] if zp is not None else fallback
        if fmt is None:
            raise self._fail(f"{what}zero point is missing, so its format is unknown")
        if zp is None:
            zp = np.zeros(scale.shape, np.int64)
        if block_size:
            return QuantParams(scale, zp, fmt, axis=axis, block_size=int(block_size))
        if scale.size == 1:
            return QuantParams(scale.reshape(()), zp.reshape(()), fmt)
        if scale.ndim != 1:
            raise self._fail(f"{what}scale of shape {scale.shape} is neither a scalar nor 1-D")
        return QuantParams(scale, zp.reshape(scale.shape), fmt, axis=axis)

    def _activation_params(self, scale_i: int, zp_i: int, tensor: str | None,
                           what: str) -> QuantParams:
        """Per-tensor parameters of a QOperator activation input or output."""
        fallback = IntFormat.parse(self._dtype(tensor)) if tensor is not None else None
        params = self._quant_params(scale_i, zp_i, fallback, what=what)
        if not params.per_tensor:
            raise self._fail(f"{what}scale must be per tensor (a scalar), not shape "
                             f"{params.scale.shape}")
        return params

    def _single_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The only node reading ``tensor``, if it is not also a graph output."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.outputs:
            return None
        return self.graph.node[users[0]]

    # ---------------------------------------------------------------- QDQ recognition

    def _quantize_after(self, tensor: str) -> tuple[onnx.NodeProto, QuantParams, list] | None:
        """A per-tensor QuantizeLinear consuming only ``tensor`` (optionally via Relu/Clip).

        Returns the Q node, its parameters and the Relu/Clip nodes in between (at most one).
        """
        node = self._single_consumer(tensor)
        between = []
        if node is not None and node.op_type in _ACTIVATIONS and node.domain in ("", "ai.onnx"):
            between.append(node)
            node = self._single_consumer(node.output[0])
        if node is None or node.op_type != "QuantizeLinear":
            return None
        params = self._q_node_params(node)
        if params is None or not params.per_tensor or params.fmt.bits > 8:
            return None
        return node, params, between

    def _q_node_params(self, node: onnx.NodeProto) -> QuantParams | None:
        """Parameters of a QuantizeLinear node (``None`` if they are not constants)."""
        from onnx import helper

        scale_name = self._resolve(node.input[1])
        zp_name = self._resolve(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale_name not in self.consts or (zp_name is not None and zp_name not in self.consts):
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("block_size", 0) or attrs.get("saturate", 1) != 1:
            return None
        scale = self.consts[scale_name]
        if scale.dtype != np.float32 or scale.size != 1:
            return None
        if zp_name is None:
            fmt = IntFormat.parse(_INT_FORMATS.get(attrs.get("output_dtype", 0) or _UINT8, "uint8"))
            zp = np.zeros((), np.int64)
        else:
            fmt = self.const_fmt.get(zp_name)
            zp = self.consts[zp_name]
            if fmt is None:
                return None
        return QuantParams(scale.reshape(()), zp.reshape(()), fmt)

    def _dq_source(self, name: str | None) -> _QSource | None:
        if name is None:
            return None
        source = self.dq.get(name)
        if source is None or not source.params.per_tensor or source.params.fmt.bits > 8 \
                or source.params.scale.dtype != np.float32:
            return None
        return source

    def _activation_of(self, between: list, params: QuantParams) -> tuple[object, bool]:
        """The fused activation for a Relu/Clip before a Q with ``params``; ``ok`` is False when
        the Clip bounds are not constants."""
        if not between:
            return None, True
        node = between[0]
        if node.op_type == "Relu":
            return "relu", True
        bounds = self._clip_bounds(node)
        if bounds is None:
            return None, False
        return ("clip", bounds[0], bounds[1]), True

    def _absorb(self, nodes: list) -> None:
        ids = {id(n) for n in nodes}
        for index, node in enumerate(self.graph.node):
            if id(node) in ids:
                self.skip.add(index)
        self.fused += 1

    def _int_source(self, name: str) -> tuple[str, QuantParams] | None:
        """An operand of a QDQ group: DQ of an activation, or DQ of a constant (a Constant layer
        of its integers)."""
        source = self._dq_source(name)
        if source is not None:
            return source.tensor, source.params
        if name in self.qconsts:
            values, params = self.qconsts[name]
            if not params.per_tensor or params.fmt.bits > 8 or params.scale.dtype != np.float32:
                return None
            int_name = f"{name}_int"
            if int_name not in self.types:
                self.consts[int_name] = values.astype(params.fmt.numpy_dtype())
                self._materialize(int_name)
            return int_name, params
        return None

    # ---------------------------------------------------------------- Q / DQ

    def _op_QuantizeLinear(self) -> None:
        attrs = self._attrs()
        x = self._in(0)
        if attrs.get("saturate", 1) != 1:
            raise self._fail("saturate=0 applies to float8 outputs only, which qsim does not support")
        out_dtype = attrs.get("output_dtype", 0)
        if out_dtype and out_dtype not in _INT_FORMATS:
            raise self._fail(f"output_dtype {_type_name(out_dtype)} is not supported")
        fallback = IntFormat.parse(_INT_FORMATS[out_dtype or _UINT8])
        axis = attrs.get("axis", 1)
        block = attrs.get("block_size", 0)
        if not self._constants(1, 2):
            self._dynamic_q_dq(L.QuantizeLinear, fallback, axis, block, quantize=True)
            return
        params = self._quant_params(1, 2, fallback, axis=axis, block_size=block, half=True)
        if self._is_const(x):
            values = quantize(self.consts[x].astype(np.float32), params, nan=params.fmt.min)
            self.consts[self._out()] = values.astype(params.fmt.numpy_dtype())
            self.const_fmt[self._out()] = params.fmt
            return
        x = self._act(0)
        if self._is_int(x):
            raise self._fail(f"input {x!r} is already an integer tensor ({self._dtype(x)})")
        self._emit(L.Quantize(self._layer_name(), (x,), (self._out(),), params=params), params)
        self._note_fmt(self._out(), params.fmt)

    def _op_DequantizeLinear(self) -> None:
        attrs = self._attrs()
        x = self._in(0)
        axis = attrs.get("axis", 1)
        block = attrs.get("block_size", 0)
        if not self._constants(1, 2):
            self._dynamic_q_dq(L.DequantizeLinear, None, axis, block, quantize=False)
            return
        if self._is_const(x):
            fmt = self.const_fmt.get(x)
            if fmt is None:
                raise self._fail(f"input {x!r} of type {self.consts[x].dtype} is not a quantized "
                                 f"integer type")
            params = self._quant_params(1, 2, fmt, axis=axis, block_size=block, half=True)
            self._check_output_dtype(params.scale.dtype)
            values = self.consts[x]
            try:
                real = dequantize(values, params)
            except ConfigError as exc:
                raise self._fail(f"cannot dequantize {x!r}: {exc}") from None
            self.consts[self._out()] = real.astype(params.scale.dtype)
            self.qconsts[self._out()] = (values, params)
            return
        x = self._act(0)
        if not self._is_int(x):
            raise self._fail(f"input {x!r} is not an integer tensor ({self._dtype(x)})")
        params = self._quant_params(1, 2, self._tensor_fmt(x), axis=axis, block_size=block,
                                    half=True)
        self._check_output_dtype(params.scale.dtype)
        self._emit(L.Dequantize(self._layer_name(), (x,), (self._out(),), params=params))
        self.dq[self._out()] = _QSource(x, params)

    def _check_output_dtype(self, scale_dtype: np.dtype) -> None:
        """DequantizeLinear's ``output_dtype`` (opset 23) must be the scale's own type."""
        out = self._attrs().get("output_dtype", 0)
        names = {_FLOAT: np.dtype(np.float32), _FLOAT16: np.dtype(np.float16)}
        if out and names.get(out) != np.dtype(scale_dtype):
            raise self._fail(f"output_dtype {_type_name(out)} differs from the scale's type "
                             f"{np.dtype(scale_dtype).name}, which is not supported")

    def _dynamic_q_dq(self, cls: type, fallback: IntFormat | None, axis: int, block: int, *,
                      quantize: bool) -> None:
        """QuantizeLinear/DequantizeLinear whose scale or zero point is a graph input or
        computed: a layer that reads them at run time."""
        x = self._act(0)
        scale = self._act(1)
        zp = self._act(2) if self._in(2) is not None else None
        if self._dtype(scale) not in ("float32", "float16"):
            raise self._fail(f"scale must be float32 or float16, not {self._dtype(scale)}")
        if zp is not None and not self._is_int(zp):
            raise self._fail(f"zero point must be an integer tensor, not {self._dtype(zp)}")
        names = (x, scale) if zp is None else (x, scale, zp)
        if quantize:
            if self._is_int(x):
                raise self._fail(f"input {x!r} is already an integer tensor ({self._dtype(x)})")
            fmt = self._tensor_fmt(zp) if zp is not None else fallback
            self._emit(cls(self._layer_name(), names, (self._out(),), fmt=fmt, axis=axis,
                           block_size=block))
            self._note_fmt(self._out(), fmt)
            return
        if not self._is_int(x):
            raise self._fail(f"input {x!r} is not an integer tensor ({self._dtype(x)})")
        fmt = self._tensor_fmt(x)
        if zp is not None and self._tensor_fmt(zp) != fmt:
            raise self._fail(f"zero point type {self._tensor_fmt(zp)} differs from the input's "
                             f"{fmt}")
        self._check_output_dtype(np.dtype(self._dtype(scale)))
        self._emit(cls(self._layer_name(), names, (self._out(),), fmt=fmt, axis=axis,
                       block_size=block, dtype=self._dtype(scale)))

    def _op_DynamicQuantizeLinear(self) -> None:
        self._qop()
        x = self._act(0)
        if self._dtype(x) != "float32":
            raise self._fail(f"input {x!r} must be float32, not {self._dtype(x)}")
        self._emit(L.DynamicQuantizeLinear(self._layer_name(), (x,), tuple(self.node.output)))

    # ---------------------------------------------------------------- operands read at run time

    def _constants(self, *positions: int) -> bool:
        """Whether every present input at ``positions`` is a constant."""
        return all(self._is_const(self._in(i)) for i in positions if self._in(i) is not None)

    def _note_fmt(self, name: str, fmt: IntFormat) -> None:
        if fmt.bits not in (8, 16, 32, 64):
            self.act_fmt[name] = fmt

    def _tensor_fmt(self, name: str) -> IntFormat:
        """The integer format of a tensor: int4/int2 where known, else its dtype's."""
        if name in self.act_fmt:
            return self.act_fmt[name]
        if name in self.const_fmt:
            return self.const_fmt[name]
        dtype = self.consts[name].dtype if name in self.consts and name not in self.types \
            else np.dtype(self._dtype(name))
        return IntFormat.parse(dtype.name)

    def _operand(self, i: int, zero_like: str | None = None) -> str:
        """Input ``i`` as a tensor; an omitted zero point becomes a constant 0 of ``zero_like``'s
        dtype."""
        if self._in(i) is not None:
            return self._act(i)
        if zero_like is None:
            raise self._fail(f"needs input {i}")
        name = self._unique_tensor(f"{self.label}_zero_point_{i}")
        self.consts[name] = np.zeros((), np.dtype(self._dtype(zero_like)))
        self._materialize(name)
        return name

    def _unique_tensor(self, base: str) -> str:
        taken = set(self.types) | set(self.consts) | set(self.consumers) | set(self.outputs)
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        return name

    def _integer_operands(self, *positions: int) -> None:
        for i in positions:
            name = self._in(i)
            if name is not None and self._dtype(self._act(i)) not in ("uint8", "int8"):
                raise self._fail(f"input {i} ({name!r}) must be uint8 or int8, not "
                                 f"{self._dtype(name)}")

    def _conv_node_attrs(self) -> dict[str, Any]:
        attrs = self._attrs()
        out: dict[str, Any] = {"group": int(attrs.get("group", 1)),
                               "auto_pad": attrs.get("auto_pad", "NOTSET") or "NOTSET"}
        for key in ("strides", "pads", "dilations", "kernel_shape"):
            if key in attrs:
                out[key] = tuple(int(v) for v in attrs[key])
        return out

    def _op_MatMulInteger(self) -> None:
        self._qop()
        a, b = self._act(0), self._act(1)
        self._integer_operands(0, 1, 2, 3)
        names = (a, b, self._operand(2, a), self._operand(3, b))
        self._emit(L.MatMulInteger(self._layer_name(), names, (self._out(),)))

    def _op_ConvInteger(self) -> None:
        self._qop()
        x, w = self._act(0), self._act(1)
        self._integer_operands(0, 1, 2, 3)
        names = (x, w, self._operand(2, x), self._operand(3, w))
        self._emit(L.ConvInteger(self._layer_name(), names, (self._out(),),
                                 **self._conv_node_attrs()))

    def _qlinear_fmt(self, zp_i: int, like: str) -> IntFormat:
        zp = self._in(zp_i)
        return self._tensor_fmt(zp) if zp is not None else self._tensor_fmt(like)

    def _generic_qlinear_matmul(self) -> None:
        names = tuple(self._act(i) for i in range(8))
        self._integer_operands(0, 2, 3, 5, 7)
        self._emit(L.QLinearMatMul(self._layer_name(), names, (self._out(),),
                                   fmt=self._qlinear_fmt(7, names[0])))

    def _generic_qlinear_conv(self) -> None:
        names = tuple(self._act(i) for i in range(8))
        self._integer_operands(0, 2, 3, 5, 7)
        if self._in(8) is not None:
            names += (self._act(8),)
        self._emit(L.QLinearConv(self._layer_name(), names, (self._out(),),
                                 fmt=self._qlinear_fmt(7, names[0]), **self._conv_node_attrs()))

    # ---------------------------------------------------------------- small ONNX operators

    def _foldable(self) -> bool:
        names = [self._resolve(n) for n in self.node.input if n]
        if self.node.op_type == "Shape":  # a static shape is a constant
            return all(n in self.consts or (n in self.types and not self.symbolic) for n in names)
        return all(n in self.consts for n in names)

    def _fold(self) -> None:
        """Evaluate a node whose inputs are all constants (qsim.nn.onnx_ops) at import."""
        args = []
        for i in range(len(self.node.input)):
            name = self._in(i)
            if name is None:
                args.append(None)
            elif name in self.consts:
                args.append(self.consts[name])
            else:  # Shape of a tensor with a static shape
                t = self.types[name]
                args.append(np.broadcast_to(np.zeros((), t.dtype), t.shape))
        try:
            with np.errstate(all="ignore"):
                outs = _onnx_ops.evaluate(self.node.op_type, args, self._attrs(), self.opset)
        except (ValueError, IndexError, TypeError) as exc:
            raise self._fail(f"cannot evaluate on its constant inputs: {exc}") from None
        for name, value in zip(self.node.output, outs):
            if name:
                self.consts[name] = np.asarray(value).copy(order="C")  # keeps 0-d
                if value.dtype.name in ("uint8", "int8", "uint16", "int16", "int32"):
                    self.const_fmt[name] = IntFormat.parse(value.dtype.name)

    def _onnx_op(self) -> None:
        """A small operator on activations: an OnnxOp layer the engine runs."""
        static = _onnx_ops.OPS[self.node.op_type][1]
        names, slots, constants = [], [], {}
        for i in range(len(self.node.input)):
            name = self._in(i)
            if name is None:
                continue
            if i in static:
                if name not in self.consts:
                    raise self._fail(f"input {i} ({name!r}) must be a constant (the output shape "
                                     f"depends on it), but it is computed at run time")
                constants[i] = self.consts[name]
                continue
            names.append(self._act(i))
            slots.append(i)
        self._emit(L.OnnxOp(self._layer_name(), tuple(names), tuple(o for o in self.node.output),
                            op=self.node.op_type, attrs=self._attrs(), slots=tuple(slots),
                            opset=self.opset, constants=constants))

    # ---------------------------------------------------------------- float / QDQ compute ops

    def _conv_attrs(self, weight_shape: tuple[int, ...], x: str) -> dict[str, Any]:
        attrs = self._attrs()
        if len(weight_shape) != 4:
            raise self._fail(f"only 2-D convolutions are supported, not a weight of shape "
                             f"{weight_shape}")
        kernel = tuple(weight_shape[2:])
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != kernel:
            raise self._fail(f"kernel_shape {list(attrs['kernel_shape'])} does not match the weight "
                             f"shape {weight_shape}")
        strides = self._ints(attrs.get("strides", (1, 1)), "strides")
        dilations = self._ints(attrs.get("dilations", (1, 1)), "dilations")
        pads = self._pads(attrs, kernel, strides, dilations, x)
        group = int(attrs.get("group", 1))
        x_type = self.types[x]
        if len(x_type.shape) != 4:
            raise self._fail(f"expects an NCHW input, got {x_type}")
        return dict(in_channels=int(weight_shape[1]) * group, out_channels=int(weight_shape[0]),
                    kernel=kernel, strides=strides, pads=pads, dilations=dilations, groups=group)

    def _pads(self, attrs: dict[str, Any], kernel: tuple[int, ...], strides: tuple[int, ...],
              dilations: tuple[int, ...], x: str) -> tuple[int, ...]:
        """Explicit (top, left, bottom, right) pads, with ``auto_pad`` resolved."""
        auto = attrs.get("auto_pad", "NOTSET")
        if auto in ("NOTSET", ""):
            return self._ints(attrs.get("pads", (0, 0, 0, 0)), "pads")
        if auto == "VALID":
            return (0, 0, 0, 0)
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            raise self._fail(f"auto_pad {auto!r} is not supported (NOTSET, VALID, SAME_UPPER, "
                             f"SAME_LOWER)")
        spatial = self.types[x].shape[2:]
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-size // s)
            total = (out - 1) * s + (k - 1) * d + 1 - size
            if total < 0:
                raise self._fail(f"auto_pad {auto!r} needs negative padding ({total}) for an input "
                                 f"of {size} with kernel {k} and stride {s}; give explicit pads")
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        return (begin[0], begin[1], end[0], end[1])

    def _weight_source(self, name: str | None) -> tuple[np.ndarray, QuantParams] | None:
        if name is None or name not in self.qconsts:
            return None
        values, params = self.qconsts[name]
        if params.block_size is not None or params.fmt.bits > 8 or params.scale.dtype != np.float32:
            return None
        return values, params

    def _bias_source(self, name: str | None, x_p: QuantParams, w_p: QuantParams,
                     count: int) -> tuple[bool, np.ndarray | None]:
        """The int32 bias of a QDQ group: (usable, values). Its scale must be x_s * w_s."""
        if name is None:
            return True, None
        if name not in self.qconsts:
            return False, None
        values, params = self.qconsts[name]
        if params.fmt.name != "int32" or np.any(params.zero_point != 0) or values.shape != (count,):
            return False, None
        expected = (np.float32(x_p.scale) * np.asarray(w_p.scale, np.float32)).astype(np.float32)
        if not np.allclose(np.broadcast_to(params.scale, (count,)),
                           np.broadcast_to(expected, (count,)), rtol=1e-6, atol=0):
            return False, None
        return True, values.astype(np.int32)

    def _op_Conv(self) -> None:
        x_name, w_name, b_name = self._in(0), self._in(1), self._in(2)
        w = self._const(1, "weight")
        out = self._out()
        x = self._act(0)
        spec = self._conv_attrs(tuple(w.shape), x)
        if self._fuse_conv(x_name, w_name, b_name, out, spec):
            return
        self._float_only(x)
        bias = self._const(2, "bias", required=False)
        self._emit(L.Conv2d(self._layer_name(), (x,), (out,), **spec,
                            weight=w.astype(np.float32),
                            bias=None if bias is None else bias.astype(np.float32)))

    def _fuse_conv(self, x_name, w_name, b_name, out, spec) -> bool:
        source = self._dq_source(x_name)
        weight = self._weight_source(w_name)
        after = self._quantize_after(out)
        if source is None or weight is None or after is None:
            return False
        w_values, w_p = weight
        if not (w_p.per_tensor or w_p.axis in (0, -4)):
            return False
        if not w_p.per_tensor:
            w_p = QuantParams(w_p.scale, w_p.zero_point, w_p.fmt, axis=0)
        ok, bias = self._bias_source(b_name, source.params, w_p, spec["out_channels"])
        q_node, y_p, between = after
        activation, act_ok = self._activation_of(between, y_p)
        if not ok or not act_ok:
            return False
        self._emit(L.Conv2d(self._layer_name(), (source.tensor,), (q_node.output[0],), **spec,
                            weight=w_values.astype(w_p.fmt.numpy_dtype()), bias=bias,
                            activation=activation, input_params=source.params,
                            weight_params=w_p, output_params=y_p), y_p)
        self._absorb([q_node, *between])
        return True

    def _op_Gemm(self) -> None:
        attrs = self._attrs()
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
        a_name, b_name, c_name = self._in(0), self._in(1), self._in(2)
        if not self._is_const(b_name):
            raise self._fail(f"B must be a constant (an initializer), but {b_name!r} is computed at "
                             f"run time")
        a = self._act(0)
        if len(self.types[a].shape) != 2:
            raise self._fail(f"expects a 2-D input A, got {self.types[a]}")
        b = self.consts[b_name]
        if b.ndim != 2:
            raise self._fail(f"B must be 2-D, not shape {b.shape}")
        weight_shape = b.T.shape if trans_b else b.shape
        k, n = int(weight_shape[0]), int(weight_shape[1])
        if trans_a:
            a = self._transpose(a, (1, 0))
        out = self._out()
        if not trans_a and self._fuse_gemm(a_name, b_name, c_name, out, alpha, beta, trans_b, k, n):
            return
        self._float_only(a)
        c = self._const(2, "C", required=False)
        bias = None
        if c is not None and beta != 0.0:
            bias = self._gemm_bias(c, n, np.float32(beta) * c.astype(np.float32))
        weight = (b.T if trans_b else b).astype(np.float32)
        if alpha != 1.0:
            weight = (np.float32(alpha) * weight).astype(np.float32)
        self._emit(L.Linear(self._layer_name(), (a,), (out,), in_features=k, out_features=n,
                            weight=np.ascontiguousarray(weight), bias=bias))

    def _gemm_bias(self, c: np.ndarray, n: int, value: np.ndarray) -> np.ndarray:
        if c.size == 1:
            return np.full(n, value.reshape(()), value.dtype)
        if c.shape in ((n,), (1, n)):
            return value.reshape(n)
        raise self._fail(f"C of shape {c.shape} is not a bias of the {n} outputs ((), ({n},) or "
                         f"(1, {n})); a per-row C is not supported")

    def _transpose(self, x: str, perm: tuple[int, ...]) -> str:
        out = self._unique(f"{x}_transposed")
        self._emit(L.Transpose(self._unique(f"{self.label}_transpose_a"), (x,), (out,), perm=perm),
                   self.qparams.get(x))
        return out

    def _fuse_gemm(self, a_name, b_name, c_name, out, alpha, beta, trans_b, k, n) -> bool:
        source = self._dq_source(a_name)
        weight = self._weight_source(b_name)
        after = self._quantize_after(out)
        if source is None or weight is None or after is None:
            return False
        w_values, w_p = weight
        if trans_b:
            w_values = w_values.T
        # The per-output-column axis is 0 of B when B is (N, K) (transB) and 1 when it is (K, N).
        column_axis = 0 if trans_b else 1
        if not w_p.per_tensor:
            if w_p.axis not in (column_axis, column_axis - 2):
                return False
            w_p = QuantParams(w_p.scale, w_p.zero_point, w_p.fmt, axis=1)
        x_p = source.params
        if c_name is not None and beta != 1.0:
            return False
        ok, bias = self._bias_source(c_name, x_p, w_p, n)
        q_node, y_p, between = after
        activation, act_ok = self._activation_of(between, y_p)
        if not ok or not act_ok:
            return False
        self._emit(self._quantized_linear(source.tensor, q_node.output[0], k, n, w_values, w_p,
                                          bias, x_p, y_p, alpha, activation), y_p)
        self._absorb([q_node, *between])
        return True

    def _quantized_linear(self, x: str, out: str, k: int, n: int, w_values: np.ndarray,
                          w_p: QuantParams, bias: np.ndarray | None, x_p: QuantParams,
                          y_p: QuantParams, alpha: float = 1.0,
                          activation: object = None) -> L.Linear:
        if alpha != 1.0:
            # QGemm's multiplier is f32(f32(f32(alpha * a_s) * b_s) / y_s): alpha belongs to the
            # input scale, which the engine uses for nothing but that multiplier.
            x_p = QuantParams(np.float32(np.float32(alpha) * np.float32(x_p.scale)),
                              x_p.zero_point, x_p.fmt)
        return L.Linear(self._layer_name(), (x,), (out,), in_features=k, out_features=n,
                        weight=np.ascontiguousarray(w_values.astype(w_p.fmt.numpy_dtype())),
                        bias=bias, activation=activation, input_params=x_p, weight_params=w_p,
                        output_params=y_p)

    def _op_MatMul(self) -> None:
        a_name, b_name = self._in(0), self._in(1)
        out = self._out()
        if self._is_const(b_name) and not self._is_const(a_name):
            b = self.consts[b_name]
            if b.ndim != 2:
                raise self._fail(f"a constant B must be 2-D, not shape {b.shape}")
            a = self._act(0)
            if len(self.types[a].shape) < 2:
                raise self._fail(f"expects an input A of rank 2 or more, got {self.types[a]}")
            k, n = int(b.shape[0]), int(b.shape[1])
            if self._fuse_gemm(a_name, b_name, None, out, 1.0, 1.0, False, k, n):
                return
            self._float_only(a)
            self._emit(L.Linear(self._layer_name(), (a,), (out,), in_features=k, out_features=n,
                                weight=b.astype(np.float32)))
            return
        if self._is_const(a_name):
            raise self._fail("a constant A times an activation B is not supported")
        if self._fuse_matmul_activations(a_name, b_name, out):
            return
        a, b = self._act(0), self._act(1)
        self._float_only(a)
        self._float_only(b)
        self._emit(L.MatMul(self._layer_name(), (a, b), (out,)))

    def _fuse_matmul_activations(self, a_name, b_name, out) -> bool:
        """DQ(a) x DQ(b) -> Q (attention scores and context) becomes a QLinearMatMul of the two
        integer activations, as ONNX Runtime's QDQ transformer fuses it."""
        a, b = self._dq_source(a_name), self._dq_source(b_name)
        after = self._quantize_after(out)
        if a is None or b is None or after is None or after[2]:
            return False
        q_node, y_p, _ = after
        if a.params.fmt != y_p.fmt:
            return False
        names = []
        for tensor, params in ((a.tensor, a.params), (b.tensor, b.params), (None, y_p)):
            if tensor is not None:
                names.append(tensor)
            names.append(self._constant_tensor(np.float32(params.scale), "scale"))
            names.append(self._constant_tensor(np.asarray(params.zero_point,
                                                          params.fmt.numpy_dtype()), "zero_point"))
        self._emit(L.QLinearMatMul(self._layer_name(), tuple(names), (q_node.output[0],),
                                   fmt=y_p.fmt), y_p)
        self._absorb([q_node])
        return True

    def _constant_tensor(self, value: np.ndarray, what: str) -> str:
        name = self._unique_tensor(f"{self.label}_{what}")
        self.consts[name] = np.asarray(value)
        if np.asarray(value).dtype.kind in "iu":
            self.const_fmt[name] = IntFormat.parse(np.asarray(value).dtype.name)
        self._materialize(name)
        return name

    def _op_Add(self) -> None:
        a_name, b_name = self._in(0), self._in(1)
        out = self._out()
        if self._fuse_add(a_name, b_name, out):
            return
        if self._is_const(a_name) != self._is_const(b_name):
            const_name, other = (a_name, b_name) if self._is_const(a_name) else (b_name, a_name)
            if self._fold_bias(other, self.consts[const_name], out):
                return
        a, b = self._act(0), self._act(1)
        for t in (a, b):
            if self._is_int(t):
                raise self._fail(f"input {t!r} is an integer tensor; a quantized Add needs "
                                 f"QLinearAdd or DequantizeLinear inputs")
        self._emit(L.Add(self._layer_name(), (a, b), (out,)))

    def _fold_bias(self, tensor: str, value: np.ndarray, out: str) -> bool:
        """Fold a constant addend into the bias of the float Linear/Conv2d producing ``tensor``."""
        layer = self.producer.get(tensor)
        if (not isinstance(layer, (L.Linear, L.Conv2d)) or layer.output_params is not None
                or layer.activation is not None or self._single_consumer(tensor) is None
                or value.dtype.kind != "f"):
            return False
        if isinstance(layer, L.Linear):
            n = layer.out_features
            rank = len(self.types[tensor].shape)
            if value.size != n or value.shape[-1:] != (n,) or value.ndim > rank:
                return False
        else:
            n = layer.out_channels
            if value.size != n or value.shape not in ((n, 1, 1), (1, n, 1, 1)):
                return False
        addend = value.astype(np.float32).reshape(n)
        layer.bias = addend if layer.bias is None else (layer.bias.astype(np.float32) + addend)
        layer.outputs = (out,)
        self.types[out] = self.types.pop(tensor)
        self.producer[out] = self.producer.pop(tensor)
        return True

    def _fuse_add(self, a_name, b_name, out) -> bool:
        if a_name not in self.dq and b_name not in self.dq:
            return False
        after = self._quantize_after(out)
        if after is None:
            return False
        a = self._int_source(a_name)
        b = self._int_source(b_name)
        if a is None or b is None:
            return False
        q_node, y_p, between = after
        activation, act_ok = self._activation_of(between, y_p)
        if not act_ok or a[1].fmt != y_p.fmt or b[1].fmt != y_p.fmt:
            return False
        self._emit(L.Add(self._layer_name(), (a[0], b[0]), (q_node.output[0],),
                         activation=activation, input_params=(a[1], b[1]), output_params=y_p), y_p)
        self._absorb([q_node, *between])
        return True

    def _fuse_unary(self, x_name: str | None, make: Callable[[str, str, QuantParams,
                                                                QuantParams], Layer],
                    *, same_params: bool) -> bool:
        """DQ -> op -> Q as one layer on the integers (``same_params``: only when DQ's and Q's
        parameters are equal, for the order-preserving ops)."""
        source = self._dq_source(x_name)
        if source is None:
            return False
        after = self._quantize_after(self._out())
        if after is None or after[2]:
            return False
        q_node, y_p, _ = after
        if source.params.fmt != y_p.fmt:
            return False
        if same_params and not _same_params(source.params, y_p):
            return False
        self._emit(make(source.tensor, q_node.output[0], source.params, y_p), y_p)
        self._absorb([q_node])
        return True

    # ---------------------------------------------------------------- activations

    def _clip_bounds(self, node: onnx.NodeProto) -> tuple[float, float] | None:
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if self.opset < 11:
            return (float(attrs.get("min", -np.finfo(np.float32).max)),
                    float(attrs.get("max", np.finfo(np.float32).max)))
        bounds = []
        for i, default in ((1, -np.inf), (2, np.inf)):
            name = self._resolve(node.input[i]) if len(node.input) > i and node.input[i] else None
            if name is None:
                bounds.append(default)
            elif name in self.consts and self.consts[name].size == 1:
                bounds.append(float(self.consts[name].reshape(())))
            else:
                return None
        return bounds[0], bounds[1]

    def _op_Relu(self) -> None:
        self._activation(lambda name, x, p: L.Relu(name, (x,), (self._out(),), output_params=p))

    def _op_Clip(self) -> None:
        bounds = self._clip_bounds(self.node)
        if bounds is None:  # bounds computed at run time
            self._onnx_op()
            return
        lo, hi = bounds
        self._activation(lambda name, x, p: L.Clip(name, (x,), (self._out(),), lo=lo, hi=hi,
                                                   output_params=p))

    def _activation(self, make: Callable[[str, str, QuantParams | None], Layer]) -> None:
        x_name = self._in(0)
        if self._fuse_unary(x_name, lambda x, out, p, q: self._renamed_out(make(self._layer_name(),
                                                                                  x, p), out),
                            same_params=True):
            return
        x = self._act(0)
        params = None
        if self._is_int(x):
            params = self.qparams.get(x)
            if params is None:
                raise self._fail(f"input {x!r} is an integer tensor without known quantization "
                                 f"parameters")
        self._emit(make(self._layer_name(), x, params), params)

    @staticmethod
    def _renamed_out(layer: Layer, out: str) -> Layer:
        layer.outputs = (out,)
        return layer

    # ---------------------------------------------------------------- pools

    def _pool_spec(self, x: str, *, dilations_ok: bool) -> dict[str, Any]:
        attrs = self._attrs()
        if "kernel_shape" not in attrs:
            raise self._fail("needs kernel_shape")
        kernel = self._ints(attrs["kernel_shape"], "kernel_shape")
        if len(kernel) != 2:
            raise self._fail(f"only 2-D pooling is supported, not kernel_shape {list(kernel)}")
        strides = self._ints(attrs.get("strides", (1, 1)), "strides")
        dilations = self._ints(attrs.get("dilations", (1, 1)), "dilations")
        if not dilations_ok and dilations != (1, 1):
            raise self._fail(f"dilations {list(dilations)} are not supported")
        if len(self.types[x].shape) != 4:
            raise self._fail(f"expects an NCHW input, got {self.types[x]}")
        auto = attrs.get("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER") and dilations != (1, 1):
            raise self._fail(f"auto_pad {auto!r} with dilations is not supported; give explicit pads")
        pads = self._pads(attrs, kernel, strides, dilations, x)
        return dict(kernel=kernel, strides=strides, pads=pads, dilations=dilations,
                    ceil_mode=bool(attrs.get("ceil_mode", 0)))

    def _op_MaxPool(self) -> None:
        if len(self.node.output) > 1 and self.node.output[1]:
            raise self._fail("the Indices output is not supported")
        x = self._act(0)
        spec = self._pool_spec(x, dilations_ok=True)
        if self._fuse_unary(self._in(0), lambda x, out, p, q: L.MaxPool(self._layer_name(), (x,),
                                                                        (out,), **spec),
                            same_params=True):
            return
        self._emit(L.MaxPool(self._layer_name(), (x,), (self._out(),), **spec), self.qparams.get(x))

    def _op_AveragePool(self) -> None:
        x = self._act(0)
        spec = self._pool_spec(x, dilations_ok=False)
        include = bool(self._attrs().get("count_include_pad", 0))
        if self._fuse_unary(self._in(0), lambda x, out, p, q: L.AvgPool(
                self._layer_name(), (x,), (out,), **spec, count_include_pad=include,
                input_params=p, output_params=q), same_params=False):
            return
        self._float_only(x)
        self._emit(L.AvgPool(self._layer_name(), (x,), (self._out(),), **spec,
                             count_include_pad=include))

    def _op_GlobalAveragePool(self) -> None:
        x = self._act(0)
        if len(self.types[x].shape) != 4:
            raise self._fail(f"expects an NCHW input, got {self.types[x]}")
        if self._fuse_unary(self._in(0), lambda x, out, p, q: L.GlobalAvgPool(
                self._layer_name(), (x,), (out,), input_params=p, output_params=q),
                same_params=False):
            return
        self._float_only(x)
        self._emit(L.GlobalAvgPool(self._layer_name(), (x,), (self._out(),)))

    def _float_only(self, x: str) -> None:
        if self._is_int(x):
            raise self._fail(f"input {x!r} is an integer tensor ({self._dtype(x)}); the float "
                             f"operator needs a DequantizeLinear first")

    # ---------------------------------------------------------------- layout

    def _op_Flatten(self) -> None:
        axis = int(self._attrs().get("axis", 1))
        self._layout(lambda x, out: L.Flatten(self._layer_name(), (x,), (out,), axis=axis))

    def _op_Reshape(self) -> None:
        if int(self._attrs().get("allowzero", 0)):
            shape = self._const(1, "shape")
            if np.any(shape == 0):
                raise self._fail("allowzero=1 with a 0 in the shape is not supported")
        shape = self._const(1, "shape")
        if shape.dtype.kind not in "iu" or shape.ndim != 1:
            raise self._fail(f"shape must be a 1-D integer tensor, not {shape.dtype} {shape.shape}")
        target = tuple(int(v) for v in shape)
        x = self._act(0)
        dims = self.types[x].shape
        # (0, -1) and (-1, prod(rest)) flatten every batch alike: keep them batch-agnostic.
        rest = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) >= 1 else 1
        if len(dims) >= 2 and target in ((0, -1), (-1, rest), (0, rest)):
            self._layout(lambda x, out: L.Flatten(self._layer_name(), (x,), (out,), axis=1))
            return
        self._layout(lambda x, out: L.Reshape(self._layer_name(), (x,), (out,), shape=target))

    def _op_Transpose(self) -> None:
        x = self._act(0)
        perm = self._attrs().get("perm")
        perm = tuple(int(p) for p in perm) if perm is not None else \
            tuple(reversed(range(len(self.types[x].shape))))
        self._layout(lambda x, out: L.Transpose(self._layer_name(), (x,), (out,), perm=perm))

    def _layout(self, make: Callable[[str, str], Layer]) -> None:
        x_name = self._in(0)
        if self._fuse_unary(x_name, lambda x, out, p, q: make(x, out), same_params=True):
            return
        x = self._act(0)
        self._emit(make(x, self._out()), self.qparams.get(x))

    def _op_Concat(self) -> None:
        if "axis" not in self._attrs():
            raise self._fail("needs an axis")
        axis = int(self._attrs()["axis"])
        names = [self._in(i) for i in range(len(self.node.input))]
        out = self._out()
        after = self._quantize_after(out)
        if after is not None and not after[2] and any(n in self.dq for n in names):
            sources = [self._int_source(n) for n in names]
            q_node, y_p, _ = after
            if all(s is not None and s[1].fmt == y_p.fmt for s in sources):
                self._emit(L.Concat(self._layer_name(), tuple(s[0] for s in sources),
                                    (q_node.output[0],), axis=axis,
                                    input_params=tuple(s[1] for s in sources), output_params=y_p),
                           y_p)
                self._absorb([q_node])
                return
        inputs = tuple(self._act(i) for i in range(len(self.node.input)))
        for t in inputs:
            self._float_only(t)
        self._emit(L.Concat(self._layer_name(), inputs, (out,), axis=axis))

    # ---------------------------------------------------------------- float-only ops

    def _op_Softmax(self) -> None:
        x = self._act(0)
        rank = len(self.types[x].shape)
        axis = int(self._attrs().get("axis", -1 if self.opset >= 13 else 1))
        if self._fuse_softmax(axis):
            return
        self._float_only(x)
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis < rank:
            raise self._fail(f"axis {axis} is out of range for {self.types[x]}")
        if self.opset < 13 and axis != rank - 1:
            raise self._fail(f"opset {self.opset} Softmax over axes {axis}.. of a rank-{rank} "
                             f"tensor (flattened to 2-D) is not supported; only the last axis")
        self._emit(L.Softmax(self._layer_name(), (x,), (self._out(),), axis=axis))

    def _fuse_softmax(self, axis: int) -> bool:
        """DQ -> Softmax -> Q becomes ORT's QLinearSoftmax, as ONNX Runtime's QDQ transformer
        rewrites it (8-bit, the same type in and out)."""
        source = self._dq_source(self._in(0))
        after = self._quantize_after(self._out())
        if source is None or after is None or after[2]:
            return False
        q_node, y_p, _ = after
        if source.params.fmt != y_p.fmt or y_p.fmt.name not in ("uint8", "int8"):
            return False
        dtype = y_p.fmt.numpy_dtype()
        constants = {1: np.float32(source.params.scale), 2: np.asarray(source.params.zero_point, dtype),
                     3: np.float32(y_p.scale), 4: np.asarray(y_p.zero_point, dtype)}
        self._emit(L.OnnxOp(self._layer_name(), (source.tensor,), (q_node.output[0],),
                            op="QLinearSoftmax", attrs={"axis": axis, "opset": self.opset},
                            slots=(0,), opset=self.opset, constants=constants), y_p)
        self._absorb([q_node])
        return True

    def _op_BatchNormalization(self) -> None:
        attrs = self._attrs()
        if int(attrs.get("training_mode", 0)) or any(o for o in self.node.output[1:]):
            raise self._fail("training mode (running statistics outputs) is not supported")
        if int(attrs.get("spatial", 1)) != 1:
            raise self._fail("spatial=0 is not supported")
        x = self._act(0)
        self._float_only(x)
        values = [self._const(i, what) for i, what in ((1, "scale"), (2, "B"), (3, "mean"),
                                                       (4, "var"))]
        channels = self.types[x].shape[1] if len(self.types[x].shape) > 1 else None
        for v, what in zip(values, ("scale", "B", "mean", "var")):
            if v.shape != (channels,):
                raise self._fail(f"{what} has shape {v.shape}, expected ({channels},)")
        gamma, beta, mean, var = (v.astype(np.float32) for v in values)
        self._emit(L.BatchNorm(self._layer_name(), (x,), (self._out(),), gamma=gamma, beta=beta,
                               mean=mean, var=var, eps=float(attrs.get("epsilon", 1e-5))))

    # ---------------------------------------------------------------- no-ops and constants

    def _op_Identity(self) -> None:
        self._alias()

    def _op_Dropout(self) -> None:
        if len(self.node.output) > 1 and self.node.output[1] and \
                self.consumers.get(self.node.output[1]):
            raise self._fail("the mask output is not supported")
        if self.opset < 7 and not int(self._attrs().get("is_test", 0)):
            raise self._fail("is_test=0 (training) is not supported")
        mode = self._in(2)
        if mode is not None:
            if not self._is_const(mode) or bool(self.consts[mode].reshape(())):
                raise self._fail("training_mode must be a constant false")
        self._alias()

    def _alias(self) -> None:
        source = self._in(0)
        if source is None:
            raise self._fail("needs an input")
        self.alias[self._out()] = source

    def _op_Constant(self) -> None:
        from onnx import helper

        attr = self.node.attribute[0] if len(self.node.attribute) == 1 else None
        if attr is None:
            raise self._fail("must have exactly one value attribute")
        if attr.name == "value":
            self.consts[self._out()] = _tensor_value(attr.t)
            if attr.t.data_type in _INT_FORMATS:
                self.const_fmt[self._out()] = IntFormat.parse(_INT_FORMATS[attr.t.data_type])
            return
        value = helper.get_attribute_value(attr)
        kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                 "value_ints": np.int64}
        if attr.name not in kinds:
            raise self._fail(f"a Constant with {attr.name} is not supported")
        self.consts[self._out()] = np.asarray(value, dtype=kinds[attr.name])

    # ---------------------------------------------------------------- QOperator ops

    def _qop(self) -> None:
        self.kinds.add("qoperator")

    def _static_qlinear(self, weight_i: int, rank: int) -> bool:
        """Whether a QLinearConv/QLinearMatMul has constant float32 parameters and a constant
        weight of ``rank`` dimensions (the quantized Conv2d/Linear layers); otherwise the
        operator runs with its operands read at run time."""
        if not self._constants(1, 2, 3, 4, 5, 6, 7, 8):
            return False
        if self.consts[self._in(weight_i)].ndim != rank:
            return False
        scales = [self.consts[self._in(i)] for i in (1, 4, 6)]
        return all(s.dtype == np.float32 for s in scales) and \
            len(self.types.get(self._in(0), TensorType(())).shape) in ((4,) if rank == 4 else
                                                                       range(2, 99))

    def _op_QLinearConv(self) -> None:
        self._qop()
        if not self._static_qlinear(3, 4):
            self._generic_qlinear_conv()
            return
        x = self._act(0)
        x_p = self._activation_params(1, 2, x, "x_")
        w = self._const(3, "weight")
        w_fmt = self._format_of(self._in(3), IntFormat.parse(w.dtype.name)) \
            if w.dtype.kind in "iu" else None
        if w_fmt is None:
            raise self._fail(f"weight must be an integer tensor, not {w.dtype}")
        w_p = self._quant_params(4, 5, w_fmt, axis=0, what="w_")
        y_fmt = self._format_of(self._in(7), IntFormat.parse(self._dtype(x)))
        y_p = self._quant_params(6, 7, y_fmt, what="y_")
        if not y_p.per_tensor:
            raise self._fail("y_scale must be per tensor")
        bias = self._const(8, "bias", required=False)
        if bias is not None and bias.dtype != np.int32:
            raise self._fail(f"bias must be int32, not {bias.dtype}")
        spec = self._conv_attrs(tuple(w.shape), x)
        self._emit(L.Conv2d(self._layer_name(), (x,), (self._out(),), **spec, weight=w,
                            bias=bias, input_params=x_p, weight_params=w_p, output_params=y_p),
                   y_p)

    def _op_QLinearMatMul(self) -> None:
        self._qop()
        if not self._static_qlinear(3, 2):
            self._generic_qlinear_matmul()
            return
        a = self._act(0)
        a_p = self._activation_params(1, 2, a, "a_")
        b = self.consts[self._in(3)]
        if b.ndim != 2:
            raise self._fail(f"B must be 2-D, not shape {b.shape}")
        b_p = self._quant_params(4, 5, self._format_of(self._in(3), IntFormat.parse(b.dtype.name)),
                                 axis=1, what="b_")
        y_p = self._quant_params(6, 7, self._format_of(self._in(7), IntFormat.parse(self._dtype(a))),
                                 what="y_")
        if len(self.types[a].shape) < 2:
            raise self._fail(f"expects an input A of rank 2 or more, got {self.types[a]}")
        k, n = int(b.shape[0]), int(b.shape[1])
        self._emit(self._quantized_linear(a, self._out(), k, n, b, b_p, None, a_p, y_p), y_p)

    def _op_QGemm(self) -> None:
        self._qop()
        attrs = self._attrs()
        alpha = float(attrs.get("alpha", 1.0))
        trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
        if self._in(7) is None:
            raise self._fail("a QGemm without y_scale (float output) is not supported")
        if not self._is_const(self._in(3)):
            raise self._fail("B must be a constant (an initializer)")
        a = self._act(0)
        if len(self.types[a].shape) != 2:
            raise self._fail(f"expects a 2-D input A, got {self.types[a]}")
        a_p = self._activation_params(1, 2, a, "a_")
        b = self.consts[self._in(3)]
        if b.ndim != 2:
            raise self._fail(f"B must be 2-D, not shape {b.shape}")
        b_fmt = self._format_of(self._in(3), IntFormat.parse(b.dtype.name))
        b_p = self._quant_params(4, 5, b_fmt, axis=1, what="b_")
        y_p = self._quant_params(7, 8, self._format_of(self._in(8), IntFormat.parse(self._dtype(a))),
                                 what="y_")
        weight = b.T if trans_b else b
        k, n = int(weight.shape[0]), int(weight.shape[1])
        c = self._const(6, "C", required=False)
        bias = None
        if c is not None:
            if c.dtype != np.int32:
                raise self._fail(f"C must be int32, not {c.dtype}")
            bias = self._gemm_bias(c, n, c).astype(np.int32)
        if trans_a:
            a = self._transpose(a, (1, 0))
        self._emit(self._quantized_linear(a, self._out(), k, n, weight, b_p, bias, a_p, y_p, alpha),
                   y_p)

    def _op_QLinearAdd(self) -> None:
        self._qop()
        a, b = self._act(0), self._act(3)
        a_p = self._activation_params(1, 2, a, "A_")
        b_p = self._activation_params(4, 5, b, "B_")
        y_p = self._quant_params(6, 7, self._format_of(self._in(7), IntFormat.parse(self._dtype(a))),
                                 what="C_")
        self._emit(L.Add(self._layer_name(), (a, b), (self._out(),), input_params=(a_p, b_p),
                         output_params=y_p), y_p)

    def _ort_contrib(self, required: tuple[int, ...], optional: tuple[int, ...], **kw) -> None:
        self._qop()
        names, slots = [], []
        for i in sorted(required + optional):
            if self._in(i) is None:
                if i in required:
                    raise self._fail(f"needs input {i}")
                continue
            names.append(self._act(i))
            slots.append(i)
        self._emit(L.OrtContribOp(self._layer_name(), tuple(names), (self._out(),),
                                  op=self.node.op_type, slots=tuple(slots), **kw))

    def _op_QLinearMul(self) -> None:
        self._ort_contrib((0, 1, 3, 4, 6), (2, 5, 7))

    def _op_QLinearSigmoid(self) -> None:
        self._ort_contrib((0, 1, 3), (2, 4))

    def _op_QLinearLeakyRelu(self) -> None:
        self._ort_contrib((0, 1, 3), (2, 4), alpha=float(self._attrs().get("alpha", 0.01)))

    def _contrib_onnx_op(self, required: tuple[int, ...], optional: tuple[int, ...]) -> None:
        """A com.microsoft operator run by qsim.nn.onnx_ops (an OnnxOp layer): constant inputs
        (scales, zero points) are stored in the layer, the others are read at run time."""
        self._qop()
        names, slots, constants = [], [], {}
        for i in sorted(required + optional):
            name = self._in(i)
            if name is None:
                if i in required:
                    raise self._fail(f"needs input {i}")
                continue
            if i > 0 and name in self.consts:
                constants[i] = self.consts[name]
                continue
            names.append(self._act(i))
            slots.append(i)
        if self._dtype(names[0]) not in ("uint8", "int8"):
            raise self._fail(f"input {names[0]!r} must be uint8 or int8, not {self._dtype(names[0])}")
        self._emit(L.OnnxOp(self._layer_name(), tuple(names), (self._out(),), op=self.node.op_type,
                            attrs=self._attrs(), slots=tuple(slots), opset=self.opset,
                            constants=constants))

    def _op_QLinearSoftmax(self) -> None:
        if "opset" not in self._attrs():
            raise self._fail("needs the opset attribute")
        self._contrib_onnx_op((0, 1, 3), (2, 4))

    def _op_QLinearReduceMean(self) -> None:
        attrs = self._attrs()
        if "axes" not in attrs or "keepdims" not in attrs:
            raise self._fail("needs the axes and keepdims attributes")
        self._contrib_onnx_op((0, 1, 3), (2, 4))

    def _check_channels_last(self) -> None:
        if int(self._attrs().get("channels_last", 0)):
            raise self._fail("channels_last=1 (NHWC) is not supported")

    def _op_QLinearGlobalAveragePool(self) -> None:
        self._qop()
        self._check_channels_last()
        x = self._act(0)
        x_p = self._activation_params(1, 2, x, "x_")
        y_p = self._quant_params(3, 4, self._format_of(self._in(4), IntFormat.parse(self._dtype(x))),
                                 what="y_")
        self._emit(L.GlobalAvgPool(self._layer_name(), (x,), (self._out(),), input_params=x_p,
                                   output_params=y_p), y_p)

    def _op_QLinearAveragePool(self) -> None:
        self._qop()
        self._check_channels_last()
        x = self._act(0)
        x_p = self._activation_params(1, 2, x, "x_")
        y_p = self._quant_params(3, 4, self._format_of(self._in(4), IntFormat.parse(self._dtype(x))),
                                 what="y_")
        spec = self._pool_spec(x, dilations_ok=False)
        include = bool(self._attrs().get("count_include_pad", 0))
        self._emit(L.AvgPool(self._layer_name(), (x,), (self._out(),), **spec,
                             count_include_pad=include, input_params=x_p, output_params=y_p), y_p)

    def _op_QLinearConcat(self) -> None:
        self._qop()
        if "axis" not in self._attrs():
            raise self._fail("needs an axis")
        axis = int(self._attrs()["axis"])
        count = len(self.node.input) - 2
        if count < 1 or count % 3:
            raise self._fail(f"expects y_scale, y_zero_point and (x, x_scale, x_zero_point) "
                             f"triples, not {len(self.node.input)} inputs")
        inputs, params = [], []
        for i in range(2, len(self.node.input), 3):
            x = self._act(i)
            inputs.append(x)
            params.append(self._activation_params(i + 1, i + 2, x, f"input {(i - 2) // 3} "))
        y_p = self._quant_params(0, 1, self._format_of(self._in(1),
                                                        IntFormat.parse(self._dtype(inputs[0]))),
                                 what="y_")
        self._emit(L.Concat(self._layer_name(), tuple(inputs), (self._out(),), axis=axis,
                            input_params=tuple(params), output_params=y_p), y_p)


def _same_params(a: QuantParams, b: QuantParams) -> bool:
    return (a.fmt == b.fmt and a.per_tensor and b.per_tensor
            and np.float32(a.scale) == np.float32(b.scale)
            and int(a.zero_point) == int(b.zero_point))


def _live(layers: list[Layer], outputs: list[str]) -> list[Layer]:
    """Drop layers whose outputs nothing reads (DequantizeLinear nodes a fused group bypassed)."""
    needed = set(outputs)
    keep = []
    for layer in reversed(layers):
        if any(o in needed for o in layer.outputs):
            keep.append(layer)
            needed.update(layer.inputs)
    return keep[::-1]
