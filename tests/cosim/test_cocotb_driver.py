"""docs/dram.md: the register table is what qsim.hw generates, and the regression example of
"A regression in a few lines" runs under Verilator through qsim.cocotb and really checks.

The example block is written to a file and executed as a script would be (``__name__ ==
"__main__"``, so its last lines call ``qsim.cocotb.run_tests(CONFIG, __file__)``), with
``run_tests`` wrapped to add a second test module to the same simulator run: it replays the
example's test with a scoreboard that expects one wrong output element, and that must fail
with a ScoreboardMismatch naming the element. The JUnit file must then show both tests
passed (the example's, and the negative one that caught the mismatch).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qsim.hw import CSR_REGISTERS, COUNTERS, csr_table_markdown
from qsim.program import ERROR_CODES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "dram.md"
HEADING = "## A regression in a few lines"

NEGATIVE = '''
import os
from pathlib import Path

import cocotb

import regression_doc as doc
from qsim.cocotb import Scoreboard, ScoreboardMismatch


class WrongScoreboard(Scoreboard):
    """Expects C[0, 0] one higher than the model does."""

    def __init__(self, program):
        super().__init__(program)
        c = self.expected_outputs["C"].copy()
        c[0, 0] += 1
        self.expected_outputs["C"] = c


@cocotb.test()
async def a_wrong_expectation_fails(dut):
    doc.Scoreboard = WrongScoreboard
    try:
        await doc.random_gemms.func(dut)
    except ScoreboardMismatch as exc:
        Path(os.environ["QSIM_TEST_MARKER"]).write_text(str(exc))
    else:
        raise AssertionError("the example passed with a wrong expected value")
    finally:
        doc.Scoreboard = Scoreboard
'''


def example_block() -> str:
    text = DOC.read_text()
    assert HEADING in text, f"{DOC.name} has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {HEADING!r}"
    return match.group(1)


def test_the_register_table_is_generated():
    text = DOC.read_text()
    match = re.search(r"<!-- csr-table -->\n(.*?)\n<!-- /csr-table -->", text, re.DOTALL)
    assert match, "docs/dram.md has no <!-- csr-table --> block"
    assert match.group(1) == csr_table_markdown(), \
        "docs/dram.md's register table differs from qsim.hw.csr_table_markdown()"
    table = csr_table_markdown()
    assert all(f"`{name}`" in table for name in CSR_REGISTERS)
    assert all(f"`{name}_hi`" in table for name in COUNTERS)


def test_the_error_table_lists_every_code():
    section = DOC.read_text().split("## Error codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", section, re.MULTILINE)
    assert {name: int(code) for code, name in rows} == ERROR_CODES


def test_the_example_is_short():
    assert len(example_block().splitlines()) <= 30


@pytest.mark.verilator
def test_the_regression_example_runs_and_checks(tmp_path, monkeypatch):
    import qsim.cocotb

    doc_file = tmp_path / "regression_doc.py"
    doc_file.write_text(example_block())
    negative_file = tmp_path / "regression_negative.py"
    negative_file.write_text(NEGATIVE)
    marker = tmp_path / "caught.txt"
    runs = []
    real_run_tests = qsim.cocotb.run_tests

    def run_tests(config, *modules, **kwargs):
        run = real_run_tests(config, *modules, negative_file, test_dir=tmp_path, check=False,
                             extra_env={"QSIM_TEST_MARKER": str(marker)})
        runs.append(run)
        return run

    monkeypatch.setattr(qsim.cocotb, "run_tests", run_tests)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__", "__file__": str(doc_file)}
    exec(compile(doc_file.read_text(), str(doc_file), "exec"), namespace)

    assert len(runs) == 1, "the example did not call run_tests"
    run = runs[0]
    log = run.log.read_text(errors="replace")
    cases = {case.get("name"): case for case in ET.parse(run.results_xml).iter("testcase")}
    assert set(cases) == {"random_gemms", "a_wrong_expectation_fails"}, (cases, log[-3000:])
    for name, case in cases.items():
        bad = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        assert not bad, f"{name}: {bad}\n{log[-3000:]}"
    assert (run.tests, run.failed) == (2, 0)
    assert "TESTS=2 PASS=2 FAIL=0" in log
    # the example ran its four GEMMs (each checked), and the wrong expectation was caught
    assert len(re.findall(r"gemm\d: \d+x\d+x\d+ in \d+ cycles", log)) == 4, log[-3000:]
    caught = marker.read_text()
    assert "output C: 1 of" in caught and "C[0, 0] = " in caught, caught
    assert "DRAM" not in caught and "cycles" not in caught  # only the planted difference
