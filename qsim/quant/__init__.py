"""Quantization: parameters, quantize/dequantize, requantization semantics, calibration."""

from __future__ import annotations

from qsim.quant.params import QuantParams

__all__ = ["QuantParams"]
