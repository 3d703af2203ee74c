"""Energy and area of a run: action counts times per-action energies from a technology table.

The action counts come from the one timing model (:meth:`qsim.timing.TimingResult.counters`,
the RTL's own performance counters): MACs the array performs (padding included), words read
and written in each on-chip memory, elements requantized by the post-processing unit, and,
once the DRAM/DMA model lands, bytes moved to and from DRAM (``dram_bytes``, 0 until then).

The default table is the 45 nm, 0.9 V one of M. Horowitz, "1.1 Computing's energy problem (and
what we can do about it)", ISSCC 2014 Digest of Technical Papers, pp. 10-14. Widths and sizes
the table does not list are derived by the rules of :class:`TechTable` (documented with their
sources in docs/estimate.md). A user TOML (``qsim estimate --tech FILE.toml``) overrides any
key; an unknown key is an error that names it.

Only dynamic energy is counted (no leakage, no clock tree, no control): the figures are the
energy of the actions the accelerator performs, as the table prices them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from qsim.config import AcceleratorConfig, RequantMode
from qsim.errors import ConfigError

__all__ = ["TechTable", "HOROWITZ_45NM", "load_tech", "ActionCounts", "EnergyBreakdown",
           "energy_of", "area_mm2", "COMPONENTS", "sram_access_pj"]

#: Areas of Horowitz's table (45 nm): an 8-bit multiply and a 32-bit add, um2.
INT8_MULT_UM2 = 282.0
INT32_ADD_UM2 = 137.0
#: Intel's 45 nm high-density 6T SRAM bit cell (Mistry et al., IEDM 2007), um2.
SRAM_BITCELL_UM2 = 0.346
#: Bit-cell area over macro area assumed for the on-chip SRAMs: an assumption (decoders,
#: sense amplifiers, write drivers and redundancy take the rest), not a measurement.
SRAM_ARRAY_EFFICIENCY = 0.7

#: Components of the energy breakdown, in report order.
COMPONENTS = ("mac_array", "act_sram", "weight_sram", "acc_sram", "ppu", "dram")


@dataclass(frozen=True)
class TechTable:
    """Per-action energies (pJ) and optional area figures of one technology.

    Every field can be overridden from a TOML file (:func:`load_tech`). Energies of the
    default table are Horowitz's (45 nm, 0.9 V); the ``dram_64b_pj`` default is the middle
    of the range he gives (1.3-2.6 nJ per 64-bit access). Area figures (45 nm, documented
    with their sources and assumptions in docs/estimate.md): an int8 MAC is an 8-bit
    multiply plus a 32-bit add of Horowitz's area column (282 + 137 um2); an SRAM KiB is
    8,192 bit cells of 0.346 um2 (Intel's 45 nm 6T cell, Mistry et al., IEDM 2007) over an
    assumed array efficiency of :data:`SRAM_ARRAY_EFFICIENCY`. A table may set either to
    another value (``qsim synth`` counts may supply FPGA resources later, see
    :func:`area_mm2`).
    """

    name: str = "horowitz-45nm"
    source: str = ("M. Horowitz, 'Computing's energy problem (and what we can do about it)', "
                   "ISSCC 2014, pp. 10-14 (45 nm, 0.9 V)")
    # integer arithmetic (pJ per operation)
    int8_add_pj: float = 0.03
    int32_add_pj: float = 0.1
    int8_mult_pj: float = 0.2
    int32_mult_pj: float = 3.1
    # floating point (pJ per operation)
    fp16_add_pj: float = 0.4
    fp32_add_pj: float = 0.9
    fp16_mult_pj: float = 1.1
    fp32_mult_pj: float = 3.7
    # on-chip SRAM: one 64-bit access to an array of 8 KB, 32 KB and 1 MB (pJ)
    sram_8kb_64b_pj: float = 10.0
    sram_32kb_64b_pj: float = 20.0
    sram_1mb_64b_pj: float = 100.0
    # DRAM: one 64-bit access (pJ); Horowitz gives 1.3-2.6 nJ, the default is the middle
    dram_64b_pj: float = 1950.0
    # area (um2; None = not available): see the class docstring
    mac_int8_um2: float | None = INT8_MULT_UM2 + INT32_ADD_UM2
    sram_um2_per_kib: float | None = round(8 * 1024 * SRAM_BITCELL_UM2 / SRAM_ARRAY_EFFICIENCY, 1)

    # ---- derived rules -----------------------------------------------------------------

    def add_pj(self, bits: int) -> float:
        """An integer add of ``bits``: linear in the width through the 8- and 32-bit points
        (exact at 8 and 32; the table's own ratio 0.1 / 0.03 is close to 32 / 8 = 4)."""
        if bits == 8:
            return self.int8_add_pj
        if bits == 32:
            return self.int32_add_pj
        slope = (self.int32_add_pj - self.int8_add_pj) / 24.0
        return max(self.int8_add_pj + slope * (bits - 8), 0.0)

    def mult_pj(self, bits: int) -> float:
        """An integer ``bits`` x ``bits`` multiply: the 8-bit energy scaled by
        ``(bits / 8) ** 2`` (an array multiplier has ``bits ** 2`` partial-product cells; the
        table's own 32-bit / 8-bit ratio is 15.5, against 16 by this rule)."""
        if bits == 8:
            return self.int8_mult_pj
        if bits == 32:
            return self.int32_mult_pj
        return self.int8_mult_pj * (bits / 8.0) ** 2

    def sram_64b_pj(self, size_bytes: int) -> float:
        """One 64-bit access to an SRAM of ``size_bytes``: piecewise linear in log(size) and
        log(energy) through the 8 KB, 32 KB and 1 MB points, extended beyond them with the
        slope of the nearest segment."""
        exact = {8 * 1024: self.sram_8kb_64b_pj, 32 * 1024: self.sram_32kb_64b_pj,
                 1024 * 1024: self.sram_1mb_64b_pj}
        if size_bytes in exact:
            return exact[size_bytes]
        points = [(math.log2(8 * 1024), math.log2(self.sram_8kb_64b_pj)),
                  (math.log2(32 * 1024), math.log2(self.sram_32kb_64b_pj)),
                  (math.log2(1024 * 1024), math.log2(self.sram_1mb_64b_pj))]
        x = math.log2(max(size_bytes, 1))
        (x0, y0), (x1, y1) = points[:2] if x <= points[1][0] else points[1:]
        return 2.0 ** (y0 + (y1 - y0) * (x - x0) / (x1 - x0))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The default table.
HOROWITZ_45NM = TechTable()

_NUMBER_KEYS = {f.name for f in dataclasses.fields(TechTable)} - {"name", "source"}


def load_tech(path: str | Path | None) -> TechTable:
    """The default table with the keys of a TOML file applied (``None``: the default).

    The file is flat (``key = value``, optionally under a ``[tech]`` table); unknown keys and
    values that are not positive numbers are errors naming the key and the file.
    """
    if path is None:
        return HOROWITZ_45NM
    import tomllib

    from qsim.io import read_text

    label = f"technology file {path}"
    try:
        data = tomllib.loads(read_text(Path(path)))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label} is not valid TOML: {exc}") from None
    if set(data) == {"tech"} and isinstance(data["tech"], dict):
        data = data["tech"]
    return tech_from_dict(data, label)


def tech_from_dict(data: Mapping[str, Any], label: str = "technology table") -> TechTable:
    """:data:`HOROWITZ_45NM` with ``data`` applied and checked."""
    known = sorted(_NUMBER_KEYS | {"name", "source"})
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{label}: unknown key {key!r} (known: {', '.join(known)})")
        if key in ("name", "source"):
            if not isinstance(value, str):
                raise ConfigError(f"{label}: {key} must be a string, not {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or math.isinf(value):
            raise ConfigError(f"{label}: {key} must be a positive number, not {value!r}")
        else:
            value = float(value)
        changes[key] = value
    if "name" not in changes and changes:
        changes["name"] = f"{HOROWITZ_45NM.name} (modified)"
    return dataclasses.replace(HOROWITZ_45NM, **changes)


@dataclass
class ActionCounts:
    """What the accelerator did, as counted by the timing model (and later the DMA model).

    ``array_macs`` counts every MAC the array performs, padding included
    (:attr:`qsim.timing.TimingResult.array_macs`); memory counts are words of the config's
    word widths; ``dram_bytes`` is 0 until the DRAM/DMA model supplies it.
    """

    array_macs: int = 0
    act_reads: int = 0
    weight_reads: int = 0
    acc_reads: int = 0
    acc_writes: int = 0
    act_writes: int = 0
    ppu_outputs: int = 0
    dram_bytes: int = 0

    @classmethod
    def from_timing(cls, timing, count: int = 1, dram_bytes: int = 0) -> ActionCounts:
        """The counts of a :class:`qsim.timing.TimingResult`, ``count`` times over."""
        def c(name: str) -> int:
            return int(getattr(timing, name)) * count

        return cls(array_macs=timing.array_macs * count, act_reads=c("act_reads"),
                   weight_reads=c("weight_reads"), acc_reads=c("acc_reads"),
                   acc_writes=c("acc_writes"), act_writes=c("act_writes"),
                   ppu_outputs=c("ppu_outputs"), dram_bytes=dram_bytes)

    def __add__(self, other: ActionCounts) -> ActionCounts:
        return ActionCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                               for f in dataclasses.fields(self)})

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EnergyBreakdown:
    """Energy per component in pJ (keys of :data:`COMPONENTS`) and per-action prices used."""

    components: dict[str, float]
    prices: dict[str, float]

    @property
    def total_pj(self) -> float:
        return sum(self.components.values())


def sram_access_pj(tech: TechTable, size_bytes: int, word_bits: int) -> float:
    """One access of a ``word_bits`` word to an SRAM of ``size_bytes``: the 64-bit energy at
    that size scaled by ``word_bits / 64`` (energy per bit constant across word widths)."""
    return tech.sram_64b_pj(size_bytes) * word_bits / 64.0


def prices(config: AcceleratorConfig, tech: TechTable = HOROWITZ_45NM) -> dict[str, float]:
    """Energy in pJ of each action on ``config``.

    * ``mac``: one ``precision`` multiply plus one add of ``acc_bits`` (the accumulation);
      at int4 each of the two products per PE per cycle is one MAC of a 4-bit multiply.
    * ``act_word``, ``weight_word``, ``acc_word``: one access (read or write) of a word of
      the memory's width to a memory of its size (:func:`sram_access_pj`).
    * ``ppu_output``: fixed-point: one 32-bit multiply and two 32-bit adds (bias, rounding)
      per element; float32: one float32 multiply and one float32 add, plus one 32-bit add.
    * ``dram_byte``: a 64-bit DRAM access divided by 8.
    """
    mem = config.memory_bytes
    if config.requant is RequantMode.FLOAT32:
        ppu = tech.fp32_mult_pj + tech.fp32_add_pj + tech.int32_add_pj
    else:
        ppu = tech.int32_mult_pj + 2 * tech.int32_add_pj
    return {
        "mac": tech.mult_pj(config.input_format.bits) + tech.add_pj(config.acc_bits),
        "act_word": sram_access_pj(tech, mem["act"], config.act_word_bits),
        "weight_word": sram_access_pj(tech, mem["weight"], config.weight_word_bits),
        "acc_word": sram_access_pj(tech, mem["acc"], config.acc_word_bits),
        "ppu_output": ppu,
        "dram_byte": tech.dram_64b_pj / 8.0,
    }


def energy_of(counts: ActionCounts | Mapping[str, int], config: AcceleratorConfig,
              tech: TechTable = HOROWITZ_45NM) -> EnergyBreakdown:
    """Energy of ``counts`` on ``config``: each count times its price (:func:`prices`).

    ``counts`` may be a mapping with the fields of :class:`ActionCounts` (missing ones are 0),
    so the DRAM model can pass ``dram_bytes`` without anything else changing.
    """
    if not isinstance(counts, ActionCounts):
        fields = {f.name for f in dataclasses.fields(ActionCounts)}
        unknown = sorted(set(counts) - fields)
        if unknown:
            raise ConfigError(f"unknown action count(s): {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(fields))})")
        counts = ActionCounts(**dict(counts))
    p = prices(config, tech)
    components = {
        "mac_array": counts.array_macs * p["mac"],
        "act_sram": (counts.act_reads + counts.act_writes) * p["act_word"],
        "weight_sram": counts.weight_reads * p["weight_word"],
        "acc_sram": (counts.acc_reads + counts.acc_writes) * p["acc_word"],
        "ppu": counts.ppu_outputs * p["ppu_output"],
        "dram": counts.dram_bytes * p["dram_byte"],
    }
    return EnergyBreakdown(components, p)


def area_mm2(config: AcceleratorConfig, tech: TechTable = HOROWITZ_45NM,
             synth: Mapping[str, Any] | None = None) -> float | None:
    """Silicon area in mm² from the table: MACs x ``mac_int8_um2`` (an int4 PE counts as one
    int8 MAC: it is the same 8-bit datapath split in two) plus the KiB of the activation,
    weight and accumulator memories x ``sram_um2_per_kib``. ``None`` when the table has no
    area figures. Not included: the PEs' registers, control, the command and parameter
    memories, the post-processing unit, the DMA engine and bus interface, wiring.

    ``synth`` is the hook for ``qsim synth``: a mapping with ``area_mm2`` (e.g. from a
    synthesis report) takes precedence over the table.
    """
    if synth is not None and synth.get("area_mm2") is not None:
        return float(synth["area_mm2"])
    if tech.mac_int8_um2 is None or tech.sram_um2_per_kib is None:
        return None
    kib = sum(config.memory_bytes.values()) / 1024.0
    return (config.rows * config.cols * tech.mac_int8_um2 + kib * tech.sram_um2_per_kib) / 1e6


def energy_fields(counts: ActionCounts | Mapping[str, int], config: AcceleratorConfig,
                  tech: TechTable = HOROWITZ_45NM, useful_macs: int | None = None) -> dict[str, Any]:
    """The energy keys of ``qsim estimate --json``: ``energy_pj`` (total),
    ``energy_breakdown_pj`` (per component), ``pj_per_mac`` (per useful MAC), ``tops_per_w``
    (2 / pJ per MAC), ``area_mm2`` (``None`` without area figures) and ``tech`` (the table)."""
    e = energy_of(counts, config, tech)
    total = e.total_pj
    return {
        "energy_pj": round(total, 3),
        "energy_breakdown_pj": {k: round(e.components[k], 3) for k in COMPONENTS},
        "pj_per_mac": round(total / useful_macs, 6) if useful_macs else None,
        "tops_per_w": round(2.0 * useful_macs / total, 6) if useful_macs and total else None,
        "area_mm2": area_mm2(config, tech),
        "tech": tech.name,
    }
