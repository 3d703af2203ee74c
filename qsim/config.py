"""The accelerator configuration: one frozen, validated object that every part of qsim reads.

:class:`AcceleratorConfig` is the single source of truth for the shape of the systolic array,
its number formats, its memories and its clock. The compiler, the bit-accurate model, the
timing model and the RTL generators all take this one object; anything they must agree on
(word widths, address widths, accumulator format) is derived from it here and nowhere else.
It round-trips through JSON and has a stable hash that keys the RTL build cache.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from qsim.errors import ConfigError
from qsim.numerics import INT4, INT8, IntFormat

__all__ = ["AcceleratorConfig", "Dataflow", "RequantMode", "PRECISIONS", "PRESETS", "preset",
           "MIN_DIM", "MAX_DIM"]

MIN_DIM = 2
MAX_DIM = 64
MIN_MEM_WORDS = 2
MAX_MEM_WORDS = 1 << 20
MAX_CLOCK_MHZ = 10_000.0
SCHEMA_VERSION = 1
#: Data-bus widths (bytes) of the AXI4 interface to DRAM; 0 is no interface.
DRAM_WIDTHS = (0, 4, 8, 16, 32, 64)
MAX_DRAM_LATENCY = 4096


class Dataflow(str, enum.Enum):
    """How operands move through the array.

    ``weight_stationary`` (``ws``): each PE holds one weight; activations flow left to right
    along rows and partial sums flow top to bottom along columns.
    ``output_stationary`` (``os``): each PE holds one output element; activations flow left
    to right along rows, weights top to bottom along columns, one reduction step per cycle,
    and finished tiles are shifted out of the top of the array (see docs/microarchitecture.md).
    The short names ``ws`` and ``os`` are accepted wherever a dataflow is parsed.
    """

    WEIGHT_STATIONARY = "weight_stationary"
    OUTPUT_STATIONARY = "output_stationary"

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            return {"ws": cls.WEIGHT_STATIONARY, "os": cls.OUTPUT_STATIONARY}.get(value.lower())
        return None

    @property
    def short(self) -> str:
        """``ws`` or ``os``."""
        return {"weight_stationary": "ws", "output_stationary": "os"}[self.value]


class RequantMode(str, enum.Enum):
    """The post-processing unit generated on the accumulator's way out.

    ``none``: no unit; results stay int32 in the accumulator memory. ``fixed-point``: bias,
    int32 multiplier and rounding right shift (round half up), zero point, clamp.
    ``float32``: bias, then ONNX Runtime's float32 requantization bit for bit (int32 to float32
    rounding to nearest even, one float32 multiply, rounding half to even), zero point, clamp.
    Both write 8-bit results into the activation memory (see :class:`qsim.program.Requant`).
    """

    NONE = "none"
    FIXED_POINT = "fixed-point"
    FLOAT32 = "float32"


# Formats the RTL implements: int8 x int8, and int4 x int4 with two products per PE per cycle
# (both operands packed two per byte). They are chosen together (``precision``).
_SUPPORTED_INPUT_FORMATS = (INT8, INT4)
_SUPPORTED_WEIGHT_FORMATS = (INT8, INT4)
PRECISIONS = {"int8": (INT8, INT8), "int4": (INT4, INT4)}


def _check_int(name: str, value: Any, low: int, high: int, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}{unit}, not {value}")
    return value


def _address_bits(words: int) -> int:
    return max(1, math.ceil(math.log2(words)))


@dataclass(frozen=True)
class AcceleratorConfig:
    """Parameters of one INT8/INT4 systolic-array accelerator.

    Parameters
    ----------
    rows, cols : int
        Processing elements per column and per row, 2 to 64. In the weight-stationary
        dataflow a tile of ``rows`` reduction steps by ``cols`` output channels is resident;
        in the output-stationary one a tile of ``rows`` output rows by ``cols`` output
        channels accumulates in the PEs while the reduction streams through.
    input_format, weight_format : IntFormat or str
        Activation and weight formats, both ``int8`` or both ``int4``. At int4 every byte
        of the activation and weight memories holds two values (low nibble first, as ONNX
        packs them) and every PE multiplies both pairs each cycle: twice the MACs per cycle.
    acc_bits : int
        Width of the partial sums and the accumulator memory; sums wrap modulo
        ``2**acc_bits`` in two's complement, as the hardware does. At least the width of one
        product (16 for int8 × int8), at most 64.
    dataflow : Dataflow or str
        ``weight_stationary`` (default) or ``output_stationary`` (``ws`` / ``os``).
    clock_mhz : float
        Clock frequency used to turn cycles into seconds and throughput.
    act_mem_words, weight_mem_words, acc_mem_words, cmd_mem_words : int
        Depths of the activation scratchpad (words of ``rows`` activations), the weight
        scratchpad (words of ``cols`` weights), the accumulator memory (words of ``cols``
        partial sums) and the command memory (one command per word).
    requant : RequantMode or str
        Post-processing unit: ``none`` (default), ``fixed-point`` or ``float32``. A unit
        needs ``acc_bits`` of at most 32.
    param_mem_words : int
        Depth of each of the unit's three parameter memories (bias, scale, and zero point
        with clamp bounds and shift), one word of ``cols`` lanes per output-channel tile.
    dram_width : int
        Bytes per beat of the AXI4 data bus to DRAM: 4, 8, 16, 32 or 64; 0 (default) builds
        no bus interface (memories are loaded through the simulator's backdoor, as in
        every configuration without DRAM). With a bus the program and its data live in
        DRAM: the accelerator loads the program at ``start`` and moves data with LOAD and
        STORE commands (:mod:`qsim.dma`, docs/dram.md).
    dram_latency : int
        Cycles the DRAM model waits between accepting a burst request and its first data
        beat (reads) or between the last data beat and the write response (writes), 1 to
        4096; only with ``dram_width``. A property of the memory system, not of the generated
        accelerator: it is an input of the simulated DRAM model, not a Verilog parameter.
    dram_capacity : int
        Bytes of the simulated DRAM, a power of two from 4 KiB to 1 GiB.
    max_burst : int
        Most beats per AXI4 burst, a power of two from 1 to 256; a burst never crosses a
        ``max_burst * dram_width`` boundary (and so never a 4 KiB one).
    dma_outstanding : int
        Bursts the DMA engine keeps in flight, 1 to 16.
    """

    rows: int = 8
    cols: int = 8
    input_format: IntFormat = INT8
    weight_format: IntFormat = INT8
    acc_bits: int = 32
    dataflow: Dataflow = Dataflow.WEIGHT_STATIONARY
    clock_mhz: float = 200.0
    act_mem_words: int = 16384
    weight_mem_words: int = 16384
    acc_mem_words: int = 16384
    cmd_mem_words: int = 4096
    requant: RequantMode = RequantMode.NONE
    param_mem_words: int = 256
    dram_width: int = 0
    dram_latency: int = 0
    dram_capacity: int = 1 << 20
    max_burst: int = 16
    dma_outstanding: int = 4

    def __post_init__(self) -> None:
        _check_int("rows", self.rows, MIN_DIM, MAX_DIM)
        _check_int("cols", self.cols, MIN_DIM, MAX_DIM)
        for field, supported in (("input_format", _SUPPORTED_INPUT_FORMATS),
                                 ("weight_format", _SUPPORTED_WEIGHT_FORMATS)):
            value = getattr(self, field)
            try:
                fmt = IntFormat.parse(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{field}: {exc}") from None
            if fmt not in supported:
                names = ", ".join(f.name for f in supported)
                raise ConfigError(
                    f"{field} {fmt.name} is not supported by the RTL yet (supported: {names})"
                )
            object.__setattr__(self, field, fmt)
        if self.input_format != self.weight_format:
            raise ConfigError(
                f"input_format {self.input_format.name} with weight_format "
                f"{self.weight_format.name} is not a mode of the array: the precisions are "
                f"int8 x int8 and int4 x int4 (int4 weights run at int8 precision as int8 values)"
            )
        product_bits = self.input_format.bits + self.weight_format.bits
        if isinstance(self.acc_bits, bool) or not isinstance(self.acc_bits, int):
            raise ConfigError(f"acc_bits must be an int, not {self.acc_bits!r}")
        if not product_bits <= self.acc_bits <= 64:
            raise ConfigError(
                f"acc_bits must be between {product_bits} (the width of one "
                f"{self.input_format.name} x {self.weight_format.name} product) and 64, "
                f"not {self.acc_bits}"
            )
        try:
            object.__setattr__(self, "dataflow", Dataflow(self.dataflow))
        except ValueError:
            names = ", ".join(f"{d.value} ({d.short})" for d in Dataflow)
            raise ConfigError(f"dataflow must be one of {names}, not {self.dataflow!r}") from None
        if isinstance(self.clock_mhz, bool) or not isinstance(self.clock_mhz, (int, float)):
            raise ConfigError(f"clock_mhz must be a number, not {self.clock_mhz!r}")
        if not (0.0 < self.clock_mhz <= MAX_CLOCK_MHZ) or math.isnan(self.clock_mhz):
            raise ConfigError(
                f"clock_mhz must be greater than 0 and at most {MAX_CLOCK_MHZ:g}, not {self.clock_mhz}"
            )
        object.__setattr__(self, "clock_mhz", float(self.clock_mhz))
        for name in ("act_mem_words", "weight_mem_words", "acc_mem_words", "cmd_mem_words",
                     "param_mem_words"):
            _check_int(name, getattr(self, name), MIN_MEM_WORDS, MAX_MEM_WORDS, " words")
        try:
            object.__setattr__(self, "requant", RequantMode(self.requant))
        except ValueError:
            names = ", ".join(r.value for r in RequantMode)
            raise ConfigError(f"requant must be one of {names}, not {self.requant!r}") from None
        if self.requant is not RequantMode.NONE and self.acc_bits > 32:
            raise ConfigError(
                f"acc_bits must be at most 32 with requant {self.requant.value} (the "
                f"post-processing unit takes int32 accumulators), not {self.acc_bits}"
            )

        self._check_dram()

    def _check_dram(self) -> None:
        if isinstance(self.dram_width, bool) or not isinstance(self.dram_width, int) \
                or self.dram_width not in DRAM_WIDTHS:
            raise ConfigError(f"dram_width must be one of {', '.join(map(str, DRAM_WIDTHS))} "
                              f"bytes (0: no bus interface), not {self.dram_width!r}")
        if self.dram_width == 0:
            if self.dram_latency != 0:
                raise ConfigError(f"dram_latency {self.dram_latency!r} needs a bus interface: "
                                  f"set dram_width (4, 8, 16, 32 or 64 bytes)")
        else:
            _check_int("dram_latency", self.dram_latency, 1, MAX_DRAM_LATENCY, " cycles")
        _check_int("dram_capacity", self.dram_capacity, 4096, 1 << 30, " bytes")
        if self.dram_capacity & (self.dram_capacity - 1):
            raise ConfigError(f"dram_capacity must be a power of two, not {self.dram_capacity}")
        _check_int("max_burst", self.max_burst, 1, 256, " beats")
        if self.max_burst & (self.max_burst - 1):
            raise ConfigError(f"max_burst must be a power of two, not {self.max_burst}")
        _check_int("dma_outstanding", self.dma_outstanding, 1, 16, " bursts")

    # ---- derived quantities (the only place they are computed) ---------------------------

    @property
    def has_dram(self) -> bool:
        """The accelerator has a bus interface: program and data live in DRAM."""
        return self.dram_width > 0

    @property
    def acc_format(self) -> IntFormat:
        """Signed format of partial sums and accumulator words."""
        return IntFormat(self.acc_bits, True)

    @property
    def product_bits(self) -> int:
        """Width of one activation x weight product."""
        return self.input_format.bits + self.weight_format.bits

    @property
    def precision(self) -> str:
        """``int8`` or ``int4``: the operand format of both activations and weights."""
        return self.input_format.name

    @property
    def products_per_pe(self) -> int:
        """Products each PE computes per cycle: 1 at int8, 2 at int4 (two 4-bit pairs per byte)."""
        return 8 // self.input_format.bits

    @property
    def act_lanes(self) -> int:
        """Activation-memory elements per word: ``rows`` bytes, each holding ``products_per_pe``."""
        return self.rows * self.products_per_pe

    @property
    def weight_lanes(self) -> int:
        """Weight-memory elements per word: ``cols`` bytes, each holding ``products_per_pe``."""
        return self.cols * self.products_per_pe

    @property
    def k_tile(self) -> int:
        """Reduction elements one weight tile covers: ``rows * products_per_pe``."""
        return self.rows * self.products_per_pe

    @property
    def macs_per_cycle(self) -> int:
        """Multiply-accumulates the array performs per cycle when fully busy."""
        return self.rows * self.cols * self.products_per_pe

    @property
    def act_word_bits(self) -> int:
        return self.act_lanes * self.input_format.bits

    @property
    def weight_word_bits(self) -> int:
        return self.weight_lanes * self.weight_format.bits

    @property
    def acc_word_bits(self) -> int:
        return self.cols * self.acc_bits

    @property
    def act_addr_bits(self) -> int:
        return _address_bits(self.act_mem_words)

    @property
    def weight_addr_bits(self) -> int:
        return _address_bits(self.weight_mem_words)

    @property
    def acc_addr_bits(self) -> int:
        return _address_bits(self.acc_mem_words)

    @property
    def cmd_addr_bits(self) -> int:
        return _address_bits(self.cmd_mem_words)

    @property
    def param_addr_bits(self) -> int:
        return _address_bits(self.param_mem_words)

    @property
    def memory_bytes(self) -> dict[str, int]:
        """On-chip bytes of each memory (the command memory uses the Program's word width)."""
        return {
            "act": self.act_mem_words * self.act_word_bits // 8,
            "weight": self.weight_mem_words * self.weight_word_bits // 8,
            "acc": self.acc_mem_words * self.acc_word_bits // 8,
        }

    @property
    def peak_gops(self) -> float:
        """Peak throughput in giga-operations per second (one MAC = two operations)."""
        return 2.0 * self.macs_per_cycle * self.clock_mhz / 1000.0

    # ---- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; formats and enums become their names."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, IntFormat):
                value = value.name
            elif isinstance(value, enum.Enum):
                value = value.value
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AcceleratorConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"accelerator config must be a mapping, not {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown accelerator config field(s): {', '.join(unknown)} "
                f"(known: {', '.join(known)})"
            )
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AcceleratorConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"accelerator config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def stable_hash(self) -> str:
        """16 hex digits that identify this configuration across runs and machines."""
        payload = json.dumps({"schema": SCHEMA_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> AcceleratorConfig:
        """A copy with ``changes`` applied and validated."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown accelerator config field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for logs: array, formats, accumulator, memories, clock."""
        mem = self.memory_bytes
        return (
            f"{self.rows}x{self.cols} {self.dataflow.value} "
            f"{self.input_format.name}x{self.weight_format.name}->int{self.acc_bits}, "
            f"act {mem['act'] // 1024} KiB, weight {mem['weight'] // 1024} KiB, "
            f"acc {mem['acc'] // 1024} KiB, {self.cmd_mem_words} commands, "
            + (f"requant {self.requant.value}, " if self.requant is not RequantMode.NONE else "")
            + (f"DRAM {self.dram_width} B/cycle latency {self.dram_latency}, "
               if self.has_dram else "")
            + f"{self.clock_mhz:g} MHz"
        )


_BASE = AcceleratorConfig()

PRESETS: dict[str, AcceleratorConfig] = {
    "tiny-4x4": _BASE.replace(rows=4, cols=4, act_mem_words=4096, weight_mem_words=4096,
                              acc_mem_words=4096, cmd_mem_words=1024),
    "default-8x8": _BASE,
    "edge-16x16": _BASE.replace(rows=16, cols=16, act_mem_words=8192, weight_mem_words=8192,
                                acc_mem_words=8192),
    "server-32x32": _BASE.replace(rows=32, cols=32, act_mem_words=8192, weight_mem_words=8192,
                                  acc_mem_words=8192, clock_mhz=500.0),
}


def preset(name: str) -> AcceleratorConfig:
    """The named preset; an unknown name lists the available ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown accelerator preset {name!r} (available: {', '.join(PRESETS)})"
        ) from None
