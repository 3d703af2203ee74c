"""A BERT-style encoder block as an ONNX model, and its quantization by ONNX Runtime.

:func:`build` writes the float model with ``onnx.helper``: embeddings ``x`` of shape
``[batch, seq, hidden]``, Q/K/V projections (``MatMul`` + ``Add``), the heads split with
``Reshape``/``Transpose`` (target shapes computed from ``Shape``/``Gather``/``Unsqueeze``/
``Concat`` as PyTorch exports them, or constants), scaled dot-product attention of two
activations (``MatMul``, ``Div`` by ``sqrt(head_size)``, optionally a causal mask with
``Where``, ``Softmax``), the attention output projection, a residual ``Add`` and
``LayerNormalization``, then the feed-forward block (``MatMul`` + ``Add``, GELU as the opset-20
``Gelu`` op or as the ``Erf`` pattern ``x * (1 + erf(x / sqrt(2))) * 0.5``, ``MatMul`` + ``Add``),
a second residual ``Add`` and ``LayerNormalization``.

:func:`quantize` runs ``onnxruntime.quantization.quantize_static`` on it (QDQ or QOperator,
per-tensor or per-channel weights) with a random calibration reader.

``python -m qsim.examples.bert_block OUT_DIR`` writes the float model, every quantized variant
and a random input (``x.npz``) into ``OUT_DIR``; ``qsim infer OUT_DIR/bert_qdq_u8_pc.onnx
--inputs OUT_DIR/x.npz --output y.npz`` then runs one.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["build", "quantize", "VARIANTS", "calibration", "main"]

#: name -> quantize_static settings (format, activation type, weight type, per_channel)
VARIANTS: dict[str, tuple[str, str, str, bool]] = {
    "qdq_u8_pt": ("qdq", "uint8", "int8", False),
    "qdq_u8_pc": ("qdq", "uint8", "int8", True),
    "qdq_s8_pc": ("qdq", "int8", "int8", True),
    "qop_u8_pt": ("qoperator", "uint8", "int8", False),
    "qop_u8_pc": ("qoperator", "uint8", "int8", True),
    "qop_s8_pc": ("qoperator", "int8", "int8", True),
}


def build(*, batch: int = 1, seq: int = 16, hidden: int = 64, heads: int = 4, ffn: int = 128,
          gelu: str = "op", shapes: str = "computed", mask: bool = False,
          seed: int = 0) -> onnx.ModelProto:
    """The float encoder block (opset 20, IR 9).

    Parameters
    ----------
    batch, seq, hidden, heads, ffn : int
        Input ``x`` is ``[batch, seq, hidden]``; ``hidden`` must be a multiple of ``heads``;
        the feed-forward block is ``hidden -> ffn -> hidden``.
    gelu : ``"op"`` or ``"erf"``
        The opset-20 ``Gelu`` operator, or the ``Div``/``Erf``/``Add``/``Mul``/``Mul`` pattern.
    shapes : ``"computed"`` or ``"constant"``
        Reshape targets from ``Shape(x)`` (``Gather``, ``Unsqueeze``, ``Concat``) or as
        initializers.
    mask : bool
        A causal mask: ``Where(mask, scores, -10000)`` before the softmax.
    seed : int
        Of the random weights.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
    if gelu not in ("op", "erf"):
        raise ValueError(f"gelu must be 'op' or 'erf', not {gelu!r}")
    if shapes not in ("computed", "constant"):
        raise ValueError(f"shapes must be 'computed' or 'constant', not {shapes!r}")
    head = hidden // heads
    rng = np.random.default_rng(seed)
    inits: list = []
    nodes: list = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(name: str, k: int, n: int) -> str:
        return const(name, rng.normal(0, 1 / math.sqrt(k), (k, n)).astype(np.float32))

    def bias(name: str, n: int) -> str:
        return const(name, rng.normal(0, 0.05, n).astype(np.float32))

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def dense(x: str, name: str, k: int, n: int) -> str:
        h = node("MatMul", [x, weight(f"{name}.weight", k, n)], f"{name}.matmul")
        return node("Add", [h, bias(f"{name}.bias", n)], f"{name}.out")

    if shapes == "computed":
        shape_x = node("Shape", ["x"], "shape_x")
        dims = []
        for axis in (0, 1):
            g = node("Gather", [shape_x, const(f"axis{axis}", np.array(axis, np.int64))],
                     f"dim{axis}", axis=0)
            dims.append(node("Unsqueeze", [g, const(f"unsq_axes{axis}", np.array([0], np.int64))],
                             f"dim{axis}_1d"))
        split = node("Concat", [*dims, const("heads_dims", np.array([heads, head], np.int64))],
                     "split_shape", axis=0)
        merge = node("Concat", [*dims, const("hidden_dim", np.array([hidden], np.int64))],
                     "merge_shape", axis=0)
    else:
        split = const("split_shape", np.array([batch, seq, heads, head], np.int64))
        merge = const("merge_shape", np.array([batch, seq, hidden], np.int64))

    q = dense("x", "query", hidden, hidden)
    k = dense("x", "key", hidden, hidden)
    v = dense("x", "value", hidden, hidden)
    q = node("Transpose", [node("Reshape", [q, split], "query.heads")], "query.t", perm=[0, 2, 1, 3])
    k = node("Transpose", [node("Reshape", [k, split], "key.heads")], "key.t", perm=[0, 2, 3, 1])
    v = node("Transpose", [node("Reshape", [v, split], "value.heads")], "value.t", perm=[0, 2, 1, 3])
    scores = node("MatMul", [q, k], "scores")
    scores = node("Div", [scores, const("sqrt_head", np.array(math.sqrt(head), np.float32))],
                  "scores.scaled")
    if mask:
        causal = np.tril(np.ones((seq, seq), bool))
        scores = node("Where", [const("causal", causal), scores,
                                const("masked", np.array(-10000.0, np.float32))], "scores.masked")
    probs = node("Softmax", [scores], "probs", axis=-1)
    context = node("MatMul", [probs, v], "context")
    context = node("Transpose", [context], "context.t", perm=[0, 2, 1, 3])
    context = node("Reshape", [context, merge], "context.merged")
    attention = dense(context, "attention.output", hidden, hidden)
    h = node("Add", [attention, "x"], "attention.residual")

    def layer_norm(x: str, name: str) -> str:
        gamma = const(f"{name}.gamma", (1 + rng.normal(0, 0.1, hidden)).astype(np.float32))
        beta = const(f"{name}.beta", rng.normal(0, 0.05, hidden).astype(np.float32))
        return node("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=1e-12)

    h = layer_norm(h, "attention.norm")
    f = dense(h, "intermediate", hidden, ffn)
    if gelu == "op":
        f = node("Gelu", [f], "intermediate.gelu")
    else:
        t = node("Div", [f, const("sqrt2", np.array(math.sqrt(2.0), np.float32))], "gelu.div")
        t = node("Erf", [t], "gelu.erf")
        t = node("Add", [t, const("one", np.array(1.0, np.float32))], "gelu.add")
        t = node("Mul", [f, t], "gelu.mul")
        f = node("Mul", [t, const("half", np.array(0.5, np.float32))], "intermediate.gelu")
    f = dense(f, "output", ffn, hidden)
    y = node("Add", [f, h], "output.residual")
    y = layer_norm(y, "output.norm")
    nodes.append(helper.make_node("Identity", [y], ["y"], name="y"))

    graph = helper.make_graph(
        nodes, "bert_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, hidden])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)],
                              producer_name="qsim.examples.bert_block")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def calibration(*, batch: int = 1, seq: int = 16, hidden: int = 64, batches: int = 8,
                seed: int = 1) -> list[np.ndarray]:
    """Random embeddings (standard normal) for the calibration reader."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (batch, seq, hidden)).astype(np.float32) for _ in range(batches)]


def quantize(model: onnx.ModelProto, *, fmt: str = "qdq", activation_type: str = "uint8",
             weight_type: str = "int8", per_channel: bool = False,
             data: list[np.ndarray] | None = None) -> onnx.ModelProto:
    """``quantize_static`` of ``model`` (MinMax calibration on ``data``, default
    :func:`calibration` of the model's input shape)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    if data is None:
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        data = calibration(batch=dims[0], seq=dims[1], hidden=dims[2])
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator = iter([{name: d} for d in data])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "quantized.onnx")
        onnx.save(model, src)
        quantize_static(src, dst, Reader(), quant_format=formats[fmt], per_channel=per_channel,
                        activation_type=types[activation_type], weight_type=types[weight_type])
        return onnx.load(dst)


def main(argv: list[str] | None = None) -> int:
    import onnx

    parser = argparse.ArgumentParser(prog="python -m qsim.examples.bert_block",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--gelu", choices=("op", "erf"), default="op")
    parser.add_argument("--shapes", choices=("computed", "constant"), default="computed")
    parser.add_argument("--mask", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    model = build(gelu=args.gelu, shapes=args.shapes, mask=args.mask)
    onnx.save(model, os.path.join(args.out_dir, "bert_float.onnx"))
    for variant, (fmt, act, wt, pc) in VARIANTS.items():
        q = quantize(model, fmt=fmt, activation_type=act, weight_type=wt, per_channel=pc)
        onnx.save(q, os.path.join(args.out_dir, f"bert_{variant}.onnx"))
    x = np.random.default_rng(2).normal(0, 1, (1, 16, 64)).astype(np.float32)
    np.savez(os.path.join(args.out_dir, "x.npz"), x=x)
    print(f"wrote {args.out_dir}: bert_float.onnx, "
          + ", ".join(f"bert_{v}.onnx" for v in VARIANTS) + ", x.npz")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
