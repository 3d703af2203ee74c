"""What one RTL run returns, whichever simulator ran it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["RtlResult"]


@dataclass
class RtlResult:
    """Counters read from the RTL after ``done``, and the accumulator words it wrote.

    ``acc`` holds words ``0 .. footprint - 1`` of the accumulator memory as a words x cols
    int64 array; ``outputs`` are the program's result matrices decoded from it.
    """

    counters: dict[str, int]
    acc: np.ndarray
    outputs: dict[str, np.ndarray]
    error: bool = False
    wall_s: float = 0.0
    sim_wall_s: float = 0.0  # wall time from start to done only
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def cycles(self) -> int:
        return self.counters["cycles"]
