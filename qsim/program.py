"""The accelerator's command stream, its binary encoding, and where data lives in memory.

A :class:`Program` is what the compiler writes, the bit-accurate model executes, the timing
model costs and the RTL controller runs. It holds

* ``commands``: a sequence of :class:`Matmul` commands ended by :class:`Halt`;
* ``inputs``: matrices to place in the on-chip memories before the run, each with the
  :class:`MatrixLayout` that says which word and lane holds which element;
* ``outputs``: layouts of the result matrices in the accumulator memory.

:class:`CommandLayout` is the one definition of the command word: the RTL controller slices
its fields from it and the cosim loader encodes with it, so the two cannot drift.

Semantics of ``Matmul(act_addr, weight_addr, acc_addr, rows, accumulate)`` on an R x C array,
executed in program order::

    X = act[act_addr : act_addr + rows]           # rows x R activations
    W = weight[weight_addr : weight_addr + R]     # R x C weights (a resident tile)
    acc[acc_addr : acc_addr + rows] = wrap(X @ W + (acc[...] if accumulate else 0))

where ``wrap`` is two's-complement wrap-around to ``acc_bits``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence, Union

import numpy as np

from qsim.config import AcceleratorConfig
from qsim.errors import ProgramError
from qsim.numerics import IntFormat, find_overflows

__all__ = [
    "Opcode",
    "Matmul",
    "Halt",
    "Command",
    "CommandField",
    "CommandLayout",
    "MatrixLayout",
    "Program",
    "MEMORIES",
]

MEMORIES = ("act", "weight", "acc")


class Opcode(enum.IntEnum):
    """Command opcodes. ``HALT`` is 0 so that an all-zero (cleared) word stops the controller."""

    HALT = 0
    MATMUL = 1


@dataclass(frozen=True)
class Matmul:
    """Stream ``rows`` activation words through the resident weight tile into the accumulators.

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
    """

    act_addr: int
    weight_addr: int
    acc_addr: int
    rows: int
    accumulate: bool = False

    opcode = Opcode.MATMUL


@dataclass(frozen=True)
class Halt:
    """End of the program: the controller drains its pipeline and raises ``done``."""

    opcode = Opcode.HALT


Command = Union[Matmul, Halt]


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

    Fields, from bit 0 upward: ``opcode`` (4 bits), ``accumulate`` (1), ``rows`` (wide
    enough for ``act_mem_words``), ``act_addr``, ``weight_addr``, ``acc_addr`` (each the
    address width of its memory). The word is padded to a multiple of 32 bits.
    """

    OPCODE_BITS = 4

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = config
        widths = [
            ("opcode", self.OPCODE_BITS),
            ("accumulate", 1),
            ("rows", config.act_mem_words.bit_length()),
            ("act_addr", config.act_addr_bits),
            ("weight_addr", config.weight_addr_bits),
            ("acc_addr", config.acc_addr_bits),
        ]
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
        if not isinstance(command, Matmul):
            raise ProgramError(f"cannot encode {command!r}: not a qsim command")
        values = {
            "opcode": int(Opcode.MATMUL),
            "accumulate": int(bool(command.accumulate)),
            "rows": command.rows,
            "act_addr": command.act_addr,
            "weight_addr": command.weight_addr,
            "acc_addr": command.acc_addr,
        }
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
        if opcode != Opcode.MATMUL:
            raise ProgramError(f"unknown opcode {opcode} in command word {word:#x}")

        def get(name: str) -> int:
            f = self.fields[name]
            return (word >> f.offset) & f.mask

        return Matmul(
            act_addr=get("act_addr"),
            weight_addr=get("weight_addr"),
            acc_addr=get("acc_addr"),
            rows=get("rows"),
            accumulate=bool(get("accumulate")),
        )


@dataclass(frozen=True)
class MatrixLayout:
    """Where a 2-D matrix lives in a memory whose words hold ``lanes`` elements.

    Columns are cut into groups of ``lanes`` ("lane tiles"); element ``(i, j)`` sits in word
    ``base + (j // lanes) * tile_stride + i``, lane ``j % lanes``. Lanes and rows beyond the
    matrix (up to ``padded_rows``) are zero in the packed image.
    """

    memory: str
    base: int
    rows: int
    cols: int
    lanes: int
    tile_stride: int
    padded_rows: int = 0  # rows of zero padding stored per lane tile (0: same as ``rows``)

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
        return out[:, : self.cols]


@dataclass
class Program:
    """A command stream for one configuration, with its input data and output layouts.

    ``inputs`` maps a name to ``(layout, matrix)``; ``outputs`` maps a name to the layout of a
    result in the accumulator memory. ``meta`` carries facts for reports (for a GEMM: the
    shape ``m``, ``k``, ``n`` and so the useful MAC count).
    """

    config: AcceleratorConfig
    commands: tuple[Command, ...]
    inputs: dict[str, tuple[MatrixLayout, np.ndarray]] = field(default_factory=dict)
    outputs: dict[str, MatrixLayout] = field(default_factory=dict)
    name: str = "program"
    meta: dict[str, int | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.commands = tuple(self.commands)
        self.validate()

    # ---- structure -----------------------------------------------------------------------

    @property
    def layout(self) -> CommandLayout:
        return CommandLayout(self.config)

    @property
    def matmuls(self) -> Iterator[Matmul]:
        return (c for c in self.commands if isinstance(c, Matmul))

    def encoded(self) -> list[int]:
        """Command words in the order the controller fetches them (HALT included)."""
        layout = self.layout
        return [layout.encode(c) for c in self.commands]

    def footprint(self) -> dict[str, int]:
        """Per memory, one past the highest word the program reads or writes."""
        rows = self.config.rows
        top = {"act": 0, "weight": 0, "acc": 0, "cmd": len(self.commands)}
        for lay, _ in self.inputs.values():
            top[lay.memory] = max(top[lay.memory], lay.end)
        for lay in self.outputs.values():
            top[lay.memory] = max(top[lay.memory], lay.end)
        for c in self.matmuls:
            top["act"] = max(top["act"], c.act_addr + c.rows)
            top["weight"] = max(top["weight"], c.weight_addr + rows)
            top["acc"] = max(top["acc"], c.acc_addr + c.rows)
        return top

    def memory_formats(self) -> dict[str, IntFormat]:
        cfg = self.config
        return {"act": cfg.input_format, "weight": cfg.weight_format, "acc": cfg.acc_format}

    def memory_lanes(self) -> dict[str, int]:
        cfg = self.config
        return {"act": cfg.rows, "weight": cfg.cols, "acc": cfg.cols}

    def memory_depths(self) -> dict[str, int]:
        cfg = self.config
        return {"act": cfg.act_mem_words, "weight": cfg.weight_mem_words,
                "acc": cfg.acc_mem_words, "cmd": cfg.cmd_mem_words}

    def initial_images(self) -> dict[str, np.ndarray]:
        """Memory contents before the run: inputs placed, everything else zero.

        Each image covers words ``0 .. footprint - 1`` of its memory.
        """
        lanes = self.memory_lanes()
        top = self.footprint()
        images = {m: np.zeros((top[m], lanes[m]), dtype=np.int64) for m in MEMORIES}
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
        for i, c in enumerate(self.commands):
            if isinstance(c, Halt):
                continue
            if not isinstance(c, Matmul):
                raise ProgramError(f"command {i} is not a qsim command: {c!r}")
            for name in ("act_addr", "weight_addr", "acc_addr", "rows"):
                value = getattr(c, name)
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise ProgramError(f"command {i}: {name} must be an int, not {value!r}")
                if value < 0:
                    raise ProgramError(f"command {i}: {name} must not be negative, not {value}")
            if c.rows < 1:
                raise ProgramError(f"command {i}: rows must be at least 1, not {c.rows}")
            spans = (("act", c.act_addr, c.rows), ("weight", c.weight_addr, cfg.rows),
                     ("acc", c.acc_addr, c.rows))
            for memory, start, count in spans:
                if start + count > depths[memory]:
                    raise ProgramError(
                        f"command {i} uses {memory} words {start}..{start + count - 1} but the "
                        f"{memory} memory has {depths[memory]} words "
                        f"({start + count - depths[memory]} too many)"
                    )
        formats = self.memory_formats()
        for name, (lay, matrix) in self.inputs.items():
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
            bad = find_overflows(matrix, formats[lay.memory], limit=1)
            if bad:
                raise ProgramError(
                    f"input {name!r}: " + bad[0].describe(name, formats[lay.memory])
                )
        for name, lay in self.outputs.items():
            if lay.memory != "acc" or lay.lanes != cfg.cols or lay.end > cfg.acc_mem_words:
                raise ProgramError(f"output {name!r} does not fit the accumulator memory: {lay}")


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
