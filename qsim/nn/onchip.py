"""Whole quantized layers on the accelerator, layer after layer, without the host in between.

A quantized convolution or linear layer becomes MATMUL commands that read its input in place
from the activation memory (one command per kernel tap, channel tile and output-channel tile,
walking the zero-point-padded input image with two-dimensional addressing: no im2col) and
REQUANT commands that add the bias, requantize, add the output zero point, clamp (fused ReLU
or Clip) and write the 8-bit result into the next layer's padded input image. Consecutive
such layers form a *chain* that runs as one Program. Everything else (pools, element-wise
layers, reshapes) runs on the host between chains, exactly as in the integer reference; a
chain's input and output cross the host boundary.

Zero points are folded as integer hardware folds them: a uint8 tensor is stored as its bit
pattern and read unsigned (``Matmul.act_unsigned``); padding holds the input zero point, so
``sum (x - zx) w = sum x w - zx * sum w`` and ``-zx * sum w`` joins the bias. Weight zero
points must be 0 (symmetric weights, as ONNX Runtime's and TFLite's quantizers make them).

The ``onnxruntime`` semantics needs a ``float32`` post-processing unit: the unit's arithmetic
is MLAS's requantization, so the chain's outputs equal the integer reference exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from qsim.compile import _lane_runs, pack_weight_pairs
from qsim.config import AcceleratorConfig, Dataflow, RequantMode
from qsim.errors import ConfigError
from qsim.nn import layers as L
from qsim.nn.graph import Graph, Layer, TensorType
from qsim.numerics import INT32, IntFormat, wrap
from qsim.program import Halt, MatrixLayout, Matmul, Program, Requant, pack_qctl
from qsim.quant.kernels import conv_geometry
from qsim.quant.requant import Semantics

__all__ = ["Buffer", "ON_CHIP_SEMANTICS", "why_not_on_chip", "compile_chain", "Chain",
           "ChainRun", "OnChipRun", "run_on_chip"]

#: Requantization semantics the post-processing unit reproduces, and the mode it needs.
ON_CHIP_SEMANTICS = {Semantics.ONNXRUNTIME: RequantMode.FLOAT32}

@dataclass(frozen=True)
class Buffer:
    """A tensor ``(batch, channels, height, width)`` in the activation memory.

    Channels are cut into tiles of ``lanes`` (the array's rows); image ``b`` of channel tile
    ``t`` is stored row after row with its padding, so pixel ``(y, x)`` of the padded image
    is word ``base + ((t * batch + b) * hp + y) * wp + x``. Padding and unused lanes hold the
    zero point. uint8 tensors are stored as their bit patterns.
    """

    name: str
    base: int
    batch: int
    channels: int
    height: int
    width: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    zero_point: int
    unsigned: bool
    lanes: int
    bits: int = 8

    @property
    def tiles(self) -> int:
        return -(-self.channels // self.lanes)

    @property
    def hp(self) -> int:
        return self.height + self.pads[0] + self.pads[2]

    @property
    def wp(self) -> int:
        return self.width + self.pads[1] + self.pads[3]

    @property
    def words(self) -> int:
        return self.tiles * self.batch * self.hp * self.wp

    @property
    def end(self) -> int:
        return self.base + self.words

    def word(self, tile: int, b: int, y: int, x: int) -> int:
        """Word of padded pixel ``(y, x)`` of image ``b``, channel tile ``tile``."""
        return self.base + ((tile * self.batch + b) * self.hp + y) * self.wp + x

    def layout(self) -> MatrixLayout:
        return MatrixLayout("act", self.base, self.words, self.lanes, self.lanes, self.words)

    def image(self, tensor: np.ndarray | None = None) -> np.ndarray:
        """The buffer's words (storage values): the zero point everywhere, ``tensor`` inside."""
        lane = IntFormat(self.bits, True)
        store = int(wrap(np.int64(self.zero_point), lane))
        grid = np.full((self.tiles * self.lanes, self.batch, self.hp, self.wp), store, np.int64)
        if tensor is not None:
            t = np.asarray(tensor, dtype=np.int64)
            top, left = self.pads[0], self.pads[1]
            grid[: self.channels, :, top : top + self.height, left : left + self.width] = \
                wrap(t.transpose(1, 0, 2, 3), lane)
        # (tiles, lanes, batch, hp, wp) -> words x lanes
        tiles = grid.reshape(self.tiles, self.lanes, self.batch, self.hp, self.wp)
        return tiles.transpose(0, 2, 3, 4, 1).reshape(self.words, self.lanes)

    def decode(self, act: np.ndarray) -> np.ndarray:
        """The tensor (NCHW, uint8 or int8) from an activation-memory image."""
        words = np.asarray(act[self.base : self.end], dtype=np.int64)
        grid = words.reshape(self.tiles, self.batch, self.hp, self.wp, self.lanes)
        grid = grid.transpose(0, 4, 1, 2, 3).reshape(self.tiles * self.lanes, self.batch,
                                                     self.hp, self.wp)
        top, left = self.pads[0], self.pads[1]
        inner = grid[: self.channels, :, top : top + self.height, left : left + self.width]
        out = inner.transpose(1, 0, 2, 3)
        return ((out & ((1 << self.bits) - 1)).astype(np.uint8) if self.unsigned
                else out.astype(np.int8))


def why_not_on_chip(layer: Layer, config: AcceleratorConfig, semantics: Semantics,
                    input_shape: tuple[int, ...] | None = None) -> str | None:
    """Why ``layer`` cannot run on chip under ``semantics`` (on an input of ``input_shape``,
    when known), or ``None`` if it can."""
    if not isinstance(layer, (L.Conv2d, L.Linear)):
        return f"{layer.kind} layers run on the host"
    if not layer.quantized:
        return "float layers run on the host"
    if isinstance(layer, L.Linear) and input_shape is not None and len(input_shape) != 2:
        return (f"its input has {len(input_shape)} dimensions; linear layers on chip take "
                f"(batch, features)")
    if config.acc_bits < 32:
        return (f"its sums need int32 accumulators as the reference's, the configuration has "
                f"acc_bits {config.acc_bits}")
    if semantics not in ON_CHIP_SEMANTICS:
        names = ", ".join(s.value for s in ON_CHIP_SEMANTICS)
        return f"the post-processing unit implements {names}, not {semantics.value}"
    if config.dataflow is not Dataflow.WEIGHT_STATIONARY:
        return (f"whole layers are lowered for the weight-stationary dataflow, the configuration "
                f"is {config.dataflow.value}")
    if config.requant is not ON_CHIP_SEMANTICS[semantics]:
        return (f"{semantics.value} needs requant {ON_CHIP_SEMANTICS[semantics].value}, the "
                f"configuration has {config.requant.value}")
    if isinstance(layer, L.Conv2d) and (layer.groups != 1 or len(layer.kernel) != 2):
        return "grouped and non-2-D convolutions run on the host"
    from qsim.nn.engine import _prepared_gemm

    prep = _prepared_gemm(layer)
    bits = config.input_format.bits
    for what, params in (("input", prep.x_p), ("output", prep.y_p)):
        if params.fmt.bits != bits:
            return (f"its {what} is {params.fmt.name}; the activation memory holds {bits}-bit "
                    f"values (precision {config.precision})")
    if np.any(prep.zw != 0):
        return "its weights have non-zero zero points"
    w = np.asarray(layer.weight, dtype=np.int64)
    if w.min(initial=0) < config.weight_format.min or w.max(initial=0) > config.weight_format.max:
        return f"its weights do not fit {config.weight_format.name}"
    return None


def _kernel(layer) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """Weights as (Cout, Cin, KH, KW), strides, dilations and (top, left, bottom, right) pads."""
    if isinstance(layer, L.Linear):
        return np.asarray(layer.weight, np.int64).T[:, :, None, None], (1, 1), (1, 1), (0, 0, 0, 0)
    return (np.asarray(layer.weight, np.int64), tuple(layer.strides), tuple(layer.dilations),
            tuple(layer.pads))


def _as_image(layer, x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1, 1, 1) if isinstance(layer, L.Linear) else x


@dataclass
class Chain:
    """Consecutive layers compiled into one Program, and where their tensors live."""

    layers: list[str]
    program: Program
    input: Buffer
    outputs: dict[str, Buffer]  # by output tensor name
    output_shapes: dict[str, tuple[int, ...]]

    def decode(self, act: np.ndarray) -> dict[str, np.ndarray]:
        """Every layer's output tensor (in the graph's own shape) from an act-memory image."""
        return {name: buf.decode(act).reshape(self.output_shapes[name])
                for name, buf in self.outputs.items()}


def compile_chain(config: AcceleratorConfig, layers: list[Layer], x: np.ndarray,
                  name: str = "chain") -> Chain:
    """One Program running ``layers`` (each consuming the previous one's output) on ``x``."""
    from qsim.nn.engine import _prepared_gemm

    r, c = config.act_lanes, config.cols  # channels per activation word, outputs per tile
    bits = config.input_format.bits
    preps = [_prepared_gemm(layer) for layer in layers]
    kernels = [_kernel(layer) for layer in layers]
    image = _as_image(layers[0], x)
    batch = image.shape[0]
    # Activation buffers: the chain's input, then each layer's output, each padded for the
    # layer that reads it (the last output unpadded). Buffer i is layer i's input.
    dims = [(image.shape[1], image.shape[2], image.shape[3])]
    for w, strides, dil, pads in kernels:
        _, height, width = dims[-1]
        geometry = conv_geometry((height, width), w.shape[2:], strides=strides,
                                 pads=tuple(pads), dilations=dil)
        dims.append((w.shape[0], *geometry.output))
    buffers = []
    base = 0
    for i, (channels, height, width) in enumerate(dims):
        params_ = preps[i].x_p if i < len(layers) else preps[-1].y_p
        tensor = f"{layers[0].name}.in" if i == 0 else layers[i - 1].outputs[0]
        pads = kernels[i][3] if i < len(layers) else (0, 0, 0, 0)
        buffers.append(Buffer(tensor, base, batch, channels, height, width, tuple(pads),
                              int(params_.zero_point), not params_.fmt.signed, r, bits))
        base = buffers[-1].end
    shapes = [(layer, prep, w, strides, dil, buffers[i], buffers[i + 1])
              for i, (layer, prep, (w, strides, dil, _)) in enumerate(zip(layers, preps, kernels))]

    commands: list = []
    weights: list[np.ndarray] = []
    params = {"bias": [], "scale": [], "qctl": []}
    w_base = p_base = 0
    max_rows = min(config.acc_mem_words, (1 << config.act_mem_words.bit_length()) - 1)
    for layer, prep, w, strides, dil, src, dst in shapes:
        cout, cin, kh, kw = w.shape
        ct, nt_count = -(-cin // r), -(-cout // c)
        # weight tiles (nt, ky, kx, t): rows = input channels of tile t, lanes = outputs of nt
        padded = np.zeros((nt_count * c, ct * r, kh, kw), np.int64)
        padded[:cout, :cin] = w
        tiles = padded.reshape(nt_count, c, ct, r, kh, kw).transpose(0, 4, 5, 2, 3, 1)
        weights.append(pack_weight_pairs(config, tiles.reshape(-1, c)))  # R words per tile

        def tile_addr(nt, ky, kx, t, _base=w_base, _kh=kh, _kw=kw, _ct=ct):
            return _base + (((nt * _kh + ky) * _kw + kx) * _ct + t) * config.rows

        w_base += nt_count * kh * kw * ct * config.rows
        # parameters: bias with -zx * sum(w) folded in, ORT's float32 multiplier, zp and clamp
        zx = int(prep.x_p.zero_point)
        bias = np.zeros(cout, np.int64) if prep.bias is None else prep.bias.astype(np.int64)
        folded = wrap(bias - zx * w.reshape(cout, -1).sum(axis=1), INT32)
        scale = np.asarray(prep.multiplier, np.float32).reshape(-1).view(np.int32).astype(np.int64)
        lo, hi = prep.clamp
        qctl = pack_qctl(0, int(prep.y_p.zero_point), lo, hi)
        for key, values in (("bias", folded), ("scale", scale), ("qctl", np.full(cout, qctl))):
            lanes = np.zeros(nt_count * c, np.int64)
            lanes[:cout] = values
            params[key].append(lanes.reshape(nt_count, c))
        # output rows per command: whole images if they fit, else bands of output rows
        ho, wo = dst.height, dst.width
        band = max(1, min(ho, max_rows // wo))
        if wo > max_rows:
            raise ConfigError(f"layer {layer.name!r}: an output row of {wo} pixels exceeds the "
                              f"{max_rows} accumulator words one command can write")
        group = max(1, min(nt_count, config.acc_mem_words // (band * wo)))
        (sh, sw), (dh, dw) = strides, dil
        for b in range(batch):
            for y0 in range(0, ho, band):
                h = min(band, ho - y0)
                rows = h * wo
                for g0 in range(0, nt_count, group):
                    members = range(g0, min(nt_count, g0 + group))
                    for gi, nt in enumerate(members):
                        first = True
                        for ky in range(kh):
                            for kx in range(kw):
                                for t in range(ct):
                                    commands.append(Matmul(
                                        act_addr=src.word(t, b, y0 * sh + ky * dh, kx * dw),
                                        weight_addr=tile_addr(nt, ky, kx, t),
                                        acc_addr=gi * rows, rows=rows, accumulate=not first,
                                        inner=wo, step=sw, stride=sh * src.wp,
                                        act_unsigned=src.unsigned))
                                    first = False
                    for gi, nt in enumerate(members):
                        for n0, n1 in _lane_runs(nt * c, min(cout, nt * c + c), r):
                            commands.append(Requant(
                                acc_addr=gi * rows + 0, act_addr=dst.word(n0 // r, b, dst.pads[0] + y0, dst.pads[1]),
                                rows=rows, param_addr=p_base + nt, lanes=n1 - n0,
                                src_lane=n0 - nt * c, dst_lane=n0 % r,
                                inner=wo, step=1, stride=dst.wp))
        p_base += nt_count
    commands.append(Halt())

    inputs = {"input": (buffers[0].layout(), buffers[0].image(_as_image(layers[0], x)))}
    for buf in buffers[1:]:  # outputs start as the zero point: padding and untouched lanes
        inputs[f"{buf.name}.init"] = (buf.layout(), buf.image())
    lanes_w = config.weight_lanes
    inputs["weights"] = (MatrixLayout("weight", 0, w_base, lanes_w, lanes_w, w_base),
                         np.concatenate(weights))
    for key, rows_ in params.items():
        matrix = np.concatenate(rows_)
        inputs[key] = (MatrixLayout(key, 0, p_base, c, c, p_base), matrix)
    needs = {"act": base, "weight": w_base, "bias": p_base, "cmd": len(commands)}
    have = {"act": config.act_mem_words, "weight": config.weight_mem_words,
            "bias": config.param_mem_words, "cmd": config.cmd_mem_words}
    over = [f"{k} memory needs {needs[k]} words, has {have[k]}" for k in needs if needs[k] > have[k]]
    if over:
        raise ConfigError(f"chain {name} ({', '.join(l.name for l in layers)}) does not fit the "
                          f"accelerator: " + "; ".join(over))
    macs = sum(int(np.prod(w.shape)) * dst.batch * dst.height * dst.width
               for _, _, w, _, _, _, dst in shapes)
    outputs = {s[-1].name: s[-1].layout() for s in shapes}
    program = Program(config, tuple(commands), inputs=inputs, outputs=outputs, name=name,
                      meta={"op": "chain", "layers": ",".join(l.name for l in layers),
                            "useful_macs": macs})
    out_shapes = {}
    for layer, *_rest in shapes:
        dst = _rest[-1]
        full = (dst.batch, dst.channels, dst.height, dst.width)
        out_shapes[dst.name] = (dst.batch, dst.channels) if isinstance(layer, L.Linear) else full
    return Chain([l.name for l in layers], program, buffers[0],
                 {s[-1].name: s[-1] for s in shapes}, out_shapes)


@dataclass
class ChainRun:
    """One chain as it ran: its Program and the act-memory image it left."""

    chain: Chain
    act: np.ndarray


@dataclass
class OnChipRun:
    """A network run with its quantized layers on chip, chain by chain."""

    outputs: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    chains: list[ChainRun] = field(default_factory=list)
    host_layers: dict[str, str] = field(default_factory=dict)  # layer -> why on the host

    @property
    def programs(self) -> list[Program]:
        return [run.chain.program for run in self.chains]


def _consumers(graph: Graph) -> dict[str, int]:
    count: dict[str, int] = {}
    for layer in graph.layers:
        for name in layer.inputs:
            count[name] = count.get(name, 0) + 1
    for name in graph.outputs:
        count[name] = count.get(name, 0) + 1
    return count


def _run_on_host(layer: Layer, values: Mapping[str, np.ndarray], semantics: Semantics,
                 isa: str = "exact") -> None:
    from qsim.nn.engine import run

    inputs = {name: TensorType(tuple(values[name].shape), str(values[name].dtype))
              for name in dict.fromkeys(layer.inputs)}
    sub = Graph(layer.name, inputs, [layer], list(layer.outputs))
    result = run(sub, {name: values[name] for name in inputs}, semantics, isa=isa)
    values.update(result.outputs)


def run_on_chip(graph: Graph, feeds: Mapping[str, np.ndarray], config: AcceleratorConfig,
                semantics: Semantics | str = "onnxruntime", *,
                execute: Callable[[Program], np.ndarray] | None = None,
                isa: str = "exact") -> OnChipRun:
    """Run ``graph`` with every layer that can run on chip in chains of Programs.

    ``execute(program)`` runs a Program and returns its final activation-memory image; by
    default the bit-accurate model. Pass an RTL runner to run every chain on the RTL, each
    chain's input being what the RTL (and the host layers after it) produced. Host layers run
    on instruction path ``isa`` (the accelerator's own products never depend on it).
    """
    from qsim.nn.engine import check_feeds

    sem = Semantics.parse(semantics)
    if execute is None:
        from qsim.model import execute as run_model

        def execute(program):
            return run_model(program).memories["act"]

    values = check_feeds(graph, feeds)
    batch = next((values[name].shape[0] for name, t in graph.inputs.items()
                  if t.shape and t.shape[0] is None), None)
    types = graph.infer(batch)
    consumers = _consumers(graph)
    result = OnChipRun({}, values)
    pending: list[Layer] = []

    def flush() -> None:
        if not pending:
            return
        chain = compile_chain(config, list(pending), values[pending[0].inputs[0]],
                              name=f"{graph.name}:{pending[0].name}..{pending[-1].name}")
        act = execute(chain.program)
        values.update(chain.decode(act))
        result.chains.append(ChainRun(chain, act))
        pending.clear()

    from qsim.nn.engine import _prepared_gemm

    def same_tensor_params(producer: Layer, consumer: Layer) -> bool:
        """The producer writes what the consumer reads (zero point and format): a chain pads
        the consumer's input with the producer's output zero point."""
        out, inp = _prepared_gemm(producer).y_p, _prepared_gemm(consumer).x_p
        return out.fmt == inp.fmt and int(out.zero_point) == int(inp.zero_point)

    for layer in graph.layers:
        reason = why_not_on_chip(layer, config, sem, tuple(types[layer.inputs[0]].shape))
        if reason is None:
            chained = (pending and layer.inputs[0] == pending[-1].outputs[0]
                       and consumers.get(pending[-1].outputs[0], 0) == 1
                       and same_tensor_params(pending[-1], layer))
            if not chained:
                flush()
            pending.append(layer)
            continue
        flush()
        result.host_layers[layer.name] = reason
        _run_on_host(layer, values, sem, isa)
    flush()
    result.outputs = {name: values[name] for name in graph.outputs}
    return result


@dataclass
class OnChipCosim:
    """A network run chain by chain on the RTL, each chain checked against the model."""

    run: OnChipRun
    reports: list  # one CosimReport per chain

    @property
    def agrees(self) -> bool:
        return all(report.agrees for report in self.reports)

    @property
    def rtl_cycles(self) -> int:
        return sum(report.rtl_cycles for report in self.reports)

    @property
    def model_cycles(self) -> int:
        return sum(report.model_cycles for report in self.reports)


def cosim_on_chip(graph: Graph, feeds: Mapping[str, np.ndarray], config: AcceleratorConfig,
                  semantics: Semantics | str = "onnxruntime", *, isa: str = "exact",
                  **run_kwargs) -> OnChipCosim:
    """:func:`run_on_chip` with every chain on the RTL: each chain's input is what the RTL
    (and the host layers after it) produced, and each chain is compared with the model
    (memories, cycles, counters). ``run_kwargs`` go to :func:`qsim.cosim.runner.run_programs`.
    """
    from qsim.cosim.runner import compare, run_programs

    reports = []

    def on_rtl(program: Program) -> np.ndarray:
        rtl = run_programs([program], **run_kwargs)[0]
        reports.append(compare(program, rtl))
        return rtl.memories["act"]

    return OnChipCosim(run_on_chip(graph, feeds, config, semantics, execute=on_rtl, isa=isa),
                       reports)
