"""The DMA engine: one LOAD or STORE at a time between an on-chip memory and DRAM over AXI4.

Its cycle rules are written out in :mod:`qsim.dma`, whose per-cycle simulation the timing
model uses; the cosim tests compare the two. In short: bursts are cut at every multiple of
``max_burst * W`` bytes and requested while fewer than ``dma_outstanding`` are in flight; a
LOAD's read beats pass through a byte buffer of ``B + W - 1`` bytes (``B`` the word's bytes
in DRAM) out of which one word per cycle is written; a STORE reads one word per cycle into a
buffer of the same size and sends a write beat whenever ``W`` bytes (or the last bytes) are in
it.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qsim.config import AcceleratorConfig, RequantMode
from qsim.program import DRAM_ADDR_BITS, MEMORY_IDS, dram_word_bytes, memory_word_bits
from rtl.axi import BURST_INCR, RESP_OKAY, axi4

__all__ = ["DmaEngine", "dma_memories", "sram_addr_bits", "words_bits"]


def dma_memories(config: AcceleratorConfig) -> list[str]:
    """On-chip memories the DMA engine reaches (``cmd`` for the program fetch)."""
    mems = ["act", "weight", "acc"]
    if config.requant is not RequantMode.NONE:
        mems += ["bias", "scale", "qctl"]
    return mems + ["cmd"]


def _deepest(config: AcceleratorConfig) -> int:
    """Words of the deepest memory the DMA engine reaches (the command memory included)."""
    return max(config.act_mem_words, config.weight_mem_words, config.acc_mem_words,
               config.param_mem_words, config.cmd_mem_words)


def sram_addr_bits(config: AcceleratorConfig) -> int:
    return (_deepest(config) - 1).bit_length()


def words_bits(config: AcceleratorConfig) -> int:
    return _deepest(config).bit_length()


class DmaEngine(wiring.Component):
    """Ports
    -----
    start : In(1)
        Take the command on ``store``, ``mem``, ``dram_addr``, ``sram_addr``, ``words`` (only
        while idle or in the cycle of ``done``).
    busy : Out(1)
    done : Out(1)
        The command's last action happens this cycle (last word written, last response).
    fault : Out(1)
        A DRAM error response arrived this cycle (the command still runs to its end, writing
        nothing more).
    wr_en, wr_mem, wr_addr, wr_data : Out
        Memory write (LOAD): word ``wr_addr`` of memory ``wr_mem`` (a :data:`MEMORY_IDS`
        value) gets the low bits of ``wr_data``.
    rd_en, rd_addr : Out, rd_data : In
        Memory read (STORE) of the command's memory; the data arrives the next cycle.
    mem_now : Out(3)
        Memory of the running command.
    read_beat, write_beat : Out(1)
        A data beat crossed the bus this cycle (for the byte counters).
    bus : Out(axi4)
        The AXI4 master.
    """

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = config
        self.mems = dma_memories(config)
        self.word_bytes = {m: dram_word_bytes(config, m) for m in self.mems}
        self.data_bits = max(memory_word_bits(config, m) for m in self.mems)
        super().__init__({
            "start": In(1), "store": In(1), "mem": In(3), "dram_addr": In(DRAM_ADDR_BITS),
            "sram_addr": In(sram_addr_bits(config)), "words": In(words_bits(config)),
            "busy": Out(1), "done": Out(1), "fault": Out(1),
            "wr_en": Out(1), "wr_mem": Out(3), "wr_addr": Out(sram_addr_bits(config)),
            "wr_data": Out(self.data_bits),
            "rd_en": Out(1), "rd_addr": Out(sram_addr_bits(config)), "rd_data": In(self.data_bits),
            "mem_now": Out(3), "read_beat": Out(1), "write_beat": Out(1),
            "bus": Out(axi4(DRAM_ADDR_BITS, 8 * config.dram_width)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        width = cfg.dram_width
        wshift = (width - 1).bit_length()
        grid = cfg.max_burst * width
        max_wb = max(self.word_bytes.values())
        cap_bits = max_wb + width - 1
        bus = self.bus
        beat_bits = (cfg.max_burst).bit_length()
        total_bits = (max(1 << words_bits(cfg), 2) * max_wb // width + 2).bit_length()

        active = Signal()
        store = Signal()
        mem = Signal(3)
        wb = Signal(range(max_wb + 1))
        err = Signal()
        # request side (AR or AW)
        req_addr = Signal(DRAM_ADDR_BITS)
        req_left = Signal(total_bits)  # beats not yet requested
        open_ = Signal(range(cfg.dma_outstanding + 1))  # bursts in flight
        # data side
        n = Signal(range(cap_bits + width + 1))
        buf = Signal(8 * (cap_bits + width))
        left = Signal(words_bits(cfg) + 1)  # LOAD: words to write; STORE: words to read
        ptr = Signal(sram_addr_bits(cfg))
        # STORE only
        beats_left = Signal(total_bits)
        credit = Signal(range(cfg.dma_outstanding + 1))
        w_addr = Signal(DRAM_ADDR_BITS)
        in_burst = Signal(beat_bits + 1)
        inflight = Signal()

        def burst_beats(addr, remaining):
            room = (grid - addr[: (grid - 1).bit_length()]) >> wshift if grid > 1 else 1
            return Mux(remaining < room, remaining, room)

        req_len = Signal(beat_bits + 1)
        m.d.comb += req_len.eq(burst_beats(req_addr, req_left))
        # a read request offered and not yet accepted: AXI keeps it valid until the handshake,
        # even after an error response (no new request starts once an error has arrived)
        ar_hold = Signal()
        req = (active & (req_left != 0) & (open_ < cfg.dma_outstanding)
               & (~(err & ~store) | ar_hold))
        cap = wb + width - 1

        # word bytes of the command's memory, and its total beats
        start_wb = Signal.like(wb)
        with m.Switch(self.mem):
            for name in self.mems:
                with m.Case(MEMORY_IDS[name]):
                    m.d.comb += start_wb.eq(self.word_bytes[name])
            with m.Default():  # no such memory on this configuration: nothing to move
                m.d.comb += start_wb.eq(0)
        start_beats = (self.words * start_wb + width - 1) >> wshift

        m.d.comb += [
            self.busy.eq(active),
            self.mem_now.eq(mem),
            bus.arsize.eq(wshift), bus.awsize.eq(wshift),
            bus.arburst.eq(BURST_INCR), bus.awburst.eq(BURST_INCR),
            bus.araddr.eq(req_addr), bus.awaddr.eq(req_addr),
            bus.arlen.eq(req_len - 1), bus.awlen.eq(req_len - 1),
            bus.bready.eq(1),
            self.wr_mem.eq(mem), self.wr_addr.eq(ptr), self.rd_addr.eq(ptr),
        ]

        # ---- LOAD -------------------------------------------------------------------------
        emit = active & ~store & (n >= wb) & (left != 0) & ~err
        n_after = Signal.like(n)
        m.d.comb += n_after.eq(Mux(emit, n - wb, n))
        r_ok = n_after + width <= cap
        r_hs = active & ~store & bus.rvalid & (r_ok | err)
        last_beat = r_hs & bus.rlast
        ar = req & ~store
        m.d.comb += [
            bus.arvalid.eq(ar),
            bus.rready.eq(active & ~store & (r_ok | err)),
            self.wr_en.eq(emit),
            self.wr_data.eq(buf[: self.data_bits]),
            self.read_beat.eq(r_hs),
        ]
        load_done = Signal()
        # after an error response: no more requests or writes; the request offered and the
        # bursts in flight drain
        m.d.comb += load_done.eq((emit & (left == 1)) | (err & ~store & (open_ == 0) & ~ar_hold))

        # ---- STORE ------------------------------------------------------------------------
        arrive = inflight
        all_in = (left == 0) & ~arrive
        wvalid = active & store & (credit != 0) & (beats_left != 0) & ((n >= width) | (all_in & (n != 0)))
        w_len = Signal(beat_bits + 1)
        m.d.comb += w_len.eq(burst_beats(w_addr, beats_left + in_burst))
        wlast = wvalid & (in_burst + 1 == w_len)
        w_hs = wvalid & bus.wready
        aw = req & store
        b_hs = active & store & bus.bvalid
        taken = Signal.like(n)
        m.d.comb += taken.eq(Mux(w_hs, Mux(n < width, n, width), 0))
        kept = Signal.like(n)
        m.d.comb += kept.eq(n - taken)
        n_store = Signal.like(n)
        m.d.comb += n_store.eq(kept + Mux(arrive, wb, 0))
        rd = active & store & (left != 0) & (n_store + wb <= cap)
        m.d.comb += [
            bus.awvalid.eq(aw),
            bus.wvalid.eq(wvalid),
            bus.wdata.eq(buf[: 8 * width]),
            bus.wstrb.eq(Mux(n >= width, (1 << width) - 1, (1 << n[: wshift + 1]) - 1)),
            bus.wlast.eq(wlast),
            self.rd_en.eq(rd),
            self.write_beat.eq(w_hs),
        ]
        store_done = b_hs & (open_ == 1) & (req_left == 0) & (beats_left == 0)

        m.d.comb += [
            self.done.eq(active & Mux(store, store_done, load_done)),
            self.fault.eq((r_hs & (bus.rresp != RESP_OKAY)) | (b_hs & (bus.bresp != RESP_OKAY))),
        ]

        req_hs = Mux(store, aw & bus.awready, ar & bus.arready)
        with m.If(self.start):
            m.d.sync += [
                active.eq(1), store.eq(self.store), mem.eq(self.mem), wb.eq(start_wb), err.eq(0),
                req_addr.eq(self.dram_addr), req_left.eq(start_beats), open_.eq(0),
                n.eq(0), buf.eq(0), left.eq(self.words), ptr.eq(self.sram_addr),
                beats_left.eq(start_beats), credit.eq(0), w_addr.eq(self.dram_addr),
                in_burst.eq(0), inflight.eq(0), ar_hold.eq(0),
            ]
        with m.Elif(self.done):
            m.d.sync += active.eq(0)
        with m.Elif(active):
            with m.If(self.fault):
                m.d.sync += err.eq(1)
            with m.If(req_hs):
                m.d.sync += [req_addr.eq(req_addr + (req_len << wshift)),
                             req_left.eq(req_left - req_len)]
            with m.If(~store):
                m.d.sync += [
                    ar_hold.eq(ar & ~bus.arready),
                    open_.eq(open_ + (ar & bus.arready) - last_beat),
                    n.eq(n_after + Mux(r_hs, width, 0)),
                    buf.eq((buf >> Mux(emit, wb << 3, 0))
                           | Mux(r_hs, bus.rdata << (n_after << 3), 0)),
                    left.eq(left - emit),
                    ptr.eq(ptr + emit),
                ]
            with m.Else():
                m.d.sync += [
                    open_.eq(open_ + (aw & bus.awready) - b_hs),
                    credit.eq(credit + (aw & bus.awready) - (w_hs & wlast)),
                    n.eq(n_store),
                    buf.eq((buf >> (taken << 3))
                           | Mux(arrive, self.rd_data << (kept << 3), 0)),
                    left.eq(left - rd),
                    ptr.eq(ptr + rd),
                    inflight.eq(rd),
                ]
                with m.If(w_hs):
                    m.d.sync += beats_left.eq(beats_left - 1)
                    with m.If(wlast):
                        m.d.sync += [in_burst.eq(0), w_addr.eq(w_addr + (w_len << wshift))]
                    with m.Else():
                        m.d.sync += in_burst.eq(in_burst + 1)
        return m
