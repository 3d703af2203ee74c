"""qsim: bit-exact and cycle-exact models of quantized-NN systolic accelerators.

The core (numerics, config, program, compile, model, timing) imports numpy only. RTL lives in
the sibling package ``rtl`` (Amaranth); ``qsim.cosim`` runs it under cocotb and Verilator.
"""

from __future__ import annotations

__version__ = "0.1.0"
