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
the cycle-exact co-simulation tests compare it with the RTL's own counters. :class:`_Machine`
applies the recurrence one command at a time; :func:`_run` walks command objects with it,
:func:`run_stream` walks a :class:`CommandStream` (commands as columns) and skips stretches
that repeat, which every rule being a maximum of earlier times plus constants makes exact.
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
           "estimate_gemm", "CommandStream", "timing_of_stream", "run_stream"]


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


class _Machine:
    """The recurrence of the module docstring, one command at a time.

    The state is what the next command's take depends on: the previous take, when the
    post-processing unit and the DMA engine are free, the last two Matmuls of the current
    segment and the last Matmul's take. Every rule is a maximum of these times plus
    constants, so shifting every time by the same amount shifts the schedule and leaves the
    waits alone (:func:`run_stream` uses this to skip repeated stretches).
    """

    __slots__ = ("config", "rows", "os", "spacing", "release", "post_latency", "prev_take",
                 "post_free", "dma_free", "dma_act_load", "seg", "last_matmul_take", "waits")

    NEVER = -1  # a time before any other: a constraint that does not apply

    def __init__(self, config: AcceleratorConfig, origin: int = 0) -> None:
        self.config = config
        self.rows = config.rows
        self.os = is_output_stationary(config)
        self.spacing = os_tile_spacing(config)
        self.release = buffer_release_delay(config)
        self.post_latency = ppu_latency(config)
        # ready = prev_take + 1; the first command is ready CMD_FETCH_LATENCY cycles after origin
        self.prev_take = origin + CMD_FETCH_LATENCY - 1
        self.post_free = origin
        self.dma_free = origin
        self.dma_act_load = False  # the last LOAD/STORE writes the activation memory
        self.seg: list[TileSchedule] = []  # the last two Matmuls of the current segment
        self.last_matmul_take: int | None = None
        self.waits = {"wait_array": 0, "wait_drain": 0, "wait_ppu": 0, "wait_dma": 0}

    def _wait(self, take: int, ready: int, post_end: int, dma_end: int, rest: str) -> None:
        """Split a command's wait over the counters as the RTL does, cycle by cycle: the
        post-processing unit busy first, then the DMA engine busy, then ``rest``."""
        waits = self.waits
        ppu = max(0, min(take, post_end) - ready)
        dma = max(0, min(take, dma_end) - max(ready, post_end))
        waits["wait_ppu"] += ppu
        waits["wait_dma"] += dma
        waits[rest] += take - ready - ppu - dma

    def dma(self, wait_flag: bool, loads_act: bool, cycles: int) -> int:
        """A LOAD or STORE whose transfer takes ``cycles`` (:func:`qsim.dma.transfer`);
        returns its take."""
        ready = self.prev_take + 1
        post_free = self.post_free
        needs_post = loads_act or wait_flag
        take = max(ready, self.dma_free, post_free if needs_post else ready)
        if wait_flag:  # every compute command finished
            seg = self.seg
            take = max(take, _last_write(self.config, seg[-1]) if seg else take, post_free)
        self._wait(take, ready, post_free if needs_post else self.NEVER, self.dma_free,
                   "wait_drain")
        self.dma_free = take + cycles
        self.dma_act_load = loads_act
        self.prev_take = take
        return take

    def requant(self, rows: int) -> PostSchedule:
        ready = self.prev_take + 1
        seg = self.seg
        dma_end = self.dma_free if self.dma_act_load else self.NEVER
        take = max(ready, _last_write(self.config, seg[-1])) if seg else max(ready, self.post_free)
        take = max(take, dma_end)
        self._wait(take, ready, self.post_free, dma_end, "wait_drain")
        last_write = take + rows + self.post_latency
        self.post_free = last_write + 1
        self.seg = []
        self.prev_take = take
        return PostSchedule(take, last_write)

    def matmul(self, rows: int, wait_flag: bool) -> TileSchedule:
        ready = self.prev_take + 1
        seg = self.seg
        dma_end = self.dma_free if wait_flag else self.NEVER
        if not seg:
            take = max(ready, self.post_free, dma_end)
            start = take + 2
        elif self.os:
            # the slot is free once the streamer takes the previous tile; a tile starts when
            # the previous one has issued its last row and its own last issue is at least
            # `spacing` cycles after the previous tile's
            take = max(ready, seg[-1].start - 1, dma_end)
            start = max(take + 2, seg[-1].end, seg[-1].end + self.spacing - rows)
        else:
            take = max(ready, seg[-1].take + self.rows, seg[-1].start - 1, dma_end)
            if len(seg) > 1:
                take = max(take, seg[-2].end + self.release)
            start = max(seg[-1].end, take + 2)
        self._wait(take, ready, self.post_free, dma_end, "wait_array")
        tile = TileSchedule(take, start, start + rows)
        self.seg = [seg[-1], tile] if seg else [tile]
        self.last_matmul_take = self.prev_take = take
        return tile

    def halt(self) -> int:
        """Takes HALT; returns the cycle count."""
        ready = self.prev_take + 1
        halt_take = max(ready, self.post_free)
        if self.last_matmul_take is not None:
            halt_take = max(halt_take, _halt_take(self.config, self.last_matmul_take))
        self._wait(halt_take, ready, self.post_free, self.NEVER, "wait_array")
        last_busy = max(halt_take + 1, self.dma_free)
        if self.seg:
            last_busy = max(last_busy, _last_write(self.config, self.seg[-1]))
        return last_busy + 1

    def state(self) -> tuple:
        """The state relative to the previous take, with the times that can no longer
        matter (the unit or the DMA engine free before the previous take) raised to it: two
        positions with equal states continue alike on equal commands."""
        t = self.prev_take
        self.post_free = max(self.post_free, t)
        self.dma_free = max(self.dma_free, t)
        return (self.post_free - t, self.dma_free - t, self.dma_act_load,
                None if self.last_matmul_take is None else self.last_matmul_take - t,
                *((s.take - t, s.start - t, s.end - t) for s in self.seg))

    def shift(self, cycles: int) -> None:
        """Every time ``cycles`` later."""
        self.prev_take += cycles
        self.post_free += cycles
        self.dma_free += cycles
        if self.last_matmul_take is not None:
            self.last_matmul_take += cycles
        self.seg = [TileSchedule(s.take + cycles, s.start + cycles, s.end + cycles)
                    for s in self.seg]


def _run(config: AcceleratorConfig, commands, origin: int = 0) -> _Run:
    """The recurrence of the module docstring over ``commands`` (no Halt).

    ``origin`` is the cycle in which the fetcher may first read the command memory (0, or the
    cycle after the program fetch with a bus interface).
    """
    machine = _Machine(config, origin)
    schedule: list[TileSchedule] = []
    post: list[PostSchedule] = []
    transfers: list[TransferSchedule] = []
    grid = config.max_burst * config.dram_width if config.has_dram else 1
    costs: dict = {}  # transfer costs by shape (hashing the configuration is not free)
    for cmd in commands:
        if isinstance(cmd, DmaCommand):
            key = (isinstance(cmd, Store), cmd.memory, cmd.dram_addr % grid, cmd.words)
            cost = costs.get(key)
            if cost is None:
                cost = costs[key] = transfer(config, *key)
            take = machine.dma(cmd.wait, isinstance(cmd, Load) and cmd.memory == "act",
                               cost.cycles)
            transfers.append(TransferSchedule(take, machine.dma_free, cost.beats))
        elif isinstance(cmd, Requant):
            post.append(machine.requant(cmd.rows))
        else:
            schedule.append(machine.matmul(cmd.rows, getattr(cmd, "wait", False)))
    cycles = machine.halt()
    return _Run(schedule, post, cycles, machine.waits, transfers)


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


def _fetch_origin(config: AcceleratorConfig, commands: int, cmd_base: int):
    """The program fetch of ``commands`` commands and a Halt with a bus interface (taken in
    the cycle of start, cycle -1; ``None`` without one), and the cycle the fetcher may first
    read the command memory (0 without a bus interface, else when the fetch ends)."""
    if not config.has_dram:
        return None, 0
    fetch = program_fetch(config, commands + 1, cmd_base)
    return fetch, fetch.cycles


def timing_of_commands(config: AcceleratorConfig, commands, useful_macs: int | None = None,
                       cmd_base: int = 0) -> TimingResult:
    """Timing of a command sequence (a trailing Halt is optional). With a bus interface the
    program (the commands and a Halt) is fetched from DRAM byte ``cmd_base`` first."""
    commands = [c for c in commands if not isinstance(c, Halt)]
    fetch, origin = _fetch_origin(config, len(commands), cmd_base)
    run = _run(config, commands, origin)
    stream = CommandStream.from_commands(commands)
    return _result(config, stream, run.cycles, run.waits, fetch, useful_macs,
                   np.array([t.beats for t in run.transfers], dtype=np.int64),
                   np.array([t.end - t.take for t in run.transfers], dtype=np.int64),
                   schedule=run.schedule, post_schedule=run.post, transfer_schedule=run.transfers)


#: Kinds of the rows of a :class:`CommandStream`.
MATMUL, REQUANT, LOAD, STORE = 0, 1, 2, 3
#: Memories of the LOAD/STORE rows of a :class:`CommandStream`, by index.
STREAM_MEMORIES = ("act", "weight", "acc", "bias", "scale", "qctl", "cmd")


@dataclass
class CommandStream:
    """A command sequence (no Halt) as columns of equal length, one row per command, with
    what the timing model reads of each: ``kind`` (:data:`MATMUL`, :data:`REQUANT`,
    :data:`LOAD`, :data:`STORE`), ``wait``, ``count`` (rows of a Matmul or Requant, words of a
    LOAD/STORE), ``memory`` (index into :data:`STREAM_MEMORIES`) and ``dram_addr`` of a
    LOAD/STORE, ``accumulate`` of a Matmul and ``lanes`` of a Requant.

    :func:`qsim.compile_dram.dram_gemm_stream` writes one without building the commands;
    :func:`timing_of_stream` times it.
    """

    kind: np.ndarray
    wait: np.ndarray
    count: np.ndarray
    memory: np.ndarray
    dram_addr: np.ndarray
    accumulate: np.ndarray
    lanes: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    @classmethod
    def from_commands(cls, commands) -> CommandStream:
        rows = []
        for c in commands:
            if isinstance(c, DmaCommand):
                rows.append((STORE if isinstance(c, Store) else LOAD, c.wait, c.words,
                             STREAM_MEMORIES.index(c.memory), c.dram_addr, False, 0))
            elif isinstance(c, Requant):
                rows.append((REQUANT, False, c.rows, 0, 0, False, c.lanes))
            else:
                rows.append((MATMUL, c.wait, c.rows, 0, 0, c.accumulate, 0))
        cols = np.array(rows, dtype=np.int64).reshape(-1, 7).T
        return cls(*(col.astype(bool) if i in (1, 5) else col for i, col in enumerate(cols)))


def _result(config: AcceleratorConfig, stream: CommandStream, cycles: int, waits: dict,
            fetch, useful_macs: int | None, beats: np.ndarray, busy: np.ndarray,
            **schedules) -> TimingResult:
    """The counters of ``stream`` run in ``cycles`` with ``waits``; ``beats`` and ``busy``:
    data beats and DMA cycles of each LOAD/STORE in order, ``fetch``: the program fetch."""
    kind, count = stream.kind, stream.count
    mm = kind == MATMUL
    rq = kind == REQUANT
    transfers = kind[kind >= LOAD]
    matmuls = int(mm.sum())
    streamed = int(count[mm].sum())
    post_rows = int(count[rq].sum())
    if is_output_stationary(config):  # a weight word per step, R accumulator words per tile
        weight_reads, written = streamed, np.full(matmuls, config.rows, dtype=np.int64)
    else:  # R weight words per tile, an accumulator word per streamed row
        weight_reads, written = matmuls * config.rows, count[mm]
    return TimingResult(
        config=config,
        cycles=cycles,
        act_reads=streamed,
        weight_reads=weight_reads,
        acc_reads=int(written[stream.accumulate[mm]].sum()) + post_rows,
        acc_writes=int(written.sum()),
        matmuls=matmuls,
        useful_macs=useful_macs,
        requants=int(rq.sum()),
        act_writes=post_rows,
        ppu_outputs=int((count[rq] * stream.lanes[rq]).sum()),
        loads=int((kind == LOAD).sum()),
        stores=int((kind == STORE).sum()),
        dram_reads=config.dram_width * (int(beats[transfers == LOAD].sum())
                                        + (fetch.beats if fetch else 0)),
        dram_writes=config.dram_width * int(beats[transfers == STORE].sum()),
        dma_busy=int(busy.sum()) + (fetch.cycles if fetch else 0),
        **schedules,
        **waits,
    )


def _periods(codes: np.ndarray, i: int, period: int) -> int:
    """Whole periods of ``period`` commands from ``i`` that repeat the ``period`` commands
    before ``i``."""
    n = len(codes)
    pos, step = i, max(period, 64)
    while pos < n:
        end = min(n, pos + step)
        differ = np.flatnonzero(codes[pos:end] != codes[pos - period:end - period])
        if differ.size:
            return (pos + int(differ[0]) - i) // period
        pos, step = end, step * 2
    return (n - i) // period


def run_stream(config: AcceleratorConfig, kind: np.ndarray, wait: np.ndarray,
               loads_act: np.ndarray, value: np.ndarray, origin: int = 0) -> tuple[int, dict]:
    """Cycle count and waits of the recurrence over commands given as columns (``value``:
    rows of a Matmul or Requant, transfer cycles of a LOAD/STORE), equal to :func:`_run`'s.

    Stretches that repeat are not walked: whenever the machine's state relative to the
    previous take (:meth:`_Machine.state`) equals the state ``p`` commands earlier and the
    next commands repeat those ``p``, every time of the next period is the same shift of the
    last one's, since every rule is a maximum of earlier times plus constants; the machine
    jumps over all such periods at once, adding the shift and the waits of one period per
    period skipped.
    """
    codes = ((np.asarray(value, dtype=np.int64) * 4 + kind) * 2 + wait) * 2 + loads_act
    machine = _Machine(config, origin)
    n = len(codes)
    seen: dict[tuple, tuple[int, int, tuple[int, ...]]] = {}
    i = 0
    while i < n:
        state = machine.state()
        hit = seen.get(state)
        if hit is not None:
            j, take, before = hit
            q = _periods(codes, i, i - j)
            if q:
                machine.shift(q * (machine.prev_take - take))
                for key, w in zip(list(machine.waits), before):
                    machine.waits[key] += q * (machine.waits[key] - w)
                i += q * (i - j)
                seen.clear()
                continue
        seen[state] = (i, machine.prev_take, tuple(machine.waits.values()))
        code = int(codes[i])
        k, val = (code >> 2) & 3, code >> 4
        if k == MATMUL:
            machine.matmul(val, bool(code & 2))
        elif k == REQUANT:
            machine.requant(val)
        else:
            machine.dma(bool(code & 2), bool(code & 1), val)
        i += 1
    return machine.halt(), machine.waits


def timing_of_stream(config: AcceleratorConfig, stream: CommandStream,
                     useful_macs: int | None = None, cmd_base: int = 0) -> TimingResult:
    """:func:`timing_of_commands` of the commands ``stream`` describes, every counter equal,
    in time that grows with the stream's distinct stretches rather than its length
    (:func:`run_stream`); no per-command schedules."""
    fetch, origin = _fetch_origin(config, len(stream), cmd_base)
    kind = stream.kind
    dma = kind >= LOAD
    value = stream.count.astype(np.int64)
    beats = busy = np.zeros(0, dtype=np.int64)
    if dma.any():
        grid = config.max_burst * config.dram_width
        store = (kind[dma] == STORE).astype(np.int64)
        shape = (((store * 8 + stream.memory[dma]) * grid + stream.dram_addr[dma] % grid)
                 << 32) + stream.count[dma]
        shapes, index = np.unique(shape, return_inverse=True)
        costs = []
        for s in shapes.tolist():  # the distinct transfer shapes
            rest, offset = divmod(s >> 32, grid)
            costs.append(transfer(config, bool(rest // 8), STREAM_MEMORIES[rest % 8], offset,
                                  s & 0xFFFFFFFF))
        busy = np.array([c.cycles for c in costs], dtype=np.int64)[index]
        beats = np.array([c.beats for c in costs], dtype=np.int64)[index]
        value[dma] = busy
    loads_act = (kind == LOAD) & (stream.memory == STREAM_MEMORIES.index("act"))
    cycles, waits = run_stream(config, kind, stream.wait, loads_act, value, origin)
    return _result(config, stream, cycles, waits, fetch, useful_macs, beats, busy)


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
    beyond 48 tiles the per-tile ``schedule`` is left empty (the tiles are timed as a
    :class:`CommandStream`, whose repeating stretches :func:`run_stream` skips).
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
    accumulate = np.tile(np.arange(k_tiles) > 0, n_tiles) & (not os_)
    if tiles <= 48:
        return timing_of(config, np.full(tiles, rows, dtype=np.int64), accumulate, m * k * n)
    zeros = np.zeros(tiles, dtype=np.int64)
    stream = CommandStream(kind=np.full(tiles, MATMUL, dtype=np.int64),
                           wait=np.zeros(tiles, dtype=bool),
                           count=np.full(tiles, rows, dtype=np.int64), memory=zeros,
                           dram_addr=zeros, accumulate=accumulate, lanes=zeros)
    return timing_of_stream(config, stream, m * k * n)
