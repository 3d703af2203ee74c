"""The accumulator write-back stage: read-modify-write of one accumulator word per cycle."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from qsim.config import AcceleratorConfig
from rtl.checks import require_config
from rtl.controller import pipeline_meta_layout

__all__ = ["WriteBack"]


class WriteBack(wiring.Component):
    """Adds one deskewed row of column sums to (or writes it over) an accumulator word.

    Three stages (:data:`qsim.hw.ACC_READ_STAGES` + 1), so that the accumulator memory's
    read data only reaches a register:

    1. read: the row's metadata arrives (``meta``, two cycles before its sums) and, if it
       accumulates, the accumulator word is read;
    2. the word leaves the memory and is registered; the row's address is compared with the
       addresses written in this cycle and the one before;
    3. write: the sums (``psum``) are added to the word and written back.

    The memory's read is not transparent, so a row that accumulates into a word written one
    or two cycles before its write (back-to-back single-row tiles) takes that write's data,
    forwarded from a register, instead of the memory's older word.

    Ports
    -----
    meta : In(pipeline_meta_layout)
        Metadata of the row whose sums arrive two cycles later.
    psum : In(ArrayLayout(signed(acc_bits), cols))
        Deskewed column sums of the row in the write stage.
    rd_addr, rd_en : Out
        Accumulator read port address and enable.
    rd_data : In(ArrayLayout(signed(acc_bits), cols))
    wr_addr, wr_en, wr_data : Out
        Accumulator write port.
    read_valid, write_valid : Out(1)
        A word is read / written this cycle (for the performance counters and draining).
    """

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = require_config(self, config)
        lanes = data.ArrayLayout(signed(config.acc_bits), config.cols)
        super().__init__({
            "meta": In(pipeline_meta_layout(config)),
            "psum": In(lanes),
            "rd_addr": Out(config.acc_addr_bits),
            "rd_en": Out(1),
            "rd_data": In(lanes),
            "wr_addr": Out(config.acc_addr_bits),
            "wr_en": Out(1),
            "wr_data": Out(lanes),
            "read_valid": Out(1),
            "write_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        meta = pipeline_meta_layout(cfg)
        lanes = data.ArrayLayout(signed(cfg.acc_bits), cfg.cols)
        mid = Signal(meta)  # stage 2: the read data leaves the memory
        held = Signal(meta)  # stage 3: the write
        word = Signal(lanes)  # the memory word read, registered
        last = Signal(lanes)  # written one cycle before the current write ...
        before = Signal(lanes)  # ... and two cycles before
        before_addr = Signal(cfg.acc_addr_bits)
        before_valid = Signal()
        fwd_last = Signal()  # the row in the write stage takes `last` ...
        fwd_before = Signal()  # ... or `before` instead of `word`
        m.d.sync += [
            mid.eq(self.meta),
            held.eq(mid),
            word.eq(self.rd_data),
            last.eq(self.wr_data),
            before.eq(last),
            before_addr.eq(held.addr),
            before_valid.eq(held.valid),
            fwd_last.eq(held.valid & (held.addr == mid.addr)),
            fwd_before.eq(before_valid & (before_addr == mid.addr)),
        ]
        read = self.meta.valid & self.meta.accumulate
        m.d.comb += [
            self.rd_addr.eq(self.meta.addr),
            self.rd_en.eq(read),
            self.read_valid.eq(read),
            self.wr_addr.eq(held.addr),
            self.wr_en.eq(held.valid),
            self.write_valid.eq(held.valid),
        ]
        for c in range(cfg.cols):
            old = Mux(fwd_last, last[c], Mux(fwd_before, before[c], word[c]))
            m.d.comb += self.wr_data[c].eq(self.psum[c] + Mux(held.accumulate, old, 0))
        return m
