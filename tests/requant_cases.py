"""Random programs that mix MATMUL and REQUANT commands, for the model/timing/RTL checks.

Parameters are drawn so that results land on both sides of the clamp bounds and, in float32
mode, so that many products are exact ties (scales that are powers of two), the cases where
a rounding mode shows.
"""

from __future__ import annotations

import numpy as np

from qsim.config import AcceleratorConfig
from qsim.program import (PARAM_MEMORIES, Halt, MatrixLayout, Matmul, Program, Requant,
                          act_addresses, pack_qctl)


def requant_config(rows: int, cols: int, mode: str, precision: str = "int8",
                   **changes) -> AcceleratorConfig:
    sizes = dict(act_mem_words=64, weight_mem_words=64, acc_mem_words=32, cmd_mem_words=32,
                 param_mem_words=4)
    sizes.update(changes)
    return AcceleratorConfig(rows=rows, cols=cols, requant=mode, input_format=precision,
                             weight_format=precision, **sizes)


def random_params(rng: np.random.Generator, mode: str, words: int, cols: int, bits: int = 8) -> dict:
    """Parameter matrices (``words`` x ``cols``) for the three parameter memories, with clamp
    bounds for ``bits``-bit results."""
    bias = rng.integers(-(1 << 12), 1 << 12, (words, cols))
    if mode == "float32":
        scales = np.exp(rng.uniform(np.log(1e-5), np.log(0.05), (words, cols))).astype(np.float32)
        ties = rng.random((words, cols)) < 0.3
        scales[ties] = np.float32(2.0) ** rng.integers(-12, -1, int(ties.sum()))
        scale = scales.view(np.int32).astype(np.int64)
        shift = np.zeros((words, cols), dtype=np.int64)
    else:
        scale = rng.integers(1 << 29, 1 << 31, (words, cols))
        shift = rng.integers(36, 48, (words, cols))
        shift[rng.random((words, cols)) < 0.1] = 0
    half = 1 << (bits - 1)
    zp = rng.integers(-30, 30, (words, cols)) * half // 128
    unsigned = rng.random((words, cols)) < 0.3
    lo = np.where(unsigned, 0, rng.integers(-half, -half // 2, (words, cols)))
    hi = np.where(unsigned, 2 * half - 1, rng.integers(half // 2, half, (words, cols)))
    return {"bias": bias, "scale": scale, "qctl": pack_qctl(shift, zp, lo, hi)}


def random_addressing(rng: np.random.Generator, rows: int) -> dict:
    """``inner``/``step``/``stride`` of a random activation walk over ``rows`` rows: one run
    (half the time), or runs with gaps, overlaps and strides."""
    if rng.random() < 0.5:
        return {}
    inner = int(rng.integers(1, rows + 1))
    return {"inner": inner, "step": int(rng.integers(0, 4)), "stride": int(rng.integers(0, 12))}


def random_requant_program(rng: np.random.Generator, cfg: AcceleratorConfig,
                           commands: int = 8) -> Program:
    """Random MATMULs and REQUANTs (random lanes and addresses) over random memory contents."""
    rows, cols, lanes_a, lanes_w = cfg.rows, cfg.cols, cfg.act_lanes, cfg.weight_lanes
    fa, fw = cfg.input_format, cfg.weight_format
    act_words, acc_words, pwords = cfg.act_mem_words, cfg.acc_mem_words, cfg.param_mem_words
    cmds = []
    while len(cmds) < commands:
        n = int(rng.choice([1, 2, 3, 5, 9]))
        walk = random_addressing(rng, n)
        if rng.random() < 0.45:
            lanes = int(rng.integers(1, min(lanes_a, cols) + 1))
            cmd = Requant(acc_addr=int(rng.integers(0, acc_words - n + 1)),
                          act_addr=int(rng.integers(0, act_words)), rows=n,
                          param_addr=int(rng.integers(0, pwords)), lanes=lanes,
                          src_lane=int(rng.integers(0, cols - lanes + 1)),
                          dst_lane=int(rng.integers(0, lanes_a - lanes + 1)), **walk)
        else:
            cmd = Matmul(int(rng.integers(0, act_words)),
                         int(rng.integers(0, cfg.weight_mem_words - rows + 1)),
                         int(rng.integers(0, acc_words - n + 1)), n, bool(rng.integers(0, 2)),
                         act_unsigned=bool(rng.integers(0, 2)), **walk)
        if act_addresses(cmd).max() < act_words:
            cmds.append(cmd)
    inputs = {
        "X": (MatrixLayout("act", 0, act_words, lanes_a, lanes_a, act_words),
              rng.integers(fa.min, fa.max + 1, (act_words, lanes_a))),
        "W": (MatrixLayout("weight", 0, cfg.weight_mem_words, lanes_w, lanes_w, cfg.weight_mem_words),
              rng.integers(fw.min, fw.max + 1, (cfg.weight_mem_words, lanes_w))),
        "Acc": (MatrixLayout("acc", 0, acc_words, cols, cols, acc_words),
                rng.integers(-(1 << 20), 1 << 20, (acc_words, cols))),
    }
    for memory, matrix in random_params(rng, cfg.requant.value, pwords, cols, fa.bits).items():
        inputs[memory] = (MatrixLayout(memory, 0, pwords, cols, cols, pwords), matrix)
    assert set(inputs) >= set(PARAM_MEMORIES)
    outputs = {"act": MatrixLayout("act", 0, act_words, lanes_a, lanes_a, act_words),
               "acc": MatrixLayout("acc", 0, acc_words, cols, cols, acc_words)}
    return Program(cfg, (*cmds, Halt()), inputs=inputs, outputs=outputs, name="requant-stream")
