"""``pytorch-fbgemm`` against PyTorch's fbgemm running live (marker ``torch``).

The PyTorch wheel is too large for the CI install, so the suite checks qsim against outputs
recorded from fbgemm (``tests/quant/test_fbgemm_golden.py``). Where torch is installed, this
test records the same cases afresh with the recording script's own code, on this machine and
its instruction path, and compares qsim with them value for value::

    /tmp/tv/bin/python -m pytest -m torch tests/quant/test_fbgemm_live.py   # a venv with torch

Every case keeps its accumulators within int16 pair sums (uint8 activations, int8 weights in
[-64, 63]), so they are the same integers on every CPU and the comparison pins fbgemm's
requantization alone.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")


def test_qsim_equals_fbgemm_recorded_now():
    from tests.golden import record_fbgemm
    from tests.quant.test_fbgemm_golden import _requantize

    warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    out: dict[str, np.ndarray] = {}
    record_fbgemm.record(out)
    cases: dict[str, dict[str, np.ndarray]] = {}
    for key, value in out.items():
        name, field = key.split("/")
        cases.setdefault(name, {})[field] = value
    values = 0
    for name, c in cases.items():
        got = _requantize(name, c)
        assert np.array_equal(got, c["y"]), (name, int(np.count_nonzero(got != c["y"])))
        values += c["y"].size
    assert values >= 100_000, values
