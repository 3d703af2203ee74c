"""Verilog export of the accelerator."""

from __future__ import annotations

from qsim.config import AcceleratorConfig
from rtl.sram import SramPlatform

__all__ = ["generate_verilog", "ExportPlatform", "TOP_NAME"]

#: Module name of the accelerator in generated Verilog.
TOP_NAME = "qsim_top"


class ExportPlatform(SramPlatform):
    """The platform of :func:`generate_verilog`: memories become ``qsim_sram`` macros
    (:class:`rtl.sram.SramPlatform`) and the systolic array an instance of
    ``qsim_systolic_array`` (:func:`rtl.array.array_verilog`), each delay line of the skew,
    deskew and metadata pipelines an instance of ``qsim_delay`` (:func:`rtl.delay.delay_verilog`).

    Amaranth builds its netlist bit by bit, so converting a grid of PEs took a minute at
    32 x 32 and four at 64 x 64 (one Verilog module per PE); converting one PE and writing the
    grid as instances of it takes a fraction of a second at any size. The delay lines were
    most of what remained (a register per lane and stage, 2,016 stages per skew at 64 x 64).
    """

    def get_systolic_array(self, array):
        from amaranth import Module

        m = Module()
        m.submodules.grid = array.macro_instance()
        return m

    def get_delay_lines(self, delays):
        return delays.macro_instances()


def generate_verilog(config: AcceleratorConfig, name: str = TOP_NAME, bench: bool = False,
                     pe: str = "generic") -> str:
    """Verilog text of :class:`rtl.top.Accelerator` for ``config``, macros included
    (``bench``: of :class:`rtl.dram_model.DramBench`, the accelerator with its DRAM model;
    ``pe``: the PE module, one of :data:`rtl.array.PE_KINDS`).

    Memories become instances of the ``qsim_sram`` macro (:mod:`rtl.sram`) and the array an
    instance of ``qsim_systolic_array`` (:mod:`rtl.array`), the delay lines ``qsim_delay``
    (:mod:`rtl.delay`). Source locations are not emitted,
    so the text depends only on the configuration and the RTL code.
    """
    from amaranth.back import verilog

    from rtl.array import array_verilog
    from rtl.delay import delay_verilog
    from rtl.sram import sram_verilog
    from rtl.top import Accelerator

    if bench:  # with its DRAM model, for co-simulation (rtl.dram_model.DramBench)
        from rtl.dram_model import DramBench

        design = DramBench(config)
    else:
        design = Accelerator(config)
    text = verilog.convert(design, name=name, platform=ExportPlatform(), emit_src=False)
    return text + sram_verilog() + delay_verilog() + "\n" + array_verilog(config, pe)
