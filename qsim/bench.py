"""Benchmarks that check qsim's speed and utilization targets and print their figures.

Targets are checked here, side by side in one run, never by timed unit tests:

* ``cosim``: simulated cycles per second of the cocotb co-simulation of a 32 x 32 array on a
  GEMM of more than a million cycles, its ratio to a plain Verilator C++ loop over the same
  Verilog, and the seconds each Verilator build took;
* ``utilization``: useful MACs / (rows x cols x cycles) of the RTL on a 256^3 GEMM.
"""

from __future__ import annotations

from qsim.errors import QsimError

import time
from typing import Any

import numpy as np

from qsim.compile import compile_gemm, gemm_layouts
from qsim.config import AcceleratorConfig

__all__ = ["bench_cosim", "bench_utilization", "gemm_config", "machine", "COSIM_GEMMS"]


def gemm_config(rows: int, cols: int, m: int, k: int, n: int, **changes) -> AcceleratorConfig:
    """An accelerator (``changes`` applied: precision, dataflow, ...) whose memories hold an
    M x K x N GEMM in one program (depths rounded up to 2**x)."""
    base = AcceleratorConfig(rows=rows, cols=cols, **changes)
    a, b, c = gemm_layouts(base, m, k, n)

    def fit(words: int, default: int) -> int:
        return max(default, 1 << max(1, (words - 1).bit_length()))

    return base.replace(
        act_mem_words=fit(a.words, base.act_mem_words),
        weight_mem_words=fit(b.words, base.weight_mem_words),
        acc_mem_words=fit(c.words, base.acc_mem_words),
        cmd_mem_words=fit(a.lane_tiles * c.lane_tiles + 1, base.cmd_mem_words),
    )


def _operands(m: int, k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, and the load average (1 min)."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"cpu": model, "cores": os.cpu_count(), "load_avg_1min": load}


#: GEMM of ``qsim bench cosim`` per array size: about 1.05 M cycles on each.
COSIM_GEMMS = {8: (1024, 256, 256), 32: (2048, 512, 1024)}


def bench_cosim(m: int | None = None, k: int | None = None, n: int | None = None,
                rows: int = 32, cols: int = 32, seed: int = 1) -> dict[str, Any]:
    """Co-simulation speed against the plain Verilator loop on the same GEMM and RTL.

    The default is the 32 x 32 array on a 2048 x 512 x 1024 GEMM (1,048,643 cycles); with
    ``rows=cols=8`` the default GEMM is 1024 x 256 x 256 (1,048,595 cycles). Build seconds are
    those of this run (0.0 when the build came from the cache), and ``machine`` names the CPU
    and its load before and after, since the figures are examples of one machine.
    """
    from qsim.cosim.native import run_native
    from qsim.cosim.runner import compare, run_programs

    if m is None or k is None or n is None:
        dm, dk, dn = COSIM_GEMMS.get(max(rows, cols), COSIM_GEMMS[32])
        m, k, n = m or dm, k or dk, n or dn
    before = machine()
    cfg = gemm_config(rows, cols, m, k, n)
    program = compile_gemm(cfg, *_operands(m, k, n, seed), name=f"gemm{m}x{k}x{n}")
    t0 = time.perf_counter()
    cocotb_result = run_programs([program])[0]
    cocotb_wall = time.perf_counter() - t0
    native_result = run_native(program)
    cocotb_report = compare(program, cocotb_result)
    native_report = compare(program, native_result)
    if cocotb_report.sim_cycles_per_s is None or native_report.sim_cycles_per_s is None:
        raise QsimError("a simulator reported no simulation time: no speed was measured")
    return {
        "benchmark": "cosim",
        "array": f"{rows}x{cols}",
        "gemm": [m, k, n],
        "cycles": cocotb_report.rtl_cycles,
        "model_cycles": cocotb_report.model_cycles,
        "elements": cocotb_report.elements,
        "mismatches": cocotb_report.mismatches + cocotb_report.acc_mismatches,
        "agrees": cocotb_report.agrees and native_report.agrees,
        "cocotb_sim_cycles_per_s": round(cocotb_report.sim_cycles_per_s),
        "native_sim_cycles_per_s": round(native_report.sim_cycles_per_s),
        "ratio_cocotb_to_native": round(cocotb_report.sim_cycles_per_s / native_report.sim_cycles_per_s, 3),
        "cocotb_wall_s": round(cocotb_wall, 2),
        "cocotb_load_s": round(cocotb_result.extra["load_s"], 3),
        "cocotb_build_s": round(cocotb_result.extra["build_s"], 1),
        "native_build_s": round(native_result.extra["build_s"], 1),
        "machine": {**before, "load_avg_1min_after": machine()["load_avg_1min"]},
        "target_cycles_per_s": 200_000,
        "meets_target": cocotb_report.sim_cycles_per_s >= 200_000 and cocotb_report.rtl_cycles >= 1_000_000,
    }


def bench_utilization(arrays: tuple[tuple[int, int], ...] = ((4, 4), (8, 8), (3, 5), (16, 16)),
                      precisions: tuple[str, ...] = ("int8", "int4"),
                      dataflows: tuple[str, ...] = ("ws", "os"), seed: int = 2) -> dict[str, Any]:
    """Sustained utilization measured on the RTL, and INT4's MACs per cycle over INT8's.

    Per array, the GEMM is ``S x S x S`` with ``S = 8 x max(rows, cols) x 2``: every dimension
    at least 8 times the array's (the reduction 8 times the int4 K tile ``2R`` too), the same
    GEMM at both precisions and in both dataflows. Utilization is useful MACs / (MACs per
    cycle x RTL cycles); the int4/int8 ratio is that of the measured cycles (same MACs).
    Targets: utilization >= 95 % everywhere, int4 >= 1.9 x int8 on every array and dataflow.
    """
    from qsim.cosim.runner import compare, run_programs
    from qsim.config import PRECISIONS

    rows_out = []
    ratios = {}
    for (rows, cols), dataflow in ((a, d) for a in arrays for d in dataflows):
        size = 16 * max(rows, cols)
        cycles = {}
        for precision in precisions:
            fmt = PRECISIONS[precision][0]
            cfg = gemm_config(rows, cols, size, size, size, input_format=fmt, weight_format=fmt,
                              dataflow=dataflow)
            rng = np.random.default_rng(seed)
            a = rng.integers(fmt.min, fmt.max + 1, (size, size))
            b = rng.integers(fmt.min, fmt.max + 1, (size, size))
            program = compile_gemm(cfg, a, b, name=f"gemm{size}^3-{precision}")
            report = compare(program, run_programs([program])[0])
            cycles[precision] = report.rtl_cycles
            rows_out.append({
                "array": f"{rows}x{cols}",
                "dataflow": cfg.dataflow.short,
                "precision": precision,
                "gemm": [size] * 3,
                "rtl_cycles": report.rtl_cycles,
                "model_cycles": report.model_cycles,
                "agrees": report.agrees,
                "useful_macs": size ** 3,
                "utilization": round(size ** 3 / (cfg.macs_per_cycle * report.rtl_cycles), 6),
            })
        if "int8" in cycles and "int4" in cycles:
            ratios[f"{rows}x{cols} {cfg.dataflow.short}"] = round(cycles["int8"] / cycles["int4"], 4)
    meets = (all(r["utilization"] >= 0.95 and r["agrees"] for r in rows_out)
             and all(v >= 1.9 for v in ratios.values()))
    return {"benchmark": "utilization", "results": rows_out,
            "int4_over_int8_macs_per_cycle": ratios, "target": 0.95, "target_int4_ratio": 1.9,
            "meets_target": meets, "machine": machine(),
            "reference": "SCALE-Sim's weight-stationary model: 84.8% for 256^3 on 16x16"}


def bench_estimate(points: int = 1000, workers: int = 2, repeats: int = 5) -> dict[str, Any]:
    """Speed of network estimates with energy, and of a sweep, against the targets:

    * ResNet-50 at batch 1 on the default 8 x 8 array, cycles and energy, in <= 0.5 s (the
      median of ``repeats`` runs in a fresh process state each, the first run included
      separately as ``cold_s``);
    * the same memory-aware (:data:`MEMORY_AWARE`: operands from DRAM over a 16-byte bus,
      :data:`BENCH_DRAM_LATENCY` cycles of latency) on the 16 x 16 array, in <= 0.5 s, and on
      the default array (no target); their first run starts with the DMA transfer costs not
      memoised (``qsim.dma``'s caches cleared);
    * a ``points``-point sweep over ResNet-50 (rows x cols x dataflow x precision x clock) on
      ``workers`` local processes, in <= 120 s, timed from the sweep file to results.csv.
    """
    import statistics
    import tempfile

    from qsim import dma
    from qsim.sweep import parse_sweep, run_sweep

    before = machine()
    times, est, energy = _time_estimate(AcceleratorConfig(), repeats)
    memory_aware = {}
    for key, config in MEMORY_AWARE.items():
        dma.load_cycles.cache_clear()
        dma.store_cycles.cache_clear()
        aware_times, aware, aware_energy = _time_estimate(config, repeats)
        memory_aware[key] = {
            "config": config.describe(), "estimate_s": round(statistics.median(aware_times), 4),
            "cold_s": round(aware_times[0], 4), "cycles": aware.cycles,
            "dram_bytes": aware.dram_bytes, "energy_pj": round(aware_energy, 1),
            "target_s": 0.5 if key == "16x16" else None,
        }
    dims = [4, 6, 8, 12, 16, 24, 32, 48, 64]
    clocks = [100.0, 200.0, 400.0, 800.0]
    space = {"rows": dims, "cols": dims, "dataflow": ["ws", "os"], "precision": ["int8", "int4"],
             "clock_mhz": clocks}
    full = len(dims) ** 2 * 2 * 2 * len(clocks)  # 1296
    space["clock_mhz"] = clocks[:max(1, min(len(clocks), -(-points * len(clocks) // full)))]
    sweep = parse_sweep({"workload": {"network": "resnet50"}, "space": space}, "bench sweep")
    n = len(sweep.points())
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = run_sweep(sweep, out, workers=workers, progress=False, plots=False)
        sweep_s = time.perf_counter() - t0
    est_s = statistics.median(times)
    return {
        "benchmark": "estimate",
        "resnet50_estimate_s": round(est_s, 4), "resnet50_cold_s": round(times[0], 4),
        "resnet50_cycles": est.cycles, "resnet50_energy_pj": round(energy, 1),
        "sweep_points": n, "sweep_workers": workers, "sweep_s": round(sweep_s, 2),
        "sweep_points_per_s": round(n / sweep_s, 1), "sweep_complete": summary["complete"],
        "memory_aware": memory_aware,
        "target_estimate_s": 0.5, "target_sweep_s": 120.0,
        "machine": {**before, "load_avg_1min_after": machine()["load_avg_1min"]},
        "meets_target": (est_s <= 0.5 and sweep_s <= 120.0 and n >= 1000 and summary["complete"]
                         and all(r["estimate_s"] <= r["target_s"] for r in memory_aware.values()
                                 if r["target_s"] is not None)),
    }


#: DRAM latency of the memory-aware benchmark configurations (cycles).
BENCH_DRAM_LATENCY = 40

#: Configurations of the memory-aware ResNet-50 estimates of ``qsim bench estimate``.
MEMORY_AWARE = {
    "16x16": AcceleratorConfig(rows=16, cols=16, dram_width=16, dram_latency=BENCH_DRAM_LATENCY),
    "default": AcceleratorConfig(dram_width=16, dram_latency=BENCH_DRAM_LATENCY),
}


def _time_estimate(config: AcceleratorConfig, repeats: int):
    """Seconds of ``repeats`` ResNet-50 estimates with energy (a new graph each time), the
    last estimate and its energy."""
    from qsim.nn.estimate import estimate_network
    from qsim.nn.zoo import resnet50

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        est = estimate_network(resnet50(), config)
        energy = est.energy_pj
        times.append(time.perf_counter() - t0)
    return times, est, energy


def format_bench_estimate(r: dict[str, Any]) -> list[str]:
    """The lines ``qsim bench estimate`` prints."""
    return [
        f"ResNet-50 estimate with energy  {r['resnet50_estimate_s'] * 1e3:.1f} ms (median), "
        f"first {r['resnet50_cold_s'] * 1e3:.1f} ms; {r['resnet50_cycles']:,} cycles, "
        f"{r['resnet50_energy_pj'] / 1e6:,.1f} uJ",
        *(f"{'  memory-aware, ' + ('16x16' if key == '16x16' else 'default 8x8'):<31} "
          f"{a['estimate_s'] * 1e3:.1f} ms (median), first {a['cold_s'] * 1e3:.1f} ms; "
          f"{a['cycles']:,} cycles, {a['dram_bytes']:,} DRAM bytes, {a['energy_pj'] / 1e6:,.1f} uJ"
          + ("" if a["target_s"] is None else
             f"; target <= {a['target_s']:g} s: {'met' if a['estimate_s'] <= a['target_s'] else 'NOT met'}")
          for key, a in r.get("memory_aware", {}).items()),
        f"sweep over ResNet-50            {r['sweep_points']:,} points on {r['sweep_workers']} "
        f"workers in {r['sweep_s']:.2f} s ({r['sweep_points_per_s']:,.1f} points/s)",
        f"machine                         {r['machine']['cpu']}, {r['machine']['cores']} cores, "
        f"load {r['machine']['load_avg_1min']}",
        "targets (estimate <= 0.5 s"
        + (", memory-aware 16x16 <= 0.5 s" if "memory_aware" in r else "")
        + f", 1,000-point sweep <= 120 s): {'met' if r['meets_target'] else 'NOT met'}",
    ]
