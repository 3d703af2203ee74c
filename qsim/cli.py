"""Command-line interface: argument parsing over the qsim API, nothing more.

Every error a user can cause (bad sizes, shapes that do not fit, a missing tool, an
unreadable file, a bad option) is printed as one ``qsim: error:`` line with exit status 2; a
disagreement between the RTL and the models exits with status 1; a run stopped by Ctrl-C or
by ``qsim run --time-limit`` exits with status 130. Output files are written with
:func:`qsim.io.open_output` (atomically; devices and FIFOs written through) and every
``--json`` output is strict JSON (:func:`qsim.io.json_text`: unmeasured figures are null).
See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from qsim.config import PRESETS, AcceleratorConfig, preset
from qsim.errors import ConfigError, QsimError
from qsim.io import json_text

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_DISAGREE, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one ``qsim: error:`` line (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"qsim: error: {message} (see {self.prog} --help)\n")

_CONFIG_FLAGS = {
    "rows": ("--rows", int, "PE rows (2..64)"),
    "cols": ("--cols", int, "PE columns (2..64)"),
    "acc_bits": ("--acc-bits", int, "accumulator width in bits"),
    "clock_mhz": ("--clock-mhz", float, "clock frequency in MHz"),
    "act_mem_words": ("--act-words", int, "activation memory depth in words"),
    "weight_mem_words": ("--weight-words", int, "weight memory depth in words"),
    "acc_mem_words": ("--acc-words", int, "accumulator memory depth in words"),
    "cmd_mem_words": ("--cmd-words", int, "command memory depth in words"),
    "param_mem_words": ("--param-words", int, "depth of each post-processing parameter memory"),
    "requant": ("--requant", str, "post-processing unit: none, fixed-point or float32 (a GEMM's "
                                  "result is then requantized on chip with random per-column "
                                  "parameters from --seed)"),
    "dram_width": ("--dram-width", int, "bytes per beat of the AXI4 bus to DRAM (4, 8, 16, 32, "
                                        "64): operands start and results end in DRAM, moved by "
                                        "the DMA engine (0: no bus interface)"),
    "dram_latency": ("--dram-latency", int, "cycles of DRAM latency (1..4096; with --dram-width)"),
    "dram_capacity": ("--dram-capacity", int, "bytes of the simulated DRAM (a power of two)"),
}


def _add_config_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accelerator")
    g.add_argument("--preset", default="default-8x8",
                   help=f"starting configuration ({', '.join(PRESETS)}; default: default-8x8)")
    g.add_argument("--config", type=Path, metavar="FILE.json",
                   help="configuration as JSON (AcceleratorConfig.to_json); flags override it")
    for field, (flag, kind, text) in _CONFIG_FLAGS.items():
        g.add_argument(flag, dest=field, type=kind, metavar="N" if kind is not str else "MODE",
                       help=text)
    g.add_argument("--dataflow", metavar="{ws,os}",
                   help="ws: weight-stationary (default), os: output-stationary (each PE keeps "
                        "one output; activations and weights stream through)")
    g.add_argument("--precision", metavar="{int8,int4}",
                   help="operand precision of activations and weights: int8, or int4 (two 4-bit "
                        "products per PE per cycle, operands packed two per byte)")


def _add_gemm_options(p: argparse.ArgumentParser, inputs: bool = False) -> None:
    g = p.add_argument_group("GEMM C[M,N] = A[M,K] @ B[K,N]")
    for name in ("m", "k", "n"):
        g.add_argument(f"--{name}", type=int, metavar=name.upper())
    g.add_argument("--seed", type=int, default=0, help="seed of the random int8 operands")
    if inputs:
        g.add_argument("--inputs", type=Path, metavar="A_B.npz",
                       help="the operands instead of random ones: an .npz with integer arrays A "
                            "(M x K) and B (K x N), e.g. numpy.savez(path, A=a, B=b)")
    g.add_argument("--fit", action="store_true",
                   help="size the memories to the GEMM instead of cutting it into several "
                        "programs when it does not fit")


def _check_gemm_args(args: argparse.Namespace, alternative: str) -> None:
    missing = [f"--{d}" for d in ("m", "k", "n") if getattr(args, d) is None]
    if missing:
        raise ConfigError(f"{args.command} needs {alternative} or all of --m --k --n "
                          f"(missing {' '.join(missing)})")


def _read_gemm_inputs(path: Path):
    """Arrays ``A`` and ``B`` of an .npz, checked to be 2-D integer operands of one GEMM."""
    import numpy as np

    from qsim.io import reading_archive

    label = f"inputs {path}"
    with reading_archive(label):
        with open(path, "rb") as handle:
            if handle.read(2) != b"PK":
                raise ConfigError(f"{label}: not an .npz file (write one with "
                                  f"numpy.savez(path, A=a, B=b))")
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as archive:
                names = list(archive.files)
                missing = [key for key in ("A", "B") if key not in names]
                if missing:
                    held = ", ".join(names) if names else "no arrays"
                    raise ConfigError(f"{label}: no array {' or '.join(missing)} (it holds {held}; "
                                      f"expected A, M x K, and B, K x N)")
                a, b = np.asarray(archive["A"]), np.asarray(archive["B"])
    for name, array, dims in (("A", a, "M x K"), ("B", b, "K x N")):
        if array.ndim != 2:
            raise ConfigError(f"{label}: {name} must be 2-D ({dims}), not of shape {array.shape}")
        if not np.issubdtype(array.dtype, np.integer):
            raise ConfigError(f"{label}: {name} must hold integers, not {array.dtype}")
        if 0 in array.shape:
            raise ConfigError(f"{label}: {name} is {array.shape[0]}x{array.shape[1]} ({dims}); "
                              f"every size must be at least 1")
    if a.shape[1] != b.shape[0]:
        raise ConfigError(f"{label}: A is {a.shape[0]}x{a.shape[1]} (M x K) but B is "
                          f"{b.shape[0]}x{b.shape[1]} (K x N): A has {a.shape[1]} columns, "
                          f"B {b.shape[0]} rows")
    return a, b


def _check_operand_range(path: Path, name: str, array, fmt, role: str) -> None:
    import numpy as np

    bad = np.argwhere((array < fmt.min) | (array > fmt.max))  # compared in the array's dtype
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        more = f" ({len(bad)} values of {name} are)" if len(bad) > 1 else ""
        raise ConfigError(f"inputs {path}: {name}[{index[0]}, {index[1]}] = {int(array[index])} is "
                          f"outside the {role} format {fmt.name} [{fmt.min}, {fmt.max}]{more}")


def _gemm_operands(args: argparse.Namespace):
    """The accelerator and the operands of ``qsim cosim``: from --inputs, else random."""
    import numpy as np

    if args.inputs is None:
        _check_gemm_args(args, "--inputs A_B.npz")
        cfg = _gemm_config(args)
        rng = np.random.default_rng(args.seed)
        a = rng.integers(cfg.input_format.min, cfg.input_format.max + 1, (args.m, args.k))
        b = rng.integers(cfg.weight_format.min, cfg.weight_format.max + 1, (args.k, args.n))
        return cfg, a, b
    a, b = _read_gemm_inputs(args.inputs)
    shape = {"m": a.shape[0], "k": a.shape[1], "n": b.shape[1]}
    for dim, size in shape.items():
        given = getattr(args, dim)
        if given is not None and given != size:
            raise ConfigError(f"--{dim} {given} differs from inputs {args.inputs}, whose "
                              f"{dim.upper()} is {size}")
        setattr(args, dim, size)
    cfg = _gemm_config(args)
    _check_operand_range(args.inputs, "A", a, cfg.input_format, "input")
    _check_operand_range(args.inputs, "B", b, cfg.weight_format, "weight")
    return cfg, a.astype(np.int64), b.astype(np.int64)


def _config_from(args: argparse.Namespace, base: AcceleratorConfig | None = None
                 ) -> AcceleratorConfig:
    if base is not None:
        cfg = base  # e.g. a SCALE-Sim .cfg applied to --preset/--config; flags override it
    elif args.config is not None:
        from qsim.io import read_text

        cfg = AcceleratorConfig.from_json(read_text(args.config))
    else:
        cfg = preset(args.preset)
    changes = {f: getattr(args, f) for f in _CONFIG_FLAGS if getattr(args, f, None) is not None}
    dataflow = getattr(args, "dataflow", None)
    if dataflow is not None:
        if dataflow not in ("ws", "os"):
            raise ConfigError(f"--dataflow must be ws (weight-stationary) or os "
                              f"(output-stationary), not {dataflow!r}")
        changes["dataflow"] = dataflow
    precision = getattr(args, "precision", None)
    if precision is not None:
        from qsim.config import PRECISIONS

        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        changes["input_format"], changes["weight_format"] = PRECISIONS[precision]
    return cfg.replace(**changes) if changes else cfg


def _check_seed(args: argparse.Namespace) -> None:
    if args.seed < 0:  # numpy's generators take seeds of at least 0
        raise ConfigError(f"--seed must be at least 0, not {args.seed}")


def _gemm_config(args: argparse.Namespace) -> AcceleratorConfig:
    from qsim.bench import gemm_config

    cfg = _config_from(args)
    if args.fit:
        fitted = gemm_config(cfg.rows, cfg.cols, args.m, args.k, args.n)
        if cfg.dataflow.short != "ws":
            fitted = _fit_memories(cfg, args.m, args.k, args.n)
        cfg = cfg.replace(**{f: max(getattr(cfg, f), getattr(fitted, f)) for f in
                             ("act_mem_words", "weight_mem_words", "acc_mem_words", "cmd_mem_words")})
    return cfg


def _fit_memories(cfg: AcceleratorConfig, m: int, k: int, n: int) -> AcceleratorConfig:
    """``cfg`` with memories (powers of two, never smaller) that hold the GEMM in one program."""
    from qsim.compile import gemm_layouts

    a, b, c = gemm_layouts(cfg, m, k, n)

    def fit(words: int) -> int:
        return 1 << max(1, (words - 1).bit_length())

    return cfg.replace(act_mem_words=fit(a.words), weight_mem_words=fit(b.words),
                       acc_mem_words=fit(c.words), cmd_mem_words=fit(a.lane_tiles * c.lane_tiles + 1))


def _print_table(rows: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _gemm_requant(cfg: AcceleratorConfig, product, seed: int):
    """Random per-column post-processing parameters (from ``seed``) when ``cfg`` has a unit."""
    import numpy as np

    from qsim.compile import GemmRequant
    from qsim.config import RequantMode

    if cfg.requant is RequantMode.NONE:
        return None
    return GemmRequant.random(cfg, product, np.random.default_rng([seed, 1]))


def _cmd_cosim(args: argparse.Namespace) -> int:
    from qsim.compile import plan_gemm
    from qsim.cosim.runner import check_timeout_cycles, compare_plan, run_programs
    from qsim.model import reference_gemm

    # everything a user can get wrong is checked before any build or simulation
    _check_seed(args)
    check_timeout_cycles(args.timeout_cycles, "--timeout-cycles")
    if args.waves is not None:
        from qsim.io import check_directory

        if args.native:
            raise ConfigError("--waves records through cocotb and cannot be combined with --native")
        check_directory(args.waves, "waveforms")
    cfg, a, b = _gemm_operands(args)
    name = f"gemm{args.m}x{args.k}x{args.n}"
    expected = reference_gemm(a, b, cfg.acc_bits)
    requant = _gemm_requant(cfg, expected, args.seed)
    if cfg.has_dram:
        return _cosim_dram(args, cfg, a, b, expected, requant, name)
    plan = plan_gemm(cfg, a, b, name=name, label_single=False, requant=requant)
    if args.native:
        from qsim.cosim.native import run_native

        results = [run_native(p, timeout_cycles=args.timeout_cycles) for p in plan.programs]
    else:
        results = run_programs(plan.programs, timeout_cycles=args.timeout_cycles,
                               waves=args.waves is not None, keep_dir=args.waves)
    report = compare_plan(plan, results, expected)
    wall_s = sum(r.wall_s for r in results)
    waves = results[0].extra.get("waves")
    tiling = plan.tiling
    data = report.to_dict()
    data.update({"config": cfg.to_dict(), "seed": None if args.inputs is not None else args.seed,
                 "inputs": None if args.inputs is None else str(args.inputs),
                 "programs": len(plan.programs),
                 "block": {"m": tiling.block_m, "k": tiling.block_k, "n": tiling.block_n},
                 "wall_s": round(wall_s, 4),
                 "simulator": "verilator-native" if args.native else "cocotb-verilator"})
    if waves is not None:
        data["waves"] = waves
    if args.json:
        print(json_text(data))
    else:
        source = f"seed {args.seed}" if args.inputs is None else f"inputs {args.inputs}"
        _print_table([
            ("config", cfg.describe()),
            ("gemm", f"{args.m}x{args.k}x{args.n} ({source})"),
            ("programs", tiling.describe()),
            ("elements compared", report.elements),
            ("mismatches", report.mismatches + report.acc_mismatches),
            ("model cycles", report.model_cycles),
            ("RTL cycles", report.rtl_cycles),
            ("utilization", f"{report.utilization:.2%}"),
            ("wall time", f"{wall_s:.2f} s"),
            ("simulated cycles/s", "not measured" if report.sim_cycles_per_s is None
             else f"{report.sim_cycles_per_s:,.0f}"),
            *([("waveform", waves)] if waves is not None else []),
            ("result", "AGREE: bit-exact and cycle-exact" if report.agrees else "DISAGREE"),
        ])
        _print_disagreements(report)
    return EXIT_OK if report.agrees else EXIT_DISAGREE


def _print_disagreements(report) -> None:
    """The first mismatching values and every differing counter of a cosim report."""
    for line in report.first_mismatches:
        print(f"  {line}")
    for counter, (model, rtl_value) in report.counter_diffs.items():
        print(f"  counter {counter}: model {model}, rtl {rtl_value}")


def _cosim_dram(args, cfg, a, b, expected, requant, name) -> int:
    """``qsim cosim`` with a bus interface: one program, operands and results in DRAM."""
    from qsim.compile_dram import compile_gemm_dram
    from qsim.cosim.runner import compare, run_programs

    if args.native:
        raise ConfigError("--native has no bus interface: co-simulation with --dram-width runs "
                          "through cocotb")
    program = compile_gemm_dram(cfg, a, b, name=name, requant=requant)
    rtl = run_programs([program], timeout_cycles=args.timeout_cycles,
                       waves=args.waves is not None, keep_dir=args.waves)[0]
    report = compare(program, rtl, reference={"C": expected})
    data = report.to_dict()
    data.update({"config": cfg.to_dict(),
                 "seed": None if args.inputs is not None else args.seed,
                 "inputs": None if args.inputs is None else str(args.inputs), "programs": 1,
                 "commands": len(program.commands), "wall_s": round(rtl.wall_s, 4),
                 "simulator": "cocotb-verilator"})
    if args.json:
        print(json_text(data))
    else:
        _print_table([
            ("config", cfg.describe()),
            ("gemm", f"{args.m}x{args.k}x{args.n}"),
            ("program", f"{len(program.commands)} commands, {program.dram_footprint()} DRAM bytes"),
            ("elements compared", report.elements),
            ("mismatches", report.mismatches + report.acc_mismatches + report.dram_mismatches),
            ("DRAM bytes read", report.dram_bytes["read"]),
            ("DRAM bytes written", report.dram_bytes["written"]),
            ("model cycles", report.model_cycles),
            ("RTL cycles", report.rtl_cycles),
            ("wall time", f"{rtl.wall_s:.2f} s"),
            ("result", "AGREE: bit-exact and cycle-exact" if report.agrees else "DISAGREE"),
        ])
        _print_disagreements(report)
    return EXIT_OK if report.agrees else EXIT_DISAGREE


def _estimate_dram(args, cfg) -> int:
    """``qsim estimate`` of a GEMM with a bus interface: the program compile_gemm_dram writes."""
    from qsim.compile_dram import plan_dram_gemm
    from qsim.timing import timing_of_commands

    plan = plan_dram_gemm(cfg, args.m, args.k, args.n, requant=cfg.requant.value != "none")
    t = timing_of_commands(cfg, plan.commands, args.m * args.k * args.n)
    program = plan
    data = {"config": cfg.to_dict(), "m": args.m, "k": args.k, "n": args.n, "programs": 1,
            "commands": len(program.commands), **t.counters(), "dram_bytes": t.dram_bytes,
            "useful_macs": t.useful_macs, "utilization": t.utilization, "seconds": t.seconds,
            **_gemm_energy(cfg, t, args.tech)}
    if args.json:
        print(json_text(data))
    else:
        _print_table([("config", cfg.describe()), ("gemm", f"{args.m}x{args.k}x{args.n}"),
                      ("program", f"{len(program.commands)} commands"),
                      *((k, v) for k, v in t.counters().items()),
                      ("utilization", f"{t.utilization:.2%}"),
                      ("time", f"{t.seconds * 1e6:.2f} us at {cfg.clock_mhz:g} MHz")])
    return EXIT_OK


def _cmd_estimate(args: argparse.Namespace) -> int:
    from qsim.compile import tile_gemm
    from qsim.hw import DMA_COUNTERS

    _check_seed(args)
    if args.network is not None or args.onnx is not None or args.topology is not None:
        return _estimate_network(args)
    if args.gemm or args.scalesim_cfg is not None:
        raise ConfigError("--gemm and --scalesim-cfg apply to --topology FILE.csv")
    _check_gemm_args(args, "--network NAME")
    cfg = _gemm_config(args)
    if cfg.has_dram:
        return _estimate_dram(args, cfg)
    tiling = tile_gemm(cfg, args.m, args.k, args.n, cfg.requant.value != "none")
    t = tiling.estimate()
    data = {"config": cfg.to_dict(), "m": args.m, "k": args.k, "n": args.n,
            "programs": tiling.programs,
            "block": {"m": tiling.block_m, "k": tiling.block_k, "n": tiling.block_n},
            **t.counters(), "dram_bytes": t.dram_bytes, "useful_macs": t.useful_macs,
            "utilization": t.utilization,
            "seconds": t.seconds, **_gemm_energy(cfg, t, args.tech)}
    if args.json:
        print(json_text(data))
    else:
        _print_table([("config", cfg.describe()), ("gemm", f"{args.m}x{args.k}x{args.n}"),
                      ("programs", tiling.describe()),
                      *((k, v) for k, v in t.counters().items() if k not in DMA_COUNTERS),
                      ("utilization", f"{t.utilization:.2%}"),
                      ("time", f"{t.seconds * 1e6:.2f} us at {cfg.clock_mhz:g} MHz")])
    return EXIT_OK


def _gemm_energy(cfg: AcceleratorConfig, timing, tech_path) -> dict:
    from qsim.energy import ActionCounts, energy_fields, load_tech

    return energy_fields(ActionCounts.from_timing(timing), cfg, load_tech(tech_path),
                         timing.useful_macs)


def _estimate_network(args: argparse.Namespace) -> int:
    from qsim.energy import load_tech
    from qsim.nn.estimate import estimate_gemms, format_estimate, workload_gemms

    name, gemms = workload_gemms(network=args.network, topology=args.topology, gemm=args.gemm,
                                 onnx=None if args.onnx is None else str(args.onnx),
                                 batch=args.batch)
    base = None
    if args.scalesim_cfg is not None:
        from qsim.scalesim import read_scalesim_cfg

        base = _config_from(argparse.Namespace(config=args.config, preset=args.preset))
        base = base.replace(**read_scalesim_cfg(args.scalesim_cfg).config_changes(base))
    cfg = _config_from(args, base)
    est = estimate_gemms(name, gemms, cfg, args.batch, load_tech(args.tech))
    if args.json:
        print(json_text(est.to_dict()))
        return EXIT_OK
    print("\n".join(format_estimate(est, args.layers, args.energy or args.tech is not None)))
    return EXIT_OK


def _cmd_rtl(args: argparse.Namespace) -> int:
    from rtl.export import generate_verilog

    from qsim.io import check_output, write_output

    to_stdout = str(args.output) == "-"
    if not to_stdout:
        check_output(args.output)
    cfg = _config_from(args)
    if args.pe == "ecp5":
        from rtl.ecp5 import ecp5_pe_supported

        why = ecp5_pe_supported(cfg)
        if why is not None:
            raise ConfigError(f"--pe ecp5: {why}")
    text = generate_verilog(cfg, pe=args.pe)
    if args.lint:
        # the ECP5 PE instantiates the vendor's multiplier: lint it with qsim's model of it
        if args.pe == "ecp5":
            from rtl.ecp5 import mult18x18d_model_verilog

            _lint(text + mult18x18d_model_verilog())
        else:
            _lint(text)
    if to_stdout:
        sys.stdout.write(text)
    else:
        write_output(args.output, text)  # atomic: never a truncated Verilog file
    if not to_stdout:
        print(f"wrote {args.output} ({len(text.splitlines())} lines) for {cfg.describe()}",
              file=sys.stderr)
    return EXIT_OK


def _lint(text: str) -> None:
    import subprocess
    import tempfile

    from qsim.cosim.toolchain import activate
    from qsim.errors import ToolchainError

    chain = activate()
    waivers = Path(__file__).resolve().parent.parent / "rtl" / "verilator.vlt"
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "qsim_top.v"
        top.write_text(text)
        done = subprocess.run([str(chain.binary), "--lint-only", "-Wall", str(waivers), str(top)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolchainError(f"verilator --lint-only -Wall found problems:\n{done.stderr[-4000:]}")
    print("verilator --lint-only -Wall: clean (waivers: rtl/verilator.vlt)", file=sys.stderr)


def _print_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(wd) for h, wd in zip(header, widths)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip())


class _Progress:
    """Progress lines of ``qsim run`` on stderr: one rewritten line on a terminal, else
    one line per step."""

    def __init__(self, stream, live: bool) -> None:
        self.stream, self.live, self.shown = stream, live, False

    def __call__(self, text: str) -> None:
        line = f"qsim run: {text}"
        if self.live:
            import shutil

            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r\x1b[K" + line[:width])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.live and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _not_run(value: Any, text: str | None = None) -> str:
    return "not run" if value is None else (str(value) if text is None else text)


def _stop_message(report: Any) -> str:
    total = len(report.workloads) + len(report.networks) + len(report.unfinished)
    finished = total - len(report.unfinished)
    why = ("interrupted (Ctrl-C)" if report.stopped == "interrupted"
           else f"stopped at the time limit of {report.time_limit:g} s")
    return (f"{why}: {finished} of {total} workloads finished; no verdict for "
            f"{', '.join(report.unfinished)}")


def _cmd_run(args: argparse.Namespace) -> int:
    from qsim.scenario import check_time_limit, load_scenario, run_scenario

    limit = check_time_limit(args.time_limit, "--time-limit")
    scenario = load_scenario(args.scenario)
    if args.no_rtl:
        from dataclasses import replace

        scenario = replace(scenario, rtl=False)
    live = sys.stderr.isatty() if args.progress is None else False
    progress = _Progress(sys.stderr, live) if (args.progress or live) else None
    try:
        report = run_scenario(scenario, time_limit=limit, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if report.stopped is not None:
        code = EXIT_INTERRUPTED
    else:
        code = EXIT_DISAGREE if report.agrees is False else EXIT_OK
    if args.json:
        print(json_text(report.to_dict()))
        if report.stopped is not None:
            print(f"qsim: {_stop_message(report)}", file=sys.stderr)
        return code
    print(f"scenario {scenario.name}: {scenario.config.describe()}")
    if scenario.description:
        print(f"  {scenario.description}")
    if report.workloads:
        header = ("workload", "M x K x N", "elements", "mismatches", "model cycles", "RTL cycles",
                  "util", "sim cycles/s")
        rows = []
        for w in report.workloads:
            rows.append((w.name, "x".join(map(str, w.shape)), str(w.elements), _not_run(w.mismatches),
                         str(w.model_cycles), _not_run(w.rtl_cycles), f"{w.utilization:.1%}",
                         _not_run(w.rtl_cycles, "not measured" if w.sim_cycles_per_s is None
                                  else f"{w.sim_cycles_per_s:,.0f}")))
        _print_rows(header, rows)
    if report.networks:
        header = ("network", "outputs", "vs reference", "programs", "RTL acc mismatches",
                  "model cycles", "RTL cycles")
        rows = [(n.network, str(n.output_elements), f"{n.output_mismatches} mismatches",
                 str(n.programs), _not_run(n.rtl_mismatches), str(n.model_cycles),
                 _not_run(n.rtl_cycles))
                for n in report.networks]
        _print_rows(header, rows)
    if report.stopped is not None:
        if report.agrees is False:
            print("DISAGREE among the finished workloads")
        verdict = _stop_message(report)
    elif report.agrees is False:
        verdict = "DISAGREE"
    elif scenario.rtl:
        verdict = "AGREE: every output bit-exact and every cycle count and counter exact"
    else:
        verdict = "model and timing only (RTL not run)"
    print(f"{verdict} ({report.wall_s:.1f} s)")
    return code


def _cmd_infer(args: argparse.Namespace) -> int:
    from qsim.nn.infer import infer_command

    from qsim.quant.isa import ISA_NAMES

    if args.isa not in ISA_NAMES:
        raise ConfigError(f"--isa must be one of {', '.join(ISA_NAMES)}, not {args.isa!r}")
    return infer_command(args.model, args.inputs, args.output, semantics=args.semantics,
                         keep_intermediates=args.intermediates, calibration=args.calibration,
                         weight_bits=args.weight_bits, isa=args.isa)


def _cmd_report(args: argparse.Namespace) -> int:
    from qsim.nn.report import accuracy_report, figure_path, format_report, plot_report, save_figure
    from qsim.quant.requant import Semantics

    semantics = Semantics.parse(args.semantics).value  # an unknown name: one error, before any work
    if args.figure is not None:
        from qsim.io import check_output

        check_output(figure_path(args.figure)[0])  # before the minutes of work, not after
    report = accuracy_report(args.networks, semantics=semantics, budget_bits=args.budget_bits)
    print(format_report(report))
    if args.figure is not None:
        path = save_figure(plot_report(report), args.figure)
        print(f"figure saved to {path}")
    return EXIT_OK


def _cmd_sweep(args: argparse.Namespace) -> int:
    from qsim.sweep import format_summary, load_sweep, run_sweep

    sweep = load_sweep(args.sweep)
    summary = run_sweep(sweep, args.out, workers=args.workers, dask=args.dask,
                        progress=sys.stderr.isatty(), plots=not args.no_plots)
    print(json_text(summary) if args.json else "\n".join(format_summary(summary)))
    return EXIT_OK


def _cmd_synth(args: argparse.Namespace) -> int:
    from qsim.synth import run_command

    return run_command(args, _config_from(args))


def _cmd_presets(args: argparse.Namespace) -> int:
    if args.json:
        print(json_text({name: cfg.to_dict() for name, cfg in PRESETS.items()}))
    else:
        for name, cfg in PRESETS.items():
            print(f"{name:<14} {cfg.describe()}")
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from qsim.bench import bench_cosim, bench_utilization

    results = []
    if args.which in ("infer", "all"):
        from qsim.nn.bench_infer import bench_ort

        results.append(bench_ort())  # batch 1 and 256, both engines on one thread
    if args.which in ("quant", "all"):
        from qsim.quant.bench import bench_int8_gemm

        results.append({"benchmark": "quant", **bench_int8_gemm(repeats=25)})
    if args.which in ("cosim", "all"):
        results.append(bench_cosim(rows=args.rows, cols=args.cols))
    if args.which in ("utilization", "all"):
        results.append(bench_utilization())
    if args.which in ("estimate", "all"):
        from qsim.bench import bench_estimate

        results.append(bench_estimate())
    if args.json:
        print(json_text(results))
    else:
        for r in results:
            print(f"== {r['benchmark']} ==")
            if r["benchmark"] == "estimate":
                from qsim.bench import format_bench_estimate

                print("\n".join(format_bench_estimate(r)))
            elif r["benchmark"] == "infer":
                from qsim.nn.bench_infer import report_lines

                print("\n".join(report_lines(r)))
            elif r["benchmark"] == "quant":
                _print_table([
                    ("int8 GEMM", f"{r['size']}^3, median of {r['repeats']} interleaved runs, exact: {r['exact']}"),
                    ("qsim matmul_integer", f"{r['matmul_integer_s'] * 1e3:.2f} ms ({r['gmacs']:.1f} GMAC/s)"),
                    ("qsim qlinear_matmul", f"{r['qlinear_matmul_s'] * 1e3:.2f} ms (with requantization)"),
                    ("numpy float32 matmul", f"{r['float32_s'] * 1e3:.2f} ms"),
                    ("ratio to float32", f"{r['ratio']:.2f} (qlinear_matmul {r['qlinear_ratio']:.2f})"),
                    ("target", f">= {r['target']}: {'met' if r['meets_target'] else 'NOT met'}"),
                ])
            elif r["benchmark"] == "cosim":
                _print_table([
                    ("array, GEMM", f"{r['array']}, {'x'.join(map(str, r['gemm']))}"),
                    ("cycles (RTL = model)", f"{r['cycles']:,} = {r['model_cycles']:,}"),
                    ("elements, mismatches", f"{r['elements']:,}, {r['mismatches']}"),
                    ("cocotb + Verilator", f"{r['cocotb_sim_cycles_per_s']:,} cycles/s"),
                    ("plain Verilator C++ loop", f"{r['native_sim_cycles_per_s']:,} cycles/s"),
                    ("ratio cocotb / native", r["ratio_cocotb_to_native"]),
                    ("build seconds (this run)", f"cocotb {r['cocotb_build_s']}, native {r['native_build_s']}"
                     if "cocotb_build_s" in r else "not measured"),
                    ("target", f">= {r['target_cycles_per_s']:,} cycles/s over >= 1M cycles: "
                               f"{'met' if r['meets_target'] else 'NOT met'}"),
                ])
            else:
                for row in r["results"]:
                    _print_table([(f"{row['array']} {row['dataflow']} {row['precision']} "
                                    f"{'x'.join(map(str, row['gemm']))}",
                                   f"{row['rtl_cycles']:,} RTL cycles (model {row['model_cycles']:,}), "
                                   f"utilization {row['utilization']:.2%}")])
                ratios = ", ".join(f"{a} {v:.2f}x" for a, v in r["int4_over_int8_macs_per_cycle"].items())
                print(f"int4 MACs per cycle over int8 (RTL cycles): {ratios}")
                print(f"targets (utilization >= 95% everywhere, int4 >= 1.9x int8): "
                      f"{'met' if r['meets_target'] else 'NOT met'} ({r['reference']})")
    return EXIT_OK if all(r["meets_target"] for r in results) else EXIT_DISAGREE


def build_parser() -> argparse.ArgumentParser:
    from qsim.quant.isa import ISA_NAMES

    parser = _Parser(
        prog="qsim", description="Bit-exact and cycle-exact models of quantized-NN systolic "
                                 "accelerators, checked against their RTL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a scenario file end to end (model, timing, RTL)")
    p.add_argument("scenario", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-rtl", action="store_true", help="skip the RTL co-simulation")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop after this wall-clock time, keeping the finished workloads "
                        "(exit 130; default: the scenario's time_limit, else none)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr: workload i/N, layer, ETA (default: a live line "
                        "when stderr is a terminal)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("cosim", help="run one GEMM (random or given operands) on the model and "
                                     "the RTL and compare")
    _add_config_options(p)
    _add_gemm_options(p, inputs=True)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeout-cycles", type=int, metavar="N",
                   help="give up on a program after N cycles (default: twice its predicted "
                        "count + 1000)")
    p.add_argument("--waves", type=Path, metavar="DIR", help="write a VCD waveform into DIR")
    p.add_argument("--native", action="store_true",
                   help="use the plain Verilator C++ loop instead of cocotb")
    p.set_defaults(func=_cmd_cosim)

    p = sub.add_parser("estimate", help="cycles of a GEMM or a whole network from the timing model")
    _add_config_options(p)
    _add_gemm_options(p)
    p.add_argument("--network", metavar="NAME",
                   help="estimate a whole network instead (resnet18, resnet50, mobilenet_v2, "
                        "bert_base_block)")
    p.add_argument("--onnx", type=Path, metavar="MODEL.onnx",
                   help="estimate an ONNX model instead (float or quantized)")
    p.add_argument("--topology", metavar="FILE.csv",
                   help="estimate a SCALE-Sim topology file instead (docs/scalesim.md)")
    p.add_argument("--gemm", action="store_true",
                   help="with --topology: the file is in SCALE-Sim's Layer, M, N, K format")
    p.add_argument("--scalesim-cfg", type=Path, metavar="FILE.cfg",
                   help="take rows, cols, dataflow and memory sizes from a SCALE-Sim .cfg "
                        "(flags override it)")
    p.add_argument("--batch", type=int, default=1,
                   help="batch size of --network, --onnx or --topology (default 1)")
    p.add_argument("--layers", action="store_true", help="with a network: one line per layer")
    p.add_argument("--tech", type=Path, metavar="FILE.toml",
                   help="technology table overriding the default 45 nm energies "
                        "(docs/estimate.md); implies --energy")
    p.add_argument("--energy", action="store_true",
                   help="also print energy, pJ/MAC, TOPS/W and area (--json always has them)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_estimate)

    p = sub.add_parser("rtl", help="write the accelerator's Verilog")
    _add_config_options(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="output file ('-' for stdout)")
    p.add_argument("--lint", action="store_true", help="also run verilator --lint-only -Wall")
    p.add_argument("--pe", choices=("generic", "ecp5"), default="generic",
                   help="PE module (default generic; ecp5: the product register inside the ECP5 "
                        "MULT18X18D, docs/synth.md)")
    p.set_defaults(func=_cmd_rtl)

    from qsim.synth import DEFAULT_FREQ_MHZ, target_name

    p = sub.add_parser("synth", help="FPGA resources and post-route Fmax (Yosys and nextpnr from "
                                     "PyPI; docs/synth.md)")
    _add_config_options(p)
    p.add_argument("--target", type=target_name, default="ecp5", metavar="{ecp5,ice40,gowin}",
                   help="FPGA family (default ecp5)")
    p.add_argument("--device", help="part (defaults: ecp5 LFE5U-85F-6BG381C, ice40 "
                                     "iCE40UP5K-SG48, gowin GW2A-LV18PG256C8/I7)")
    p.add_argument("--freq", type=float, default=DEFAULT_FREQ_MHZ, metavar="MHZ",
                   help=f"target frequency for nextpnr (default {DEFAULT_FREQ_MHZ:g})")
    p.add_argument("--pe", choices=("generic", "ecp5"), default=None,
                   help="PE module: ecp5 keeps the product register in the ECP5 multiplier block "
                        "(default on target ecp5 for int8 weight-stationary), generic otherwise")
    p.add_argument("--no-cache", action="store_true", help="run the tools even if the result is cached")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("infer", help="integer-only inference of an ONNX model (float or quantized) "
                                      "or an int8 TFLite model")
    p.add_argument("model", type=Path, help="ONNX model, or TFLite model (.tflite)")
    p.add_argument("--inputs", type=Path, required=True, metavar="X.npz",
                   help="inputs keyed by the graph's input names (.npy for a single-input model)")
    p.add_argument("--output", type=Path, required=True, metavar="Y.npz",
                   help="outputs keyed by the graph's output names (written only on success)")
    p.add_argument("--semantics", default=None,
                   help="requantization semantics: onnxruntime (default for ONNX), onnx, litert "
                        "(default for TFLite), litert-reference, litert-optimized, "
                        "tflite-single-rounding, pytorch-fbgemm, fixed-point (tflite is an alias "
                        "of litert-reference)")
    p.add_argument("--intermediates", action="store_true",
                   help="also store every intermediate tensor in the output file")
    p.add_argument("--calibration", type=Path, metavar="CAL.npz",
                   help="quantize a float model first (qsim PTQ), calibrated on these inputs")
    p.add_argument("--weight-bits", type=int, default=8, choices=(8, 4, 2),
                   help="weight bits of every layer for --calibration (default 8)")
    p.add_argument("--isa", default="auto", metavar="{" + ",".join(ISA_NAMES) + "}",
                   help="x86 instruction path of the engine the semantics names (onnxruntime, "
                        "pytorch-fbgemm): auto = this CPU")
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser("report", help="accuracy of the digits networks: float, int8, int4, mixed")
    p.add_argument("--networks", nargs="+", default=["mlp", "cnn"], choices=("mlp", "cnn"))
    p.add_argument("--semantics", default="onnxruntime",
                   help="requantization semantics (default onnxruntime): onnx, onnxruntime, litert, "
                        "litert-reference, litert-optimized, tflite-single-rounding, pytorch-fbgemm, "
                        "fixed-point (tflite is an alias of litert-reference)")
    p.add_argument("--budget-bits", type=float, default=5.0,
                   help="mixed-precision budget in bits per weight on average (default 5)")
    p.add_argument("--figure", type=Path, metavar="FILE",
                   help="save the figure to this file (format from the extension; none: .png "
                        "is appended)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("sweep", help="evaluate a design space over one workload (docs/estimate.md)")
    p.add_argument("sweep", type=Path, metavar="SWEEP.toml")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="results.csv, results.json, journal.jsonl and plots (resumes a sweep "
                        "already there)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local worker processes (default: the CPU count)")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run the points on a dask.distributed scheduler (tcp://host:8786)")
    p.add_argument("--no-plots", action="store_true", help="write no plots")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("presets", help="list the named accelerator configurations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("bench", help="speed and utilization benchmarks (prints figures and ratios)")
    p.add_argument("which", choices=("infer", "quant", "cosim", "utilization", "estimate", "all"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--rows", type=int, default=32, help="cosim: array rows (default 32)")
    p.add_argument("--cols", type=int, default=32, help="cosim: array columns (default 32)")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except QsimError as exc:
        print(f"qsim: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("qsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`qsim ... | head`): not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
