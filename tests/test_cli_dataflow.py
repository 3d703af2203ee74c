"""``--dataflow ws|os`` on the commands that take an accelerator (the RTL runs are in
tests/cosim/test_verilator_os.py and the slow tier below)."""

from __future__ import annotations

import json

import pytest

from qsim.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_dataflows(capsys):
    cycles = {}
    for flag in ("ws", "os"):
        code, out, _ = run(capsys, "estimate", "--preset", "tiny-4x4", "--dataflow", flag,
                           "--m", "32", "--k", "32", "--n", "32", "--json")
        data = json.loads(out)
        assert code == 0
        cycles[data["config"]["dataflow"]] = data["cycles"]
        assert data["utilization"] >= 0.95
    # ws: 8 N x K tiles of 32 rows; os: 64 M x N tiles of 32 steps (tests/test_timing_os.py)
    assert cycles == {"weight_stationary": 2062, "output_stationary": 2065}


def test_bad_dataflow_is_a_usage_error(capsys):
    code, _, err = run(capsys, "estimate", "--dataflow", "rs", "--m", "1", "--k", "1", "--n", "1")
    assert code == 2
    assert "qsim: error: --dataflow must be ws (weight-stationary) or os (output-stationary), " \
           "not 'rs'" in err


def test_rtl_writes_the_output_stationary_array(capsys, tmp_path):
    out = tmp_path / "os.v"
    code, printed, err = run(capsys, "rtl", "--rows", "3", "--cols", "5", "--dataflow", "os",
                           "-o", str(out))
    assert code == 0 and "output_stationary" in printed + err
    text = out.read_text()
    assert "module qsim_os_array" in text and "qsim_systolic_array" not in text


def test_rtl_refuses_the_ecp5_pe_where_it_does_not_apply(capsys, tmp_path):
    out = tmp_path / "x.v"
    code, printed, err = run(capsys, "rtl", "--dataflow", "os", "--pe", "ecp5", "-o", str(out))
    assert (code, printed) == (2, "")
    assert err == "qsim: error: --pe ecp5: the ECP5 PE is weight-stationary only\n"
    code, printed, err = run(capsys, "rtl", "--precision", "int4", "--pe", "ecp5", "-o", str(out))
    assert (code, printed) == (2, "")
    assert err == ("qsim: error: --pe ecp5: the ECP5 PE takes one product per PE (int4/int4 "
                   "packs 2)\n")
    assert not out.exists()


def test_estimate_fit_sizes_memories_for_output_stationary(capsys):
    code, out, _ = run(capsys, "estimate", "--preset", "tiny-4x4", "--dataflow", "os", "--fit",
                       "--m", "100", "--k", "5000", "--n", "8", "--json")
    data = json.loads(out)
    assert code == 0 and data["programs"] == 1
    assert data["config"]["act_mem_words"] >= 25 * 5000


@pytest.mark.verilator
def test_cosim_output_stationary_json(capsys):
    code, out, _ = run(capsys, "cosim", "--preset", "tiny-4x4", "--dataflow", "os", "--precision",
                       "int4", "--m", "19", "--k", "23", "--n", "7", "--seed", "4", "--json")
    data = json.loads(out)
    assert code == 0 and data["agrees"] and data["mismatches"] == 0
    assert data["rtl_cycles"] == data["model_cycles"]
    assert data["config"]["dataflow"] == "output_stationary"
