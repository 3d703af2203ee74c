"""Lowering of matrix products into Programs for one accelerator configuration.

:func:`compile_gemm` lowers a GEMM that fits the memories into one Program;
:func:`tile_gemm` chooses how a GEMM of any size is cut into Programs that fit (no data, so
:meth:`GemmTiling.estimate` times a GEMM of any size in microseconds); :func:`plan_gemm` cuts
the operands that way and reassembles the Programs' results;
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

At int4 (``config.products_per_pe == 2``) a K tile is ``2R`` long: act word ``kt*M + m``
holds ``A[m, kt*2R : kt*2R + 2R]`` as 2R nibbles, and weight word ``(nt*KT + kt)*R + r``
holds ``B[kt*2R + 2r, c]`` and ``B[kt*2R + 2r + 1, c]`` in nibbles ``2c`` and ``2c + 1``
(low first) for the N tile's columns ``c``: every PE multiplies two pairs per cycle.
* acc memory: word ``nt*M + m`` holds ``C[m, nt*C : nt*C + C]``.

On an output-stationary configuration (``config.dataflow``) M is cut into tiles of R rows and
N into tiles of C, and every (N tile, M tile) pair is one Matmul that streams the whole
reduction (``KW = ceil(K / products_per_pe)`` words) and writes R accumulator words:

* act memory: word ``mt*KW + j`` holds ``A[mt*R + r, j*p + i]`` in lane ``r*p + i`` (A
  transposed, packed like the weights);
* weight memory: word ``nt*KW + j`` holds ``B[j*p + i, nt*C + c]`` in lane ``c*p + i``;
* acc memory: word ``nt*MT*R + m`` holds ``C[m, nt*C : nt*C + C]`` (MT = ceil(M / R)).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterator

import numpy as np

from qsim.config import AcceleratorConfig, Dataflow, RequantMode
from qsim.errors import ProgramError
from qsim.numerics import IntFormat, check_fits, wrap
from qsim.program import (Halt, MatrixLayout, Matmul, Program, Requant, pack_qctl,
                          requantize_lanes, unpack_qctl)
from qsim.timing import TimingResult, estimate_gemm

__all__ = ["compile_gemm", "gemm_layouts", "check_gemm_fits", "GemmTiling", "tile_gemm", "GemmPlan",
           "plan_gemm", "ZeroPointFold", "fold_zero_points"]


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
    r, c, p = config.rows, config.cols, config.products_per_pe
    if config.dataflow is Dataflow.OUTPUT_STATIONARY:
        # A transposed: word mt*KW + j holds A[mt*R + r, j*p + i] in lane r*p + i (the matrix
        # stored is pack_weight_pairs(A^T), KW x M*p); B as in the weight-stationary case with
        # one word per reduction step; C in R-row tiles, tile (mt, nt) at word nt*MT*R + mt*R.
        kw, mt = -(-k // p), -(-m // r)
        a = MatrixLayout("act", 0, rows=kw, cols=m * p, lanes=config.act_lanes, tile_stride=kw)
        b = MatrixLayout("weight", 0, rows=kw, cols=n * p, lanes=config.weight_lanes,
                         tile_stride=kw)
        out = MatrixLayout("acc", 0, rows=m, cols=n, lanes=c, tile_stride=mt * r,
                           padded_rows=mt * r)
        return a, b, out
    k_tiles = -(-k // config.k_tile)
    a = MatrixLayout("act", 0, rows=m, cols=k, lanes=config.act_lanes, tile_stride=m)
    # B is stored transposed into words of C weights: its "rows" are K, its lanes N (at int4
    # pairs of K rows share a word, interleaved per column: see pack_weight_pairs).
    b = MatrixLayout("weight", 0, rows=-(-k // p), cols=n * p, lanes=config.weight_lanes,
                     tile_stride=k_tiles * r, padded_rows=k_tiles * r)
    out = MatrixLayout("acc", 0, rows=m, cols=n, lanes=c, tile_stride=m)
    return a, b, out


def _lane_runs(n0: int, n1: int, lanes: int) -> list[tuple[int, int]]:
    """Columns ``n0 .. n1 - 1`` cut where the destination lane tile (of ``lanes``) changes."""
    runs = []
    while n0 < n1:
        end = min(n1, (n0 // lanes + 1) * lanes)
        runs.append((n0, end))
        n0 = end
    return runs


def requant_runs(config: AcceleratorConfig, n: int) -> list[tuple[int, int, int]]:
    """``(n_tile, first column, end column)`` of each REQUANT of an N-column result: each N
    tile's columns, cut where the activation lane tile changes (R != C arrays)."""
    c = config.cols
    return [(nt, n0, n1) for nt in range(-(-n // c))
            for n0, n1 in _lane_runs(nt * c, min(n, nt * c + c), config.act_lanes)]


def pack_weight_pairs(config: AcceleratorConfig, b: np.ndarray) -> np.ndarray:
    """``b`` (K x N) as the weight memory's lanes: itself at int8; at int4 the (K/2 x 2N)
    matrix whose element ``(i, 2c + j)`` is ``b[2i + j, c]`` (K padded to even with 0)."""
    p = config.products_per_pe
    if p == 1:
        return b
    k, n = b.shape
    padded = np.zeros((-(-k // p) * p, n), dtype=np.int64)
    padded[:k] = b
    return padded.reshape(-1, p, n).transpose(0, 2, 1).reshape(-1, n * p)


def _gemm_problems(config: AcceleratorConfig, m: int, k: int, n: int,
                   requant: bool = False) -> list[str]:
    """Each way an M x K x N GEMM overflows the memories of ``config`` (empty: it fits).

    With ``requant`` the 8-bit result also needs activation words after A, one parameter
    word per N tile and its REQUANT commands.
    """
    a, b, out = gemm_layouts(config, m, k, n)
    k_tiles, n_tiles = a.lane_tiles, out.lane_tiles
    problems = []
    y_tiles = -(-n // config.act_lanes) if requant else 0
    commands = n_tiles * k_tiles + 1 + (len(requant_runs(config, n)) if requant else 0)
    y_how = f" + {y_tiles} result tiles x {m} rows" if requant else ""
    if config.dataflow is Dataflow.OUTPUT_STATIONARY:
        m_tiles, kw = a.lane_tiles, a.rows  # act lane tiles are M tiles
        how = (f"{m_tiles} M tiles x {kw} steps" + y_how,
               f"{n_tiles} N tiles x {kw} steps",
               f"{n_tiles} N tiles x {m_tiles} M tiles x {config.rows} rows",
               f"{n_tiles} x {m_tiles} tiles + HALT")
    else:
        how = (f"{k_tiles} K tiles x {m} rows" + y_how,
               f"{n_tiles} N tiles x {k_tiles} K tiles x {config.rows} rows",
               f"{n_tiles} N tiles x {m} rows",
               f"{n_tiles} x {k_tiles} tiles + HALT")
    needs = (
        ("act", a.words + y_tiles * m, config.act_mem_words, how[0]),
        ("weight", b.words, config.weight_mem_words, how[1]),
        ("acc", out.words, config.acc_mem_words, how[2]),
        ("cmd", commands, config.cmd_mem_words, how[3] + (" + REQUANTs" if requant else "")),
        *((("param", n_tiles, config.param_mem_words, f"{n_tiles} N tiles"),) if requant else ()),
    )
    for memory, need, have, how in needs:
        if need > have:
            problems.append(
                f"the {memory} memory needs {need} words ({how}) but has {have} "
                f"({need - have} too many)"
            )
    if config.dataflow is Dataflow.OUTPUT_STATIONARY:
        if a.rows > _max_rows(config):
            problems.append(f"K = {k} exceeds the largest rows field")
    elif m > _max_rows(config):
        problems.append(f"M = {m} exceeds the largest rows field")
    return problems


def _max_rows(config: AcceleratorConfig) -> int:
    """The largest ``rows`` a Matmul command can carry."""
    return (1 << config.act_mem_words.bit_length()) - 1


def check_gemm_fits(config: AcceleratorConfig, m: int, k: int, n: int,
                    requant: bool = False) -> None:
    """Raise :class:`ProgramError` naming each memory that an M x K x N GEMM overflows."""
    problems = _gemm_problems(config, m, k, n, requant)
    if problems:
        raise ProgramError(
            f"GEMM {m}x{k}x{n} does not fit the {config.rows}x{config.cols} accelerator: "
            + "; ".join(problems)
        )


@dataclass(frozen=True)
class GemmRequant:
    """Per-column post-processing of a GEMM's int32 result on chip (one value per column N).

    ``bias`` (int32), ``scale`` (a Q31 multiplier in ``fixed-point`` mode, a float32 bit
    pattern in ``float32`` mode) and ``qctl`` (:func:`qsim.program.pack_qctl`) are what the
    parameter memories hold; the 8-bit result ``Y`` is written into the activation memory.
    """

    bias: np.ndarray
    scale: np.ndarray
    qctl: np.ndarray

    def take(self, columns: slice) -> GemmRequant:
        return GemmRequant(self.bias[columns], self.scale[columns], self.qctl[columns])

    @property
    def unsigned(self) -> bool:
        """The results are uint8 (every clamp lower bound is at least 0)."""
        return bool(np.all(unpack_qctl(self.qctl)["lo"] >= 0))

    def reference(self, config: AcceleratorConfig, c: np.ndarray) -> np.ndarray:
        """``Y`` from the exact int32 product ``c`` (M x N): what the accelerator must write."""
        y = requantize_lanes(config.requant, c, self.bias, self.scale, self.qctl, config.acc_bits)
        bits = config.input_format.bits
        return y & ((1 << bits) - 1) if self.unsigned else wrap(y, IntFormat(bits, True))

    @classmethod
    def random(cls, config: AcceleratorConfig, c: np.ndarray, rng: np.random.Generator) -> GemmRequant:
        """Random per-column parameters that spread ``c``'s columns over the output range.

        Per column: a bias within a tenth of the column's largest magnitude, a scale mapping
        that magnitude to 40..160 (so some results clamp), a zero point in -10..10 with the
        int8 range, or in 100..150 with the uint8 range (half the time, per GEMM); at int4
        the same divided by 16 (2.5..10, -1..1 or 6..9, the int4 or uint4 range).
        """
        if config.requant is RequantMode.NONE:
            raise ProgramError("a GEMM requantization needs a configuration with requant "
                               "fixed-point or float32")
        n = c.shape[1]
        top = np.maximum(np.abs(c).max(axis=0), 1).astype(np.float64)
        bias = np.round(rng.uniform(-0.1, 0.1, n) * top).astype(np.int64)
        small = config.input_format.bits == 4
        real = rng.uniform(40, 160, n) / (top * 1.1) / (16 if small else 1)
        if rng.random() < 0.5:
            zp, lo, hi = (rng.integers(6, 10, n), 0, 15) if small else (rng.integers(100, 151, n), 0, 255)
        else:
            zp, lo, hi = (rng.integers(-1, 2, n), -8, 7) if small else (rng.integers(-10, 11, n), -128, 127)
        if config.requant is RequantMode.FLOAT32:
            scale = real.astype(np.float32).view(np.int32).astype(np.int64)
            shift = np.zeros(n, np.int64)
        else:
            from qsim.quant.requant import quantize_multiplier

            multiplier, exponent = quantize_multiplier(real, single_rounding=True)
            scale, shift = np.asarray(multiplier, np.int64), 31 - np.asarray(exponent, np.int64)
        return cls(bias, scale, pack_qctl(shift, zp, lo, hi))


def compile_gemm(config: AcceleratorConfig, a: np.ndarray, b: np.ndarray,
                 name: str = "gemm", requant: GemmRequant | None = None) -> Program:
    """Program computing ``a @ b`` on ``config``; the result is output ``"C"``.

    Parameters
    ----------
    config : AcceleratorConfig
    a : array of shape (M, K)
        Activations in ``config.input_format``.
    b : array of shape (K, N)
        Weights in ``config.weight_format``.
    requant : GemmRequant, optional
        Post-process the result on chip: REQUANT commands write the 8-bit output ``"Y"``
        (M x N) into the activation memory after A, in A's layout (word
        ``base + (n // R) * M + m``, lane ``n % R``), ready to be the next product's input.
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
    check_gemm_fits(config, m, k, n, requant is not None)
    check_fits(a, config.input_format, "A")
    check_fits(b, config.weight_format, "B")
    a_lay, b_lay, c_lay = gemm_layouts(config, m, k, n)
    k_tiles, n_tiles = a_lay.lane_tiles, c_lay.lane_tiles
    os_ = config.dataflow is Dataflow.OUTPUT_STATIONARY
    stored_a = pack_weight_pairs(config, a.T.astype(np.int64)) if os_ else a.astype(np.int64)
    inputs = {"A": (a_lay, stored_a),
              "B": (b_lay, pack_weight_pairs(config, b.astype(np.int64)))}
    outputs = {"C": c_lay}
    commands = []
    for nt in range(n_tiles):
        if os_:  # one tile of R output rows per M tile, the whole reduction streamed
            for mt in range(a_lay.lane_tiles):
                commands.append(Matmul(
                    act_addr=a_lay.base + mt * a_lay.tile_stride,
                    weight_addr=b_lay.base + nt * b_lay.tile_stride,
                    acc_addr=c_lay.base + nt * c_lay.tile_stride + mt * config.rows,
                    rows=a_lay.rows,
                ))
            continue
        for kt in range(k_tiles):
            commands.append(Matmul(
                act_addr=a_lay.base + kt * a_lay.tile_stride,
                weight_addr=b_lay.base + nt * b_lay.tile_stride + kt * config.rows,
                acc_addr=c_lay.base + nt * c_lay.tile_stride,
                rows=m,
                accumulate=kt > 0,
            ))
    if requant is not None:
        bits = config.input_format.bits
        # one act word per output row (the weight-stationary A layout) in both dataflows
        y_lay = MatrixLayout("act", a_lay.end, rows=m, cols=n, lanes=config.act_lanes,
                             tile_stride=m, unsigned_bits=bits if requant.unsigned else 0)
        for nt, n0, n1 in requant_runs(config, n):
            commands.append(Requant(
                acc_addr=c_lay.base + nt * c_lay.tile_stride,
                act_addr=y_lay.base + (n0 // config.act_lanes) * y_lay.tile_stride,
                rows=m, param_addr=nt, lanes=n1 - n0, src_lane=n0 - nt * config.cols,
                dst_lane=n0 % config.act_lanes))
        for key in ("bias", "scale", "qctl"):
            layout = MatrixLayout(key, 0, rows=1, cols=n, lanes=config.cols, tile_stride=1)
            inputs[key] = (layout, np.asarray(getattr(requant, key), np.int64).reshape(1, n))
        outputs["Y"] = y_lay
    commands.append(Halt())
    return Program(
        config=config,
        commands=tuple(commands),
        inputs=inputs,
        outputs=outputs,
        name=name,
        meta={"op": "gemm", "m": m, "k": k, "n": n, "useful_macs": m * k * n},
    )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    """``(count, length)`` of the chunks that cut ``total`` units into pieces of ``size``."""
    full, rest = divmod(total, size)
    return [(full, size)] + ([(1, rest)] if rest else [])


def _chunk_sizes(total: int, limit: int, keep: int = 24) -> list[int]:
    """Chunk sizes worth trying for ``total`` units cut into pieces of at most ``limit``.

    For each number of chunks q the balanced size ``ceil(total / q)``, largest first (so at
    most about 2 sqrt(total) sizes); past the first ``keep`` only sizes at least a fifth
    smaller than the last one kept, which bounds the search for huge GEMMs.
    """
    sizes: list[int] = []
    q = _ceil_div(total, limit)
    while True:
        size = _ceil_div(total, q)
        if len(sizes) < keep or 5 * size <= 4 * sizes[-1]:
            sizes.append(size)
        if size == 1:
            return sizes
        q = _ceil_div(total, size - 1)  # the next q whose balanced size is smaller


def _program_cost(config: AcceleratorConfig, rows: int, tiles: int) -> int:
    """Twice the cycles of one Program of ``tiles`` Matmuls of ``rows`` rows, approximately.

    The first Matmul costs ``rows + R + C + 3`` cycles (weight load, skew and drain
    included); in steady state each further one costs ``max(rows, R, (rows + C - 1) / 2)``:
    streaming, the weight load of R rows, or the release of the weight buffer two tiles back
    (see :mod:`qsim.timing`). This only ranks tilings; :meth:`GemmTiling.estimate` is exact.
    """
    r, c = config.rows, config.cols
    return 2 * (rows + r + c + 3) + (tiles - 1) * max(2 * rows, 2 * r, rows + c - 1)


@dataclass(frozen=True)
class GemmTiling:
    """How an M x K x N GEMM is cut into Programs that fit one accelerator (shapes only).

    Blocks hold at most ``block_m`` rows of A, ``block_k`` of the reduction (a multiple of
    the array's rows unless it is all of K) and ``block_n`` columns of B (a multiple of its
    columns unless it is all of N). A GEMM that fits is one block.
    """

    config: AcceleratorConfig
    m: int
    k: int
    n: int
    block_m: int
    block_k: int
    block_n: int
    requant: bool = False

    @property
    def counts(self) -> tuple[int, int, int]:
        """Blocks along M, K and N."""
        return (_ceil_div(self.m, self.block_m), _ceil_div(self.k, self.block_k),
                _ceil_div(self.n, self.block_n))

    @property
    def programs(self) -> int:
        qm, qk, qn = self.counts
        return qm * qk * qn

    def blocks(self) -> Iterator[tuple[slice, slice, slice]]:
        """``(rows of A, columns of B, reduction)`` of each Program: M, then N, then K."""
        for m0 in range(0, self.m, self.block_m):
            for n0 in range(0, self.n, self.block_n):
                for k0 in range(0, self.k, self.block_k):
                    yield (slice(m0, min(self.m, m0 + self.block_m)),
                           slice(n0, min(self.n, n0 + self.block_n)),
                           slice(k0, min(self.k, k0 + self.block_k)))

    def shapes(self) -> dict[tuple[int, int, int], int]:
        """How many blocks of each ``(m, k, n)`` shape the GEMM is cut into (at most 8)."""
        return {(bm, bk, bn): cm * ck * cn
                for cm, bm in _chunks(self.m, self.block_m)
                for ck, bk in _chunks(self.k, self.block_k)
                for cn, bn in _chunks(self.n, self.block_n)}

    def estimate(self) -> TimingResult:
        """Cycles and action counts of all the Programs, one after another, without data.

        Each block shape is costed once by :func:`qsim.timing.estimate_gemm` and multiplied
        by its count, so this equals the sum of :func:`qsim.timing.simulate_timing` over
        the Programs of :func:`plan_gemm` exactly (each Program is a separate run, with its
        own start-up and drain). ``useful_macs`` is M x K x N; ``schedule`` is left empty
        unless the GEMM is one Program.
        """
        if self.programs == 1:
            return estimate_gemm(self.config, self.m, self.k, self.n, requant=self.requant)
        parts = [(estimate_gemm(self.config, bm, bk, bn, requant=self.requant), count)
                 for (bm, bk, bn), count in self.shapes().items()]
        totals: dict[str, int] = {}
        for timing, count in parts:
            for key, value in timing.counters().items():
                totals[key] = totals.get(key, 0) + value * count
        # every counter is a field of TimingResult; per-command schedules are left empty
        empty = {f.name: [] for f in fields(TimingResult) if f.default_factory is list}
        return replace(parts[0][0], **totals, **empty, useful_macs=self.m * self.k * self.n)

    def describe(self) -> str:
        """``"1 program"`` or ``"12 programs of at most 256x64x64 (M x K x N)"``."""
        if self.programs == 1:
            return "1 program"
        return (f"{self.programs} programs of at most "
                f"{self.block_m}x{self.block_k}x{self.block_n} (M x K x N)")


def tile_gemm(config: AcceleratorConfig, m: int, k: int, n: int,
              requant: bool = False) -> GemmTiling:
    """Cut an M x K x N GEMM into the fewest, cheapest Programs that fit ``config``.

    A GEMM that fits (:func:`check_gemm_fits`) is one Program, exactly :func:`compile_gemm`'s.
    Otherwise a Program may hold ``kt`` K tiles and ``nt`` N tiles of ``mc`` rows when
    ``kt*mc <= act_mem_words``, ``nt*kt*rows <= weight_mem_words``,
    ``nt*mc <= acc_mem_words`` and ``nt*kt + 1 <= cmd_mem_words``. Every balanced ``kt``
    (the K tiles split into equal chunks) and ``nt`` is tried with the most rows that then
    fit, split evenly too (never a block of one leftover row), and the tiling of the fewest
    estimated cycles (:func:`_program_cost`) wins, then the one of the fewest Programs, then
    the longest reduction. So Matmuls stream at least as many rows as the array has where
    the memories allow (the next weight tile then loads behind streaming), and the GEMM is
    cut into as few Programs as that leaves, each paying the pipeline's start-up and drain.
    The greedy rule used before (the whole reduction first, then as many N tiles and rows
    as fit) could leave one row per Matmul: 3969 Programs for 1000^3 on ``tiny-4x4``, where
    this takes 567, and 15 % more cycles than this for 300^3 on an 8 x 8 with 64-word memories.

    With ``requant`` (the result post-processed on chip, :class:`GemmRequant`) every
    Program holds the whole reduction, since requantization needs the complete sum; the
    activation memory also holds the 8-bit result and each N tile needs a parameter word.
    """
    _check_shape(m, k, n)
    r, c = config.rows, config.cols
    if config.weight_mem_words < r or config.cmd_mem_words < 2:
        raise ProgramError(
            f"the {config.rows}x{config.cols} accelerator cannot hold one weight tile "
            f"({r} words) and one command: weight memory {config.weight_mem_words} words, "
            f"command memory {config.cmd_mem_words} words")
    if not _gemm_problems(config, m, k, n, requant):
        return GemmTiling(config, m, k, n, m, k, n, requant)
    if config.dataflow is Dataflow.OUTPUT_STATIONARY:
        return _tile_gemm_os(config, m, k, n, requant)
    act, weight, acc, cmd = (config.act_mem_words, config.weight_mem_words,
                             config.acc_mem_words, config.cmd_mem_words)
    k_tiles, n_tiles = _ceil_div(k, config.k_tile), _ceil_div(n, c)
    max_rows = _max_rows(config)
    best: tuple[tuple[int, int, int, int], tuple[int, int, int]] | None = None
    # REQUANTs per N tile: its columns cut where the activation lane tile changes
    runs = -(-c // config.act_lanes) + 1 if requant else 0
    if requant:
        kt_options = [k_tiles]
        nt_cap = min(config.param_mem_words, (cmd - 1) // (k_tiles + runs))
        if k_tiles * r > weight or 2 * k_tiles > act or nt_cap < 1:
            raise ProgramError(
                f"GEMM {m}x{k}x{n} with requantization on chip needs its whole reduction "
                f"(K = {k}, {k_tiles} tiles) in one program, which the {r}x{c} accelerator "
                f"cannot hold: {k_tiles * r} weight words (has {weight}), {2 * k_tiles} act "
                f"words for one row and its result (has {act}), {k_tiles + runs + 1} commands "
                f"(has {cmd})")
    else:
        kt_options = _chunk_sizes(k_tiles, min(k_tiles, weight // r, act, cmd - 1))
        nt_cap = n_tiles
    for kt in kt_options:
        nt_limit = min(n_tiles, nt_cap, weight // (kt * r), acc, (cmd - 1) // (kt + runs))
        for nt in _chunk_sizes(n_tiles, nt_limit):
            y_tiles = -(-min(n, nt * c) // config.act_lanes) if requant else 0
            rows_limit = min(m, act // (kt + y_tiles), acc // nt, max_rows)
            if rows_limit < 1:
                continue
            mc = _ceil_div(m, _ceil_div(m, rows_limit))
            cost = sum(cm * cn * ck * _program_cost(config, rows, nts * kts)
                       for cm, rows in _chunks(m, mc)
                       for cn, nts in _chunks(n_tiles, nt)
                       for ck, kts in _chunks(k_tiles, kt))
            programs = _ceil_div(m, mc) * _ceil_div(n_tiles, nt) * _ceil_div(k_tiles, kt)
            key = (cost, programs, -kt, -nt)
            if best is None or key < best[0]:
                best = (key, (mc, kt, nt))
    assert best is not None  # kt = nt = 1 always fits
    mc, kt, nt = best[1]
    return GemmTiling(config, m, k, n, mc, min(k, kt * config.k_tile), min(n, nt * c), requant)


def _tile_gemm_os(config: AcceleratorConfig, m: int, k: int, n: int, requant: bool) -> GemmTiling:
    """:func:`tile_gemm` for the output-stationary dataflow.

    A Program may hold ``kw`` reduction words (of ``products_per_pe`` steps), ``mt`` M tiles
    of R rows and ``nt`` N tiles when ``mt*kw (+ result words) <= act_mem_words``,
    ``nt*kw <= weight_mem_words``, ``nt*mt*R <= acc_mem_words`` and ``nt*mt + 1 (+ REQUANTs)
    <= cmd_mem_words``; each tile costs ``max(kw, R)`` cycles (:mod:`qsim.timing`) and each
    Program ``R + C`` more to fill and drain, and the cheapest tiling wins.
    """
    r, c, p = config.rows, config.cols, config.products_per_pe
    act, weight, acc, cmd = (config.act_mem_words, config.weight_mem_words,
                             config.acc_mem_words, config.cmd_mem_words)
    k_words, m_tiles, n_tiles = _ceil_div(k, p), _ceil_div(m, r), _ceil_div(n, c)
    runs = -(-c // config.act_lanes) + 1 if requant else 0
    if requant:
        kw_options = [k_words]
    else:
        kw_options = _chunk_sizes(k_words, max(1, min(k_words, act, weight, _max_rows(config))))
    best = None
    for kw in kw_options:
        if kw > min(act, weight, _max_rows(config)):
            continue
        nt_limit = min(n_tiles, weight // kw, acc // r, (cmd - 1) // (1 + runs))
        if requant:
            nt_limit = min(nt_limit, config.param_mem_words)
        if nt_limit < 1:
            continue
        for nt in _chunk_sizes(n_tiles, nt_limit):
            y_words = _ceil_div(min(n, nt * c), config.act_lanes) * r if requant else 0
            mt_limit = min(m_tiles, act // (kw + y_words), acc // (nt * r),
                           (cmd - 1) // (nt * (1 + runs)))
            if mt_limit < 1:
                continue
            mt = _ceil_div(m_tiles, _ceil_div(m_tiles, mt_limit))
            cost = sum(cm * cn * ck * (3 + 2 * r + c + mts * nts * max(kws, r))
                       for cm, mts in _chunks(m_tiles, mt)
                       for cn, nts in _chunks(n_tiles, nt)
                       for ck, kws in _chunks(k_words, kw))
            programs = _ceil_div(m_tiles, mt) * _ceil_div(n_tiles, nt) * _ceil_div(k_words, kw)
            key = (cost, programs, -kw, -nt)
            if best is None or key < best[0]:
                best = (key, (mt, kw, nt))
    if best is None:
        raise ProgramError(
            f"GEMM {m}x{k}x{n} cannot be cut into programs that fit the {r}x{c} "
            f"output-stationary accelerator" + (" with its whole reduction in each program "
                                                 "(requantization on chip)" if requant else ""))
    mt, kw, nt = best[1]
    return GemmTiling(config, m, k, n, min(m, mt * r), min(k, kw * p), min(n, nt * c), requant)


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
    tiling: GemmTiling | None = None
    name: str = "gemm"
    requant: GemmRequant | None = None

    def assemble_y(self, outputs: list[np.ndarray]) -> np.ndarray:
        """The post-processed result ``Y`` (m x n) from each program's output ``Y``."""
        if self.requant is None:
            raise ProgramError("this plan has no requantization on chip (no output Y)")
        total = np.zeros((self.m, self.n), dtype=np.int64)
        for (ms, ns, _), out in zip(self.blocks, outputs):
            total[ms, ns] = out
        return total

    def assemble(self, outputs: list[np.ndarray]) -> np.ndarray:
        """``C`` (m x n, int64, wrapped to ``acc_bits``) from each program's output ``C``."""
        if len(outputs) != len(self.programs):
            raise ProgramError(f"{len(outputs)} outputs for {len(self.programs)} programs")
        total = np.zeros((self.m, self.n), dtype=np.int64)
        for (ms, ns, _), out in zip(self.blocks, outputs):
            total[ms, ns] += out
        return wrap(total, self.config.acc_format)


def plan_gemm(config: AcceleratorConfig, a: np.ndarray, b: np.ndarray, name: str = "gemm", *,
              label_single: bool = True, requant: GemmRequant | None = None) -> GemmPlan:
    """Cut ``a @ b`` into Programs that fit the memories, as :func:`tile_gemm` chooses.

    Program names are ``name[m0:m1,n0:n1,k0:k1]`` (the block), or ``name`` alone for a GEMM
    that is one Program when ``label_single`` is false. The operands are checked whole (an
    out-of-range value is named by its index in ``a`` or ``b``).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ProgramError(f"GEMM operands must be 2-D with matching inner sizes, not {a.shape} and {b.shape}")
    if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise ProgramError(f"GEMM operands must be integer arrays, not {a.dtype} and {b.dtype}")
    m, k = a.shape
    n = b.shape[1]
    tiling = tile_gemm(config, m, k, n, requant is not None)
    check_fits(a, config.input_format, "A")
    check_fits(b, config.weight_format, "B")
    programs, blocks = [], []
    for ms, ns, ks in tiling.blocks():
        label = f"{name}[{ms.start}:{ms.stop},{ns.start}:{ns.stop},{ks.start}:{ks.stop}]"
        if tiling.programs == 1 and not label_single:
            label = name
        part = None if requant is None else requant.take(ns)
        programs.append(compile_gemm(config, a[ms, ks], b[ks, ns], name=label, requant=part))
        blocks.append((ms, ns, ks))
    return GemmPlan(config, m, k, n, programs, blocks, tiling, name, requant)


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
