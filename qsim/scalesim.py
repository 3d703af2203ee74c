"""SCALE-Sim interoperability: its topology CSVs and its ``.cfg`` array settings.

Topology files (SCALE-Sim's ``topologies/``) come in two formats, a header line first:

* convolution (default): ``Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width,
  Channels, Num Filter, Strides,`` (an optional ninth column is the column stride; without it
  the stride applies to both). As in SCALE-Sim, there is no padding: the IFMAP sizes are the
  padded ones, the output is ``(IFMAP - Filter) // Stride + 1`` per dimension, and a layer
  whose name contains ``DP`` is depthwise: ``Channels`` separate convolutions of one channel.
  Each layer maps to the GEMM SCALE-Sim maps it to: M = output pixels (x batch),
  K = Filter Height x Filter Width x Channels, N = Num Filter.
* GEMM (``--gemm``): ``Layer, M, N, K,`` with ``C[M, N] = A[M, K] @ B[K, N]`` (note the
  column order: M, N, K).

Rows end with a comma in SCALE-Sim's files; trailing empty fields are ignored here, blank lines
are skipped, and any other malformed row is an error naming the file and the line.

The ``.cfg`` file is an INI file; ``[architecture_presets]`` gives ``ArrayHeight`` (rows),
``ArrayWidth`` (cols), ``Dataflow`` (``ws`` or ``os``; SCALE-Sim's ``is`` has no counterpart
here and is an error), ``IfmapSramSzkB``, ``FilterSramSzkB``, ``OfmapSramSzkB`` (mapped to the
activation, weight and accumulator memory depths at the config's word widths) and
``Bandwidth`` (words per cycle, kept for the roofline). Other keys are read by SCALE-Sim only
and ignored here.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsim.config import AcceleratorConfig
from qsim.errors import ConfigError
from qsim.nn.graph import GemmShape

__all__ = ["TopologyLayer", "read_topology", "ScaleSimConfig", "read_scalesim_cfg",
           "CONV_COLUMNS", "GEMM_COLUMNS"]

CONV_COLUMNS = ("IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width", "Channels",
                "Num Filter", "Strides")
GEMM_COLUMNS = ("M", "N", "K")


@dataclass(frozen=True)
class TopologyLayer:
    """One row of a topology file and the GEMM SCALE-Sim maps it to (at batch 1)."""

    name: str
    line: int
    gemm: GemmShape
    kind: str  # "conv", "dwconv" or "gemm"

    def at_batch(self, batch: int) -> GemmShape:
        g = self.gemm
        return GemmShape(g.m * batch, g.k, g.n, g.count)


def _fields(text: str) -> list[str]:
    fields = [f.strip() for f in text.split(",")]
    while fields and fields[-1] == "":
        fields.pop()
    return fields


def _int_field(where: str, column: str, text: str, shown: str | None = None) -> int:
    """``text`` as a positive integer; errors name ``where``, ``column`` and ``shown`` (the
    text as written, when ``text`` was cut out of it)."""
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{where}: {column} must be an integer, not "
                          f"{text if shown is None else shown!r}") from None
    if value < 1:
        raise ConfigError(f"{where}: {column} must be at least 1, not {value}")
    return value


def read_topology(path: str | Path, gemm: bool = False) -> list[TopologyLayer]:
    """The layers of a SCALE-Sim topology CSV (``gemm``: the ``Layer, M, N, K`` format)."""
    from qsim.io import read_text

    path = Path(path)
    lines = read_text(path).splitlines()
    columns = GEMM_COLUMNS if gemm else CONV_COLUMNS
    fmt = "GEMM (Layer, M, N, K)" if gemm else "convolution"
    header_seen = False
    layers: list[TopologyLayer] = []
    names: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        fields = _fields(raw)
        if not header_seen:
            header_seen = True
            if len(fields) > 1 and all(f.lstrip("-").isdigit() for f in fields[1:]):
                raise ConfigError(f"{where}: the first line must be the header "
                                  f"(Layer name, {', '.join(columns)}), not a layer")
            continue
        wanted = len(columns) + 1
        if not (len(fields) == wanted or (not gemm and len(fields) == wanted + 1)):
            extra = " (or 9 with a separate column stride)" if not gemm else ""
            hint = " (is this a GEMM file? use --gemm)" if not gemm and len(fields) == 4 else ""
            hint = hint or (" (is this a convolution file? drop --gemm)" if gemm and len(fields) >= 8
                            else "")
            raise ConfigError(f"{where}: a {fmt} row has {wanted} fields{extra}, this one has "
                              f"{len(fields)}{hint}")
        name = fields[0]
        if not name:
            raise ConfigError(f"{where}: the layer name is empty")
        if name in names:
            raise ConfigError(f"{where}: layer name {name!r} is used twice")
        names.add(name)
        values = [_int_field(where, col, text) for col, text in zip(columns, fields[1:])]
        if gemm:
            m, n, k = values
            layers.append(TopologyLayer(name, number, GemmShape(m, k, n), "gemm"))
            continue
        h, w, fh, fw, ch, nf, stride = values
        stride_w = _int_field(where, "column stride", fields[8]) if len(fields) == 9 else stride
        if fh > h or fw > w:
            raise ConfigError(f"{where}: the filter ({fh}x{fw}) is larger than the IFMAP "
                              f"({h}x{w}); SCALE-Sim topologies give padded IFMAP sizes")
        out_h, out_w = (h - fh) // stride + 1, (w - fw) // stride_w + 1
        if "DP" in name:  # SCALE-Sim's depthwise convention: Channels one-channel convolutions
            layers.append(TopologyLayer(name, number, GemmShape(out_h * out_w, fh * fw, nf, ch),
                                        "dwconv"))
        else:
            layers.append(TopologyLayer(name, number, GemmShape(out_h * out_w, fh * fw * ch, nf),
                                        "conv"))
    if not header_seen:
        raise ConfigError(f"{path}: empty topology file (expected a header line and layers)")
    if not layers:
        raise ConfigError(f"{path}: no layers after the header")
    return layers


@dataclass(frozen=True)
class ScaleSimConfig:
    """The array settings of a SCALE-Sim ``.cfg`` that have a counterpart in qsim."""

    path: str
    run_name: str | None
    rows: int | None
    cols: int | None
    dataflow: str | None
    ifmap_kb: int | None
    filter_kb: int | None
    ofmap_kb: int | None
    bandwidth_words: int | None

    def config_changes(self, base: AcceleratorConfig) -> dict[str, Any]:
        """Config fields this file sets, with memory sizes turned into word depths at the word
        widths of ``base`` with this file's rows and cols (1 KB = 1024 bytes)."""
        changes: dict[str, Any] = {}
        if self.rows is not None:
            changes["rows"] = self.rows
        if self.cols is not None:
            changes["cols"] = self.cols
        if self.dataflow is not None:
            changes["dataflow"] = self.dataflow
        shaped = base.replace(**{k: v for k, v in changes.items() if k != "dataflow"})
        for kb, field, word_bits in ((self.ifmap_kb, "act_mem_words", shaped.act_word_bits),
                                     (self.filter_kb, "weight_mem_words", shaped.weight_word_bits),
                                     (self.ofmap_kb, "acc_mem_words", shaped.acc_word_bits)):
            if kb is not None:
                changes[field] = max(2, kb * 1024 * 8 // word_bits)
        return changes


def read_scalesim_cfg(path: str | Path) -> ScaleSimConfig:
    """The settings of a SCALE-Sim ``.cfg`` (keys are case-insensitive, as in SCALE-Sim)."""
    from qsim.io import read_text

    label = f"SCALE-Sim config {path}"
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(read_text(Path(path)), source=str(path))
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{label} is not a valid .cfg file: {first}") from None
    section = "architecture_presets"
    if not parser.has_section(section):
        raise ConfigError(f"{label} has no [{section}] section")
    arch = parser[section]

    def number(key: str) -> int | None:
        if key not in arch:
            return None
        return _int_field(label, key, arch[key].split(",")[0].strip(), shown=arch[key])

    dataflow = arch.get("dataflow")
    if dataflow is not None:
        dataflow = dataflow.strip().lower()
        if dataflow == "is":
            raise ConfigError(f"{label}: Dataflow 'is' (input-stationary) has no counterpart in "
                              f"qsim, which models ws (weight-stationary) and os "
                              f"(output-stationary)")
        if dataflow not in ("ws", "os"):
            raise ConfigError(f"{label}: Dataflow must be ws or os, not {dataflow!r}")
    run_name = parser.get("general", "run_name", fallback=None)
    return ScaleSimConfig(str(path), run_name, number("arrayheight"), number("arraywidth"),
                          dataflow, number("ifmapsramszkb"), number("filtersramszkb"),
                          number("ofmapsramszkb"), number("bandwidth"))
