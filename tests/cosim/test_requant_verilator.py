"""REQUANT commands and the post-processing unit under Verilator + cocotb: random command
streams (random lanes, addresses, 2-D activation walks, signed and unsigned activations, int8
and int4) are bit-exact with the model in
the activation and accumulator memories and cycle-exact with the timing model, every counter
included. ``make test`` runs a subset; ``make test-full`` runs the whole matrix."""

from __future__ import annotations

import pytest

from qsim.cosim.runner import compare, run_programs
from tests.requant_cases import random_requant_program, requant_config

pytestmark = pytest.mark.verilator

SUBSET = [(4, 4, "float32", "int8"), (3, 5, "fixed-point", "int4")]
FULL = [(r, c, mode, precision) for r, c in ((4, 4), (8, 8), (5, 7), (3, 11), (16, 16))
        for mode in ("fixed-point", "float32") for precision in ("int8", "int4")
        if (r, c, mode, precision) not in SUBSET]


def _check(rng, rows, cols, mode, precision, programs=4):
    cfg = requant_config(rows, cols, mode, precision)
    batch = [random_requant_program(rng, cfg, commands=12) for _ in range(programs)]
    for program, rtl in zip(batch, run_programs(batch)):
        report = compare(program, rtl)
        assert report.act_mismatches == 0 and report.acc_mismatches == 0, report.first_mismatches
        assert report.counter_diffs == {}, (program.commands, report.counter_diffs)
        assert report.rtl_cycles == report.model_cycles
    assert sum(rtl_program.config.requant.value == mode for rtl_program in batch) == programs


@pytest.mark.parametrize("rows, cols, mode, precision", SUBSET)
def test_requant_streams(rng, rows, cols, mode, precision):
    _check(rng, rows, cols, mode, precision)


@pytest.mark.full
@pytest.mark.parametrize("rows, cols, mode, precision", FULL)
def test_requant_streams_full_matrix(rng, rows, cols, mode, precision):
    _check(rng, rows, cols, mode, precision)
