"""Small ONNX operators in numpy: constant folding at import and the ``onnx_op`` layer at run time.

ONNX models compute some tensors with plain operators around the quantized ones: a scale as
``Div(range, 255)``, a zero point as ``Cast(Round(Clip(...)))`` (the expanded
``DynamicQuantizeLinear``), a shape with ``Unsqueeze``. The importer folds such a node when all
its inputs are constants (:func:`evaluate` on the constants) and otherwise emits an
:class:`~qsim.nn.layers.OnnxOp` layer, which the engine runs with the same function.

Every operator here is exact under IEEE arithmetic in the tensor's own dtype (``+ - * /``,
``sqrt``, comparisons, min/max, rounding, reductions by min/max, casts between exactly
representable values), so its result does not depend on the engine that computes it.
Transcendental functions (``Exp``, ``Erf``, ...) are deliberately absent.

:data:`OPS` maps each operator name to ``(function, static)``: ``function(inputs, attrs,
opset)`` takes the node's inputs by position (``None`` for an omitted optional input) and
returns its outputs; ``static`` lists the input positions that must be constants (axes,
shapes) for the output's shape to be known at import.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from qsim.errors import ConfigError

__all__ = ["OPS", "evaluate", "ONNX_DTYPES"]

#: numpy dtypes of the ONNX element types ``Cast`` can produce here (TensorProto numbers).
ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
               7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
               13: np.uint64}

Inputs = Sequence["np.ndarray | None"]


def _same_type(op: str, values: Sequence[np.ndarray]) -> np.dtype:
    dtypes = {v.dtype for v in values}
    if len(dtypes) != 1:
        raise ConfigError(f"{op} needs inputs of one element type, not "
                          f"{', '.join(sorted(d.name for d in dtypes))}")
    return dtypes.pop()


def _binary(op: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def run(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
        a, b = (np.asarray(v) for v in inputs[:2])
        dtype = _same_type(op, (a, b))
        with np.errstate(all="ignore"):  # IEEE results (inf, nan) or integer wrap-around
            return [np.asarray(fn(a, b)).astype(dtype, copy=False)]
    return run


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        if np.any(b == 0):
            raise ConfigError("integer Div by zero")
        # C's division truncates toward zero (ONNX Runtime); numpy's // floors
        q = np.abs(a.astype(np.int64)) // np.abs(b.astype(np.int64))
        return np.where((a < 0) != (b < 0), -q, q)
    return a / b


def _variadic(op: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def run(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
        values = [np.asarray(v) for v in inputs if v is not None]
        if not values:
            raise ConfigError(f"{op} needs at least one input")
        dtype = _same_type(op, values)
        out = values[0]
        for v in values[1:]:
            out = fn(out, v)
        return [np.asarray(out).astype(dtype, copy=False)]
    return run


def _unary(fn: Callable[[np.ndarray], np.ndarray], *, floats_only: bool = False, op: str = ""):
    def run(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
        x = np.asarray(inputs[0])
        if floats_only and x.dtype.kind != "f":
            raise ConfigError(f"{op} needs a floating-point input, not {x.dtype}")
        with np.errstate(all="ignore"):
            return [np.asarray(fn(x)).astype(x.dtype, copy=False)]
    return run


def _reciprocal(x: np.ndarray) -> np.ndarray:
    return np.asarray(1, x.dtype) / x


def _clip(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    if opset < 11:
        lo = attrs.get("min", -np.inf)
        hi = attrs.get("max", np.inf)
    else:
        lo = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
        hi = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    out = x
    if lo is not None:
        out = np.maximum(out, np.asarray(lo).astype(x.dtype).reshape(()))
    if hi is not None:
        out = np.minimum(out, np.asarray(hi).astype(x.dtype).reshape(()))
    return [np.asarray(out).astype(x.dtype, copy=False)]


def _cast(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    to = int(attrs.get("to", 0))
    if to not in ONNX_DTYPES:
        raise ConfigError(f"Cast to element type {to} is not supported")
    x = np.asarray(inputs[0])
    target = np.dtype(ONNX_DTYPES[to])
    if target.kind in "iu" and x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise ConfigError("Cast of a non-finite float to an integer type is undefined")
        info = np.iinfo(target)
        t = np.trunc(x.astype(np.float64))
        if np.any((t < info.min) | (t > info.max)):
            raise ConfigError(f"Cast of a value outside {target.name} to {target.name} is "
                              f"undefined in ONNX")
        return [t.astype(target)]
    with np.errstate(all="ignore"):
        return [x.astype(target)]


def _axes(inputs: Inputs, attrs: dict, opset: int, since: int, position: int = 1) -> tuple | None:
    if opset >= since:
        value = inputs[position] if len(inputs) > position else None
        return None if value is None else tuple(int(a) for a in np.asarray(value).reshape(-1))
    axes = attrs.get("axes")
    return None if axes is None else tuple(int(a) for a in axes)


def _reduce(op: str, fn: Callable[..., np.ndarray]):
    def run(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
        x = np.asarray(inputs[0])
        axes = _axes(inputs, attrs, opset, 18)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if int(attrs.get("noop_with_empty_axes", 0)):
                return [x]
            axes = tuple(range(x.ndim))
        if x.size == 0:
            raise ConfigError(f"{op} of an empty tensor is not supported")
        return [np.asarray(fn(x, axis=tuple(a % max(x.ndim, 1) for a in axes),
                              keepdims=keep)).astype(x.dtype, copy=False)]
    return run


def _where(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    cond, a, b = (np.asarray(v) for v in inputs[:3])
    if cond.dtype != np.bool_:
        raise ConfigError(f"Where needs a bool condition, not {cond.dtype}")
    dtype = _same_type("Where", (a, b))
    return [np.where(cond, a, b).astype(dtype, copy=False)]


def _compare(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def run(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
        a, b = (np.asarray(v) for v in inputs[:2])
        _same_type("a comparison", (a, b))
        return [np.asarray(fn(a, b), dtype=np.bool_)]
    return run


def _unsqueeze(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    axes = _axes(inputs, attrs, opset, 13)
    if axes is None:
        raise ConfigError("Unsqueeze needs axes")
    rank = x.ndim + len(axes)
    out = x
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return [out]


def _squeeze(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    axes = _axes(inputs, attrs, opset, 13)
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


def _reshape(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    shape = [int(d) for d in np.asarray(inputs[1]).reshape(-1)]
    if not int(attrs.get("allowzero", 0)):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _flatten(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    axis = int(attrs.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)]


def _transpose(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    x = np.asarray(inputs[0])
    perm = attrs.get("perm")
    return [np.transpose(x, None if perm is None else tuple(int(p) for p in perm))]


def _concat(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    values = [np.asarray(v) for v in inputs if v is not None]
    _same_type("Concat", values)
    return [np.concatenate(values, axis=int(attrs["axis"]))]


def _shape(inputs: Inputs, attrs: dict, opset: int) -> list[np.ndarray]:
    dims = np.asarray(np.shape(inputs[0]), np.int64)
    start = int(attrs.get("start", 0))
    end = attrs.get("end")
    return [dims[start:None if end is None else int(end)]]


#: op -> (function, input positions that must be constants for a run-time layer)
OPS: dict[str, tuple[Callable[[Inputs, dict, int], list[np.ndarray]], tuple[int, ...]]] = {
    "Add": (_binary("Add", np.add), ()),
    "Sub": (_binary("Sub", np.subtract), ()),
    "Mul": (_binary("Mul", np.multiply), ()),
    "Div": (_binary("Div", _div), ()),
    "Min": (_variadic("Min", np.minimum), ()),
    "Max": (_variadic("Max", np.maximum), ()),
    "Neg": (_unary(np.negative), ()),
    "Abs": (_unary(np.abs), ()),
    "Sqrt": (_unary(np.sqrt, floats_only=True, op="Sqrt"), ()),
    "Reciprocal": (_unary(_reciprocal, floats_only=True, op="Reciprocal"), ()),
    "Floor": (_unary(np.floor, floats_only=True, op="Floor"), ()),
    "Ceil": (_unary(np.ceil, floats_only=True, op="Ceil"), ()),
    "Round": (_unary(np.rint, floats_only=True, op="Round"), ()),
    "Clip": (_clip, ()),
    "Cast": (_cast, ()),
    "ReduceMin": (_reduce("ReduceMin", np.min), (1,)),
    "ReduceMax": (_reduce("ReduceMax", np.max), (1,)),
    "Where": (_where, ()),
    "Equal": (_compare(np.equal), ()),
    "Less": (_compare(np.less), ()),
    "LessOrEqual": (_compare(np.less_equal), ()),
    "Greater": (_compare(np.greater), ()),
    "GreaterOrEqual": (_compare(np.greater_equal), ()),
    "Unsqueeze": (_unsqueeze, (1,)),
    "Squeeze": (_squeeze, (1,)),
    "Reshape": (_reshape, (1,)),
    "Flatten": (_flatten, ()),
    "Transpose": (_transpose, ()),
    "Concat": (_concat, ()),
    "Shape": (_shape, ()),
}


def evaluate(op: str, inputs: Inputs, attrs: dict[str, Any], opset: int) -> list[np.ndarray]:
    """Outputs of ``op`` on ``inputs`` (``None`` for an omitted optional input)."""
    if op not in OPS:
        raise ConfigError(f"operator {op!r} cannot be evaluated by qsim.nn.onnx_ops")
    return OPS[op][0](inputs, attrs, opset)
