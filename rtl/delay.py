"""Per-lane delay lines: the input skew, the output deskew and the metadata pipeline."""

from __future__ import annotations

from typing import Sequence

from amaranth import Module, Signal
from amaranth.hdl import ShapeLike
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from rtl.checks import reject

__all__ = ["DelayLines"]


class DelayLines(wiring.Component):
    """Delays lane ``i`` of its input by ``delays[i]`` clock cycles.

    With ``delays = range(rows)`` this is the triangular input skew of a systolic array;
    with ``delays = reversed(range(cols))`` it is the output deskew; a single lane with a long
    delay carries per-row metadata alongside the array. A delay of 0 is a wire.

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

    def elaborate(self, platform):
        m = Module()
        for lane, delay in enumerate(self.delays):
            stage = self.i[lane]
            for k in range(delay):
                reg = Signal(self.shape, name=f"lane{lane}_stage{k + 1}")
                m.d.sync += reg.eq(stage)
                stage = reg
            m.d.comb += self.o[lane].eq(stage)
        return m
