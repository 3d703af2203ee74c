"""Cycle, utilization and throughput estimates of whole networks on one accelerator.

Every matrix product of a graph (:meth:`qsim.nn.graph.Graph.gemms`) is costed with the
timing model (:func:`qsim.timing.estimate_gemm`) as the compiler lowers it: one GEMM per
convolution group, run one after another, each draining the pipeline before the next.
Layers without a matrix product (pooling, element-wise, softmax) are assumed to run on the
host and cost no accelerator cycles; the memories are not checked (a layer larger than the
on-chip memories is estimated as if it fit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from qsim.config import AcceleratorConfig
from qsim.nn.graph import GemmShape, Graph
from qsim.timing import estimate_gemm

__all__ = ["LayerEstimate", "NetworkEstimate", "estimate_network"]


@dataclass(frozen=True)
class LayerEstimate:
    name: str
    kind: str
    gemm: GemmShape
    cycles: int
    macs_per_cycle: int  # R x C of the accelerator

    @property
    def utilization(self) -> float:
        """Useful MACs / (R x C x cycles), as for the whole network."""
        return self.gemm.macs / (self.macs_per_cycle * self.cycles) if self.cycles else 0.0


@dataclass
class NetworkEstimate:
    network: str
    config: AcceleratorConfig
    batch: int
    layers: list[LayerEstimate] = field(default_factory=list)
    wall_s: float = 0.0

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

    def to_dict(self) -> dict:
        return {
            "network": self.network, "batch": self.batch, "config": self.config.to_dict(),
            "cycles": self.cycles, "macs": self.macs, "seconds": self.seconds,
            "utilization": round(self.utilization, 6),
            "inferences_per_s": round(self.inferences_per_s, 3),
            "estimate_wall_s": round(self.wall_s, 6),
            "layers": [{"name": l.name, "kind": l.kind, "m": l.gemm.m, "k": l.gemm.k,
                        "n": l.gemm.n, "count": l.gemm.count, "macs": l.gemm.macs,
                        "cycles": l.cycles, "utilization": round(l.utilization, 6)}
                       for l in self.layers],
        }


def estimate_network(graph: Graph, config: AcceleratorConfig, batch: int = 1) -> NetworkEstimate:
    """Cycles of every matrix product of ``graph`` at ``batch`` on ``config``."""
    t0 = time.perf_counter()
    result = NetworkEstimate(graph.name, config, batch)
    cache: dict[tuple[int, int, int], int] = {}
    for layer, g in graph.gemms(batch):
        key = (g.m, g.k, g.n)
        if key not in cache:
            cache[key] = estimate_gemm(config, g.m, g.k, g.n).cycles
        result.layers.append(LayerEstimate(layer.name, layer.kind, g, cache[key] * g.count,
                                           config.macs_per_cycle))
    result.wall_s = time.perf_counter() - t0
    return result
