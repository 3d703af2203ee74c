"""TFLite import: an int8 ``.tflite`` flatbuffer into qsim's graph IR.

The flatbuffer is read with the schema bindings of the ``tflite`` package (generated from
TFLite's ``schema.fbs``). Tensors are NHWC in TFLite and NCHW in the IR: a 4-D graph input
keeps its NHWC shape and name and is transposed into the IR's layout, every 4-D activation
inside the graph is held NCHW (under the name ``NAME.nchw``), and a 4-D graph output is
transposed back to NHWC under its own name, so inputs and outputs are exactly the model's.
Convolution weights ``(O, KH, KW, I)`` become ``(O, I, KH, KW)``, depthwise weights
``(1, KH, KW, C*m)`` become a grouped convolution ``(C*m, 1, KH, KW)``, fully connected
weights ``(O, I)`` become ``(I, O)``; axes of ``CONCATENATION``, ``MEAN`` and ``PAD`` are
mapped to the IR's layout, and ``RESHAPE``/``FULLY_CONNECTED`` of a 4-D tensor flatten it in
NHWC order, as TFLite does.

``graph.meta["format"]`` is ``"tflite"``; ``graph.meta["tflite_ops"]`` maps each IR layer to
the TFLite operator it came from (``FULLY_CONNECTED``, ``CONV_2D``, ``DEPTHWISE_CONV_2D``...),
which the engine's ``litert*`` semantics use to pick each kernel's arithmetic.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from qsim.errors import ConfigError
from qsim.nn import layers as L
from qsim.nn.graph import Graph, TensorType
from qsim.quant.params import QuantParams

__all__ = ["load_tflite", "is_tflite", "SUPPORTED_OPS"]

#: TFLite builtin operators qsim imports.
SUPPORTED_OPS = ("ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D",
                 "DEQUANTIZE", "FULLY_CONNECTED", "MAX_POOL_2D", "MEAN", "MUL", "PAD", "PADV2",
                 "QUANTIZE", "RELU", "RELU6", "RESHAPE", "SOFTMAX")

_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16",
           9: "int8", 10: "float64", 15: "uint32", 16: "uint16"}
_TYPE_NAMES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64", 5: "STRING",
               6: "BOOL", 7: "INT16", 8: "COMPLEX64", 9: "INT8", 10: "FLOAT64", 11: "COMPLEX128",
               12: "UINT64", 13: "RESOURCE", 14: "VARIANT", 15: "UINT32", 16: "UINT16", 17: "INT4",
               18: "BFLOAT16"}
_INPUT_TYPES = ("float32", "int8", "uint8", "int16", "int32")
# NHWC axis -> NCHW axis
_TO_NCHW_AXIS = (0, 2, 3, 1)


def is_tflite(source: Any) -> bool:
    """Whether ``source`` (a path or bytes) is a TFLite flatbuffer (identifier ``TFL3``), or a
    path ending in ``.tflite``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[4:8]) == b"TFL3"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.lower().endswith(".tflite"):
            return True
        try:
            with open(path, "rb") as handle:
                return handle.read(8)[4:8] == b"TFL3"
        except OSError:
            return False
    return False


def _bindings():
    try:
        from tflite.BuiltinOperator import BuiltinOperator
        from tflite.Model import Model
    except ImportError:
        raise ConfigError("importing TFLite models needs the tflite package (pip install tflite)") from None
    return Model, BuiltinOperator


def load_tflite(source: str | os.PathLike | bytes | bytearray | memoryview) -> Graph:
    """Read a TFLite model (a path or its bytes) and translate it into a :class:`Graph`.

    Raises
    ------
    ConfigError
        An unreadable file, a file that is not a TFLite flatbuffer, more than one subgraph,
        an unsupported operator, option or tensor type (each one message naming the operator).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, data = "the serialized model", bytes(source)
    else:
        label = os.fspath(source)
        if not os.path.exists(label):
            raise ConfigError(f"cannot read {label}: No such file or directory")
        try:
            with open(label, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {label}: {exc.strerror or exc}") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ConfigError(f"{label} is not a valid TFLite model: it lacks the TFL3 file identifier")
    try:
        return _Importer(data).run()
    except ConfigError:
        raise
    except Exception as exc:  # a truncated or corrupt flatbuffer fails inside the bindings
        raise ConfigError(f"{label} is not a valid TFLite model: {type(exc).__name__}: {exc}") from None


class _Importer:
    def __init__(self, data: bytes):
        Model, BuiltinOperator = _bindings()
        self.model = Model.GetRootAs(data, 0)
        self.op_names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
        if self.model.SubgraphsLength() != 1:
            raise ConfigError(f"TFLite models with {self.model.SubgraphsLength()} subgraphs are not "
                              f"supported (only one)")
        self.sub = self.model.Subgraphs(0)
        self.layers: list = []
        self.names: dict[int, str] = {}  # tensor index -> IR name
        self.nchw: dict[int, bool] = {}  # whether the IR tensor is held NCHW
        self.used: set[str] = set()
        self.ops: dict[str, str] = {}
        self.tensor_names = self._unique_names()

    # ------------------------------------------------------------------ tensors
    def _unique_names(self) -> list[str]:
        names, seen = [], set()
        for i in range(self.sub.TensorsLength()):
            raw = self.sub.Tensors(i).Name()
            name = raw.decode("utf-8", "replace") if raw else f"tensor_{i}"
            if name in seen:
                name = f"{name}_{i}"
            seen.add(name)
            names.append(name)
        return names

    def tensor(self, index: int):
        return self.sub.Tensors(index)

    def shape(self, index: int) -> tuple[int, ...]:
        t = self.tensor(index)
        return tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()

    def dtype(self, index: int) -> str:
        code = self.tensor(index).Type()
        if code not in _DTYPES:
            raise ConfigError(f"tensor {self.tensor_names[index]!r} has type "
                              f"{_TYPE_NAMES.get(code, code)}, which qsim does not support")
        return _DTYPES[code]

    def constant(self, index: int) -> np.ndarray | None:
        t = self.tensor(index)
        buf = self.model.Buffers(t.Buffer())
        if buf is None or buf.DataLength() == 0:
            if buf is not None and buf.Offset() > 1:
                raise ConfigError(f"tensor {self.tensor_names[index]!r}: buffers stored outside the "
                                  f"flatbuffer are not supported")
            return None
        raw = buf.DataAsNumpy().tobytes()
        return np.frombuffer(raw, dtype=np.dtype(self.dtype(index))).reshape(self.shape(index)).copy()

    def params(self, index: int, axis: int | None = None) -> QuantParams | None:
        q = self.tensor(index).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        scale = q.ScaleAsNumpy().astype(np.float32)
        zp = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros(scale.shape, np.int64)
        fmt = self.dtype(index)
        if scale.size == 1:
            return QuantParams(np.float32(scale[0]), np.int64(zp.reshape(-1)[0]), fmt)
        if zp.size == 1:
            zp = np.full(scale.shape, int(zp[0]), np.int64)
        return QuantParams(scale, zp, fmt, axis=q.QuantizedDimension() if axis is None else axis)

    def _new_name(self, base: str) -> str:
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}.{n}"
        self.used.add(name)
        return name

    def value(self, index: int, nchw: bool | None = None, *, op: str = "") -> str:
        """IR name of tensor ``index``; a constant becomes a Constant layer; ``nchw`` asks for
        a given layout of a 4-D tensor (transposing if needed)."""
        if index not in self.names:
            data = self.constant(index)
            if data is None:
                raise ConfigError(f"operator {op}: tensor {self.tensor_names[index]!r} is neither a "
                                  f"graph input, a constant nor the output of an earlier operator")
            is4 = data.ndim == 4
            name = self._new_name(self.tensor_names[index] + (".nchw" if is4 else ""))
            self.layers.append(L.Constant(name, (), (name,),
                                          value=data.transpose(0, 3, 1, 2).copy() if is4 else data))
            self.names[index], self.nchw[index] = name, is4
        name = self.names[index]
        if nchw is None or nchw == self.nchw[index]:
            return name
        perm = (0, 3, 1, 2) if nchw else (0, 2, 3, 1)
        out = self._new_name(self.tensor_names[index] + (".nchw" if nchw else ".nhwc"))
        self.layers.append(L.Transpose(out, (name,), (out,), perm=perm))
        return out

    def define(self, index: int, nchw: bool) -> str:
        """Name for the output tensor ``index`` of the operator being imported."""
        name = self._new_name(self.tensor_names[index] + (".nchw" if nchw else ""))
        self.names[index], self.nchw[index] = name, nchw
        return name

    # ------------------------------------------------------------------ driver
    def run(self) -> Graph:
        inputs: dict[str, TensorType] = {}
        for k in range(self.sub.InputsLength()):
            index = int(self.sub.Inputs(k))
            name = self.tensor_names[index]
            dtype = self.dtype(index)
            if dtype not in _INPUT_TYPES:
                raise ConfigError(f"graph input {name!r} has type {dtype}; qsim supports float32, int8, "
                                  f"uint8, int16 and int32 inputs")
            inputs[name] = TensorType(self.shape(index), dtype)
            self.used.add(name)
            if len(self.shape(index)) == 4:
                inner = self._new_name(name + ".nchw")
                self.layers.append(L.Transpose(inner, (name,), (inner,), perm=(0, 3, 1, 2)))
                self.names[index], self.nchw[index] = inner, True
            else:
                self.names[index], self.nchw[index] = name, False
        for k in range(self.sub.OperatorsLength()):
            self._operator(self.sub.Operators(k), k)
        outputs = []
        for k in range(self.sub.OutputsLength()):
            index = int(self.sub.Outputs(k))
            name = self.tensor_names[index]
            if index not in self.names:
                self.value(index)
            inner = self.names[index]
            if inner != name:
                if name in self.used and name not in inputs:
                    name = self._new_name(name)
                perm = (0, 2, 3, 1) if self.nchw[index] else None
                if perm is not None:
                    self.layers.append(L.Transpose(name, (inner,), (name,), perm=perm))
                else:
                    self.layers.append(L.Reshape(name, (inner,), (name,), shape=self.shape(index)))
                self.used.add(name)
            outputs.append(name)
        graph = Graph("tflite", inputs, self.layers, outputs,
                      meta={"format": "tflite", "tflite_ops": dict(self.ops)})
        graph.infer()
        return graph

    def _operator(self, node, position: int) -> None:
        code_table = self.model.OperatorCodes(node.OpcodeIndex())
        code = max(int(code_table.BuiltinCode()), int(code_table.DeprecatedBuiltinCode()))
        op = self.op_names.get(code, f"builtin {code}")
        if code_table.CustomCode():
            op = f"custom {code_table.CustomCode().decode('utf-8', 'replace')}"
        ins = [int(i) for i in node.InputsAsNumpy()] if node.InputsLength() else []
        outs = [int(i) for i in node.OutputsAsNumpy()] if node.OutputsLength() else []
        label = f"{op} (operator {position}, output {self.tensor_names[outs[0]]!r})" if outs else op
        handler = getattr(self, f"_op_{op.lower()}", None) if op in SUPPORTED_OPS else None
        if handler is None:
            raise ConfigError(f"unsupported TFLite operator {label} (supported: {', '.join(SUPPORTED_OPS)})")
        try:
            handler(node, ins, outs, label)
        except ConfigError as exc:
            text = str(exc)
            raise (exc if text.startswith("operator ") else ConfigError(f"operator {label}: {text}")) from None

    def _emit(self, layer, op: str) -> None:
        self.layers.append(layer)
        self.ops[layer.name] = op

    # ------------------------------------------------------------------ helpers
    def _options(self, node, cls_name: str):
        import importlib

        module = importlib.import_module(f"tflite.{cls_name}")
        table = node.BuiltinOptions()
        if table is None:
            return None
        opts = getattr(module, cls_name)()
        opts.Init(table.Bytes, table.Pos)
        return opts

    @staticmethod
    def _activation(code: int, label: str):
        if code == 0:
            return None
        if code == 1:
            return "relu"
        if code == 2:
            return ("clip", -1.0, 1.0)
        if code == 3:
            return ("clip", 0.0, 6.0)
        names = {4: "TANH", 5: "SIGN_BIT"}
        raise ConfigError(f"fused activation {names.get(code, code)} is not supported "
                          f"(NONE, RELU, RELU_N1_TO_1, RELU6)")

    def _quantized(self, index: int, what: str) -> QuantParams:
        params = self.params(index)
        if params is None:
            raise ConfigError(f"{what} {self.tensor_names[index]!r} is not quantized (only int8 "
                              f"quantized models are imported)")
        if params.fmt.name not in ("int8", "uint8", "int16"):
            raise ConfigError(f"{what} {self.tensor_names[index]!r} has type {params.fmt.name}")
        return params

    @staticmethod
    def _same_pads(size, kernel, stride, dilation, padding: int):
        """TFLite padding (0 SAME, 1 VALID): (begin, end) and output size."""
        span = dilation * (kernel - 1) + 1
        if padding == 1:
            return 0, 0, (size - span) // stride + 1
        out = -(-size // stride)
        total = max((out - 1) * stride + span - size, 0)
        return total // 2, total - total // 2, out

    def _window(self, x_shape, kernel, strides, dilations, padding):
        h, w = x_shape[1], x_shape[2]
        t, b, _ = self._same_pads(h, kernel[0], strides[0], dilations[0], padding)
        lft, r, _ = self._same_pads(w, kernel[1], strides[1], dilations[1], padding)
        return (t, lft, b, r)

    def _bias(self, ins, index_pos, label):
        if len(ins) <= index_pos or ins[index_pos] < 0:
            return None
        data = self.constant(ins[index_pos])
        if data is None:
            raise ConfigError("the bias must be a constant")
        if data.dtype != np.int32:
            raise ConfigError(f"the bias must be int32, not {data.dtype}")
        return data.astype(np.int32)

    def _weight(self, index: int) -> np.ndarray:
        data = self.constant(index)
        if data is None:
            raise ConfigError(f"weight {self.tensor_names[index]!r} must be a constant")
        if data.dtype not in (np.int8, np.uint8):
            raise ConfigError(f"weight {self.tensor_names[index]!r} must be int8, not {data.dtype}")
        return data

    # ------------------------------------------------------------------ operators
    def _op_conv_2d(self, node, ins, outs, label):
        o = self._options(node, "Conv2DOptions")
        x_shape = self.shape(ins[0])
        w = self._weight(ins[1])
        cout, kh, kw, cin_g = w.shape
        cin = x_shape[3]
        if cin % cin_g:
            raise ConfigError(f"input channels {cin} are not a multiple of the filter's {cin_g}")
        self._conv(o, ins, outs, label, x_shape, (kh, kw), cin, cout, cin // cin_g,
                   w.transpose(0, 3, 1, 2).copy(), "CONV_2D")

    def _conv(self, o, ins, outs, label, x_shape, kernel, cin, cout, groups, weight, kind):
        """Emit a Conv2d (weights already OIHW) with the options ``o`` of a TFLite conv."""
        strides, dil = (o.StrideH(), o.StrideW()), (o.DilationHFactor(), o.DilationWFactor())
        wp = self.params(ins[1], axis=0)
        x = self.value(ins[0], True, op=label)
        name = self.define(outs[0], True)
        self._emit(L.Conv2d(name, (x,), (name,), kernel=kernel, strides=strides,
                            pads=self._window(x_shape, kernel, strides, dil, o.Padding()),
                            dilations=dil, in_channels=cin, out_channels=cout, groups=groups,
                            weight=weight, bias=self._bias(ins, 2, label),
                            activation=self._activation(o.FusedActivationFunction(), label),
                            input_params=self._quantized(ins[0], "input"), weight_params=wp,
                            output_params=self._quantized(outs[0], "output")), kind)

    def _op_depthwise_conv_2d(self, node, ins, outs, label):
        o = self._options(node, "DepthwiseConv2DOptions")
        x_shape = self.shape(ins[0])
        w = self._weight(ins[1])
        _, kh, kw, cout = w.shape
        cin = x_shape[3]
        if cout % cin:
            raise ConfigError(f"filter channels {cout} are not a multiple of the input's {cin}")
        self._conv(o, ins, outs, label, x_shape, (kh, kw), cin, cout, cin,
                   w.reshape(kh, kw, cout).transpose(2, 0, 1)[:, None].copy(), "DEPTHWISE_CONV_2D")

    def _nhwc_flat(self, index: int, rows: int, cols: int, label: str) -> str:
        """Tensor ``index`` reshaped to ``(rows, cols)`` in TFLite's (NHWC) element order."""
        src = self.value(index, False, op=label)
        if self.shape(index) == (rows, cols):
            return src
        name = self._new_name(self.tensor_names[index] + ".flat")
        self.layers.append(L.Reshape(name, (src,), (name,), shape=(rows, cols)))
        return name

    def _op_fully_connected(self, node, ins, outs, label):
        o = self._options(node, "FullyConnectedOptions")
        w = self._weight(ins[1])
        if o is not None and o.WeightsFormat() != 0:
            raise ConfigError("shuffled weights are not supported")
        n_out, n_in = w.shape
        total = int(np.prod(self.shape(ins[0])))
        if total % n_in:
            raise ConfigError(f"input shape {self.shape(ins[0])} does not fit {n_in} input features")
        x = self._nhwc_flat(ins[0], total // n_in, n_in, label)
        out_shape = self.shape(outs[0])
        flat = len(out_shape) == 2 and out_shape == (total // n_in, n_out)
        name = self.define(outs[0], False) if flat else self._new_name(self.tensor_names[outs[0]] + ".flat")
        wp = self.params(ins[1], axis=1)
        if wp is not None and wp.axis is not None:
            wp = QuantParams(wp.scale, wp.zero_point, wp.fmt, axis=1)
        self._emit(L.Linear(name, (x,), (name,), weight=w.T.copy(), bias=self._bias(ins, 2, label),
                            in_features=n_in, out_features=n_out,
                            activation=self._activation(o.FusedActivationFunction() if o else 0, label),
                            input_params=self._quantized(ins[0], "input"), weight_params=wp,
                            output_params=self._quantized(outs[0], "output")), "FULLY_CONNECTED")
        if not flat:
            self._reshape_to(name, outs[0])

    def _reshape_to(self, src: str, index: int) -> None:
        """Reshape the plain IR tensor ``src`` to tensor ``index``'s TFLite shape (NCHW if 4-D)."""
        shape = self.shape(index)
        if len(shape) == 4:
            nhwc = self._new_name(self.tensor_names[index] + ".nhwc")
            self.layers.append(L.Reshape(nhwc, (src,), (nhwc,), shape=shape))
            name = self.define(index, True)
            self.layers.append(L.Transpose(name, (nhwc,), (name,), perm=(0, 3, 1, 2)))
        else:
            name = self.define(index, False)
            self.layers.append(L.Reshape(name, (src,), (name,), shape=shape))

    def _op_reshape(self, node, ins, outs, label):
        src = self.value(ins[0], False, op=label)
        self._reshape_to(src, outs[0])

    def _broadcast_operand(self, index: int, rank: int, label: str) -> str:
        """An operand of an element-wise op in the layout of a rank-``rank`` result."""
        shape = self.shape(index)
        if rank != 4:
            return self.value(index, False, op=label)
        if len(shape) == 4:
            return self.value(index, True, op=label)
        data = self.constant(index)
        if data is None and index not in self.names:
            raise ConfigError(f"tensor {self.tensor_names[index]!r} is undefined")
        if data is not None and index not in self.names:
            value = data.reshape((1,) * (4 - data.ndim) + data.shape).transpose(0, 3, 1, 2).copy()
            name = self._new_name(self.tensor_names[index] + ".nchw")
            self.layers.append(L.Constant(name, (), (name,), value=value))
            return name
        src = self.value(index, False, op=label)
        nhwc = self._new_name(self.tensor_names[index] + ".4d")
        self.layers.append(L.Reshape(nhwc, (src,), (nhwc,), shape=(1,) * (4 - len(shape)) + shape))
        name = self._new_name(self.tensor_names[index] + ".nchw")
        self.layers.append(L.Transpose(name, (nhwc,), (name,), perm=(0, 3, 1, 2)))
        return name

    def _binary(self, node, ins, outs, label, cls, opt_name, op):
        o = self._options(node, opt_name)
        rank = len(self.shape(outs[0]))
        a = self._broadcast_operand(ins[0], rank, label)
        b = self._broadcast_operand(ins[1], rank, label)
        name = self.define(outs[0], rank == 4)
        self._emit(cls(name, (a, b), (name,),
                       activation=self._activation(o.FusedActivationFunction() if o else 0, label),
                       input_params=(self._quantized(ins[0], "input"), self._quantized(ins[1], "input")),
                       output_params=self._quantized(outs[0], "output")), op)

    def _op_add(self, node, ins, outs, label):
        self._binary(node, ins, outs, label, L.Add, "AddOptions", "ADD")

    def _op_mul(self, node, ins, outs, label):
        self._binary(node, ins, outs, label, L.Mul, "MulOptions", "MUL")

    def _pool(self, node, ins, outs, label, op):
        o = self._options(node, "Pool2DOptions")
        x_shape = self.shape(ins[0])
        kernel, strides = (o.FilterHeight(), o.FilterWidth()), (o.StrideH(), o.StrideW())
        pads = self._window(x_shape, kernel, strides, (1, 1), o.Padding())
        x = self.value(ins[0], True, op=label)
        act = self._activation(o.FusedActivationFunction(), label)
        name = self.define(outs[0], True) if act is None else self._new_name(self.tensor_names[outs[0]] + ".pool")
        px, py = self._quantized(ins[0], "input"), self._quantized(outs[0], "output")
        if op == "MAX_POOL_2D":
            if not _same_params(px, py):
                raise ConfigError("MAX_POOL_2D needs equal input and output quantization")
            layer = L.MaxPool(name, (x,), (name,), kernel=kernel, strides=strides, pads=pads)
        else:
            layer = L.AvgPool(name, (x,), (name,), kernel=kernel, strides=strides, pads=pads,
                              count_include_pad=False, input_params=px, output_params=py)
        self._emit(layer, op)
        if act is not None:
            out = self.define(outs[0], True)
            lo, hi = (0.0, float("inf")) if act == "relu" else act[1:]
            self._emit(L.Clip(out, (name,), (out,), lo=lo, hi=hi, output_params=py), op)

    def _op_average_pool_2d(self, node, ins, outs, label):
        self._pool(node, ins, outs, label, "AVERAGE_POOL_2D")

    def _op_max_pool_2d(self, node, ins, outs, label):
        self._pool(node, ins, outs, label, "MAX_POOL_2D")

    def _op_relu(self, node, ins, outs, label, lo=0.0, hi=float("inf"), op="RELU"):
        rank = len(self.shape(ins[0]))
        x = self.value(ins[0], rank == 4, op=label)
        px, py = self._quantized(ins[0], "input"), self._quantized(outs[0], "output")
        if not _same_params(px, py):
            raise ConfigError(f"{op} needs equal input and output quantization")
        name = self.define(outs[0], rank == 4)
        self._emit(L.Clip(name, (x,), (name,), lo=lo, hi=hi, output_params=py), op)

    def _op_relu6(self, node, ins, outs, label):
        self._op_relu(node, ins, outs, label, 0.0, 6.0, "RELU6")

    def _op_softmax(self, node, ins, outs, label):
        o = self._options(node, "SoftmaxOptions")
        rank = len(self.shape(ins[0]))
        x = self.value(ins[0], False, op=label)
        name = self.define(outs[0], False)
        px, py = self._quantized(ins[0], "input"), self._quantized(outs[0], "output")
        self._emit(L.Softmax(name, (x,), (name,), axis=rank - 1, beta=float(o.Beta()) if o else 1.0,
                             input_params=px, output_params=py), "SOFTMAX")

    def _op_quantize(self, node, ins, outs, label):
        rank = len(self.shape(ins[0]))
        x = self.value(ins[0], rank == 4, op=label)
        name = self.define(outs[0], rank == 4)
        py = self._quantized(outs[0], "output")
        if self.dtype(ins[0]) == "float32":
            self._emit(L.Quantize(name, (x,), (name,), params=py), "QUANTIZE")
        else:
            self._emit(L.Rescale(name, (x,), (name,), input_params=self._quantized(ins[0], "input"),
                                 output_params=py), "QUANTIZE")

    def _op_dequantize(self, node, ins, outs, label):
        rank = len(self.shape(ins[0]))
        x = self.value(ins[0], rank == 4, op=label)
        name = self.define(outs[0], rank == 4)
        if self.dtype(outs[0]) != "float32":
            raise ConfigError(f"DEQUANTIZE to {self.dtype(outs[0])} is not supported (float32 only)")
        self._emit(L.Dequantize(name, (x,), (name,), params=self._quantized(ins[0], "input")), "DEQUANTIZE")

    def _op_concatenation(self, node, ins, outs, label):
        o = self._options(node, "ConcatenationOptions")
        rank = len(self.shape(outs[0]))
        axis = o.Axis() + rank if o.Axis() < 0 else o.Axis()
        if self._activation(o.FusedActivationFunction(), label) is not None:
            raise ConfigError("a fused activation on CONCATENATION is not supported")
        py = self._quantized(outs[0], "output")
        if not all(_same_params(self._quantized(i, "input"), py) for i in ins):
            # LiteRT's int8 kernels refuse it too (concatenation.cc checks the scales)
            raise ConfigError("CONCATENATION needs equal input and output quantization (scale and "
                              "zero point), as LiteRT's int8 kernel does")
        names = tuple(self.value(i, rank == 4, op=label) for i in ins)
        name = self.define(outs[0], rank == 4)
        self._emit(L.Concat(name, names, (name,), axis=_TO_NCHW_AXIS[axis] if rank == 4 else axis,
                            input_params=tuple(self._quantized(i, "input") for i in ins),
                            output_params=self._quantized(outs[0], "output")), "CONCATENATION")

    def _op_mean(self, node, ins, outs, label):
        o = self._options(node, "ReducerOptions")
        shape = self.shape(ins[0])
        axes = self.constant(ins[1])
        if axes is None:
            raise ConfigError("the axes must be a constant")
        axes = sorted({int(a) + len(shape) if a < 0 else int(a) for a in np.ravel(axes)})
        if len(shape) != 4 or axes != [1, 2]:
            raise ConfigError(f"MEAN is supported over the spatial axes [1, 2] of a 4-D tensor, not "
                              f"axes {axes} of shape {shape}")
        x = self.value(ins[0], True, op=label)
        keep = bool(o.KeepDims()) if o else False
        name = self.define(outs[0], True) if keep else self._new_name(self.tensor_names[outs[0]] + ".nchw")
        self._emit(L.GlobalAvgPool(name, (x,), (name,), input_params=self._quantized(ins[0], "input"),
                                   output_params=self._quantized(outs[0], "output")), "MEAN")
        if not keep:
            out = self.define(outs[0], False)
            self.layers.append(L.Reshape(out, (name,), (out,), shape=self.shape(outs[0])))

    def _op_pad(self, node, ins, outs, label):
        shape = self.shape(ins[0])
        pads = self.constant(ins[1])
        if pads is None:
            raise ConfigError("the paddings must be a constant")
        pads = np.asarray(pads, np.int64).reshape(len(shape), 2)
        if np.any(pads < 0):
            raise ConfigError("negative paddings are not supported")
        px, py = self._quantized(ins[0], "input"), self._quantized(outs[0], "output")
        if not _same_params(px, py):
            raise ConfigError("PAD needs equal input and output quantization")
        value = int(py.zero_point)
        if len(ins) > 2 and ins[2] >= 0:
            v = self.constant(ins[2])
            if v is None:
                raise ConfigError("the padding value must be a constant")
            value = int(np.ravel(v)[0])
        if len(shape) == 4:
            pads = pads[[0, 3, 1, 2]]
        x = self.value(ins[0], len(shape) == 4, op=label)
        name = self.define(outs[0], len(shape) == 4)
        self._emit(L.Pad(name, (x,), (name,), pads=tuple(tuple(int(v) for v in p) for p in pads),
                         value=value), "PAD")

    _op_padv2 = _op_pad


def _same_params(a: QuantParams, b: QuantParams) -> bool:
    return (a.fmt == b.fmt and np.array_equal(np.asarray(a.scale, np.float32), np.asarray(b.scale, np.float32))
            and np.array_equal(a.zero_point, b.zero_point))
