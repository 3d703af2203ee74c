"""quantize / dequantize / dynamic_quantize against exact rational oracles, and the docs.

The oracles use ``fractions.Fraction``: a float32 (or float16) operation is the exact
rational result rounded to the nearest representable value, ties to even (``nearest_float``);
integer rounding of a rational under each mode is ``round_fraction``. The requantization
tests import both helpers.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsim.errors import ConfigError, QsimOverflowError
from qsim.numerics import (
    INT4,
    INT8,
    INT16,
    INT32,
    UINT4,
    UINT8,
    UINT16,
    IntFormat,
    Rounding,
    pack_int2,
    pack_int4,
    unpack_int4,
)
from qsim.quant.ops import dequantize, dynamic_quantize, quantize
from qsim.quant.params import QuantParams

ROOT = Path(__file__).resolve().parents[2]
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
INT2, UINT2 = IntFormat(2, True), IntFormat(2, False)
FORMATS = [INT2, UINT2, INT4, UINT4, INT8, UINT8, INT16, UINT16, INT32]


# ------------------------------------------------------------------ oracles

def nearest_float(value: Fraction, precision: int, emin: int, emax: int) -> Fraction | float:
    """The binary float nearest to ``value`` (ties to even), as a Fraction; +-inf on overflow.

    ``precision`` counts the significand bits including the hidden one; ``emin`` is the
    exponent of the smallest normal number (subnormals share its spacing).
    """
    if value == 0:
        return Fraction(0)
    sign = -1 if value < 0 else 1
    magnitude = abs(value)
    e = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    while Fraction(2) ** e > magnitude:
        e -= 1
    while Fraction(2) ** (e + 1) <= magnitude:
        e += 1
    ulp = Fraction(2) ** (max(e, emin) - precision + 1)
    rounded = round(magnitude / ulp) * ulp  # Fraction.__round__ is half to even
    if rounded >= Fraction(2) ** (emax + 1):
        return sign * math.inf
    return sign * rounded


def f32(value: Fraction) -> Fraction | float:
    return nearest_float(value, 24, -126, 127)


def f16(value: Fraction) -> Fraction | float:
    return nearest_float(value, 11, -14, 15)


def round_fraction(value: Fraction, mode: Rounding) -> int:
    """Round an exact rational to an integer under ``mode``."""
    low = math.floor(value)
    rest = value - low
    if mode is Rounding.FLOOR:
        return low
    if mode is Rounding.CEIL:
        return low + (rest != 0)
    if mode is Rounding.TOWARD_ZERO:
        return math.trunc(value)
    if rest != Fraction(1, 2):
        return low + (rest > Fraction(1, 2))
    return low + {Rounding.HALF_EVEN: low % 2, Rounding.HALF_AWAY: int(value > 0),
                  Rounding.HALF_UP: 1, Rounding.HALF_DOWN: 0}[mode]


def saturated(value: int | float, fmt: IntFormat) -> int:
    return int(min(max(value, fmt.min), fmt.max))


def quantize_oracle(x: float, scale: float, zp: int, fmt: IntFormat, mode: Rounding,
                    half: bool = False) -> int:
    cast = f16 if half else f32
    if not math.isfinite(x):
        return saturated(float(x), fmt)
    xq = cast(Fraction(float(x)))
    if isinstance(xq, float):  # x itself overflows the scale's type: +-inf / scale
        return saturated(xq, fmt)
    quotient = cast(xq / Fraction(float(scale)))
    if isinstance(quotient, float):
        return saturated(quotient, fmt)
    return saturated(round_fraction(quotient, mode) + zp, fmt)


# ------------------------------------------------------------------ quantize

def test_quantize_rounds_half_even_by_default():
    x = np.float32([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 1e9, -1e9, np.inf, -np.inf])
    params = QuantParams(np.float32(1.0), 0, INT8)
    assert quantize(x, params).tolist() == [-2, -2, 0, 0, 2, 2, 127, -128, 127, -128]
    assert quantize(x, params, "half_away").tolist() == [-3, -2, -1, 1, 2, 3, 127, -128, 127, -128]
    assert quantize(x, params, Rounding.HALF_UP).tolist() == [-2, -1, 0, 1, 2, 3, 127, -128, 127,
                                                              -128]


def test_quantize_adds_zero_point_after_rounding_and_saturates():
    params = QuantParams(np.float32(2.0), 128, UINT8)
    x = np.float32([0, 2, 3, 1000, -254, -1000, 5, -5])
    assert quantize(x, params).tolist() == [128, 129, 130, 255, 1, 0, 130, 126]


def test_quantize_divides_in_float32_not_float64():
    # x / s = 10.500000372... exactly; float32 division gives the tie 10.5, which goes to 10.
    # Rounding the exact (or float64) quotient would give 11.
    x = np.uint32(1087847724).view(np.float32)  # 6.7262173
    s = np.uint32(1059323352).view(np.float32)  # 0.6405921
    exact = Fraction(float(x)) / Fraction(float(s))
    assert exact > Fraction(21, 2) and float(exact) != 10.5 and x / s == np.float32(10.5)
    assert quantize(x, QuantParams(s, 0, INT8)).tolist() == 10
    assert quantize(x, QuantParams(s, 0, INT8), "half_away").tolist() == 11
    assert quantize(x, QuantParams(np.float64(s), 0, INT8)).tolist() == 11


def test_quantize_divides_in_float16_for_a_float16_scale():
    # float16 cannot hold 1000.7: it becomes 1000.5, a tie that rounds to the even 1000.
    x = np.float32(1000.7)
    assert quantize(x, QuantParams(np.float16(1.0), 0, INT16)).tolist() == 1000
    assert quantize(x, QuantParams(np.float32(1.0), 0, INT16)).tolist() == 1001
    big = quantize(np.float32(70000), QuantParams(np.float16(1.0), 0, INT32))  # inf in float16
    assert big.tolist() == 2 ** 31 - 1


def test_quantize_per_axis_and_blocked():
    x = np.float32([[6.0, 12.0, 50.0, 5.0], [1.0, 8.0, 4.0, 5.0], [0.0, 20.0, 10.0, 4.0]])
    per_row = QuantParams(np.float32([2.0, 4.0, 5.0]), [1, 0, -2], INT8, axis=0)
    assert quantize(x, per_row).tolist() == [[4, 7, 26, 3], [0, 2, 1, 1], [-2, 2, 0, -1]]
    per_col = QuantParams(np.float32([1, 2, 4, 8]), [0, 0, 0, 0], INT4, axis=-1)
    assert quantize(x, per_col).tolist() == [[6, 6, 7, 1], [1, 4, 1, 1], [0, 7, 2, 0]]
    blocked = QuantParams(np.float32([[1.5, 2.5], [3.0, 4.9], [5.1, 6.9]]),
                          [[0, 1], [1, 0], [2, 3]], UINT8, axis=1, block_size=2)
    assert quantize(x, blocked).tolist() == [[4, 8, 21, 3], [1, 4, 1, 1], [2, 6, 4, 4]]
    # A last block shorter than block_size (ceil(5 / 2) = 3 blocks).
    short = QuantParams(np.float32([[1.0, 2.0, 4.0]]), [[0, 0, 0]], INT8, axis=1, block_size=2)
    assert quantize(np.float32([[3, 3, 3, 3, 3]]), short).tolist() == [[3, 3, 2, 2, 1]]


def test_quantize_int4_and_int2_then_pack():
    q = quantize(np.float32([1.0, -2.0, 7.0, 100.0]), QuantParams(np.float32(1.0), 0, INT4))
    assert q.tolist() == [1, -2, 7, 7]
    assert bytes(pack_int4(q[:3])) == b"\xe1\x07"
    assert unpack_int4(pack_int4(q), 4).tolist() == q.tolist()
    q2 = quantize(np.float32([-3.0, -1.0, 0.4, 0.6, 9.0]), QuantParams(np.float32(1.0), 0, INT2))
    assert q2.tolist() == [-2, -1, 0, 1, 1]
    assert bytes(pack_int2(q2)) == bytes([0b01001110, 0b01])


@PROPERTY
@given(
    x=st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=8),
    scale=st.floats(min_value=2.0 ** -20, max_value=2.0 ** 14, width=32),
    fmt=st.sampled_from(FORMATS),
    zp_frac=st.floats(0, 1),
    mode=st.sampled_from(list(Rounding)),
)
def test_quantize_matches_exact_oracle(x, scale, fmt, zp_frac, mode):
    zp = fmt.min + int(zp_frac * (fmt.max - fmt.min))
    params = QuantParams(np.float32(scale), zp, fmt)
    got = quantize(np.float32(x), params, mode)
    assert got.dtype == np.int64
    assert got.tolist() == [quantize_oracle(v, scale, zp, fmt, mode) for v in np.float32(x)]


@PROPERTY
@given(
    x=st.lists(st.floats(min_value=-7e4, max_value=7e4, width=32), min_size=1, max_size=8),
    scale=st.floats(min_value=2.0 ** -10, max_value=2.0 ** 10, width=16),
    mode=st.sampled_from([Rounding.HALF_EVEN, Rounding.HALF_AWAY]),
)
def test_quantize_float16_scale_matches_exact_oracle(x, scale, mode):
    params = QuantParams(np.float16(scale), 0, INT16)
    got = quantize(np.float32(x), params, mode)
    assert got.tolist() == [quantize_oracle(v, scale, 0, INT16, mode, half=True)
                            for v in np.float32(x)]


def test_quantize_per_axis_matches_oracle(rng):
    x = (rng.standard_normal((5, 7, 3)) * 40).astype(np.float32)
    scale = rng.uniform(0.05, 2.0, 7).astype(np.float32)
    zp = rng.integers(-20, 20, 7)
    got = quantize(x, QuantParams(scale, zp, INT8, axis=1))
    want = [[[quantize_oracle(x[i, c, j], scale[c], int(zp[c]), INT8, Rounding.HALF_EVEN)
              for j in range(3)] for c in range(7)] for i in range(5)]
    assert got.tolist() == want


# ------------------------------------------------------------------ dequantize

def test_dequantize_pinned():
    params = QuantParams(np.float32(2.0), 128, UINT8)
    y = dequantize(np.array([0, 3, 128, 255], np.uint8), params)
    assert y.dtype == np.float32 and y.tolist() == [-256.0, -250.0, 0.0, 254.0]
    per_axis = QuantParams(np.float32([0.5, 0.25]), [1, -1], INT4, axis=0)
    assert dequantize(np.array([[7, -8], [7, -8]]), per_axis).tolist() == [[3.0, -4.5],
                                                                          [2.0, -1.75]]


def test_dequantize_float16_scale_gives_float16():
    y = dequantize(np.array([3, -7]), QuantParams(np.float16(0.1), 0, INT8))
    # The float16 scale is 0.0999755859375; 3 * it = 0.2999267578125 is a float16 tie (even).
    assert y.dtype == np.float16
    assert y.tolist() == [0.2998046875, -0.69970703125]


def test_dequantize_float16_rounds_through_float32_like_the_reference():
    # -27741 * 0.99462890625 = -27591.97... : float32 gives -27592.0, a float16 tie that goes
    # to the even -27584; the single rounding of the exact product would give -27600.
    scale = np.uint16(15349).view(np.float16)
    y = dequantize(np.array([-27741]), QuantParams(scale, 0, INT16))
    assert y.tolist() == [-27584.0]
    assert f16(Fraction(-27741) * Fraction(float(scale))) == -27600


@PROPERTY
@given(
    q_frac=st.lists(st.floats(0, 1), min_size=1, max_size=8),
    scale=st.floats(min_value=2.0 ** -100, max_value=2.0 ** 100, width=32),
    fmt=st.sampled_from(FORMATS),
    zp_frac=st.floats(0, 1),
)
def test_dequantize_matches_exact_oracle(q_frac, scale, fmt, zp_frac):
    span = fmt.max - fmt.min
    q = np.array([fmt.min + int(f * span) for f in q_frac])
    zp = fmt.min + int(zp_frac * span)
    got = dequantize(q, QuantParams(np.float32(scale), zp, fmt))
    want = [f32(Fraction(int(v) - zp) * Fraction(scale)) for v in q]
    assert [Fraction(float(v)) if math.isfinite(v) else float(v) for v in got] == want


@PROPERTY
@given(
    q=st.lists(st.integers(-32768, 32767), min_size=1, max_size=8),
    scale=st.floats(min_value=2.0 ** -13, max_value=2.0 ** 7, width=16),
)
def test_dequantize_float16_matches_reference_double_rounding(q, scale):
    got = dequantize(np.array(q), QuantParams(np.float16(scale), 0, INT16))
    for value, v in zip(got, q):
        want = f16(f32(Fraction(v) * Fraction(scale)))  # float32 product, then float16
        assert (Fraction(float(value)) if math.isfinite(value) else float(value)) == want


def test_quantize_dequantize_round_trip_error_is_at_most_half_a_step(rng):
    x = rng.uniform(-10, 10, 10000).astype(np.float32)
    params = QuantParams(np.float32(0.1), 3, INT8)
    back = dequantize(quantize(x, params), params).astype(np.float64)
    inside = (x > -12.5) & (x < 12.4)
    assert np.max(np.abs(back[inside] - x[inside])) <= 0.05 + 1e-6


# ------------------------------------------------------------------ dynamic quantization

def dynamic_oracle(x: list[float]) -> tuple[list[int], Fraction, int]:
    values = [Fraction(float(v)) for v in np.float32(x)]
    hi, lo = max(Fraction(0), max(values)), min(Fraction(0), min(values))
    span = Fraction(1) if hi == lo else f32(hi - lo)
    scale = f32(span / 255)
    if scale == 0:
        return [], scale, 0
    initial = f32(0 - f32(lo / scale))
    zp = round_fraction(min(max(initial, Fraction(0)), Fraction(255)), Rounding.HALF_EVEN)
    q = [saturated(round_fraction(f32(v / scale), Rounding.HALF_EVEN) + zp, UINT8) for v in values]
    return q, scale, zp


@PROPERTY
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, width=32), min_size=1, max_size=12))
def test_dynamic_quantize_matches_exact_oracle(x):
    want_q, want_scale, want_zp = dynamic_oracle(x)
    if want_scale == 0:  # a subnormal range: scale underflows
        with pytest.raises(ConfigError):
            dynamic_quantize(np.float32(x))
        return
    q, params = dynamic_quantize(np.float32(x))
    assert q.tolist() == want_q
    assert Fraction(float(params.scale)) == want_scale
    assert int(params.zero_point) == want_zp
    assert params.fmt == UINT8 and params.per_tensor and params.scale.dtype == np.float32


def test_dynamic_quantize_pinned():
    q, params = dynamic_quantize(np.float32([0, 2, -3, -2.5, 1.34, 0.5]))
    assert q.tolist() == [153, 255, 0, 26, 221, 179]
    assert params.scale.tobytes() == np.float32(5 / 255).tobytes()
    assert int(params.zero_point) == 153
    q, params = dynamic_quantize(np.zeros((2, 2)))
    assert q.tolist() == [[0, 0], [0, 0]] and int(params.zero_point) == 0
    assert params.scale.tobytes() == np.float32(1 / 255).tobytes()  # the ONNX reference's rule


@pytest.mark.parametrize("x, message", [
    (np.zeros(0, np.float32),
     "dynamic_quantize needs at least one value to compute a range, got none"),
    (np.float32([1, np.nan]), "dynamic_quantize input[1] = np.float32(nan) is not finite"),
    (np.float32([np.inf]), "dynamic_quantize input[0] = np.float32(inf) is not finite"),
    (np.array(["a"]),
     "dynamic_quantize input must be a real (float or integer) array, not dtype <U1"),
    (np.float32([1e-45]), "dynamic_quantize: the input range [0.0, 1.401298464324817e-45] gives "
                          "scale 0.0 in float32; the range must be between about 1.2e-43 and "
                          "3.4e38"),
    (np.float32([-3e38, 3e38]), "dynamic_quantize: the input range [-3.0000000054977558e+38, "
                                "3.0000000054977558e+38] gives scale inf in float32; the range "
                                "must be between about 1.2e-43 and 3.4e38"),
])
def test_dynamic_quantize_rejects(x, message):
    with pytest.raises(ConfigError) as err:
        dynamic_quantize(x)
    assert str(err.value) == message


# ------------------------------------------------------------------ bad input

def test_bad_scales_and_zero_points_through_quantize():
    with pytest.raises(ConfigError) as err:
        quantize(np.float32([1.0]), QuantParams(np.float32(0.0), 0, INT8))
    assert str(err.value) == "scale = 0.0 is not a positive finite number"
    with pytest.raises(ConfigError) as err:
        quantize(np.float32([1.0]), QuantParams(-0.5, 0, INT8))
    assert str(err.value) == "scale = -0.5 is not a positive finite number"
    with pytest.raises(ConfigError) as err:
        dequantize(np.array([1]), QuantParams(1.0, 300, UINT8))
    assert str(err.value) == "zero point 300 is outside uint8 [0, 255]"
    with pytest.raises(ConfigError) as err:
        quantize(np.float32([1.0]), QuantParams(1.0, -9, INT4))
    assert str(err.value) == "zero point -9 is outside int4 [-8, 7]"


def test_bad_bit_widths():
    with pytest.raises(ValueError) as err:
        QuantParams(1.0, 0, "int1")
    assert str(err.value) == "IntFormat bits must be between 2 and 64 for signed formats, not 1"
    with pytest.raises(ValueError) as err:
        QuantParams(1.0, 0, "uint64")
    assert str(err.value) == "IntFormat bits must be between 2 and 63 for unsigned formats, not 64"
    with pytest.raises(ConfigError) as err:
        quantize(np.float32([1.0]), QuantParams(1.0, 0, "int48"))
    assert str(err.value) == "quantize supports formats of at most 32 bits, not int48"


def test_mismatched_per_axis_and_blocked_shapes():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ConfigError) as err:
        quantize(x, QuantParams(np.float32([1, 2]), [0, 0], INT8, axis=1))
    assert str(err.value) == "per-axis scale has 2 entries but axis 1 of shape (2, 3) has 3"
    with pytest.raises(ConfigError) as err:
        dequantize(np.zeros((2, 3), np.int64),
                   QuantParams(np.float32([1, 2]), [0, 0], INT8, axis=2))
    assert str(err.value) == "axis 2 is out of range for a tensor of shape (2, 3)"
    with pytest.raises(ConfigError) as err:
        quantize(x, QuantParams(np.ones((2, 1), np.float32), np.zeros((2, 1)), INT8, axis=1,
                                block_size=2))
    assert str(err.value) == ("blocked scale shape (2, 1) does not match (2, 2) for a tensor of "
                              "shape (2, 3) with block_size 2 on axis 1")
    with pytest.raises(ConfigError) as err:
        QuantParams(np.float32([1, 2]), [0, 0, 0], INT8, axis=0)
    assert str(err.value) == "zero point shape (3,) does not match scale shape (2,)"


def test_bad_values():
    params = QuantParams(np.float32(1.0), 0, INT8)
    with pytest.raises(ConfigError) as err:
        quantize(np.float32([[0, 1], [np.nan, 2]]), params)
    assert str(err.value) == "quantize input[1, 0] is NaN, which has no quantized value"
    with pytest.raises(ConfigError) as err:
        quantize(np.array([True]), params)
    assert str(err.value) == ("quantize input must be a real (float or integer) array, "
                              "not dtype bool")
    with pytest.raises(QsimOverflowError) as err:
        dequantize(np.array([0, 128]), params)
    assert str(err.value) == ("1 element of dequantize input overflow int8 [-128, 127]: "
                              "dequantize input[1] = 128 is 1 above the int8 maximum 127")
    with pytest.raises(ConfigError) as err:
        quantize(np.float32([1.0]), params, "nearest")
    assert str(err.value) == ("rounding mode must be one of half_even, half_away, half_up, "
                              "half_down, floor, ceil, toward_zero, not 'nearest'")
    with pytest.raises(ConfigError) as err:
        dequantize(np.float32([1.0]), params)
    assert str(err.value) == "dequantize input must be an integer array, not dtype float32"


# ------------------------------------------------------------------ docs/quantization.md

def test_oracle_helpers_agree_with_numpy(rng):
    """Guard the oracles: the float32/float16 rounding of a Fraction equals numpy's casts."""
    for v in rng.standard_normal(200) * 10.0 ** rng.integers(-40, 40, 200):
        assert f32(Fraction(float(v))) == Fraction(float(np.float32(v)))
    for v in rng.standard_normal(200) * 10.0 ** rng.integers(-6, 4, 200):
        assert f16(Fraction(float(v))) == Fraction(float(np.float16(v)))
    assert f32(Fraction(2) ** 128) == math.inf and f16(Fraction(70000)) == math.inf
