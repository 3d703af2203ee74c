"""The Verilog macros of the export (``qsim_systolic_array`` with its ``qsim_pe``, and
``qsim_delay``) against the Amaranth blocks they stand for, cycle by cycle.

One small design holds a 3 x 4 SystolicArray and two DelayLines behind flat ports; it runs in
Amaranth's simulator as written (ProcessingElement submodules, register chains) and under
Verilator as exported (the macros), on the same random inputs and resets, and every output
bit of every cycle must agree.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from amaranth import ClockDomain, Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from qsim.config import AcceleratorConfig
from rtl.array import ARRAY_MODULE, OS_ARRAY_MODULE, make_array
from rtl.delay import DelayLines

pytestmark = pytest.mark.verilator

CYCLES = 400
CONFIGS = {"int8": AcceleratorConfig(rows=3, cols=4),
           # the array with the PE built on the ECP5 multiplier (rtl/ecp5.py, its behavioural
           # model of the block) against the same Amaranth array
           "int8-ecp5": AcceleratorConfig(rows=3, cols=4),
           "int4": AcceleratorConfig(rows=3, cols=4, input_format="int4", weight_format="int4"),
           "os-int8": AcceleratorConfig(rows=3, cols=4, dataflow="os"),
           "os-int4": AcceleratorConfig(rows=3, cols=4, dataflow="os", input_format="int4",
                                        weight_format="int4")}

MAIN_CPP = r"""
#include <cstdio>
#include <fstream>
#include <string>
#include "Vdut.h"
#include "verilated.h"
// One line per cycle in: "RST HEX_I"; one line per cycle out: "HEX_O" after the rising edge.
int main(int argc, char** argv) {
    Verilated::commandArgs(argc, argv);
    Vdut top;
    std::ifstream in(argv[1]);
    std::string rst, hex;
    top.clk = 0;
    top.eval();
    const int in_words = sizeof(top.i) / 4, out_words = sizeof(top.o) / 4;
    while (in >> rst >> hex) {
        for (int w = 0; w < in_words; ++w) {
            int end = (int)hex.size() - 8 * w;
            int begin = end - 8 < 0 ? 0 : end - 8;
            top.i[w] = end > 0 ? (uint32_t)std::stoul(hex.substr(begin, end - begin), nullptr, 16) : 0;
        }
        top.rst = rst == "1";
        top.clk = 1;
        top.eval();
        for (int w = out_words - 1; w >= 0; --w) std::printf("%08x", (unsigned)top.o[w]);
        std::printf("\n");
        top.clk = 0;
        top.eval();
    }
    top.final();
    return 0;
}
"""


class _Blocks(wiring.Component):
    """The array and two delay lines, inputs and outputs each concatenated into one port."""

    def __init__(self, cfg):
        self.array = make_array(cfg)
        self.skew = DelayLines(signed(8), [0, 1, 3])
        self.meta = DelayLines(5, [2])
        ports = self.array.signature.members
        self.parts_in = [getattr(self.array, name) for name, member in ports.items()
                         if member.flow is In] + [self.skew.i, self.meta.i]
        self.parts_out = [getattr(self.array, name) for name, member in ports.items()
                          if member.flow is Out] + [self.skew.o, self.meta.o]
        width_in = sum(len(p.as_value() if hasattr(p, "as_value") else p) for p in self.parts_in)
        width_out = sum(len(p.as_value() if hasattr(p, "as_value") else p) for p in self.parts_out)
        super().__init__({"i": In(width_in), "o": Out(width_out)})
        self.sync = ClockDomain("sync")

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = self.sync
        m.submodules.array = self.array
        m.submodules.skew = self.skew
        m.submodules.meta = self.meta
        lo = 0
        for part in self.parts_in:
            value = part.as_value() if hasattr(part, "as_value") else part
            m.d.comb += value.eq(self.i[lo:lo + len(value)])
            lo += len(value)
        lo = 0
        for part in self.parts_out:
            value = part.as_value() if hasattr(part, "as_value") else part
            m.d.comb += self.o[lo:lo + len(value)].eq(value)
            lo += len(value)
        return m


def _stimulus(rng, width: int) -> list[tuple[int, int]]:
    """(rst, inputs) per cycle: reset at the start and twice more, write enables now and then."""
    steps = []
    for t in range(CYCLES):
        rst = int(t < 2 or t in (150, 151) or t == 300)
        value = int.from_bytes(rng.bytes((width + 7) // 8), "little") % (1 << width)
        steps.append((rst, value))
    return steps


def _amaranth_only(dut) -> None:
    """Mark a probe instance as used (it was only measured)."""
    for block in (dut, dut.array, dut.skew, dut.meta):
        block._MustUse__silence = True


def _amaranth(steps, cfg) -> list[int]:
    dut = _Blocks(cfg)
    outputs = []

    async def bench(ctx):
        for rst, value in steps:
            ctx.set(dut.i, value)
            ctx.set(dut.sync.rst, rst)
            await ctx.tick()
            outputs.append(ctx.get(dut.o))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return outputs


def _verilator(steps, tmp_path, cfg, pe: str = "generic") -> list[int]:
    from amaranth.back import verilog

    from qsim.cosim.build import MAKE_ARGS
    from qsim.cosim.toolchain import activate
    from rtl.array import array_verilog
    from rtl.delay import delay_verilog
    from rtl.export import ExportPlatform

    chain = activate()
    dut = _Blocks(cfg)
    text = verilog.convert(dut, name="dut", platform=ExportPlatform(), emit_src=False,
                           ports=[dut.i, dut.o, dut.sync.clk, dut.sync.rst])
    module = OS_ARRAY_MODULE if cfg.dataflow.short == "os" else ARRAY_MODULE
    assert module in text and "qsim_delay" in text  # the macros, not the blocks
    macros = delay_verilog() + array_verilog(cfg, pe)
    if pe == "ecp5":
        from rtl.ecp5 import ECP5_MULT, mult18x18d_model_verilog

        assert macros.count(f"{ECP5_MULT} #(") == 1  # the PE instantiates the block
        macros += mult18x18d_model_verilog()
    (tmp_path / "dut.v").write_text(text + macros)
    (tmp_path / "main.cpp").write_text(MAIN_CPP)
    (tmp_path / "stimulus.txt").write_text("".join(f"{rst} {value:x}\n" for rst, value in steps))
    make = [arg for make_arg in MAKE_ARGS for arg in ("-MAKEFLAGS", make_arg)]
    build = subprocess.run(
        [str(chain.binary), "--cc", "--exe", "--build", "-j", "2", "-O3", "--x-assign", "fast",
         "--x-initial", "fast", *make, "--top-module", "dut", "-Mdir", "obj", "-o", "sim",
         "dut.v", "main.cpp"], cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    run = subprocess.run([str(tmp_path / "obj" / "sim"), "stimulus.txt"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    return [int(line, 16) for line in run.stdout.split()]


@pytest.mark.parametrize("precision", sorted(CONFIGS))
def test_macros_match_the_amaranth_blocks_cycle_by_cycle(rng, tmp_path, precision):
    cfg = CONFIGS[precision]
    probe = _Blocks(cfg)
    width = len(probe.i)
    assert width > 64 and len(probe.o) > 64  # both ports are VlWide in the C++ main
    _amaranth_only(probe)
    steps = _stimulus(rng, width)
    expected = _amaranth(steps, cfg)
    got = _verilator(steps, tmp_path, cfg, "ecp5" if precision.endswith("-ecp5") else "generic")
    assert len(got) == len(expected) == CYCLES
    diff = [t for t in range(CYCLES) if got[t] != expected[t]]
    assert not diff, f"first differing cycles {diff[:5]}: verilator {got[diff[0]]:x}, amaranth {expected[diff[0]]:x}"
    # the stimulus exercised what it should: non-zero sums, and both weight buffers written
    assert np.count_nonzero(expected) > CYCLES // 2
