"""The whole accelerator: memories, controller, skewed array, write-back and counters."""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, ResetSignal, Shape, Signal, signed, unsigned
from amaranth.hdl import MemoryData
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from qsim.config import AcceleratorConfig, RequantMode
from qsim.hw import (COUNTER_BITS, COUNTERS, array_input_bits, is_output_stationary, memory_names,
                     ppu_latency, write_meta_delay)
from qsim.program import QCTL_FORMAT, CommandLayout
from rtl.array import make_array
from rtl.checks import require_config
from rtl.controller import Controller, pipeline_meta_layout, post_meta_layout
from rtl.delay import DelayLines
from rtl.pe import pe_shapes
from rtl.ppu import PostProcessor
from rtl.writeback import WriteBack
from rtl.axi import axi4, axi_lite
from rtl.csr import CSR_ADDR_BITS, CsrBlock
from rtl.dma import DmaEngine
from qsim.program import DRAM_ADDR_BITS, MEMORY_IDS

__all__ = ["Accelerator", "COUNTERS", "MEMORY_NAMES"]

#: Memory instance names of a configuration without a post-processing unit (see
#: :func:`qsim.hw.memory_names`, the definition).
MEMORY_NAMES = memory_names(AcceleratorConfig())


class Accelerator(wiring.Component):
    """INT8/INT4 systolic accelerator for one :class:`AcceleratorConfig`.

    The pipeline below is the weight-stationary one; for the output-stationary dataflow
    (``config.dataflow``) see :class:`rtl.array.OutputStationaryArray` and
    :func:`qsim.hw.os_write_latency`: weights stream with the activations (skewed by column),
    and the controller's drain engine sends each finished tile's R accumulator words down
    the same deskew and write-back stages.

    The host fills the four memories, pulses ``start`` and waits for ``done``. The pipeline
    from an activation-memory read issued at cycle ``s`` to its accumulator write is::

        s            act read issued (controller)
        s+1          act word out of memory -> register (sign/zero extension)
        s+2          input skew (row r delayed r cycles)
        s+2+r+c      activation at PE (r, c)
        s+3+r+c      its product in the PE's product register
        s+3+R+c      column c sum leaves the array -> deskew (C-1-c cycles)
        s+R+C        accumulator read (if accumulating)
        s+R+C+1      accumulator word out of memory -> register
        s+R+C+2      accumulator write

    Weight rows follow the same two cycles of read latency into their buffers, and the
    command memory's read data is registered before the controller decodes it
    (:data:`qsim.hw.OPERAND_READ_LATENCY`, :data:`qsim.hw.CMD_FETCH_LATENCY`).

    With a post-processing unit, a REQUANT's accumulator read issued at cycle ``p`` is
    written into the activation memory at ``p + D`` (``D = qsim.hw.ppu_latency``: one cycle of
    memory latency, then the unit's stages), through lane enables and a lane rotation from
    ``src_lane`` to ``dst_lane``.

    Ports
    -----
    start : In(1)
    busy, done, error : Out(1)
        See :class:`rtl.controller.Controller`.
    <counter> : Out(COUNTER_BITS) for each name in :data:`qsim.hw.COUNTERS`
    """

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = require_config(self, config)
        self.layout = CommandLayout(config)
        members = {"start": In(1), "busy": Out(1), "done": Out(1), "error": Out(1)}
        members.update({name: Out(COUNTER_BITS) for name in COUNTERS})
        if config.has_dram:
            members.update({"csr": In(axi_lite(CSR_ADDR_BITS, 32)),
                            "mem": Out(axi4(DRAM_ADDR_BITS, 8 * config.dram_width)),
                            "irq": Out(1)})
        super().__init__(members)
        cols = config.cols
        #: Internal signals worth watching in a simulation trace, by name; filled in when the
        #: design is elaborated (see :mod:`qsim.cosim.trace`).
        self.probes: dict[str, object] = {}
        #: Contents of each memory, keyed like :data:`MEMORY_NAMES`; simulators load them here.
        self.memories = {
            "act": MemoryData(shape=data.ArrayLayout(signed(config.input_format.bits),
                                                     config.act_lanes),
                              depth=config.act_mem_words, init=[]),
            "weight": MemoryData(shape=data.ArrayLayout(signed(config.weight_format.bits),
                                                        config.weight_lanes),
                                 depth=config.weight_mem_words, init=[]),
            "acc": MemoryData(shape=data.ArrayLayout(signed(config.acc_bits), cols),
                              depth=config.acc_mem_words, init=[]),
            "cmd": MemoryData(shape=unsigned(self.layout.width), depth=config.cmd_mem_words, init=[]),
        }
        if config.requant is not RequantMode.NONE:
            for key, shape in (("bias", signed(32)), ("scale", signed(32)),
                               ("qctl", unsigned(QCTL_FORMAT.bits))):
                self.memories[key] = MemoryData(shape=data.ArrayLayout(shape, cols),
                                                depth=config.param_mem_words, init=[])

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        rows, cols = cfg.rows, cfg.cols
        names = memory_names(cfg)
        has_ppu = cfg.requant is not RequantMode.NONE
        mems = {key: memory.Memory(self.memories[key]) for key in names}
        for key, mem in mems.items():
            m.submodules[names[key]] = mem
        act_mem, weight_mem, acc_mem, cmd_mem = (mems[k] for k in ("act", "weight", "acc", "cmd"))
        act_rd = act_mem.read_port()
        weight_rd = weight_mem.read_port()
        cmd_rd = cmd_mem.read_port()
        acc_wr = acc_mem.write_port()
        acc_rd = acc_mem.read_port()  # the write-back forwards recent writes
        dram = cfg.has_dram
        act_wr = act_mem.write_port(granularity=1) if (has_ppu or dram) else None

        m.submodules.controller = ctrl = Controller(cfg)
        p = cfg.products_per_pe
        os_ = is_output_stationary(cfg)
        a_shape, w_shape = pe_shapes(array_input_bits(cfg), cfg.weight_format.bits, p)
        m.submodules.act_skew = act_skew = DelayLines(a_shape, range(rows))
        m.submodules.sel_skew = sel_skew = DelayLines(1, range(rows))
        m.submodules.array = array = make_array(cfg)
        m.submodules.deskew = deskew = DelayLines(signed(cfg.acc_bits), reversed(range(cols)))
        m.submodules.meta_delay = meta_delay = DelayLines(pipeline_meta_layout(cfg),
                                                          [write_meta_delay(cfg)])
        m.submodules.writeback = wb = WriteBack(cfg)

        m.d.comb += [
            self.busy.eq(ctrl.busy),
            self.done.eq(ctrl.done),
            self.error.eq(ctrl.error),
            cmd_rd.addr.eq(ctrl.cmd_addr),
            cmd_rd.en.eq(ctrl.cmd_en),
            ctrl.cmd_data.eq(cmd_rd.data),
            act_rd.addr.eq(ctrl.act_addr),
            act_rd.en.eq(ctrl.act_en),
            weight_rd.addr.eq(ctrl.weight_addr),
            weight_rd.en.eq(ctrl.weight_en),
        ]

        # Activations: one cycle of memory latency, a register, then the triangular skew.
        issue_valid = Signal()
        issue_buf = Signal()
        issue_unsigned = Signal()
        m.d.sync += [issue_valid.eq(ctrl.act_en), issue_buf.eq(ctrl.issue_buf),
                     issue_unsigned.eq(ctrl.issue_unsigned)]
        # Each lane of the word read, zero- or sign-extended by one bit, or zero if nothing was
        # read. Written as two synchronous clears (the data bits: reset or no read; the
        # extension bit: also for unsigned activations), which Yosys puts on the ECP5
        # flip-flops' set/reset inputs: the only logic left after the block RAM output (5.83 ns
        # after the clock at speed grade 6) is the multiplexer of a memory several blocks deep.
        a_word = Signal(data.ArrayLayout(a_shape, rows), reset_less=True)
        sel_word = Signal()
        clear_data, clear_ext = Signal(), Signal()
        m.d.comb += [clear_data.eq(ResetSignal("sync") | ~issue_valid),
                     clear_ext.eq(clear_data | issue_unsigned)]
        mem_bits, in_bits, flat = cfg.input_format.bits, array_input_bits(cfg), a_word.as_value()
        for lane in range(rows * p):
            raw = act_rd.data.as_value()[lane * mem_bits:(lane + 1) * mem_bits]
            base = lane * in_bits
            with m.If(clear_data):
                m.d.sync += flat[base:base + mem_bits].eq(0)
            with m.Else():
                m.d.sync += flat[base:base + mem_bits].eq(raw)
            with m.If(clear_ext):
                m.d.sync += flat[base + mem_bits:base + in_bits].eq(0)
            with m.Else():
                m.d.sync += flat[base + mem_bits:base + in_bits].eq(raw[mem_bits - 1])
        for r in range(rows):
            # weight-stationary PEs take their buffer selector a cycle ahead of the activation
            m.d.comb += [act_skew.i[r].eq(a_word[r]),
                         sel_skew.i[r].eq(sel_word if os_ else issue_buf)]
        m.d.sync += sel_word.eq(issue_buf)
        m.d.comb += [array.a_in.eq(act_skew.o), array.sel_in.eq(sel_skew.o)]

        if os_:
            # Weights stream with the activations: one word per step, skewed by column; the
            # last step's flag enters the bottom row with row R - 1's activation.
            m.submodules.w_skew = w_skew = DelayLines(w_shape, range(cols))
            m.submodules.last_skew = last_skew = DelayLines(1, [rows - 1])
            issue_last = Signal()
            last_word = Signal()
            w_word = Signal(data.ArrayLayout(w_shape, cols))
            m.d.sync += [issue_last.eq(ctrl.issue_last), last_word.eq(issue_last),
                         w_word.as_value().eq(Mux(issue_valid, weight_rd.data.as_value(), 0))]
            m.d.comb += [
                w_skew.i.eq(w_word),
                array.w_in.eq(w_skew.o),
                last_skew.i[0].eq(last_word),
                array.last_in.eq(last_skew.o[0]),
                deskew.i.eq(array.d_out),
            ]
        else:
            # Weights: the row read at cycle u is registered in u + 1 and written into its
            # buffer during cycle u + 2.
            load_valid = Signal()
            load_row = Signal(range(rows))
            load_buf = Signal()
            write_valid = Signal()
            write_row = Signal(range(rows))
            write_buf = Signal()
            w_word = Signal.like(array.w_data)
            m.d.sync += [load_valid.eq(ctrl.weight_en), load_row.eq(ctrl.load_row),
                         load_buf.eq(ctrl.load_buf), write_valid.eq(load_valid),
                         write_row.eq(load_row), write_buf.eq(load_buf),
                         w_word.as_value().eq(weight_rd.data.as_value())]  # same lane order
            m.d.comb += array.w_data.eq(w_word)
            for r in range(rows):
                hit = write_valid & (write_row == r)
                m.d.comb += array.w_we[r].eq(Cat(hit & ~write_buf, hit & write_buf))
            m.d.comb += deskew.i.eq(array.psum_out)

        # Column sums (drained tiles): deskew, then read-modify-write of the accumulator memory.
        m.d.comb += [
            meta_delay.i[0].eq(ctrl.issue),
            wb.meta.eq(meta_delay.o[0]),
            wb.psum.eq(deskew.o),
            wb.rd_data.eq(acc_rd.data),
            acc_wr.addr.eq(wb.wr_addr),
            acc_wr.en.eq(wb.wr_en),
            acc_wr.data.eq(wb.wr_data),
            ctrl.write_valid.eq(wb.write_valid),
        ]

        # Accumulator reads: the write-back stage's, or the post-processing engine's (never
        # both in one cycle: a REQUANT is only taken once the MATMULs have drained).
        m.d.comb += [
            acc_rd.addr.eq(Mux(ctrl.post_read, ctrl.post_acc_addr, wb.rd_addr)),
            acc_rd.en.eq(wb.rd_en | ctrl.post_read),
        ]
        post_write = Signal()
        lane_writes = Signal(range(cfg.act_lanes + 1))
        if has_ppu:
            m.submodules.ppu = ppu = PostProcessor(cfg)
            params = {key: mems[key].read_port() for key in ("bias", "scale", "qctl")}
            for port in params.values():
                m.d.comb += [port.addr.eq(ctrl.param_addr), port.en.eq(ctrl.param_en)]
            m.d.comb += [
                ppu.acc.eq(acc_rd.data),
                ppu.bias.eq(params["bias"].data),
                ppu.scale.eq(params["scale"].data),
                ppu.qctl.eq(params["qctl"].data),
            ]
            # The read issued at p leaves the unit at p + D; its metadata waits as long.
            m.submodules.post_delay = post_delay = DelayLines(post_meta_layout(cfg),
                                                              [ppu_latency(cfg)])
            m.d.comb += post_delay.i[0].eq(ctrl.post_meta)
            meta = post_delay.o[0]
            lanes = ctrl.lanes
            index_bits = max(cols - 1, 1).bit_length()
            # Every index value has an entry (the unused ones never reach an enabled lane), so
            # the generated case statement is complete.
            src = Array([ppu.out[c] for c in range(cols)]
                        + [Const(0, cfg.input_format.bits)] * ((1 << index_bits) - cols))
            for r in range(cfg.act_lanes):
                m.d.comb += [
                    act_wr.data[r].eq(src[(r + lanes.src - lanes.dst)[:index_bits]]),
                    act_wr.en[r].eq(meta.valid & (lanes.dst <= r) & (r < lanes.dst + lanes.count)),
                ]
            m.d.comb += [
                act_wr.addr.eq(meta.addr),
                post_write.eq(meta.valid),
                ctrl.post_done.eq(meta.valid & meta.last),
                # Post-processing outputs: one per enabled lane of each write.
                lane_writes.eq(Mux(post_write, sum(act_wr.en[r] for r in range(cfg.act_lanes)), 0)),
            ]

        self.probes.update({
            "busy": ctrl.busy,
            "cmd_read": ctrl.cmd_en,
            "take": ctrl.matmul_taken,
            "w_read": ctrl.weight_en,
            "w_row": ctrl.load_row,
            "w_addr": ctrl.weight_addr,
            "w_buf": ctrl.load_buf,
            "act_read": ctrl.act_en,
            "act_addr": ctrl.act_addr,
            "buf": ctrl.issue_buf,
            **{f"a_in[{r}]": array.a_in[r] for r in range(rows)},
            **{f"sel_in[{r}]": array.sel_in[r] for r in range(rows)},
            **({f"w_in[{c}]": array.w_in[c] for c in range(cols)} if os_ else {}),
            **({"last_in": array.last_in} if os_ else {}),
            **{f"{'d_out' if os_ else 'psum_out'}[{c}]": (array.d_out if os_ else array.psum_out)[c]
               for c in range(cols)},
            **{f"deskew[{c}]": deskew.o[c] for c in range(cols)},
            "acc_read": wb.rd_en,
            "acc_write": wb.wr_en,
            "acc_addr": wb.wr_addr,
            "done": ctrl.done,
            "requant_take": ctrl.requant_taken,
            "post_read": ctrl.post_read,
            "post_addr": ctrl.post_acc_addr,
            "array_wait": ctrl.wait_array,
            "drain_wait": ctrl.wait_drain,
            "ppu_wait": ctrl.wait_ppu,
        })
        if has_ppu:
            self.probes.update({
                "act_write": post_write,
                "act_waddr": act_wr.addr,
                **{f"ppu_out[{c}]": ppu.out[c] for c in range(cols)},
            })

        start = self.start
        dma_events = {"loads": 0, "stores": 0, "dram_reads": 0, "dram_writes": 0, "dma_busy": 0}
        if dram:
            m.submodules.dma = dma = DmaEngine(cfg)
            m.submodules.csr = csr = CsrBlock(cfg)
            wiring.connect(m, wiring.flipped(self.mem), dma.bus)
            wiring.connect(m, wiring.flipped(self.csr), csr.bus)
            start = self.start | csr.start
            m.d.comb += [
                ctrl.cmd_base.eq(csr.cmd_base), ctrl.cmd_count.eq(csr.cmd_count),
                dma.start.eq(ctrl.dma_start), dma.store.eq(ctrl.dma_store),
                dma.mem.eq(ctrl.dma_mem), dma.dram_addr.eq(ctrl.dma_dram_addr),
                dma.sram_addr.eq(ctrl.dma_sram_addr), dma.words.eq(ctrl.dma_words),
                ctrl.dma_busy.eq(dma.busy), ctrl.dma_done.eq(dma.done),
                ctrl.dma_fault.eq(dma.fault),
                csr.busy.eq(ctrl.busy), csr.done.eq(ctrl.done), csr.error.eq(ctrl.error),
                csr.error_code.eq(ctrl.error_code), csr.error_cmd.eq(ctrl.error_cmd),
                self.irq.eq(ctrl.done),
            ]
            for name in COUNTERS:
                m.d.comb += getattr(csr, name).eq(getattr(self, name))
            # LOAD writes: every memory but acc has a write port for the DMA engine (the
            # activation memory's is shared with the post-processing unit: the controller
            # never runs a REQUANT and a LOAD into it at once)
            for key in ("act", "weight", "bias", "scale", "qctl", "cmd"):
                if key not in mems:
                    continue
                hit = dma.wr_en & (dma.wr_mem == MEMORY_IDS[key])
                bits = Shape.cast(mems[key].shape).width
                if key == "act":
                    with m.If(hit):
                        m.d.comb += [act_wr.addr.eq(dma.wr_addr), act_wr.data.as_value().eq(dma.wr_data[:bits])]
                        m.d.comb += [act_wr.en[r].eq(1) for r in range(cfg.act_lanes)]
                    continue
                port = mems[key].write_port()
                m.d.comb += [port.addr.eq(dma.wr_addr), port.en.eq(hit)]
                if key == "cmd":
                    m.d.comb += port.data.eq(dma.wr_data[:bits])
                else:
                    m.d.comb += port.data.as_value().eq(dma.wr_data[:bits])
            # STORE reads: second read ports of the activation and accumulator memories
            act_rd2 = act_mem.read_port()
            acc_rd2 = acc_mem.read_port()
            for port, key in ((act_rd2, "act"), (acc_rd2, "acc")):
                m.d.comb += [port.addr.eq(dma.rd_addr),
                             port.en.eq(dma.rd_en & (dma.mem_now == MEMORY_IDS[key]))]
            m.d.comb += dma.rd_data.eq(Mux(dma.mem_now == MEMORY_IDS["acc"],
                                           acc_rd2.data.as_value(), act_rd2.data.as_value()))
            self.probes.update({
                "dma_take": ctrl.dma_start,
                "dma_busy": dma.busy,
                "ar_valid": dma.bus.arvalid,
                "ar_len": dma.bus.arlen,
                "r_valid": dma.bus.rvalid,
                "r_ready": dma.bus.rready,
                "dma_write": dma.wr_en,
                "dma_waddr": dma.wr_addr,
                "dma_read": dma.rd_en,
                "aw_valid": dma.bus.awvalid,
                "w_valid": dma.bus.wvalid,
                "w_last": dma.bus.wlast,
                "b_valid": dma.bus.bvalid,
                "dma_done": dma.done,
                "dma_wait": ctrl.wait_dma,
            })
            dma_events = {"loads": ctrl.load_taken, "stores": ctrl.store_taken,
                          "dram_reads": Mux(dma.read_beat, cfg.dram_width, 0),
                          "dram_writes": Mux(dma.write_beat, cfg.dram_width, 0),
                          "dma_busy": dma.busy}
        m.d.comb += ctrl.start.eq(start)

        events = {
            "cycles": ctrl.busy,
            "act_reads": ctrl.act_en,
            "weight_reads": ctrl.weight_en,
            "acc_reads": wb.read_valid | ctrl.post_read,
            "acc_writes": wb.write_valid,
            "matmuls": ctrl.matmul_taken,
            "requants": ctrl.requant_taken,
            "act_writes": post_write,
            "ppu_outputs": lane_writes,
            "wait_array": ctrl.wait_array,
            "wait_drain": ctrl.wait_drain,
            "wait_ppu": ctrl.wait_ppu,
            **dma_events,
            "wait_dma": ctrl.wait_dma,
        }
        assert tuple(events) == COUNTERS
        for name, event in events.items():
            counter = getattr(self, name)
            with m.If(ctrl.launch):
                m.d.sync += counter.eq(0)
            with m.Elif(ctrl.busy):
                m.d.sync += counter.eq(counter + event)
        return m
