"""Lowering of matrix products into Programs for one accelerator configuration.

:func:`compile_gemm` lowers a GEMM that fits the memories into one Program;
:func:`plan_gemm` cuts a larger one into several and reassembles their results;
:func:`fold_zero_points` turns a quantized product with zero points (uint8 activations,
asymmetric weights) into an int8 x int8 product plus a host-side correction.

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

from dataclasses import dataclass

import numpy as np

from qsim.config import AcceleratorConfig
from qsim.errors import ProgramError
from qsim.numerics import check_fits, wrap
from qsim.program import Halt, MatrixLayout, Matmul, Program

__all__ = ["compile_gemm", "gemm_layouts", "check_gemm_fits", "GemmPlan", "plan_gemm",
           "ZeroPointFold", "fold_zero_points"]


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


@dataclass
class GemmPlan:
    """A GEMM cut into Programs that each fit the accelerator, and how to reassemble it.

    Program ``i`` computes the partial product ``A[ms, ks] @ B[ks, ns]`` for
    ``blocks[i] = (ms, ns, ks)``. :meth:`assemble` adds the partial products of each output
    block modulo ``2**acc_bits``, exactly what the accumulator memory would hold had the whole
    reduction run in one Program.
    """

    config: AcceleratorConfig
    m: int
    k: int
    n: int
    programs: list[Program]
    blocks: list[tuple[slice, slice, slice]]

    def assemble(self, outputs: list[np.ndarray]) -> np.ndarray:
        """``C`` (m x n, int64, wrapped to ``acc_bits``) from each program's output ``C``."""
        if len(outputs) != len(self.programs):
            raise ProgramError(f"{len(outputs)} outputs for {len(self.programs)} programs")
        total = np.zeros((self.m, self.n), dtype=np.int64)
        for (ms, ns, _), out in zip(self.blocks, outputs):
            total[ms, ns] += out
        return wrap(total, self.config.acc_format)


def plan_gemm(config: AcceleratorConfig, a: np.ndarray, b: np.ndarray, name: str = "gemm") -> GemmPlan:
    """Cut ``a @ b`` into Programs that fit the memories (rows of A, columns of B, then K).

    A program may hold ``kt`` K tiles and ``nt`` N tiles of ``mc`` rows when
    ``kt*mc <= act_mem_words``, ``nt*kt*rows <= weight_mem_words``,
    ``nt*mc <= acc_mem_words`` and ``nt*kt + 1 <= cmd_mem_words``; the plan takes the whole
    reduction first, then as many N tiles and rows as fit.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ProgramError(f"GEMM operands must be 2-D with matching inner sizes, not {a.shape} and {b.shape}")
    m, k = a.shape
    n = b.shape[1]
    _check_shape(m, k, n)
    r, c = config.rows, config.cols
    k_tiles_all, n_tiles_all = -(-k // r), -(-n // c)
    max_rows = (1 << config.act_mem_words.bit_length()) - 1
    kt = max(1, min(k_tiles_all, config.weight_mem_words // r, config.act_mem_words,
                    config.cmd_mem_words - 1))
    nt = max(1, min(n_tiles_all, config.weight_mem_words // (kt * r), config.acc_mem_words,
                    (config.cmd_mem_words - 1) // kt))
    mc = max(1, min(m, config.act_mem_words // kt, config.acc_mem_words // nt, max_rows))
    if kt * r > config.weight_mem_words or config.cmd_mem_words < 2:
        raise ProgramError(
            f"the {config.rows}x{config.cols} accelerator cannot hold one weight tile "
            f"({r} words) and one command: weight memory {config.weight_mem_words} words, "
            f"command memory {config.cmd_mem_words} words")
    programs, blocks = [], []
    for m0 in range(0, m, mc):
        for n0 in range(0, n, nt * c):
            for k0 in range(0, k, kt * r):
                ms, ns, ks = slice(m0, min(m, m0 + mc)), slice(n0, min(n, n0 + nt * c)), slice(k0, min(k, k0 + kt * r))
                label = f"{name}[{ms.start}:{ms.stop},{ns.start}:{ns.stop},{ks.start}:{ks.stop}]"
                programs.append(compile_gemm(config, a[ms, ks], b[ks, ns], name=label))
                blocks.append((ms, ns, ks))
    return GemmPlan(config, m, k, n, programs, blocks)


@dataclass(frozen=True)
class ZeroPointFold:
    """Operands shifted into the array's int8 formats plus the host-side correction.

    ``sum_k (x - zx)(w - zw[n])`` equals ``a @ b + correction`` where ``a = x - ox`` and
    ``b = w - ow`` are the shifted operands (``ox``, ``ow`` are 128 for uint8 operands and 0
    for int8 ones) and, with ``zx' = zx - ox`` and ``zw' = zw - ow``::

        correction[m, n] = -zw'[n] * rowsum(a)[m] - zx' * colsum(b)[n] + K * zx' * zw'[n]

    The array computes ``a @ b``; the host adds the correction (two sums and an outer
    product, O(MK + KN)), as gemmlowp does.
    """

    a: np.ndarray
    b: np.ndarray
    correction: np.ndarray


def fold_zero_points(config: AcceleratorConfig, x: np.ndarray, x_zero_point: int,
                     w: np.ndarray, w_zero_point: np.ndarray | int) -> ZeroPointFold:
    """Prepare ``(x - x_zp) @ (w - w_zp)`` for the int8 x int8 array.

    ``x`` (M x K) and ``w`` (K x N) are integer arrays whose values fit int8 or uint8 (int4
    and uint4 fit too); ``w_zero_point`` is a scalar or one value per output column.
    """
    fa, fw = config.input_format, config.weight_format
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    zw = np.broadcast_to(np.asarray(w_zero_point, dtype=np.int64), (w.shape[1],))

    def offset(values: np.ndarray, fmt, what: str) -> int:
        lo, hi = int(values.min(initial=0)), int(values.max(initial=0))
        for shift in (0, 1 << (fmt.bits - 1)):
            if fmt.min <= lo - shift and hi - shift <= fmt.max:
                return shift
        raise ProgramError(f"{what} values span {lo}..{hi}, which no shift maps into {fmt.name}")

    ox = offset(x, fa, "activation")
    ow = offset(w, fw, "weight")
    a = x - ox
    b = w - ow
    zx = int(x_zero_point) - ox
    zwp = zw - ow
    k = x.shape[1]
    correction = (-np.outer(a.sum(axis=1), zwp) - zx * b.sum(axis=0)[None, :]
                  + k * zx * zwp[None, :])
    return ZeroPointFold(a, b, correction)
