"""GEMMs whose operands start and results end in DRAM (a configuration with a bus interface).

:func:`compile_gemm_dram` lowers ``A @ B`` as :func:`qsim.compile.compile_gemm` does and
adds the data movement:

1. the program at DRAM byte 0, then A, B (each weight tile a LOAD moves, as its own region)
   and the requantization parameters, each in its
   on-chip memory's word format, every region aligned to 64 bytes (and to the bus width);
2. ``LOAD`` A whole into the activation memory (and the parameters);
3. weight-stationary: the weight tiles through two buffers of ``R`` words: the LOAD of tile
   ``t + 1`` runs while MATMUL ``t`` streams (each MATMUL has ``wait`` set, so it starts once
   its own tile has arrived); output-stationary: each N tile's ``KW`` weight words through two
   buffers, each LOAD waiting for the MATMULs before it (an output-stationary MATMUL reads
   its weights while it streams, so nothing finer is safe);
4. ``STORE`` C (and the requantized Y) once every MATMUL has written it.

The whole of A and C stay on chip, so the GEMM must fit the activation and accumulator
memories as for :func:`compile_gemm`; only the weights are streamed.
"""

from __future__ import annotations

import numpy as np

from qsim.config import AcceleratorConfig, Dataflow
from qsim.errors import ProgramError
from qsim.program import (DramLayout, Halt, Load, MatrixLayout, Matmul, Program, Requant, Store,
                          dram_word_bytes)

__all__ = ["compile_gemm_dram", "REGION_ALIGN"]

REGION_ALIGN = 64


def _align(value: int, width: int) -> int:
    step = max(REGION_ALIGN, width)
    return -(-value // step) * step


def compile_gemm_dram(config: AcceleratorConfig, a: np.ndarray, b: np.ndarray,
                      name: str = "gemm", requant=None) -> Program:
    """Program computing ``a @ b`` with A and B read from DRAM and C (and Y with
    ``requant``, see :func:`qsim.compile.compile_gemm`) written back to DRAM."""
    from qsim.compile import compile_gemm

    if not config.has_dram:
        raise ProgramError("compile_gemm_dram needs a configuration with a bus interface "
                           "(dram_width)")
    onchip_cfg = config.replace(dram_width=0, dram_latency=0)
    onchip = compile_gemm(onchip_cfg, a, b, name=name, requant=requant)
    os_ = config.dataflow is Dataflow.OUTPUT_STATIONARY
    r = config.rows
    width = config.dram_width
    a_lay, a_data = onchip.inputs["A"]
    b_lay, b_data = onchip.inputs["B"]
    c_lay = onchip.outputs["C"]
    matmuls = [c for c in onchip.commands if isinstance(c, Matmul)]
    requants = [c for c in onchip.commands if isinstance(c, Requant)]

    # DRAM placement: the program first, then A, B, parameters, C, Y
    commands_estimate = 2 * len(matmuls) + len(requants) + 8
    addr = _align(commands_estimate * dram_word_bytes(config, "cmd"), width)
    dram_inputs: dict[str, tuple[DramLayout, np.ndarray]] = {}
    dram_outputs: dict[str, DramLayout] = {}

    def place(key: str, lay: MatrixLayout) -> DramLayout:
        nonlocal addr
        d = DramLayout(MatrixLayout(lay.memory, 0, lay.rows, lay.cols, lay.lanes,
                                    lay.tile_stride, lay.padded_rows, lay.unsigned_bits), addr)
        addr = _align(d.end(config), width)
        return d

    a_dram = place("A", a_lay)
    dram_inputs["A"] = (a_dram, a_data)
    # B as the weight words each LOAD moves, every chunk at an aligned address
    b_words = b_lay.pack(b_data)
    lanes = config.weight_lanes
    chunk_addr: dict[int, int] = {}

    def chunk(first: int, count: int) -> int:
        """DRAM address of weight words ``first .. first + count - 1`` of B's image."""
        if first not in chunk_addr:
            lay = MatrixLayout("weight", 0, count, lanes, lanes, count)
            d = place(f"B@{first}", lay)
            dram_inputs[f"B@{first}"] = (d, b_words[first : first + count])
            chunk_addr[first] = d.addr
        return chunk_addr[first]
    params = {}
    for key in ("bias", "scale", "qctl"):
        if key in onchip.inputs:
            lay, data = onchip.inputs[key]
            params[key] = (place(key, lay), lay)
            dram_inputs[key] = (params[key][0], data)
    c_dram = place("C", c_lay)
    dram_outputs["C"] = c_dram
    y_lay = onchip.outputs.get("Y")
    y_dram = place("Y", y_lay) if y_lay is not None else None
    if y_dram is not None:
        dram_outputs["Y"] = y_dram

    # on chip: A and C where compile_gemm put them, weights in two buffers after B's tiles
    commands: list = [Load("act", a_dram.addr, a_lay.base, a_lay.words)]
    for key, (d, lay) in params.items():
        commands.append(Load(key, d.addr, lay.base, lay.words))
    if os_:
        span = b_lay.rows  # KW weight words per N tile
        buffers = [0, span]
        if 2 * span > config.weight_mem_words:
            raise ProgramError(f"two buffers of {span} weight words do not fit the "
                               f"{config.weight_mem_words}-word weight memory")
        tile_of = [mm.weight_addr // b_lay.tile_stride for mm in matmuls]
        loaded = -1
        for mm, nt in zip(matmuls, tile_of):
            first = nt != loaded
            if first:
                buf = buffers[nt % 2]
                commands.append(Load("weight", chunk(nt * b_lay.tile_stride, span),
                                     buf, span, wait=loaded >= 0))
                loaded = nt
            commands.append(Matmul(mm.act_addr, buffers[nt % 2], mm.acc_addr, mm.rows,
                                   mm.accumulate, mm.inner, mm.step, mm.stride, mm.act_unsigned,
                                   wait=first))
    else:
        if 2 * r > config.weight_mem_words:
            raise ProgramError(f"two weight tiles of {r} words do not fit the "
                               f"{config.weight_mem_words}-word weight memory")

        def tile_load(t: int) -> Load:
            return Load("weight", chunk(matmuls[t].weight_addr, r), (t % 2) * r, r)

        commands.append(tile_load(0))
        for t, mm in enumerate(matmuls):
            commands.append(Matmul(mm.act_addr, (t % 2) * r, mm.acc_addr, mm.rows,
                                   mm.accumulate, mm.inner, mm.step, mm.stride, mm.act_unsigned,
                                   wait=True))
            if t + 1 < len(matmuls):
                commands.append(tile_load(t + 1))
    commands += requants
    commands.append(Store("acc", c_dram.addr, c_lay.base, c_lay.words, wait=True))
    if y_dram is not None:
        commands.append(Store("act", y_dram.addr, y_lay.base, y_lay.words, wait=True))
    commands.append(Halt())
    if len(commands) > commands_estimate:
        raise AssertionError("compile_gemm_dram: program longer than its DRAM region")
    meta = dict(onchip.meta)
    return Program(config=config, commands=tuple(commands), outputs={}, name=name, meta=meta,
                   dram_inputs=dram_inputs, dram_outputs=dram_outputs)
