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


def requant_after_gemm() -> str:
    """A (3 x 2) @ B (2 x 2) on a 2 x 2 array with a fixed-point unit, then one REQUANT."""
    from qsim.compile import GemmRequant
    from qsim.program import pack_qctl

    cfg = TINY.replace(requant="fixed-point", param_mem_words=2)
    a = np.array([[1, 2], [3, 4], [5, 6]])
    b = np.array([[1, 0], [0, 1]])
    # y = (acc * 2**30 + 2**30) >> 31, i.e. acc / 2 rounded half up, plus zero point 10
    rq = GemmRequant(np.zeros(2, np.int64), np.full(2, 1 << 30), np.full(2, pack_qctl(31, 10, -128, 127)))
    return timing_diagram(compile_gemm(cfg, a, b, requant=rq), REQUANT_PROBES, qualify=REQUANT_QUALIFY)


REQUANT_PROBES = ["busy", "take", "requant_take", "act_read", "acc_write", "acc_addr",
                  "drain_wait", "post_read", "post_addr", "ppu_out[0]", "ppu_out[1]",
                  "act_write", "act_waddr", "ppu_wait", "done"]
REQUANT_QUALIFY = {"acc_addr": "acc_write", "post_addr": "post_read", "act_waddr": "act_write"}

OS_PROBES = ["busy", "take", "act_read", "act_addr", "w_addr", "buf", "a_in[0]", "a_in[1]",
             "w_in[0]", "w_in[1]", "last_in", "d_out[0]", "d_out[1]", "deskew[0]", "deskew[1]",
             "acc_write", "acc_addr", "done"]
OS_QUALIFY = {"act_addr": "act_read", "w_addr": "act_read", "buf": "act_read",
              "acc_addr": "acc_write"}


def os_two_tiles() -> str:
    """The same A (3 x 4) @ B (4 x 2) on a 2 x 2 output-stationary array: two M tiles of 4
    reduction steps, the second drained while nothing follows it."""
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    b = np.array([[1, 0], [0, 1], [2, 0], [0, 2]])
    cfg = TINY.replace(dataflow="output_stationary")
    return timing_diagram(compile_gemm(cfg, a, b), OS_PROBES, qualify=OS_QUALIFY)


DIAGRAMS = {"two-tiles": two_tiles, "requant": requant_after_gemm, "os-two-tiles": os_two_tiles}

DRAM_PROBES = ["busy", "dma_take", "dma_busy", "ar_valid", "ar_len", "r_valid", "r_ready",
               "dma_write", "dma_waddr", "dma_wait", "take", "act_read", "acc_write", "dma_read",
               "aw_valid", "w_valid", "w_last", "b_valid", "done"]
DRAM_QUALIFY = {"ar_len": "ar_valid", "dma_waddr": "dma_write"}


def dram_load_matmul_store() -> str:
    """LOAD A (3 words), LOAD B (2 words), MATMUL with wait, STORE C with wait, on a 2 x 2
    array with a 4-byte bus, 2 cycles of DRAM latency and bursts of at most 2 beats; from the
    end of the program fetch (cycle 17) on."""
    from qsim.program import DramLayout, Halt, Load, MatrixLayout, Matmul, Program, Store

    cfg = TINY.replace(dram_width=4, dram_latency=2, dram_capacity=4096, max_burst=2)
    a = np.array([[1, 2], [3, 4], [5, 6]])
    b = np.array([[1, 0], [0, 1]])
    program = Program(
        cfg, [Load("act", 0x40, 0, 3), Load("weight", 0x80, 0, 2), Matmul(0, 0, 0, 3, wait=True),
              Store("acc", 0xC0, 0, 3, wait=True), Halt()],
        dram_inputs={"A": (DramLayout(MatrixLayout("act", 0, 3, 2, 2, 3), 0x40), a),
                     "B": (DramLayout(MatrixLayout("weight", 0, 2, 2, 2, 2), 0x80), b)},
        dram_outputs={"C": DramLayout(MatrixLayout("acc", 0, 3, 2, 2, 3), 0xC0)})
    return timing_diagram(program, DRAM_PROBES, qualify=DRAM_QUALIFY, first=17)


#: Diagrams of docs/dram.md.
DRAM_DIAGRAMS = {"dram-load-matmul-store": dram_load_matmul_store}

if __name__ == "__main__":
    for name, make in {**DIAGRAMS, **DRAM_DIAGRAMS}.items():
        print(f"<!-- diagram: {name} -->\n```text\n{make()}\n```")
