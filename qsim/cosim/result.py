"""What one RTL run returns, whichever simulator ran it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["RtlResult"]


@dataclass
class RtlResult:
    """Counters read from the RTL after ``done``, and the memory words it wrote.

    ``acc`` holds words ``0 .. footprint - 1`` of the accumulator memory as a words x cols
    int64 array; ``memories`` holds it too, under ``"acc"``, and the activation memory's
    words ``0 .. footprint - 1`` under ``"act"`` when the program writes the activation memory
    (a REQUANT); ``outputs`` are the program's result matrices decoded from them.
    """

    counters: dict[str, int]
    acc: np.ndarray
    outputs: dict[str, np.ndarray]
    error: bool = False
    wall_s: float = 0.0
    sim_wall_s: float = 0.0  # wall time from start to done only
    extra: dict[str, object] = field(default_factory=dict)
    memories: dict[str, np.ndarray] = field(default_factory=dict)
    #: With a bus interface: the DRAM bytes ``0 .. dram_footprint - 1`` after the run, and the
    #: ERROR_CODE / ERROR_CMD registers.
    dram: bytes | None = None
    error_code: int = 0
    error_cmd: int = 0

    def __post_init__(self) -> None:
        self.memories.setdefault("acc", self.acc)

    @property
    def cycles(self) -> int:
        return self.counters["cycles"]
