"""Co-simulation with a bus interface: the DRAM image, the register accesses of a host driver,
and a run in Amaranth's simulator.

With ``config.dram_width`` the simulated design is :class:`rtl.dram_model.DramBench`: the
accelerator with its AXI4 master connected to the DRAM model. A run puts the program's DRAM
image (:meth:`qsim.program.Program.dram_image`) into the DRAM model, writes ``CMD_BASE``,
``CMD_COUNT`` and ``CTRL`` over the AXI4-Lite port as a driver would, waits for ``irq``, and
reads the counters and error registers back over the same port; the DRAM contents are read
back for the comparison with the model.
"""

from __future__ import annotations

import time

import numpy as np

from qsim.cosim.result import RtlResult
from qsim.cosim.words import readback_words
from qsim.errors import SimulationError
from qsim.hw import COUNTERS, csr_map
from qsim.program import Program

__all__ = ["dram_words", "dram_bytes_from_words", "run_pysim_dram", "start_writes"]


def dram_words(program: Program) -> list[int]:
    """The program's initial DRAM image as ``dram_width``-byte words from address 0."""
    width = program.config.dram_width
    image = bytes(program.dram_image())
    image += bytes(-len(image) % width)
    return [int.from_bytes(image[i : i + width], "little") for i in range(0, len(image), width)]


def dram_bytes_from_words(words, width: int) -> bytes:
    return b"".join(int(w).to_bytes(width, "little") for w in words)


def readback_dram_words(program: Program) -> int:
    """DRAM words to read back: the whole footprint."""
    width = program.config.dram_width
    return -(-min(program.dram_footprint(), program.config.dram_capacity) // width)


def start_writes(program: Program) -> list[tuple[int, int]]:
    """``(offset, value)`` register writes that start ``program`` (a host driver's)."""
    regs = csr_map()
    return [(regs["CMD_BASE"], program.cmd_base), (regs["CMD_COUNT"], len(program.commands)),
            (regs["CTRL"], 1)]


async def csr_write(ctx, csr, offset: int, value: int) -> None:
    """One AXI4-Lite register write in Amaranth's simulator (address and data together)."""
    ctx.set(csr.awaddr, offset)
    ctx.set(csr.wdata, value)
    ctx.set(csr.wstrb, 0xF)
    ctx.set(csr.awvalid, 1)
    ctx.set(csr.wvalid, 1)
    ctx.set(csr.bready, 1)
    while not ctx.get(csr.awready):
        await ctx.tick()
    await ctx.tick()
    ctx.set(csr.awvalid, 0)
    ctx.set(csr.wvalid, 0)
    while not ctx.get(csr.bvalid):
        await ctx.tick()
    await ctx.tick()
    ctx.set(csr.bready, 0)


def run_pysim_dram(program: Program, timeout_cycles: int | None = None) -> RtlResult:
    """Run ``program`` on the DRAM bench in Amaranth's simulator (small designs only)."""
    from amaranth.sim import Simulator

    from qsim.timing import simulate_timing
    from rtl.dram_model import DramBench

    cfg = program.config
    if timeout_cycles is None:
        timeout_cycles = 2 * simulate_timing(program).cycles + 200
    bench = DramBench(cfg)
    bench.dram.data.init = dram_words(program)
    reads = readback_words(program)
    dram_read = readback_dram_words(program)
    regs = csr_map()
    result: dict = {}

    async def tb(ctx):
        csr = bench.csr
        ctx.set(bench.dram_latency, cfg.dram_latency)

        async def write(offset: int, value: int) -> None:
            await csr_write(ctx, csr, offset, value)

        async def read(offset: int) -> int:
            ctx.set(csr.araddr, offset)
            ctx.set(csr.arvalid, 1)
            ctx.set(csr.rready, 1)
            while not ctx.get(csr.arready):
                await ctx.tick()
            await ctx.tick()
            ctx.set(csr.arvalid, 0)
            while not ctx.get(csr.rvalid):
                await ctx.tick()
            value = ctx.get(csr.rdata)
            await ctx.tick()
            ctx.set(csr.rready, 0)
            return value

        for offset, value in start_writes(program):
            await write(offset, value)
        waited = 0
        while not ctx.get(bench.irq):
            await ctx.tick()
            waited += 1
            if waited > timeout_cycles:
                raise SimulationError(f"the RTL did not raise irq within {timeout_cycles} cycles")
        counters = {}
        for name in COUNTERS:
            counters[name] = await read(regs[name]) | await read(regs[f"{name}_hi"]) << 32
        result["counters"] = counters
        status = await read(regs["STATUS"])
        result["error"] = bool(status & 4)
        result["error_code"] = await read(regs["ERROR_CODE"])
        result["error_cmd"] = await read(regs["ERROR_CMD"])
        mems = bench.core.memories
        result["memories"] = {
            key: np.array([[int(v) for v in ctx.get(mems[key][i])] for i in range(count)],
                          dtype=np.int64).reshape(count, -1) if count else
            np.zeros((0, program.memory_lanes()[key]), dtype=np.int64)
            for key, count in reads.items()}
        result["dram"] = dram_bytes_from_words(
            [ctx.get(bench.dram.data[i]) for i in range(dram_read)], cfg.dram_width)

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    t0 = time.perf_counter()
    sim.run()
    wall = time.perf_counter() - t0
    memories = result["memories"]
    out = RtlResult(counters=result["counters"], acc=memories["acc"], outputs={},
                    error=result["error"], wall_s=wall, sim_wall_s=wall, memories=memories,
                    dram=result["dram"], error_code=result["error_code"],
                    error_cmd=result["error_cmd"])
    out.outputs = {name: lay.unpack(out.memories[lay.memory])
                   for name, lay in program.outputs.items()}
    out.outputs.update(program.dram_outputs_from(out.dram))
    return out
