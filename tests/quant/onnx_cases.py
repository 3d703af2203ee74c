"""ONNX backend test cases generated from the installed onnx package (no downloads).

The onnx wheel ships the case generators (``onnx.backend.test.case.node``) but no test data;
each generator's ``export*`` methods call ``expect(node, inputs, outputs, name)``. Swapping
``expect`` for a recorder collects the cases without touching onnx's global registry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np


@dataclass
class BackendCase:
    """One ``expect`` call of an ONNX backend test generator."""

    op: str
    name: str
    node: Any
    inputs: list[Any]
    outputs: list[Any]


def collect_backend_cases(generators: Mapping[str, str]) -> list[BackendCase]:
    """Cases of every ``export*`` method of each generator class (op name -> module name).

    numpy's global seed is reset before each export, as onnx's own collector does, so random
    inputs are the ones onnx's published data would hold.
    """
    cases: list[BackendCase] = []
    for op, module_name in generators.items():
        module = importlib.import_module(f"onnx.backend.test.case.node.{module_name}")
        generator = getattr(module, op)
        original = module.expect

        def record(node, inputs, outputs, name, **kwargs):  # expect's signature
            cases.append(BackendCase(node.op_type, name, node, list(inputs), list(outputs)))

        module.expect = record
        try:
            for attribute in sorted(vars(generator)):
                if attribute.startswith("export"):
                    np.random.seed(0)
                    getattr(generator, attribute)()
        finally:
            module.expect = original
    return cases
