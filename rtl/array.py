"""The R x C grid of processing elements."""

from __future__ import annotations

from amaranth import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from qsim.config import AcceleratorConfig
from rtl.checks import require_config
from rtl.pe import ProcessingElement

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """Weight-stationary systolic array of ``config.rows`` x ``config.cols`` PEs.

    Row ``r`` receives activation lane ``r`` at its left edge; activations move one PE to the
    right per cycle. Partial sums enter every column at the top as zero and move one PE down
    per cycle, so the sum for the activation that entered row ``r`` at cycle ``t`` leaves the
    bottom of column ``c`` at cycle ``t - r + rows + c`` (inputs must be skewed by ``r``).

    Ports
    -----
    a_in : In(ArrayLayout(signed(input_bits), rows))
        Skewed activations, lane ``r`` for row ``r``.
    sel_in : In(rows)
        Weight-buffer selector travelling with each row's activation.
    w_data : In(ArrayLayout(signed(weight_bits), cols))
        One row of a weight tile, broadcast to every row.
    w_we : In(ArrayLayout(2, rows))
        Per row, write enable of buffer 0 / buffer 1 (takes effect at the next edge).
    psum_out : Out(ArrayLayout(signed(acc_bits), cols))
        Column sums leaving the bottom row (registered; skewed by column).
    """

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = require_config(self, config)
        rows, cols = config.rows, config.cols
        super().__init__({
            "a_in": In(data.ArrayLayout(signed(config.input_format.bits), rows)),
            "sel_in": In(rows),
            "w_data": In(data.ArrayLayout(signed(config.weight_format.bits), cols)),
            "w_we": In(data.ArrayLayout(2, rows)),
            "psum_out": Out(data.ArrayLayout(signed(config.acc_bits), cols)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        grid = [[ProcessingElement(cfg.input_format.bits, cfg.weight_format.bits, cfg.acc_bits)
                 for _ in range(cfg.cols)] for _ in range(cfg.rows)]
        for r, row in enumerate(grid):
            for c, pe in enumerate(row):
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += [pe.w_data.eq(self.w_data[c]), pe.w_we.eq(self.w_we[r])]
                if c == 0:
                    m.d.comb += [pe.a_in.eq(self.a_in[r]), pe.sel_in.eq(self.sel_in[r])]
                else:
                    left = row[c - 1]
                    m.d.comb += [pe.a_in.eq(left.a_out), pe.sel_in.eq(left.sel_out)]
                if r == 0:
                    m.d.comb += pe.psum_in.eq(0)
                else:
                    m.d.comb += pe.psum_in.eq(grid[r - 1][c].psum_out)
                if r == cfg.rows - 1:
                    m.d.comb += self.psum_out[c].eq(pe.psum_out)
        return m
