"""The SRAM macro that stands for each Amaranth memory in exported Verilog.

Amaranth writes a memory's initial contents into its netlist bit by bit and Yosys turns
them into one Verilog statement per word: for the accelerator's 16 K-word memories that is
most of the export time (tens of seconds) and most of the Verilator build. Exported Verilog
therefore maps every :class:`amaranth.lib.memory.Memory` onto ``qsim_sram``, a small
behavioural macro with the same port semantics, through Amaranth's documented platform hook
``get_memory`` (the hook that maps memories onto library cells). In Amaranth's own simulator
no platform is given, so the memories keep Amaranth's model; the tests check both against
the bit-accurate model.

``qsim_sram`` semantics (those of an Amaranth memory with at most one synchronous write port
and two synchronous read ports, the second never transparent): a write takes effect at the clock edge in each of the
``LANES`` equal slices of the word whose bit of ``wr_en`` is set (one bit for a whole-word
port; one per lane for a port with an Amaranth ``granularity``); a read
with ``rd_en`` updates ``rd_data`` at the edge and holds it otherwise; when ``TRANSPARENT``
is 1 and both ports address the same word in the same cycle, the read returns the new data.
Every word and ``rd_data`` start at zero.
"""

from __future__ import annotations

from amaranth import ClockSignal, Const, Instance, Shape, Signal

__all__ = ["SRAM_MODULE", "SRAM_ARRAY", "sram_verilog", "SramPlatform"]

#: Verilog module name of the macro, and of its storage array (what testbenches load).
SRAM_MODULE = "qsim_sram"
SRAM_ARRAY = "mem"


def sram_verilog() -> str:
    """Verilog text of the ``qsim_sram`` macro."""
    return f"""
// qsim_sram: behavioural SRAM macro (see rtl/sram.py for its semantics).
module {SRAM_MODULE} #(
  parameter WIDTH = 8,
  parameter DEPTH = 2,
  parameter ABITS = 1,
  parameter TRANSPARENT = 0,
  parameter LANES = 1
) (
  input wire clk,
  input wire [LANES-1:0] wr_en,
  input wire [ABITS-1:0] wr_addr,
  input wire [WIDTH-1:0] wr_data,
  input wire rd_en,
  input wire [ABITS-1:0] rd_addr,
  output reg [WIDTH-1:0] rd_data,
  input wire rd2_en,
  input wire [ABITS-1:0] rd2_addr,
  output reg [WIDTH-1:0] rd2_data
);
  localparam GRAN = WIDTH / LANES;
  reg [WIDTH-1:0] {SRAM_ARRAY} [0:DEPTH-1];
  integer word;
  integer lane;
  initial begin
    for (word = 0; word < DEPTH; word = word + 1)
      {SRAM_ARRAY}[word] = {{WIDTH{{1'b0}}}};
    rd_data = {{WIDTH{{1'b0}}}};
    rd2_data = {{WIDTH{{1'b0}}}};
  end
  always @(posedge clk) begin
    for (lane = 0; lane < LANES; lane = lane + 1)
      if (wr_en[lane])
        {SRAM_ARRAY}[wr_addr][lane*GRAN +: GRAN] <= wr_data[lane*GRAN +: GRAN];
    if (rd_en)
      rd_data <= (TRANSPARENT != 0 && wr_en[0] && wr_addr == rd_addr) ? wr_data : {SRAM_ARRAY}[rd_addr];
    if (rd2_en)
      rd2_data <= {SRAM_ARRAY}[rd2_addr];
  end
endmodule
"""


class SramPlatform:
    """Amaranth platform whose only job is to map memories onto ``qsim_sram``."""

    def get_memory(self, memory):
        reads = memory.read_ports
        writes = memory.write_ports
        if len(reads) > 2 or len(writes) > 1:
            raise NotImplementedError(
                f"qsim_sram has two read ports and one write port; {memory!r} has "
                f"{len(reads)} and {len(writes)}")
        if len(reads) == 2 and reads[1].transparent_for:
            raise NotImplementedError("qsim_sram's second read port is not transparent")
        if any(port.domain == "comb" for port in reads):
            raise NotImplementedError("qsim_sram has no asynchronous read port")
        depth = memory.depth
        width = Shape.cast(memory.shape).width
        abits = max(1, (depth - 1).bit_length())
        ports = {"i_clk": ClockSignal("sync")}
        if writes:
            wp = writes[0]
            lanes = len(wp.en)
            if lanes > 1 and any(rp.transparent_for for rp in reads):
                raise NotImplementedError("qsim_sram has no transparent read with lane enables")
            ports.update(i_wr_en=wp.en, i_wr_addr=wp.addr, i_wr_data=wp.data)
        else:
            lanes = 1
            ports.update(i_wr_en=Const(0, 1), i_wr_addr=Const(0, abits), i_wr_data=Const(0, width))
        if reads:
            rp = reads[0]
            ports.update(i_rd_en=rp.en, i_rd_addr=rp.addr, o_rd_data=rp.data)
            transparent = int(bool(rp.transparent_for))
        else:
            transparent = 0
            ports.update(i_rd_en=Const(0, 1), i_rd_addr=Const(0, abits))
        if len(reads) == 2:
            rp = reads[1]
            ports.update(i_rd2_en=rp.en, i_rd2_addr=rp.addr, o_rd2_data=rp.data)
        else:
            ports.update(i_rd2_en=Const(0, 1), i_rd2_addr=Const(0, abits),
                         o_rd2_data=Signal(width, name="rd2_unused"))
        return Instance(SRAM_MODULE, p_WIDTH=width, p_DEPTH=depth, p_ABITS=abits,
                        p_TRANSPARENT=transparent, p_LANES=lanes, **ports)
