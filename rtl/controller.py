"""The controller that runs a Program from the command memory.

Three small engines work concurrently, handing commands forward through one-entry slots:

* **fetch** reads the command memory. Its synchronous read port's data register is the
  one-entry fetch queue: a new read is issued when the queue is empty or its command is
  being taken.
* **loader** takes a ``Matmul`` from the fetch queue, posts its streaming parameters into the
  stream slot, and reads the ``rows`` words of its weight tile, one per cycle, into the idle
  weight buffer of the array (alternating buffers 0 and 1).
* **streamer** takes the slot and issues one activation-memory read per cycle, each tagged
  with the buffer, accumulator address and accumulate flag that travel down the pipeline.

Timing rules (cycle 0 is the first cycle with ``busy`` high; R = rows, C = cols; for the
i-th Matmul, T = take cycle, S = first activation issue, E = S + rows_i; K = max(C - 3, 0))::

    T_i = max(T_{i-1} + R,  S_{i-1} - 1,  E_{i-2} + K)       T_0 = 1
    S_i = max(E_{i-1}, T_i + 2)
    last busy cycle = max(E_last - 1 + R + C, T_halt + 1),   T_halt = T_last + R (1 if none)

:mod:`qsim.timing` implements exactly these rules; the cosim tests prove the RTL follows them.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from qsim.config import AcceleratorConfig
from rtl.checks import require_config
from qsim.program import CommandLayout, Opcode

__all__ = ["Controller", "pipeline_meta_layout", "tile_layout", "buffer_release_delay",
           "COUNTER_BITS"]

COUNTER_BITS = 48


def pipeline_meta_layout(config: AcceleratorConfig) -> data.StructLayout:
    """What travels down the pipeline with each activation row."""
    return data.StructLayout({
        "valid": 1,
        "accumulate": 1,
        "addr": config.acc_addr_bits,
    })


def tile_layout(config: AcceleratorConfig) -> data.StructLayout:
    """A tile's streaming parameters: what the loader hands the streamer through the slot.

    While streaming, ``act`` and ``acc`` advance and ``rows`` counts the rows left.
    """
    return data.StructLayout({
        "act": config.act_addr_bits,
        "acc": config.acc_addr_bits,
        "rows": CommandLayout(config)["rows"].width,
        "accumulate": 1,
        "buf": 1,
    })


def buffer_release_delay(config: AcceleratorConfig) -> int:
    """Cycles after a tile's last issue before its weight buffer may be reloaded.

    The last activation of a tile reaches PE (r, c) ``1 + r + c`` cycles after its issue; the
    loader writes row ``r`` of a buffer ``2 + r`` cycles after taking the command, visible one
    cycle later. The write must not become visible before the last use in column C - 1.
    """
    return max(config.cols - 3, 0)


class Controller(wiring.Component):
    """Fetch, weight loading, activation streaming and completion for one accelerator.

    Ports
    -----
    start : In(1)
        Pulse while idle to run the program from command word 0.
    busy, done : Out(1)
        ``busy`` is high from the cycle after ``start`` until the last accumulator write;
        ``done`` rises with the fall of ``busy`` and stays high until the next ``start``.
    error : Out(1)
        The program stopped at a word whose opcode is neither MATMUL nor HALT.
    launch : Out(1)
        ``start`` accepted this cycle (counters clear at this edge).
    cmd_addr, cmd_en : Out
        Command-memory read port (data ``cmd_data`` one cycle later, held while ``cmd_en`` is low).
    cmd_data : In(layout.width)
    act_addr, act_en : Out
        Activation-memory read; ``act_en`` high is one issued row.
    issue : Out(pipeline_meta_layout)
        Metadata of the row issued this cycle (``valid`` equals ``act_en``).
    issue_buf : Out(1)
        Weight buffer of the row issued this cycle.
    weight_addr, weight_en : Out
        Weight-memory read; ``weight_en`` high loads row ``load_row`` into buffer ``load_buf``.
    load_row : Out(range(rows)), load_buf : Out(1)
    write_valid : In(1)
        The write-back stage writes an accumulator word this cycle (for draining).
    matmul_taken : Out(1)
        A MATMUL command was taken this cycle.
    """

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = require_config(self, config)
        self.layout = CommandLayout(config)
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "launch": Out(1),
            "cmd_addr": Out(config.cmd_addr_bits),
            "cmd_en": Out(1),
            "cmd_data": In(self.layout.width),
            "act_addr": Out(config.act_addr_bits),
            "act_en": Out(1),
            "issue": Out(pipeline_meta_layout(config)),
            "issue_buf": Out(1),
            "weight_addr": Out(config.weight_addr_bits),
            "weight_en": Out(1),
            "load_row": Out(range(config.rows)),
            "load_buf": Out(1),
            "write_valid": In(1),
            "matmul_taken": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        lay = self.layout

        def field(name):
            f = lay[name]
            return self.cmd_data[f.offset : f.offset + f.width]

        busy = self.busy
        halted = Signal()
        # fetch
        pc = Signal(cfg.cmd_addr_bits)
        fq_valid = Signal()
        # loader
        loading = Signal()
        load_row = Signal(range(cfg.rows))
        load_base = Signal(cfg.weight_addr_bits)
        load_buf = Signal()
        next_buf = Signal()
        # stream slot (loader -> streamer) and the streamer's current tile
        slot_valid = Signal()
        slot = Signal(tile_layout(cfg))
        active = Signal()
        cur = Signal(tile_layout(cfg))
        # weight buffers in use, and their release countdowns
        buf_busy = Signal(2)
        release = buffer_release_delay(cfg)
        buf_count = [Signal(range(release + 1), name=f"buf{b}_release")
                     for b in range(2)] if release else []
        # rows issued but not yet written back
        inflight = Signal(range(cfg.rows + cfg.cols + 4))

        opcode = field("opcode")
        is_matmul = opcode == int(Opcode.MATMUL)
        is_halt = opcode == int(Opcode.HALT)

        last_row = active & (cur.rows == 1)
        consume = slot_valid & (~active | last_row)
        loader_free = ~loading | (load_row == cfg.rows - 1)
        slot_free = ~slot_valid | consume
        buffer_free = ~buf_busy.bit_select(next_buf, 1)
        can_take = busy & fq_valid & ~halted & loader_free
        take_matmul = can_take & is_matmul & slot_free & buffer_free
        take_stop = can_take & ~is_matmul
        take = take_matmul | take_stop

        m.d.comb += [
            self.launch.eq(~busy & self.start),
            self.cmd_addr.eq(pc),
            self.cmd_en.eq(busy & ~halted & ~take_stop & (~fq_valid | take)),
            self.act_addr.eq(cur.act),
            self.act_en.eq(active),
            self.issue.valid.eq(active),
            self.issue.accumulate.eq(cur.accumulate),
            self.issue.addr.eq(cur.acc),
            self.issue_buf.eq(cur.buf),
            self.weight_addr.eq(load_base + load_row),
            self.weight_en.eq(loading),
            self.load_row.eq(load_row),
            self.load_buf.eq(load_buf),
            self.matmul_taken.eq(take_matmul),
        ]

        finish = busy & halted & ~active & ~slot_valid & (inflight == self.write_valid)

        with m.If(self.launch):
            m.d.sync += [
                busy.eq(1), self.done.eq(0), self.error.eq(0), halted.eq(0),
                pc.eq(0), fq_valid.eq(0),
                loading.eq(0), next_buf.eq(0), slot_valid.eq(0), active.eq(0),
                buf_busy.eq(0), inflight.eq(0),
            ]
            m.d.sync += [count.eq(0) for count in buf_count]
        with m.Elif(busy):
            # fetch
            with m.If(self.cmd_en):
                m.d.sync += [pc.eq(pc + 1), fq_valid.eq(1)]
            with m.Elif(take):
                m.d.sync += fq_valid.eq(0)
            with m.If(take_stop):
                m.d.sync += [halted.eq(1), self.error.eq(~is_halt)]

            # loader
            with m.If(take_matmul):
                m.d.sync += [
                    loading.eq(1), load_row.eq(0), load_base.eq(field("weight_addr")),
                    load_buf.eq(next_buf), next_buf.eq(~next_buf),
                ]
            with m.Elif(loading):
                with m.If(load_row == cfg.rows - 1):
                    m.d.sync += loading.eq(0)
                with m.Else():
                    m.d.sync += load_row.eq(load_row + 1)

            # slot
            with m.If(take_matmul):
                m.d.sync += [
                    slot_valid.eq(1), slot.act.eq(field("act_addr")), slot.acc.eq(field("acc_addr")),
                    slot.rows.eq(field("rows")), slot.accumulate.eq(field("accumulate")),
                    slot.buf.eq(next_buf),
                ]
            with m.Elif(consume):
                m.d.sync += slot_valid.eq(0)

            # streamer
            with m.If(consume):
                m.d.sync += [active.eq(1), cur.eq(slot)]
            with m.Elif(last_row):
                m.d.sync += active.eq(0)
            with m.Elif(active):
                m.d.sync += [cur.act.eq(cur.act + 1), cur.acc.eq(cur.acc + 1), cur.rows.eq(cur.rows - 1)]

            # weight buffers: busy from the take until `release` cycles after the last issue
            for b in range(2):
                released = last_row & (cur.buf == b)
                with m.If(take_matmul & (next_buf == b)):
                    m.d.sync += buf_busy[b].eq(1)
                with m.Elif(released):
                    if release == 0:
                        m.d.sync += buf_busy[b].eq(0)
                    else:
                        m.d.sync += buf_count[b].eq(release)
                if release:
                    with m.Elif(buf_count[b] != 0):
                        m.d.sync += buf_count[b].eq(buf_count[b] - 1)
                        with m.If(buf_count[b] == 1):
                            m.d.sync += buf_busy[b].eq(0)

            m.d.sync += inflight.eq(inflight + active - self.write_valid)

            with m.If(finish):
                m.d.sync += [busy.eq(0), self.done.eq(1)]
        return m
