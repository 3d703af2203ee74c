"""Cycle, utilization, energy and throughput estimates of whole networks on one accelerator.

Every matrix product of a graph (:meth:`qsim.nn.graph.Graph.gemms`), or of any list of GEMMs
(:func:`estimate_gemms`: SCALE-Sim topologies, sweeps), is costed with the timing model as the
compiler lowers it: one GEMM per convolution group, run one after another, each draining the
pipeline before the next. Layers without a matrix product (pooling, element-wise, softmax)
are assumed to run on the host and cost no accelerator cycles.

Without a bus interface (``dram_width`` 0) a layer is :func:`qsim.timing.estimate_gemm`:
operands assumed on chip, the memories not checked. With one, a layer is the program
:func:`qsim.compile_dram.plan_dram_gemm` writes for it (rows in blocks that fit the on-chip
memories, weights streamed from DRAM), timed command by command: ``cycles`` include the
transfers and the stalls waiting for them (``dma_stall_cycles``), ``dram_bytes`` are the bytes
moved over the DRAM bus, the energy prices them and the roofline uses them. The cosim tests
check these cycles against the RTL running the same programs. The program is timed through
its column form (:func:`qsim.compile_dram.dram_gemm_stream`,
:func:`qsim.timing.timing_of_stream`), which skips repeated stretches and equals the command
by command timing in every counter (tests/test_estimate_fast.py).

Per layer the estimate also keeps the wait counters (stalls by cause), the tiling and the
words the LOAD/STOREs move per memory, from which :func:`level_bytes` gives the bytes read
and written at each memory level, and :meth:`NetworkEstimate.roofline` places the layer on
the roofline.

Energy (:mod:`qsim.energy`) prices the timing model's action counts of every layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

from qsim.config import AcceleratorConfig
from qsim.energy import (HOROWITZ_45NM, ActionCounts, EnergyBreakdown, TechTable,
                         area_mm2, energy_fields, energy_of)
from qsim.nn.graph import GemmShape, Graph
from qsim.timing import estimate_gemm

__all__ = ["LayerEstimate", "NetworkEstimate", "estimate_network", "estimate_gemms",
           "DEFAULT_DRAM_GBPS", "LEVELS", "level_bytes"]

#: DRAM bandwidth the roofline assumes until the accelerator's DRAM interface is modelled:
#: one 64-bit DDR4-1600 channel, 1600 MT/s x 8 bytes = 12.8 GB/s.
DEFAULT_DRAM_GBPS = 12.8


@dataclass(frozen=True)
class LayerEstimate:
    """One GEMM layer: cycles, action counts and (later) DRAM traffic.

    With a bus interface (``config.dram_width``) ``dram_bytes`` is the bytes the layer's
    LOAD/STOREs move over the DRAM bus and ``dma_stall_cycles`` the cycles commands waited for
    the DMA engine (part of ``cycles``); without one ``dram_bytes`` is ``None`` (operands are
    assumed on chip) and the stalls 0.
    """

    name: str
    kind: str
    gemm: GemmShape
    cycles: int
    macs_per_cycle: int  # R x C of the accelerator (x 2 at int4)
    counts: ActionCounts = field(default_factory=ActionCounts)
    dram_bytes: int | None = None
    dma_stall_cycles: int = 0
    operand_bits: int = 8
    dram_read: int | None = None  # of dram_bytes: read (the program fetch included)
    dram_written: int | None = None
    stalls: dict[str, int] = field(default_factory=dict)  # the wait_* counters
    tiling: dict[str, int] = field(default_factory=dict)
    dma_words: dict[str, int] = field(default_factory=dict)  # LOAD/STORE words per memory

    @property
    def utilization(self) -> float:
        """Useful MACs / (R x C x cycles), as for the whole network."""
        return self.gemm.macs / (self.macs_per_cycle * self.cycles) if self.cycles else 0.0

    @property
    def compulsory_bytes(self) -> int:
        """Off-chip bytes if every operand crossed the DRAM interface once: A (M x K) and
        B (K x N) at the operand precision, C (M x N) written back as 8-bit activations."""
        g = self.gemm
        operands = (g.m * g.k + g.k * g.n) * self.operand_bits // 8
        return (operands + g.m * g.n) * g.count

    @property
    def offchip_bytes(self) -> int:
        """Bytes the roofline places the layer by: the DRAM model's, else the compulsory ones."""
        return self.dram_bytes if self.dram_bytes is not None else self.compulsory_bytes

    @property
    def ops_per_byte(self) -> float:
        """Arithmetic intensity: 2 x useful MACs per off-chip byte."""
        return 2 * self.gemm.macs / self.offchip_bytes if self.offchip_bytes else float("inf")

    def energy(self, config: AcceleratorConfig, tech: TechTable = HOROWITZ_45NM) -> EnergyBreakdown:
        counts = self.counts
        if self.dram_bytes:
            counts = counts + ActionCounts(dram_bytes=self.dram_bytes)
        return energy_of(counts, config, tech)

    def level_bytes(self, config: AcceleratorConfig) -> dict[str, int | None]:
        """Bytes read and written at each memory level: the timing model's word counts times
        the word widths of ``config`` (:func:`level_bytes`)."""
        return level_bytes(config, self.counts, self.dma_words, self.dram_read,
                           self.dram_written)


#: Keys of the bytes per memory level (:func:`level_bytes`), in report order.
LEVELS = ("scratchpad_read", "scratchpad_written", "accumulator_read", "accumulator_written",
          "dram_read", "dram_written")


def level_bytes(config: AcceleratorConfig, counts: ActionCounts, dma_words: dict[str, int],
                dram_read: int | None, dram_written: int | None) -> dict[str, int | None]:
    """Bytes per memory level, words times the word widths of ``config`` (whole bytes):

    * scratchpad (activation and weight memories) read: activation words streamed, weight
      words read and activation words STOREd to DRAM; written: activation words the
      post-processing unit writes and activation and weight words LOADed from DRAM;
    * accumulator read: accumulating and post-processing reads and words STOREd to DRAM;
      written: every accumulator write;
    * DRAM: bytes over the bus (``None`` without a bus interface).
    """
    act, weight, acc = config.act_word_bits, config.weight_word_bits, config.acc_word_bits
    words = {key: dma_words.get(key, 0) for key in ("act_loaded", "weight_loaded", "acc_stored",
                                                    "act_stored")}
    bits = {
        "scratchpad_read": (counts.act_reads + words["act_stored"]) * act
                           + counts.weight_reads * weight,
        "scratchpad_written": (counts.act_writes + words["act_loaded"]) * act
                              + words["weight_loaded"] * weight,
        "accumulator_read": (counts.acc_reads + words["acc_stored"]) * acc,
        "accumulator_written": counts.acc_writes * acc,
    }
    return {**{k: v // 8 for k, v in bits.items()}, "dram_read": dram_read,
            "dram_written": dram_written}


def _sum_dicts(dicts: Iterable[dict]) -> dict:
    """Key-wise sums (``None`` if any value of a key is)."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = None if v is None or (k in out and out[k] is None) else out.get(k, 0) + v
    return out


@dataclass
class NetworkEstimate:
    network: str
    config: AcceleratorConfig
    batch: int
    layers: list[LayerEstimate] = field(default_factory=list)
    wall_s: float = 0.0
    tech: TechTable = HOROWITZ_45NM
    dram_gbps: float = DEFAULT_DRAM_GBPS

    @property
    def cycles(self) -> int:
        return sum(layer.cycles for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.gemm.macs for layer in self.layers)

    @property
    def seconds(self) -> float:
        return self.cycles / (self.config.clock_mhz * 1e6)

    @property
    def utilization(self) -> float:
        """Useful MACs / (R x C x cycles) over the whole network."""
        return self.macs / (self.config.macs_per_cycle * self.cycles) if self.cycles else 0.0

    @property
    def inferences_per_s(self) -> float:
        return self.batch / self.seconds if self.cycles else float("inf")

    @property
    def tops(self) -> float:
        """Delivered tera-operations per second (one MAC = two operations)."""
        return 2 * self.macs / self.seconds / 1e12 if self.cycles else 0.0

    @property
    def counts(self) -> ActionCounts:
        total = ActionCounts()
        for layer in self.layers:
            total = total + layer.counts
        return total

    @property
    def dram_bytes(self) -> int | None:
        """Total DRAM bytes; ``None`` until the DRAM model supplies every layer's."""
        if any(layer.dram_bytes is None for layer in self.layers):
            return None
        return sum(layer.dram_bytes for layer in self.layers)

    def energy(self) -> EnergyBreakdown:
        counts = self.counts
        dram = self.dram_bytes
        if dram:
            counts = counts + ActionCounts(dram_bytes=dram)
        return energy_of(counts, self.config, self.tech)

    @property
    def energy_pj(self) -> float:
        return self.energy().total_pj

    @property
    def pj_per_mac(self) -> float | None:
        """Energy per useful MAC (padding MACs are paid for but not counted as useful)."""
        return self.energy_pj / self.macs if self.macs else None

    @property
    def tops_per_w(self) -> float | None:
        """Useful operations per joule / 1e12 = 2 / (pJ per MAC)."""
        return 2.0 * self.macs / self.energy_pj if self.macs and self.energy_pj else None

    @property
    def area_mm2(self) -> float | None:
        return area_mm2(self.config, self.tech)

    @property
    def level_bytes(self) -> dict[str, int | None]:
        """Bytes per memory level over every layer (:func:`level_bytes`)."""
        return _sum_dicts(layer.level_bytes(self.config) for layer in self.layers)

    @property
    def stalls(self) -> dict[str, int]:
        """The wait_* counters over every layer."""
        return _sum_dicts(layer.stalls for layer in self.layers)

    @property
    def peak_ops_per_s(self) -> float:
        """Operations per second of the array fully busy (one MAC = two operations)."""
        return 2.0 * self.config.macs_per_cycle * self.config.clock_mhz * 1e6

    @property
    def dram_bytes_per_s(self) -> float:
        """DRAM bandwidth of the roofline: ``dram_width`` bytes per cycle at the clock with a
        bus interface, else ``dram_gbps``."""
        if self.config.has_dram:
            return self.config.dram_width * self.config.clock_mhz * 1e6
        return self.dram_gbps * 1e9

    def roofline(self, layer: LayerEstimate) -> dict:
        """Where ``layer`` sits on the roofline: ``ops_per_byte`` (2 x MACs per off-chip
        byte), ``attainable_ops_per_s`` = min(peak, bandwidth x intensity), the
        ``achieved_ops_per_s`` and whether the roof there is ``compute`` or ``memory``."""
        memory = self.dram_bytes_per_s * layer.ops_per_byte
        seconds = layer.cycles / (self.config.clock_mhz * 1e6)
        return {"ops_per_byte": round(layer.ops_per_byte, 3),
                "attainable_ops_per_s": round(min(self.peak_ops_per_s, memory), 1),
                "achieved_ops_per_s": round(2 * layer.gemm.macs / seconds, 1) if seconds else 0.0,
                "bound": "memory" if memory < self.peak_ops_per_s else "compute"}

    def energy_fields(self) -> dict:
        """``energy_pj``, ``energy_breakdown_pj``, ``pj_per_mac``, ``tops_per_w``, ``area_mm2``."""
        counts = self.counts
        if self.dram_bytes:
            counts = counts + ActionCounts(dram_bytes=self.dram_bytes)
        return energy_fields(counts, self.config, self.tech, self.macs)

    def to_dict(self) -> dict:
        return {
            "network": self.network, "batch": self.batch, "config": self.config.to_dict(),
            "cycles": self.cycles, "macs": self.macs, "seconds": self.seconds,
            "utilization": round(self.utilization, 6),
            "inferences_per_s": round(self.inferences_per_s, 3),
            "tops": round(self.tops, 6),
            **self.energy_fields(),
            "dram_bytes": self.dram_bytes,
            "bytes": self.level_bytes,
            "stall_cycles": self.stalls,
            "roofline": {"peak_ops_per_s": self.peak_ops_per_s,
                         "dram_bytes_per_s": self.dram_bytes_per_s,
                         "ridge_ops_per_byte": round(self.peak_ops_per_s / self.dram_bytes_per_s, 3)},
            "estimate_wall_s": round(self.wall_s, 6),
            "layers": [{"name": l.name, "kind": l.kind, "m": l.gemm.m, "k": l.gemm.k,
                        "n": l.gemm.n, "count": l.gemm.count, "macs": l.gemm.macs,
                        "cycles": l.cycles, "utilization": round(l.utilization, 6),
                        "energy_pj": round(l.energy(self.config, self.tech).total_pj, 3),
                        **l.counts.to_dict(),  # its dram_bytes (0) gives way to the layer's
                        "dram_bytes": l.dram_bytes, "dma_stall_cycles": l.dma_stall_cycles,
                        **self.roofline(l),
                        "bytes": l.level_bytes(self.config), "stall_cycles": l.stalls,
                        "tiling": l.tiling}
                       for l in self.layers],
        }


def _layer_timing(config: AcceleratorConfig, gemm: GemmShape):
    """Timing of one GEMM layer, its tiling and the words its LOAD/STOREs move per memory:
    with a bus interface the program :func:`qsim.compile_dram.plan_dram_gemm` writes
    (operands from DRAM, blocks that fit the on-chip memories, weight tiles streamed, DMA
    transfers and their stalls timed cycle by cycle; timed through its column form,
    :func:`qsim.compile_dram.dram_gemm_stream`, whose every counter equals the commands'),
    else :func:`estimate_gemm` (operands assumed on chip)."""
    from qsim.compile import gemm_layouts

    a_lay, _, c_lay = gemm_layouts(config, gemm.m, gemm.k, gemm.n)
    os_ = config.dataflow.short == "os"
    tiling = {"m_tiles" if os_ else "k_tiles": a_lay.lane_tiles, "n_tiles": c_lay.lane_tiles}
    if config.has_dram:
        from qsim.compile_dram import dram_gemm_stream
        from qsim.timing import LOAD, STORE, STREAM_MEMORIES, timing_of_stream

        stream, g = dram_gemm_stream(config, gemm.m, gemm.k, gemm.n)
        tiling.update(block_rows=g.block, blocks=g.blocks,
                      weight_tiles=g.n_tiles if os_ else g.n_tiles * g.k_tiles)
        moved = {}
        for kind, memory, key in ((LOAD, "act", "act_loaded"), (LOAD, "weight", "weight_loaded"),
                                  (STORE, "acc", "acc_stored"), (STORE, "act", "act_stored")):
            rows = (stream.kind == kind) & (stream.memory == STREAM_MEMORIES.index(memory))
            moved[key] = int(stream.count[rows].sum())
        return timing_of_stream(config, stream, gemm.m * gemm.k * gemm.n), tiling, moved
    return estimate_gemm(config, gemm.m, gemm.k, gemm.n), tiling, {}


def estimate_gemms(name: str, gemms: Iterable[tuple[str, str, GemmShape]],
                   config: AcceleratorConfig, batch: int = 1,
                   tech: TechTable = HOROWITZ_45NM,
                   dram_gbps: float = DEFAULT_DRAM_GBPS) -> NetworkEstimate:
    """Cycles and action counts of ``(layer name, kind, GemmShape)`` products on ``config``."""
    t0 = time.perf_counter()
    result = NetworkEstimate(name, config, batch, tech=tech, dram_gbps=dram_gbps)
    cache: dict[tuple[int, int, int], tuple] = {}
    for layer_name, kind, g in gemms:
        key = (g.m, g.k, g.n)
        if key not in cache:
            t, tiling, moved = _layer_timing(config, g)
            dram = (t.dram_reads, t.dram_writes) if config.has_dram else (None, None)
            stalls = {w: getattr(t, w) for w in ("wait_array", "wait_drain", "wait_ppu",
                                                 "wait_dma")}
            cache[key] = (t.cycles, ActionCounts.from_timing(t), dram, stalls, tiling, moved)
        cycles, counts, dram, stalls, tiling, moved = cache[key]
        if g.count != 1:
            counts = ActionCounts(**{k: v * g.count for k, v in counts.to_dict().items()})
            dram = tuple(None if v is None else v * g.count for v in dram)
            stalls = {k: v * g.count for k, v in stalls.items()}
            moved = {k: v * g.count for k, v in moved.items()}
        read, written = dram
        result.layers.append(LayerEstimate(
            layer_name, kind, g, cycles * g.count, config.macs_per_cycle, counts,
            None if read is None else read + written, stalls["wait_dma"],
            config.input_format.bits, read, written, stalls, tiling, moved))
    result.wall_s = time.perf_counter() - t0
    return result


def estimate_network(graph: Graph, config: AcceleratorConfig, batch: int = 1,
                     tech: TechTable = HOROWITZ_45NM,
                     dram_gbps: float = DEFAULT_DRAM_GBPS) -> NetworkEstimate:
    """Cycles, action counts and energy of every matrix product of ``graph`` at ``batch``."""
    t0 = time.perf_counter()
    gemms = [(layer.name, layer.kind, g) for layer, g in graph.gemms(batch)]
    result = estimate_gemms(graph.name, gemms, config, batch, tech, dram_gbps)
    result.wall_s = time.perf_counter() - t0
    return result


def workload_gemms(*, network: str | None = None, topology: str | None = None,
                   gemm: bool = False, onnx: str | None = None, batch: int = 1
                   ) -> tuple[str, list[tuple[str, str, GemmShape]]]:
    """The name and the ``(layer, kind, GemmShape)`` list of exactly one workload at ``batch``:
    a built-in network (:data:`qsim.nn.zoo.NETWORKS`), a SCALE-Sim topology CSV
    (:func:`qsim.scalesim.read_topology`; ``batch`` multiplies M), or an ONNX model, float or
    quantized (:func:`qsim.nn.onnx_import.load_onnx`, the import path of ``qsim infer``)."""
    from pathlib import Path

    from qsim.errors import ConfigError

    given = [n for n, v in (("network", network), ("topology", topology), ("onnx", onnx))
             if v is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one workload: a network, a topology or an ONNX model"
                          + (f" (got {', '.join(given)})" if given else ""))
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be at least 1, not {batch}")
    if gemm and topology is None:
        raise ConfigError("--gemm (the Layer, M, N, K format) applies to a topology file only")
    if network is not None:
        from qsim.nn.zoo import NETWORKS

        if network not in NETWORKS:
            raise ConfigError(f"unknown network {network!r} (available: {', '.join(NETWORKS)})")
        graph = NETWORKS[network]()
    elif onnx is not None:
        from qsim.nn.onnx_import import load_onnx

        graph = load_onnx(onnx)
        graph.name = graph.name or Path(onnx).stem
    else:
        from qsim.scalesim import read_topology

        layers = read_topology(topology, gemm=gemm)
        return Path(topology).stem, [(l.name, l.kind, l.at_batch(batch)) for l in layers]
    return graph.name, [(layer.name, layer.kind, g) for layer, g in graph.gemms(batch)]


def format_estimate(est: NetworkEstimate, layers: bool = False, energy: bool = False) -> list[str]:
    """The lines ``qsim estimate`` prints for a network, topology or ONNX model."""
    cfg = est.config
    rows = [
        ("config", cfg.describe()),
        ("network", f"{est.network}, batch {est.batch}, {len(est.layers)} GEMM layers"),
        ("MACs", f"{est.macs:,}"),
        ("cycles", f"{est.cycles:,}"),
        ("utilization", f"{est.utilization:.2%}"),
        ("latency", f"{est.seconds * 1e3:.3f} ms at {cfg.clock_mhz:g} MHz"),
        ("throughput", f"{est.inferences_per_s:,.1f} inferences/s"),
    ]
    if energy:
        f = est.energy_fields()
        parts = ", ".join(f"{k} {v / 1e6:,.1f}" for k, v in f["energy_breakdown_pj"].items() if v)
        area = "not available (no area figures in the table)" if f["area_mm2"] is None \
            else f"{f['area_mm2']:.3f} mm2 (MACs and on-chip SRAM only)"
        rows += [("energy", f"{f['energy_pj'] / 1e6:,.1f} uJ ({parts} uJ; {est.tech.name})"),
                 ("efficiency", f"{f['pj_per_mac']:.3f} pJ/MAC, {f['tops_per_w']:.3f} TOPS/W"),
                 ("area", area)]
    if layers:
        rows += [("bytes", _format_levels(est.level_bytes)),
                 ("stalls", _format_stalls(est.stalls))]
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    if layers and est.layers:
        out.append("")
        width = max(len(l.name) for l in est.layers)
        for l in est.layers:
            line = (f"{l.name:<{width}}  {l.kind:<8} m={l.gemm.m:<6} k={l.gemm.k:<5} n={l.gemm.n:<5} "
                    f"x{l.gemm.count:<4} {l.cycles:>11,} cycles  {l.utilization:7.2%}")
            if energy:
                line += f"  {l.energy(cfg, est.tech).total_pj / 1e6:10,.2f} uJ"
            out.append(line)
            roof = est.roofline(l)
            tiles = ", ".join(f"{k} {v}" for k, v in l.tiling.items())
            out.append(f"{'':<{width}}    {tiles}; {roof['ops_per_byte']:,.1f} ops/B, "
                       f"{roof['bound']}-bound")
            out.append(f"{'':<{width}}    {_format_levels(l.level_bytes(cfg))}")
            out.append(f"{'':<{width}}    stalls {_format_stalls(l.stalls)}")
    return out


def _format_levels(levels: dict[str, int | None]) -> str:
    """``scratchpad r X w Y B, accumulator r X w Y B, DRAM r X w Y B`` (bytes read and
    written)."""
    parts = []
    for label, key in (("scratchpad", "scratchpad"), ("accumulator", "accumulator"),
                       ("DRAM", "dram")):
        read, written = levels[f"{key}_read"], levels[f"{key}_written"]
        parts.append(f"{label} not modelled (no bus interface)" if read is None
                     else f"{label} r {read:,} w {written:,} B")
    return ", ".join(parts)


def _format_stalls(stalls: dict[str, int]) -> str:
    return ", ".join(f"{k.removeprefix('wait_')} {v:,}" for k, v in stalls.items()) + " cycles"
