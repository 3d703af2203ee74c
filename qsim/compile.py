"""Lowering of matrix products into Programs for one accelerator configuration.

``compile_gemm`` tiles ``C[M,N] = A[M,K] @ B[K,N]`` for a weight-stationary R x C array:
the reduction dimension K is cut into tiles of R, the output channels N into tiles of C, and
every (N tile, K tile) pair becomes one :class:`~qsim.program.Matmul` that streams all M rows
of A through the resident R x C weight tile. K tiles are innermost, so consecutive commands
accumulate into the same accumulator rows; the first K tile of each N tile overwrites.

Memory layout (all zero padded to whole tiles):

* act memory: word ``kt*M + m`` holds ``A[m, kt*R : kt*R + R]``;
* weight memory: word ``(nt*KT + kt)*R + r`` holds ``B[kt*R + r, nt*C : nt*C + C]``;
* acc memory: word ``nt*M + m`` holds ``C[m, nt*C : nt*C + C]``.
"""

from __future__ import annotations

import numpy as np

from qsim.config import AcceleratorConfig
from qsim.errors import ProgramError
from qsim.numerics import check_fits
from qsim.program import Halt, MatrixLayout, Matmul, Program

__all__ = ["compile_gemm", "gemm_layouts", "check_gemm_fits"]


def _check_shape(m: int, k: int, n: int) -> None:
    for name, value in (("M", m), ("K", k), ("N", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ProgramError(f"GEMM {name} must be an int, not {value!r}")
        if value < 1:
            raise ProgramError(f"GEMM {name} must be at least 1, not {value}")


def gemm_layouts(config: AcceleratorConfig, m: int, k: int, n: int
                 ) -> tuple[MatrixLayout, MatrixLayout, MatrixLayout]:
    """Layouts of A (act memory), B (weight memory) and C (acc memory) for an M x K x N GEMM."""
    _check_shape(m, k, n)
    r, c = config.rows, config.cols
    k_tiles = -(-k // r)
    a = MatrixLayout("act", 0, rows=m, cols=k, lanes=r, tile_stride=m)
    # B is stored transposed into words of C weights: its "rows" are K, its lanes N.
    b = MatrixLayout("weight", 0, rows=k, cols=n, lanes=c, tile_stride=k_tiles * r,
                     padded_rows=k_tiles * r)
    out = MatrixLayout("acc", 0, rows=m, cols=n, lanes=c, tile_stride=m)
    return a, b, out


def check_gemm_fits(config: AcceleratorConfig, m: int, k: int, n: int) -> None:
    """Raise :class:`ProgramError` naming each memory that an M x K x N GEMM overflows."""
    a, b, out = gemm_layouts(config, m, k, n)
    k_tiles, n_tiles = a.lane_tiles, out.lane_tiles
    problems = []
    needs = (
        ("act", a.words, config.act_mem_words,
         f"{k_tiles} K tiles x {m} rows"),
        ("weight", b.words, config.weight_mem_words,
         f"{n_tiles} N tiles x {k_tiles} K tiles x {config.rows} rows"),
        ("acc", out.words, config.acc_mem_words,
         f"{n_tiles} N tiles x {m} rows"),
        ("cmd", n_tiles * k_tiles + 1, config.cmd_mem_words,
         f"{n_tiles} x {k_tiles} tiles + HALT"),
    )
    for memory, need, have, how in needs:
        if need > have:
            problems.append(
                f"the {memory} memory needs {need} words ({how}) but has {have} "
                f"({need - have} too many)"
            )
    if m > (1 << config.act_mem_words.bit_length()) - 1:
        problems.append(f"M = {m} exceeds the largest rows field")
    if problems:
        raise ProgramError(
            f"GEMM {m}x{k}x{n} does not fit the {config.rows}x{config.cols} accelerator: "
            + "; ".join(problems)
        )


def compile_gemm(config: AcceleratorConfig, a: np.ndarray, b: np.ndarray,
                 name: str = "gemm") -> Program:
    """Program computing ``a @ b`` on ``config``; the result is output ``"C"``.

    Parameters
    ----------
    config : AcceleratorConfig
    a : array of shape (M, K)
        Activations in ``config.input_format``.
    b : array of shape (K, N)
        Weights in ``config.weight_format``.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ProgramError(f"GEMM operands must be 2-D, not {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise ProgramError(f"GEMM inner dimensions differ: A is {a.shape}, B is {b.shape}")
    if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise ProgramError(f"GEMM operands must be integer arrays, not {a.dtype} and {b.dtype}")
    m, k = a.shape
    n = b.shape[1]
    check_gemm_fits(config, m, k, n)
    check_fits(a, config.input_format, "A")
    check_fits(b, config.weight_format, "B")
    a_lay, b_lay, c_lay = gemm_layouts(config, m, k, n)
    k_tiles, n_tiles = a_lay.lane_tiles, c_lay.lane_tiles
    commands = []
    for nt in range(n_tiles):
        for kt in range(k_tiles):
            commands.append(Matmul(
                act_addr=a_lay.base + kt * a_lay.tile_stride,
                weight_addr=b_lay.base + nt * b_lay.tile_stride + kt * config.rows,
                acc_addr=c_lay.base + nt * c_lay.tile_stride,
                rows=m,
                accumulate=kt > 0,
            ))
    commands.append(Halt())
    return Program(
        config=config,
        commands=tuple(commands),
        inputs={"A": (a_lay, a.astype(np.int64)), "B": (b_lay, b.astype(np.int64))},
        outputs={"C": c_lay},
        name=name,
        meta={"op": "gemm", "m": m, "k": k, "n": n, "useful_macs": m * k * n},
    )
