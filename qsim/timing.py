"""Cycle count and action counts of a Program, exact for the generated RTL.

The controller (:mod:`rtl.controller`) runs three engines, fetch, weight loader and activation
streamer, that hand commands forward through one-entry slots, plus the post-processing engine
for REQUANT commands. Their local rules give a recurrence over the commands. With R = rows,
C = cols, cycle 0 the first cycle the accelerator is busy, ``ready_j = T_{j-1} + 1`` the cycle
command ``j`` reaches the fetch register (``ready_0 = 2``, ``qsim.hw.CMD_FETCH_LATENCY``: the
command memory's read, then the register the controller decodes), and for a Matmul ``T_i``
the cycle the loader takes it, ``S_i`` its first activation issue and ``E_i = S_i + rows_i``::

    T_i = max(T_{i-1} + R,                    the loader reads R weight rows per tile
              S_{i-1} - 1,                    the stream slot is free
              E_{i-2} + K)                    the weight buffer of tile i-2 is released
    S_i = max(E_{i-1}, T_i + 2)               streamer busy / slot filled one cycle later
    K   = max(C - 3, 0)                       (qsim.hw.buffer_release_delay)

where ``i - 1`` and ``i - 2`` are earlier Matmuls of the same *segment* (the Matmuls since
the last Requant). The first Matmul of a segment is taken at ``T = max(ready, P)``, where
``P`` is the first cycle the post-processing unit is free (0 before any Requant), and starts
at ``T + 2``. A Requant waits for its segment to drain: it is taken at
``T_q = max(ready, L)``, where ``L = E_last - 1 + R + C + 2`` is the cycle of the last
accumulator write of the segment's Matmuls (``ready`` alone without Matmuls, or
``max(ready, P)`` right after another Requant); it reads one accumulator word per cycle from
``T_q + 1`` and writes its last activation word at ``W_q = T_q + rows + D``
(``D = qsim.hw.ppu_latency``), so ``P = W_q + 1``.

The HALT command is taken at ``T_halt = T_last + R`` after a Matmul, ``P`` after a Requant
and 2 without commands; the last busy cycle is ``max(L, T_halt + 1)`` (``L`` of the final
segment, if it has Matmuls): an activation issued at cycle ``s`` is written back at
``s + R + C + 2`` (``qsim.hw.array_latency``). The cycle count is that last cycle plus one.

A command at the head of the queue that is not taken waits; its wait ``T_j - ready_j`` is
counted as ``wait_ppu`` after a Requant, ``wait_drain`` for a Requant after Matmuls and
``wait_array`` otherwise, as the RTL's counters count it.

Output-stationary configurations (``config.dataflow``) have no weight loader: a Matmul of
``rows`` reduction steps is taken when the stream slot is free, ``T_i = max(ready,
S_{i-1} - 1)``, and streamed one activation and one weight word per cycle from
``S_i = max(T_i + 2, E_{i-1} + max(0, G - rows_i))``, where ``G = qsim.hw.os_tile_spacing``
(``R``) keeps consecutive last issues ``G`` apart (drain registers and the accumulator pair);
its ``R`` output rows are written from ``E_i - 1 + qsim.hw.os_write_latency`` on, one per cycle,
so its last write is ``E_i + 2R + C``. HALT is taken as soon as it is ready.

This is the only timing model in qsim; estimates, energy and design-space sweeps use it, and
the cycle-exact co-simulation tests compare it with the RTL's own counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qsim.config import AcceleratorConfig
from qsim.hw import (CMD_FETCH_LATENCY, COUNTERS, array_latency, buffer_release_delay, is_output_stationary,
                     os_tile_spacing, os_write_latency, ppu_latency)
from qsim.dma import transfer
from qsim.program import DmaCommand, Halt, Load, Matmul, Program, Requant, Store

__all__ = ["TimingResult", "TileSchedule", "PostSchedule", "timing_of", "simulate_timing",
           "estimate_gemm"]


@dataclass(frozen=True)
class TileSchedule:
    """When one Matmul is taken, starts and ends streaming (cycles from the first busy cycle)."""

    take: int
    start: int
    end: int  # one past the last activation issue


@dataclass(frozen=True)
class PostSchedule:
    """When one Requant is taken and writes its last activation word."""

    take: int
    last_write: int


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
    requants: int = 0
    act_writes: int = 0
    ppu_outputs: int = 0
    wait_array: int = 0
    wait_drain: int = 0
    wait_ppu: int = 0
    post_schedule: list[PostSchedule] = field(default_factory=list, repr=False)
    loads: int = 0
    stores: int = 0
    dram_reads: int = 0
    dram_writes: int = 0
    dma_busy: int = 0
    wait_dma: int = 0
    transfer_schedule: list[TransferSchedule] = field(default_factory=list, repr=False)

    @property
    def dram_bytes(self) -> dict[str, int]:
        """Bytes moved over the DRAM bus: ``read`` and ``written``."""
        return {"read": self.dram_reads, "written": self.dram_writes}

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
        """The values the RTL's counters must show, keyed like :data:`qsim.hw.COUNTERS`."""
        return {name: int(getattr(self, name)) for name in COUNTERS}


@dataclass(frozen=True)
class TransferSchedule:
    """When one LOAD/STORE is taken and finishes, and the data beats it moves."""

    take: int
    end: int
    beats: int


@dataclass
class _Run:
    schedule: list[TileSchedule]
    post: list[PostSchedule]
    cycles: int
    waits: dict[str, int]
    transfers: list[TransferSchedule] = field(default_factory=list)


def _last_write(config: AcceleratorConfig, tile: TileSchedule) -> int:
    """Cycle of a Matmul's last accumulator write."""
    if is_output_stationary(config):
        return tile.end - 1 + os_write_latency(config) + os_tile_spacing(config) - 1
    return tile.end - 1 + array_latency(config)


def _halt_take(config: AcceleratorConfig, last_take: int) -> int:
    """When HALT is taken after a Matmul taken at ``last_take``: once the weight loader is
    free (weight-stationary), at once (output-stationary, no loader)."""
    return last_take + (1 if is_output_stationary(config) else config.rows)


def _run(config: AcceleratorConfig, commands, origin: int = 0) -> _Run:
    """The recurrence of the module docstring over ``commands`` (no Halt).

    ``origin`` is the cycle in which the fetcher may first read the command memory (0, or the
    cycle after the program fetch with a bus interface).
    """
    r = config.rows
    os_ = is_output_stationary(config)
    spacing = os_tile_spacing(config)
    release = buffer_release_delay(config)
    post_latency = ppu_latency(config)
    schedule: list[TileSchedule] = []
    post: list[PostSchedule] = []
    transfers: list[TransferSchedule] = []
    waits = {"wait_array": 0, "wait_drain": 0, "wait_ppu": 0, "wait_dma": 0}
    seg: list[TileSchedule] = []  # Matmuls of the current segment
    last_matmul_take = None
    # ready = prev_take + 1; the first command is ready CMD_FETCH_LATENCY cycles after origin
    prev_take = origin + CMD_FETCH_LATENCY - 1
    post_free = origin
    dma_free = origin
    dma_act_load = False  # the last LOAD/STORE writes the activation memory
    never = -1
    grid = config.max_burst * config.dram_width if config.has_dram else 1
    costs: dict = {}  # transfer costs by shape (hashing the configuration is not free)

    def wait(take: int, ready: int, post_end: int, dma_end: int, rest: str) -> None:
        """Split a command's wait over the counters as the RTL does, cycle by cycle: the
        post-processing unit busy first, then the DMA engine busy, then ``rest``."""
        ppu = max(0, min(take, post_end) - ready)
        dma = max(0, min(take, dma_end) - max(ready, post_end))
        waits["wait_ppu"] += ppu
        waits["wait_dma"] += dma
        waits[rest] += take - ready - ppu - dma

    def drained(ready: int) -> int:
        """First cycle (from ``ready``) with every compute command finished."""
        return max(ready, _last_write(config, seg[-1]) if seg else ready, post_free)

    for cmd in commands:
        ready = prev_take + 1
        wait_flag = getattr(cmd, "wait", False)
        if isinstance(cmd, DmaCommand):
            loads_act = isinstance(cmd, Load) and cmd.memory == "act"
            needs_post = loads_act or wait_flag
            take = max(ready, dma_free, post_free if needs_post else ready)
            if wait_flag:
                take = drained(take)
            wait(take, ready, post_free if needs_post else never, dma_free, "wait_drain")
            key = (isinstance(cmd, Store), cmd.memory, cmd.dram_addr % grid, cmd.words)
            cost = costs.get(key)
            if cost is None:
                cost = costs[key] = transfer(config, *key)
            dma_free = take + cost.cycles
            dma_act_load = loads_act
            transfers.append(TransferSchedule(take, dma_free, cost.beats))
            prev_take = take
            continue
        dma_end = dma_free if wait_flag else never
        if isinstance(cmd, Requant):
            if dma_act_load:
                dma_end = dma_free
            take = max(ready, _last_write(config, seg[-1])) if seg else max(ready, post_free)
            take = max(take, dma_end)
            wait(take, ready, post_free, dma_end, "wait_drain")
            last_write = take + cmd.rows + post_latency
            post.append(PostSchedule(take, last_write))
            post_free = last_write + 1
            seg = []
            prev_take = take
            continue
        if not seg:
            take = max(ready, post_free, dma_end)
            start = take + 2
        elif os_:
            # the slot is free once the streamer takes the previous tile; a tile starts when
            # the previous one has issued its last row and its own last issue is at least
            # `spacing` cycles after the previous tile's
            take = max(ready, seg[-1].start - 1, dma_end)
            start = max(take + 2, seg[-1].end, seg[-1].end + spacing - cmd.rows)
        else:
            take = max(ready, seg[-1].take + r, seg[-1].start - 1, dma_end)
            if len(seg) > 1:
                take = max(take, seg[-2].end + release)
            start = max(seg[-1].end, take + 2)
        wait(take, ready, post_free, dma_end, "wait_array")
        tile = TileSchedule(take, start, start + cmd.rows)
        seg.append(tile)
        schedule.append(tile)
        last_matmul_take = prev_take = take
    ready = prev_take + 1
    halt_take = max(ready, post_free)
    if last_matmul_take is not None:
        halt_take = max(halt_take, _halt_take(config, last_matmul_take))
    wait(halt_take, ready, post_free, never, "wait_array")
    last_busy = max(halt_take + 1, dma_free)
    if seg:
        last_busy = max(last_busy, _last_write(config, seg[-1]))
    return _Run(schedule, post, last_busy + 1, waits, transfers)


class _Rows:
    """A Matmul as the recurrence sees it: only its row count matters."""

    __slots__ = ("rows",)

    def __init__(self, rows: int) -> None:
        self.rows = rows


def _schedule(config: AcceleratorConfig, rows: np.ndarray) -> tuple[list[TileSchedule], int]:
    """Schedule and cycle count of Matmuls of ``rows`` rows each (no Requant)."""
    run = _run(config, [_Rows(n) for n in np.asarray(rows).tolist()])
    return run.schedule, run.cycles


def _uniform_cycles(config: AcceleratorConfig, m: int, tiles: int) -> int:
    return _uniform(config, m, tiles)[0]


def _uniform(config: AcceleratorConfig, m: int, tiles: int) -> tuple[int, int]:
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
        return cycles, schedule[-1].take
    ends = [s.end for s in schedule]
    takes = [s.take for s in schedule]
    for period in (1, 2, 3, 4):
        window = range(prefix - 4 * period, prefix - period)
        step = ends[prefix - 1] - ends[prefix - 1 - period]
        if all(ends[i + period] - ends[i] == step and takes[i + period] - takes[i] == step
               for i in window):
            break
    else:  # pragma: no cover - not reached for any configuration the tests sweep
        full, cycles = _schedule(config, np.full(tiles, m, dtype=np.int64))
        return cycles, full[-1].take
    # tile j = base + q*period (base in the last simulated period) is tile base shifted by q*step
    q, r = divmod(tiles - 1 - (prefix - period), period)
    base = prefix - period + r
    end = ends[base] + q * step
    take = takes[base] + q * step
    return max(_last_write(config, TileSchedule(take, end - m, end)),
               _halt_take(config, take) + 1) + 1, take


def timing_of(config: AcceleratorConfig, rows: np.ndarray, accumulate: np.ndarray,
              useful_macs: int | None = None) -> TimingResult:
    """Timing of a sequence of Matmuls given their row counts and accumulate flags."""
    rows = np.asarray(rows, dtype=np.int64)
    accumulate = np.asarray(accumulate, dtype=bool)
    return timing_of_commands(config, [Matmul(0, 0, 0, int(n), bool(a))
                                       for n, a in zip(rows.tolist(), accumulate.tolist())],
                              useful_macs)


def program_fetch(config: AcceleratorConfig, commands: int, cmd_base: int = 0):
    """The DMA transfer that fetches ``commands`` command words at start (bus interface)."""
    return transfer(config, False, "cmd", cmd_base, commands)


def timing_of_commands(config: AcceleratorConfig, commands, useful_macs: int | None = None,
                       cmd_base: int = 0) -> TimingResult:
    """Timing of a command sequence (a trailing Halt is optional). With a bus interface the
    program (the commands and a Halt) is fetched from DRAM byte ``cmd_base`` first."""
    commands = [c for c in commands if not isinstance(c, Halt)]
    origin = 0
    fetch = None
    if config.has_dram:
        # taken in the cycle of start (cycle -1), finished at `end`; fetching begins after
        fetch = program_fetch(config, len(commands) + 1, cmd_base)
        origin = fetch.cycles
    run = _run(config, commands, origin)
    matmuls = [c for c in commands if isinstance(c, Matmul)]
    requants = [c for c in commands if isinstance(c, Requant)]
    dma = [c for c in commands if isinstance(c, DmaCommand)]
    streamed = sum(c.rows for c in matmuls)
    post_rows = sum(c.rows for c in requants)
    if is_output_stationary(config):  # a weight word per step, R accumulator words per tile
        weight_reads, written = streamed, [config.rows] * len(matmuls)
    else:  # R weight words per tile, an accumulator word per streamed row
        weight_reads, written = len(matmuls) * config.rows, [c.rows for c in matmuls]
    return TimingResult(
        config=config,
        cycles=run.cycles,
        act_reads=streamed,
        weight_reads=weight_reads,
        acc_reads=sum(w for c, w in zip(matmuls, written) if c.accumulate) + post_rows,
        acc_writes=sum(written),
        matmuls=len(matmuls),
        useful_macs=useful_macs,
        schedule=run.schedule,
        requants=len(requants),
        act_writes=post_rows,
        ppu_outputs=sum(c.rows * c.lanes for c in requants),
        post_schedule=run.post,
        loads=sum(isinstance(c, Load) for c in commands),
        stores=sum(isinstance(c, Store) for c in commands),
        dram_reads=config.dram_width * (sum(t.beats for c, t in zip(dma, run.transfers)
                                            if isinstance(c, Load))
                                        + (fetch.beats if fetch else 0)),
        dram_writes=config.dram_width * sum(t.beats for c, t in zip(dma, run.transfers)
                                            if isinstance(c, Store)),
        dma_busy=sum(t.end - t.take for t in run.transfers) + (fetch.cycles if fetch else 0),
        transfer_schedule=run.transfers,
        **run.waits,
    )


def simulate_timing(program: Program) -> TimingResult:
    """Exact cycle count and action counts of ``program`` on the generated RTL."""
    useful = program.meta.get("useful_macs")
    return timing_of_commands(program.config, program.commands,
                              int(useful) if useful is not None else None, program.cmd_base)


def estimate_gemm(config: AcceleratorConfig, m: int, k: int, n: int,
                  requant: bool = False) -> TimingResult:
    """Timing of an M x K x N GEMM as :func:`qsim.compile.compile_gemm` lowers it.

    With ``requant`` the result is post-processed on chip (the REQUANT commands of
    ``compile_gemm(..., requant=...)``); the commands are then timed one by one.

    No data is built and the memories are not checked: this sizes designs and sweeps shapes
    in microseconds per GEMM. It equals ``simulate_timing(compile_gemm(...))`` exactly;
    beyond 48 tiles the per-tile ``schedule`` is left empty (the count is extrapolated from
    the periodic steady state, see :func:`_uniform_cycles`).
    """
    from qsim.compile import gemm_layouts

    a_lay, _, c_lay = gemm_layouts(config, m, k, n)
    k_tiles, n_tiles = a_lay.lane_tiles, c_lay.lane_tiles
    tiles = k_tiles * n_tiles
    os_ = is_output_stationary(config)
    # weight-stationary: a Matmul per (N tile, K tile) streaming M rows, K tiles accumulating;
    # output-stationary: a Matmul per (N tile, M tile) (act lane tiles are M tiles) streaming
    # the KW reduction words, never accumulating
    rows = a_lay.rows if os_ else m
    if requant:
        from qsim.compile import requant_runs

        commands = [Matmul(0, 0, 0, rows, kt > 0 and not os_)
                    for _ in range(n_tiles) for kt in range(k_tiles)]
        commands += [Requant(0, 0, m, 0, lanes=n1 - n0) for _, n0, n1 in requant_runs(config, n)]
        return timing_of_commands(config, commands, m * k * n)
    if tiles <= 48:
        accumulate = np.tile(np.arange(k_tiles) > 0, n_tiles) & (not os_)
        return timing_of(config, np.full(tiles, rows, dtype=np.int64), accumulate, m * k * n)
    cycles, last_take = _uniform(config, rows, tiles)
    # The first Matmul is ready at CMD_FETCH_LATENCY and each later one the cycle after the
    # previous take, so the waits add up to the last take minus the tiles minus
    # CMD_FETCH_LATENCY - 1; HALT then waits for the loader (R - 1 cycles, weight-stationary)
    # or not at all (output-stationary).
    halt_wait = _halt_take(config, last_take) - last_take - 1
    if os_:
        counts = dict(weight_reads=tiles * rows, acc_reads=0, acc_writes=tiles * config.rows)
    else:
        counts = dict(weight_reads=tiles * config.rows, acc_reads=(k_tiles - 1) * n_tiles * m,
                      acc_writes=tiles * m)
    return TimingResult(
        config=config, cycles=cycles, act_reads=tiles * rows, matmuls=tiles,
        useful_macs=m * k * n,
        wait_array=last_take - tiles - (CMD_FETCH_LATENCY - 1) + halt_wait, **counts,
    )
