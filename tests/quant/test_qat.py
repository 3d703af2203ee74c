"""FakeQuant: forward is quantize -> dequantize exactly, the STE mask, range tracking, errors;
and the Python examples of docs/qat.md run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qsim.errors import ConfigError
from qsim.numerics import INT4, INT8, UINT4
from qsim.quant.calibrate import MinMaxObserver, MSEObserver, compute_params, fake_quantize
from qsim.quant.ops import dequantize, quantize
from qsim.quant.params import QuantParams
from qsim.quant.qat import FakeQuant, LearnedScaleFakeQuant

ROOT = Path(__file__).resolve().parents[2]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# ------------------------------------------------------------------------------------------
# The straight-through estimator on hand-picked values
# ------------------------------------------------------------------------------------------

def test_ste_mask_int8_per_tensor():
    """int8, scale 1/4, zero point 0: the mask is decided on round(x / s) + zp, ties to even."""
    fq = FakeQuant("int8").set_params(QuantParams(np.float32(0.25), 0, INT8))
    x = np.array([31.625, 31.75, 31.875, 32.0, 0.0, -32.0, -32.125, -32.25, -32.375], np.float32)
    #     x / s =  126.5   127    127.5   128    0     -128    -128.5   -129    -129.5
    #     round =  126     127    128     128    0     -128    -128     -129    -130
    y = fq.forward(x)
    assert y.tolist() == [31.5, 31.75, 31.75, 31.75, 0.0, -32.0, -32.0, -32.0, -32.0]
    assert fq.mask.tolist() == [True, True, False, False, True, True, True, False, False]
    grad = np.arange(1, 10, dtype=np.float32)
    assert fq.backward(grad).tolist() == [1, 2, 0, 0, 5, 6, 7, 0, 0]


def test_ste_mask_uint4_with_zero_point():
    """uint4, scale 1/2, zero point 3: integers 0..15 cover x in [-1.5, 6]."""
    fq = FakeQuant(UINT4).set_params(QuantParams(np.float32(0.5), 3, UINT4))
    x = np.array([-1.75, -1.5, -1.25, 6.0, 6.25, 6.5, 6.75], np.float32)
    #   x/s + 3 = -0.5  0     0.5    15    15.5  16    16.5   (x/s rounds first: -4, -3, -2, 12, 12, 13, 14)
    y = fq.forward(x)
    assert quantize(x, fq.params).tolist() == [0, 0, 1, 15, 15, 15, 15]
    assert fq.mask.tolist() == [False, True, True, True, True, False, False]
    assert y.tolist() == [-1.5, -1.5, -1.0, 6.0, 6.0, 6.0, 6.0]
    assert fq.backward(np.ones(7)).tolist() == [0, 1, 1, 1, 1, 0, 0]


def test_ste_mask_per_channel_int4():
    fq = FakeQuant("int4", symmetric=True, per_channel_axis=1)
    fq.set_params(QuantParams(np.array([1.0, 0.5], np.float32), 0, INT4, axis=1))
    x = np.array([[7.5, 3.75], [-8.5, -4.25], [6.5, 3.25], [-8.75, -4.5]], np.float32)
    #   column 0 / 1: 7.5 -> 8 out; -8.5 -> -8 in; 6.5 -> 6 in; -8.75 -> -9 out (both columns)
    y = fq.forward(x)
    assert fq.mask.tolist() == [[False, False], [True, True], [True, True], [False, False]]
    assert y.tolist() == [[7.0, 3.5], [-8.0, -4.0], [6.0, 3.0], [-8.0, -4.0]]
    grad = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    out = fq.backward(grad)
    assert out.dtype == np.float64 and out.tolist() == [[0, 0], [3, 4], [5, 6], [0, 0]]


# ------------------------------------------------------------------------------------------
# Forward = quantize -> dequantize, bit for bit
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["int8", "uint8", "int4", "uint4", "int2", "int16"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis", [None, 0, -1])
def test_forward_is_quantize_dequantize(fmt, symmetric, axis, rng):
    fq = FakeQuant(fmt, symmetric=symmetric, per_channel_axis=axis, tracking="minmax")
    calib = (rng.standard_normal((6, 40)) * rng.uniform(0.1, 3, size=(6, 1))).astype(np.float32)
    fq.observe(calib)
    fq.freeze()
    x = (calib * 1.5 + rng.standard_normal((6, 40)).astype(np.float32))
    x[:, :2] = np.array([10, -10], np.float32) * np.abs(calib).max()  # these saturate in every channel
    y = fq.forward(x)
    reference = dequantize(quantize(x, fq.params), fq.params)
    assert y.dtype == np.float32
    assert np.array_equal(bits(y), bits(reference))
    # The mask is exactly "not saturated": outside it, the integer sits at a format bound.
    q = quantize(x, fq.params)
    assert np.all(np.isin(q[~fq.mask], [fq.fmt.min, fq.fmt.max]))
    assert np.count_nonzero(~fq.mask) > 0


def test_forward_updates_params_until_frozen():
    fq = FakeQuant("int8", tracking="minmax")
    fq.forward(np.array([-1.0, 2.0], np.float32))
    first = fq.params
    assert (first.scale, first.zero_point) == (np.float32(3 / 255), -43)
    fq.forward(np.array([-3.0, 1.0], np.float32))
    expected = compute_params(-3.0, 2.0, "int8")
    assert (fq.params.scale, fq.params.zero_point) == (expected.scale, expected.zero_point)
    fq.freeze()
    y = fq.forward(np.array([10.0, -10.0], np.float32))
    assert fq.params is not first and fq.params.scale == expected.scale
    assert fq.mask.tolist() == [False, False]
    assert y.tolist() == dequantize(np.array([127, -128]), expected).tolist()
    fq.unfreeze()
    fq.forward(np.array([10.0], np.float32))
    assert fq.params.scale == compute_params(-3.0, 10.0, "int8").scale


def test_moving_average_and_current_tracking():
    avg = FakeQuant("int8", tracking="moving_average", averaging_constant=0.5)
    avg.forward(np.array([-1.0, 2.0], np.float32))
    avg.forward(np.array([-3.0, 4.0], np.float32))
    expected = compute_params(-2.0, 3.0, "int8")  # halfway between the two batches' ranges
    assert (avg.params.scale, avg.params.zero_point) == (expected.scale, expected.zero_point)
    cur = FakeQuant("int4", symmetric=True, per_channel_axis=0, tracking="current")
    cur.forward(np.array([[4.0, -1.0], [0.5, 0.25]], np.float32))
    cur.forward(np.array([[1.0, -2.0], [0.25, 0.5]], np.float32))
    expected = compute_params([-2.0, 0.0], [1.0, 0.5], "int4", symmetric=True, axis=0)
    assert np.array_equal(cur.params.scale, expected.scale)
    assert cur.params.scale.tolist() == [np.float32(4 / 15), np.float32(1 / 15)]


def test_gradient_descent_through_fake_quant_reaches_the_grid():
    """A least-squares fit with fake-quantized weights: the STE lets the float weights move,
    and the quantized weights end on the grid point nearest the target."""
    target = np.array([0.3, -0.55, 0.8], np.float32)
    w = np.zeros(3, np.float32)
    fq = FakeQuant("int4").set_params(QuantParams(np.float32(0.125), 0, INT4))
    for _ in range(200):
        w_hat = fq.forward(w)
        w -= np.float32(0.1) * fq.backward(2 * (w_hat - target)).astype(np.float32)
    assert fq.forward(w).tolist() == [0.25, -0.5, 0.75]


# ------------------------------------------------------------------------------------------
# LSQ: a learned scale
# ------------------------------------------------------------------------------------------

def test_lsq_gradients_on_hand_values():
    """int4, scale 1/2, zero point 0; d x_hat / d s is round(v) - v inside, -8 / 7 outside."""
    lsq = LearnedScaleFakeQuant(0.5, "int4")
    x = np.array([0.375, 3.625, 3.875, -4.375, 1.25], np.float32)
    #   v = x/s:  0.75   7.25   7.75   -8.75   2.5  -> round 1, 7, 8 (high), -9 (low), 2 (even)
    y = lsq.forward(x)
    assert y.tolist() == [0.5, 3.5, 3.5, -4.0, 1.0]
    assert np.array_equal(bits(y), bits(dequantize(quantize(x, lsq.params), lsq.params)))
    grad_x, grad_s = lsq.backward(np.ones(5, np.float32))
    assert grad_x.tolist() == [1, 1, 0, 0, 1]
    # (0.25 - 0.25 + 7 - 8 - 0.5) / sqrt(5 elements * qmax 7)
    assert grad_s.shape == () and grad_s == np.float32(-1.5 / np.sqrt(35))


def test_lsq_per_channel_gradient_shape():
    lsq = LearnedScaleFakeQuant([0.5, 0.25], "int4", axis=1)
    lsq.forward(np.array([[0.375, 0.375], [1.25, 0.5]], np.float32))
    _, grad_s = lsq.backward(np.ones((2, 2), np.float32))
    #   column 0: v = 0.75, 2.5 -> 0.25 - 0.5; column 1: v = 1.5, 2 -> 0.5 + 0 (1.5 rounds to 2)
    assert grad_s.tolist() == [np.float32(-0.25 / np.sqrt(14)), np.float32(0.5 / np.sqrt(14))]


def test_lsq_learns_the_mse_optimal_scale():
    """Descending the quantization MSE from the min/max scale, the learned scale reaches the
    error of the MSE observer's search (and half of min/max's)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(20000).astype(np.float32)
    minmax = MinMaxObserver("int4", symmetric=True).observe(x).compute()
    best = MSEObserver("int4", symmetric=True).observe(x).compute()
    lsq = LearnedScaleFakeQuant(minmax.scale, "int4")
    undo = np.float32(np.sqrt(x.size * 7))  # plain gradient descent on the scale, not LSQ's step
    for _ in range(200):
        y = lsq.forward(x)
        _, grad_s = lsq.backward(2 * (y - x) / x.size)
        lsq.scale -= np.float32(0.05) * grad_s * undo

    def mse(params):
        return float(np.mean((fake_quantize(x, params) - x) ** 2))

    assert mse(lsq.params) <= mse(best) < mse(minmax) / 2
    assert abs(float(lsq.scale) / float(best.scale) - 1) < 0.01


def test_lsq_errors():
    lsq = LearnedScaleFakeQuant(0.5, "int4")
    assert error_text(lambda: lsq.backward(np.ones(2))) == (
        "LearnedScaleFakeQuant.backward() needs a forward() first")
    lsq.forward(np.ones(3, np.float32))
    assert error_text(lambda: lsq.backward(np.ones(2))) == (
        "gradient shape (2,) does not match the last forward input shape (3,)")
    lsq.scale -= np.float32(1)
    assert error_text(lambda: lsq.forward(np.ones(3))) == (
        "the learned scale must stay positive and finite, but it is -0.5; lower the learning "
        "rate of the scale")
    assert error_text(lambda: LearnedScaleFakeQuant(0.0)) == "scale = 0.0 is not a positive finite number"


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------

def error_text(call) -> str:
    with pytest.raises(ConfigError) as err:
        call()
    return str(err.value)


def test_errors():
    fq = FakeQuant("int8")
    assert error_text(lambda: FakeQuant("int8", tracking="ema")) == (
        "tracking must be one of 'moving_average', 'minmax', 'current', not 'ema'")
    assert error_text(lambda: fq.backward(np.ones(2))) == "FakeQuant.backward() needs a forward() first"
    assert error_text(fq.freeze) == (
        "FakeQuant has no quantization parameters to freeze: run forward() or observe() on data "
        "first, or give them with set_params()")
    fq.forward(np.ones((2, 3), np.float32))
    assert error_text(lambda: fq.backward(np.ones(3))) == (
        "gradient shape (3,) does not match the last forward input shape (2, 3)")
    fq.freeze()
    assert error_text(lambda: fq.observe(np.ones(2))) == (
        "FakeQuant is frozen: call unfreeze() before observing more data")
    assert error_text(lambda: fq.set_params(QuantParams(np.float32(1), 0, INT4))) == (
        "params are int4 but this FakeQuant is int8")
    assert error_text(lambda: fq.set_params((1.0, 0))) == "params must be a QuantParams, not tuple"
    assert error_text(lambda: FakeQuant("int32")) == (
        "calibration supports formats of 2 to 16 bits, not int32")
    assert error_text(lambda: FakeQuant("int8", averaging_constant=0)) == (
        "averaging_constant must be in (0, 1], not 0")


# ------------------------------------------------------------------------------------------
