"""The R x C grid of processing elements."""

from __future__ import annotations

from amaranth import ClockSignal, Instance, Module, ResetSignal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from qsim.config import AcceleratorConfig
from rtl.checks import require_config
from qsim.hw import array_input_bits
from qsim.config import Dataflow
from rtl.pe import OutputStationaryPE, ProcessingElement, pe_shapes, product_bits

__all__ = ["SystolicArray", "OutputStationaryArray", "ARRAY_MODULE", "PE_MODULE", "OS_ARRAY_MODULE",
           "OS_PE_MODULE", "array_verilog", "pe_verilog", "os_array_verilog", "os_pe_verilog",
           "make_array", "PE_KINDS", "pe_ports_verilog", "pe_addend", "pe_registers_verilog"]

#: Verilog module names of the array and of its processing element in exported Verilog.
ARRAY_MODULE = "qsim_systolic_array"
PE_MODULE = "qsim_pe"
#: The same for the output-stationary array.
OS_ARRAY_MODULE = "qsim_os_array"
OS_PE_MODULE = "qsim_os_pe"

#: The PE modules :func:`array_verilog` writes: the portable one, and the one built on the ECP5
#: multiplier block (:mod:`rtl.ecp5`).
PE_KINDS = ("generic", "ecp5")


def _operand_ports(config: AcceleratorConfig):
    """The activation and selector ports every array has, and the shape of one PE's weights."""
    a_shape, w_shape = pe_shapes(array_input_bits(config), config.weight_format.bits,
                                 config.products_per_pe)
    return {"a_in": In(data.ArrayLayout(a_shape, config.rows)), "sel_in": In(config.rows)}, w_shape


def _macro(module: str, array, **ports) -> Instance:
    """An instance of an array macro on ``array``'s clock, reset, activations and selectors."""
    return Instance(module, i_clk=ClockSignal("sync"), i_rst=ResetSignal("sync"),
                    i_a_in=array.a_in.as_value(), i_sel_in=array.sel_in, **ports)


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
        ports, w_shape = _operand_ports(config)
        super().__init__({
            **ports,
            "w_data": In(data.ArrayLayout(w_shape, config.cols)),
            "w_we": In(data.ArrayLayout(2, config.rows)),
            "psum_out": Out(data.ArrayLayout(signed(config.acc_bits), config.cols)),
        })

    def macro_instance(self) -> Instance:
        """An instance of :data:`ARRAY_MODULE` (see :func:`array_verilog`) on this array's ports."""
        return _macro(
            ARRAY_MODULE, self,
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

    Same ports (plus ``clk`` and ``rst``), registers (``w0``, ``w1``, ``weight``, ``a_out``,
    ``sel_out``, ``product``, ``psum_out``, all zero initially and after the synchronous reset)
    and arithmetic as the class: ``weight <= sel_in ? w1' : w0'`` (``wN'`` the buffer after
    this cycle's write), ``product <= sum_j a_in[j] * weight[j]`` and
    ``psum_out <= psum_in + product`` in ``acc_bits`` (products of signed operands,
    sign-extended; the sum wraps), with one pair at int8 and two at int4. Written by hand rather than converted by Amaranth because Verilator
    simulates it faster: at 32 x 32 the whole model ran 218 k instead of 136 k cycles/s (plain
    C++ loop, -O2) and compiled in 75 s instead of 170 s, as Amaranth's conversion computes
    every register's next value in a separate process. tests/cosim/test_macros.py checks the
    two against each other, cycle by cycle.
    """
    ib, wb, ab = array_input_bits(config), config.weight_format.bits, config.acc_bits
    p = config.products_per_pe
    pb = product_bits(ib, wb, p, ab)
    terms = " + ".join(
        f"$signed(a_in[{(j + 1) * ib - 1}:{j * ib}]) * $signed(weight[{(j + 1) * wb - 1}:{j * wb}])"
        for j in range(p))
    return f"""// {PE_MODULE}: one processing element (rtl/pe.py, ProcessingElement).
{pe_ports_verilog(PE_MODULE, p * ib, p * wb, ab)}
  reg signed [{pb - 1}:0] product;
  reg [{p * wb - 1}:0] weight;
  wire [{p * wb - 1}:0] w0_next = w_we[0] ? w_data : w0;
  wire [{p * wb - 1}:0] w1_next = w_we[1] ? w_data : w1;
  wire signed [{pb - 1}:0] next_product = {terms};
  wire signed [{ab - 1}:0] addend = {pe_addend(ab, pb)};
{pe_registers_verilog(p * ib, p * wb, ab, pb)}
endmodule
"""


def pe_ports_verilog(module: str, a_bits: int, w_bits: int, acc_bits: int) -> str:
    """The header of a weight-stationary PE module ``module`` (``a_bits``-wide activations,
    ``w_bits``-wide weights, ``acc_bits``-wide sums): its ports and weight buffers."""
    return f"""module {module} (clk, rst, a_in, sel_in, psum_in, w_data, w_we, a_out, sel_out, psum_out);
  input wire clk;
  input wire rst;
  input wire [{a_bits - 1}:0] a_in;
  input wire sel_in;
  input wire [{acc_bits - 1}:0] psum_in;
  input wire [{w_bits - 1}:0] w_data;
  input wire [1:0] w_we;
  output reg [{a_bits - 1}:0] a_out;
  output reg sel_out;
  output reg [{acc_bits - 1}:0] psum_out;
  reg [{w_bits - 1}:0] w0;
  reg [{w_bits - 1}:0] w1;"""


def pe_addend(acc_bits: int, product_bits: int) -> str:
    """The PE's product sign-extended to the adder's width (it is never wider)."""
    if acc_bits == product_bits:
        return "product"
    return f"{{{{{acc_bits - product_bits}{{product[{product_bits - 1}]}}}}, product}}"


def pe_registers_verilog(a_bits: int, w_bits: int, acc_bits: int,
                         product_bits: int | None = None) -> str:
    """The ``initial`` block and the clocked block of a weight-stationary PE module: the weight
    buffers, the current weight, ``a_out``, ``sel_out``, ``psum_out`` and (``product_bits``
    given) the product register, each zero initially and after the synchronous reset."""
    product = [] if product_bits is None else [("product", product_bits)]
    registers = [("w0", w_bits), ("w1", w_bits), *product, ("weight", w_bits),
                 ("a_out", a_bits), ("sel_out", 1), ("psum_out", acc_bits)]
    updates = ["if (w_we[0])", "  w0 <= w_data;", "if (w_we[1])", "  w1 <= w_data;",
               "a_out <= a_in;", "sel_out <= sel_in;", "weight <= sel_in ? w1_next : w0_next;",
               *(["product <= next_product;"] if product else []),
               "psum_out <= psum_in + addend;"]
    literal = {name: "1'b0" if bits == 1 else f"{bits}'d0" for name, bits in registers}
    zero = [f"{name} = {literal[name]};" for name, _ in registers]
    reset = [f"{name} <= {literal[name]};" for name, _ in registers]
    return "\n".join([
        "  initial begin", *(f"    {line}" for line in zero), "  end",
        "  always @(posedge clk) begin", "    if (rst) begin",
        *(f"      {line}" for line in reset), "    end else begin",
        *(f"      {line}" for line in updates), "    end", "  end"])


def array_verilog(config: AcceleratorConfig, pe: str = "generic") -> str:
    """Verilog of the array macro of ``config``'s dataflow (:func:`ws_array_verilog` or
    :func:`os_array_verilog`); ``pe`` one of :data:`PE_KINDS` (``"ecp5"``: weight-stationary,
    one product per PE, see :mod:`rtl.ecp5`)."""
    if pe not in PE_KINDS:
        raise ValueError(f"pe must be one of {', '.join(PE_KINDS)}, not {pe!r}")
    if config.dataflow is Dataflow.OUTPUT_STATIONARY and pe == "generic":
        return os_array_verilog(config)
    return ws_array_verilog(config, pe)  # the ECP5 PE refuses what it does not cover


def make_array(config: AcceleratorConfig):
    """The array component of ``config``'s dataflow."""
    if config.dataflow is Dataflow.OUTPUT_STATIONARY:
        return OutputStationaryArray(config)
    return SystolicArray(config)


def ws_array_verilog(config: AcceleratorConfig, pe: str = "generic") -> str:
    """Verilog of :data:`ARRAY_MODULE` and :data:`PE_MODULE` for ``config``.

    The array module wires ``rows x cols`` instances of the one PE module exactly as
    :meth:`SystolicArray.elaborate` wires :class:`ProcessingElement` submodules: activation
    and selector from the left (row ``r`` of ``a_in``/``sel_in`` at column 0), partial sum
    from above (zero at row 0), ``w_data`` lane ``c`` and ``w_we`` lane ``r`` broadcast, the
    bottom row's sums on ``psum_out``. Written out net by net (no generate loops): the text is
    generated in milliseconds even for 64 x 64, and every net has a plain name in waveforms.
    """
    if pe == "ecp5":
        from rtl.ecp5 import ecp5_pe_verilog

        pe_text = ecp5_pe_verilog(config, PE_MODULE)
    else:
        pe_text = pe_verilog(config)
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
    return pe_text + "\n" + "\n".join(lines) + "\n"


class OutputStationaryArray(wiring.Component):
    """Output-stationary systolic array of ``config.rows`` x ``config.cols`` PEs.

    PE ``(r, c)`` accumulates output ``(r, c)`` of the tile: row ``r`` receives activation
    lane ``r`` at its left edge (moving right), column ``c`` weight lane ``c`` at its top
    (moving down), both skewed so that reduction step ``k`` reaches PE ``(r, c)`` ``r + c``
    cycles after it entered at PE ``(0, 0)``. The accumulator selector travels with the
    activations; the ``last`` flag of a tile's last step enters the bottom row (with row
    ``R - 1``'s activation) and travels right along it. One cycle after it leaves PE
    ``(R - 1, c)`` the whole column ``c`` copies that tile's accumulators into its drain
    registers (``load``), which then shift up one row per cycle: row ``j`` of column ``c``
    leaves the top (``d_out``) ``1 + j`` cycles after the load.

    Elaborated for a platform with ``get_systolic_array`` (the export platform) it is an
    instance of :data:`OS_ARRAY_MODULE` (:func:`os_array_verilog`); otherwise a grid of
    :class:`rtl.pe.OutputStationaryPE`. tests/cosim/test_macros.py checks the two agree.

    Ports
    -----
    a_in : In(ArrayLayout(pe activation shape, rows))
        Skewed activations, lane ``r`` for row ``r``.
    sel_in : In(rows)
        Accumulator selector travelling with each row's activation.
    last_in : In(1)
        Last reduction step of a tile, aligned with row ``R - 1``'s activation.
    w_in : In(ArrayLayout(pe weight shape, cols))
        Skewed weights, lane ``c`` for column ``c``.
    d_out : Out(ArrayLayout(signed(acc_bits), cols))
        Top drain register of each column (skewed by column).
    """

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = require_config(self, config)
        ports, w_shape = _operand_ports(config)
        super().__init__({
            **ports,
            "last_in": In(1),
            "w_in": In(data.ArrayLayout(w_shape, config.cols)),
            "d_out": Out(data.ArrayLayout(signed(config.acc_bits), config.cols)),
        })

    def macro_instance(self) -> Instance:
        """An instance of :data:`OS_ARRAY_MODULE` (see :func:`os_array_verilog`)."""
        return _macro(
            OS_ARRAY_MODULE, self,
            i_last_in=self.last_in,
            i_w_in=self.w_in.as_value(),
            o_d_out=self.d_out.as_value(),
        )

    def elaborate(self, platform):
        hook = getattr(platform, "get_systolic_array", None)
        if hook is not None:
            return hook(self)
        m = Module()
        cfg = self.config
        rows, cols = cfg.rows, cfg.cols
        grid = [[OutputStationaryPE(array_input_bits(cfg), cfg.weight_format.bits, cfg.acc_bits,
                                    cfg.products_per_pe)
                 for _ in range(cols)] for _ in range(rows)]
        for r, row in enumerate(grid):
            for c, pe in enumerate(row):
                m.submodules[f"pe_{r}_{c}"] = pe
                bottom = grid[rows - 1][c]
                m.d.comb += [pe.load.eq(bottom.last_out), pe.load_sel.eq(bottom.sel_out)]
                if c == 0:
                    m.d.comb += [pe.a_in.eq(self.a_in[r]), pe.sel_in.eq(self.sel_in[r]),
                                 pe.last_in.eq(self.last_in if r == rows - 1 else 0)]
                else:
                    left = row[c - 1]
                    m.d.comb += [pe.a_in.eq(left.a_out), pe.sel_in.eq(left.sel_out),
                                 pe.last_in.eq(left.last_out)]
                m.d.comb += pe.w_in.eq(self.w_in[c] if r == 0 else grid[r - 1][c].w_out)
                m.d.comb += pe.d_in.eq(grid[r + 1][c].d_out if r < rows - 1 else 0)
                if r == 0:
                    m.d.comb += self.d_out[c].eq(pe.d_out)
        return m


def os_pe_verilog(config: AcceleratorConfig) -> str:
    """Verilog of :data:`OS_PE_MODULE`: :class:`rtl.pe.OutputStationaryPE`, written out (same
    ports plus ``clk``/``rst``, same registers, all zero initially and after reset)."""
    ib, wb, ab = array_input_bits(config), config.weight_format.bits, config.acc_bits
    p = config.products_per_pe
    terms = " + ".join(
        f"$signed(a_in[{(j + 1) * ib - 1}:{j * ib}]) * $signed(w_in[{(j + 1) * wb - 1}:{j * wb}])"
        for j in range(p))
    regs = [("a_out", p * ib), ("sel_out", 1), ("last_out", 1), ("w_out", p * wb), ("d_out", ab),
            ("x0", ab), ("x1", ab)]
    init = "\n".join(f"    {name} = {width}'d0;" for name, width in regs)
    reset = "\n".join(f"      {name} <= {width}'d0;" for name, width in regs)
    return f"""// {OS_PE_MODULE}: one output-stationary processing element (rtl/pe.py, OutputStationaryPE).
module {OS_PE_MODULE} (clk, rst, a_in, sel_in, last_in, w_in, d_in, load, load_sel,
  a_out, sel_out, last_out, w_out, d_out);
  input wire clk;
  input wire rst;
  input wire [{p * ib - 1}:0] a_in;
  input wire sel_in;
  input wire last_in;
  input wire [{p * wb - 1}:0] w_in;
  input wire [{ab - 1}:0] d_in;
  input wire load;
  input wire load_sel;
  output reg [{p * ib - 1}:0] a_out;
  output reg sel_out;
  output reg last_out;
  output reg [{p * wb - 1}:0] w_out;
  output reg [{ab - 1}:0] d_out;
  reg [{ab - 1}:0] x0;
  reg [{ab - 1}:0] x1;
  wire signed [{ab - 1}:0] product = {terms};
  initial begin
{init}
  end
  always @(posedge clk) begin
    if (rst) begin
{reset}
    end else begin
      if (load && !load_sel)
        x0 <= {ab}'d0;
      else if (!sel_in)
        x0 <= x0 + product;
      if (load && load_sel)
        x1 <= {ab}'d0;
      else if (sel_in)
        x1 <= x1 + product;
      d_out <= load ? (load_sel ? x1 : x0) : d_in;
      a_out <= a_in;
      sel_out <= sel_in;
      last_out <= last_in;
      w_out <= w_in;
    end
  end
endmodule
"""


def os_array_verilog(config: AcceleratorConfig) -> str:
    """Verilog of :data:`OS_ARRAY_MODULE` and :data:`OS_PE_MODULE` for ``config``, wired net
    by net exactly as :meth:`OutputStationaryArray.elaborate` wires its PEs."""
    rows, cols = config.rows, config.cols
    p = config.products_per_pe
    ib, wb, ab = p * array_input_bits(config), p * config.weight_format.bits, config.acc_bits
    lines = [
        f"// {OS_ARRAY_MODULE}: {rows} x {cols} output-stationary array of {OS_PE_MODULE} "
        "(see rtl/array.py).",
        f"module {OS_ARRAY_MODULE} (clk, rst, a_in, sel_in, last_in, w_in, d_out);",
        "  input wire clk;",
        "  input wire rst;",
        f"  input wire [{rows * ib - 1}:0] a_in;",
        f"  input wire [{rows - 1}:0] sel_in;",
        "  input wire last_in;",
        f"  input wire [{cols * wb - 1}:0] w_in;",
        f"  output wire [{cols * ab - 1}:0] d_out;",
        "  // a_R_C, sel_R_C, last_R_C: entering PE (R, C) from the left; w_R_C: from above;",
        "  // d_R_C: drain register of PE (R, C); load_C, lsel_C: column C's drain load.",
    ]
    for r in range(rows):
        lines.append(f"  wire [{ib - 1}:0] " + ", ".join(f"a_{r}_{c}" for c in range(cols + 1)) + ";")
        lines.append("  wire " + ", ".join(f"sel_{r}_{c}" for c in range(cols + 1)) + ";")
        lines.append("  wire " + ", ".join(f"last_{r}_{c}" for c in range(cols + 1)) + ";")
        lines.append(f"  wire [{ab - 1}:0] " + ", ".join(f"d_{r}_{c}" for c in range(cols)) + ";")
    for r in range(rows + 1):
        lines.append(f"  wire [{wb - 1}:0] " + ", ".join(f"w_{r}_{c}" for c in range(cols)) + ";")
    lines.append(f"  wire [{ab - 1}:0] zero = {ab}'d0;")
    for r in range(rows):
        lines.append(f"  assign a_{r}_0 = a_in[{(r + 1) * ib - 1}:{r * ib}];")
        lines.append(f"  assign sel_{r}_0 = sel_in[{r}];")
        lines.append(f"  assign last_{r}_0 = " + ("last_in;" if r == rows - 1 else "1'b0;"))
    for c in range(cols):
        lines.append(f"  assign w_0_{c} = w_in[{(c + 1) * wb - 1}:{c * wb}];")
        lines.append(f"  assign d_out[{(c + 1) * ab - 1}:{c * ab}] = d_0_{c};")
    for r in range(rows):
        for c in range(cols):
            d_in = f"d_{r + 1}_{c}" if r < rows - 1 else "zero"
            load, lsel = f"last_{rows - 1}_{c + 1}", f"sel_{rows - 1}_{c + 1}"
            lines.append(
                f"  {OS_PE_MODULE} pe_{r}_{c} (.clk(clk), .rst(rst), .a_in(a_{r}_{c}), "
                f".sel_in(sel_{r}_{c}), .last_in(last_{r}_{c}), .w_in(w_{r}_{c}), .d_in({d_in}), "
                f".load({load}), .load_sel({lsel}), .a_out(a_{r}_{c + 1}), "
                f".sel_out(sel_{r}_{c + 1}), .last_out(last_{r}_{c + 1}), .w_out(w_{r + 1}_{c}), "
                f".d_out(d_{r}_{c}));")
    lines.append("endmodule")
    return os_pe_verilog(config) + "\n" + "\n".join(lines) + "\n"
