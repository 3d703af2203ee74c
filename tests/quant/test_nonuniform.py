from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from qsim.errors import ConfigError
from qsim.quant.nonuniform import (
    Pow2Params, choose_max_exponent, dequantize_pow2, fake_quantize_pow2, pow2_grid, pow2_levels,
    quantize_pow2,
)

# bits=3, max_exponent=1: magnitudes {0.5, 1, 2}. Linear decision points 0.25, 0.75, 1.5
# (ties up); log decision points 2**-1.5 = 0.3536, 2**-0.5 = 0.7071, 2**0.5 = 1.4142.
W = [0.0, 0.2, 0.25, 0.3, 0.36, 0.7, 0.71, 0.75, 1.0, 1.4, 1.42, 1.5, 3.0, -3.0, -0.3, 1e-30]
LINEAR = [0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, -2.0, -0.5, 0.0]
LOG = [0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, -2.0, 0.0, 0.0]


def test_rounding_exact_values_linear_and_log():
    codes, params = quantize_pow2(W, 3, max_exponent=1)
    assert params.rounding == "linear" and params.levels == 3 and int(params.min_exponent) == -1
    assert codes.tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 7, 5, 0]
    values = dequantize_pow2(codes, params)
    assert values.dtype == np.float32 and values.tolist() == LINEAR
    codes, params = quantize_pow2(W, 3, max_exponent=1, rounding="log")
    assert codes.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 7, 0, 0]
    assert dequantize_pow2(codes, params).tolist() == LOG


def test_code_layout():
    params = Pow2Params(4, np.int64(0))  # magnitudes 2**-6 .. 2**0, field 1 .. 7
    codes = np.arange(16)
    values = dequantize_pow2(codes, params)
    magnitudes = [0.0] + [2.0 ** k for k in range(-6, 1)]
    assert values.tolist() == magnitudes + [-0.0 if m == 0 else -m for m in magnitudes]
    assert values[8] == 0  # "minus zero" decodes to 0 and is never produced
    back, _ = quantize_pow2(values, params=params)
    assert back.tolist() == list(range(8)) + [0] + list(range(9, 16))


def test_two_bit_codes_are_ternary():
    codes, params = quantize_pow2([-0.9, -0.2, 0.0, 0.3, 0.6, 5.0], 2, max_exponent=0)
    assert params.levels == 1
    assert codes.tolist() == [3, 0, 0, 0, 1, 1]
    assert dequantize_pow2(codes, params).tolist() == [-1.0, 0.0, 0.0, 0.0, 1.0, 1.0]


def test_decisions_are_exact_at_the_boundaries():
    below, above = np.nextafter(1.5, 0), np.nextafter(1.5, 2)
    assert fake_quantize_pow2([below, 1.5, above], 4, max_exponent=3).tolist() == [1.0, 2.0, 2.0]
    root2 = float(np.sqrt(2.0))
    near = [np.nextafter(root2, 0), root2, np.nextafter(root2, 2)]
    expected = [2.0 if Fraction(x) ** 2 >= 2 else 1.0 for x in near]
    assert expected == [1.0, 2.0, 2.0]  # float64 sqrt(2) = 1.41421356237309515 lies above sqrt(2)
    assert fake_quantize_pow2(near, 4, max_exponent=3, rounding="log").tolist() == expected
    # zero threshold: linear at 2**(kmin - 1) (tie up), log at 2**(kmin - 1/2)
    assert fake_quantize_pow2([0.25, np.nextafter(0.25, 0)], 3, max_exponent=1).tolist() == [0.5, 0.0]
    half_root = float(np.sqrt(0.125))
    got = fake_quantize_pow2([np.nextafter(half_root, 0), np.nextafter(half_root, 1)], 3,
                             max_exponent=1, rounding="log").tolist()
    assert got == [0.0, 0.5]


def test_linear_rounding_is_nearest_value(rng):
    w = rng.standard_normal(4000) * 0.3
    codes, params = quantize_pow2(w, 4, axis=None)
    grid = pow2_grid(params).astype(np.float64)
    dist = np.abs(w[:, None] - grid[None, :])
    best = dist.min(axis=1)
    # ties go to the larger magnitude: the last nearest grid point on the weight's side
    candidates = dist == best[:, None]
    chosen = np.array([grid[c][np.argmax(np.abs(grid[c]))] for c in candidates])
    assert np.array_equal(dequantize_pow2(codes, params), chosen.astype(np.float32))


def test_log_rounding_is_nearest_exponent(rng):
    w = rng.standard_normal(4000)
    codes, params = quantize_pow2(w, 3, max_exponent=1, rounding="log")
    kmax, kmin = 1, int(params.min_exponent)
    # zero behaves like the level 2**(kmin - 1); distances in log2
    levels = np.arange(kmin - 1, kmax + 1)
    nearest = levels[np.argmin(np.abs(np.log2(np.abs(w))[:, None] - levels[None, :]), axis=1)]
    expected = np.where(nearest < kmin, 0.0, np.sign(w) * 2.0 ** nearest)
    assert np.array_equal(dequantize_pow2(codes, params), expected.astype(np.float32))


def test_choose_max_exponent_rounds_the_largest_weight():
    assert int(choose_max_exponent([0.1, -3.0], 4).max_exponent) == 2  # 3 = 1.5 * 2: tie up to 4
    assert int(choose_max_exponent([0.1, -2.9], 4).max_exponent) == 1
    assert int(choose_max_exponent([0.1, -2.9], 4, rounding="log").max_exponent) == 2  # > 2**1.5
    assert int(choose_max_exponent([0.1, -2.8], 4, rounding="log").max_exponent) == 1
    assert int(choose_max_exponent([0.0, 0.0], 4).max_exponent) == 0
    per_channel = choose_max_exponent([[0.5, -0.1], [4.0, 0.0], [0.0, 0.0]], 4, axis=0)
    assert per_channel.axis == 0 and per_channel.max_exponent.tolist() == [-1, 2, 0]


def test_inq_rule(rng):
    top = 10.0 ** rng.uniform(-3, 3, 500)
    for t in top:
        inq = int(np.floor(np.log2(4 * t / 3)))
        assert int(choose_max_exponent([t], 5).max_exponent) == inq


def test_per_channel_codes():
    w = np.array([[0.5, -0.1, 0.02], [4.0, 3.0, -2.5]])
    codes, params = quantize_pow2(w, 4, axis=0)
    assert params.max_exponent.tolist() == [-1, 2]
    assert codes.tolist() == [[7, 13, 2], [7, 7, 14]]
    assert dequantize_pow2(codes, params).tolist() == [[0.5, -0.125, 0.015625], [4.0, 4.0, -2.0]]
    assert pow2_grid(params, channel=1).tolist() == [-4, -2, -1, -0.5, -0.25, -0.125, -0.0625, 0,
                                                     0.0625, 0.125, 0.25, 0.5, 1, 2, 4]
    assert repr(params) == "Pow2Params(bits=4, axis=0, max_exponent=[-1, 2], rounding='linear')"


@pytest.mark.parametrize("call, text", [
    (lambda: quantize_pow2([1.0], 1), "power-of-two codes need between 2 and 8 bits (a sign bit and "
                                      "an exponent field), not 1"),
    (lambda: quantize_pow2([1.0], 9), "power-of-two codes need between 2 and 8 bits (a sign bit and "
                                      "an exponent field), not 9"),
    (lambda: quantize_pow2([1.0], 4.0), "bits must be an int, not 4.0"),
    (lambda: quantize_pow2([1.0], 4, rounding="nearest"),
     "rounding must be 'linear' or 'log', not 'nearest'"),
    (lambda: quantize_pow2([np.nan, 1.0], 4), "weights have 1 non-finite value(s); power-of-two "
                                              "quantization needs finite weights"),
    (lambda: quantize_pow2([1.0]), "quantize_pow2 needs bits (or params)"),
    (lambda: quantize_pow2([1.0], 4, max_exponent=128),
     "max_exponent 128 puts the 4-bit codes outside float32: it must be between -143 and 127"),
    (lambda: quantize_pow2([1.0], 4, max_exponent=-144),
     "max_exponent -144 puts the 4-bit codes outside float32: it must be between -143 and 127"),
    (lambda: quantize_pow2([1.0], 4, max_exponent=0.5), "max_exponent must be integers, not float64 values"),
    (lambda: quantize_pow2([[1.0, 2.0]], 4, max_exponent=[1, 2, 3], axis=0),
     "3 per-channel exponents do not match axis 0 of shape (1, 2) (1 channels)"),
    (lambda: quantize_pow2([1.0], 4, max_exponent=[1, 2]),
     "per-tensor power-of-two parameters need a scalar max_exponent, not shape (2,); give axis= "
     "for per-channel exponents"),
    (lambda: choose_max_exponent(np.zeros((0,)), 4), "cannot choose an exponent for empty weights "
                                                     "(shape (0,))"),
    (lambda: choose_max_exponent([1.0], 4, axis=1), "axis 1 is out of range for weights of shape (1,)"),
    (lambda: dequantize_pow2([16], Pow2Params(4, 0)), "code 16 does not fit 4 bits (0 to 15)"),
    (lambda: dequantize_pow2([1.0], Pow2Params(4, 0)),
     "power-of-two codes must be integers, not dtype float64"),
    (lambda: pow2_grid(Pow2Params(4, [0, 1], axis=0)),
     "per-channel power-of-two parameters need channel= for the grid"),
])
def test_errors(call, text):
    with pytest.raises(ConfigError) as exc:
        call()
    assert str(exc.value) == text


def test_levels():
    assert [pow2_levels(b) for b in range(2, 9)] == [1, 3, 7, 15, 31, 63, 127]
