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

    Two stages. In the read stage the row's metadata arrives (``meta``, one cycle before its
    sums) and, if it accumulates, the accumulator word is read. In the write stage the sums
    (``psum``) are added to the word read and written back. The accumulator read port must be
    transparent to the write port, so that a row accumulating into the word written in the
    same cycle (two back-to-back single-row tiles) sees the new value.

    Ports
    -----
    meta : In(pipeline_meta_layout)
        Metadata of the row whose sums arrive next cycle.
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
        held = Signal(pipeline_meta_layout(cfg))
        m.d.sync += held.eq(self.meta)
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
            m.d.comb += self.wr_data[c].eq(
                self.psum[c] + Mux(held.accumulate, self.rd_data[c], 0))
        return m

