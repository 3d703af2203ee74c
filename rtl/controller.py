"""The controller that runs a Program from the command memory.

Three small engines work concurrently, handing commands forward through one-entry slots
(a fourth, the post-processing engine, runs REQUANT commands on its own):

* **fetch** reads the command memory into a two-entry queue: the synchronous read port's
  data (the memory's output, never decoded) and the fetch register behind it, which the
  engines decode. The word read moves into the fetch register when that is empty or its
  command is being taken, and a new read is issued whenever the read data moves on (or
  holds nothing), so after the first command each command is decodable the cycle after its
  predecessor's take (:data:`qsim.hw.CMD_FETCH_LATENCY`).
* **loader** takes a ``Matmul`` from the fetch queue, posts its streaming parameters into the
  stream slot, and reads the ``rows`` words of its weight tile, one per cycle, into the idle
  weight buffer of the array (alternating buffers 0 and 1).
* **streamer** takes the slot and issues one activation-memory read per cycle, each tagged
  with the buffer, accumulator address and accumulate flag that travel down the pipeline.
* **post-processing engine** (with a post-processing unit) takes a ``Requant`` once every
  earlier MATMUL has written its last accumulator word, reads the parameter word, then one
  accumulator word per cycle, each tagged with its activation address; it stays busy until
  the last result is written, and no command is taken while it is busy.

On an output-stationary configuration there is no weight loading: the loader only passes a
``Matmul`` into the stream slot, the streamer reads a weight word with every activation word,
takes the next tile only when its last issue will be ``qsim.hw.os_tile_spacing`` cycles after
the previous one's, and a **drain engine** emits the write-back metadata of a finished tile's
``R`` accumulator words, one per cycle, from the cycle after its last issue.

The timing rules these engines obey are written out in :mod:`qsim.timing`, which implements
them; the cosim tests prove the RTL follows them. Every delay they use is defined in
:mod:`qsim.hw`.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from qsim.config import AcceleratorConfig, RequantMode
from qsim.hw import COUNTER_BITS, buffer_release_delay, is_output_stationary, os_tile_spacing
from qsim.program import DRAM_ADDR_BITS, ERROR_CODES, MEMORY_IDS, CommandLayout, Opcode
from rtl.checks import require_config
from rtl.dma import sram_addr_bits, words_bits

__all__ = ["Controller", "pipeline_meta_layout", "post_meta_layout", "lane_layout",
           "tile_layout", "buffer_release_delay", "COUNTER_BITS"]


def pipeline_meta_layout(config: AcceleratorConfig) -> data.StructLayout:
    """What travels down the pipeline with each activation row."""
    return data.StructLayout({
        "valid": 1,
        "accumulate": 1,
        "addr": config.acc_addr_bits,
    })


def post_meta_layout(config: AcceleratorConfig) -> data.StructLayout:
    """What travels with each accumulator word read by the post-processing engine."""
    return data.StructLayout({"valid": 1, "last": 1, "addr": config.act_addr_bits})


def lane_layout(config: AcceleratorConfig) -> data.StructLayout:
    """A Requant's lane selection, held for the whole command."""
    fields = CommandLayout(config).fields
    bits = fields["lanes"].width if "lanes" in fields else 1  # no post-processing unit
    return data.StructLayout({"src": bits, "dst": bits, "count": bits})


def tile_layout(config: AcceleratorConfig) -> data.StructLayout:
    """A tile's streaming parameters: what the loader hands the streamer through the slot.

    While streaming, ``act`` and ``acc`` advance and ``rows`` counts the rows left; ``run``
    is the first activation address of the current run and ``left`` the rows left in it.
    """
    extra = {"w": config.weight_addr_bits} if is_output_stationary(config) else {}
    return data.StructLayout({"buf": 1, "accumulate": 1, "unsigned": 1, "acc": config.acc_addr_bits,
                              **extra, **address_layout(config).members})


def address_layout(config: AcceleratorConfig) -> data.StructLayout:
    """An activation address generator's state (:func:`qsim.program.act_addresses`)."""
    layout = CommandLayout(config)
    return data.StructLayout({
        "act": config.act_addr_bits,
        "run": config.act_addr_bits,
        "rows": layout["rows"].width,
        "left": layout["inner"].width,
        "inner": layout["inner"].width,
        "step": layout["step"].width,
        "stride": layout["stride"].width,
    })


def _load_addresses(m: Module, state, field) -> None:
    """Start an address generator on the command in ``field``."""
    m.d.sync += [state.act.eq(field("act_addr")), state.run.eq(field("act_addr")),
                 state.rows.eq(field("rows")), state.left.eq(field("inner")),
                 state.inner.eq(field("inner")), state.step.eq(field("step")),
                 state.stride.eq(field("stride"))]


def _advance_addresses(m: Module, state) -> None:
    """Next row: ``step`` on within a run, ``stride`` from the run's start to the next run."""
    next_run = state.run + state.stride
    with m.If((state.inner != 0) & (state.left == 1)):
        m.d.sync += [state.act.eq(next_run), state.run.eq(next_run), state.left.eq(state.inner)]
    with m.Else():
        m.d.sync += [state.act.eq(state.act + state.step), state.left.eq(state.left - 1)]
    m.d.sync += state.rows.eq(state.rows - 1)


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
    issue_unsigned : Out(1)
        The row issued this cycle holds unsigned activations.
    issue_last : Out(1)
        Output-stationary: the row issued this cycle is its tile's last reduction step.
    weight_addr, weight_en : Out
        Weight-memory read; ``weight_en`` high loads row ``load_row`` into buffer ``load_buf``
        (weight-stationary), or is the weight word of the step issued this cycle
        (output-stationary, where ``issue`` is the controller's drain engine: one accumulator
        word per cycle for ``R`` cycles after a tile's last step).
    load_row : Out(range(rows)), load_buf : Out(1)
    write_valid : In(1)
        The write-back stage writes an accumulator word this cycle (for draining).
    matmul_taken : Out(1)
        A MATMUL command was taken this cycle.
    requant_taken : Out(1)
        A REQUANT command was taken this cycle.
    param_addr, param_en : Out
        Parameter-memory read (all three memories), at the take of a REQUANT; the read data
        is held for the whole command.
    post_acc_addr, post_read : Out
        Accumulator read of the post-processing engine (never at the same time as the
        write-back stage's reads: a REQUANT waits for the MATMULs to drain).
    post_meta : Out(post_meta_layout)
        Activation address of the word read this cycle, and whether it is the command's last.
    lanes : Out(lane_layout)
        The running REQUANT's lane selection.
    post_done : In(1)
        The post-processing engine's last write happens this cycle.
    wait_array, wait_drain, wait_ppu, wait_dma : Out(1)
        A fetched command is not taken this cycle, and why (see :data:`qsim.hw.COUNTER_HELP`).
    cmd_base, cmd_count : In
        With a bus interface: where the program is in DRAM and how many command words the
        DMA engine fetches into the command memory at ``start``, before the first command.
    dma_* : the DMA engine's command (``dma_start`` takes it) and state.
    load_taken, store_taken : Out(1)
        A LOAD / STORE command was taken this cycle.
    error_code, error_cmd : Out
        Why the run stopped (:data:`qsim.program.ERROR_CODES`) and at which command
        (``0xffffffff``: the program fetch).
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
            "issue_unsigned": Out(1),
            "issue_last": Out(1),
            "weight_addr": Out(config.weight_addr_bits),
            "weight_en": Out(1),
            "load_row": Out(range(config.rows)),
            "load_buf": Out(1),
            "write_valid": In(1),
            "matmul_taken": Out(1),
            "requant_taken": Out(1),
            "param_addr": Out(config.param_addr_bits),
            "param_en": Out(1),
            "post_acc_addr": Out(config.acc_addr_bits),
            "post_read": Out(1),
            "post_meta": Out(post_meta_layout(config)),
            "lanes": Out(lane_layout(config)),
            "post_done": In(1),
            "wait_array": Out(1),
            "wait_drain": Out(1),
            "wait_ppu": Out(1),
            "wait_dma": Out(1),
            # bus interface (config.dram_width > 0): the DMA engine's command side
            "cmd_base": In(DRAM_ADDR_BITS),
            "cmd_count": In(32),
            "dma_start": Out(1),
            "dma_store": Out(1),
            "dma_mem": Out(3),
            "dma_dram_addr": Out(DRAM_ADDR_BITS),
            "dma_sram_addr": Out(sram_addr_bits(config)),
            "dma_words": Out(words_bits(config)),
            "dma_busy": In(1),
            "dma_done": In(1),
            "dma_fault": In(1),
            "load_taken": Out(1),
            "store_taken": Out(1),
            "error_code": Out(4),
            "error_cmd": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        lay = self.layout

        # the fetch register: the command the engines decode
        fq = Signal(lay.width)

        def field(name):
            f = lay[name]
            return fq[f.offset : f.offset + f.width]

        busy = self.busy
        halted = Signal()
        # fetch
        pc = Signal(cfg.cmd_addr_bits)
        rd_valid = Signal()  # the command memory's read data holds the next command
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

        # post-processing engine
        has_ppu = cfg.requant is not RequantMode.NONE
        post_busy = Signal()
        post_reading = Signal()
        post_acc = Signal(cfg.acc_addr_bits)
        post = Signal(address_layout(cfg))

        opcode = field("opcode")
        is_matmul = opcode == int(Opcode.MATMUL)
        is_halt = opcode == int(Opcode.HALT)
        is_requant = (opcode == int(Opcode.REQUANT)) if has_ppu else Const(0, 1)

        # bus interface: program fetch at start, LOAD/STORE through the DMA engine
        dram = cfg.has_dram
        prologue = Signal()
        fq_index = Signal(32)  # index of the command in the fetch register
        rd_index = Signal(32)  # ... and of the one in the read data
        dma_index = Signal(32)  # index of the LOAD/STORE the DMA engine runs
        dma_act_load = Signal()  # ... and whether it writes the activation memory
        if dram:
            is_load = opcode == int(Opcode.LOAD)
            is_store = opcode == int(Opcode.STORE)
            wait_bit = field("wait")
            dma_mem = field("mem")
            misaligned = field("dram_addr")[: (cfg.dram_width - 1).bit_length()] != 0
        else:
            is_load = is_store = wait_bit = misaligned = Const(0, 1)
            dma_mem = Const(0, 3)
        is_dma = is_load | is_store
        dma_free = ~self.dma_busy | self.dma_done
        loads_act = is_load & (dma_mem == MEMORY_IDS["act"])

        os_ = is_output_stationary(cfg)
        spacing = os_tile_spacing(cfg)
        # output-stationary: the drain engine (R accumulator words per tile) and the cycles
        # the next tile's last issue must still wait for (os_tile_spacing)
        drain_left = Signal(range(cfg.rows + 1))
        drain = Signal(pipeline_meta_layout(cfg))
        hold = Signal(range(spacing + 1))

        last_row = active & (cur.rows == 1)
        consume = slot_valid & (~active | last_row)
        if os_:
            consume = consume & (slot.rows >= Mux(last_row, spacing, hold))
        loader_free = ~loading | (load_row == cfg.rows - 1)
        slot_free = ~slot_valid | consume
        buffer_free = ~buf_busy.bit_select(next_buf, 1)
        drained = ~loading & ~slot_valid & ~active & (inflight == self.write_valid)
        if os_:
            drained = drained & (drain_left == 0)
        # what a fetched command needs: the post-processing unit idle (every command but a
        # LOAD/STORE, which needs it only to write the activation memory or with wait), the
        # DMA engine idle (LOAD/STORE; any command with wait; a REQUANT while a LOAD writes
        # the activation memory), every compute command finished (REQUANT; LOAD/STORE with wait)
        needs_post = ~is_dma | loads_act | wait_bit
        needs_dma = is_dma | wait_bit | (is_requant & dma_act_load)
        fetched = busy & fq_valid & ~halted & ~prologue
        can_take = fetched & loader_free & ~post_busy & (~wait_bit | dma_free)
        take_matmul = can_take & is_matmul & slot_free
        if not os_:
            take_matmul = take_matmul & buffer_free
        take_requant = can_take & is_requant & drained & ~(dma_act_load & ~dma_free)
        take_dma = (fetched & is_dma & dma_free & ~(needs_post & post_busy)
                    & ~(wait_bit & ~(drained & ~post_busy)))
        take_stop = (can_take & ~is_matmul & ~is_requant & ~is_dma) | (take_dma & misaligned)
        take_dma = take_dma & ~misaligned
        take = take_matmul | take_requant | take_stop | take_dma
        waiting = fetched & ~take
        # the read data moves into the fetch register; a new read refills it
        advance = rd_valid & (~fq_valid | take) & ~take_stop
        read = busy & ~halted & ~prologue & ~take_stop & (~rd_valid | advance)
        if cfg.cmd_mem_words & (cfg.cmd_mem_words - 1):  # the read-ahead stays in range
            read = read & (pc != cfg.cmd_mem_words)
        stalled_post = waiting & needs_post & post_busy
        stalled_dma = waiting & ~stalled_post & needs_dma & ~dma_free

        if os_:  # the drain engine's rows, and a weight word with every activation word
            issue = [self.issue.eq(drain), self.issue.valid.eq(drain_left != 0),
                     self.issue_last.eq(last_row)]
            weights = [self.weight_addr.eq(cur.w), self.weight_en.eq(active)]
        else:
            issue = [self.issue.valid.eq(active), self.issue.accumulate.eq(cur.accumulate),
                     self.issue.addr.eq(cur.acc)]
            weights = [self.weight_addr.eq(load_base + load_row), self.weight_en.eq(loading)]
        m.d.comb += [
            self.launch.eq(~busy & self.start),
            self.cmd_addr.eq(pc),
            self.cmd_en.eq(read),
            self.act_addr.eq(cur.act),
            self.act_en.eq(active),
            *issue,
            self.issue_buf.eq(cur.buf),
            self.issue_unsigned.eq(cur.unsigned),
            *weights,
            self.load_row.eq(load_row),
            self.load_buf.eq(load_buf),
            self.matmul_taken.eq(take_matmul),
            self.requant_taken.eq(take_requant),
            self.wait_ppu.eq(stalled_post),
            self.wait_dma.eq(stalled_dma),
            self.wait_drain.eq(waiting & ~stalled_post & ~stalled_dma & (is_requant | is_dma)),
            self.wait_array.eq(waiting & ~stalled_post & ~stalled_dma & ~is_requant & ~is_dma),
            self.load_taken.eq(take_dma & is_load),
            self.store_taken.eq(take_dma & is_store),
        ]
        if has_ppu:
            m.d.comb += [
                self.param_addr.eq(field("param_addr")),
                self.param_en.eq(take_requant),
                self.post_acc_addr.eq(post_acc),
                self.post_read.eq(post_reading),
                self.post_meta.valid.eq(post_reading),
                self.post_meta.last.eq(post.rows == 1),
                self.post_meta.addr.eq(post.act),
            ]

        finish = (busy & halted & ~active & ~slot_valid & (inflight == self.write_valid)
                  & ~post_busy & dma_free)
        if os_:
            finish = finish & (drain_left == 0)

        bad_program = Signal()
        if dram:
            # the program fetch at start, and LOAD/STORE commands, go to the DMA engine
            width_bits = (cfg.dram_width - 1).bit_length()
            m.d.comb += bad_program.eq((self.cmd_count == 0) | (self.cmd_count > cfg.cmd_mem_words)
                                       | (self.cmd_base[:width_bits] != 0))
            m.d.comb += [
                self.dma_start.eq((self.launch & ~bad_program) | take_dma),
                self.dma_store.eq(~self.launch & is_store),
                self.dma_mem.eq(Mux(self.launch, MEMORY_IDS["cmd"], dma_mem)),
                self.dma_dram_addr.eq(Mux(self.launch, self.cmd_base, field("dram_addr"))),
                self.dma_sram_addr.eq(Mux(self.launch, 0, field("sram_addr"))),
                self.dma_words.eq(Mux(self.launch, self.cmd_count, field("words"))),
            ]
            with m.If(self.launch):
                m.d.sync += [prologue.eq(~bad_program), dma_index.eq(0xFFFFFFFF),
                             dma_act_load.eq(0), self.error_code.eq(0), self.error_cmd.eq(0)]
                with m.If(bad_program):
                    m.d.sync += [self.error_code.eq(ERROR_CODES["program"]),
                                 self.error_cmd.eq(0xFFFFFFFF)]
            with m.Elif(busy):
                with m.If(prologue & self.dma_done):
                    m.d.sync += prologue.eq(0)
                with m.If(take_dma):
                    m.d.sync += [dma_index.eq(fq_index), dma_act_load.eq(loads_act)]
                with m.If(self.dma_fault & (self.error_code == 0)):
                    m.d.sync += [halted.eq(1), self.error.eq(1),
                                 self.error_code.eq(ERROR_CODES["bus"]),
                                 self.error_cmd.eq(dma_index)]
                with m.If(take_stop & (self.error_code == 0) & ~is_halt):
                    m.d.sync += [self.error_code.eq(Mux(is_dma, ERROR_CODES["misaligned"],
                                                        ERROR_CODES["opcode"])),
                                 self.error_cmd.eq(fq_index)]
        else:
            with m.If(self.launch):
                m.d.sync += [self.error_code.eq(0), self.error_cmd.eq(0)]
            with m.Elif(busy & take_stop & ~is_halt):
                m.d.sync += [self.error_code.eq(ERROR_CODES["opcode"]), self.error_cmd.eq(fq_index)]
        with m.If(busy & read):
            m.d.sync += rd_index.eq(pc)
        with m.If(busy & advance):
            m.d.sync += [fq.eq(self.cmd_data), fq_index.eq(rd_index)]

        with m.If(self.launch):
            m.d.sync += [
                busy.eq(1), self.done.eq(0), self.error.eq(bad_program), halted.eq(bad_program),
                pc.eq(0), fq_valid.eq(0), rd_valid.eq(0),
                loading.eq(0), next_buf.eq(0), slot_valid.eq(0), active.eq(0),
                buf_busy.eq(0), inflight.eq(0), post_busy.eq(0), post_reading.eq(0),
            ]
            if os_:
                m.d.sync += [drain_left.eq(0), hold.eq(0)]
            m.d.sync += [count.eq(0) for count in buf_count]
        with m.Elif(busy):
            # fetch
            with m.If(read):
                m.d.sync += [pc.eq(pc + 1), rd_valid.eq(1)]
            with m.Elif(advance):
                m.d.sync += rd_valid.eq(0)
            with m.If(advance):
                m.d.sync += fq_valid.eq(1)
            with m.Elif(take):
                m.d.sync += fq_valid.eq(0)
            with m.If(take_stop):
                m.d.sync += [halted.eq(1), self.error.eq(~is_halt)]

            # loader (output-stationary: only the accumulator buffer alternates)
            if os_:
                with m.If(take_matmul):
                    m.d.sync += next_buf.eq(~next_buf)
            else:
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
                    slot_valid.eq(1), slot.acc.eq(field("acc_addr")),
                    slot.accumulate.eq(field("accumulate")), slot.buf.eq(next_buf),
                    slot.unsigned.eq(field("act_unsigned")),
                ]
                if os_:
                    m.d.sync += slot.w.eq(field("weight_addr"))
                _load_addresses(m, slot, field)
            with m.Elif(consume):
                m.d.sync += slot_valid.eq(0)

            # streamer
            with m.If(consume):
                m.d.sync += [active.eq(1), cur.eq(slot)]
            with m.Elif(last_row):
                m.d.sync += active.eq(0)
            with m.Elif(active):
                if os_:
                    m.d.sync += cur.w.eq(cur.w + 1)
                else:
                    m.d.sync += cur.acc.eq(cur.acc + 1)
                _advance_addresses(m, cur)

            if os_:
                # drain engine: the R accumulator words of a tile, one per cycle, from the
                # cycle after its last issue; the next tile's last issue is `spacing` later
                with m.If(last_row):
                    m.d.sync += [drain_left.eq(cfg.rows), drain.addr.eq(cur.acc),
                                 drain.accumulate.eq(cur.accumulate), hold.eq(spacing - 1)]
                with m.Else():
                    with m.If(drain_left != 0):
                        m.d.sync += [drain_left.eq(drain_left - 1), drain.addr.eq(drain.addr + 1)]
                    with m.If(hold != 0):
                        m.d.sync += hold.eq(hold - 1)

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

            m.d.sync += inflight.eq(inflight + (self.issue.valid if os_ else active) - self.write_valid)

            if has_ppu:
                with m.If(take_requant):
                    m.d.sync += [
                        post_busy.eq(1), post_reading.eq(1), post_acc.eq(field("acc_addr")),
                        self.lanes.src.eq(field("src_lane")), self.lanes.dst.eq(field("dst_lane")),
                        self.lanes.count.eq(field("lanes")),
                    ]
                    _load_addresses(m, post, field)
                with m.Elif(post_reading):
                    with m.If(post.rows == 1):
                        m.d.sync += post_reading.eq(0)
                    m.d.sync += post_acc.eq(post_acc + 1)
                    _advance_addresses(m, post)
                with m.If(self.post_done):
                    m.d.sync += post_busy.eq(0)

            with m.If(finish):
                m.d.sync += [busy.eq(0), self.done.eq(1)]
        return m
