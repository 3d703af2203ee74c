"""Amaranth-simulator tests of the RTL building blocks (no Verilator)."""

from __future__ import annotations

import pytest
from amaranth import signed
from amaranth.sim import Simulator

from qsim.config import AcceleratorConfig
from rtl.array import SystolicArray
from rtl.delay import DelayLines
from rtl.pe import ProcessingElement

pytestmark = pytest.mark.amaranth


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_pe_double_buffer_and_wrap():
    pe = ProcessingElement(8, 8, 16)
    seen = []

    async def bench(ctx):
        ctx.set(pe.w_data, -128)
        ctx.set(pe.w_we, 0b01)
        await ctx.tick()
        ctx.set(pe.w_data, 3)
        ctx.set(pe.w_we, 0b10)
        await ctx.tick()
        ctx.set(pe.w_we, 0)
        # sel_in names the buffer of the next cycle's activation, and the product is
        # registered, so the partial sum it adds to arrives one cycle after its operands.
        # buffer 0: -128 * -128 + 32767 wraps in 16 bits; buffer 1: 3 * -7 + 5
        steps = ((0, 0, 0), (-128, 1, 0), (-7, 0, 32767), (127, 0, 5), (0, 0, 0))
        for a, sel, psum in steps:
            ctx.set(pe.a_in, a)
            ctx.set(pe.sel_in, sel)
            ctx.set(pe.psum_in, psum)
            await ctx.tick()
            seen.append((ctx.get(pe.psum_out), ctx.get(pe.a_out), ctx.get(pe.sel_out)))

    _run(pe, bench)
    # psum_out after step i is psum_in of step i plus the product of step i - 1's operands
    assert seen == [(0, 0, 0), (0, -128, 1), ((16384 + 32767) - 65536, -7, 0), (-16, 127, 0),
                    (127 * -128, 0, 0)]


def test_pe_and_delay_constructor_errors():
    with pytest.raises(TypeError, match="input_bits must be an integer of at least 2, not 1"):
        ProcessingElement(1, 8, 32)
    with pytest.raises(ValueError, match="acc_bits must be at least input_bits \\+ weight_bits = 16, not 12"):
        ProcessingElement(8, 8, 12)
    with pytest.raises(ValueError, match="every delay must be a non-negative int, not -1"):
        DelayLines(4, [0, -1])
    with pytest.raises(TypeError, match="config must be an AcceleratorConfig, not 8"):
        SystolicArray(8)


def test_delay_lines_skew():
    dut = DelayLines(signed(8), [0, 1, 3])
    outputs = []

    async def bench(ctx):
        for t in range(6):
            ctx.set(dut.i, [10 + t, 20 + t, 30 + t])
            outputs.append([int(v) for v in ctx.get(dut.o)])
            await ctx.tick()

    _run(dut, bench)
    assert outputs == [
        [10, 0, 0], [11, 20, 0], [12, 21, 0], [13, 22, 30], [14, 23, 31], [15, 24, 32]]


def test_array_column_sums_arrive_skewed():
    cfg = AcceleratorConfig(rows=2, cols=2)
    dut = SystolicArray(cfg)
    weights = [[1, 2], [3, 4]]  # W[r][c]
    out = {}

    async def bench(ctx):
        for r in range(2):
            ctx.set(dut.w_data, weights[r])
            ctx.set(dut.w_we, [0b01 if rr == r else 0 for rr in range(2)])
            await ctx.tick()
        ctx.set(dut.w_we, [0, 0])
        # one activation row x = [5, 6]: row 0 enters at t=0, row 1 (skewed) at t=1
        for t in range(6):
            ctx.set(dut.a_in, [5 if t == 0 else 0, 6 if t == 1 else 0])
            await ctx.tick()
            out[t + 1] = [int(v) for v in ctx.get(dut.psum_out)]

    _run(dut, bench)
    # column c's sum leaves at t - r + rows + c + 1 with t - r = 0 (one cycle in every PE's
    # product register): column 0 at 3, column 1 at 4
    assert out[3][0] == 5 * 1 + 6 * 3
    assert out[4][1] == 5 * 2 + 6 * 4
    assert out[2] == [0, 0] and out[3][1] == 0


def test_int4_pe_adds_both_products():
    """Two 5-bit (sign- or zero-extended int4) activations times two int4 weights per cycle."""
    from amaranth.sim import Simulator

    pe = ProcessingElement(5, 4, 16, products=2)
    seen = []

    async def bench(ctx):
        ctx.set(pe.w_data, [-8, 7])
        ctx.set(pe.w_we, 0b01)
        await ctx.tick()
        ctx.set(pe.w_we, 0)
        # the partial sum arrives a cycle after its operands (the product register)
        for a, psum in (([15, -8], 0), ([-1, 3], 100), ([0, 0], -5)):  # 15: uint4 zero-extended
            ctx.set(pe.a_in, a)
            ctx.set(pe.psum_in, psum)
            await ctx.tick()
            seen.append(ctx.get(pe.psum_out))

    sim = Simulator(pe)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [0, 100 + 15 * -8 + -8 * 7, -5 + -1 * -8 + 3 * 7]
