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
network's outputs equal the integer reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

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
           "NetworkCosimReport", "cosim_network"]


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

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = config
        self.records: list[GemmRecord] = []

    def matmul(self, x: np.ndarray, x_zp: int, w: np.ndarray, w_zp: np.ndarray,
               layer: Layer) -> np.ndarray:
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
                    semantics: Semantics | str = "onnxruntime", keep: bool = False) -> CompiledNetwork:
    """Run ``graph`` with every quantized product on the accelerator's bit-accurate model."""
    t0 = time.perf_counter()
    backend = AcceleratorBackend(config)
    result = run(graph, feeds, semantics, keep=keep, backend=backend)
    return CompiledNetwork(graph, config, Semantics.parse(semantics), result, backend.records,
                           time.perf_counter() - t0)


@dataclass
class NetworkCosimReport:
    """Agreement of a network run on the accelerator with the integer reference and the RTL."""

    network: str
    output_elements: int
    output_mismatches: int  # compiled network vs the integer reference
    programs: int
    acc_words: int
    rtl_mismatches: int  # accumulator lanes where the RTL differs from the model
    model_cycles: int
    rtl_cycles: int
    counter_diffs: int  # programs whose RTL counters differ from the timing model
    layer_cycles: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def agrees(self) -> bool:
        return (self.output_mismatches == 0 and self.rtl_mismatches == 0
                and self.model_cycles == self.rtl_cycles and self.counter_diffs == 0)

    def to_dict(self) -> dict:
        return {
            "network": self.network, "output_elements": self.output_elements,
            "output_mismatches": self.output_mismatches, "programs": self.programs,
            "acc_words": self.acc_words, "rtl_mismatches": self.rtl_mismatches,
            "model_cycles": self.model_cycles, "rtl_cycles": self.rtl_cycles,
            "counter_diffs": self.counter_diffs, "layer_cycles": self.layer_cycles,
            "agrees": self.agrees, "wall_s": round(self.wall_s, 3),
        }


def cosim_network(graph: Graph, feeds: Mapping[str, np.ndarray], config: AcceleratorConfig,
                  semantics: Semantics | str = "onnxruntime", rtl: bool = True,
                  timeout_cycles: int | None = None) -> NetworkCosimReport:
    """Compile ``graph`` for ``config``, check it against the reference, and run it on the RTL.

    The network's outputs computed through the accelerator's model must equal the integer
    reference (:func:`qsim.nn.engine.run` with exact kernels) element for element. With
    ``rtl``, every Program the network executed runs on the Verilator-simulated RTL (one
    process for all of them) and every accumulator word, cycle count and counter is compared
    with the model and the timing model.
    """
    t0 = time.perf_counter()
    reference = run(graph, feeds, semantics)
    compiled = compile_network(graph, feeds, config, semantics)
    mismatches = sum(int(np.count_nonzero(reference.outputs[k] != compiled.result.outputs[k]))
                     for k in graph.outputs)
    elements = sum(int(v.size) for v in reference.outputs.values())
    programs = compiled.programs
    model_cycles = compiled.cycles
    rtl_cycles, rtl_mismatches, counter_diffs, words = model_cycles, 0, 0, 0
    if rtl and programs:
        from qsim.cosim.runner import compare, run_programs

        rtl_cycles = 0
        for program, result in zip(programs, run_programs(programs, timeout_cycles=timeout_cycles)):
            report = compare(program, result)
            rtl_cycles += report.rtl_cycles
            rtl_mismatches += report.acc_mismatches
            counter_diffs += bool(report.counter_diffs)
            words += int(result.acc.size)
    return NetworkCosimReport(
        network=graph.name, output_elements=elements, output_mismatches=mismatches,
        programs=len(programs), acc_words=words, rtl_mismatches=rtl_mismatches,
        model_cycles=model_cycles, rtl_cycles=rtl_cycles, counter_diffs=counter_diffs,
        layer_cycles=compiled.layer_cycles(), wall_s=time.perf_counter() - t0,
    )
