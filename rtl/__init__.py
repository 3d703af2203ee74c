"""Amaranth RTL of the qsim weight-stationary systolic accelerator.

One ``wiring.Component`` per file: :mod:`rtl.pe`, :mod:`rtl.array`, :mod:`rtl.delay`,
:mod:`rtl.controller`, :mod:`rtl.writeback`, :mod:`rtl.top`; :mod:`rtl.export` writes Verilog.
Every block is built from a :class:`qsim.config.AcceleratorConfig` (and the command layout of
:mod:`qsim.program`), so the RTL cannot disagree with the model about widths or encodings.
"""
