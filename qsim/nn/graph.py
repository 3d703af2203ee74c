"""The network graph IR: typed layers in topological order, with inferred and checked shapes.

A :class:`Graph` has named inputs, an ordered list of :class:`Layer` nodes that each read
and write named tensors, and named outputs. Layers know their output shapes
(:meth:`Layer.infer`), their multiply-accumulate count, and how they map onto the
accelerator's matrix product (:meth:`Layer.gemms`). Weights are optional: a graph without
them ("shape only") is enough for cost estimates of large networks, and the same graph with
weights and quantization parameters is what the integer engine runs.

Shapes are NCHW for images and (N, features) for vectors; the batch dimension N is part of
every shape and may be ``None`` in declarations (any batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Sequence

import numpy as np

from qsim.errors import ConfigError

__all__ = ["TensorType", "Layer", "Graph", "GemmShape", "window_output"]

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class TensorType:
    """Shape and element type of a tensor (``dtype`` is a numpy dtype name).

    ``fmt`` names a narrower integer format held in ``dtype`` (``int4``, ``uint4``, ``int2``,
    ``uint2``: one value per element, unpacked in an int8 or uint8 array); ``None`` when the
    format is the dtype itself.
    """

    shape: Shape
    dtype: str = "float32"
    fmt: str | None = None

    def with_batch(self, batch: int) -> TensorType:
        return TensorType((batch, *self.shape[1:]), self.dtype, self.fmt)

    def __str__(self) -> str:
        dims = "x".join("N" if d is None else str(d) for d in self.shape)
        if self.fmt is not None:
            return f"{self.fmt}[{dims}] (in {self.dtype})"
        return f"{self.dtype}[{dims}]"


@dataclass(frozen=True)
class GemmShape:
    """One matrix product ``[m, k] @ [k, n]`` a layer performs, ``count`` times.

    Convolutions give ``m = N * out_h * out_w`` (im2col rows), ``k = in_ch / groups * kh * kw``
    and ``n = out_ch / groups``, once per group.
    """

    m: int
    k: int
    n: int
    count: int = 1

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n * self.count


def window_output(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                  dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output length of a sliding window (ONNX Conv/MaxPool/AveragePool rule)."""
    span = dilation * (kernel - 1) + 1
    room = size + pad_begin + pad_end - span
    if room < 0:
        raise ConfigError(
            f"a window of {kernel} (dilation {dilation}) does not fit an input of {size} "
            f"padded by {pad_begin}+{pad_end}"
        )
    out = (room + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1  # the last window would start in the end padding only
    return out


@dataclass
class Layer:
    """A node of the graph. Subclasses define ``kind``, :meth:`infer` and, if they compute,
    :meth:`gemms`.

    Attributes
    ----------
    name : str
        Unique within the graph.
    inputs, outputs : tuple of str
        Names of the tensors read and written.
    """

    kind: ClassVar[str] = "layer"
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def infer(self, types: Sequence[TensorType]) -> list[TensorType]:  # pragma: no cover
        raise NotImplementedError

    def gemms(self, types: Sequence[TensorType]) -> list[GemmShape]:
        """Matrix products this layer performs for the given input types (none by default)."""
        return []

    def macs(self, types: Sequence[TensorType]) -> int:
        return sum(g.macs for g in self.gemms(types))

    def _fail(self, message: str) -> ConfigError:
        return ConfigError(f"layer {self.name!r} ({self.kind}): {message}")

    def _expect_inputs(self, types: Sequence[TensorType], count: int) -> None:
        if len(types) != count:
            raise self._fail(f"expects {count} input(s), got {len(types)}")


@dataclass
class Graph:
    """A network: inputs, layers in topological order, outputs.

    Validation at construction: unique layer names, every tensor written once, every input
    of a layer defined before it (by a graph input or an earlier layer), every graph output
    defined. :meth:`infer` then checks every layer's shapes.
    """

    name: str
    inputs: dict[str, TensorType]
    layers: list[Layer]
    outputs: list[str]
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names: set[str] = set()
        defined = set(self.inputs)
        for layer in self.layers:
            if layer.name in names:
                raise ConfigError(f"graph {self.name!r}: two layers are named {layer.name!r}")
            names.add(layer.name)
            for tensor in layer.inputs:
                if tensor not in defined:
                    raise ConfigError(
                        f"graph {self.name!r}: layer {layer.name!r} reads {tensor!r}, which no "
                        f"graph input or earlier layer defines"
                    )
            for tensor in layer.outputs:
                if tensor in defined:
                    raise ConfigError(f"graph {self.name!r}: tensor {tensor!r} is written twice")
                defined.add(tensor)
        missing = [o for o in self.outputs if o not in defined]
        if missing:
            raise ConfigError(f"graph {self.name!r}: output(s) {', '.join(missing)} are never written")

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"graph {self.name!r} has no layer {name!r}")

    def infer(self, batch: int | None = None) -> dict[str, TensorType]:
        """Types of every tensor; ``batch`` replaces an unspecified (``None``) batch size.

        The result is cached per batch size: a graph's layers are treated as fixed once its
        shapes have been inferred (transformations such as PTQ build new graphs).
        """
        cache = self.__dict__.setdefault("_types_by_batch", {})
        if batch not in cache:
            cache[batch] = self._infer(batch)
        return dict(cache[batch])

    def _infer(self, batch: int | None) -> dict[str, TensorType]:
        types: dict[str, TensorType] = {}
        for name, t in self.inputs.items():
            if t.shape and t.shape[0] is None and batch is not None:
                t = t.with_batch(batch)
            types[name] = t
        for layer in self.layers:
            out = layer.infer([types[i] for i in layer.inputs])
            if len(out) != len(layer.outputs):
                raise layer._fail(f"produced {len(out)} outputs for {len(layer.outputs)} names")
            types.update(zip(layer.outputs, out))
        return types

    def gemms(self, batch: int = 1) -> list[tuple[Layer, GemmShape]]:
        """Every matrix product of the network at ``batch``, in layer order."""
        types = self.infer(batch)
        return [(layer, g) for layer in self.layers
                for g in layer.gemms([types[i] for i in layer.inputs])]

    def macs(self, batch: int = 1) -> int:
        return sum(g.macs for _, g in self.gemms(batch))

    def summary(self, batch: int = 1) -> list[dict[str, object]]:
        """One row per layer: kind, output types, MACs."""
        types = self.infer(batch)
        rows = []
        for layer in self.layers:
            ins = [types[i] for i in layer.inputs]
            rows.append({"name": layer.name, "kind": layer.kind,
                         "outputs": [str(types[o]) for o in layer.outputs],
                         "macs": layer.macs(ins)})
        return rows


def _pairs(name: str, value: Iterable[int] | int, count: int) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * count
    out = tuple(int(v) for v in value)
    if len(out) != count:
        raise ConfigError(f"{name} must have {count} values, not {len(out)}")
    return out
