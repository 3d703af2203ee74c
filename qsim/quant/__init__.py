"""Quantization: parameters, quantize/dequantize, requantization semantics, integer kernels,
calibration, batch-norm folding and quantization-aware training.

The submodules own one concern each: :mod:`~qsim.quant.params`, :mod:`~qsim.quant.ops`,
:mod:`~qsim.quant.requant`, :mod:`~qsim.quant.kernels`, :mod:`~qsim.quant.ortops` (ONNX
Runtime's QOperator kernels), :mod:`~qsim.quant.hazards`, :mod:`~qsim.quant.calibrate`,
:mod:`~qsim.quant.nonuniform`, :mod:`~qsim.quant.mixed`, :mod:`~qsim.quant.fold`,
:mod:`~qsim.quant.qat` and :mod:`~qsim.quant.analysis` (matplotlib; not imported here).
"""

from __future__ import annotations

from qsim.quant.calibrate import (
    EntropyObserver, MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver, PercentileObserver,
    compute_params,
)
from qsim.quant.fold import fold_batchnorm, fuse_conv_bn_relu
from qsim.quant.kernels import conv_integer, matmul_integer, qlinear_conv, qlinear_matmul
from qsim.quant.ops import dequantize, dynamic_quantize, quantize
from qsim.quant.params import QuantParams
from qsim.quant.qat import FakeQuant
from qsim.quant.requant import FixedPointRequantizer, Semantics, requantize

__all__ = [
    "QuantParams", "quantize", "dequantize", "dynamic_quantize", "Semantics", "requantize",
    "FixedPointRequantizer", "matmul_integer", "conv_integer", "qlinear_matmul", "qlinear_conv",
    "compute_params", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver",
    "MSEObserver", "EntropyObserver", "fold_batchnorm", "fuse_conv_bn_relu", "FakeQuant",
]
