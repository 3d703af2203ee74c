"""The DMA engine's AXI4 read side against a slave that holds ``arready`` low and answers with
an error (Amaranth's simulator): a request once offered stays valid, unchanged, until it is
accepted (AXI A3.2.1), even after the error response, and the load ends only when that burst
has drained. qsim's DRAM model always accepts requests, so the co-simulations never meet this."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from qsim.config import AcceleratorConfig
from qsim.program import MEMORY_IDS
from rtl.axi import RESP_OKAY
from rtl.dma import DmaEngine

pytestmark = pytest.mark.amaranth

RESP_SLVERR = 2
CONFIG = AcceleratorConfig(rows=4, cols=4, act_mem_words=64, weight_mem_words=64,
                           acc_mem_words=64, cmd_mem_words=128, param_mem_words=8, dram_width=8,
                           dram_latency=1, dram_capacity=1 << 14, max_burst=2, dma_outstanding=4)


def _trace(accept_again: int) -> list[dict]:
    """LOAD of 16 activation words (64 bytes: 4 bursts of 2 beats) from a slave that accepts
    the first request in cycle 0, then holds ``arready`` low until cycle ``accept_again`` and
    accepts from then on. It serves bursts in order, 2 beats each, the first 3 cycles after
    accepting it at the earliest: the first burst in cycles 4 and 5 with SLVERR, the others
    with OKAY."""
    dma = DmaEngine(CONFIG)
    bus = dma.bus
    rows = []

    async def bench(ctx):
        ctx.set(dma.start, 1)
        ctx.set(dma.store, 0)
        ctx.set(dma.mem, MEMORY_IDS["act"])
        ctx.set(dma.dram_addr, 0)
        ctx.set(dma.sram_addr, 0)
        ctx.set(dma.words, 16)
        await ctx.tick()
        ctx.set(dma.start, 0)
        accepted = []  # cycle each burst was accepted
        served = 0  # beats sent so far (2 per burst)
        for cycle in range(accept_again + 30):
            arready = cycle == 0 or cycle >= accept_again
            burst, beat_of = divmod(served, 2)
            beat = burst < len(accepted) and cycle >= accepted[burst] + 3 + (burst == 0)
            ctx.set(bus.arready, arready)
            ctx.set(bus.rvalid, beat)
            ctx.set(bus.rresp, RESP_SLVERR if burst == 0 else RESP_OKAY)
            ctx.set(bus.rlast, beat and beat_of == 1)
            row = {"cycle": cycle, "arvalid": ctx.get(bus.arvalid), "arready": arready,
                   "araddr": ctx.get(bus.araddr), "rvalid": beat, "rready": ctx.get(bus.rready),
                   "fault": ctx.get(dma.fault), "done": ctx.get(dma.done),
                   "wr_en": ctx.get(dma.wr_en)}
            rows.append(row)
            if row["arvalid"] and arready:
                accepted.append(cycle)
            if beat and row["rready"]:
                served += 1
            await ctx.tick()

    sim = Simulator(dma)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return rows


@pytest.mark.parametrize("accept_again, expected", [
    # accepted again before the error arrives: requests 0x10 and 0x20 are in flight or
    # offered when it does; each is accepted and drained, 0x30 is never offered
    (3, {"offered": [(0, 0x0), (3, 0x10), (4, 0x20)], "done": 10}),
    # accepted again long after the error: 0x10 waits, unchanged, the whole time
    (9, {"offered": [(0, 0x0), (9, 0x10)], "done": 14}),
])
def test_a_read_request_stays_valid_until_accepted_after_an_error(accept_again, expected):
    rows = _trace(accept_again)
    for now, after in zip(rows, rows[1:]):  # AXI: valid and payload stay until the handshake
        if now["arvalid"] and not now["arready"]:
            assert after["arvalid"] and after["araddr"] == now["araddr"], now["cycle"]
    handshakes = [(r["cycle"], r["araddr"]) for r in rows if r["arvalid"] and r["arready"]]
    assert handshakes == expected["offered"]
    assert [r["cycle"] for r in rows if r["fault"]] == [4, 5]
    last_beat = max(r["cycle"] for r in rows if r["rvalid"] and r["rready"])
    # the load ends the cycle after the last accepted burst's last beat, and writes nothing
    assert [r["cycle"] for r in rows if r["done"]] == [last_beat + 1] == [expected["done"]]
    assert not any(r["wr_en"] for r in rows)
