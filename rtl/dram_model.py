"""A simulation model of DRAM behind an AXI4 slave port, with a latency set at run time.

Not part of the accelerator: it stands for the memory system in co-simulation (the bench top
:class:`DramBench` pairs it with the accelerator). Its rules, which :mod:`qsim.dma` mirrors:

* a read burst accepted in cycle ``t`` presents its first beat in cycle ``t + 1 + latency`` at
  the earliest; bursts are served in order, one beat per cycle while ``rready`` is high;
* write beats are accepted while a write burst's address has been accepted; a burst whose last
  beat is accepted in cycle ``t`` is answered in cycle ``t + 1 + latency``;
* a beat outside the ``capacity`` bytes answers DECERR (reads return zero, writes are dropped);
* requests are always accepted while fewer than 16 of a kind wait (the DMA engine keeps at
  most 16 in flight).

The contents are an ordinary memory of ``dram_width``-byte words (``dram_mem`` in Verilog), so
testbenches load and read them through the simulator like the on-chip memories.
"""

from __future__ import annotations

from amaranth import Array, Module, Signal
from amaranth.hdl import MemoryData
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In

from qsim.config import AcceleratorConfig
from qsim.program import DRAM_ADDR_BITS
from rtl.axi import RESP_DECERR, RESP_OKAY, axi4

__all__ = ["DramModel", "DRAM_MEMORY_NAME", "QUEUE_DEPTH", "LATENCY_BITS"]

DRAM_MEMORY_NAME = "dram_mem"
QUEUE_DEPTH = 16
LATENCY_BITS = 16
_TIME_BITS = 40


class _Queue:
    """A first-in first-out queue of records held in registers (``QUEUE_DEPTH`` entries)."""

    def __init__(self, m: Module, name: str, fields: dict[str, int]) -> None:
        self.fields = fields
        self.slots = {f: Array(Signal(w, name=f"{name}_{f}{i}") for i in range(QUEUE_DEPTH))
                      for f, w in fields.items()}
        bits = (QUEUE_DEPTH - 1).bit_length()
        self.head = Signal(bits, name=f"{name}_head")
        self.tail = Signal(bits, name=f"{name}_tail")
        self.count = Signal(range(QUEUE_DEPTH + 1), name=f"{name}_count")
        self.push = Signal(name=f"{name}_push")
        self.pop = Signal(name=f"{name}_pop")
        self.data = {f: Signal(w, name=f"{name}_in_{f}") for f, w in fields.items()}
        m.d.sync += self.count.eq(self.count + self.push - self.pop)
        with m.If(self.push):
            m.d.sync += self.tail.eq(self.tail + 1)
            for f in fields:
                m.d.sync += self.slots[f][self.tail].eq(self.data[f])
        with m.If(self.pop):
            m.d.sync += self.head.eq(self.head + 1)

    def first(self, field: str):
        return self.slots[field][self.head]

    @property
    def nonempty(self):
        return self.count != 0


class DramModel(wiring.Component):
    """Ports: ``latency`` (In, cycles), ``bus`` (the AXI4 slave)."""

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = config
        self.words = config.dram_capacity // config.dram_width
        self.data = MemoryData(shape=8 * config.dram_width, depth=self.words, init=[])
        super().__init__({
            "latency": In(LATENCY_BITS),
            "bus": In(axi4(DRAM_ADDR_BITS, 8 * config.dram_width)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        width = cfg.dram_width
        wshift = (width - 1).bit_length()
        bus = self.bus
        m.submodules[DRAM_MEMORY_NAME] = mem = memory.Memory(self.data)
        rd = mem.read_port()
        wr = mem.write_port(granularity=8)
        index_bits = (self.words - 1).bit_length()

        now = Signal(_TIME_BITS)
        m.d.sync += now.eq(now + 1)

        def in_range(word_addr):
            return word_addr[index_bits:] == 0

        # ---- reads ----
        ar = _Queue(m, "ar", {"addr": DRAM_ADDR_BITS - wshift, "len": 8, "due": _TIME_BITS})
        m.d.comb += [
            bus.arready.eq(ar.count < QUEUE_DEPTH),
            ar.push.eq(bus.arvalid & bus.arready),
            ar.data["addr"].eq(bus.araddr[wshift:]),
            ar.data["len"].eq(bus.arlen),
            ar.data["due"].eq(now + 1 + self.latency),
        ]
        serving = Signal()
        s_addr = Signal(DRAM_ADDR_BITS - wshift)
        s_left = Signal(9)
        beat = serving & bus.rready
        finishing = beat & (s_left == 1)
        free = ~serving | finishing
        begin = free & ar.nonempty & (ar.first("due") <= now + 1)
        m.d.comb += [
            bus.rvalid.eq(serving),
            bus.rdata.eq(rd.data),
            bus.rlast.eq(s_left == 1),
            bus.rresp.eq(RESP_OKAY),
            ar.pop.eq(begin),
            rd.en.eq(begin | beat),
        ]
        with m.If(serving & ~in_range(s_addr)):
            m.d.comb += bus.rresp.eq(RESP_DECERR)
        with m.If(begin):
            m.d.comb += rd.addr.eq(ar.first("addr"))
            m.d.sync += [serving.eq(1), s_addr.eq(ar.first("addr")), s_left.eq(ar.first("len") + 1)]
        with m.Elif(beat):
            m.d.comb += rd.addr.eq(s_addr + 1)
            m.d.sync += [s_addr.eq(s_addr + 1), s_left.eq(s_left - 1)]
            with m.If(finishing):
                m.d.sync += serving.eq(0)

        # ---- writes ----
        aw = _Queue(m, "aw", {"addr": DRAM_ADDR_BITS - wshift, "len": 8})
        b = _Queue(m, "b", {"resp": 2, "due": _TIME_BITS})
        w_pos = Signal(9)
        w_err = Signal()
        w_addr = aw.first("addr") + w_pos
        w_beat = bus.wvalid & bus.wready
        beat_err = ~in_range(w_addr)
        m.d.comb += [
            bus.awready.eq(aw.count < QUEUE_DEPTH),
            aw.push.eq(bus.awvalid & bus.awready),
            aw.data["addr"].eq(bus.awaddr[wshift:]),
            aw.data["len"].eq(bus.awlen),
            bus.wready.eq(aw.nonempty),
            wr.addr.eq(w_addr),
            wr.data.eq(bus.wdata),
            aw.pop.eq(w_beat & bus.wlast),
            b.push.eq(w_beat & bus.wlast),
            b.data["resp"].eq((w_err | beat_err).replicate(2) & RESP_DECERR),
            b.data["due"].eq(now + 1 + self.latency),
            bus.bvalid.eq(b.nonempty & (b.first("due") <= now)),
            bus.bresp.eq(b.first("resp")),
            b.pop.eq(bus.bvalid & bus.bready),
        ]
        for lane in range(width):
            m.d.comb += wr.en[lane].eq(w_beat & ~beat_err & bus.wstrb[lane])
        with m.If(w_beat):
            with m.If(bus.wlast):
                m.d.sync += [w_pos.eq(0), w_err.eq(0)]
            with m.Else():
                m.d.sync += [w_pos.eq(w_pos + 1), w_err.eq(w_err | beat_err)]
        return m


class DramBench(wiring.Component):
    """The accelerator with its DRAM model: what co-simulation with a bus interface runs.

    Ports: the accelerator's host pins and counters, its ``csr`` AXI4-Lite slave and
    ``irq``, and the DRAM model's ``dram_latency``.
    """

    def __init__(self, config: AcceleratorConfig) -> None:
        from rtl.top import Accelerator

        self.config = config
        self.core = Accelerator(config)
        self.dram = DramModel(config)
        members = {name: member for name, member in self.core.signature.members.items()
                   if name != "mem"}
        members["dram_latency"] = In(LATENCY_BITS)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.dram = dram = self.dram
        wiring.connect(m, core.mem, dram.bus)
        m.d.comb += dram.latency.eq(self.dram_latency)
        for name, member in self.signature.members.items():
            if name == "dram_latency":
                continue
            if name == "csr":
                wiring.connect(m, wiring.flipped(self.csr), core.csr)
            elif member.flow == In:
                m.d.comb += getattr(core, name).eq(getattr(self, name))
            else:
                m.d.comb += getattr(self, name).eq(getattr(core, name))
        return m
