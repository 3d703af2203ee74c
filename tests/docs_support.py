"""Generators of the timing diagrams shown in docs/microarchitecture.md.

Run ``python -m tests.docs_support`` to print them (for pasting into the docs after an RTL
change); tests/test_docs.py fails while the docs show anything else.
"""

from __future__ import annotations

import numpy as np

from qsim.compile import compile_gemm
from qsim.config import AcceleratorConfig
from qsim.cosim.trace import timing_diagram

TINY = AcceleratorConfig(rows=2, cols=2, act_mem_words=16, weight_mem_words=16,
                         acc_mem_words=16, cmd_mem_words=8)

PROBES = ["busy", "cmd_read", "take", "w_read", "w_row", "w_buf", "act_read", "act_addr", "buf",
          "a_in[0]", "a_in[1]", "psum_out[0]", "psum_out[1]", "deskew[0]", "deskew[1]",
          "acc_read", "acc_write", "acc_addr", "done"]
QUALIFY = {"w_row": "w_read", "w_buf": "w_read", "act_addr": "act_read", "buf": "act_read",
           "acc_addr": "acc_write"}


def two_tiles() -> str:
    """A (3 x 4) @ B (4 x 2) on a 2 x 2 array: two K tiles accumulate into 3 rows."""
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    b = np.array([[1, 0], [0, 1], [2, 0], [0, 2]])
    return timing_diagram(compile_gemm(TINY, a, b), PROBES, qualify=QUALIFY)


DIAGRAMS = {"two-tiles": two_tiles}

if __name__ == "__main__":
    for name, make in DIAGRAMS.items():
        print(f"<!-- diagram: {name} -->\n```text\n{make()}\n```")
