"""Cycle count and action counts of a Program, exact for the generated RTL.

The controller (:mod:`rtl.controller`) runs three engines, fetch, weight loader and activation
streamer, that hand commands forward through one-entry slots. Their local rules give a
recurrence over the Matmul commands. With R = rows, C = cols, cycle 0 the first cycle the
accelerator is busy, and for the i-th Matmul ``T_i`` the cycle the loader takes it, ``S_i``
its first activation issue and ``E_i = S_i + rows_i``::

    T_0 = 1                                   (command word 0 is read in cycle 0)
    T_i = max(T_{i-1} + R,                    the loader reads R weight rows per tile
              S_{i-1} - 1,                    the stream slot is free
              E_{i-2} + K)                    the weight buffer of tile i-2 is released
    S_i = max(E_{i-1}, T_i + 2)               streamer busy / slot filled one cycle later
    K   = max(C - 3, 0)

The HALT command is taken at ``T_halt = T_last + R`` (1 without Matmuls) and the last busy
cycle is ``max(E_last - 1 + R + C, T_halt + 1)``: an activation issued at cycle ``s`` is
written back at ``s + R + C``. The cycle count is that last cycle plus one.

This is the only timing model in qsim; estimates, energy and design-space sweeps use it, and
the cycle-exact co-simulation tests compare it with the RTL's own counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qsim.config import AcceleratorConfig
from qsim.program import Matmul, Program

__all__ = ["TimingResult", "TileSchedule", "timing_of", "simulate_timing", "estimate_gemm"]


@dataclass(frozen=True)
class TileSchedule:
    """When one Matmul is taken, starts and ends streaming (cycles from the first busy cycle)."""

    take: int
    start: int
    end: int  # one past the last activation issue


@dataclass
class TimingResult:
    """Cycles and action counts; the counts are the RTL's performance counters."""

    config: AcceleratorConfig
    cycles: int
    act_reads: int
    weight_reads: int
    acc_reads: int
    acc_writes: int
    matmuls: int
    useful_macs: int | None = None
    schedule: list[TileSchedule] = field(default_factory=list, repr=False)

    @property
    def array_macs(self) -> int:
        """MACs the array performs, padding included: every issued row uses all R x C PEs."""
        return self.act_reads * self.config.macs_per_cycle

    @property
    def utilization(self) -> float | None:
        """Useful MACs / (R x C x cycles); ``None`` when the program does not state its MACs."""
        if self.useful_macs is None or self.cycles == 0:
            return None
        return self.useful_macs / (self.config.macs_per_cycle * self.cycles)

    @property
    def seconds(self) -> float:
        return self.cycles / (self.config.clock_mhz * 1e6)

    def counters(self) -> dict[str, int]:
        """The values the RTL's counters must show, keyed like :data:`rtl.top.COUNTERS`."""
        return {
            "cycles": self.cycles,
            "act_reads": self.act_reads,
            "weight_reads": self.weight_reads,
            "acc_reads": self.acc_reads,
            "acc_writes": self.acc_writes,
            "matmuls": self.matmuls,
        }


def _schedule(config: AcceleratorConfig, rows: np.ndarray) -> tuple[list[TileSchedule], int]:
    r, c = config.rows, config.cols
    release = max(c - 3, 0)
    schedule: list[TileSchedule] = []
    take_prev = start_prev = None
    end_prev = end_prev2 = None
    for i, n in enumerate(rows.tolist()):
        if i == 0:
            take = 1
        else:
            take = max(take_prev + r, start_prev - 1)
            if end_prev2 is not None:
                take = max(take, end_prev2 + release)
        start = take + 2 if end_prev is None else max(end_prev, take + 2)
        end = start + n
        schedule.append(TileSchedule(take, start, end))
        take_prev, start_prev = take, start
        end_prev2, end_prev = end_prev, end
    if not schedule:
        last_busy = 2  # HALT taken at cycle 1, seen as halted at cycle 2
    else:
        halt_take = schedule[-1].take + r
        last_busy = max(schedule[-1].end - 1 + r + c, halt_take + 1)
    return schedule, last_busy + 1


def _uniform_cycles(config: AcceleratorConfig, m: int, tiles: int) -> int:
    """Cycle count of ``tiles`` Matmuls of ``m`` rows each, without walking every tile.

    With equal tiles the recurrence is a max-plus linear system: after a short transient the
    schedule advances by the same amount every ``c`` tiles (``c`` is 1 or 2, because a take
    depends on the tile two back). A prefix is simulated, the period found, and the last
    tile's end extrapolated; :func:`_schedule` remains the definition, and the tests check
    that both agree.
    """
    prefix = min(tiles, 48)
    schedule, cycles = _schedule(config, np.full(prefix, m, dtype=np.int64))
    if prefix == tiles:
        return cycles
    ends = [s.end for s in schedule]
    takes = [s.take for s in schedule]
    for period in (1, 2, 3, 4):
        window = range(prefix - 4 * period, prefix - period)
        step = ends[prefix - 1] - ends[prefix - 1 - period]
        if all(ends[i + period] - ends[i] == step and takes[i + period] - takes[i] == step
               for i in window):
            break
    else:  # pragma: no cover - not reached for any configuration the tests sweep
        return _schedule(config, np.full(tiles, m, dtype=np.int64))[1]
    # tile j = base + q*period (base in the last simulated period) is tile base shifted by q*step
    q, r = divmod(tiles - 1 - (prefix - period), period)
    base = prefix - period + r
    end = ends[base] + q * step
    take = takes[base] + q * step
    return max(end - 1 + config.rows + config.cols, take + config.rows + 1) + 1


def timing_of(config: AcceleratorConfig, rows: np.ndarray, accumulate: np.ndarray,
              useful_macs: int | None = None) -> TimingResult:
    """Timing of a sequence of Matmuls given their row counts and accumulate flags."""
    rows = np.asarray(rows, dtype=np.int64)
    accumulate = np.asarray(accumulate, dtype=bool)
    schedule, cycles = _schedule(config, rows)
    return TimingResult(
        config=config,
        cycles=cycles,
        act_reads=int(rows.sum()),
        weight_reads=len(rows) * config.rows,
        acc_reads=int(rows[accumulate].sum()),
        acc_writes=int(rows.sum()),
        matmuls=len(rows),
        useful_macs=useful_macs,
        schedule=schedule,
    )


def simulate_timing(program: Program) -> TimingResult:
    """Exact cycle count and action counts of ``program`` on the generated RTL."""
    matmuls = [c for c in program.commands if isinstance(c, Matmul)]
    useful = program.meta.get("useful_macs")
    return timing_of(program.config, [c.rows for c in matmuls], [c.accumulate for c in matmuls],
                     int(useful) if useful is not None else None)


def estimate_gemm(config: AcceleratorConfig, m: int, k: int, n: int) -> TimingResult:
    """Timing of an M x K x N GEMM as :func:`qsim.compile.compile_gemm` lowers it.

    No data is built and the memories are not checked: this sizes designs and sweeps shapes
    in microseconds per GEMM. It equals ``simulate_timing(compile_gemm(...))`` exactly;
    beyond 48 tiles the per-tile ``schedule`` is left empty (the count is extrapolated from
    the periodic steady state, see :func:`_uniform_cycles`).
    """
    from qsim.compile import gemm_layouts

    a_lay, _, c_lay = gemm_layouts(config, m, k, n)
    k_tiles, n_tiles = a_lay.lane_tiles, c_lay.lane_tiles
    tiles = k_tiles * n_tiles
    if tiles <= 48:
        rows = np.full(tiles, m, dtype=np.int64)
        accumulate = np.tile(np.arange(k_tiles) > 0, n_tiles)
        return timing_of(config, rows, accumulate, m * k * n)
    return TimingResult(
        config=config, cycles=_uniform_cycles(config, m, tiles), act_reads=tiles * m,
        weight_reads=tiles * config.rows, acc_reads=(k_tiles - 1) * n_tiles * m,
        acc_writes=tiles * m, matmuls=tiles, useful_macs=m * k * n,
    )
