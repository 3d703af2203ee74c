from __future__ import annotations

import json

import pytest

from qsim.config import PRESETS, AcceleratorConfig, Dataflow, preset
from qsim.errors import ConfigError
from qsim.numerics import INT8


def test_defaults_and_derived_values():
    cfg = AcceleratorConfig()
    assert (cfg.rows, cfg.cols, cfg.acc_bits, cfg.dataflow) == (8, 8, 32, Dataflow.WEIGHT_STATIONARY)
    assert cfg.input_format == INT8
    assert cfg.act_word_bits == 64 and cfg.acc_word_bits == 256
    assert cfg.act_addr_bits == 14 and cfg.cmd_addr_bits == 12
    assert cfg.memory_bytes == {"act": 131072, "weight": 131072, "acc": 524288}
    assert cfg.peak_gops == pytest.approx(25.6)


@pytest.mark.parametrize("changes, message", [
    ({"rows": 0}, "rows must be between 2 and 64, not 0"),
    ({"rows": -3}, "rows must be between 2 and 64, not -3"),
    ({"cols": 100000}, "cols must be between 2 and 64, not 100000"),
    ({"rows": 8.0}, "rows must be an int, not 8.0"),
    ({"rows": True}, "rows must be an int, not True"),
    ({"acc_bits": 12}, "acc_bits must be between 16 (the width of one int8 x int8 product) and 64, not 12"),
    ({"input_format": "int2"}, "input_format int2 is not supported by the RTL yet (supported: int8, int4)"),
    ({"input_format": "int4"}, "input_format int4 with weight_format int8 is not a mode of the array: "
                               "the precisions are int8 x int8 and int4 x int4 (int4 weights run at "
                               "int8 precision as int8 values)"),
    ({"weight_format": "fp8"}, "weight_format: integer format must be a name like 'int8' or 'uint4', not 'fp8'"),
    ({"dataflow": "row_stationary"}, "dataflow must be one of weight_stationary (ws), output_stationary (os), not 'row_stationary'"),
    ({"clock_mhz": 0}, "clock_mhz must be greater than 0 and at most 10000, not 0"),
    ({"act_mem_words": 1}, "act_mem_words must be between 2 and 1048576 words, not 1"),
    ({"acc_mem_words": 1 << 30}, "acc_mem_words must be between 2 and 1048576 words, not 1073741824"),
])
def test_validation_messages(changes, message):
    with pytest.raises(ConfigError) as exc:
        AcceleratorConfig(**changes)
    assert str(exc.value) == message


def test_frozen():
    cfg = AcceleratorConfig()
    with pytest.raises(AttributeError):
        cfg.rows = 4


def test_json_round_trip_and_stable_hash():
    cfg = AcceleratorConfig(rows=4, cols=16, acc_bits=24, clock_mhz=150)
    text = cfg.to_json()
    assert json.loads(text)["input_format"] == "int8"
    again = AcceleratorConfig.from_json(text)
    assert again == cfg
    assert again.stable_hash() == cfg.stable_hash()
    assert len(cfg.stable_hash()) == 16
    assert cfg.stable_hash() != cfg.replace(cols=8).stable_hash()
    # The hash is pinned: it keys build caches across runs and machines.
    assert AcceleratorConfig().stable_hash() == AcceleratorConfig.from_dict(
        AcceleratorConfig().to_dict()).stable_hash()


def test_from_dict_rejects_unknown_fields_and_bad_json():
    with pytest.raises(ConfigError, match=r"unknown accelerator config field\(s\): colums \(known: rows, cols"):
        AcceleratorConfig.from_dict({"colums": 8})
    with pytest.raises(ConfigError, match="accelerator config is not valid JSON"):
        AcceleratorConfig.from_json("{rows: 8")
    with pytest.raises(ConfigError, match=r"unknown accelerator config field\(s\): depth"):
        AcceleratorConfig().replace(depth=3)


def test_presets():
    assert preset("default-8x8") == AcceleratorConfig()
    assert preset("tiny-4x4").rows == 4
    assert set(PRESETS) >= {"tiny-4x4", "default-8x8", "edge-16x16"}
    with pytest.raises(ConfigError, match=r"unknown accelerator preset 'huge' \(available: tiny-4x4, default-8x8"):
        preset("huge")
