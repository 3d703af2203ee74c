"""Small int8 TFLite models for the tests, written with the ``tflite`` package's flatbuffer
builders (the same generated schema bindings qsim reads them with).

:class:`ModelBuilder` declares tensors (constants carry their data), appends operators with
their builtin options and serializes a one-subgraph model; :func:`random_cases` builds the
seeded single-op and small-network cases that ``tests/golden/record_litert.py`` runs through
the LiteRT interpreter.
"""

from __future__ import annotations

import importlib

import flatbuffers
import numpy as np
from tflite.BuiltinOperator import BuiltinOperator as Op
from tflite.BuiltinOptions import BuiltinOptions
from tflite.TensorType import TensorType

_TYPES = {"float32": TensorType.FLOAT32, "int8": TensorType.INT8, "uint8": TensorType.UINT8,
          "int32": TensorType.INT32, "int16": TensorType.INT16, "int64": TensorType.INT64}

#: Operator versions the int8 kernels are registered under.
_VERSIONS = {Op.CONV_2D: 3, Op.DEPTHWISE_CONV_2D: 3, Op.FULLY_CONNECTED: 4, Op.ADD: 2, Op.MUL: 2,
             Op.AVERAGE_POOL_2D: 2, Op.MAX_POOL_2D: 2, Op.SOFTMAX: 2, Op.QUANTIZE: 2,
             Op.DEQUANTIZE: 2, Op.CONCATENATION: 2, Op.MEAN: 2, Op.PAD: 2, Op.RESHAPE: 1}


def _m(name):
    """The generated module ``tflite.NAME`` (the package re-exports its classes by the same names)."""
    return importlib.import_module(f"tflite.{name}")


def _vector(builder, start, values, prepend):
    start(builder, len(values))
    for v in reversed(values):
        prepend(v)
    return builder.EndVector()


class ModelBuilder:
    """Collects tensors and operators of one subgraph; :meth:`build` returns the model bytes."""

    def __init__(self):
        self.tensors: list[dict] = []
        self.ops: list[tuple] = []

    def tensor(self, name, shape, dtype="int8", scale=None, zero_point=None, axis=0, data=None):
        """Declare a tensor; ``scale``/``zero_point`` scalars or per-``axis`` lists; returns its index."""
        self.tensors.append(dict(name=name, shape=list(shape), dtype=dtype, scale=scale,
                                 zero_point=zero_point, axis=axis,
                                 data=None if data is None else np.ascontiguousarray(data, dtype)))
        return len(self.tensors) - 1

    def op(self, code, inputs, outputs, options=None, **fields):
        """Append builtin ``code`` (a ``BuiltinOperator``) with options ``options`` (the
        ``XxxOptions`` table name) holding ``fields`` (``FusedActivationFunction=1``...)."""
        self.ops.append((code, list(inputs), list(outputs), options, fields))

    def build(self, inputs, outputs) -> bytes:
        b = flatbuffers.Builder(1024)
        codes = sorted({op[0] for op in self.ops})
        # buffers: 0 is the empty sentinel, then one per constant tensor
        buffer_data = [None]
        buffer_of = []
        for t in self.tensors:
            if t["data"] is None:
                buffer_of.append(0)
            else:
                buffer_of.append(len(buffer_data))
                buffer_data.append(t["data"].tobytes())
        buffers = []
        for raw in buffer_data:
            vec = None
            if raw is not None:
                b.StartVector(1, len(raw), 16)
                b.head = b.head - len(raw)
                b.Bytes[b.head:b.head + len(raw)] = raw
                vec = b.EndVector()
            _m('Buffer').BufferStart(b)
            if vec is not None:
                _m('Buffer').BufferAddData(b, vec)
            buffers.append(_m('Buffer').BufferEnd(b))
        tensors = []
        for i, t in enumerate(self.tensors):
            name = b.CreateString(t["name"])
            shape = _vector(b, _m('Tensor').TensorStartShapeVector, t["shape"], b.PrependInt32)
            quant = None
            if t["scale"] is not None:
                scales = np.atleast_1d(np.asarray(t["scale"], np.float32)).tolist()
                zps = np.atleast_1d(np.asarray(t["zero_point"] if t["zero_point"] is not None else 0,
                                               np.int64)).tolist()
                if len(zps) == 1 and len(scales) > 1:
                    zps = zps * len(scales)
                sv = _vector(b, _m('QuantizationParameters').QuantizationParametersStartScaleVector,
                             scales, b.PrependFloat32)
                zv = _vector(b, _m('QuantizationParameters').QuantizationParametersStartZeroPointVector,
                             zps, b.PrependInt64)
                _m('QuantizationParameters').QuantizationParametersStart(b)
                _m('QuantizationParameters').QuantizationParametersAddScale(b, sv)
                _m('QuantizationParameters').QuantizationParametersAddZeroPoint(b, zv)
                _m('QuantizationParameters').QuantizationParametersAddQuantizedDimension(b, t["axis"])
                quant = _m('QuantizationParameters').QuantizationParametersEnd(b)
            _m('Tensor').TensorStart(b)
            _m('Tensor').TensorAddShape(b, shape)
            _m('Tensor').TensorAddType(b, _TYPES[t["dtype"]])
            _m('Tensor').TensorAddBuffer(b, buffer_of[i])
            _m('Tensor').TensorAddName(b, name)
            if quant is not None:
                _m('Tensor').TensorAddQuantization(b, quant)
            tensors.append(_m('Tensor').TensorEnd(b))
        operators = []
        for code, ins, outs, options, fields in self.ops:
            opts = None
            if options is not None:
                module = _m(options)
                vectors = {}
                for key, value in fields.items():
                    if isinstance(value, (list, tuple)):
                        vectors[key] = _vector(b, getattr(module, f"{options}Start{key}Vector"),
                                               list(value), b.PrependInt32)
                getattr(module, f"{options}Start")(b)
                for key, value in fields.items():
                    getattr(module, f"{options}Add{key}")(b, vectors.get(key, value))
                opts = getattr(module, f"{options}End")(b)
            iv = _vector(b, _m('Operator').OperatorStartInputsVector, ins, b.PrependInt32)
            ov = _vector(b, _m('Operator').OperatorStartOutputsVector, outs, b.PrependInt32)
            _m('Operator').OperatorStart(b)
            _m('Operator').OperatorAddOpcodeIndex(b, codes.index(code))
            _m('Operator').OperatorAddInputs(b, iv)
            _m('Operator').OperatorAddOutputs(b, ov)
            if opts is not None:
                _m('Operator').OperatorAddBuiltinOptionsType(b, getattr(BuiltinOptions, options))
                _m('Operator').OperatorAddBuiltinOptions(b, opts)
            operators.append(_m('Operator').OperatorEnd(b))
        tv = _vector(b, _m('SubGraph').SubGraphStartTensorsVector, tensors, b.PrependUOffsetTRelative)
        iv = _vector(b, _m('SubGraph').SubGraphStartInputsVector, list(inputs), b.PrependInt32)
        ov = _vector(b, _m('SubGraph').SubGraphStartOutputsVector, list(outputs), b.PrependInt32)
        opv = _vector(b, _m('SubGraph').SubGraphStartOperatorsVector, operators, b.PrependUOffsetTRelative)
        name = b.CreateString("main")
        _m('SubGraph').SubGraphStart(b)
        _m('SubGraph').SubGraphAddTensors(b, tv)
        _m('SubGraph').SubGraphAddInputs(b, iv)
        _m('SubGraph').SubGraphAddOutputs(b, ov)
        _m('SubGraph').SubGraphAddOperators(b, opv)
        _m('SubGraph').SubGraphAddName(b, name)
        subgraph = _m('SubGraph').SubGraphEnd(b)
        code_tables = []
        for code in codes:
            _m('OperatorCode').OperatorCodeStart(b)
            _m('OperatorCode').OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            _m('OperatorCode').OperatorCodeAddBuiltinCode(b, code)
            _m('OperatorCode').OperatorCodeAddVersion(b, _VERSIONS.get(code, 1))
            code_tables.append(_m('OperatorCode').OperatorCodeEnd(b))
        cv = _vector(b, _m('Model').ModelStartOperatorCodesVector, code_tables, b.PrependUOffsetTRelative)
        sv = _vector(b, _m('Model').ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
        bv = _vector(b, _m('Model').ModelStartBuffersVector, buffers, b.PrependUOffsetTRelative)
        desc = b.CreateString("qsim test model")
        _m('Model').ModelStart(b)
        _m('Model').ModelAddVersion(b, 3)
        _m('Model').ModelAddOperatorCodes(b, cv)
        _m('Model').ModelAddSubgraphs(b, sv)
        _m('Model').ModelAddBuffers(b, bv)
        _m('Model').ModelAddDescription(b, desc)
        b.Finish(_m('Model').ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


# ----------------------------------------------------------------------------- seeded cases

_ACT = {"none": 0, "relu": 1, "relu_n1_to_1": 2, "relu6": 3}
_PAD = {"same": 0, "valid": 1}


def _scale(rng, lo=-9.0, hi=-4.0):
    return float(np.float32(2.0 ** rng.uniform(lo, hi)))


def _act_input(rng, shape):
    return rng.integers(-128, 128, shape).astype(np.int8)


def _weights(rng, shape, wmax=127):
    return rng.integers(-wmax, wmax + 1, shape).astype(np.int8)


def fully_connected(rng, batch=3, n_in=24, n_out=10, act="none", per_channel=False, bias=True,
                    out_scale=None, scales=None, wmax=127):
    """``scales = (s_in, s_w, s_out)`` fixes the scales (powers of two give exact ties; a list
    ``s_w`` gives per-channel weight scales); weights in ``[-wmax, wmax]``."""
    m = ModelBuilder()
    s_in, zp_in = _scale(rng, -6, -3), int(rng.integers(-20, 20))
    s_w = [_scale(rng, -8, -5) for _ in range(n_out)] if per_channel else _scale(rng, -8, -5)
    s_out = out_scale or _scale(rng, -4, -1)
    if scales is not None:
        s_w = list(scales[1]) if isinstance(scales[1], (list, tuple)) else \
            ([scales[1]] * n_out if per_channel else scales[1])
        s_in, s_out = scales[0], scales[2]
    x = m.tensor("x", [batch, n_in], "int8", s_in, zp_in)
    w = m.tensor("w", [n_out, n_in], "int8", s_w, 0, axis=0, data=_weights(rng, (n_out, n_in), wmax))
    ins = [x, w]
    if bias:
        bs = np.float32(s_in) * np.asarray(s_w, np.float32)
        ins.append(m.tensor("b", [n_out], "int32", bs.tolist() if per_channel else float(bs), 0,
                            data=rng.integers(-3000, 3000, n_out).astype(np.int32)))
    y = m.tensor("y", [batch, n_out], "int8", s_out, int(rng.integers(-10, 10)))
    m.op(Op.FULLY_CONNECTED, ins, [y], "FullyConnectedOptions", FusedActivationFunction=_ACT[act])
    return m.build([x], [y]), {"x": _act_input(rng, (batch, n_in))}


def conv2d(rng, batch=2, hw=(7, 6), cin=5, cout=6, kernel=(3, 3), stride=(1, 1), padding="same",
           dilation=(1, 1), act="none", scales=None, wmax=127):
    """``scales = (s_in, s_w, s_out)`` fixes the scales (powers of two give exact ties; a list
    ``s_w`` gives the per-channel weight scales); weights in ``[-wmax, wmax]``."""
    m = ModelBuilder()
    s_in, zp_in = _scale(rng, -6, -3), int(rng.integers(-20, 20))
    s_w = [_scale(rng, -8, -5) for _ in range(cout)]
    s_out = _scale(rng, -3, -1)
    if scales is not None:
        s_w = list(scales[1]) if isinstance(scales[1], (list, tuple)) else [scales[1]] * cout
        s_in, s_out = scales[0], scales[2]
    x = m.tensor("x", [batch, *hw, cin], "int8", s_in, zp_in)
    w = m.tensor("w", [cout, *kernel, cin], "int8", s_w, 0, axis=0,
                 data=_weights(rng, (cout, *kernel, cin), wmax))
    bs = (np.float32(s_in) * np.asarray(s_w, np.float32)).tolist()
    b = m.tensor("b", [cout], "int32", bs, 0, data=rng.integers(-3000, 3000, cout).astype(np.int32))
    probe = _probe_hw(hw, kernel, stride, padding, dilation)
    y = m.tensor("y", [batch, *probe, cout], "int8", s_out, int(rng.integers(-10, 10)))
    m.op(Op.CONV_2D, [x, w, b], [y], "Conv2DOptions", Padding=_PAD[padding], StrideW=stride[1],
         StrideH=stride[0], FusedActivationFunction=_ACT[act], DilationWFactor=dilation[1],
         DilationHFactor=dilation[0])
    return m.build([x], [y]), {"x": _act_input(rng, (batch, *hw, cin))}


def depthwise(rng, batch=2, hw=(6, 7), cin=11, multiplier=1, kernel=(3, 3), stride=(1, 1),
              padding="same", dilation=(1, 1), act="none", scales=None, wmax=127):
    """``scales = (s_in, [s_w per output channel], s_out)`` fixes the scales."""
    m = ModelBuilder()
    cout = cin * multiplier
    s_in, zp_in = _scale(rng, -6, -3), int(rng.integers(-20, 20))
    s_w = [_scale(rng, -8, -5) for _ in range(cout)]
    s_out = _scale(rng, -3, -1)
    if scales is not None:
        s_in, s_w, s_out = scales[0], list(scales[1]), scales[2]
    x = m.tensor("x", [batch, *hw, cin], "int8", s_in, zp_in)
    w = m.tensor("w", [1, *kernel, cout], "int8", s_w, 0, axis=3,
                 data=_weights(rng, (1, *kernel, cout), wmax))
    bs = (np.float32(s_in) * np.asarray(s_w, np.float32)).tolist()
    b = m.tensor("b", [cout], "int32", bs, 0, data=rng.integers(-3000, 3000, cout).astype(np.int32))
    probe = _probe_hw(hw, kernel, stride, padding, dilation)
    y = m.tensor("y", [batch, *probe, cout], "int8", s_out, int(rng.integers(-10, 10)))
    m.op(Op.DEPTHWISE_CONV_2D, [x, w, b], [y], "DepthwiseConv2DOptions", Padding=_PAD[padding],
         StrideW=stride[1], StrideH=stride[0], DepthMultiplier=multiplier,
         FusedActivationFunction=_ACT[act], DilationWFactor=dilation[1], DilationHFactor=dilation[0])
    return m.build([x], [y]), {"x": _act_input(rng, (batch, *hw, cin))}


def _probe_hw(hw, kernel, stride, padding, dilation):
    out = []
    for size, k, s, d in zip(hw, kernel, stride, dilation):
        span = d * (k - 1) + 1
        out.append(-(-size // s) if padding == "same" else (size - span) // s + 1)
    return out


def binary(rng, code, shape_a=(2, 5, 4, 6), shape_b=None, act="none", scales=None):
    """ADD or MUL; ``scales`` = (a, b, y) fixes the scales (powers of two give exact ties)."""
    m = ModelBuilder()
    shape_b = shape_b or shape_a
    sa, sb, sy = scales or (_scale(rng, -6, -2), _scale(rng, -6, -2),
                            _scale(rng, -5, -1) if code == Op.ADD else _scale(rng, -9, -4))
    a = m.tensor("a", list(shape_a), "int8", sa, int(rng.integers(-30, 30)))
    bb = m.tensor("b", list(shape_b), "int8", sb, int(rng.integers(-30, 30)))
    out_shape = np.broadcast_shapes(shape_a, shape_b)
    y = m.tensor("y", list(out_shape), "int8", sy, int(rng.integers(-10, 10)))
    m.op(code, [a, bb], [y], "AddOptions" if code == Op.ADD else "MulOptions",
         FusedActivationFunction=_ACT[act])
    return m.build([a, bb], [y]), {"a": _act_input(rng, shape_a), "b": _act_input(rng, shape_b)}


def golden_cases(seed=2024):
    """The cases of ``tests/golden/litert.npz``: name -> (model bytes, inputs)."""
    rng = np.random.default_rng(seed)
    cases = {}
    for i in range(4):
        cases[f"fc_{i}"] = fully_connected(rng, batch=8, n_in=int(rng.integers(8, 200)),
                                           n_out=int(rng.integers(3, 30)), per_channel=bool(i % 2),
                                           act=("none", "relu", "relu6", "none")[i])
        cases[f"conv_{i}"] = conv2d(rng, cin=int(rng.integers(1, 12)), cout=int(rng.integers(1, 12)),
                                    stride=(1 + i % 2, 1), padding=("same", "valid")[i % 2],
                                    dilation=(1, 1 + (i == 3)), act=("none", "relu", "relu6", "relu_n1_to_1")[i])
        cases[f"dw_{i}"] = depthwise(rng, cin=(3, 11, 16, 9)[i], multiplier=1 + (i == 2),
                                     stride=(1, 1 + i % 2), padding=("same", "valid")[i % 2],
                                     act=("none", "relu6", "none", "relu")[i])
        cases[f"add_{i}"] = binary(rng, Op.ADD, act=("none", "relu")[i % 2])
        cases[f"mul_{i}"] = binary(rng, Op.MUL, act=("none", "relu6")[i % 2])
        cases[f"avgpool_{i}"] = pool(rng, Op.AVERAGE_POOL_2D, padding=("same", "valid")[i % 2])
        cases[f"maxpool_{i}"] = pool(rng, Op.MAX_POOL_2D, padding=("same", "valid")[i % 2],
                                     act=("none", "relu")[i % 2])
        cases[f"softmax_{i}"] = softmax(rng, beta=(1.0, 0.5)[i % 2])
        cases[f"quantize_{i}"] = quantize(rng)
        cases[f"requantize_{i}"] = requantize_op(rng)
        cases[f"dequantize_{i}"] = dequantize(rng)
        cases[f"concat_{i}"] = concat(rng, same=True, axis=(3, 1)[i % 2],
                                      shapes=((2, 4, 3, 5), (2, 4, 3, 2)) if i % 2 == 0 else ((2, 4, 3, 5), (2, 1, 3, 5)))
        cases[f"mean_{i}"] = mean(rng, keep_dims=bool(i % 2))
        cases[f"pad_{i}"] = pad(rng)
    # exact ties: scale ratios that are powers of two
    cases["add_ties"] = binary(rng, Op.ADD, shape_a=(4, 8, 8, 4), scales=(0.5, 0.25, 1.0))
    cases["add_ties_b"] = binary(rng, Op.ADD, shape_a=(4, 8, 8, 4), scales=(0.75, 0.125, 1.0))
    cases["add_broadcast"] = binary(rng, Op.ADD, shape_a=(2, 3, 4, 6), shape_b=(6,))
    cases["mul_ties"] = binary(rng, Op.MUL, shape_a=(4, 8, 8, 4), scales=(0.5, 0.25, 8.0))
    cases["fc_ties"] = fully_connected(rng, batch=64, n_in=16, n_out=8, out_scale=1.0)
    cases["small_cnn"] = small_cnn(rng)
    # exact ties of the conv and FC multipliers (M = 2**-7; one input channel, so the
    # accumulators sweep every residue): ruy (litert-optimized) rounds the negative ones half
    # up, the reference kernels half away from zero
    cases["conv_ties"] = conv2d(rng, batch=4, hw=(8, 8), cin=1, cout=4, kernel=(1, 1),
                                scales=(2.0 ** -4, 2.0 ** -6, 2.0 ** -3))
    cases["fc_ties_pc"] = fully_connected(rng, batch=128, n_in=1, n_out=8, per_channel=True,
                                          scales=(2.0 ** -5, 2.0 ** -6, 2.0 ** -4))
    cases.update(near_tie_cases())
    return cases


# ------------------------------------------------------------------ near-tie cases (``nt_*``)

def _near(rng, value):
    """float32 ``value * (1 ± 2**-u)``, ``u`` uniform in [6, 26]: a scale whose multiplier is a
    power of two up to a random relative error down to float32's resolution (and, where the
    error falls below it, exactly a power of two)."""
    return float(np.float32(value * (1.0 + rng.choice((-1.0, 1.0)) * 2.0 ** -rng.uniform(6, 26))))


def _tie_shift(n_terms, wmax, spread=64.0):
    """The power of two ``2**-k`` that maps accumulators of ``n_terms`` products of int8
    activations and weights in ``[-wmax, wmax]`` to outputs spread about ``±spread``."""
    std = np.sqrt(n_terms) * 74.0 * max(wmax, 1) / np.sqrt(3.0)
    return max(1, int(round(np.log2(std / spread))))


def _tie_scales(rng, n_terms, wmax, channels=None):
    """(s_in, s_w, s_out) with ``s_in*s_w/s_out`` near ``2**-k`` (per channel for a list)."""
    s_in, s_out = _scale(rng, -6, -3), _scale(rng, -4, -1)
    k = _tie_shift(n_terms, wmax)
    if channels is None:
        return s_in, _near(rng, s_out * 2.0 ** -k / s_in), s_out
    return s_in, [_near(rng, s_out * 2.0 ** -(k + int(rng.integers(-1, 2))) / s_in)
                  for _ in range(channels)], s_out


def near_tie_net(rng, batch=4, hw=(12, 12), cin=3, c=8, depthwise_layer=False, n_out=16):
    """conv (relu) -> [depthwise (relu6) | 1x1 conv] -> add -> pool -> reshape -> fc, every
    multiplier near a power of two; the reshaped tensor and the logits are outputs."""
    m = ModelBuilder()
    s_x, zp_x = _scale(rng, -6, -4), int(rng.integers(-20, 20))
    x = m.tensor("x", [batch, *hw, cin], "int8", s_x, zp_x)
    s1, k1 = _scale(rng, -4, -1), _tie_shift(9 * cin, 127)
    sw1 = [_near(rng, s1 * 2.0 ** -k1 / s_x) for _ in range(c)]
    w1 = m.tensor("w1", [c, 3, 3, cin], "int8", sw1, 0, data=_weights(rng, (c, 3, 3, cin)))
    b1 = m.tensor("b1", [c], "int32", (np.float32(s_x) * np.asarray(sw1, np.float32)).tolist(), 0,
                  data=rng.integers(-3000, 3000, c).astype(np.int32))
    h1 = m.tensor("h1", [batch, *hw, c], "int8", s1, -128)
    m.op(Op.CONV_2D, [x, w1, b1], [h1], "Conv2DOptions", Padding=0, StrideW=1, StrideH=1,
         FusedActivationFunction=1, DilationWFactor=1, DilationHFactor=1)
    s2 = _near(rng, s1 * 2.0)
    if depthwise_layer:
        k2 = _tie_shift(9, 127, 32.0)
        sw2 = [_near(rng, s2 * 2.0 ** -k2 / s1) for _ in range(c)]
        w2 = m.tensor("w2", [1, 3, 3, c], "int8", sw2, 0, axis=3, data=_weights(rng, (1, 3, 3, c)))
        code, opts, extra = Op.DEPTHWISE_CONV_2D, "DepthwiseConv2DOptions", dict(DepthMultiplier=1)
        act = 3
    else:
        k2 = _tie_shift(c, 127, 32.0)
        sw2 = [_near(rng, s2 * 2.0 ** -k2 / s1) for _ in range(c)]
        w2 = m.tensor("w2", [c, 1, 1, c], "int8", sw2, 0, data=_weights(rng, (c, 1, 1, c)))
        code, opts, extra = Op.CONV_2D, "Conv2DOptions", {}
        act = 0
    b2 = m.tensor("b2", [c], "int32", (np.float32(s1) * np.asarray(sw2, np.float32)).tolist(), 0,
                  data=rng.integers(-3000, 3000, c).astype(np.int32))
    h2 = m.tensor("h2", [batch, *hw, c], "int8", s2, int(rng.integers(-20, 20)))
    m.op(code, [h1, w2, b2], [h2], opts, Padding=0, StrideW=1, StrideH=1, FusedActivationFunction=act,
         DilationWFactor=1, DilationHFactor=1, **extra)
    s3 = _near(rng, s2 * 2.0)
    h3 = m.tensor("h3", [batch, *hw, c], "int8", s3, int(rng.integers(-20, 20)))
    m.op(Op.ADD, [h1, h2], [h3], "AddOptions", FusedActivationFunction=0)
    ph = [d // 2 for d in hw]
    h4 = m.tensor("h4", [batch, *ph, c], "int8", s3, m.tensors[h3]["zero_point"])
    m.op(Op.AVERAGE_POOL_2D if depthwise_layer else Op.MAX_POOL_2D, [h3], [h4], "Pool2DOptions",
         Padding=1, StrideW=2, StrideH=2, FilterWidth=2, FilterHeight=2, FusedActivationFunction=0)
    flat = ph[0] * ph[1] * c
    shape = m.tensor("shape", [2], "int32", data=np.array([batch, flat], np.int32))
    h5 = m.tensor("h5", [batch, flat], "int8", s3, m.tensors[h3]["zero_point"])
    m.op(Op.RESHAPE, [h4, shape], [h5], "ReshapeOptions", NewShape=[batch, flat])
    s_out = _scale(rng, -3, 0)
    s_fc = _near(rng, s_out * 2.0 ** -_tie_shift(flat, 127) / s3)
    fw = m.tensor("fc_w", [n_out, flat], "int8", s_fc, 0, data=_weights(rng, (n_out, flat)))
    fb = m.tensor("fc_b", [n_out], "int32", float(np.float32(s3) * np.float32(s_fc)), 0,
                  data=rng.integers(-3000, 3000, n_out).astype(np.int32))
    logits = m.tensor("logits", [batch, n_out], "int8", s_out, int(rng.integers(-10, 10)))
    m.op(Op.FULLY_CONNECTED, [h5, fw, fb], [logits], "FullyConnectedOptions", FusedActivationFunction=0)
    return m.build([x], [h5, logits]), {"x": _act_input(rng, (batch, *hw, cin))}


def near_tie_cases(seed=2025):
    """Larger cases whose quantization parameters put every multiplier near (or at) a power of
    two, with small weight ranges so that the accumulators are small and hit the ties often."""
    rng = np.random.default_rng(seed)
    cases = {}
    wmaxes = (1, 3, 15, 127)
    for i in range(8):
        per_channel, wmax = bool(i % 2), wmaxes[i % 4]
        n_in, n_out = int(rng.integers(4, 48)), int(rng.integers(8, 40))
        cases[f"nt_fc_{i}"] = fully_connected(
            rng, batch=192, n_in=n_in, n_out=n_out, per_channel=per_channel, wmax=wmax,
            act=("none", "relu", "none", "relu6")[i % 4],
            scales=_tie_scales(rng, n_in, wmax, n_out if per_channel else None))
    for i in range(8):
        cin, cout, wmax = int(rng.integers(1, 10)), int(rng.integers(4, 20)), wmaxes[(i + 1) % 4]
        kernel = ((3, 3), (1, 1), (3, 3), (5, 3))[i % 4]
        cases[f"nt_conv_{i}"] = conv2d(
            rng, batch=4, hw=(14, 13), cin=cin, cout=cout, kernel=kernel, stride=(1 + (i % 3 == 2), 1),
            padding=("same", "valid")[i % 2], act=("none", "relu", "relu6", "relu_n1_to_1")[i % 4],
            wmax=wmax, scales=_tie_scales(rng, kernel[0] * kernel[1] * cin, wmax, cout))
    # depthwise: channel counts below, at and above 8 (and multiples of 8, and a multiplier)
    for i, (cin, mult) in enumerate(((3, 1), (7, 1), (8, 1), (9, 1), (16, 1), (4, 2), (8, 3), (13, 1))):
        wmax = wmaxes[i % 4]
        cases[f"nt_dw_{i}"] = depthwise(
            rng, batch=3, hw=(12, 11), cin=cin, multiplier=mult, stride=(1, 1 + (i % 3 == 1)),
            padding=("same", "valid")[i % 2], act=("none", "relu6", "relu", "none")[i % 4], wmax=wmax,
            scales=_tie_scales(rng, 9, wmax, cin * mult))
    for i in range(6):
        sa = _scale(rng, -6, -2)
        sb = _near(rng, sa * 2.0 ** int(rng.integers(-1, 2)))
        sy = _near(rng, max(sa, sb) * 2.0 ** int(rng.integers(0, 3)))
        cases[f"nt_add_{i}"] = binary(rng, Op.ADD, shape_a=(4, 12, 12, 8), scales=(sa, sb, sy),
                                      act=("none", "relu")[i % 2])
    for i in range(4):
        for code, kind in ((Op.AVERAGE_POOL_2D, "avgpool"), (Op.MAX_POOL_2D, "maxpool")):
            cases[f"nt_{kind}_{i}"] = pool(rng, code, batch=4, hw=(16, 15), c=(3, 8, 11, 16)[i],
                                           kernel=((2, 2), (3, 3), (3, 2), (2, 3))[i],
                                           stride=((2, 2), (1, 1), (2, 1), (2, 2))[i],
                                           padding=("same", "valid")[i % 2], act=("none", "relu")[i % 2])
    cases["nt_net"] = near_tie_net(rng)
    cases["nt_net_dw"] = near_tie_net(rng, depthwise_layer=True)
    return cases


def pool(rng, code, batch=2, hw=(7, 8), c=5, kernel=(3, 2), stride=(2, 2), padding="same",
         act="none", same_params=True):
    m = ModelBuilder()
    s_in, zp = _scale(rng, -6, -2), int(rng.integers(-30, 30))
    x = m.tensor("x", [batch, *hw, c], "int8", s_in, zp)
    out_hw = _probe_hw(hw, kernel, stride, padding, (1, 1))
    y = m.tensor("y", [batch, *out_hw, c], "int8", s_in, zp)
    m.op(code, [x], [y], "Pool2DOptions", Padding=_PAD[padding], StrideW=stride[1], StrideH=stride[0],
         FilterWidth=kernel[1], FilterHeight=kernel[0], FusedActivationFunction=_ACT[act])
    return m.build([x], [y]), {"x": _act_input(rng, (batch, *hw, c))}


def softmax(rng, shape=(4, 10), beta=1.0):
    m = ModelBuilder()
    x = m.tensor("x", list(shape), "int8", _scale(rng, -5, -2), int(rng.integers(-30, 30)))
    y = m.tensor("y", list(shape), "int8", 1.0 / 256, -128)
    m.op(Op.SOFTMAX, [x], [y], "SoftmaxOptions", Beta=beta)
    return m.build([x], [y]), {"x": _act_input(rng, shape)}


def quantize(rng, shape=(3, 17)):
    m = ModelBuilder()
    x = m.tensor("x", list(shape), "float32")
    s = _scale(rng, -6, -3)
    y = m.tensor("y", list(shape), "int8", s, int(rng.integers(-20, 20)))
    m.op(Op.QUANTIZE, [x], [y], "QuantizeOptions")
    # values near ties: k * s / 2 plus tiny noise, and random ones
    k = rng.integers(-300, 300, shape).astype(np.float32)
    xv = (k * np.float32(s) * np.float32(0.5)).astype(np.float32)
    xv[0] = rng.normal(0, 64 * s, shape[1]).astype(np.float32)
    return m.build([x], [y]), {"x": xv}


def requantize_op(rng, shape=(3, 17)):
    m = ModelBuilder()
    x = m.tensor("x", list(shape), "int8", _scale(rng, -6, -3), int(rng.integers(-20, 20)))
    y = m.tensor("y", list(shape), "int8", _scale(rng, -6, -3), int(rng.integers(-20, 20)))
    m.op(Op.QUANTIZE, [x], [y], "QuantizeOptions")
    return m.build([x], [y]), {"x": _act_input(rng, shape)}


def dequantize(rng, shape=(3, 17)):
    m = ModelBuilder()
    x = m.tensor("x", list(shape), "int8", _scale(rng, -6, -3), int(rng.integers(-20, 20)))
    y = m.tensor("y", list(shape), "float32")
    m.op(Op.DEQUANTIZE, [x], [y], "DequantizeOptions")
    return m.build([x], [y]), {"x": _act_input(rng, shape)}


def concat(rng, shapes=((2, 4, 3, 5), (2, 4, 3, 2)), axis=3, same=False):
    m = ModelBuilder()
    s0, z0 = _scale(rng, -6, -3), int(rng.integers(-20, 20))
    ins, feeds = [], {}
    for i, shape in enumerate(shapes):
        s, z = (s0, z0) if same else (_scale(rng, -6, -3), int(rng.integers(-20, 20)))
        ins.append(m.tensor(f"x{i}", list(shape), "int8", s, z))
        feeds[f"x{i}"] = _act_input(rng, shape)
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    y = m.tensor("y", out, "int8", s0 if same else _scale(rng, -6, -3), z0 if same else int(rng.integers(-20, 20)))
    m.op(Op.CONCATENATION, ins, [y], "ConcatenationOptions", Axis=axis, FusedActivationFunction=0)
    return m.build(ins, [y]), feeds


def mean(rng, shape=(2, 5, 6, 7), axes=(1, 2), keep_dims=True, same=False):
    m = ModelBuilder()
    s, z = _scale(rng, -6, -3), int(rng.integers(-20, 20))
    x = m.tensor("x", list(shape), "int8", s, z)
    ax = m.tensor("axes", [len(axes)], "int32", data=np.asarray(axes, np.int32))
    out = [1 if i in axes else d for i, d in enumerate(shape)] if keep_dims else \
        [d for i, d in enumerate(shape) if i not in axes]
    y = m.tensor("y", out, "int8", *((s, z) if same else (_scale(rng, -6, -3), int(rng.integers(-20, 20)))))
    m.op(Op.MEAN, [x, ax], [y], "ReducerOptions", KeepDims=keep_dims)
    return m.build([x], [y]), {"x": _act_input(rng, shape)}


def pad(rng, shape=(2, 4, 5, 3), paddings=((0, 0), (1, 2), (2, 0), (0, 1))):
    m = ModelBuilder()
    s, z = _scale(rng, -6, -3), int(rng.integers(-20, 20))
    x = m.tensor("x", list(shape), "int8", s, z)
    p = m.tensor("paddings", [len(shape), 2], "int32", data=np.asarray(paddings, np.int32))
    out = [d + a + b for d, (a, b) in zip(shape, paddings)]
    y = m.tensor("y", out, "int8", s, z)
    m.op(Op.PAD, [x, p], [y], "PadOptions")
    return m.build([x], [y]), {"x": _act_input(rng, shape)}


def small_cnn(rng, batch=2):
    """conv -> relu6 depthwise -> add (residual) -> avg pool -> reshape -> fc -> softmax,
    with quantize in and dequantize out: every layout change of the importer."""
    m = ModelBuilder()
    s_x = _scale(rng, -6, -4)
    xf = m.tensor("image", [batch, 8, 8, 3], "float32")
    x = m.tensor("image_q", [batch, 8, 8, 3], "int8", s_x, 3)
    m.op(Op.QUANTIZE, [xf], [x], "QuantizeOptions")
    s1 = _scale(rng, -4, -2)
    sw = [_scale(rng, -8, -6) for _ in range(8)]
    w = m.tensor("conv_w", [8, 3, 3, 3], "int8", sw, 0, data=_weights(rng, (8, 3, 3, 3)))
    b = m.tensor("conv_b", [8], "int32", (np.float32(s_x) * np.asarray(sw, np.float32)).tolist(), 0,
                 data=rng.integers(-2000, 2000, 8).astype(np.int32))
    h1 = m.tensor("h1", [batch, 8, 8, 8], "int8", s1, -128)
    m.op(Op.CONV_2D, [x, w, b], [h1], "Conv2DOptions", Padding=0, StrideW=1, StrideH=1,
         FusedActivationFunction=1, DilationWFactor=1, DilationHFactor=1)
    s2 = _scale(rng, -4, -2)
    dw_s = [_scale(rng, -8, -5) for _ in range(8)]
    dw = m.tensor("dw_w", [1, 3, 3, 8], "int8", dw_s, 0, axis=3, data=_weights(rng, (1, 3, 3, 8)))
    db = m.tensor("dw_b", [8], "int32", (np.float32(s1) * np.asarray(dw_s, np.float32)).tolist(), 0,
                  data=rng.integers(-2000, 2000, 8).astype(np.int32))
    h2 = m.tensor("h2", [batch, 8, 8, 8], "int8", s2, -128)
    m.op(Op.DEPTHWISE_CONV_2D, [h1, dw, db], [h2], "DepthwiseConv2DOptions", Padding=0, StrideW=1,
         StrideH=1, DepthMultiplier=1, FusedActivationFunction=3, DilationWFactor=1, DilationHFactor=1)
    s3 = _scale(rng, -3, -1)
    h3 = m.tensor("h3", [batch, 8, 8, 8], "int8", s3, -100)
    m.op(Op.ADD, [h1, h2], [h3], "AddOptions", FusedActivationFunction=0)
    h4 = m.tensor("h4", [batch, 4, 4, 8], "int8", s3, -100)
    m.op(Op.AVERAGE_POOL_2D, [h3], [h4], "Pool2DOptions", Padding=1, StrideW=2, StrideH=2,
         FilterWidth=2, FilterHeight=2, FusedActivationFunction=0)
    shape = m.tensor("shape", [2], "int32", data=np.array([batch, 128], np.int32))
    h5 = m.tensor("h5", [batch, 128], "int8", s3, -100)
    m.op(Op.RESHAPE, [h4, shape], [h5], "ReshapeOptions", NewShape=[batch, 128])
    s_fc = _scale(rng, -9, -7)
    fw = m.tensor("fc_w", [10, 128], "int8", s_fc, 0, data=_weights(rng, (10, 128)))
    fb = m.tensor("fc_b", [10], "int32", float(np.float32(s3) * np.float32(s_fc)), 0,
                  data=rng.integers(-2000, 2000, 10).astype(np.int32))
    logits = m.tensor("logits", [batch, 10], "int8", _scale(rng, -3, 0), 5)
    m.op(Op.FULLY_CONNECTED, [h5, fw, fb], [logits], "FullyConnectedOptions", FusedActivationFunction=0)
    probs = m.tensor("probs", [batch, 10], "int8", 1.0 / 256, -128)
    m.op(Op.SOFTMAX, [logits], [probs], "SoftmaxOptions", Beta=1.0)
    out = m.tensor("probs_f", [batch, 10], "float32")
    m.op(Op.DEQUANTIZE, [probs], [out], "DequantizeOptions")
    image = rng.uniform(-60 * s_x, 60 * s_x, (batch, 8, 8, 3)).astype(np.float32)
    return m.build([xf], [out, logits]), {"image": image}
