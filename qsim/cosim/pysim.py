"""Run a Program on the RTL in Amaranth's own Python simulator (no Verilator).

Slow (thousands of cycles per second) but needs no C++ toolchain, so the quick test tier
uses it on small arrays to check the RTL against the model and the timing model.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from qsim.config import AcceleratorConfig
from qsim.cosim.result import RtlResult
from qsim.cosim.words import readback_words
from qsim.errors import SimulationError
from qsim.program import Program

__all__ = ["run_pysim", "run_pysim_images"]


def run_pysim_images(config: AcceleratorConfig, images: Mapping[str, np.ndarray],
                     commands: Sequence[int], acc_words: int, timeout_cycles: int,
                     act_words: int = 0) -> RtlResult:
    """Load raw memory images and command words, run to ``done``, read ``acc_words`` words
    of the accumulator memory (and ``act_words`` of the activation memory).

    ``images`` maps data memories (``act``, ``weight``, ``acc`` and the parameter memories)
    to (words x lanes) arrays placed at address 0.
    """
    from amaranth.sim import Simulator

    from qsim.hw import COUNTERS
    from rtl.top import Accelerator

    top = Accelerator(config)
    for key, image in images.items():
        top.memories[key].init = [list(row) for row in np.asarray(image).tolist()]
    top.memories["cmd"].init = [int(w) for w in commands]
    result: dict[str, object] = {}

    async def bench(ctx):
        ctx.set(top.start, 1)
        await ctx.tick()
        ctx.set(top.start, 0)
        waited = 0
        while not ctx.get(top.done):
            await ctx.tick()
            waited += 1
            if waited > timeout_cycles:
                raise SimulationError(
                    f"the RTL did not raise done within {timeout_cycles} cycles")
        result["counters"] = {name: int(ctx.get(getattr(top, name))) for name in COUNTERS}
        result["error"] = bool(ctx.get(top.error))
        acc = top.memories["acc"]
        result["acc"] = np.array(
            [[int(v) for v in ctx.get(acc[i])] for i in range(acc_words)],
            dtype=np.int64).reshape(acc_words, config.cols)
        act = top.memories["act"]
        result["act"] = np.array(
            [[int(v) for v in ctx.get(act[i])] for i in range(act_words)],
            dtype=np.int64).reshape(act_words, config.act_lanes)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    t0 = time.perf_counter()
    sim.run()
    wall = time.perf_counter() - t0
    memories = {"acc": result["acc"]}
    if act_words:
        memories["act"] = result["act"]
    return RtlResult(counters=result["counters"], acc=result["acc"], outputs={},
                     error=result["error"], wall_s=wall, sim_wall_s=wall, memories=memories)


def run_pysim(program: Program, timeout_cycles: int | None = None) -> RtlResult:
    """Run ``program`` on a fresh Accelerator and decode its outputs."""
    from qsim.timing import simulate_timing

    if timeout_cycles is None:
        timeout_cycles = 2 * simulate_timing(program).cycles + 100
    reads = readback_words(program)
    result = run_pysim_images(program.config, program.initial_images(), program.encoded(),
                              reads["acc"], timeout_cycles, reads.get("act", 0))
    result.outputs = {name: lay.unpack(result.memories[lay.memory])
                      for name, lay in program.outputs.items()}
    return result
