"""Plots of estimates and sweeps (matplotlib, Agg backend, small PNGs).

* :func:`layer_plot`: per-layer utilization and where every cycle goes (useful MACs, padding
  of partly used tiles, pipeline fill and waits, DMA stalls once the DRAM model supplies them);
* :func:`roofline_plot`: every layer at its arithmetic intensity (2 x MACs per off-chip byte:
  the DRAM model's bytes, else the compulsory traffic) against the roof of the configured
  clock and DRAM bandwidth;
* :func:`energy_plot`: energy per component, whole network and per layer;
* :func:`pareto_plot`: a sweep's points, latency against energy, coloured by area (by on-chip
  memory when the technology table has no area figures), the Pareto front drawn.

``python -m qsim.plots DIR`` writes the figures of docs/estimate.md into ``DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["layer_plot", "roofline_plot", "energy_plot", "pareto_plot", "pareto_front",
           "network_plots", "sweep_plots"]

_DPI = 80


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    _plt().close(fig)
    return path


def cycle_breakdown(est) -> dict[str, list[int]]:
    """Per layer: cycles of useful MACs, of padding (issued rows' idle PEs), of fill and
    waits (the rest of the array's time) and of DMA stalls."""
    mpc = est.config.macs_per_cycle
    out: dict[str, list[int]] = {"useful": [], "padding": [], "fill and waits": [], "DMA stalls": []}
    for l in est.layers:
        useful = l.gemm.macs / mpc
        issued = l.counts.array_macs / mpc
        out["useful"].append(useful)
        out["padding"].append(max(issued - useful, 0))
        out["fill and waits"].append(max(l.cycles - l.dma_stall_cycles - issued, 0))
        out["DMA stalls"].append(l.dma_stall_cycles)
    return out


def layer_plot(est, path: str | Path, title: str | None = None) -> Path:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5.2), sharex=True)
    x = range(len(est.layers))
    ax1.bar(x, [100 * l.utilization for l in est.layers], color="#4878a8", width=0.8)
    ax1.set_ylabel("utilization %")
    ax1.set_ylim(0, 100)
    ax1.set_title(title or f"{est.network} on {est.config.rows}x{est.config.cols} "
                           f"{est.config.dataflow.short} {est.config.precision}: per layer")
    bottom = [0.0] * len(est.layers)
    colors = {"useful": "#4878a8", "padding": "#e0a040", "fill and waits": "#b0b0b0",
              "DMA stalls": "#c04040"}
    for name, values in cycle_breakdown(est).items():
        if not any(values):
            continue
        ax2.bar(x, [v / 1e6 for v in values], bottom=[b / 1e6 for b in bottom], width=0.8,
                label=name, color=colors[name])
        bottom = [b + v for b, v in zip(bottom, values)]
    ax2.set_ylabel("Mcycles")
    ax2.set_xlabel("GEMM layer (network order)")
    ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def roofline_plot(est, path: str | Path, dram_gbps: float | None = None) -> Path:
    """Attainable ops/s = min(peak, bandwidth x intensity); each layer at its achieved ops/s
    (:meth:`qsim.nn.estimate.NetworkEstimate.roofline`). The bandwidth is the estimate's
    (the bus's with a bus interface) unless ``dram_gbps`` is given."""
    plt = _plt()
    gbps = est.dram_bytes_per_s / 1e9 if dram_gbps is None else dram_gbps
    peak = est.peak_ops_per_s
    placed = [est.roofline(l) for l in est.layers]
    xs = [l.ops_per_byte for l in est.layers]
    ys = [p["achieved_ops_per_s"] for p in placed]
    lo, hi = min(xs) / 2, max(xs) * 2
    ridge = peak / (gbps * 1e9)
    grid = sorted({lo, hi, min(max(ridge, lo), hi)})
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(grid, [min(peak, gbps * 1e9 * g) / 1e9 for g in grid], color="black", lw=1.5,
            label=f"roof: {peak / 1e9:g} GOP/s peak, {gbps:g} GB/s")
    ax.scatter(xs, [y / 1e9 for y in ys], s=14, color="#4878a8", zorder=3, label="layers")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ops per off-chip byte" + ("" if est.dram_bytes is not None
                                             else " (compulsory traffic)"))
    ax.set_ylabel("GOP/s")
    ax.set_title(f"{est.network}: roofline at {est.config.clock_mhz:g} MHz")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def energy_plot(est, path: str | Path) -> Path:
    from qsim.energy import COMPONENTS

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1, 3]})
    total = est.energy().components
    colors = dict(zip(COMPONENTS, ["#4878a8", "#6aa84f", "#e0a040", "#c04040", "#8e6bb8", "#606060"]))
    names = [c for c in COMPONENTS if total[c]]
    ax1.bar(range(len(names)), [total[c] / 1e6 for c in names], color=[colors[c] for c in names])
    ax1.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=30, fontsize=8)
    ax1.set_ylabel("uJ per batch")
    f = est.energy_fields()
    ax1.set_title(f"{f['pj_per_mac']:.2f} pJ/MAC, {f['tops_per_w']:.2f} TOPS/W", fontsize=9)
    bottom = [0.0] * len(est.layers)
    per_layer = [l.energy(est.config, est.tech).components for l in est.layers]
    for c in names:
        values = [e[c] / 1e6 for e in per_layer]
        ax2.bar(range(len(values)), values, bottom=bottom, color=colors[c], width=0.8,
                label=c.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax2.set_xlabel("GEMM layer (network order)")
    ax2.set_ylabel("uJ")
    ax2.set_title(f"{est.network}: energy per layer ({est.tech.name})", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def pareto_front(rows: Sequence[dict[str, Any]], x: str = "latency_s", y: str = "energy_pj"
                 ) -> list[dict[str, Any]]:
    """The points no other point beats on both ``x`` and ``y`` (lower is better), by ``x``."""
    front: list[dict[str, Any]] = []
    best_y = float("inf")
    for r in sorted(rows, key=lambda r: (r[x], r[y])):
        if r[y] < best_y:
            front.append(r)
            best_y = r[y]
    return front


def pareto_plot(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    by_area = all(r.get("area_mm2") is not None for r in rows)
    colour = [r["area_mm2"] if by_area else r["onchip_kib"] for r in rows]
    sc = ax.scatter([r["latency_s"] * 1e3 for r in rows], [r["energy_pj"] / 1e6 for r in rows],
                    c=colour, s=12, cmap="viridis")
    front = pareto_front(rows)
    ax.plot([r["latency_s"] * 1e3 for r in front], [r["energy_pj"] / 1e6 for r in front],
            color="#c04040", lw=1.2, label=f"Pareto front ({len(front)} points)")
    fig.colorbar(sc, ax=ax, label="area mm2" if by_area else
                 "on-chip SRAM KiB (no area figures in the table)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency ms")
    ax.set_ylabel("energy uJ")
    ax.set_title(title or "sweep: latency against energy", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def network_plots(est, out: str | Path, prefix: str) -> list[Path]:
    out = Path(out)
    return [layer_plot(est, out / f"{prefix}-layers.png"),
            roofline_plot(est, out / f"{prefix}-roofline.png"),
            energy_plot(est, out / f"{prefix}-energy.png")]


def sweep_plots(sweep, rows: Sequence[dict[str, Any]], out: str | Path) -> list[Path]:
    """``pareto.png``, and per-layer plots of the fastest, the most frugal and the best
    energy-delay product points (re-estimated: milliseconds each)."""
    from qsim.nn.estimate import estimate_gemms
    from qsim.sweep import point_config

    out = Path(out)
    paths = [pareto_plot(rows, out / "pareto.png", f"{sweep.workload}: {len(rows)} points")]
    best = {"fastest": min(rows, key=lambda r: (r["latency_s"], r["index"])),
            "lowest-energy": min(rows, key=lambda r: (r["energy_pj"], r["index"])),
            "best-edp": min(rows, key=lambda r: (r["energy_pj"] * r["latency_s"], r["index"]))}
    for name, row in best.items():
        cfg = point_config(sweep.base, row["params"])
        est = estimate_gemms(sweep.workload, sweep.gemms, cfg, sweep.batch)
        label = ", ".join(f"{k}={v}" for k, v in row["params"].items())
        paths.append(layer_plot(est, out / f"best-{name}-layers.png",
                                f"{name} point #{row['index']}: {label}"))
    return paths


def _docs_figures(out: Path) -> list[Path]:
    from qsim.config import AcceleratorConfig
    from qsim.nn.estimate import estimate_network
    from qsim.nn.zoo import mobilenet_v2, resnet50

    cfg = AcceleratorConfig(rows=16, cols=16)
    paths = []
    for make, prefix in ((resnet50, "resnet50"), (mobilenet_v2, "mobilenet_v2")):
        paths += network_plots(estimate_network(make(), cfg), out, prefix)
    return paths


if __name__ == "__main__":
    import sys

    for p in _docs_figures(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img")):
        print(f"{p} ({p.stat().st_size // 1024} KiB)")
