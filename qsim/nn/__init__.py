"""Neural networks: the graph IR, layers, network definitions and cost estimates."""

from __future__ import annotations

from qsim.nn.graph import GemmShape, Graph, Layer, TensorType

__all__ = ["Graph", "Layer", "TensorType", "GemmShape"]
