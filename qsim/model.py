"""Bit-accurate execution of a Program: the reference every RTL result is checked against.

The executor keeps an int64 image of each on-chip memory and applies the commands in
program order with the semantics documented in :mod:`qsim.program`. Each ``Matmul`` is one
vectorised exact integer product of its (rows x R) activations and its (R x C) weight tile,
added to or written over the accumulator rows and wrapped to ``acc_bits`` exactly as the
hardware's two's-complement adders wrap. No Python loop runs per MAC or per row.

Wrapping after the whole sum equals wrapping after every addition (addition modulo 2**n is
a ring homomorphism), so the order of summation inside the array does not matter.

On an output-stationary configuration a ``Matmul`` is the product of its ``rows`` activation
words (A transposed) and ``rows`` weight words into ``R`` accumulator words
(:mod:`qsim.program`).

A ``Requant`` applies :func:`qsim.program.requantize_lanes` to its accumulator lanes and
stores the low ``input_format.bits`` bits of each result in its activation lanes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qsim.config import Dataflow
from qsim.numerics import int_matmul, wrap
from qsim.program import (DmaCommand, Load, Matmul, Program, Requant, act_addresses,
                          bytes_to_words, dma_fault, dram_word_bytes, image_to_words,
                          requantize_lanes, words_to_bytes, words_to_image)

__all__ = ["ModelResult", "execute", "reference_gemm", "weight_tile", "os_tile"]


@dataclass
class ModelResult:
    """Final memory images (words ``0 .. footprint - 1``) and the decoded outputs; with a bus
    interface also the final DRAM image (bytes ``0 .. dram_footprint - 1``)."""

    memories: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    dram: bytearray | None = None


def execute(program: Program) -> ModelResult:
    """Run ``program`` on the bit-accurate model of its accelerator."""
    cfg = program.config
    mem = program.initial_images()
    act, weight, acc = mem["act"], mem["weight"], mem["acc"]
    acc_fmt = cfg.acc_format
    dram = program.dram_image() if cfg.has_dram else None
    formats = program.memory_formats()
    lanes = program.memory_lanes()
    for index, cmd in enumerate(program.commands):
        if isinstance(cmd, DmaCommand):
            fault = dma_fault(cfg, index, cmd)
            if fault is not None:
                raise fault
            wb = dram_word_bytes(cfg, cmd.memory)
            span = slice(cmd.dram_addr, cmd.dram_addr + cmd.words * wb)
            rows = slice(cmd.sram_addr, cmd.sram_addr + cmd.words)
            if isinstance(cmd, Load):
                words = bytes_to_words(bytes(dram[span]), wb)
                mem[cmd.memory][rows] = words_to_image(words, lanes[cmd.memory],
                                                       formats[cmd.memory])
            else:
                dram[span] = words_to_bytes(image_to_words(mem[cmd.memory][rows],
                                                           formats[cmd.memory]), wb)
            continue
        if isinstance(cmd, Requant):
            src = slice(cmd.src_lane, cmd.src_lane + cmd.lanes)
            params = [mem[m][cmd.param_addr, src] for m in ("bias", "scale", "qctl")]
            out = requantize_lanes(cfg.requant, acc[cmd.acc_addr : cmd.acc_addr + cmd.rows, src],
                                   *params, acc_bits=cfg.acc_bits)
            act[act_addresses(cmd), cmd.dst_lane : cmd.dst_lane + cmd.lanes] = \
                wrap(out, cfg.input_format)
            continue
        if not isinstance(cmd, Matmul):
            continue
        x = act[act_addresses(cmd)]
        if cmd.act_unsigned:
            x = x & ((1 << cfg.input_format.bits) - 1)
        if cfg.dataflow is Dataflow.OUTPUT_STATIONARY:
            # x: one reduction step (p of them at int4) of R rows per word, i.e. A transposed
            w = os_tile(weight[cmd.weight_addr : cmd.weight_addr + cmd.rows], cfg.cols)
            product = int_matmul(os_tile(x, cfg.rows).T, w)
            target = slice(cmd.acc_addr, cmd.acc_addr + cfg.rows)
        else:
            w = weight_tile(cfg, weight[cmd.weight_addr : cmd.weight_addr + cfg.rows])
            product = int_matmul(x, w)
            target = slice(cmd.acc_addr, cmd.acc_addr + cmd.rows)
        if cmd.accumulate:
            product = product + acc[target]
        acc[target] = wrap(product, acc_fmt)
    outputs = {name: lay.unpack(mem[lay.memory]) for name, lay in program.outputs.items()}
    if dram is not None:
        outputs.update(program.dram_outputs_from(dram))
    return ModelResult(memories=mem, outputs=outputs, dram=dram)


def weight_tile(cfg, words: np.ndarray) -> np.ndarray:
    """The (k_tile x cols) weight matrix held in ``rows`` weight words.

    At int8 that is the words themselves. At int4 word ``r`` holds, for column ``c``, the
    weights of reduction rows ``2r`` (lane ``2c``, the low nibble) and ``2r + 1`` (lane
    ``2c + 1``): PE ``(r, c)`` multiplies activation lanes ``2r`` and ``2r + 1`` by them.
    """
    p = cfg.products_per_pe
    if p == 1:
        return words
    rows = words.shape[0]
    return words.reshape(rows, cfg.cols, p).transpose(0, 2, 1).reshape(rows * p, cfg.cols)


def os_tile(words: np.ndarray, lanes: int) -> np.ndarray:
    """Output-stationary operand words as a (steps x lanes) matrix.

    Word ``j`` of ``n`` words holds ``p = words.shape[1] // lanes`` reduction steps for each
    of ``lanes`` rows (activations, ``lanes = R``) or columns (weights, ``lanes = C``):
    element ``(j*p + i, l)`` of the result is lane ``l*p + i`` of word ``j`` (at int4 the low
    nibble is the even step). At int8 (``p = 1``) that is the words themselves.
    """
    n, width = words.shape
    p = width // lanes
    if p == 1:
        return words
    return words.reshape(n, lanes, p).transpose(0, 2, 1).reshape(n * p, lanes)


def reference_gemm(a: np.ndarray, b: np.ndarray, acc_bits: int) -> np.ndarray:
    """``a @ b`` computed directly (no tiling), wrapped to ``acc_bits`` like the hardware."""
    from qsim.numerics import IntFormat

    return wrap(int_matmul(a, b), IntFormat(acc_bits, True))
