"""Every example in README.md and docs/ is executed, so the documentation stays true.

* ```python blocks run in order, one namespace per file. A block right after the line
  ``<!-- test: verilator -->`` builds or runs the RTL and runs in the slow tier.
* ```toml blocks are valid scenario files.
* ```console blocks: each ``$ qsim ...`` line is run through :func:`qsim.cli.main`; its
  exit status must be 0 (or the ``# exit N`` the line ends with). If the block follows
  ``<!-- test: exact -->`` the printed lines must equal the block's lines after it.
* The text diagram under ``<!-- diagram: NAME -->`` must equal what the RTL trace gives.
* A console block after ``<!-- measured -->`` shows the output of one benchmark run, as
  measured: benchmarks are not timed in tests (a loaded test machine would make them flaky),
  so such blocks are not executed, and only ``qsim bench`` commands may be marked so.
"""

from __future__ import annotations

import io
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"(?:<!-- (?P<mark>[^>]*) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.DOTALL)


def blocks(path: Path):
    for match in FENCE.finditer(path.read_text()):
        yield match.group("lang"), (match.group("mark") or "").strip(), match.group("body")


def _cases(lang: str):
    for path in DOCS:
        for i, (kind, mark, _) in enumerate(blocks(path)):
            if kind == lang:
                marks = [pytest.mark.verilator] if "verilator" in mark else []
                yield pytest.param(path, i, marks=marks, id=f"{path.name}-{i}")


def _python_files():
    for path in DOCS:
        kinds = [(k, m) for k, m, _ in blocks(path) if k == "python"]
        if kinds:
            slow = any("verilator" in m for _, m in kinds)
            yield pytest.param(path, marks=[pytest.mark.verilator] if slow else [], id=path.name)


@pytest.mark.parametrize("path", list(_python_files()))
def test_python_examples(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for kind, _, body in blocks(path):
        if kind == "python":
            exec(compile(body, f"{path.name}", "exec"), namespace)


#: Modules whose `python -m` lines in a console block are run: they write the example's input
#: files into the current folder and nothing else.
GENERATORS = ("qsim.examples.bert_block",)


@pytest.mark.parametrize("path, index", list(_cases("console")))
def test_console_examples(path, index, monkeypatch, tmp_path):
    import subprocess
    import sys

    from qsim.cli import main

    kind, mark, body = list(blocks(path))[index]
    lines = body.splitlines()
    commands = [i for i, line in enumerate(lines) if line.startswith("$ ")]
    # a block that first makes its input files with one of the generators below runs in a
    # fresh folder (the generator writes there), every other block in the repository (its
    # examples name scenarios/ and the like); other `python -m` lines (training, benchmarks)
    # are described, not run
    generators = tuple(f"$ python -m {module} " for module in GENERATORS)
    makes_files = any(lines[i].startswith(generators) for i in commands)
    monkeypatch.chdir(tmp_path if makes_files else ROOT)
    for i in commands:
        if lines[i].startswith(generators):
            argv = shlex.split(lines[i][2:].split("#")[0])
            done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True,
                                  text=True, env={**__import__("os").environ,
                                                  "PYTHONPATH": str(ROOT)})
            assert done.returncode == 0, (lines[i], done.stdout, done.stderr)
    assert commands, f"{path.name} block {index} has no $ command"
    if mark == "measured":
        assert all(lines[i].startswith("$ qsim bench ") for i in commands), \
            f"{path.name} block {index}: only benchmark output may be marked measured"
        return
    for n, start in enumerate(commands):
        line = lines[start][2:]
        expected_code = 0
        if "# exit " in line:
            line, code = line.split("# exit ")
            expected_code = int(code)
        argv = shlex.split(line)
        if argv[0] != "qsim":
            continue  # shell commands (make, pip) are described, not run here
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(argv[1:])
        assert code == expected_code, (line, out.getvalue(), err.getvalue())
        if "exact" in mark:
            end = commands[n + 1] if n + 1 < len(commands) else len(lines)
            printed = (out.getvalue() + err.getvalue()).rstrip("\n").splitlines()
            assert printed == lines[start + 1:end], line


@pytest.mark.amaranth
@pytest.mark.parametrize("page, diagrams", [("microarchitecture.md", "DIAGRAMS"),
                                            ("dram.md", "DRAM_DIAGRAMS")])
def test_timing_diagrams_match_the_rtl(page, diagrams):
    from tests import docs_support

    text = (ROOT / "docs" / page).read_text()
    for name, make in getattr(docs_support, diagrams).items():
        match = re.search(rf"<!-- diagram: {name} -->\n```text\n(.*?)```", text, re.DOTALL)
        assert match, f"diagram {name} missing from docs/{page}"
        assert match.group(1).rstrip("\n") == make(), f"diagram {name} differs from the RTL trace"


@pytest.mark.parametrize("path, index", list(_cases("toml")))
def test_toml_examples_are_valid_scenarios(path, index):
    import tomllib

    from qsim.scenario import parse_scenario

    _, _, body = list(blocks(path))[index]
    scenario = parse_scenario(tomllib.loads(body), f"{path.name} block {index}")
    assert scenario.workloads or scenario.networks
