"""The accelerator's command stream, its binary encoding, and where data lives in memory.

A :class:`Program` is what the compiler writes, the bit-accurate model executes, the timing
model costs and the RTL controller runs. It holds

* ``commands``: a sequence of :class:`Matmul` and :class:`Requant` commands ended by
  :class:`Halt`;
* ``inputs``: matrices to place in the on-chip memories before the run, each with the
  :class:`MatrixLayout` that says which word and lane holds which element;
* ``outputs``: layouts of the result matrices in the accumulator memory.

:class:`CommandLayout` is the one definition of the command word: the RTL controller slices
its fields from it and the cosim loader encodes with it, so the two cannot drift.

Semantics of ``Matmul(act_addr, weight_addr, acc_addr, rows, accumulate)`` on an R x C array,
executed in program order::

    X = act[act_addresses(...)]                   # rows x R activations (uint8 if act_unsigned)
    W = weight[weight_addr : weight_addr + R]     # R x C weights (a resident tile)
    acc[acc_addr : acc_addr + rows] = wrap(X @ W + (acc[...] if accumulate else 0))

where ``wrap`` is two's-complement wrap-around to ``acc_bits``. That is the
weight-stationary meaning. On an output-stationary configuration the same fields describe an
output tile instead (``p = products_per_pe``)::

    X = act[act_addresses(...)]                   # rows words of R x p activations: A^T
    W = weight[weight_addr : weight_addr + rows]  # rows words of p x C weights: B
    acc[acc_addr : acc_addr + R] = wrap(X^T @ W + (acc[...] if accumulate else 0))   # R x C

(word ``j`` of X holds ``A[r, j*p + i]`` in lane ``r*p + i``, word ``j`` of W ``B[j*p + i, c]``
in lane ``c*p + i``: :func:`qsim.model.os_tile`).

Semantics of ``Requant(acc_addr, act_addr, rows, param_addr, src_lane, dst_lane, lanes)``
(only on a configuration with a post-processing unit), with ``s = src_lane``,
``d = dst_lane`` and ``L = lanes``::

    v   = wrap(acc[acc_addr : acc_addr + rows, s : s+L] + bias[param_addr, s : s+L])
    y   = requantize(v, scale[param_addr, s : s+L], qctl[param_addr, s : s+L])
    act[act_addr : act_addr + rows, d : d+L] = y          # other lanes keep their values

where ``requantize`` is the configuration's mode (:func:`requantize_lanes`). The 8-bit result
is stored as the lane's bit pattern: a uint8 result of 200 reads back as int8 -56 unless the
matrix layout that decodes it says it is unsigned (``MatrixLayout.unsigned_bits``).
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence, Union

import numpy as np

from qsim.config import AcceleratorConfig, Dataflow, RequantMode
from qsim.errors import ProgramError
from qsim.numerics import INT32, IntFormat, Rounding, find_overflows, round_shift, wrap

__all__ = [
    "Opcode",
    "Matmul",
    "Halt",
    "Requant",
    "Load",
    "Store",
    "DmaCommand",
    "DramLayout",
    "LOAD_MEMORIES",
    "STORE_MEMORIES",
    "MEMORY_IDS",
    "Command",
    "CommandField",
    "CommandLayout",
    "MatrixLayout",
    "Program",
    "MEMORIES",
    "PARAM_MEMORIES",
    "QCTL_FORMAT",
    "pack_qctl",
    "unpack_qctl",
    "requantize_lanes",
    "act_addresses",
    "matmul_spans",
    "command_accesses",
    "check_races",
    "dram_word_bytes",
    "memory_word_bits",
    "DmaFault",
    "dma_fault",
    "ERROR_CODES",
]

#: Width of a DRAM byte address (the AXI4 address bus).
DRAM_ADDR_BITS = 32

#: Data memories a Program can place matrices in; the last three are the post-processing
#: unit's parameter memories (one word of ``cols`` lanes per output-channel tile).
PARAM_MEMORIES = ("bias", "scale", "qctl")
MEMORIES = ("act", "weight", "acc") + PARAM_MEMORIES

#: A ``qctl`` lane: right shift (bits 0-5, fixed-point mode), zero point (6-14), lower bound
#: (15-23) and upper bound (24-32), the last three 9-bit two's complement.
QCTL_FORMAT = IntFormat(33, False)
_QCTL_FIELDS = (("shift", 0, 6, False), ("zero_point", 6, 9, True), ("lo", 15, 9, True),
                ("hi", 24, 9, True))


class Opcode(enum.IntEnum):
    """Command opcodes. ``HALT`` is 0 so that an all-zero (cleared) word stops the controller."""

    HALT = 0
    MATMUL = 1
    REQUANT = 2
    LOAD = 3
    STORE = 4


@dataclass(frozen=True)
class Matmul:
    """Stream ``rows`` activation words through the resident weight tile into the accumulators.

    That is the weight-stationary meaning. On an output-stationary configuration a Matmul
    streams ``rows`` activation words (one reduction step each, ``R`` activations of
    ``A`` transposed, read as ``act_addresses`` says) and ``rows`` consecutive weight words
    from ``weight_addr`` (``C`` weights each) through the array, and writes (or adds to) the
    ``R`` accumulator words ``acc_addr ..`` of the R x C output tile.

    Parameters
    ----------
    act_addr : int
        First activation-memory word (each word holds ``rows`` of the array's activations).
    weight_addr : int
        First of the ``config.rows`` weight-memory words that form the weight tile.
    acc_addr : int
        First accumulator word written.
    rows : int
        Number of activation words streamed (output rows produced), at least 1.
    accumulate : bool
        Add to the accumulator contents (true) or overwrite them (false).
    inner, step, stride : int
        Activation addressing (:func:`act_addresses`): runs of ``inner`` words ``step``
        apart, each run ``stride`` words after the previous one's start; ``inner = 0`` (the
        default) is one run of ``rows`` consecutive words. A convolution reads its input in
        place this way (no im2col): one run per output row, ``step`` the stride, ``stride``
        the stride times the padded image width.
    act_unsigned : bool
        Read the activation lanes as unsigned (uint8 values, zero-extended into the array's
        multipliers) instead of two's complement. A uint8 tensor is stored as its bit
        pattern, so 200 stays 200 without any shift on the host or in the zero points.
    """

    act_addr: int
    weight_addr: int
    acc_addr: int
    rows: int
    accumulate: bool = False
    inner: int = 0
    step: int = 1
    stride: int = 0
    act_unsigned: bool = False
    wait: bool = False

    opcode = Opcode.MATMUL


@dataclass(frozen=True)
class Requant:
    """Post-process ``rows`` accumulator words into the activation memory.

    Lanes ``src_lane .. src_lane + lanes - 1`` of accumulator words ``acc_addr ..`` are
    biased, requantized, offset by the zero point and clamped with the parameters in lanes
    ``src_lane ..`` of word ``param_addr`` of the three parameter memories, and written into
    lanes ``dst_lane .. dst_lane + lanes - 1`` of activation words ``act_addr ..``; the other
    lanes of those words keep their values. The lane shift lets an R x C array with R != C
    lay output channels out as the next layer's reduction lanes.

    The command waits until every earlier MATMUL has written its results, and no command
    after it starts before its last write (see :mod:`qsim.timing`). ``inner``, ``step`` and
    ``stride`` address the activation words written as a Matmul's address its reads (runs
    of output pixels into the interior of the next layer's zero-point-padded image).
    """

    acc_addr: int
    act_addr: int
    rows: int
    param_addr: int
    lanes: int
    src_lane: int = 0
    dst_lane: int = 0
    inner: int = 0
    step: int = 1
    stride: int = 0
    wait: bool = False

    opcode = Opcode.REQUANT


@dataclass(frozen=True)
class DmaCommand:
    """A transfer of ``words`` words of ``memory`` (from word ``sram_addr``) to or from DRAM
    byte address ``dram_addr``: a :class:`Load` or a :class:`Store` (only on a configuration
    with a bus interface, ``dram_width > 0``).

    In DRAM a word of memory ``memory`` takes :func:`dram_word_bytes` bytes (its lanes packed
    little-endian, padded to whole bytes) and the words follow one another. The DMA engine
    runs one LOAD or STORE at a time, next to the compute commands: the command is taken as
    soon as the DMA engine is free and the next command is fetched at once. ``wait`` holds the
    command until every earlier compute command has finished (its last result written);
    without it a transfer may overlap earlier MATMULs and REQUANTs, and
    :meth:`Program.validate` rejects a program in which that overlap could race.
    """

    memory: str
    dram_addr: int
    sram_addr: int
    words: int
    wait: bool = False


@dataclass(frozen=True)
class Load(DmaCommand):
    """Copy words from DRAM into ``memory`` (act, weight or a parameter memory)."""

    opcode = Opcode.LOAD


@dataclass(frozen=True)
class Store(DmaCommand):
    """Copy words of ``memory`` (``acc`` or ``act``) to DRAM."""

    opcode = Opcode.STORE


@dataclass(frozen=True)
class Halt:
    """End of the program: the controller drains its pipeline and raises ``done``."""

    opcode = Opcode.HALT


Command = Union[Matmul, Requant, Load, Store, Halt]

#: Memories a LOAD may write and a STORE may read, and their ids in the command word.
LOAD_MEMORIES = ("act", "weight", "bias", "scale", "qctl")
STORE_MEMORIES = ("act", "acc")
MEMORY_IDS = {"act": 0, "weight": 1, "acc": 2, "bias": 3, "scale": 4, "qctl": 5, "cmd": 6}


def act_addresses(command: Matmul | Requant) -> np.ndarray:
    """Activation-memory words a command reads (Matmul) or writes (Requant), in order.

    Row ``i`` uses ``act_addr + (i // inner) * stride + (i % inner) * step``; with
    ``inner = 0`` the rows are ``act_addr, act_addr + step, ...`` (one run).
    """
    i = np.arange(command.rows, dtype=np.int64)
    if command.inner == 0:
        return command.act_addr + i * command.step
    return command.act_addr + (i // command.inner) * command.stride + (i % command.inner) * command.step


@dataclass(frozen=True)
class CommandField:
    name: str
    offset: int
    width: int

    @property
    def mask(self) -> int:
        return (1 << self.width) - 1


class CommandLayout:
    """Bit layout of one command word for a given configuration.

    Fields, from bit 0 upward: ``opcode`` (4 bits), ``accumulate`` (1), ``act_unsigned`` (1),
    ``rows`` (wide
    enough for ``act_mem_words``), ``act_addr``, ``weight_addr``, ``acc_addr`` (each the
    address width of its memory), ``inner`` (as ``rows``), ``step`` and ``stride`` (the
    activation address width); with a post-processing unit also ``param_addr``, ``src_lane``,
    ``dst_lane`` and ``lanes`` (wide enough for ``max(rows, cols)``). A command leaves the
    fields it does not use zero. The word is padded to a multiple of 32 bits.
    """

    OPCODE_BITS = 4

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = config
        widths = [
            ("opcode", self.OPCODE_BITS),
            ("accumulate", 1),
            ("act_unsigned", 1),
            ("rows", config.act_mem_words.bit_length()),
            ("act_addr", config.act_addr_bits),
            ("weight_addr", config.weight_addr_bits),
            ("acc_addr", config.acc_addr_bits),
            ("inner", config.act_mem_words.bit_length()),
            ("step", config.act_addr_bits),
            ("stride", config.act_addr_bits),
        ]
        if config.requant is not RequantMode.NONE:
            lane_bits = max(config.act_lanes, config.cols).bit_length()
            widths += [("param_addr", config.param_addr_bits), ("src_lane", lane_bits),
                       ("dst_lane", lane_bits), ("lanes", lane_bits)]
        if config.has_dram:
            depths = [config.act_mem_words, config.weight_mem_words, config.acc_mem_words,
                      config.param_mem_words]
            widths += [("wait", 1), ("mem", 3), ("dram_addr", DRAM_ADDR_BITS),
                       ("sram_addr", max(d - 1 for d in depths).bit_length()),
                       ("words", max(depths).bit_length())]
        offset = 0
        fields: dict[str, CommandField] = {}
        for name, width in widths:
            fields[name] = CommandField(name, offset, width)
            offset += width
        self.fields: Mapping[str, CommandField] = fields
        self.used_bits = offset
        self.width = 32 * math.ceil(offset / 32)

    def __getitem__(self, name: str) -> CommandField:
        return self.fields[name]

    def encode(self, command: Command) -> int:
        """The command as an unsigned integer of :attr:`width` bits."""
        if isinstance(command, Halt):
            return int(Opcode.HALT)
        if isinstance(command, DmaCommand):
            if "mem" not in self.fields:
                raise ProgramError(f"cannot encode {command!r}: the configuration has no bus "
                                   f"interface (dram_width 0)")
            values = {"opcode": int(command.opcode), "wait": int(bool(command.wait)),
                      "mem": MEMORY_IDS[command.memory], "dram_addr": command.dram_addr,
                      "sram_addr": command.sram_addr, "words": command.words}
        elif isinstance(command, Matmul):
            values = {
                "opcode": int(Opcode.MATMUL),
                "accumulate": int(bool(command.accumulate)),
                "act_unsigned": int(bool(command.act_unsigned)),
                "rows": command.rows,
                "act_addr": command.act_addr,
                "weight_addr": command.weight_addr,
                "acc_addr": command.acc_addr,
                "inner": command.inner,
                "step": command.step,
                "stride": command.stride,
            }
        elif isinstance(command, Requant):
            if "param_addr" not in self.fields:
                raise ProgramError(f"cannot encode {command!r}: the configuration has no "
                                   f"post-processing unit (requant none)")
            values = {"opcode": int(Opcode.REQUANT), "rows": command.rows,
                      "act_addr": command.act_addr, "acc_addr": command.acc_addr,
                      "param_addr": command.param_addr, "src_lane": command.src_lane,
                      "dst_lane": command.dst_lane, "lanes": command.lanes,
                      "inner": command.inner, "step": command.step, "stride": command.stride}
        else:
            raise ProgramError(f"cannot encode {command!r}: not a qsim command")
        if isinstance(command, (Matmul, Requant)) and command.wait:
            if "wait" not in self.fields:
                raise ProgramError(f"cannot encode {command!r}: wait needs a bus interface")
            values["wait"] = 1
        word = 0
        for name, value in values.items():
            f = self.fields[name]
            if not 0 <= value <= f.mask:
                raise ProgramError(
                    f"command field {name} = {value} does not fit its {f.width}-bit field"
                )
            word |= value << f.offset
        return word

    def decode(self, word: int) -> Command:
        """Inverse of :meth:`encode`; an unknown opcode is an error."""
        opcode = word & self.fields["opcode"].mask
        if opcode == Opcode.HALT:
            return Halt()
        known = (opcode == Opcode.MATMUL
                 or (opcode == Opcode.REQUANT and "param_addr" in self.fields)
                 or (opcode in (Opcode.LOAD, Opcode.STORE) and "mem" in self.fields))
        if not known:
            raise ProgramError(f"unknown opcode {opcode} in command word {word:#x}")

        def get(name: str) -> int:
            f = self.fields[name]
            return (word >> f.offset) & f.mask

        wait = bool(get("wait")) if "wait" in self.fields else False
        if opcode in (Opcode.LOAD, Opcode.STORE):
            names = {v: k for k, v in MEMORY_IDS.items()}
            mem = get("mem")
            if mem not in names:
                raise ProgramError(f"unknown memory id {mem} in command word {word:#x}")
            kind = Load if opcode == Opcode.LOAD else Store
            return kind(memory=names[mem], dram_addr=get("dram_addr"),
                        sram_addr=get("sram_addr"), words=get("words"), wait=wait)

        if opcode == Opcode.REQUANT:
            return Requant(acc_addr=get("acc_addr"), act_addr=get("act_addr"), rows=get("rows"),
                           param_addr=get("param_addr"), lanes=get("lanes"),
                           src_lane=get("src_lane"), dst_lane=get("dst_lane"), inner=get("inner"),
                           step=get("step"), stride=get("stride"))

        return Matmul(
            act_addr=get("act_addr"),
            weight_addr=get("weight_addr"),
            acc_addr=get("acc_addr"),
            rows=get("rows"),
            accumulate=bool(get("accumulate")),
            act_unsigned=bool(get("act_unsigned")),
            inner=get("inner"),
            step=get("step"),
            stride=get("stride"),
            wait=wait,
        )


@dataclass(frozen=True)
class MatrixLayout:
    """Where a 2-D matrix lives in a memory whose words hold ``lanes`` elements.

    Columns are cut into groups of ``lanes`` ("lane tiles"); element ``(i, j)`` sits in word
    ``base + (j // lanes) * tile_stride + i``, lane ``j % lanes``. Lanes and rows beyond the
    matrix (up to ``padded_rows``) are zero in the packed image.

    ``unsigned_bits = n`` (not 0) says the matrix holds uint``n`` values kept in ``n``-bit
    lanes as their bit pattern: :meth:`pack` stores 200 as -56 when ``n = 8`` and
    :meth:`unpack` reads it back as 200.
    """

    memory: str
    base: int
    rows: int
    cols: int
    lanes: int
    tile_stride: int
    padded_rows: int = 0  # rows of zero padding stored per lane tile (0: same as ``rows``)
    unsigned_bits: int = 0

    def __post_init__(self) -> None:
        if self.memory not in MEMORIES:
            raise ProgramError(f"memory must be one of {', '.join(MEMORIES)}, not {self.memory!r}")
        if self.padded_rows == 0:
            object.__setattr__(self, "padded_rows", self.rows)
        if min(self.rows, self.cols, self.lanes) < 1 or self.base < 0:
            raise ProgramError(f"invalid matrix layout {self}")
        if self.padded_rows < self.rows or self.tile_stride < self.padded_rows:
            raise ProgramError(f"invalid matrix layout {self}: tiles overlap")

    @property
    def lane_tiles(self) -> int:
        return -(-self.cols // self.lanes)

    @property
    def words(self) -> int:
        """Span in words from ``base`` to the last word the matrix occupies, plus one."""
        return (self.lane_tiles - 1) * self.tile_stride + self.padded_rows

    @property
    def end(self) -> int:
        return self.base + self.words

    def pack(self, matrix: np.ndarray) -> np.ndarray:
        """The memory words (``words`` x ``lanes``, int64) holding ``matrix``, zero padded."""
        m = np.asarray(matrix)
        if m.shape != (self.rows, self.cols):
            raise ProgramError(
                f"matrix of shape {m.shape} does not match layout {self.rows}x{self.cols}"
            )
        tiles = self.lane_tiles
        padded = np.zeros((self.padded_rows, tiles * self.lanes), dtype=np.int64)
        if self.unsigned_bits:
            m = wrap(m.astype(np.int64), IntFormat(self.unsigned_bits, True))
        padded[: self.rows, : self.cols] = m
        image = np.zeros((self.words, self.lanes), dtype=np.int64)
        for t in range(tiles):
            start = t * self.tile_stride
            image[start : start + self.padded_rows] = padded[:, t * self.lanes : (t + 1) * self.lanes]
        return image

    def unpack(self, memory_words: np.ndarray) -> np.ndarray:
        """Read the matrix back out of a whole-memory image (``depth`` x ``lanes``)."""
        mem = np.asarray(memory_words)
        if mem.ndim != 2 or mem.shape[1] != self.lanes or mem.shape[0] < self.end:
            raise ProgramError(
                f"memory image of shape {mem.shape} cannot hold layout ending at word {self.end}"
            )
        out = np.empty((self.rows, self.lane_tiles * self.lanes), dtype=mem.dtype)
        for t in range(self.lane_tiles):
            start = self.base + t * self.tile_stride
            out[:, t * self.lanes : (t + 1) * self.lanes] = mem[start : start + self.rows]
        out = out[:, : self.cols]
        if self.unsigned_bits:
            out = out & ((1 << self.unsigned_bits) - 1)
        return out


def memory_lanes(config: AcceleratorConfig) -> dict[str, int]:
    """Lanes of a word of each data memory the configuration has."""
    lanes = {"act": config.act_lanes, "weight": config.weight_lanes, "acc": config.cols}
    if config.requant is not RequantMode.NONE:
        lanes.update({m: config.cols for m in PARAM_MEMORIES})
    return lanes


def memory_word_bits(config: AcceleratorConfig, memory: str) -> int:
    """Bits of one word of ``memory`` (``cmd`` included)."""
    bits = {"act": config.act_word_bits, "weight": config.weight_word_bits,
            "acc": config.acc_word_bits, "bias": 32 * config.cols, "scale": 32 * config.cols,
            "qctl": QCTL_FORMAT.bits * config.cols}
    if memory == "cmd":
        return CommandLayout(config).width
    return bits[memory]


@functools.lru_cache(maxsize=4096)
def dram_word_bytes(config: AcceleratorConfig, memory: str) -> int:
    """Bytes one word of ``memory`` takes in DRAM: its bits packed little-endian, lane 0
    first, padded to whole bytes."""
    return -(-memory_word_bits(config, memory) // 8)


def words_to_bytes(words: Sequence[int], word_bytes: int) -> bytes:
    """Unsigned word values as consecutive little-endian ``word_bytes``-byte fields."""
    return b"".join(int(w).to_bytes(word_bytes, "little") for w in words)


def bytes_to_words(data: bytes, word_bytes: int) -> list[int]:
    """Inverse of :func:`words_to_bytes`."""
    return [int.from_bytes(data[i : i + word_bytes], "little")
            for i in range(0, len(data) - word_bytes + 1, word_bytes)]


def image_to_words(image: np.ndarray, fmt: IntFormat) -> list[int]:
    """Rows of a lane image (words x lanes, int64) as unsigned words (lane 0 in the low bits)."""
    image = np.asarray(image, dtype=np.int64)
    bits = fmt.bits
    if bits in (8, 16, 32, 64):
        raw = image.astype(f"<i{bits // 8}").view(f"<u{bits // 8}")
        return [int.from_bytes(row.tobytes(), "little") for row in raw]
    mask = (1 << bits) - 1
    out = []
    for row in image.tolist():
        word = 0
        for lane, value in enumerate(row):
            word |= (value & mask) << (lane * bits)
        out.append(word)
    return out


def words_to_image(words: Sequence[int], lanes: int, fmt: IntFormat) -> np.ndarray:
    """Inverse of :func:`image_to_words` (lanes read back in ``fmt``'s signedness)."""
    bits = fmt.bits
    if bits in (8, 16, 32, 64):
        size = bits // 8
        raw = b"".join(int(w).to_bytes(lanes * size, "little") for w in words)
        dtype = f"<{'i' if fmt.signed else 'u'}{size}"
        return np.frombuffer(raw, dtype=dtype).reshape(len(words), lanes).astype(np.int64)
    mask = (1 << bits) - 1
    out = np.array([[(int(w) >> (lane * bits)) & mask for lane in range(lanes)] for w in words],
                   dtype=np.int64).reshape(len(words), lanes)
    return wrap(out, fmt) if fmt.signed else out


@dataclass(frozen=True)
class DramLayout:
    """A matrix kept in DRAM in the word format of an on-chip memory.

    ``layout`` (base 0) says how the matrix fills the words of ``layout.memory``; word ``w``
    of that image is stored at byte ``addr + w * dram_word_bytes``. A LOAD of those words
    places the matrix on chip as ``layout`` shifted to the LOAD's ``sram_addr``.
    """

    layout: MatrixLayout
    addr: int

    def __post_init__(self) -> None:
        if self.layout.base != 0:
            raise ProgramError(f"a DRAM layout's matrix layout must start at word 0, not "
                               f"{self.layout.base}")
        if self.addr < 0:
            raise ProgramError(f"DRAM address must not be negative, not {self.addr}")

    def nbytes(self, config: AcceleratorConfig) -> int:
        return self.layout.words * dram_word_bytes(config, self.layout.memory)

    def end(self, config: AcceleratorConfig) -> int:
        return self.addr + self.nbytes(config)


#: Why a DMA command (or the program fetch at start) stops the accelerator: the RTL's
#: ``ERROR_CODE`` register holds the number, :class:`DmaFault` carries it in the model.
ERROR_CODES = {"none": 0, "opcode": 1, "bus": 2, "misaligned": 3, "program": 4}


class DmaFault(ProgramError):
    """A command the accelerator stops at: ``command`` is its index (-1: the program fetch
    at start), ``code`` a key of :data:`ERROR_CODES`."""

    def __init__(self, message: str, command: int, code: str) -> None:
        super().__init__(message)
        self.command = command
        self.code = code


def dma_fault(config: AcceleratorConfig, index: int, command) -> DmaFault | None:
    """What stops the accelerator at LOAD/STORE ``command`` (index ``index``), if anything:
    a DRAM address that is not a multiple of the bus width (``misaligned``) or bytes beyond
    the DRAM (``bus``: the DRAM answers with an error response). The model raises it when it
    reaches the command; the RTL sets ``ERROR_CODE`` and ``ERROR_CMD`` there."""
    kind = type(command).__name__
    if command.dram_addr % config.dram_width:
        return DmaFault(
            f"command {index} ({kind} {command.memory}): DRAM address {command.dram_addr:#x} is "
            f"not a multiple of the {config.dram_width}-byte bus width (misaligned burst)",
            index, "misaligned")
    end = command.dram_addr + command.words * dram_word_bytes(config, command.memory)
    if end > config.dram_capacity:
        return DmaFault(
            f"command {index} ({kind} {command.memory}): DRAM bytes {command.dram_addr:#x}.."
            f"{end - 1:#x} are outside the {config.dram_capacity}-byte DRAM",
            index, "bus")
    return None


@dataclass
class Program:
    """A command stream for one configuration, with its input data and output layouts.

    ``inputs`` maps a name to ``(layout, matrix)``; ``outputs`` maps a name to the layout of a
    result in the accumulator memory. ``meta`` carries facts for reports (for a GEMM: the
    shape ``m``, ``k``, ``n`` and so the useful MAC count).

    With a bus interface (``config.dram_width``) the program itself is kept in DRAM from
    byte ``cmd_base``, ``dram_inputs`` maps a name to ``(DramLayout, matrix)`` placed in DRAM
    before the run and ``dram_outputs`` a name to the ``DramLayout`` of a result the program
    STOREs. ``strict = False`` builds a program whose LOAD/STORE commands may fault (a
    misaligned or out-of-range DRAM address), to check that the model and the RTL stop at
    the same command; everything else is still validated.
    """

    config: AcceleratorConfig
    commands: tuple[Command, ...]
    inputs: dict[str, tuple[MatrixLayout, np.ndarray]] = field(default_factory=dict)
    outputs: dict[str, MatrixLayout] = field(default_factory=dict)
    name: str = "program"
    meta: dict[str, int | str] = field(default_factory=dict)
    dram_inputs: dict[str, tuple[DramLayout, np.ndarray]] = field(default_factory=dict)
    dram_outputs: dict[str, DramLayout] = field(default_factory=dict)
    cmd_base: int = 0
    strict: bool = True

    def __post_init__(self) -> None:
        self.commands = tuple(self.commands)
        self.validate()

    @property
    def dma_commands(self) -> Iterator[DmaCommand]:
        return (c for c in self.commands if isinstance(c, DmaCommand))

    def program_bytes(self) -> int:
        """Bytes the command words take in DRAM."""
        return len(self.commands) * dram_word_bytes(self.config, "cmd")

    def dram_footprint(self, transfers: bool = True) -> int:
        """One past the highest DRAM byte the program, its inputs, outputs and (with
        ``transfers``) LOAD/STOREs use."""
        cfg = self.config
        top = self.cmd_base + self.program_bytes()
        for lay, _ in self.dram_inputs.values():
            top = max(top, lay.end(cfg))
        for lay in self.dram_outputs.values():
            top = max(top, lay.end(cfg))
        for c in self.dma_commands if transfers else ():
            top = max(top, c.dram_addr + c.words * dram_word_bytes(cfg, c.memory))
        return top

    def dram_image(self) -> bytearray:
        """DRAM contents before the run, bytes ``0 .. dram_footprint - 1`` (zero elsewhere; at
        most the DRAM's capacity)."""
        cfg = self.config
        image = bytearray(min(self.dram_footprint(), cfg.dram_capacity))
        code = words_to_bytes(self.encoded(), dram_word_bytes(cfg, "cmd"))
        image[self.cmd_base : self.cmd_base + len(code)] = code
        formats = self.memory_formats()
        for lay, matrix in self.dram_inputs.values():
            data = words_to_bytes(image_to_words(lay.layout.pack(matrix),
                                                 formats[lay.layout.memory]),
                                  dram_word_bytes(cfg, lay.layout.memory))
            image[lay.addr : lay.addr + len(data)] = data
        return image

    def dram_outputs_from(self, image: bytes) -> dict[str, np.ndarray]:
        """Every DRAM output decoded from a DRAM image; for a GEMM of
        :func:`qsim.compile_dram.compile_gemm_dram`, ``C`` (and ``Y``) assembled from the
        chunks it is stored in (the chunks themselves are compared as the DRAM image)."""
        out = {name: self.read_dram_output(name, image) for name in self.dram_outputs}
        if self.meta.get("dram_plan") is not None:
            from qsim.compile_dram import dram_gemm_outputs

            return dram_gemm_outputs(self, out)
        return out

    def read_dram_output(self, name: str, image: bytes) -> np.ndarray:
        """Decode output ``name`` from a DRAM image."""
        lay = self.dram_outputs[name]
        memory = lay.layout.memory
        wb = dram_word_bytes(self.config, memory)
        data = bytes(image[lay.addr : lay.addr + lay.layout.words * wb])
        if len(data) < lay.layout.words * wb:
            raise ProgramError(f"DRAM image of {len(image)} bytes cannot hold output {name!r}")
        fmt = self.memory_formats()[memory]
        words = words_to_image(bytes_to_words(data, wb), self.memory_lanes()[memory], fmt)
        return lay.layout.unpack(words)

    # ---- structure -----------------------------------------------------------------------

    @property
    def layout(self) -> CommandLayout:
        return CommandLayout(self.config)

    @property
    def matmuls(self) -> Iterator[Matmul]:
        return (c for c in self.commands if isinstance(c, Matmul))

    @property
    def requants(self) -> Iterator[Requant]:
        return (c for c in self.commands if isinstance(c, Requant))

    def encoded(self) -> list[int]:
        """Command words in the order the controller fetches them (HALT included)."""
        layout = self.layout
        return [layout.encode(c) for c in self.commands]

    def footprint(self) -> dict[str, int]:
        """Per memory, one past the highest word the program reads or writes."""
        top = {m: 0 for m in self.memory_depths()}
        top["cmd"] = len(self.commands)
        for lay, _ in self.inputs.values():
            top[lay.memory] = max(top[lay.memory], lay.end)
        for lay in self.outputs.values():
            top[lay.memory] = max(top[lay.memory], lay.end)
        for c in self.matmuls:
            top["act"] = max(top["act"], int(act_addresses(c).max()) + 1)
            for memory, start, count in matmul_spans(self.config, c):
                top[memory] = max(top[memory], start + count)
        for c in self.requants:
            top["act"] = max(top["act"], int(act_addresses(c).max()) + 1)
            top["acc"] = max(top["acc"], c.acc_addr + c.rows)
            for memory in PARAM_MEMORIES:
                top[memory] = max(top[memory], c.param_addr + 1)
        for c in self.dma_commands:
            top[c.memory] = max(top[c.memory], c.sram_addr + c.words)
        return top

    def memory_formats(self) -> dict[str, IntFormat]:
        """Lane format of each data memory the configuration has."""
        cfg = self.config
        formats = {"act": cfg.input_format, "weight": cfg.weight_format, "acc": cfg.acc_format}
        if cfg.requant is not RequantMode.NONE:
            formats.update({"bias": INT32, "scale": INT32, "qctl": QCTL_FORMAT})
        return formats

    def memory_lanes(self) -> dict[str, int]:
        return memory_lanes(self.config)

    def memory_depths(self) -> dict[str, int]:
        """Words of each memory the configuration has (``cmd`` included)."""
        cfg = self.config
        depths = {"act": cfg.act_mem_words, "weight": cfg.weight_mem_words,
                  "acc": cfg.acc_mem_words}
        if cfg.requant is not RequantMode.NONE:
            depths.update({m: cfg.param_mem_words for m in PARAM_MEMORIES})
        depths["cmd"] = cfg.cmd_mem_words
        return depths

    def initial_images(self) -> dict[str, np.ndarray]:
        """Memory contents before the run: inputs placed, everything else zero.

        Each image covers words ``0 .. footprint - 1`` of its memory.
        """
        lanes = self.memory_lanes()
        top = self.footprint()
        images = {m: np.zeros((top[m], lanes[m]), dtype=np.int64) for m in lanes}
        for lay, matrix in self.inputs.values():
            images[lay.memory][lay.base : lay.end] = lay.pack(matrix)
        return images

    # ---- validation ----------------------------------------------------------------------

    def validate(self) -> None:
        """Check the program against its configuration; raise :class:`ProgramError` if not."""
        cfg = self.config
        if not self.commands or not isinstance(self.commands[-1], Halt):
            raise ProgramError("a program must end with a Halt command")
        if any(isinstance(c, Halt) for c in self.commands[:-1]):
            raise ProgramError("Halt may only appear as the last command")
        if len(self.commands) > cfg.cmd_mem_words:
            raise ProgramError(
                f"the program has {len(self.commands)} commands but the command memory holds "
                f"{cfg.cmd_mem_words} ({len(self.commands) - cfg.cmd_mem_words} too many)"
            )
        depths = self.memory_depths()
        lanes = self.memory_lanes()
        if cfg.has_dram:
            need = self.dram_footprint(transfers=False)
            if need > cfg.dram_capacity:
                raise ProgramError(
                    f"the program needs {need} bytes of DRAM (its commands, inputs and outputs) "
                    f"but the DRAM has {cfg.dram_capacity} bytes (dram_capacity)")
        for i, c in enumerate(self.commands):
            if isinstance(c, Halt):
                continue
            if getattr(c, "wait", False) and not cfg.has_dram:
                raise ProgramError(f"command {i}: wait orders a command against the DMA engine, "
                                   f"which a configuration without a bus interface does not have")
            if isinstance(c, DmaCommand):
                self._check_dma_command(i, c, depths)
                continue
            if isinstance(c, Matmul):
                names = ("act_addr", "weight_addr", "acc_addr", "rows", "inner", "step", "stride")
            elif isinstance(c, Requant):
                if cfg.requant is RequantMode.NONE:
                    raise ProgramError(
                        f"command {i} is a Requant but the configuration has no "
                        f"post-processing unit (requant none)")
                names = ("acc_addr", "act_addr", "rows", "param_addr", "lanes", "src_lane",
                         "dst_lane", "inner", "step", "stride")
            else:
                raise ProgramError(f"command {i} is not a qsim command: {c!r}")
            for name in names:
                value = getattr(c, name)
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise ProgramError(f"command {i}: {name} must be an int, not {value!r}")
                if value < 0:
                    raise ProgramError(f"command {i}: {name} must not be negative, not {value}")
            if c.rows < 1:
                raise ProgramError(f"command {i}: rows must be at least 1, not {c.rows}")
            if isinstance(c, Requant):
                if c.lanes < 1:
                    raise ProgramError(f"command {i}: lanes must be at least 1, not {c.lanes}")
                for name, start, width, what in (("src_lane", c.src_lane, cfg.cols, "accumulator"),
                                                 ("dst_lane", c.dst_lane, cfg.act_lanes, "activation")):
                    if start + c.lanes > width:
                        raise ProgramError(
                            f"command {i}: {name} {start} + lanes {c.lanes} exceeds the "
                            f"{width} lanes of an {what} word")
                spans = (("acc", c.acc_addr, c.rows), *((m, c.param_addr, 1) for m in PARAM_MEMORIES))
            else:
                spans = matmul_spans(cfg, c)
            if c.inner > c.rows:
                raise ProgramError(f"command {i}: inner {c.inner} exceeds rows {c.rows}")
            addresses = act_addresses(c)
            low, top = int(addresses.min()), int(addresses.max())
            if top >= depths["act"]:
                raise ProgramError(
                    f"command {i} uses act words {low}..{top} but the act memory has "
                    f"{depths['act']} words ({top + 1 - depths['act']} too many)")
            for memory, start, count in spans:
                if start + count > depths[memory]:
                    raise ProgramError(
                        f"command {i} uses {memory} words {start}..{start + count - 1} but the "
                        f"{memory} memory has {depths[memory]} words "
                        f"({start + count - depths[memory]} too many)"
                    )
        formats = self.memory_formats()
        for name, (lay, matrix) in self.inputs.items():
            if lay.memory not in lanes:
                raise ProgramError(
                    f"input {name!r} is placed in the {lay.memory} memory, which the "
                    f"configuration does not have (requant {cfg.requant.value})")
            if lay.lanes != lanes[lay.memory]:
                raise ProgramError(
                    f"input {name!r}: the {lay.memory} memory has {lanes[lay.memory]} lanes, "
                    f"not {lay.lanes}"
                )
            if lay.end > depths[lay.memory]:
                raise ProgramError(
                    f"input {name!r} needs {lay.memory} words {lay.base}..{lay.end - 1} but the "
                    f"{lay.memory} memory has {depths[lay.memory]} words "
                    f"({lay.end - depths[lay.memory]} too many)"
                )
            fmt = (IntFormat(lay.unsigned_bits, False) if lay.unsigned_bits
                   else formats[lay.memory])
            bad = find_overflows(matrix, fmt, limit=1)
            if bad:
                raise ProgramError(f"input {name!r}: " + bad[0].describe(name, fmt))
            if lay.memory in ("scale", "qctl"):
                _check_params(name, lay.memory, np.asarray(matrix, dtype=np.int64), cfg.requant,
                              cfg.input_format.bits)
        for name, lay in self.outputs.items():
            if lay.memory not in ("acc", "act") or lay.lanes != lanes[lay.memory] \
                    or lay.end > depths[lay.memory]:
                raise ProgramError(f"output {name!r} does not fit the {lay.memory} memory: {lay}")
        if cfg.has_dram:
            self._check_dram(formats, lanes)
            check_races(self)
        elif self.dram_inputs or self.dram_outputs:
            raise ProgramError("DRAM inputs and outputs need a bus interface (dram_width)")

    def _check_dma_command(self, i: int, c: DmaCommand, depths: dict[str, int]) -> None:
        cfg = self.config
        kind = type(c).__name__
        if not cfg.has_dram:
            raise ProgramError(f"command {i} is a {kind} but the configuration has no bus "
                               f"interface (dram_width 0)")
        allowed = LOAD_MEMORIES if isinstance(c, Load) else STORE_MEMORIES
        if c.memory not in allowed or c.memory not in depths:
            have = [m for m in allowed if m in depths]
            raise ProgramError(f"command {i}: a {kind} moves words of the {', '.join(have)} "
                               f"memories, not {c.memory!r}")
        for name in ("dram_addr", "sram_addr", "words"):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ProgramError(f"command {i}: {name} must be an int, not {value!r}")
            if value < 0:
                raise ProgramError(f"command {i}: {name} must not be negative, not {value}")
        if c.words < 1:
            raise ProgramError(f"command {i}: words must be at least 1, not {c.words}")
        if c.sram_addr + c.words > depths[c.memory]:
            raise ProgramError(
                f"command {i} uses {c.memory} words {c.sram_addr}..{c.sram_addr + c.words - 1} "
                f"but the {c.memory} memory has {depths[c.memory]} words "
                f"({c.sram_addr + c.words - depths[c.memory]} too many)")
        if c.dram_addr >= 1 << DRAM_ADDR_BITS:
            raise ProgramError(f"command {i}: dram_addr {c.dram_addr:#x} does not fit the "
                               f"{DRAM_ADDR_BITS}-bit address bus")
        if self.strict:
            fault = dma_fault(cfg, i, c)
            if fault is not None:
                raise fault

    def _check_dram(self, formats: dict[str, IntFormat], lanes: dict[str, int]) -> None:
        cfg = self.config
        if self.inputs:
            raise ProgramError(
                f"with a bus interface every input lives in DRAM (dram_inputs) and is brought "
                f"on chip by LOAD commands; on-chip inputs given: {', '.join(self.inputs)}")
        if self.cmd_base % cfg.dram_width or self.cmd_base < 0:
            raise ProgramError(f"cmd_base {self.cmd_base:#x} must be a non-negative multiple of "
                               f"the {cfg.dram_width}-byte bus width")
        spans = [("the program", self.cmd_base, self.cmd_base + self.program_bytes())]
        for name, (lay, matrix) in self.dram_inputs.items():
            memory = lay.layout.memory
            if lay.layout.lanes != lanes.get(memory):
                raise ProgramError(f"DRAM input {name!r}: the {memory} word has "
                                   f"{lanes.get(memory)} lanes, not {lay.layout.lanes}")
            fmt = (IntFormat(lay.layout.unsigned_bits, False) if lay.layout.unsigned_bits
                   else formats[memory])
            bad = find_overflows(matrix, fmt, limit=1)
            if bad:
                raise ProgramError(f"DRAM input {name!r}: " + bad[0].describe(name, fmt))
            if memory in ("scale", "qctl"):
                _check_params(name, memory, np.asarray(matrix, dtype=np.int64), cfg.requant,
                              cfg.input_format.bits)
            spans.append((f"DRAM input {name!r}", lay.addr, lay.end(cfg)))
        for name, lay in self.dram_outputs.items():
            if lay.layout.memory not in STORE_MEMORIES or \
                    lay.layout.lanes != lanes[lay.layout.memory]:
                raise ProgramError(f"DRAM output {name!r} must be in the word format of the "
                                   f"act or acc memory: {lay.layout}")
        spans.sort(key=lambda s: s[1])
        for (a, _, a_end), (b, b_start, _) in zip(spans, spans[1:]):
            if b_start < a_end:
                raise ProgramError(f"{b} overlaps {a} in DRAM (byte {b_start:#x})")


def command_accesses(config: AcceleratorConfig, command) -> list[tuple[str, int, int, bool]]:
    """``(memory, first word, last word, writes)`` of every on-chip range a command uses
    (activation words as the range from the lowest to the highest)."""
    if isinstance(command, DmaCommand):
        return [(command.memory, command.sram_addr, command.sram_addr + command.words - 1,
                 isinstance(command, Load))]
    addresses = act_addresses(command)
    act = (int(addresses.min()), int(addresses.max()))
    if isinstance(command, Requant):
        out = [("acc", command.acc_addr, command.acc_addr + command.rows - 1, False),
               ("act", *act, True)]
        return out + [(m, command.param_addr, command.param_addr, False) for m in PARAM_MEMORIES]
    out = [("act", *act, False)]
    for memory, start, count in matmul_spans(config, command):
        if memory == "acc":
            out.append(("acc", start, start + count - 1, True))
            if command.accumulate:
                out.append(("acc", start, start + count - 1, False))
        else:
            out.append((memory, start, start + count - 1, False))
    return out


def check_races(program: Program) -> None:
    """Reject a program in which a DMA transfer and a compute command could touch the same
    on-chip words in an order other than program order, whatever the DRAM latency.

    The hardware orders the two units only by these rules (docs/dram.md): a command is taken
    after every earlier command was taken; the DMA engine runs one LOAD/STORE at a time, so
    taking one means the previous has finished; ``wait`` on a command holds it until every
    earlier command of the *other* unit has finished; on a weight-stationary array taking a
    MATMUL means the previous MATMUL's weight tile has been read; a REQUANT is taken only
    after earlier MATMULs have written their results, and a MATMUL or REQUANT only after an
    earlier REQUANT has finished. Two commands of different units that touch the same words
    (one of them writing) must be ordered by these rules.
    """
    cfg = program.config
    ws = cfg.dataflow is Dataflow.WEIGHT_STATIONARY
    pending: dict[str, list] = {"compute": [], "dma": []}  # (index, command, accesses)
    for i, c in enumerate(program.commands):
        if isinstance(c, Halt):
            continue
        unit, other = ("dma", "compute") if isinstance(c, DmaCommand) else ("compute", "dma")
        if c.wait:
            pending[other] = []
        accesses = command_accesses(cfg, c)
        for j, earlier, theirs in pending[other]:
            for memory, lo, hi, writes in accesses:
                for m2, lo2, hi2, writes2 in theirs:
                    if m2 == memory and lo <= hi2 and lo2 <= hi and (writes or writes2):
                        raise ProgramError(
                            f"command {i} ({type(c).__name__}) {'writes' if writes else 'reads'} "
                            f"{memory} words {max(lo, lo2)}..{min(hi, hi2)} that command {j} "
                            f"({type(earlier).__name__}) {'writes' if writes2 else 'reads'}, and "
                            f"nothing orders the two: set wait=True on command {i} or on a "
                            f"{'DMA' if unit == 'dma' else 'compute'} command between them")
        if unit == "dma":
            pending["dma"] = [(i, c, accesses)]
            continue
        kept = []
        for j, earlier, theirs in pending["compute"]:
            if isinstance(earlier, Requant):
                continue  # a later MATMUL/REQUANT is taken only once it has finished
            if isinstance(c, Requant):
                continue  # a REQUANT is taken only once earlier MATMULs have written
            if ws:  # taking this MATMUL means the earlier one's weight tile has been read
                theirs = [a for a in theirs if a[0] != "weight"]
            kept.append((j, earlier, theirs))
        kept.append((i, c, accesses))
        pending["compute"] = kept


def matmul_spans(config: AcceleratorConfig, command: Matmul) -> tuple[tuple[str, int, int], ...]:
    """``(memory, first word, words)`` of the weight and accumulator words a Matmul uses.

    Weight-stationary: the ``R`` words of the weight tile and ``rows`` accumulator words.
    Output-stationary: ``rows`` weight words (one per reduction step, streamed with the
    activations) and the ``R`` accumulator words of the output tile.
    """
    if config.dataflow is Dataflow.OUTPUT_STATIONARY:
        return (("weight", command.weight_addr, command.rows), ("acc", command.acc_addr, config.rows))
    return (("weight", command.weight_addr, config.rows), ("acc", command.acc_addr, command.rows))


def pack_qctl(shift, zero_point, lo, hi) -> np.ndarray:
    """``qctl`` lanes (int64) from the right shift and the zero point and clamp bounds.

    ``shift`` is 0..62 (the fixed-point mode's right shift; 0 in float32 mode); the other three
    are -256..255. Arrays broadcast against each other.
    """
    values = dict(shift=shift, zero_point=zero_point, lo=lo, hi=hi)
    arrays = np.broadcast_arrays(*(np.asarray(v, dtype=np.int64) for v in values.values()))
    word = np.zeros(arrays[0].shape, dtype=np.int64)
    for (name, offset, width, signed), value in zip(_QCTL_FIELDS, arrays):
        low, high = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
        if name == "shift":
            high = 62
        if np.any((value < low) | (value > high)):
            bad = value[(value < low) | (value > high)].ravel()[0]
            raise ProgramError(f"qctl {name} must be between {low} and {high}, not {int(bad)}")
        word |= (value & ((1 << width) - 1)) << offset
    return word


def unpack_qctl(words) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_qctl`: ``shift``, ``zero_point``, ``lo``, ``hi`` (int64 arrays)."""
    w = np.asarray(words, dtype=np.int64)
    out = {}
    for name, offset, width, signed in _QCTL_FIELDS:
        field_ = (w >> offset) & ((1 << width) - 1)
        if signed:
            field_ = np.where(field_ >= 1 << (width - 1), field_ - (1 << width), field_)
        out[name] = field_
    return out


def _check_params(name: str, memory: str, matrix: np.ndarray, mode: RequantMode,
                  bits: int = 8) -> None:
    """Parameter values the post-processing unit accepts (beyond fitting their lanes)."""
    if memory == "scale":
        if mode is RequantMode.FIXED_POINT and np.any(matrix < 0):
            i = tuple(int(v) for v in np.argwhere(matrix < 0)[0])
            raise ProgramError(f"input {name!r}: fixed-point multiplier {name}{list(i)} = "
                               f"{int(matrix[i])} is negative")
        if mode is RequantMode.FLOAT32:
            exponent = (matrix >> 23) & 0xFF
            bad = (matrix < 0) | (exponent == 0xFF)
            if np.any(bad):
                i = tuple(int(v) for v in np.argwhere(bad)[0])
                value = np.array([matrix[i]], dtype=np.int64).astype(np.uint32).view(np.float32)[0]
                raise ProgramError(f"input {name!r}: float32 scale {name}{list(i)} = {value!r} "
                                   f"is not a finite non-negative float32")
        return
    fields = unpack_qctl(matrix)
    if np.any(fields["shift"] > 62):
        i = tuple(int(v) for v in np.argwhere(fields["shift"] > 62)[0])
        raise ProgramError(f"input {name!r}: shift {name}{list(i)} = {int(fields['shift'][i])} "
                           f"is above 62")
    lo, hi = fields["lo"], fields["hi"]
    half = 1 << (bits - 1)
    bad = (lo > hi) | (lo < -half) | (hi > 2 * half - 1) | ((hi > half - 1) & (lo < 0))
    if np.any(bad):
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise ProgramError(
            f"input {name!r}: clamp bounds {name}{list(i)} = [{int(lo[i])}, {int(hi[i])}] "
            f"must satisfy lo <= hi and lie in the int{bits} range [{-half}, {half - 1}] or the "
            f"uint{bits} range [0, {2 * half - 1}]")


def requantize_lanes(mode: RequantMode | str, values: np.ndarray, bias: np.ndarray,
                     scale: np.ndarray, qctl: np.ndarray, acc_bits: int = 32) -> np.ndarray:
    """What the post-processing unit writes for accumulator lanes ``values`` (int64 array).

    ``bias``, ``scale`` and ``qctl`` are lane parameters broadcast against ``values``. Both
    modes first form ``v = wrap(values + bias)`` to ``acc_bits`` (the unit's adder wraps).

    * ``fixed-point``: ``y = (v * scale + 2**(shift-1)) >> shift`` (round half up; no
      rounding when ``shift`` is 0);
    * ``float32``: ``y = rne(f32(f32(v) * f32(scale)))`` with ``scale`` the float32's bit
      pattern, exactly ONNX Runtime's ``MlasRequantizeOutput``;

    then ``clamp(y + zero_point, lo, hi)``. Returns int64 values (not wrapped to 8 bits).
    """
    mode = RequantMode(mode)
    fields = unpack_qctl(qctl)
    v = wrap(np.asarray(values, dtype=np.int64) + np.asarray(bias, dtype=np.int64),
             IntFormat(acc_bits, True))
    zp, lo, hi = fields["zero_point"], fields["lo"], fields["hi"]
    if mode is RequantMode.FIXED_POINT:
        y = round_shift(v * np.asarray(scale, dtype=np.int64), fields["shift"], Rounding.HALF_UP)
        return np.minimum(np.maximum(y + zp, lo), hi)
    if mode is RequantMode.FLOAT32:
        # The engine's own MLAS requantization (it clamps in float32 to [lo - zp, hi - zp]
        # before rounding; with integer bounds that equals the unit's clamp after rounding).
        from qsim.quant.requant import requantize_float32

        m = np.asarray(scale, dtype=np.int64).astype(np.uint32).view(np.float32)
        return requantize_float32(v, m, zp, INT32, clamp=(lo, hi))
    raise ProgramError("requant none has no post-processing unit")


def program_summary(program: Program) -> str:
    """One line: commands, MATMULs, rows streamed."""
    mm = list(program.matmuls)
    return (f"{program.name}: {len(program.commands)} commands, {len(mm)} matmul tiles, "
            f"{sum(c.rows for c in mm)} activation rows")


def commands_from_words(config: AcceleratorConfig, words: Sequence[int]) -> list[Command]:
    """Decode command words up to and including the first HALT."""
    layout = CommandLayout(config)
    out: list[Command] = []
    for w in words:
        cmd = layout.decode(int(w))
        out.append(cmd)
        if isinstance(cmd, Halt):
            break
    return out
