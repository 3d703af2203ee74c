"""Network estimates per layer: bytes per memory level, stalls by cause, tiling, roofline."""

from __future__ import annotations

import json

import pytest

from qsim.cli import main
from qsim.compile import gemm_layouts
from qsim.compile_dram import plan_dram_gemm
from qsim.config import AcceleratorConfig
from qsim.nn.estimate import DEFAULT_DRAM_GBPS, LEVELS, estimate_gemms
from qsim.nn.graph import GemmShape
from qsim.program import Load, Store
from qsim.timing import estimate_gemm, timing_of_commands

BUS = AcceleratorConfig(rows=4, cols=4, dram_width=8, dram_latency=20, act_mem_words=256,
                        weight_mem_words=256, acc_mem_words=512)
GEMMS = [("fc1", "linear", GemmShape(200, 40, 24)), ("fc2", "linear", GemmShape(9, 100, 6, 3))]


def _expected_levels(config: AcceleratorConfig, m: int, k: int, n: int, count: int) -> dict:
    """Bytes per level from the full path: the plan's commands and their counters."""
    plan = plan_dram_gemm(config, m, k, n)
    t = timing_of_commands(config, plan.commands, m * k * n)
    moved = {(type(c), c.memory): 0 for c in plan.commands if isinstance(c, (Load, Store))}
    for c in plan.commands:
        if isinstance(c, (Load, Store)):
            moved[type(c), c.memory] += c.words
    act, weight, acc = config.act_word_bits, config.weight_word_bits, config.acc_word_bits
    return {
        "scratchpad_read": count * (t.act_reads * act + t.weight_reads * weight
                                    + moved.get((Store, "act"), 0) * act) // 8,
        "scratchpad_written": count * (t.act_writes * act + moved.get((Load, "act"), 0) * act
                                       + moved.get((Load, "weight"), 0) * weight) // 8,
        "accumulator_read": count * (t.acc_reads + moved.get((Store, "acc"), 0)) * acc // 8,
        "accumulator_written": count * t.acc_writes * acc // 8,
        "dram_read": count * t.dram_reads, "dram_written": count * t.dram_writes,
    }, t, plan


def test_levels_stalls_and_tiling_with_a_bus():
    est = estimate_gemms("two", GEMMS, BUS)
    for layer in est.layers:
        g = layer.gemm
        levels, t, plan = _expected_levels(BUS, g.m, g.k, g.n, g.count)
        assert layer.level_bytes(BUS) == levels
        assert layer.stalls == {w: g.count * getattr(t, w)
                                for w in ("wait_array", "wait_drain", "wait_ppu", "wait_dma")}
        assert layer.dma_stall_cycles == layer.stalls["wait_dma"]
        a_lay, _, c_lay = gemm_layouts(BUS, g.m, g.k, g.n)
        assert layer.tiling == {"k_tiles": a_lay.lane_tiles, "n_tiles": c_lay.lane_tiles,
                                "block_rows": plan.block, "blocks": plan.blocks,
                                "weight_tiles": len(plan.inputs["B"])}
        assert layer.dram_bytes == layer.dram_read + layer.dram_written
    # 200 x 40 x 24 on 4 x 4: 10 K tiles x 6 N tiles in 8 blocks of 25 rows, 480 MATMULs of
    # 25 rows; activation and weight words of 4 bytes, accumulator words of 16
    first = est.layers[0]
    assert first.tiling == {"k_tiles": 10, "n_tiles": 6, "block_rows": 25, "blocks": 8,
                            "weight_tiles": 60}
    assert first.level_bytes(BUS) == {
        # 12,000 activation words streamed, 480 x 4 weight words read
        "scratchpad_read": 12000 * 4 + 480 * 4 * 4,
        # 2,000 activation words and 8 x 60 x 4 weight words LOADed
        "scratchpad_written": 2000 * 4 + 480 * 4 * 4,
        # 10,800 accumulating rows read, 1,200 words STOREd; 12,000 written
        "accumulator_read": (10800 + 1200) * 16, "accumulator_written": 12000 * 16,
        # A: 80 chunks of 100 bytes in 13 beats of 8; B: 480 tiles of 16 bytes; the program:
        # 1,089 commands of 16 bytes; C: 48 chunks of 400 bytes
        "dram_read": 80 * 13 * 8 + 480 * 16 + 1089 * 16, "dram_written": 48 * 400}
    assert est.level_bytes == {k: sum(l.level_bytes(BUS)[k] for l in est.layers) for k in LEVELS}
    assert est.stalls == {k: sum(l.stalls[k] for l in est.layers) for k in est.stalls}


def test_on_chip_levels_and_output_stationary_tiling():
    cfg = AcceleratorConfig(rows=4, cols=4, dataflow="os")
    est = estimate_gemms("two", GEMMS, cfg)
    layer = est.layers[0]
    t = estimate_gemm(cfg, 200, 40, 24)
    assert layer.tiling == {"m_tiles": 50, "n_tiles": 6}
    assert layer.level_bytes(cfg) == {
        "scratchpad_read": (t.act_reads * 32 + t.weight_reads * 32) // 8,
        "scratchpad_written": 0, "accumulator_read": 0,
        "accumulator_written": t.acc_writes * 4 * 32 // 8, "dram_read": None,
        "dram_written": None}
    assert est.level_bytes["dram_read"] is None
    assert layer.stalls["wait_dma"] == 0 and layer.stalls["wait_array"] == t.wait_array


def test_roofline_placement():
    bus = estimate_gemms("two", GEMMS, BUS)
    # 2 x 4 x 4 MACs per cycle at 200 MHz; 8 bytes per cycle at 200 MHz: the ridge at 4 ops/B
    assert (bus.peak_ops_per_s, bus.dram_bytes_per_s) == (6.4e9, 1.6e9)
    first = bus.layers[0]
    place = bus.roofline(first)
    assert first.offchip_bytes == 33424 + 19200
    assert place["ops_per_byte"] == round(2 * 200 * 40 * 24 / 52624, 3) == 7.297
    assert place["bound"] == "compute" and place["attainable_ops_per_s"] == 6.4e9
    assert place["achieved_ops_per_s"] == round(2 * 192000 / (first.cycles / 200e6), 1)
    # without a bus: compulsory bytes at 12.8 GB/s; 4 x 4 at 1 GHz: the ridge at 2.5 ops/B
    gemv = [("gemv", "linear", GemmShape(1, 1000, 1000))]
    on_chip = estimate_gemms("gemv", gemv, AcceleratorConfig(rows=4, cols=4, clock_mhz=1000.0))
    assert on_chip.dram_bytes_per_s == DEFAULT_DRAM_GBPS * 1e9
    layer = on_chip.layers[0]
    assert layer.offchip_bytes == 1000 + 1000 * 1000 + 1000
    place = on_chip.roofline(layer)
    assert place["ops_per_byte"] == round(2e6 / 1002000, 3) == 1.996
    assert place["bound"] == "memory"
    assert place["attainable_ops_per_s"] == round(12.8e9 * 2e6 / 1002000, 1)


def test_json_and_layers_report(capsys):
    argv = ["estimate", "--network", "bert_base_block", "--rows", "16", "--cols", "16",
            "--dram-width", "16", "--dram-latency", "40"]
    assert main(argv + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["bytes"]) == set(LEVELS)
    assert data["bytes"]["dram_read"] + data["bytes"]["dram_written"] == data["dram_bytes"]
    assert sum(layer["dram_bytes"] for layer in data["layers"]) == data["dram_bytes"] == 20180160
    assert data["roofline"] == {"peak_ops_per_s": 102.4e9, "dram_bytes_per_s": 3.2e9,
                                "ridge_ops_per_byte": 32.0}
    scores = data["layers"][3]
    assert (scores["name"], scores["bound"], scores["tiling"]["blocks"]) == ("scores", "memory", 1)
    assert scores["stall_cycles"]["wait_dma"] == scores["dma_stall_cycles"] == 87204
    assert main(argv + ["--layers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[7] == ("bytes        scratchpad r 70,189,056 w 13,172,736 B, accumulator r "
                        "232,783,872 w 232,783,872 B, DRAM r 15,461,568 w 4,718,592 B")
    assert lines[8] == "stalls       array 1,162,840, drain 8,232, ppu 0, dma 3,160,036 cycles"
    assert lines[11].split() == ["k_tiles", "48,", "n_tiles", "48,", "block_rows", "128,",
                                 "blocks", "1,", "weight_tiles", "2304;", "126.4", "ops/B,",
                                 "compute-bound"]


@pytest.mark.parametrize("network", ["resnet18"])
def test_on_chip_report_says_dram_is_not_modelled(capsys, network):
    assert main(["estimate", "--network", network, "--layers"]) == 0
    out = capsys.readouterr().out
    assert "DRAM not modelled (no bus interface)" in out
