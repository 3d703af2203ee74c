"""Cycle behaviour of the DMA engine and the DRAM model: what the timing model charges for a
LOAD, a STORE and the program fetch at start.

The DMA engine (:mod:`rtl.dma`) moves the ``words`` words of one command between an on-chip
memory and DRAM over an AXI4 bus of ``W = config.dram_width`` bytes per beat. Its rules,
cycle by cycle (cycle ``T`` is the one in which the controller hands it the command, so the
engine is active from ``T + 1``):

* **Bursts.** The transfer covers ``ceil(words * B / W)`` beats (``B`` the word's bytes in
  DRAM, :func:`qsim.program.dram_word_bytes`), cut into bursts at every multiple of
  ``max_burst * W`` bytes. A burst request (AR or AW) is issued in any cycle in which fewer
  than ``dma_outstanding`` bursts are in flight; the DRAM model always accepts it.
* **LOAD gearbox.** A byte buffer holds ``n`` bytes. In a cycle with ``n >= B`` the engine
  writes one word into the memory (``n -= B``); it accepts a read beat when the bytes left
  after that write plus ``W`` fit in ``B + W - 1`` bytes (``n += W``). The command ends in the
  cycle of its last word write.
* **STORE gearbox.** The engine reads one memory word per cycle while the buffer, counting a
  word still in the memory's one-cycle read pipeline, has room (``B + W - 1`` bytes); a word
  joins the buffer the cycle after its read. A write beat leaves when ``W`` bytes are
  buffered (or the final, partial beat once every word has joined) and its burst's request
  has been issued. The command ends in the cycle of its last write response.
* **DRAM model** (:mod:`rtl.dram_model`, latency ``L = config.dram_latency``). A read burst
  accepted in cycle ``t`` presents its first beat in cycle ``t + 1 + L`` at the earliest,
  one beat per cycle while the master accepts them, bursts in order. A write burst whose
  last beat is accepted in cycle ``t`` is answered in cycle ``t + 1 + L``.

The functions below simulate exactly these registers, one cycle at a time; the result
depends only on the command's shape, so it is memoised. The cosim tests compare it with the
RTL cycle for cycle (counters and total cycles). A long transfer repeats itself burst after
burst: once the registers relative to the cycle equal those of an earlier cycle, the
simulation jumps over the repeats that cannot reach the first or the last burst or word
(``skip``, on by default; tests/test_estimate_fast.py compares it with the walk).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from qsim.config import AcceleratorConfig
from qsim.program import dram_word_bytes

__all__ = ["Transfer", "transfer", "load_cycles", "store_cycles"]


@dataclass(frozen=True)
class Transfer:
    """One DMA command's cost: ``cycles`` from the take (cycle ``T``) to its last action
    (cycle ``T + cycles``), the data beats it moves and the bursts it issues."""

    cycles: int
    beats: int
    bursts: int


def _skippable(before: tuple, now: tuple, limits: tuple) -> int:
    """How many times the stretch from ``before`` to ``now`` (counters that only grow) can
    be repeated from ``now`` with no counter passing its limit; 0 without progress."""
    q = None
    for b, c, limit in zip(before, now, limits):
        if c < b:
            return 0
        if c > b:
            k = (limit - c) // (c - b)
            q = k if q is None else min(q, k)
    return max(q or 0, 0)


def _bursts(addr: int, beats: int, width: int, max_burst: int) -> list[int]:
    """Beats of each burst of a transfer of ``beats`` beats from byte ``addr``."""
    grid = max_burst * width
    out = []
    while beats:
        n = min(beats, (grid - addr % grid) // width)
        out.append(n)
        beats -= n
        addr += n * width
    return out


@lru_cache(maxsize=65536)
def load_cycles(words: int, word_bytes: int, width: int, addr_offset: int, latency: int,
                max_burst: int, outstanding: int, skip: bool = True) -> Transfer:
    """A LOAD of ``words`` words of ``word_bytes`` bytes from a DRAM address whose offset in
    the burst grid is ``addr_offset``; see the module docstring. ``skip``: jump over
    repeated stretches (:func:`_skippable`), else walk every cycle; the result is the same."""
    beats = -(-words * word_bytes // width)
    bursts = _bursts(addr_offset, beats, width, max_burst)
    cap = word_bytes + width - 1
    t = 0  # cycles since the take; the engine is active from t = 1
    issued = 0  # bursts requested
    in_flight = 0
    ar_due: list[int] = []  # per requested burst: earliest cycle of its first beat
    serving = -1  # burst whose beats the DRAM presents, -1: none
    serve_left = 0
    next_serve = 0  # next burst the DRAM model will serve
    n = 0
    left = words
    seen: dict = {}
    last = len(bursts) - 1
    while True:
        t += 1
        if skip:  # the registers relative to t (a burst due by t + 1 may be served)
            key = (in_flight, issued - next_serve, serving >= 0, serve_left, n,
                   *(max(d - t, 1) for d in ar_due[next_serve:]))
            now = (issued, next_serve, -left)
            hit = seen.get(key)
            # the stretch since `hit` served whole bursts only (not the first one), and the
            # skipped ones issue and serve neither the last burst nor the last word
            q = _skippable(hit[1], now, (last, last, -2)) if hit and hit[1][1] >= 1 else 0
            if q:
                dt = q * (t - hit[0])
                di, ds, dl = (q * (a - b) for a, b in zip(now, hit[1]))
                t += dt
                ar_due = [0] * (next_serve + ds) + [d + dt for d in ar_due[next_serve:]]
                issued, next_serve, left = issued + di, next_serve + ds, left - dl
                if serving >= 0:
                    serving += ds
                seen.clear()
                now = (issued, next_serve, -left)
            seen[key] = (t, now)
        # outputs of this cycle, from the registers
        rvalid = serving >= 0
        emit = n >= word_bytes and left > 0
        n_after = n - word_bytes if emit else n
        rready = n_after + width <= cap
        ar = issued < len(bursts) and in_flight < outstanding
        r_hs = rvalid and rready
        last_beat = r_hs and serve_left == 1
        if emit and left == 1:
            return Transfer(t, beats, len(bursts))
        # next state
        if ar:
            ar_due.append(t + 1 + latency)
            issued += 1
        in_flight += int(ar) - int(last_beat)
        n = n_after + (width if r_hs else 0)
        left -= int(emit)
        free = not rvalid or last_beat
        if r_hs:
            serve_left -= 1
        if free:
            serving = -1
            if next_serve < len(ar_due) - int(ar) and ar_due[next_serve] <= t + 1:
                serving, serve_left = next_serve, bursts[next_serve]
                next_serve += 1


@lru_cache(maxsize=65536)
def store_cycles(words: int, word_bytes: int, width: int, addr_offset: int, latency: int,
                 max_burst: int, outstanding: int, skip: bool = True) -> Transfer:
    """A STORE of ``words`` words of ``word_bytes`` bytes; see the module docstring and
    :func:`load_cycles` for ``skip``."""
    beats = -(-words * word_bytes // width)
    bursts = _bursts(addr_offset, beats, width, max_burst)
    cap = word_bytes + width - 1
    t = 0
    aw_issued = 0
    aw_open = 0  # requests issued whose response has not arrived
    credit = 0  # requests issued whose beats have not all been sent
    burst = 0  # burst of the next write beat
    in_burst = 0  # beats of it already sent
    beats_left = beats
    b_due: list[int] = []
    b_next = 0
    to_read = words
    inflight = False
    n = 0
    seen: dict = {}
    last = len(bursts) - 1
    while True:
        t += 1
        if skip:  # the registers relative to t (a response due by t is taken)
            key = (aw_open, credit, aw_issued - burst, in_burst, inflight, n,
                   *(max(d - t, 0) for d in b_due[b_next:]))
            now = (aw_issued, burst, b_next, -beats_left, -to_read)
            hit = seen.get(key)
            # the stretch since `hit` wrote whole bursts only (not the first one), and the
            # skipped ones issue and write neither the last burst nor the last beat or word
            q = (_skippable(hit[1], now, (last, last - 1, last, -1, -1))
                 if hit and hit[1][1] >= 1 else 0)
            if q:
                dt = q * (t - hit[0])
                da, db, dn, dbeats, dread = (q * (a - b) for a, b in zip(now, hit[1]))
                t += dt
                b_due = [0] * (b_next + dn) + [d + dt for d in b_due[b_next:]]
                aw_issued, burst, b_next = aw_issued + da, burst + db, b_next + dn
                beats_left, to_read = beats_left - dbeats, to_read - dread
                seen.clear()
                now = (aw_issued, burst, b_next, -beats_left, -to_read)
            seen[key] = (t, now)
        arrive = inflight
        all_in = to_read == 0 and not arrive
        wvalid = credit > 0 and beats_left > 0 and (n >= width or (all_in and n > 0))
        aw = aw_issued < len(bursts) and aw_open < outstanding
        b_hs = b_next < len(b_due) and b_due[b_next] <= t
        if b_hs and aw_open == 1 and aw_issued == len(bursts) and beats_left == 0:
            return Transfer(t, beats, len(bursts))
        wlast = wvalid and in_burst + 1 == bursts[burst]
        n_after = n - min(n, width) if wvalid else n
        n_next = n_after + (word_bytes if arrive else 0)
        rd = to_read > 0 and n_next + word_bytes <= cap
        # next state
        if wvalid:
            beats_left -= 1
            in_burst += 1
            if wlast:
                b_due.append(t + 1 + latency)
                burst += 1
                in_burst = 0
        credit += int(aw) - int(wlast)
        aw_open += int(aw) - int(b_hs)
        aw_issued += int(aw)
        b_next += int(b_hs)
        n = n_next
        inflight = rd
        to_read -= int(rd)


def transfer(config: AcceleratorConfig, store: bool, memory: str, dram_addr: int,
             words: int) -> Transfer:
    """Cost of one LOAD (``store`` false) or STORE of ``words`` words of ``memory`` (the
    simulations below are memoised by shape)."""
    fn = store_cycles if store else load_cycles
    return fn(words, dram_word_bytes(config, memory), config.dram_width,
              dram_addr % (config.max_burst * config.dram_width), config.dram_latency,
              config.max_burst, config.dma_outstanding)
