"""Design-space sweeps: the cross product of accelerator parameters over one workload.

A sweep file (TOML) has a ``[workload]`` table, exactly one of ``network = "resnet50"``,
``topology = "file.csv"`` (with ``gemm = true`` for the ``Layer, M, N, K`` format) or
``onnx = "model.onnx"``, and optionally ``batch``; optional ``[base]`` with fixed parameter
values; and a ``[space]`` table whose keys are parameters with lists of values written as on
the command line (``dataflow = ["ws", "os"]``, ``precision = ["int8", "int4"]``). Parameters
are the fields of :class:`qsim.config.AcceleratorConfig` (``rows``, ``cols``, ``clock_mhz``,
``act_mem_words``, ..., and the DRAM fields ``dram_width``/``dram_latency`` when the config has
them) and the CLI names ``precision``, ``act_words``, ``weight_words``, ``acc_words``,
``cmd_words``, ``param_words``. Paths are relative to the sweep file.

Every point is one call of :func:`qsim.nn.estimate.estimate_gemms` (the timing model, and the
energy of :mod:`qsim.energy`). Points run in a local process pool (``workers``) or on a
``dask.distributed`` cluster; each finished point is appended to ``DIR/journal.jsonl`` keyed by
the hash of its parameters, so an interrupted sweep resumes without recomputing finished
points. ``DIR/results.csv`` and ``DIR/results.json`` are rewritten from the journal (sorted by
point index, so they are identical whatever ran the points) and say whether they are complete:
the CSV's first line is ``# complete: true|false (N of M points)`` and every row has a
``complete`` column; the JSON has ``complete``, ``points`` and ``finished``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from qsim.config import PRECISIONS, AcceleratorConfig
from qsim.errors import ConfigError, QsimError

__all__ = ["Sweep", "load_sweep", "parse_sweep", "run_sweep", "evaluate_point", "PARAMETERS",
           "RESULT_COLUMNS", "DASK_TIMEOUT_S"]

#: CLI spellings of config fields accepted as sweep keys.
ALIASES = {"act_words": "act_mem_words", "weight_words": "weight_mem_words",
           "acc_words": "acc_mem_words", "cmd_words": "cmd_mem_words",
           "param_words": "param_mem_words"}
_CONFIG_FIELDS = [f.name for f in fields(AcceleratorConfig)
                  if f.name not in ("input_format", "weight_format")]
#: Every valid key of ``[space]`` and ``[base]``.
PARAMETERS = tuple(_CONFIG_FIELDS + ["precision"] + list(ALIASES))

#: Columns of results.csv after the parameters.
RESULT_COLUMNS = ("cycles", "latency_s", "energy_pj", "pj_per_mac", "tops_per_w", "area_mm2",
                  "utilization", "dram_bytes")

#: Seconds to wait for a Dask scheduler before giving up.
DASK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: the workload's GEMMs, the fixed and swept parameters."""

    label: str
    workload: str
    gemms: tuple  # ((layer, kind, GemmShape), ...) at the workload's batch
    batch: int
    base: dict[str, Any]
    space: dict[str, list]

    @property
    def keys(self) -> list[str]:
        return list(self.space)

    def points(self) -> list[dict[str, Any]]:
        """The cross product, in the order of ``[space]``'s keys and values."""
        combos = itertools.product(*self.space.values()) if self.space else [()]
        return [dict(zip(self.space, values)) for values in combos]


def _canonical(key: str) -> str:
    return ALIASES.get(key, key)


def point_config(base: dict[str, Any], point: dict[str, Any]) -> AcceleratorConfig:
    """The accelerator of one point: the defaults, then ``[base]``, then the point."""
    changes: dict[str, Any] = {}
    for key, value in {**base, **point}.items():
        key = _canonical(key)
        if key == "precision":
            if value not in PRECISIONS:
                raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {value!r}")
            changes["input_format"], changes["weight_format"] = PRECISIONS[value]
        elif key == "dataflow" and value not in ("ws", "os", "weight_stationary",
                                                 "output_stationary"):
            raise ConfigError(f"dataflow must be ws (weight-stationary) or os (output-stationary), "
                              f"not {value!r}")
        else:
            changes[key] = value
    return AcceleratorConfig().replace(**changes)


def point_key(point: dict[str, Any]) -> str:
    """16 hex digits identifying a point's parameters (the journal's key)."""
    payload = json.dumps(point, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _check_parameters(table: dict[str, Any], label: str, name: str) -> None:
    for key in table:
        if key not in PARAMETERS:
            raise ConfigError(f"{label}: [{name}] key {key!r} is not a parameter (valid: "
                              f"{', '.join(PARAMETERS)})")


def parse_sweep(data: dict[str, Any], label: str, root: Path = Path(".")) -> Sweep:
    """Check a sweep file's tables (``root``: the directory relative paths start from)."""
    from qsim.nn.estimate import workload_gemms

    unknown = sorted(set(data) - {"workload", "space", "base"})
    if unknown:
        raise ConfigError(f"{label}: unknown table(s) {', '.join(unknown)} "
                          f"(a sweep has [workload], [space] and optionally [base])")
    workload = data.get("workload")
    if not isinstance(workload, dict):
        raise ConfigError(f"{label}: no [workload] table (network, topology or onnx)")
    bad = sorted(set(workload) - {"network", "topology", "gemm", "onnx", "batch"})
    if bad:
        raise ConfigError(f"{label}: [workload] key {bad[0]!r} is not one of network, topology, "
                          f"gemm, onnx, batch")
    resolve = {k: str((root / workload[k]).resolve()) if k in ("topology", "onnx") else workload[k]
               for k in ("network", "topology", "onnx") if k in workload}
    name, gemms = workload_gemms(**resolve, gemm=bool(workload.get("gemm", False)),
                                 batch=workload.get("batch", 1))
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{label}: no [space] table (keys: {', '.join(PARAMETERS)})")
    _check_parameters(space, label, "space")
    for key, values in space.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{label}: [space] {key} must be a non-empty list of values, "
                              f"not {values!r}")
    base = data.get("base", {})
    if not isinstance(base, dict):
        raise ConfigError(f"{label}: [base] must be a table")
    _check_parameters(base, label, "base")
    overlap = sorted(set(base) & set(space))
    if overlap:
        raise ConfigError(f"{label}: {overlap[0]!r} is both in [base] and [space]")
    sweep = Sweep(label, name, tuple(gemms), workload.get("batch", 1), dict(base),
                  {k: list(v) for k, v in space.items()})
    for point in sweep.points():  # every configuration is valid before anything runs
        try:
            point_config(sweep.base, point)
        except ConfigError as exc:
            raise ConfigError(f"{label}: point {point}: {exc}") from None
    return sweep


def load_sweep(path: str | Path) -> Sweep:
    import tomllib

    from qsim.io import read_text

    path = Path(path)
    label = f"sweep {path}"
    try:
        data = tomllib.loads(read_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label} is not valid TOML: {exc}") from None
    return parse_sweep(data, label, path.parent)


def evaluate_point(args: tuple) -> dict[str, Any]:
    """One point: ``(index, key, base, point, workload, gemms, batch)`` -> its result row.

    A module-level function of plain data, so it runs the same in a process pool and on Dask.
    """
    from qsim.nn.estimate import estimate_gemms

    index, key, base, point, workload, gemms, batch = args
    cfg = point_config(base, point)
    est = estimate_gemms(workload, gemms, cfg, batch)
    energy = est.energy_fields()
    return {
        "index": index, "key": key, "params": point,
        "cycles": est.cycles, "latency_s": est.seconds, "energy_pj": energy["energy_pj"],
        "pj_per_mac": energy["pj_per_mac"], "tops_per_w": energy["tops_per_w"],
        "area_mm2": energy["area_mm2"], "utilization": round(est.utilization, 6),
        "dram_bytes": est.dram_bytes,
        "onchip_kib": sum(cfg.memory_bytes.values()) / 1024,
        "energy_breakdown_pj": energy["energy_breakdown_pj"],
    }


def _read_journal(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interruption: that point runs again
            done[row["key"]] = row
    return done


def write_results(out: Path, sweep: Sweep, rows: list[dict], total: int) -> None:
    """results.csv and results.json from finished rows, saying whether the sweep is complete."""
    from qsim.io import json_text, write_output

    rows = sorted(rows, key=lambda r: r["index"])
    complete = len(rows) == total
    text = io.StringIO()
    text.write(f"# complete: {str(complete).lower()} ({len(rows)} of {total} points)\n")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", *sweep.keys, *RESULT_COLUMNS, "complete"])
    for r in rows:
        writer.writerow([r["index"], *(r["params"][k] for k in sweep.keys),
                         *("" if r[c] is None else r[c] for c in RESULT_COLUMNS),
                         str(complete).lower()])
    write_output(out / "results.csv", text.getvalue())
    data = {"sweep": sweep.label, "workload": sweep.workload, "batch": sweep.batch,
            "base": sweep.base, "space": sweep.space, "complete": complete, "points": total,
            "finished": len(rows),
            "results": [{k: v for k, v in r.items() if k != "key"} for r in rows]}
    write_output(out / "results.json", json_text(data) + "\n")


class _Progress:
    """tqdm when it is installed, else a plain line on stderr every few percent."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        self.total, self.done, self.enabled, self.last = total, initial, enabled, -1
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="point", file=sys.stderr,
                            desc="qsim sweep")
        except ImportError:
            self._line()

    def _line(self) -> None:
        pct = 100 * self.done // max(self.total, 1)
        if pct // 5 != self.last // 5 or self.done == self.total:
            self.last = pct
            print(f"qsim sweep: {self.done}/{self.total} points ({pct}%)", file=sys.stderr)

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            self._line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _local_map(tasks: list[tuple], workers: int) -> Iterable[dict]:
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            yield evaluate_point(t)
        return
    import concurrent.futures as cf
    import multiprocessing

    ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        chunk = max(1, min(32, len(tasks) // (workers * 4)))
        yield from pool.map(evaluate_point, tasks, chunksize=chunk)
    finally:  # on an interruption, drop the points not started instead of finishing them
        pool.shutdown(wait=True, cancel_futures=True)


def dask_client(address: Any, timeout: float = DASK_TIMEOUT_S):
    """A ``dask.distributed`` client for ``address`` (a string, or a cluster object such as a
    ``LocalCluster``); an unreachable scheduler is a clear error after ``timeout`` seconds."""
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("--dask needs the distributed package (pip install 'dask[distributed]')") \
            from None
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise QsimError(f"cannot reach the Dask scheduler at {address}: no answer within "
                        f"{timeout:g} s ({type(exc).__name__})") from None


def _dask_map(tasks: list[tuple], address: Any) -> Iterable[dict]:
    from distributed import as_completed

    client = dask_client(address)
    try:
        futures = client.map(evaluate_point, tasks, pure=False)
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()


def run_sweep(sweep: Sweep, out: str | Path, workers: int | None = None, dask: Any = None,
              progress: bool = True, plots: bool = True,
              on_result: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Evaluate every point not yet in ``out``'s journal, then write the results and plots.

    Returns a summary: ``points``, ``computed`` (this run), ``reused`` (from the journal),
    ``complete``, ``wall_s`` and the output paths.
    """
    from qsim.io import check_directory

    out = Path(out)
    check_directory(out, "sweep output")
    out.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    points = sweep.points()
    keyed = [(i, point_key(p), p) for i, p in enumerate(points)]
    journal_path = out / "journal.jsonl"
    done = _read_journal(journal_path)
    wanted = {k for _, k, _ in keyed}
    rows = [dict(done[k], index=i) for i, k, _ in keyed if k in done]
    tasks = [(i, k, sweep.base, p, sweep.workload, sweep.gemms, sweep.batch)
             for i, k, p in keyed if k not in done]
    reused = len(rows)
    t0 = time.perf_counter()
    bar = _Progress(len(points), reused, progress)
    computed = 0
    try:
        results = _dask_map(tasks, dask) if dask is not None else _local_map(tasks, workers)
        with open(journal_path, "a") as journal:
            for row in results:
                journal.write(json.dumps(row) + "\n")
                journal.flush()
                rows.append(row)
                computed += 1
                bar.update()
                if on_result is not None:
                    on_result(row)
    finally:
        bar.close()
        # whatever happened, the results files hold exactly the finished points and say so
        rows = [r for r in rows if r["key"] in wanted]
        write_results(out, sweep, rows, len(points))
    wall = time.perf_counter() - t0
    summary = {"points": len(points), "computed": computed, "reused": reused,
               "complete": len(rows) == len(points), "wall_s": round(wall, 3),
               "results_csv": str(out / "results.csv"), "results_json": str(out / "results.json")}
    if plots and rows:
        from qsim.plots import sweep_plots

        summary["plots"] = [str(p) for p in sweep_plots(sweep, rows, out)]
    return summary


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The lines ``qsim sweep`` prints."""
    lines = [f"points       {summary['points']} ({summary['computed']} computed, "
             f"{summary['reused']} reused from the journal)",
             f"complete     {'yes' if summary['complete'] else 'no'}",
             f"wall time    {summary['wall_s']:.2f} s",
             f"results      {summary['results_csv']}, {summary['results_json']}"]
    if summary.get("plots"):
        lines.append(f"plots        {', '.join(summary['plots'])}")
    return lines
