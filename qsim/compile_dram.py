"""GEMMs whose operands start and results end in DRAM (a configuration with a bus interface).

:func:`plan_dram_gemm` lowers an M x K x N product to commands from its shape alone (the
timing model and the network estimates use it); :func:`compile_gemm_dram` adds the data and
returns a :class:`~qsim.program.Program`. The lowering:

* DRAM holds the program at byte 0, then every piece a LOAD or STORE moves as its own
  *chunk*, at an address aligned to 64 bytes (and to the bus width): a chunk is a run of
  on-chip memory words in their DRAM format, so no transfer is ever misaligned;
* the rows of A are cut into blocks that fit the activation and accumulator memories (all
  of A's lane tiles and all of C's column tiles for the block's rows stay on chip);
* per block: LOAD the block's A words, then, weight-stationary, the weight tiles through
  two buffers of ``R`` words — the LOAD of tile ``t + 1`` overlaps MATMUL ``t``, every MATMUL
  has ``wait`` set so that it starts once its own tile has arrived; output-stationary, each
  column tile's ``KW`` weight words through two buffers, a LOAD waiting for the MATMULs before
  it (they read their weights while they stream); then the REQUANTs (with a post-processing
  unit) and the STOREs of the block's C (and Y) words, which wait for the MATMULs;
* the next block's A LOAD waits for the previous block's work to finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qsim.config import AcceleratorConfig, Dataflow
from qsim.errors import ProgramError
from qsim.program import (Command, DramLayout, Halt, Load, MatrixLayout, Matmul, Program,
                          Requant, Store, dram_word_bytes, memory_lanes)

__all__ = ["DramGemmPlan", "plan_dram_gemm", "dram_gemm_stream", "compile_gemm_dram",
           "REGION_ALIGN"]

REGION_ALIGN = 64


@dataclass(frozen=True)
class Chunk:
    """``count`` words of on-chip memory ``memory`` kept in DRAM from byte ``addr``; they are
    words ``first ..`` of the whole operand's image (:func:`qsim.compile.gemm_layouts`)."""

    key: str
    memory: str
    addr: int
    first: int
    count: int


@dataclass
class DramGemmPlan:
    """Commands and DRAM chunks of one GEMM (see the module docstring)."""

    config: AcceleratorConfig
    m: int
    k: int
    n: int
    commands: list[Command]
    inputs: dict[str, list[Chunk]] = field(default_factory=dict)  # "A", "B", "bias", ...
    outputs: dict[str, list[Chunk]] = field(default_factory=dict)  # "C", "Y"
    blocks: int = 1
    block: int = 0  # rows of A per block (the last block may have fewer)


def _align(value: int, width: int) -> int:
    step = max(REGION_ALIGN, width)
    return -(-value // step) * step


@dataclass(frozen=True)
class _Geometry:
    """How :func:`plan_dram_gemm` cuts an M x K x N GEMM (see the module docstring)."""

    a_lay: MatrixLayout
    b_lay: MatrixLayout
    c_lay: MatrixLayout
    os_: bool
    n_tiles: int  # C's column tiles
    kw: int  # weight words per column tile (reduction words)
    k_tiles: int  # A's lane tiles (weight-stationary; 0 output-stationary)
    y_tiles: int  # Y's lane tiles (with requant)
    m_tiles: int  # A^T's lane tiles, the M tiles (output-stationary)
    block: int  # rows of A per block
    blocks: int


def _geometry(config: AcceleratorConfig, m: int, k: int, n: int, requant: bool) -> _Geometry:
    """The block size of a GEMM from DRAM, checked against the on-chip memories."""
    from qsim.compile import gemm_layouts

    if not config.has_dram:
        raise ProgramError("a GEMM from DRAM needs a configuration with a bus interface "
                           "(dram_width)")
    a_lay, b_lay, c_lay = gemm_layouts(config, m, k, n)
    r = config.rows
    os_ = config.dataflow is Dataflow.OUTPUT_STATIONARY
    n_tiles = c_lay.lane_tiles
    kw = b_lay.rows  # weight words per column tile (reduction words)
    k_tiles = a_lay.lane_tiles if not os_ else 0
    y_tiles = -(-n // config.act_lanes) if requant else 0
    m_tiles = a_lay.lane_tiles if os_ else 0  # the act lane tiles of A^T are M tiles

    # block rows: all of A's and C's (and Y's) words of a block's rows fit on chip
    if os_:
        per_tile_act = kw + (y_tiles * r if requant else 0)
        per_tile_acc = n_tiles * r
        tiles = min(config.act_mem_words // per_tile_act, config.acc_mem_words // per_tile_acc,
                    m_tiles)
        block = tiles * r
    else:
        per_row_act = k_tiles + y_tiles
        block = min(config.act_mem_words // per_row_act, config.acc_mem_words // n_tiles, m)
    weight_need = 2 * (kw if os_ else r)
    if block < (r if os_ else 1) or weight_need > config.weight_mem_words:
        raise ProgramError(
            f"a {m}x{k}x{n} GEMM from DRAM does not fit the on-chip memories of "
            f"{config.describe()}: one block needs more activation, accumulator or weight words "
            f"than there are")
    if config.requant.value != "none" and n_tiles > config.param_mem_words:
        raise ProgramError(f"{n_tiles} column tiles need {n_tiles} words of each parameter "
                           f"memory, which has {config.param_mem_words}")
    return _Geometry(a_lay, b_lay, c_lay, os_, n_tiles, kw, k_tiles, y_tiles, m_tiles, block,
                     -(-m // block))


def plan_dram_gemm(config: AcceleratorConfig, m: int, k: int, n: int,
                   requant: bool = False) -> DramGemmPlan:
    """The commands and DRAM placement of ``A[M,K] @ B[K,N]`` on ``config`` (no data)."""
    from qsim.compile import requant_runs

    g = _geometry(config, m, k, n, requant)
    b_lay = g.b_lay
    r, c = config.rows, config.cols
    os_ = g.os_
    width = config.dram_width
    n_tiles, kw, k_tiles, y_tiles, m_tiles, block = (g.n_tiles, g.kw, g.k_tiles, g.y_tiles,
                                                     g.m_tiles, g.block)

    commands: list[Command] = []
    blocks = g.blocks
    plan = DramGemmPlan(config, m, k, n, commands, blocks=blocks, block=block)
    chunks: list[Chunk] = []

    def chunk(key: str, memory: str, first: int, count: int) -> Chunk:
        ch = Chunk(key, memory, 0, first, count)
        chunks.append(ch)
        return ch

    # a transfer's DRAM address is known only once the program's length is (the program comes
    # first in DRAM): its place in the command list is held until then
    pending: list[tuple[int, type, Chunk, int, bool]] = []  # index, kind, chunk, sram, wait

    def transfer(kind, ch: Chunk, sram_addr: int, wait: bool = False) -> None:
        pending.append((len(commands), kind, ch, sram_addr, wait))
        commands.append(None)

    b_chunks: dict[int, Chunk] = {}

    def b_chunk(first: int, count: int) -> Chunk:
        if first not in b_chunks:
            b_chunks[first] = chunk("B", "weight", first, count)
        return b_chunks[first]

    if requant:
        for key in ("bias", "scale", "qctl"):
            transfer(Load, chunk(key, key, 0, n_tiles), 0)
    tile = 0  # weight tiles loaded so far (buffer = tile % 2)
    for bi in range(blocks):
        m0 = bi * block
        rows = min(block, m - m0)
        wait_block = bi > 0
        if os_:
            t0, t1 = m0 // r, -(-(m0 + rows) // r)
            mtb = t1 - t0
            ch = chunk("A", "act", t0 * kw, mtb * kw)
            transfer(Load, ch, 0, wait=wait_block)
            acc_stride = mtb * r
            for nt in range(n_tiles):
                buf = (nt % 2) * kw
                transfer(Load, b_chunk(nt * kw, kw), buf, wait=nt > 0 or wait_block)
                for mt in range(mtb):
                    commands.append(Matmul(mt * kw, buf, nt * acc_stride + mt * r, kw,
                                           wait=mt == 0))
            y_base = mtb * kw
            c_words = [(nt * m_tiles * r + t0 * r, nt * acc_stride, mtb * r)
                       for nt in range(n_tiles)]
        else:
            for t in range(k_tiles):
                transfer(Load, chunk("A", "act", t * m + m0, rows), t * rows, wait=wait_block and t == 0)
            first = True
            for nt in range(n_tiles):
                for kt in range(k_tiles):
                    buf = (tile % 2) * r
                    if first:
                        transfer(Load, b_chunk(nt * b_lay.tile_stride + kt * r, r), buf)
                        first = False
                    commands.append(Matmul(kt * rows, buf, nt * rows, rows, kt > 0, wait=True))
                    tile += 1
                    # the next tile's LOAD overlaps this MATMUL
                    nxt = (nt, kt + 1) if kt + 1 < k_tiles else (nt + 1, 0)
                    if nxt[0] < n_tiles:
                        transfer(Load, b_chunk(nxt[0] * b_lay.tile_stride + nxt[1] * r, r),
                                 (tile % 2) * r)
            acc_stride = rows
            y_base = k_tiles * rows
            c_words = [(nt * m + m0, nt * rows, rows) for nt in range(n_tiles)]
        if requant:
            for nt, n0, n1 in requant_runs(config, n):
                commands.append(Requant(
                    acc_addr=nt * acc_stride,
                    act_addr=y_base + (n0 // config.act_lanes) * rows,
                    rows=rows, param_addr=nt, lanes=n1 - n0, src_lane=n0 - nt * c,
                    dst_lane=n0 % config.act_lanes))
        for first_word, sram, count in c_words:
            ch = chunk("C", "acc", first_word, count)
            transfer(Store, ch, sram, wait=True)
        for yt in range(y_tiles):
            ch = chunk("Y", "act", yt * m + m0, rows)
            transfer(Store, ch, y_base + yt * rows, wait=True)
    commands.append(Halt())
    n_commands = len(commands)

    # DRAM placement: the program, then the chunks in order of first use
    sizes = {mem: dram_word_bytes(config, mem)
             for mem in ("cmd", "act", "weight", "acc", "bias", "scale", "qctl")}
    addr = _align(n_commands * sizes["cmd"], width)
    placed: dict[int, Chunk] = {}
    for ch in chunks:
        placed[id(ch)] = Chunk(ch.key, ch.memory, addr, ch.first, ch.count)
        addr = _align(addr + ch.count * sizes[ch.memory], width)
    for index, kind, ch, sram_addr, wait in pending:
        commands[index] = kind(ch.memory, placed[id(ch)].addr, sram_addr, ch.count, wait=wait)
    for ch in chunks:  # each chunk object once (a weight tile reused by blocks is one chunk)
        target = plan.outputs if ch.key in ("C", "Y") else plan.inputs
        target.setdefault(ch.key, []).append(placed[id(ch)])
    return plan


def dram_gemm_stream(config: AcceleratorConfig, m: int, k: int, n: int,
                     requant: bool = False):
    """The commands of :func:`plan_dram_gemm` (without the Halt) as a
    :class:`qsim.timing.CommandStream`, built with array operations: no command objects, the
    same kinds, flags, counts, memories and DRAM addresses row for row (a test compares
    both). Also returns the plan's :class:`_Geometry`."""
    from qsim.compile import requant_runs
    from qsim.timing import LOAD, MATMUL, REQUANT, STORE, STREAM_MEMORIES, CommandStream

    g = _geometry(config, m, k, n, requant)
    r, width = config.rows, config.dram_width
    mem_index = {name: i for i, name in enumerate(STREAM_MEMORIES)}
    word_bytes = {mem: dram_word_bytes(config, mem) for mem in STREAM_MEMORIES}
    step = max(REGION_ALIGN, width)
    columns: list[tuple] = []  # (kind, wait, count, memory, chunk, accumulate, lanes) arrays
    sizes: list[np.ndarray] = []  # aligned DRAM bytes of each chunk, in order of first use

    def piece(size: int, kind, wait, count, memory="act", chunk=-1, accumulate=False,
              lanes=0) -> None:
        def col(value, dtype=np.int64):
            return np.broadcast_to(np.asarray(value, dtype=dtype), (size,))
        columns.append((col(kind), col(wait, bool), col(count), col(mem_index[memory]
                        if isinstance(memory, str) else memory), col(chunk), col(accumulate, bool),
                        col(lanes)))

    def new_chunks(count: int, words: int, memory: str) -> np.ndarray:
        """Ordinals of ``count`` new chunks of ``words`` words each."""
        first = sum(len(s) for s in sizes)
        sizes.append(np.full(count, -(-words * word_bytes[memory] // step) * step, np.int64))
        return np.arange(first, first + count)

    if requant:
        for key in ("bias", "scale", "qctl"):
            piece(1, LOAD, False, g.n_tiles, key, new_chunks(1, g.n_tiles, key))
    runs = requant_runs(config, n) if requant else []
    run_lanes = np.array([n1 - n0 for _, n0, n1 in runs], dtype=np.int64)
    tiles = g.n_tiles * g.k_tiles  # weight-stationary weight tiles
    b_first = 0
    for bi in range(g.blocks):
        m0 = bi * g.block
        rows = min(g.block, m - m0)
        if g.os_:
            mtb = -(-(m0 + rows) // r) - m0 // r
            piece(1, LOAD, bi > 0, mtb * g.kw, "act", new_chunks(1, mtb * g.kw, "act"))
            if bi == 0:
                b_first = sum(len(s) for s in sizes)
                new_chunks(g.n_tiles, g.kw, "weight")
            # per column tile: its weights' LOAD, then a MATMUL per M tile of the block
            at = np.arange(g.n_tiles * (1 + mtb))
            nt, pos = np.divmod(at, 1 + mtb)  # pos 0: the LOAD, pos 1 + mt: M tile mt
            load = pos == 0
            piece(len(at), np.where(load, LOAD, MATMUL), np.where(load, (nt > 0) | (bi > 0), pos == 1),
                  g.kw, np.where(load, mem_index["weight"], 0), np.where(load, b_first + nt, -1))
            c_words = mtb * r
        else:
            piece(g.k_tiles, LOAD, (np.arange(g.k_tiles) == 0) & (bi > 0), rows, "act",
                  new_chunks(g.k_tiles, rows, "act"))
            if bi == 0:
                b_first = sum(len(s) for s in sizes)
                new_chunks(tiles, r, "weight")
            # the first tile's LOAD, then each MATMUL followed by the next tile's LOAD
            piece(1, LOAD, False, r, "weight", b_first)
            at = np.arange(2 * tiles - 1)
            tile, is_load = np.divmod(at, 2)
            load = is_load == 1
            piece(len(at), np.where(load, LOAD, MATMUL), ~load, np.where(load, r, rows),
                  np.where(load, mem_index["weight"], 0), np.where(load, b_first + tile + 1, -1),
                  ~load & (tile % g.k_tiles > 0))
            c_words = rows
        if runs:
            piece(len(runs), REQUANT, False, rows, lanes=run_lanes)
        piece(g.n_tiles, STORE, True, c_words, "acc", new_chunks(g.n_tiles, c_words, "acc"))
        if g.y_tiles:
            piece(g.y_tiles, STORE, True, rows, "act", new_chunks(g.y_tiles, rows, "act"))
    kind, wait, count, memory, chunk, accumulate, lanes = (np.concatenate(c) for c in zip(*columns))
    # DRAM placement: the program (and its Halt), then the chunks in order of first use
    base = -(-(len(kind) + 1) * word_bytes["cmd"] // step) * step
    all_sizes = np.concatenate(sizes)
    addr = base + np.concatenate(([0], np.cumsum(all_sizes)[:-1]))
    dram_addr = np.where(chunk >= 0, addr[np.maximum(chunk, 0)], 0)
    return CommandStream(kind, wait, count, memory, dram_addr, accumulate, lanes), g


def compile_gemm_dram(config: AcceleratorConfig, a: np.ndarray, b: np.ndarray,
                      name: str = "gemm", requant=None) -> Program:
    """Program computing ``a @ b`` with A and B read from DRAM and C (and Y with ``requant``,
    as :func:`qsim.compile.compile_gemm` describes it) written back to DRAM.

    The Program's ``meta["dram_plan"]`` is the :class:`DramGemmPlan`;
    :func:`dram_gemm_outputs` assembles C (and Y) from a DRAM image.
    """
    from qsim.compile import check_fits, gemm_layouts, pack_weight_pairs

    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ProgramError(f"GEMM operands must be 2-D with equal inner dimensions, not "
                           f"{a.shape} and {b.shape}")
    m, k = a.shape
    n = b.shape[1]
    check_fits(a, config.input_format, "A")
    check_fits(b, config.weight_format, "B")
    plan = plan_dram_gemm(config, m, k, n, requant is not None)
    a_lay, b_lay, _ = gemm_layouts(config, m, k, n)
    os_ = config.dataflow is Dataflow.OUTPUT_STATIONARY
    stored_a = pack_weight_pairs(config, a.T.astype(np.int64)) if os_ else a.astype(np.int64)
    images = {"A": a_lay.pack(stored_a), "B": b_lay.pack(pack_weight_pairs(config, b.astype(np.int64)))}
    if requant is not None:
        for key in ("bias", "scale", "qctl"):
            lay = MatrixLayout(key, 0, rows=1, cols=n, lanes=config.cols, tile_stride=1)
            images[key] = lay.pack(np.asarray(getattr(requant, key), np.int64).reshape(1, n))
    lanes = memory_lanes(config)
    dram_inputs = {}
    for key, chunks in plan.inputs.items():
        for ch in chunks:
            words = np.zeros((ch.count, lanes[ch.memory]), dtype=np.int64)
            part = images[key][ch.first : ch.first + ch.count]
            words[: len(part)] = part
            lay = MatrixLayout(ch.memory, 0, ch.count, lanes[ch.memory], lanes[ch.memory], ch.count)
            dram_inputs[f"{key}@{ch.first}"] = (DramLayout(lay, ch.addr), words)
    dram_outputs = {}
    for key, chunks in plan.outputs.items():
        for ch in chunks:
            lay = MatrixLayout(ch.memory, 0, ch.count, lanes[ch.memory], lanes[ch.memory], ch.count)
            dram_outputs[f"{key}@{ch.first}"] = DramLayout(lay, ch.addr)
    meta = {"op": "gemm", "m": m, "k": k, "n": n, "useful_macs": m * k * n, "dram_plan": plan}
    if requant is not None:
        meta["requant_unsigned"] = bool(requant.unsigned)
    return Program(config=config, commands=tuple(plan.commands), name=name, meta=meta,
                   dram_inputs=dram_inputs, dram_outputs=dram_outputs)


def dram_gemm_outputs(program: Program, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """C (and Y) assembled from the chunk outputs of :func:`compile_gemm_dram`'s program
    (``outputs``: the model's or the RTL's decoded outputs, keyed ``"C@<first word>"``)."""
    from qsim.compile import gemm_layouts

    plan: DramGemmPlan = program.meta["dram_plan"]
    cfg = program.config
    m, k, n = plan.m, plan.k, plan.n
    _, _, c_lay = gemm_layouts(cfg, m, k, n)
    result = {}
    for key, chunks in plan.outputs.items():
        if key == "C":
            lay = c_lay
        else:
            bits = cfg.input_format.bits
            lay = MatrixLayout("act", 0, rows=m, cols=n, lanes=cfg.act_lanes, tile_stride=m,
                               unsigned_bits=bits if program.meta.get("requant_unsigned") else 0)
        image = np.zeros((lay.end, lay.lanes), dtype=np.int64)
        for ch in chunks:
            words = outputs[f"{key}@{ch.first}"]
            stop = min(ch.first + ch.count, lay.end)
            image[ch.first : stop] = words[: stop - ch.first]
        result[key] = lay.unpack(image)
    return result
