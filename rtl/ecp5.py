"""The weight-stationary PE built on the ECP5 multiplier block, for synthesis on ECP5.

Yosys's ``synth_ecp5`` maps a multiplication onto a ``MULT18X18D`` with every internal register
off, so the PE's product register stays a fabric flip-flop and the multiplier sits between
two stretches of routing (fabric to the DSP row and back). On the 8 x 8 array that was the
critical path at ECP5 speed grade 6 (84.90 MHz; 7.33 ns of its 11.78 ns were routing).

:func:`ecp5_pe_verilog` writes the same ``qsim_pe`` module as :func:`rtl.array.pe_verilog`
(same ports, same cycle behaviour) with the product register moved into the block: the
multiplier instance has its output register on (``REG_OUTPUT_CLK = "CLK0"``, reset by the
PE's synchronous reset), its input registers and pipeline register off. The activation and the
weight enter from fabric registers as before.

Nothing simulates the vendor primitive here (Yosys ships only its black box), so
:func:`mult18x18d_model_verilog` writes a behavioural ``MULT18X18D`` of the subset used: the
signed 18 x 18 product of the A and B inputs, registered on ``CLK0`` when ``REG_OUTPUT_CLK``
is ``"CLK0"`` (clock enable ``CE0``, synchronous reset ``RST0``), combinational when it is
``"NONE"``; every other mode is refused at elaboration. tests/cosim/test_macros.py runs the
ECP5 array with that model against the Amaranth array, cycle by cycle, so the PE's wiring is
proven; that the model matches the silicon rests on Lattice's description of the block
(FPGA-TN-02205, *ECP5 and ECP5-5G sysDSP Usage Guide*: the output register captures the
product on the clock edge when its clock enable is high and clears on its reset).
"""

from __future__ import annotations

from qsim.config import AcceleratorConfig, Dataflow
from qsim.errors import ConfigError
from qsim.hw import array_input_bits

__all__ = ["ECP5_MULT", "ecp5_pe_supported", "ecp5_pe_verilog", "mult18x18d_model_verilog"]

#: The ECP5 multiplier primitive the PE instantiates.
ECP5_MULT = "MULT18X18D"

#: Operand width of one ECP5 multiplier.
_MULT_BITS = 18


def ecp5_pe_supported(config: AcceleratorConfig) -> str | None:
    """None if :func:`ecp5_pe_verilog` can build ``config``'s PE, else why not."""
    if config.dataflow is not Dataflow.WEIGHT_STATIONARY:
        return "the ECP5 PE is weight-stationary only"
    if config.products_per_pe != 1:
        return (f"the ECP5 PE takes one product per PE ({config.input_format}/"
                f"{config.weight_format} packs {config.products_per_pe})")
    ib, wb = array_input_bits(config), config.weight_format.bits
    if ib > _MULT_BITS or wb > _MULT_BITS:
        return f"operands of {ib} x {wb} bits do not fit one {_MULT_BITS} x {_MULT_BITS} multiplier"
    return None


def _bits(prefix: str, signal: str, count: int) -> str:
    return ", ".join(f".{prefix}{i}({signal}[{i}])" for i in range(count))


def _ties(prefix: str, count: int) -> str:
    return ", ".join(f".{prefix}{i}(1'b0)" for i in range(count))


def ecp5_pe_verilog(config: AcceleratorConfig, module: str) -> str:
    """Verilog of the PE module ``module`` for ``config`` with its product register inside an
    ECP5 ``MULT18X18D`` (see the module text).

    Raises
    ------
    ConfigError
        A configuration the ECP5 PE does not cover (:func:`ecp5_pe_supported`).
    """
    from rtl.array import pe_addend, pe_ports_verilog, pe_registers_verilog
    from rtl.pe import product_bits

    why = ecp5_pe_supported(config)
    if why is not None:
        raise ConfigError(why)
    ib, wb, ab = array_input_bits(config), config.weight_format.bits, config.acc_bits
    pb = product_bits(ib, wb, 1, ab)
    n = _MULT_BITS
    return f"""// {module}: one processing element (rtl/pe.py, ProcessingElement) for ECP5: the
// product register is the output register of a {ECP5_MULT} (rtl/ecp5.py).
{pe_ports_verilog(module, ib, wb, ab)}
  reg [{wb - 1}:0] weight;
  wire [{wb - 1}:0] w0_next = w_we[0] ? w_data : w0;
  wire [{wb - 1}:0] w1_next = w_we[1] ? w_data : w1;
  // the operands sign-extended to the multiplier's {n} bits
  wire [{n - 1}:0] mult_a = {{{{{n - ib}{{a_in[{ib - 1}]}}}}, a_in}};
  wire [{n - 1}:0] mult_b = {{{{{n - wb}{{weight[{wb - 1}]}}}}, weight}};
  wire [{2 * n - 1}:0] mult_p;
  wire [{pb - 1}:0] product = mult_p[{pb - 1}:0];
  wire [{ab - 1}:0] addend = {pe_addend(ab, pb)};
  {ECP5_MULT} #(
    .REG_INPUTA_CLK("NONE"), .REG_INPUTB_CLK("NONE"), .REG_INPUTC_CLK("NONE"),
    .REG_PIPELINE_CLK("NONE"),
    .REG_OUTPUT_CLK("CLK0"), .REG_OUTPUT_CE("CE0"), .REG_OUTPUT_RST("RST0"),
    .GSR("DISABLED"), .RESETMODE("SYNC"), .MULT_BYPASS("DISABLED")
  ) mult (
    {_bits("A", "mult_a", n)},
    {_bits("B", "mult_b", n)},
    {_ties("C", n)},
    .SIGNEDA(1'b1), .SIGNEDB(1'b1), .SOURCEA(1'b0), .SOURCEB(1'b0),
    .CLK0(clk), .CE0(1'b1), .RST0(rst),
    {_bits("P", "mult_p", 2 * n)}
  );
{pe_registers_verilog(ib, wb, ab)}
endmodule
"""


def mult18x18d_model_verilog() -> str:
    """A behavioural ``MULT18X18D`` for simulation: the subset :func:`ecp5_pe_verilog` uses.

    ``P`` is the signed product of ``A`` and ``B`` (both signed: ``SIGNEDA``, ``SIGNEDB`` must
    be 1), through an output register on ``CLK0`` (``REG_OUTPUT_CLK = "CLK0"``, enable
    ``CE0``, synchronous reset ``RST0``, initially zero) or straight through
    (``REG_OUTPUT_CLK = "NONE"``). Input and pipeline registers, the C input, the shift chains
    and other clocks are not modelled: a parameter asking for them stops the simulation at
    time 0 with an error, so the model can never silently stand for a mode it does not have.
    """
    n = _MULT_BITS
    a_ports = ", ".join(f"A{i}" for i in range(n))
    b_ports = ", ".join(f"B{i}" for i in range(n))
    c_ports = ", ".join(f"C{i}" for i in range(n))
    p_ports = ", ".join(f"P{i}" for i in range(2 * n))
    a_cat = ", ".join(f"A{i}" for i in reversed(range(n)))
    b_cat = ", ".join(f"B{i}" for i in reversed(range(n)))
    p_assign = "\n".join(f"  assign P{i} = p[{i}];" for i in range(2 * n))
    return f"""// {ECP5_MULT}: behavioural model of the subset rtl/ecp5.py uses (simulation only).
// The primitive's ports and parameters that the model ignores are part of its interface.
/* verilator lint_off UNUSEDPARAM */
/* verilator lint_off UNUSEDSIGNAL */
module {ECP5_MULT} ({a_ports}, {b_ports}, {c_ports}, SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    CLK0, CE0, RST0, {p_ports});
  parameter REG_INPUTA_CLK = "NONE";
  parameter REG_INPUTB_CLK = "NONE";
  parameter REG_INPUTC_CLK = "NONE";
  parameter REG_PIPELINE_CLK = "NONE";
  parameter REG_OUTPUT_CLK = "NONE";
  parameter REG_OUTPUT_CE = "CE0";
  parameter REG_OUTPUT_RST = "RST0";
  parameter GSR = "ENABLED";
  parameter RESETMODE = "SYNC";
  parameter MULT_BYPASS = "DISABLED";
  input wire {a_ports};
  input wire {b_ports};
  input wire {c_ports};
  input wire SIGNEDA, SIGNEDB, SOURCEA, SOURCEB;
  input wire CLK0, CE0, RST0;
  output wire {p_ports};
  wire signed [{n - 1}:0] a = {{{a_cat}}};
  wire signed [{n - 1}:0] b = {{{b_cat}}};
  wire signed [{2 * n - 1}:0] full = a * b;
  reg [{2 * n - 1}:0] p_reg;
  wire [{2 * n - 1}:0] p = REG_OUTPUT_CLK == "NONE" ? full : p_reg;
{p_assign}
  initial begin
    p_reg = {2 * n}'d0;
    if (REG_INPUTA_CLK != "NONE" || REG_INPUTB_CLK != "NONE" || REG_INPUTC_CLK != "NONE"
        || REG_PIPELINE_CLK != "NONE" || MULT_BYPASS != "DISABLED" || RESETMODE != "SYNC"
        || (REG_OUTPUT_CLK != "NONE" && (REG_OUTPUT_CLK != "CLK0" || REG_OUTPUT_CE != "CE0"
                                         || REG_OUTPUT_RST != "RST0"))) begin
      $display("{ECP5_MULT} model: unmodelled mode");
      $stop;
    end
  end
  always @(posedge CLK0) begin
    if (SIGNEDA !== 1'b1 || SIGNEDB !== 1'b1) begin
      $display("{ECP5_MULT} model: unsigned operands are not modelled");
      $stop;
    end
    if (RST0)
      p_reg <= {2 * n}'d0;
    else if (CE0)
      p_reg <= full;
  end
endmodule
/* verilator lint_on UNUSEDSIGNAL */
/* verilator lint_on UNUSEDPARAM */
"""
