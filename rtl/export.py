"""Verilog export of the accelerator."""

from __future__ import annotations

from qsim.config import AcceleratorConfig

__all__ = ["generate_verilog", "TOP_NAME"]

#: Module name of the accelerator in generated Verilog.
TOP_NAME = "qsim_top"


def generate_verilog(config: AcceleratorConfig, name: str = TOP_NAME) -> str:
    """Verilog text of :class:`rtl.top.Accelerator` for ``config``, SRAM macro included.

    Memories become instances of the ``qsim_sram`` macro (:mod:`rtl.sram`). Source locations
    are not emitted, so the text depends only on the configuration and the RTL code.
    """
    from amaranth.back import verilog

    from rtl.sram import SramPlatform, sram_verilog
    from rtl.top import Accelerator

    text = verilog.convert(Accelerator(config), name=name, platform=SramPlatform(), emit_src=False)
    return text + sram_verilog()
