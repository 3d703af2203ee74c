"""Running quantized networks on the accelerator: compile, execute, time, co-simulate.

Every quantized convolution and matrix product of a graph becomes one or more accelerator
Programs: im2col on the host (with the input zero point as padding), zero points folded into
an int8 x int8 product plus a host-side correction (:func:`qsim.compile.fold_zero_points`),
and the product cut into Programs that fit the memories (:func:`qsim.compile.plan_gemm`).
Everything else (requantization, pools, element-wise layers) runs on the host exactly as in
the integer reference, because :class:`AcceleratorBackend` plugs into the engine's
accumulator seam (:class:`qsim.nn.engine.AccumulatorBackend`).

:func:`compile_network` runs a network this way on the bit-accurate model and records every
Program with its result; :func:`cosim_network` then runs all of them on the RTL in one
simulator process and checks each accumulator word and each cycle count, and checks that the
network's outputs equal the integer reference. :func:`check_network` is the first half of
that (model and reference only), for callers that run the RTL themselves (``qsim run``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from qsim.compile import GemmPlan, fold_zero_points, plan_gemm
from qsim.config import AcceleratorConfig
from qsim.model import execute
from qsim.nn.engine import AccumulatorBackend, RunResult, run
from qsim.nn.graph import Graph, Layer
from qsim.program import Program
from qsim.quant.requant import Semantics
from qsim.timing import simulate_timing

__all__ = ["GemmRecord", "AcceleratorBackend", "CompiledNetwork", "compile_network",
           "NetworkCosimReport", "NetworkCheck", "check_network", "cosim_network"]


@dataclass
class GemmRecord:
    """One matrix product of a layer as the accelerator ran it."""

    layer: str
    m: int
    k: int
    n: int
    plan: GemmPlan
    outputs: list[np.ndarray]  # each program's output C, from the bit-accurate model

    @property
    def programs(self) -> list[Program]:
        return self.plan.programs

    @property
    def cycles(self) -> int:
        return sum(simulate_timing(p).cycles for p in self.plan.programs)


class AcceleratorBackend(AccumulatorBackend):
    """Accumulators computed by Programs on the bit-accurate model of ``config``.

    Each product is recorded (:attr:`records`) so that its Programs can be timed and re-run
    on the RTL.
    """

    def __init__(self, config: AcceleratorConfig,
                 on_gemm: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.records: list[GemmRecord] = []
        self.on_gemm = on_gemm

    def matmul(self, x: np.ndarray, x_zp: int, w: np.ndarray, w_zp: np.ndarray,
               layer: Layer) -> np.ndarray:
        if self.on_gemm is not None:
            self.on_gemm(layer.name)
        fold = fold_zero_points(self.config, x, x_zp, w, w_zp)
        index = sum(1 for r in self.records if r.layer == layer.name)
        plan = plan_gemm(self.config, fold.a, fold.b, name=f"{layer.name}#{index}")
        outputs = [execute(p).outputs["C"] for p in plan.programs]
        self.records.append(GemmRecord(layer.name, x.shape[0], x.shape[1], w.shape[1], plan, outputs))
        return plan.assemble(outputs) + fold.correction


@dataclass
class CompiledNetwork:
    """A network run on the accelerator's model, with every Program it executed."""

    graph: Graph
    config: AcceleratorConfig
    semantics: Semantics
    result: RunResult
    records: list[GemmRecord]
    wall_s: float = 0.0

    @property
    def programs(self) -> list[Program]:
        return [p for r in self.records for p in r.programs]

    @property
    def cycles(self) -> int:
        return sum(r.cycles for r in self.records)

    def layer_cycles(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r.layer] = out.get(r.layer, 0) + r.cycles
        return out


def compile_network(graph: Graph, feeds: Mapping[str, np.ndarray], config: AcceleratorConfig,
                    semantics: Semantics | str = "onnxruntime", keep: bool = False, *,
                    isa: str = "exact", on_gemm: Callable[[str], None] | None = None) -> CompiledNetwork:
    """Run ``graph`` with every quantized product on the accelerator's bit-accurate model.

    The products never depend on ``isa`` (the accelerator's datapath is exact); the host-side
    steps under the ``onnxruntime`` semantics do (QLinearAdd has other kernels without AVX2),
    so ``isa`` is the path they follow, ``exact`` by default as for the reference of
    :func:`check_network`. ``on_gemm`` is called with the layer name before each product is
    compiled (progress reports).
    """
    t0 = time.perf_counter()
    backend = AcceleratorBackend(config, on_gemm=on_gemm)
    result = run(graph, feeds, semantics, keep=keep, isa=isa, backend=backend)
    return CompiledNetwork(graph, config, Semantics.parse(semantics), result, backend.records,
                           time.perf_counter() - t0)


@dataclass
class NetworkCosimReport:
    """Agreement of a network run on the accelerator with the integer reference and the RTL.

    The RTL figures (``acc_words``, ``rtl_mismatches``, ``rtl_cycles``, ``counter_diffs``) are
    None when the RTL was not run: nothing was measured, so nothing is reported.
    """

    network: str
    output_elements: int
    output_mismatches: int  # compiled network vs the integer reference
    programs: int
    acc_words: int | None  # accumulator words compared with the RTL
    rtl_mismatches: int | None  # accumulator lanes where the RTL differs from the model
    model_cycles: int
    rtl_cycles: int | None
    counter_diffs: int | None  # programs whose RTL counters differ from the timing model
    layer_cycles: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    #: With whole layers on chip (qsim.nn.onchip): the chains and the layers left on the host.
    on_chip: dict | None = None

    @property
    def rtl_run(self) -> bool:
        return self.rtl_cycles is not None

    @property
    def agrees(self) -> bool | None:
        """True if every check passed, False if one failed, None if the RTL was not run and
        nothing failed (the outputs equal the reference, but the RTL is unchecked)."""
        if self.output_mismatches != 0:
            return False
        if not self.rtl_run:
            return None
        return (self.rtl_mismatches == 0 and self.model_cycles == self.rtl_cycles
                and self.counter_diffs == 0)

    def to_dict(self) -> dict:
        return {
            "network": self.network, "output_elements": self.output_elements,
            "output_mismatches": self.output_mismatches, "programs": self.programs,
            "acc_words": self.acc_words, "rtl_mismatches": self.rtl_mismatches,
            "model_cycles": self.model_cycles, "rtl_cycles": self.rtl_cycles,
            "counter_diffs": self.counter_diffs, "layer_cycles": self.layer_cycles,
            "agrees": self.agrees, "wall_s": round(self.wall_s, 3),
            **({"on_chip": self.on_chip} if self.on_chip is not None else {}),
        }


@dataclass
class NetworkCheck:
    """A network compiled for the accelerator and checked against the integer reference,
    ready for its Programs to be run on the RTL (:meth:`report` takes their results)."""

    graph: Graph
    compiled: CompiledNetwork
    output_elements: int
    output_mismatches: int
    program_cycles: list[int]  # the timing model's cycles of each Program, in order

    @property
    def programs(self) -> list[Program]:
        return self.compiled.programs

    @property
    def program_layers(self) -> list[str]:
        return [r.layer for r in self.compiled.records for _ in r.programs]

    def report(self, rtl_results: list | None, wall_s: float = 0.0) -> NetworkCosimReport:
        """The report, with ``rtl_results`` (one RtlResult per Program) or None (no RTL)."""
        words = mismatches = rtl_cycles = diffs = None
        if rtl_results is not None:
            from qsim.cosim.runner import compare

            if len(rtl_results) != len(self.programs):
                raise ValueError(f"{len(rtl_results)} RTL results for {len(self.programs)} programs")
            words = mismatches = rtl_cycles = diffs = 0
            for program, result in zip(self.programs, rtl_results):
                cmp = compare(program, result)
                rtl_cycles += cmp.rtl_cycles
                mismatches += cmp.acc_mismatches
                diffs += bool(cmp.counter_diffs)
                words += int(result.acc.size)
        layer_cycles: dict[str, int] = {}
        for layer, cycles in zip(self.program_layers, self.program_cycles):
            layer_cycles[layer] = layer_cycles.get(layer, 0) + cycles
        return NetworkCosimReport(
            network=self.graph.name, output_elements=self.output_elements,
            output_mismatches=self.output_mismatches, programs=len(self.programs), acc_words=words,
            rtl_mismatches=mismatches, model_cycles=sum(self.program_cycles), rtl_cycles=rtl_cycles,
            counter_diffs=diffs, layer_cycles=layer_cycles, wall_s=wall_s)


def check_network(graph: Graph, feeds: Mapping[str, np.ndarray], config: AcceleratorConfig,
                  semantics: Semantics | str = "onnxruntime", *, isa: str = "exact",
                  on_gemm: Callable[[str], None] | None = None) -> NetworkCheck:
    """Compile ``graph`` for ``config`` on the model and compare its outputs with the reference.

    The reference is :func:`qsim.nn.engine.run` with exact kernels on instruction path ``isa``
    (default ``exact``: int32 accumulation, as the accelerator computes; a saturating path such
    as ``avx2`` checks the accelerator against what that engine computes). ``on_gemm`` is
    called with the layer name before each product is compiled (progress reports).
    """
    reference = run(graph, feeds, semantics, isa=isa)
    # the host steps follow the reference's path
    compiled = compile_network(graph, feeds, config, semantics, isa=isa, on_gemm=on_gemm)
    mismatches = sum(int(np.count_nonzero(reference.outputs[k] != compiled.result.outputs[k]))
                     for k in graph.outputs)
    elements = sum(int(v.size) for v in reference.outputs.values())
    cycles = [simulate_timing(p).cycles for p in compiled.programs]
    return NetworkCheck(graph, compiled, elements, mismatches, cycles)


def cosim_network(graph: Graph, feeds: Mapping[str, np.ndarray], config: AcceleratorConfig,
                  semantics: Semantics | str = "onnxruntime", rtl: bool = True,
                  timeout_cycles: int | None = None, *, isa: str = "exact") -> NetworkCosimReport:
    """Compile ``graph`` for ``config``, check it against the reference, and run it on the RTL.

    The network's outputs computed through the accelerator's model must equal the integer
    reference (:func:`qsim.nn.engine.run` with exact kernels, on instruction path ``isa``)
    element for element. With ``rtl``, every Program the network executed runs on the
    Verilator-simulated RTL (one process for all of them) and every accumulator word, cycle
    count and counter is compared with the model and the timing model; without it the RTL
    figures of the report are None.
    """
    t0 = time.perf_counter()
    check = check_network(graph, feeds, config, semantics, isa=isa)
    results = None
    if rtl:
        from qsim.cosim.runner import run_programs

        results = run_programs(check.programs, timeout_cycles=timeout_cycles) if check.programs else []
    return check.report(results, wall_s=time.perf_counter() - t0)
