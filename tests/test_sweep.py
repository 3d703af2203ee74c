"""Sweeps: cross product, identical results on a process pool and on Dask, resumption,
partial results that say so, bad input."""

from __future__ import annotations

import json
import re
import time
import tomllib
from pathlib import Path

import pytest

from qsim.cli import main
from qsim.errors import ConfigError
from qsim.sweep import PARAMETERS, load_sweep, parse_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"workload": {"network": "resnet18"},
         "space": {"rows": [8, 16], "cols": [8, 16], "dataflow": ["ws", "os"],
                   "precision": ["int8", "int4"]}}


def test_cross_product_and_results(tmp_path):
    sweep = parse_sweep(SMALL, "small")
    assert len(sweep.points()) == 16
    summary = run_sweep(sweep, tmp_path, workers=2, progress=False)
    assert summary["complete"] and summary["computed"] == 16
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0] == "# complete: true (16 of 16 points)"
    assert lines[1] == ("index,rows,cols,dataflow,precision,cycles,latency_s,energy_pj,pj_per_mac,"
                        "tops_per_w,area_mm2,utilization,dram_bytes,complete")
    assert len(lines) == 18 and all(line.endswith(",true") for line in lines[2:])
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["complete"] and data["finished"] == 16 and data["results"][0]["dram_bytes"] is None
    assert {Path(p).name for p in summary["plots"]} == {
        "pareto.png", "best-fastest-layers.png", "best-lowest-energy-layers.png",
        "best-best-edp-layers.png"}


def test_dask_gives_the_same_results_as_the_process_pool(tmp_path):
    distributed = pytest.importorskip("distributed")
    sweep = parse_sweep(SMALL, "small")
    run_sweep(sweep, tmp_path / "pool", workers=2, progress=False, plots=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        run_sweep(sweep, tmp_path / "dask", dask=cluster.scheduler_address, progress=False,
                  plots=False)
    for name in ("results.csv", "results.json"):
        assert (tmp_path / "pool" / name).read_bytes() == (tmp_path / "dask" / name).read_bytes()


def test_interrupted_sweep_is_partial_then_resumes(tmp_path):
    sweep = parse_sweep(SMALL, "small")
    seen = []

    def stop_after_five(row):
        seen.append(row["index"])
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, tmp_path, workers=1, progress=False, on_result=stop_after_five)
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0] == "# complete: false (5 of 16 points)"
    assert len(lines) == 2 + 5 and all(line.endswith(",false") for line in lines[2:])
    assert json.loads((tmp_path / "results.json").read_text())["complete"] is False
    # a line cut short by the interruption is recomputed, not trusted
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"index": 7, "key": "trunc')
    again = []
    summary = run_sweep(sweep, tmp_path, workers=1, progress=False, plots=False,
                        on_result=lambda row: again.append(row["index"]))
    assert summary["reused"] == 5 and summary["computed"] == 11 and summary["complete"]
    assert set(again).isdisjoint(seen)
    fresh = tmp_path / "fresh"
    run_sweep(sweep, fresh, workers=2, progress=False, plots=False)
    assert (fresh / "results.csv").read_bytes() == (tmp_path / "results.csv").read_bytes()


def test_bad_sweeps(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_sweep({"workload": {"network": "resnet18"}, "space": {"rowz": [8]}}, "s")
    assert str(err.value) == f"s: [space] key 'rowz' is not a parameter (valid: {', '.join(PARAMETERS)})"
    with pytest.raises(ConfigError, match="s: point \\{'dataflow': 'is'\\}: dataflow must be ws"):
        parse_sweep({"workload": {"network": "resnet18"}, "space": {"dataflow": ["is"]}}, "s")
    with pytest.raises(ConfigError, match="s: point \\{'rows': 0\\}: rows must be between 2 and 64"):
        parse_sweep({"workload": {"network": "resnet18"}, "space": {"rows": [0]}}, "s")
    with pytest.raises(ConfigError, match="s: \\[space\\] rows must be a non-empty list"):
        parse_sweep({"workload": {"network": "resnet18"}, "space": {"rows": 8}}, "s")
    with pytest.raises(ConfigError, match="give exactly one workload"):
        parse_sweep({"workload": {"network": "resnet18", "onnx": "m.onnx"}, "space": {"rows": [8]}}, "s")


def test_unreachable_dask_is_a_clear_error_within_seconds(tmp_path, capsys):
    sweep = tmp_path / "s.toml"
    sweep.write_text('[workload]\nnetwork = "resnet18"\n[space]\nrows = [8]\n')
    t0 = time.perf_counter()
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--dask", "tcp://127.0.0.1:9"]) == 2
    assert time.perf_counter() - t0 < 15
    assert "qsim: error: cannot reach the Dask scheduler at tcp://127.0.0.1:9: no answer within 5 s" \
        in capsys.readouterr().err
    assert (tmp_path / "out" / "results.csv").read_text().startswith("# complete: false (0 of 1 points)")


def test_docs_sweep_example_runs(tmp_path, monkeypatch, capsys):
    """The sweep file in docs/estimate.md (the block after <!-- sweep-example -->) runs."""
    text = (ROOT / "docs" / "estimate.md").read_text()
    body = re.search(r"<!-- sweep-example -->\n```text\n(.*?)```", text, re.DOTALL).group(1)
    parse_sweep(tomllib.loads(body), "docs/estimate.md", ROOT)  # checks every point
    (tmp_path / "sweep.toml").write_text(body.replace('"tests/data/', f'"{ROOT}/tests/data/'))
    assert main(["sweep", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "out"),
                 "--workers", "2", "--no-plots"]) == 0
    assert "complete     yes" in capsys.readouterr().out
    assert load_sweep(tmp_path / "sweep.toml").points()
