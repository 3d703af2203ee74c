"""AXI4 and AXI4-Lite interfaces as Amaranth ``lib.wiring`` signatures.

Member names are the AMBA signal names without the interface prefix (``awaddr``,
``wvalid``, ...), so a port ``csr`` of :func:`axi_lite` becomes ``csr__awaddr`` in Verilog and
cocotb extensions find the signals with the prefix ``csr_`` (their separator is one more
underscore). Only the signals qsim drives or reads are members: no IDs (every transfer has ID
0, in order), no QoS, cache, lock or region signals; ``arsize``/``awsize`` are always the full
bus width and ``arburst``/``awburst`` always INCR.
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["axi_lite", "axi4", "RESP_OKAY", "RESP_SLVERR", "RESP_DECERR", "BURST_INCR"]

RESP_OKAY = 0
RESP_SLVERR = 2
RESP_DECERR = 3
BURST_INCR = 1


def axi_lite(addr_width: int = 8, data_width: int = 32) -> wiring.Signature:
    """AXI4-Lite as seen from the master (flip it for a slave)."""
    return wiring.Signature({
        "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
        "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
    })


def axi4(addr_width: int, data_width: int) -> wiring.Signature:
    """AXI4 (bursts) as seen from the master (flip it for a slave)."""
    return wiring.Signature({
        "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3), "awburst": Out(2),
        "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
        "wvalid": Out(1), "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3), "arburst": Out(2),
        "arvalid": Out(1), "arready": In(1),
        "rdata": In(data_width), "rresp": In(2), "rlast": In(1), "rvalid": In(1), "rready": Out(1),
    })
