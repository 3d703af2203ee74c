"""The resource and Fmax table of docs/synth.md: ``python -m qsim.synth_table``.

Synthesizes 4 x 4, 8 x 8 and 16 x 16 arrays at int8 and int4 (weight-stationary, no
post-processing unit) with :func:`qsim.synth.synthesize` and writes a Markdown table with the
machine, the tool versions and the date. Memory depths are those of :data:`TABLE_MEMORIES`
(the presets' 16 K-word memories need more block RAM than any ECP5 has). A run that fails, or
that is skipped by ``--only``, is written "not measured" with its reason, never a guess.
If the output file holds the markers ``<!-- synth-table:start -->`` and
``<!-- synth-table:end -->``, only the text between them is replaced.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

from qsim.config import PRECISIONS, preset
from qsim.errors import QsimError
from qsim.synth import DEFAULT_FREQ_MHZ, TARGETS, parse_device, synthesize, tool_versions

__all__ = ["TABLE_MEMORIES", "table_configs", "render", "main"]

#: Memory depths (words) of every configuration in the table.
TABLE_MEMORIES = {"act_mem_words": 1024, "weight_mem_words": 1024, "acc_mem_words": 1024,
                  "cmd_mem_words": 512}

START, END = "<!-- synth-table:start -->", "<!-- synth-table:end -->"


def table_configs(sizes=(4, 8, 16), precisions=("int8", "int4")):
    """``(label, config)`` of every row of the table."""
    out = []
    for size in sizes:
        for precision in precisions:
            inputs, weights = PRECISIONS[precision]
            cfg = preset("default-8x8").replace(rows=size, cols=size, input_format=inputs,
                                                weight_format=weights, **TABLE_MEMORIES)
            out.append((f"{size}x{size} {precision}", cfg))
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(rows: list[tuple[str, dict | None, str]], target: str, device: str,
           freq_mhz: float) -> str:
    """The Markdown table of ``rows``: ``(label, result or None, note)``."""
    versions = ", ".join(f"{k} {v}" for k, v in tool_versions(target).items())
    lines = [
        f"Target {target} `{device}`, nextpnr target frequency {freq_mhz:g} MHz, memories "
        + ", ".join(f"{k.removesuffix('_mem_words')} {v}" for k, v in TABLE_MEMORIES.items())
        + " words; weight-stationary, no post-processing unit.",
        f"Measured {datetime.date.today().isoformat()} on {_cpu()} ({os.cpu_count()} cores, "
        f"shared), {versions}, Python {platform.python_version()}.",
        "",
        "| config | PE | Fmax (MHz) | LUTs | FFs | DSPs | block RAMs | wall time (yosys + nextpnr) "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, result, note in rows:
        if result is None:
            lines.append(f"| {label} | | not measured | not measured | not measured | not measured "
                         f"| not measured | | {note} |")
            continue
        wall = result["wall_s"]
        lines.append(f"| {label} | {result['pe']} | {result['fmax_mhz']:.2f} | {result['luts']} "
                     f"| {result['ffs']} "
                     f"| {result['dsps']} | {result['brams']} "
                     f"| {wall['yosys']:.0f} s + {wall['nextpnr']:.0f} s | {note} |")
    return "\n".join(lines) + "\n"


def _write(path: Path, table: str) -> None:
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{START}\n{table}{END}{tail}"
    else:
        text = f"{START}\n{table}{END}\n"
    path.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qsim.synth_table", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="ecp5", choices=tuple(TARGETS))
    parser.add_argument("--device")
    parser.add_argument("--freq", type=float, default=DEFAULT_FREQ_MHZ)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--precisions", nargs="+", default=["int8", "int4"], choices=tuple(PRECISIONS))
    parser.add_argument("--skip", nargs="*", default=[], metavar="LABEL",
                        help="rows not to run, e.g. '16x16 int4' (written: not measured)")
    parser.add_argument("--out", type=Path, help="Markdown file to write (default: stdout)")
    args = parser.parse_args(argv)
    device = parse_device(args.target, args.device).name
    rows = []
    for label, cfg in table_configs(args.sizes, args.precisions):
        if label in args.skip:
            rows.append((label, None, "skipped (--skip)"))
            continue
        start = time.perf_counter()
        try:
            result = synthesize(cfg, args.target, args.device, args.freq)
            note = "cached" if result["cached"] else ""
        except QsimError as exc:
            result, note = None, f"failed: {exc}".replace("|", "/")
        print(f"{label}: {'failed' if result is None else result['fmax_mhz']} "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        rows.append((label, result, note))
    table = render(rows, args.target, device, args.freq)
    if args.out is None:
        sys.stdout.write(table)
    else:
        _write(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
