"""Energy and area: counts from the timing model x prices from the technology table."""

from __future__ import annotations

import json

import pytest

from qsim.cli import main
from qsim.config import AcceleratorConfig
from qsim.energy import (HOROWITZ_45NM, ActionCounts, area_mm2, energy_of, load_tech, prices,
                         tech_from_dict)
from qsim.errors import ConfigError
from qsim.nn.estimate import estimate_network
from qsim.nn.zoo import resnet18
from qsim.timing import estimate_gemm


def test_default_table_is_horowitz_45nm():
    t = HOROWITZ_45NM
    assert (t.int8_add_pj, t.int32_add_pj, t.int8_mult_pj, t.int32_mult_pj) == (0.03, 0.1, 0.2, 3.1)
    assert (t.fp16_add_pj, t.fp32_add_pj, t.fp16_mult_pj, t.fp32_mult_pj) == (0.4, 0.9, 1.1, 3.7)
    assert (t.sram_8kb_64b_pj, t.sram_32kb_64b_pj, t.sram_1mb_64b_pj) == (10.0, 20.0, 100.0)
    assert t.dram_64b_pj == (1300.0 + 2600.0) / 2
    # area: an 8-bit multiply (282 um2) plus a 32-bit add (137 um2) of the same table; a KiB
    # of 0.346 um2 bit cells at an assumed array efficiency of 0.7
    assert t.mac_int8_um2 == 282.0 + 137.0 == 419.0
    assert t.sram_um2_per_kib == round(8192 * 0.346 / 0.7, 1) == 4049.2


def test_default_area():
    """rows x cols x 419 um2 + (act + weight + acc KiB) x 4049.2 um2."""
    assert area_mm2(AcceleratorConfig()) == pytest.approx((64 * 419.0 + 768 * 4049.2) / 1e6,
                                                          rel=1e-12)
    assert area_mm2(AcceleratorConfig(rows=16, cols=16)) == pytest.approx(
        (256 * 419.0 + 1536 * 4049.2) / 1e6, rel=1e-12)
    # an int4 PE counts as one int8 MAC; its memories hold as many bytes
    assert area_mm2(AcceleratorConfig(input_format="int4", weight_format="int4")) == \
        area_mm2(AcceleratorConfig())


def test_derived_rules():
    t = HOROWITZ_45NM
    # the table's own points are returned as they are
    assert [t.sram_64b_pj(s) for s in (8 << 10, 32 << 10, 1 << 20)] == [10.0, 20.0, 100.0]
    # log-log interpolation: 16 KB is the geometric mean of 10 and 20 pJ
    assert t.sram_64b_pj(16 << 10) == pytest.approx(10 * 2 ** 0.5, rel=1e-12)
    assert t.sram_64b_pj(4 << 10) == pytest.approx(10 / 2 ** 0.5, rel=1e-12)  # extended
    assert t.mult_pj(8) == 0.2 and t.mult_pj(4) == pytest.approx(0.05) and t.mult_pj(32) == 3.1
    assert t.add_pj(8) == 0.03 and t.add_pj(32) == 0.1
    assert t.add_pj(16) == pytest.approx(0.03 + (0.1 - 0.03) * 8 / 24)


def test_small_gemm_energy_equals_the_hand_calculation():
    cfg = AcceleratorConfig()  # 8 x 8, int8, int32 accumulators, 128/128/512 KiB
    t = estimate_gemm(cfg, 20, 16, 8)  # 2 K tiles of 20 rows, the second accumulating
    assert (t.act_reads, t.weight_reads, t.acc_reads, t.acc_writes) == (40, 16, 20, 40)
    assert t.array_macs == 40 * 64
    e = energy_of(ActionCounts.from_timing(t), cfg)
    mac = 0.2 + 0.1                              # int8 multiply + int32 add
    word_128k = 20 * 5 ** (2 / 5)                # 64-bit word, 128 KiB: 2/5 of the way 32 KB -> 1 MB
    acc_word_512k = 20 * 5 ** (4 / 5) * 256 / 64  # 8 x 32-bit word, 512 KiB
    by_hand = {"mac_array": 2560 * mac, "act_sram": 40 * word_128k, "weight_sram": 16 * word_128k,
               "acc_sram": (20 + 40) * acc_word_512k, "ppu": 0.0, "dram": 0.0}
    assert e.components == pytest.approx(by_hand, rel=1e-12)
    assert e.total_pj == pytest.approx(sum(by_hand.values()), rel=1e-12)
    assert round(e.total_pj, 3) == 20294.804


def test_int4_and_dram_bytes_and_ppu():
    cfg = AcceleratorConfig(input_format="int4", weight_format="int4", requant="fixed-point")
    p = prices(cfg)
    assert p["mac"] == pytest.approx(0.05 + 0.1)
    assert p["ppu_output"] == pytest.approx(3.1 + 2 * 0.1)
    assert p["dram_byte"] == 1950.0 / 8
    e = energy_of({"dram_bytes": 64, "ppu_outputs": 10}, cfg)
    assert e.components["dram"] == 64 * 1950.0 / 8
    assert e.components["ppu"] == pytest.approx(10 * 3.3)
    with pytest.raises(ConfigError, match="unknown action count\\(s\\): dram_words"):
        energy_of({"dram_words": 1}, cfg)


def test_network_energy_is_the_sum_of_its_layers():
    cfg = AcceleratorConfig(rows=16, cols=16)
    est = estimate_network(resnet18(), cfg)
    total = sum(layer.energy(cfg).total_pj for layer in est.layers)
    assert est.energy_pj == pytest.approx(total, rel=1e-12)
    assert est.pj_per_mac == pytest.approx(est.energy_pj / est.macs)
    assert est.tops_per_w == pytest.approx(2 / est.pj_per_mac)
    assert est.dram_bytes is None and est.area_mm2 == pytest.approx(6.3268352, rel=1e-12)
    assert all(layer.dram_bytes is None and layer.dma_stall_cycles == 0 for layer in est.layers)


def test_tech_file_overrides_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("int8_mult_pj = 0.1\nmac_int8_um2 = 300\nsram_um2_per_kib = 5000\n")
    tech = load_tech(path)
    assert tech.int8_mult_pj == 0.1 and tech.name == "horowitz-45nm (modified)"
    cfg = AcceleratorConfig()
    kib = (128 + 128 + 512)
    assert area_mm2(cfg, tech) == pytest.approx((64 * 300 + kib * 5000) / 1e6)
    assert area_mm2(cfg, tech, synth={"area_mm2": 1.5}) == 1.5
    path.write_text("int8_mul_pj = 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_tech(path)
    assert str(err.value).startswith(f"technology file {path}: unknown key 'int8_mul_pj' (known: ")
    with pytest.raises(ConfigError, match="int8_add_pj must be a positive number, not -1"):
        tech_from_dict({"int8_add_pj": -1})


def test_cli_json_has_energy(capsys, tmp_path):
    assert main(["estimate", "--network", "resnet18", "--rows", "16", "--cols", "16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["energy_breakdown_pj"]) == {"mac_array", "act_sram", "weight_sram", "acc_sram",
                                                "ppu", "dram"}
    assert data["energy_pj"] == pytest.approx(sum(data["energy_breakdown_pj"].values()), rel=1e-9)
    assert data["pj_per_mac"] == pytest.approx(data["energy_pj"] / data["macs"], rel=1e-6)
    assert data["area_mm2"] == pytest.approx(6.3268352, rel=1e-12) and data["dram_bytes"] is None
    assert main(["estimate", "--m", "20", "--k", "16", "--n", "8", "--json"]) == 0
    gemm = json.loads(capsys.readouterr().out)
    assert gemm["energy_pj"] == 20294.804
    bad = tmp_path / "bad.toml"
    bad.write_text("dram_pj = 1\n")
    assert main(["estimate", "--network", "resnet18", "--tech", str(bad)]) == 2
    assert "unknown key 'dram_pj'" in capsys.readouterr().err
