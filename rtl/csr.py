"""The control/status registers behind an AXI4-Lite slave port (map: :data:`qsim.hw.CSR_REGISTERS`)."""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qsim.config import AcceleratorConfig
from qsim.hw import COUNTER_BITS, COUNTERS, CSR_ID, csr_map
from rtl.axi import RESP_OKAY, axi_lite

__all__ = ["CsrBlock", "CSR_ADDR_BITS", "array_register"]

CSR_ADDR_BITS = 8


def array_register(config: AcceleratorConfig) -> int:
    """Value of the read-only ``ARRAY`` register."""
    return (config.rows | config.cols << 8 | config.dram_width << 16
            | int(config.input_format.bits == 4) << 24
            | int(config.dataflow.short == "os") << 25)


class CsrBlock(wiring.Component):
    """Ports: ``bus`` (AXI4-Lite slave); ``start`` (a pulse when CTRL bit 0 is written),
    ``cmd_base``, ``cmd_count`` (the RW registers); ``busy``, ``done``, ``error``,
    ``error_code``, ``error_cmd`` and one input per counter, read back through the map."""

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = config
        members = {
            "bus": In(axi_lite(CSR_ADDR_BITS, 32)),
            "start": Out(1), "cmd_base": Out(32), "cmd_count": Out(32),
            "busy": In(1), "done": In(1), "error": In(1), "error_code": In(4),
            "error_cmd": In(32),
        }
        members.update({name: In(COUNTER_BITS) for name in COUNTERS})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        regs = csr_map()
        # writes: address and data together, one response per write
        bvalid = Signal()
        accept_w = bus.awvalid & bus.wvalid & ~bvalid
        m.d.comb += [bus.awready.eq(accept_w), bus.wready.eq(accept_w),
                     bus.bvalid.eq(bvalid), bus.bresp.eq(RESP_OKAY)]
        with m.If(accept_w):
            m.d.sync += bvalid.eq(1)
        with m.Elif(bus.bready):
            m.d.sync += bvalid.eq(0)
        m.d.comb += self.start.eq(accept_w & (bus.awaddr[2:] == regs["CTRL"] >> 2) & bus.wdata[0])
        for name, reg in (("CMD_BASE", self.cmd_base), ("CMD_COUNT", self.cmd_count)):
            with m.If(accept_w & (bus.awaddr[2:] == regs[name] >> 2)):
                for lane in range(4):
                    with m.If(bus.wstrb[lane]):
                        m.d.sync += reg[8 * lane : 8 * lane + 8].eq(bus.wdata[8 * lane : 8 * lane + 8])

        # reads: one outstanding
        rvalid = Signal()
        rdata = Signal(32)
        m.d.comb += [bus.arready.eq(~rvalid), bus.rvalid.eq(rvalid), bus.rdata.eq(rdata),
                     bus.rresp.eq(RESP_OKAY)]
        values = {
            "ID": CSR_ID, "STATUS": self.busy | self.done << 1 | self.error << 2,
            "ERROR_CODE": self.error_code, "ERROR_CMD": self.error_cmd,
            "CMD_BASE": self.cmd_base, "CMD_COUNT": self.cmd_count,
            "ARRAY": array_register(self.config),
        }
        for name in COUNTERS:
            counter = getattr(self, name)
            values[name] = counter[:32]
            values[f"{name}_hi"] = counter[32:]
        with m.If(bus.arvalid & ~rvalid):
            m.d.sync += [rvalid.eq(1), rdata.eq(0)]
            with m.Switch(bus.araddr[2:]):
                for name, value in values.items():
                    with m.Case(regs[name] >> 2):
                        m.d.sync += rdata.eq(value)
                with m.Default():  # unmapped offsets read as zero
                    m.d.sync += rdata.eq(0)
        with m.Elif(rvalid & bus.rready):
            m.d.sync += rvalid.eq(0)
        return m
