"""The R x C grid of processing elements."""

from __future__ import annotations

from amaranth import ClockSignal, Instance, Module, ResetSignal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from qsim.config import AcceleratorConfig
from rtl.checks import require_config
from qsim.hw import array_input_bits
from rtl.pe import ProcessingElement, pe_shapes

__all__ = ["SystolicArray", "ARRAY_MODULE", "PE_MODULE", "array_verilog", "pe_verilog"]

#: Verilog module names of the array and of its processing element in exported Verilog.
ARRAY_MODULE = "qsim_systolic_array"
PE_MODULE = "qsim_pe"


class SystolicArray(wiring.Component):
    """Weight-stationary systolic array of ``config.rows`` x ``config.cols`` PEs.

    Row ``r`` receives activation lane ``r`` at its left edge; activations move one PE to the
    right per cycle. Partial sums enter every column at the top as zero and move one PE down
    per cycle, so the sum for the activation that entered row ``r`` at cycle ``t`` leaves the
    bottom of column ``c`` at cycle ``t - r + rows + c`` (inputs must be skewed by ``r``).

    Elaborated for a platform that has ``get_systolic_array`` (the export platform,
    :class:`rtl.export.ExportPlatform`), the array is that hook's result: an instance of the
    ``qsim_systolic_array`` module of :func:`array_verilog`, one Verilog module whose PEs are
    instances of a single ``qsim_pe`` module (:func:`pe_verilog`). Otherwise (Amaranth's
    simulator) it is the same grid built from :class:`ProcessingElement` submodules.
    tests/cosim/test_macros.py drives both with the same random inputs and compares every
    output bit of every cycle, and the co-simulation tests check each against the
    bit-accurate model, cycle for cycle.

    Activation elements are :func:`qsim.hw.array_input_bits` wide (one bit more than the
    memory's, so unsigned activations enter zero-extended). At int4 each PE takes two
    activations and two weights (``products_per_pe``) and adds both products.

    Ports
    -----
    a_in : In(ArrayLayout(pe activation shape, rows))
        Skewed activations, lane ``r`` for row ``r``.
    sel_in : In(rows)
        Weight-buffer selector travelling with each row's activation.
    w_data : In(ArrayLayout(pe weight shape, cols))
        One row of a weight tile, broadcast to every row.
    w_we : In(ArrayLayout(2, rows))
        Per row, write enable of buffer 0 / buffer 1 (takes effect at the next edge).
    psum_out : Out(ArrayLayout(signed(acc_bits), cols))
        Column sums leaving the bottom row (registered; skewed by column).
    """

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = require_config(self, config)
        rows, cols = config.rows, config.cols
        a_shape, w_shape = pe_shapes(array_input_bits(config), config.weight_format.bits,
                                     config.products_per_pe)
        super().__init__({
            "a_in": In(data.ArrayLayout(a_shape, rows)),
            "sel_in": In(rows),
            "w_data": In(data.ArrayLayout(w_shape, cols)),
            "w_we": In(data.ArrayLayout(2, rows)),
            "psum_out": Out(data.ArrayLayout(signed(config.acc_bits), cols)),
        })

    def macro_instance(self) -> Instance:
        """An instance of :data:`ARRAY_MODULE` (see :func:`array_verilog`) on this array's ports."""
        return Instance(
            ARRAY_MODULE,
            i_clk=ClockSignal("sync"),
            i_rst=ResetSignal("sync"),
            i_a_in=self.a_in.as_value(),
            i_sel_in=self.sel_in,
            i_w_data=self.w_data.as_value(),
            i_w_we=self.w_we.as_value(),
            o_psum_out=self.psum_out.as_value(),
        )

    def elaborate(self, platform):
        hook = getattr(platform, "get_systolic_array", None)
        if hook is not None:
            return hook(self)
        m = Module()
        cfg = self.config
        grid = [[ProcessingElement(array_input_bits(cfg), cfg.weight_format.bits, cfg.acc_bits,
                                   cfg.products_per_pe)
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


def pe_verilog(config: AcceleratorConfig) -> str:
    """Verilog of :data:`PE_MODULE`: :class:`ProcessingElement` for ``config``, written out.

    Same ports (plus ``clk`` and ``rst``), registers (``w0``, ``w1``, ``a_out``, ``sel_out``,
    ``psum_out``, all zero initially and after the synchronous reset) and arithmetic as the
    class: ``psum_out <= psum_in + sum_j a_in[j] * (sel_in ? w1 : w0)[j]`` in ``acc_bits``
    (products of signed operands, sign-extended; the sum wraps), with one pair at int8 and
    two at int4. Written by hand rather than converted by Amaranth because Verilator
    simulates it faster: at 32 x 32 the whole model ran 218 k instead of 136 k cycles/s (plain
    C++ loop, -O2) and compiled in 75 s instead of 170 s, as Amaranth's conversion computes
    every register's next value in a separate process. tests/cosim/test_macros.py checks the
    two against each other, cycle by cycle.
    """
    ib, wb, ab = array_input_bits(config), config.weight_format.bits, config.acc_bits
    p = config.products_per_pe
    terms = " + ".join(
        f"$signed(a_in[{(j + 1) * ib - 1}:{j * ib}]) * $signed(weight[{(j + 1) * wb - 1}:{j * wb}])"
        for j in range(p))
    return f"""// {PE_MODULE}: one processing element (rtl/pe.py, ProcessingElement).
module {PE_MODULE} (clk, rst, a_in, sel_in, psum_in, w_data, w_we, a_out, sel_out, psum_out);
  input wire clk;
  input wire rst;
  input wire [{p * ib - 1}:0] a_in;
  input wire sel_in;
  input wire [{ab - 1}:0] psum_in;
  input wire [{p * wb - 1}:0] w_data;
  input wire [1:0] w_we;
  output reg [{p * ib - 1}:0] a_out;
  output reg sel_out;
  output reg [{ab - 1}:0] psum_out;
  reg [{p * wb - 1}:0] w0;
  reg [{p * wb - 1}:0] w1;
  wire [{p * wb - 1}:0] weight = sel_in ? w1 : w0;
  wire signed [{ab - 1}:0] product = {terms};
  initial begin
    w0 = {p * wb}'d0;
    w1 = {p * wb}'d0;
    a_out = {p * ib}'d0;
    sel_out = 1'b0;
    psum_out = {ab}'d0;
  end
  always @(posedge clk) begin
    if (rst) begin
      w0 <= {p * wb}'d0;
      w1 <= {p * wb}'d0;
      a_out <= {p * ib}'d0;
      sel_out <= 1'b0;
      psum_out <= {ab}'d0;
    end else begin
      if (w_we[0])
        w0 <= w_data;
      if (w_we[1])
        w1 <= w_data;
      a_out <= a_in;
      sel_out <= sel_in;
      psum_out <= psum_in + product;
    end
  end
endmodule
"""


def array_verilog(config: AcceleratorConfig) -> str:
    """Verilog of :data:`ARRAY_MODULE` and :data:`PE_MODULE` for ``config``.

    The array module wires ``rows x cols`` instances of the one PE module exactly as
    :meth:`SystolicArray.elaborate` wires :class:`ProcessingElement` submodules: activation
    and selector from the left (row ``r`` of ``a_in``/``sel_in`` at column 0), partial sum
    from above (zero at row 0), ``w_data`` lane ``c`` and ``w_we`` lane ``r`` broadcast, the
    bottom row's sums on ``psum_out``. Written out net by net (no generate loops): the text is
    generated in milliseconds even for 64 x 64, and every net has a plain name in waveforms.
    """
    rows, cols = config.rows, config.cols
    p = config.products_per_pe
    # widths of one PE's activation and weight ports (all products)
    ib, wb, ab = p * array_input_bits(config), p * config.weight_format.bits, config.acc_bits
    lines = [
        f"// {ARRAY_MODULE}: {rows} x {cols} systolic array of {PE_MODULE} (see rtl/array.py).",
        f"module {ARRAY_MODULE} (clk, rst, a_in, sel_in, w_data, w_we, psum_out);",
        "  input wire clk;",
        "  input wire rst;",
        f"  input wire [{rows * ib - 1}:0] a_in;",
        f"  input wire [{rows - 1}:0] sel_in;",
        f"  input wire [{cols * wb - 1}:0] w_data;",
        f"  input wire [{2 * rows - 1}:0] w_we;",
        f"  output wire [{cols * ab - 1}:0] psum_out;",
        "  // a_R_C, sel_R_C: activation and buffer selector entering PE (R, C) from the left;",
        "  // psum_R_C: partial sum entering PE (R, C) from above (R = rows: leaving the array).",
    ]
    for r in range(rows):
        lines.append(f"  wire [{ib - 1}:0] " + ", ".join(f"a_{r}_{c}" for c in range(cols + 1)) + ";")
        lines.append("  wire " + ", ".join(f"sel_{r}_{c}" for c in range(cols + 1)) + ";")
    for r in range(1, rows + 1):
        lines.append(f"  wire [{ab - 1}:0] " + ", ".join(f"psum_{r}_{c}" for c in range(cols)) + ";")
    for r in range(rows):
        lines.append(f"  assign a_{r}_0 = a_in[{(r + 1) * ib - 1}:{r * ib}];")
        lines.append(f"  assign sel_{r}_0 = sel_in[{r}];")
    for c in range(cols):
        lines.append(f"  assign psum_out[{(c + 1) * ab - 1}:{c * ab}] = psum_{rows}_{c};")
    zero = f"{ab}'d0"
    for r in range(rows):
        for c in range(cols):
            psum_in = zero if r == 0 else f"psum_{r}_{c}"
            lines.append(
                f"  {PE_MODULE} pe_{r}_{c} (.clk(clk), .rst(rst), "
                f".a_in(a_{r}_{c}), .sel_in(sel_{r}_{c}), .psum_in({psum_in}), "
                f".w_data(w_data[{(c + 1) * wb - 1}:{c * wb}]), .w_we(w_we[{2 * r + 1}:{2 * r}]), "
                f".a_out(a_{r}_{c + 1}), .sel_out(sel_{r}_{c + 1}), .psum_out(psum_{r + 1}_{c}));")
    lines.append("endmodule")
    return pe_verilog(config) + "\n" + "\n".join(lines) + "\n"
