"""Cycle-by-cycle traces of the RTL in Amaranth's simulator, drawn as text timing diagrams.

The timing diagrams in ``docs/microarchitecture.md`` are produced by :func:`timing_diagram`
and a test regenerates them, so the documentation shows what the RTL really does.
"""

from __future__ import annotations

from typing import Sequence

from qsim.program import Program

__all__ = ["trace_program", "timing_diagram"]


def trace_program(program: Program, probes: Sequence[str], max_cycles: int = 200) -> list[dict[str, int]]:
    """Values of ``probes`` (names in ``Accelerator.probes``) at every cycle of a run.

    Cycle 0 is the first cycle with ``busy`` high (``start`` was sampled in the cycle
    before), as in :mod:`qsim.timing`; tracing stops at the first cycle with ``done`` high.
    """
    from amaranth.sim import Simulator

    from rtl.top import Accelerator

    cfg = program.config
    if cfg.has_dram:  # the accelerator with its DRAM model, started over the registers
        from qsim.cosim.dram import csr_write, dram_words, start_writes
        from rtl.dram_model import DramBench

        design = DramBench(cfg)
        design.dram.data.init = dram_words(program)
        top = design.core
    else:
        design = top = Accelerator(cfg)
        for key, image in program.initial_images().items():
            top.memories[key].init = [list(row) for row in image.tolist()]
        top.memories["cmd"].init = program.encoded()
    rows: list[dict[str, int]] = []

    async def bench(ctx):
        if cfg.has_dram:
            ctx.set(design.dram_latency, cfg.dram_latency)
            writes = start_writes(program)
            for offset, value in writes[:-1]:
                await csr_write(ctx, design.csr, offset, value)
        ctx.set(design.start, 1)
        await ctx.tick()
        ctx.set(design.start, 0)
        for _ in range(max_cycles):
            rows.append({name: _value(ctx.get(top.probes[name])) for name in probes})
            if ctx.get(top.done):
                return
            await ctx.tick()

    sim = Simulator(design)  # elaborates the design, which fills in top.probes
    unknown = [p for p in probes if p not in top.probes]
    if unknown:
        raise KeyError(f"unknown probe(s) {', '.join(unknown)}; known: {', '.join(top.probes)}")
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return rows


def _value(v) -> int:
    try:
        return int(v)
    except TypeError:  # a data.View constant
        return int(v.as_value().value)


def timing_diagram(program: Program, probes: Sequence[str], labels: dict[str, str] | None = None,
                   first: int = 0, last: int | None = None,
                   qualify: dict[str, str] | None = None) -> str:
    """A text timing diagram: one row per probe, one 4-character column per cycle.

    One-bit control probes draw ``‾‾‾`` when high and ``___`` when low; other probes print
    their value, or ``.`` while the probe named by ``qualify[probe]`` (its valid signal) is
    low.
    """
    trace = trace_program(program, probes)
    last = len(trace) - 1 if last is None else min(last, len(trace) - 1)
    cycles = range(first, last + 1)
    labels = labels or {}
    names = [labels.get(p, p) for p in probes]
    width = max(len(n) for n in names + ["cycle"])
    lines = ["cycle".ljust(width) + " |" + "".join(f"{c:>4}" for c in cycles)]
    qualify = qualify or {}
    for probe, name in zip(probes, names):
        cells = []
        for c in cycles:
            v = trace[c][probe]
            if probe.endswith(("read", "write", "busy", "done", "take", "wait", "valid", "ready",
                               "last")):
                cells.append(" ‾‾‾" if v else " ___")
            elif probe in qualify and not trace[c][qualify[probe]]:
                cells.append("   .")
            else:
                cells.append(f"{v:>4}")
        lines.append(name.ljust(width) + " |" + "".join(cells))
    return "\n".join(lines)
