"""Per-lane delay lines: the input skew, the output deskew and the metadata pipeline."""

from __future__ import annotations

from typing import Sequence

from amaranth import ClockSignal, Instance, Module, ResetSignal, Shape, Signal
from amaranth.hdl import ShapeLike
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from rtl.checks import reject

__all__ = ["DelayLines", "DELAY_MODULE", "delay_verilog"]

#: Verilog module name of one delay line in exported Verilog (see :func:`delay_verilog`).
DELAY_MODULE = "qsim_delay"


class DelayLines(wiring.Component):
    """Delays lane ``i`` of its input by ``delays[i]`` clock cycles.

    With ``delays = range(rows)`` this is the triangular input skew of a systolic array;
    with ``delays = reversed(range(cols))`` it is the output deskew; a single lane with a long
    delay carries per-row metadata alongside the array. A delay of 0 is a wire.

    Elaborated for a platform that has ``get_delay_lines`` (the export platform,
    :class:`rtl.export.ExportPlatform`), each lane with a delay is an instance of the
    ``qsim_delay`` macro of :func:`delay_verilog`; otherwise (Amaranth's simulator) it is a
    chain of registers. Both are reset to zero by the domain's synchronous reset.

    Ports
    -----
    i : In(ArrayLayout(shape, len(delays)))
    o : Out(ArrayLayout(shape, len(delays)))
        ``o[k]`` equals ``i[k]`` from ``delays[k]`` cycles earlier (zero after reset).
    """

    def __init__(self, shape: ShapeLike, delays: Sequence[int]) -> None:
        delays = list(delays)
        if not delays:
            reject(self, ValueError("delays must name at least one lane"))
        for d in delays:
            if not isinstance(d, int) or d < 0:
                reject(self, ValueError(f"every delay must be a non-negative int, not {d!r}"))
        self.shape = shape
        self.delays = delays
        layout = data.ArrayLayout(shape, len(delays))
        super().__init__({"i": In(layout), "o": Out(layout)})

    def macro_instances(self) -> Module:
        """The lanes as :data:`DELAY_MODULE` instances (delay 0: a wire)."""
        m = Module()
        width = Shape.cast(self.shape).width
        raw_i, raw_o = self.i.as_value(), self.o.as_value()
        for lane, delay in enumerate(self.delays):
            lane_i = raw_i[lane * width:(lane + 1) * width]
            lane_o = raw_o[lane * width:(lane + 1) * width]
            if delay == 0:
                m.d.comb += lane_o.eq(lane_i)
                continue
            m.submodules[f"lane{lane}"] = Instance(
                DELAY_MODULE, p_WIDTH=width, p_DELAY=delay,
                i_clk=ClockSignal("sync"), i_rst=ResetSignal("sync"), i_i=lane_i, o_o=lane_o)
        return m

    def elaborate(self, platform):
        hook = getattr(platform, "get_delay_lines", None)
        if hook is not None:
            return hook(self)
        m = Module()
        for lane, delay in enumerate(self.delays):
            stage = self.i[lane]
            for k in range(delay):
                reg = Signal(self.shape, name=f"lane{lane}_stage{k + 1}")
                m.d.sync += reg.eq(stage)
                stage = reg
            m.d.comb += self.o[lane].eq(stage)
        return m


def delay_verilog() -> str:
    """Verilog of :data:`DELAY_MODULE`: ``o`` is ``i`` delayed by ``DELAY`` (>= 1) cycles of
    ``clk``; a synchronous ``rst`` clears every stage, and every stage starts at zero.

    The output is a register, so nothing downstream of a delay line starts at a multiplexer.
    Before it, the other ``DELAY - 1`` stages are a ring of words with one pointer: each cycle
    moves the oldest word into the output register and writes the new one in its place, so a
    line costs the simulator the same whatever its depth (a shift register moves every stage
    every cycle: at 32 x 32 the input skew and the output deskew alone were about a thousand
    register moves per cycle).
    """
    return f"""
// {DELAY_MODULE}: one delay line of DELAY >= 1 stages: a ring of DELAY - 1 words and an
// output register (see rtl/delay.py).
module {DELAY_MODULE} #(
  parameter WIDTH = 1,
  parameter DELAY = 1
) (
  input wire clk,
  input wire rst,
  input wire [WIDTH-1:0] i,
  output wire [WIDTH-1:0] o
);
  reg [WIDTH-1:0] out;
  initial out = {{WIDTH{{1'b0}}}};
  assign o = out;
  generate
    if (DELAY == 1) begin : direct
      always @(posedge clk)
        out <= rst ? {{WIDTH{{1'b0}}}} : i;
    end else begin : ring_buffer
      localparam DEPTH = DELAY - 1;
      localparam PBITS = DEPTH > 1 ? $clog2(DEPTH) : 1;
      localparam integer LAST32 = DEPTH - 1;
      localparam [PBITS-1:0] LAST = LAST32[PBITS-1:0];
      reg [WIDTH-1:0] ring [0:DEPTH-1];
      reg [PBITS-1:0] ptr;
      integer k;
      initial begin
        for (k = 0; k < DEPTH; k = k + 1)
          ring[k] = {{WIDTH{{1'b0}}}};
        ptr = {{PBITS{{1'b0}}}};
      end
      always @(posedge clk) begin
        if (rst) begin
          for (k = 0; k < DEPTH; k = k + 1)
            ring[k] <= {{WIDTH{{1'b0}}}};
          ptr <= {{PBITS{{1'b0}}}};
          out <= {{WIDTH{{1'b0}}}};
        end else begin
          ring[ptr] <= i;
          out <= ring[ptr];
          ptr <= (ptr == LAST) ? {{PBITS{{1'b0}}}} : ptr + 1'b1;
        end
      end
    end
  endgenerate
endmodule
"""
