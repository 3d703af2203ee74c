"""The synthesis harness: the accelerator with a serial host port, so that nothing is pruned.

Synthesis keeps only logic that reaches a pin. The accelerator's memories are filled and read
by the host (in simulation through VPI), so in a bare netlist its command memory would be a
constant, every datapath dead and the whole array pruned away; and its ports (``start``,
twelve 48-bit counters) need 580 pins, more than any of the target packages has. The harness
wraps :class:`rtl.top.Accelerator` unchanged and gives it a host port of four pins:

* ``sdi`` and ``shift``: while ``shift`` is high, one bit per cycle enters the command
  shift register (host enable, write strobe, memory/readout select, address, 32 data bits
  and the accelerator's inputs, ``start`` included);
* ``apply``: the shift register is copied into the host registers (a write strobe lasts one
  cycle);
* ``sdo``: the read-out shift register, loaded every cycle ``shift`` is low with the
  selected source, shifts out while ``shift`` is high. Sources: the read data of each
  memory (its word registered, then folded to 32 bits by XOR) and 32-bit slices of the
  accelerator's outputs (``busy``, ``done``, ``error``, the counters), each registered
  before the selection, so that the harness adds no long path of its own.

Each memory keeps the accelerator's ports; while the host owns it (host enable and its index
selected, both registered), its address, write enable, data and read enable come from the host
registers through a 2:1 multiplexer, as a DMA engine would arbitrate. A memory the
accelerator only reads gets the host on its otherwise unused write port, with no multiplexer.
Write data is the 32 host bits repeated across the word.

What the harness adds is small and fixed per configuration (about 60 + 2 x memories flip-flops
of shift and host registers, a register as wide as each memory's word, 32 per read-out
source, plus the read-out multiplexer); :mod:`qsim.synth` counts the whole netlist, harness
included.
"""

from __future__ import annotations

from amaranth import Cat, Const, Elaboratable, Module, Mux, Signal, Value
from amaranth.lib import wiring

from qsim.config import AcceleratorConfig
from qsim.hw import memory_names
from rtl.export import ExportPlatform

__all__ = ["SynthPlatform", "SynthHarness", "harness_verilog", "HARNESS_TOP", "HOST_DATA_BITS",
           "HOST_ADDR_BITS"]

#: Module name of the harness in the synthesized Verilog.
HARNESS_TOP = "qsim_synth_top"
#: Width of the host data word and of the host address (enough for any memory depth).
HOST_DATA_BITS = 32
HOST_ADDR_BITS = 20


def _fold(value: Value, bits: int) -> Value:
    """``value`` XOR-folded to ``bits`` bits (zero-extended first)."""
    width = len(value)
    chunks = [value[i:i + bits] for i in range(0, width, bits)]
    out = chunks[0]
    for chunk in chunks[1:]:
        out = out ^ chunk
    return out if len(out) == bits else Cat(out, Const(0, bits - len(out)))


def _tile(value: Value, width: int) -> Value:
    """``value`` repeated to ``width`` bits."""
    reps = -(-width // len(value))
    return Cat(*([value] * reps))[:width]


class SynthPlatform(ExportPlatform):
    """:class:`rtl.export.ExportPlatform` whose memories also answer to the harness's host bus.

    The host registers and one 32-bit read-data signal per memory exist before elaboration
    (the number of memories is :func:`qsim.hw.memory_names`); the ``i``-th memory elaborated
    takes index ``i``.
    """

    def __init__(self, memories: int) -> None:
        self.host_en = Signal(name="host_en")
        self.host_we = Signal(name="host_we")
        self.host_sel = Signal(range(max(2, memories + 64)), name="host_sel")
        self.host_addr = Signal(HOST_ADDR_BITS, name="host_addr")
        self.host_data = Signal(HOST_DATA_BITS, name="host_data")
        self.mem_rdata = [Signal(HOST_DATA_BITS, name=f"mem{i}_rdata") for i in range(memories)]
        self._next = 0

    def get_memory(self, memory):
        """The ``qsim_sram`` instance of :class:`rtl.sram.SramPlatform`, with the host
        multiplexed onto its write port and its first read port."""
        index = self._next
        if index >= len(self.mem_rdata):
            raise RuntimeError(f"the harness has room for {len(self.mem_rdata)} memories")
        self._next += 1
        sram = super().get_memory(memory)
        ports, params = sram.ports, sram.parameters
        width, abits, lanes = int(params["WIDTH"]), int(params["ABITS"]), int(params["LANES"])
        m = Module()
        m.submodules.sram = sram
        mine = Signal(name=f"host_owns{index}")
        m.d.sync += mine.eq(self.host_en & (self.host_sel == index))

        def host_mux(name: str, host: Value) -> None:
            value, direction = ports[name]
            ports[name] = (Mux(mine, host, value), direction)

        host_mux("wr_en", Cat(*([self.host_we & mine] * lanes)))
        host_mux("wr_addr", self.host_addr[:abits])
        host_mux("wr_data", _tile(self.host_data, width))
        host_mux("rd_en", Const(1, 1))
        host_mux("rd_addr", self.host_addr[:abits])
        if "rd_data" not in ports:  # a memory nobody reads: the host's read data
            ports["rd_data"] = (Signal(width, name=f"mem{index}_rd_data"), "o")
        # the read data is registered before it is folded: a block RAM's output reaches a
        # flip-flop through routing only, as everywhere in the accelerator
        raw = Signal(width, name=f"mem{index}_rd_q")
        m.d.sync += raw.eq(ports["rd_data"][0])
        m.d.comb += self.mem_rdata[index].eq(_fold(raw, HOST_DATA_BITS))
        return m


class SynthHarness(Elaboratable):
    """:class:`rtl.top.Accelerator` behind the serial host port described in the module text.

    Elaborate it with :class:`SynthPlatform` (``platform``).
    """

    def __init__(self, config: AcceleratorConfig) -> None:
        from rtl.top import Accelerator

        self.config = config
        self.accel = Accelerator(config)
        self.sdi = Signal()
        self.shift = Signal()
        self.apply = Signal()
        self.sdo = Signal()

    def elaborate(self, platform):
        if not isinstance(platform, SynthPlatform):
            raise TypeError("SynthHarness is elaborated with a SynthPlatform")
        m = Module()
        m.submodules.accel = accel = self.accel
        ins, outs = [], []
        for name, member in accel.signature.members.items():
            port = getattr(accel, name)
            (ins if member.flow is wiring.In else outs).append(Value.cast(port))
        out_bits = Cat(*outs)
        slices = [out_bits[i:i + HOST_DATA_BITS] for i in range(0, len(out_bits), HOST_DATA_BITS)]
        sources = [*platform.mem_rdata, *[_fold(s, HOST_DATA_BITS) for s in slices]]
        if len(sources) > 2 ** len(platform.host_sel):
            raise RuntimeError("too many read-out sources for host_sel")
        fields = [platform.host_en, platform.host_we, platform.host_sel, platform.host_addr,
                  platform.host_data, *ins]
        total = sum(len(f) for f in fields)
        sreg = Signal(total)
        with m.If(self.shift):
            m.d.sync += sreg.eq(Cat(sreg[1:], self.sdi))
        m.d.sync += platform.host_we.eq(0)
        with m.If(self.apply):
            m.d.sync += Cat(*fields).eq(sreg)
        # every folded source is registered, then selected
        staged = []
        for index, source in enumerate(sources):
            stage = Signal(HOST_DATA_BITS, name=f"readout_src{index}")
            m.d.sync += stage.eq(source)
            staged.append(stage)
        readout = Signal(HOST_DATA_BITS)
        with m.Switch(platform.host_sel):
            for index, source in enumerate(staged):
                with m.Case(index):
                    m.d.sync += readout.eq(source)
        obuf = Signal(HOST_DATA_BITS)
        with m.If(self.shift):
            m.d.sync += obuf.eq(obuf[1:])
        with m.Else():
            m.d.sync += obuf.eq(readout)
        m.d.comb += self.sdo.eq(obuf[0])
        return m


def harness_verilog(config: AcceleratorConfig, pe: str = "generic") -> str:
    """Verilog of :class:`SynthHarness` for ``config`` (top module :data:`HARNESS_TOP`), with
    the macros of :func:`rtl.export.generate_verilog` (the PE module ``pe``, one of
    :data:`rtl.array.PE_KINDS`)."""
    from amaranth.back import verilog
    from amaranth.hdl import Fragment

    from rtl.array import array_verilog
    from rtl.delay import delay_verilog
    from rtl.sram import sram_verilog

    platform = SynthPlatform(len(memory_names(config)) + 8)  # room for memories added later
    harness = SynthHarness(config)
    fragment = Fragment.get(harness, platform)
    text = verilog.convert(fragment, name=HARNESS_TOP, platform=platform, emit_src=False,
                           ports=[harness.sdi, harness.shift, harness.apply, harness.sdo])
    return text + sram_verilog() + delay_verilog() + "\n" + array_verilog(config, pe)
