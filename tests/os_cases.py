"""Random output-stationary programs: GEMMs and hand-written command streams (short tiles,
overlapping addresses, accumulate, activation walks, unsigned activations, REQUANTs)."""

from __future__ import annotations

import numpy as np

from qsim.config import AcceleratorConfig, RequantMode
from qsim.program import (Halt, MatrixLayout, Matmul, Program, Requant, act_addresses,
                          matmul_spans)
from tests.requant_cases import random_addressing, random_params


def os_config(rows: int, cols: int, precision: str = "int8", **changes) -> AcceleratorConfig:
    sizes = dict(act_mem_words=64, weight_mem_words=64, acc_mem_words=32, cmd_mem_words=32,
                 param_mem_words=4)
    sizes.update(changes)
    return AcceleratorConfig(rows=rows, cols=cols, dataflow="output_stationary",
                             input_format=precision, weight_format=precision, **sizes)


def random_gemm(rng: np.random.Generator, cfg: AcceleratorConfig, high: int = 12):
    m, k, n = (int(v) for v in rng.integers(1, high, 3))
    f = cfg.input_format
    return rng.integers(f.min, f.max + 1, (m, k)), rng.integers(f.min, f.max + 1, (k, n))


def random_os_stream(rng: np.random.Generator, cfg: AcceleratorConfig, commands: int = 8,
                     requants: bool = False) -> Program:
    """Random MATMULs (1 to 20 steps, most of them shorter than R, the drain-spacing case)
    and, with ``requants``, REQUANTs, over random memory contents."""
    rows, cols, lanes_a, lanes_w = cfg.rows, cfg.cols, cfg.act_lanes, cfg.weight_lanes
    fa, fw = cfg.input_format, cfg.weight_format
    act_words, acc_words, wwords = cfg.act_mem_words, cfg.acc_mem_words, cfg.weight_mem_words
    depth = {"act": act_words, "acc": acc_words, "weight": wwords}
    cmds = []
    while len(cmds) < commands:
        n = int(rng.choice([1, 1, 2, 3, 5, 9, 20]))
        walk = random_addressing(rng, n)
        if requants and rng.random() < 0.3:
            lanes = int(rng.integers(1, min(lanes_a, cols) + 1))
            cmd = Requant(acc_addr=int(rng.integers(0, acc_words - n + 1)),
                          act_addr=int(rng.integers(0, act_words)), rows=n,
                          param_addr=int(rng.integers(0, cfg.param_mem_words)), lanes=lanes,
                          src_lane=int(rng.integers(0, cols - lanes + 1)),
                          dst_lane=int(rng.integers(0, lanes_a - lanes + 1)), **walk)
        else:
            cmd = Matmul(int(rng.integers(0, act_words)), int(rng.integers(0, wwords - n + 1)),
                         int(rng.integers(0, acc_words - rows + 1)), n, bool(rng.integers(0, 2)),
                         act_unsigned=bool(rng.integers(0, 2)), **walk)
            if any(start + count > depth[memory] for memory, start, count in matmul_spans(cfg, cmd)):
                continue
        if act_addresses(cmd).max() < act_words:
            cmds.append(cmd)
    inputs = {
        "X": (MatrixLayout("act", 0, act_words, lanes_a, lanes_a, act_words),
              rng.integers(fa.min, fa.max + 1, (act_words, lanes_a))),
        "W": (MatrixLayout("weight", 0, wwords, lanes_w, lanes_w, wwords),
              rng.integers(fw.min, fw.max + 1, (wwords, lanes_w))),
        "Acc": (MatrixLayout("acc", 0, acc_words, cols, cols, acc_words),
                rng.integers(-(1 << 20), 1 << 20, (acc_words, cols))),
    }
    if cfg.requant is not RequantMode.NONE:
        pwords = cfg.param_mem_words
        for memory, matrix in random_params(rng, cfg.requant.value, pwords, cols, fa.bits).items():
            inputs[memory] = (MatrixLayout(memory, 0, pwords, cols, cols, pwords), matrix)
    outputs = {"act": MatrixLayout("act", 0, act_words, lanes_a, lanes_a, act_words),
               "acc": MatrixLayout("acc", 0, acc_words, cols, cols, acc_words)}
    return Program(cfg, (*cmds, Halt()), inputs=inputs, outputs=outputs, name="os-stream")
