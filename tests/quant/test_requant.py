"""Requantization semantics against exact oracles, pinned edge cases, and the real engines.

The oracles are plain Python: integers and ``fractions.Fraction`` for exact values, a
round-to-nearest-even float32 of a Fraction for every float32 operation, and Python floats
(IEEE doubles) where an engine computes in double. Each gemmlowp/TFLite primitive has two
oracles: a literal transcription of the C source (C's truncating division, ``>>``, ``&``)
and the rounding rule it amounts to on the exact rational.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsim.errors import ConfigError, QsimOverflowError
from qsim.numerics import INT8, INT16, UINT8, IntFormat, Rounding, int_matmul
from qsim.quant.requant import (
    FixedPointRequantizer,
    Semantics,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from tests.quant.test_quant_ops import f32, round_fraction

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)

int32s = st.one_of(st.integers(INT32_MIN, INT32_MAX), st.integers(-70000, 70000),
                   st.sampled_from([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX]))


# ------------------------------------------------------------------ oracles (Python ints)

def c_div(n: int, d: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(n) // abs(d)
    return q if (n >= 0) == (d > 0) else -q


def srdhm_c(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return c_div(ab + nudge, 1 << 31)


def rdbpot_c(x: int, e: int) -> int:
    mask = (1 << e) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if (x & mask) > threshold else 0)


def quantize_multiplier_oracle(m: float, single_rounding: bool = False) -> tuple[int, int]:
    if m == 0:
        return 0, 0
    exact = Fraction(m)
    e = exact.numerator.bit_length() - exact.denominator.bit_length()
    while exact / Fraction(2) ** e >= 1:
        e += 1
    while exact / Fraction(2) ** e < Fraction(1, 2):
        e -= 1
    fixed = round_fraction(exact / Fraction(2) ** e * (1 << 31), Rounding.HALF_AWAY)
    if fixed == 1 << 31:
        fixed, e = fixed // 2, e + 1
    if e < -31:
        return 0, 0
    if single_rounding and e > 30:
        return (1 << 31) - 1, 30
    return fixed, e


def mbqm_oracle(x: int, qm: int, shift: int, single_rounding: bool) -> int | None:
    """TFLite MultiplyByQuantizedMultiplier; None where TFLite's int32 arithmetic overflows."""
    if single_rounding:
        total = 31 - shift
        result = (x * qm + (1 << (total - 1))) >> total
        return result if INT32_MIN <= result <= INT32_MAX else None
    shifted = x * (1 << max(shift, 0))
    if not INT32_MIN <= shifted <= INT32_MAX:
        return None
    return rdbpot_c(srdhm_c(shifted, qm), max(-shift, 0))


def clamp(v: int, fmt: IntFormat) -> int:
    return min(max(v, fmt.min), fmt.max)


def multiplier32(s_in: float, s_w: float, s_out: float) -> Fraction:
    """C++ ``float * float / float``: two float32 roundings."""
    return f32(f32(Fraction(s_in) * Fraction(s_w)) / Fraction(s_out))


def oracle(semantics: str, acc: int, s_in: float, s_w: float, s_out: float, zp: int,
           fmt: IntFormat) -> int | None:
    if semantics == "onnx":
        scaled = float(Fraction(acc) * multiplier32(s_in, s_w, s_out))  # one float64 rounding
        return clamp(round(scaled + float(zp)), fmt)  # float64 add, then rint (half even)
    if semantics in ("onnxruntime", "pytorch-fbgemm"):
        v = f32(f32(Fraction(acc)) * multiplier32(s_in, s_w, s_out))
        if semantics == "onnxruntime":
            v = min(max(v, f32(Fraction(fmt.min - zp))), f32(Fraction(fmt.max - zp)))
            return round(v) + zp
        # fbgemm's cvtps2dq: a product outside int32 becomes the "integer indefinite" -2**31
        rounded = round(v) if -(2 ** 31) <= v < 2 ** 31 else INT32_MIN
        return clamp(rounded + zp, fmt)
    real = float(Fraction(s_in) * Fraction(s_w) / Fraction(s_out))  # double(in)*double(w) is exact
    if semantics == "fixed-point":
        qm, shift = quantize_multiplier_oracle(real)
        exact = Fraction(acc * qm, 1 << (31 - shift))
        return clamp(round_fraction(exact, Rounding.HALF_UP) + zp, fmt)
    single = semantics == "tflite-single-rounding"
    qm, shift = quantize_multiplier_oracle(real, single)
    scaled = mbqm_oracle(acc, qm, shift, single)
    return None if scaled is None else clamp(scaled + zp, fmt)


# ------------------------------------------------------------------ Semantics

def test_semantics_parse():
    assert Semantics.parse("tflite-single-rounding") is Semantics.TFLITE_SINGLE_ROUNDING
    assert Semantics.parse(Semantics.ONNX) is Semantics.ONNX
    assert [s.value for s in Semantics] == ["onnx", "onnxruntime", "litert", "litert-reference",
                                            "litert-optimized", "tflite-single-rounding",
                                            "pytorch-fbgemm", "fixed-point"]
    assert Semantics.parse("tflite") is Semantics.LITERT_REFERENCE
    with pytest.raises(ConfigError) as err:
        Semantics.parse("ort")
    assert str(err.value) == ("requantization semantics must be one of onnx, onnxruntime, "
                              "litert, litert-reference, litert-optimized, tflite-single-rounding, pytorch-fbgemm, fixed-point"
                              " (or tflite, an alias of litert-reference), not 'ort'")


# ------------------------------------------------------------------ QuantizeMultiplier

@pytest.mark.parametrize("m, expected", [
    (0.0, (0, 0)),
    (0.5, (1 << 30, 0)),
    (1.0, (1 << 30, 1)),
    (0.75, (3 << 29, 0)),
    (2.0 ** -31, (1 << 30, -30)),
    (2.0 ** -32, (1 << 30, -31)),                     # the smallest shift kept
    (2.0 ** -33, (0, 0)),                             # shift -32 < -31: flushed to zero
    (2.0 ** -33 * (1 - 2.0 ** -40), (0, 0)),
    (2.0 ** -32 * (1 - 2.0 ** -40), (1 << 30, -31)),  # frexp gives -32, the carry rescues it
    (1 - 2.0 ** -33, (1 << 30, 1)),                   # q * 2**31 rounds up to 2**31: carry
    ((2 ** 31 - 0.5) / 2 ** 31, (1 << 30, 1)),        # exact tie, half away from zero: carry
    ((2 ** 31 - 1.5) / 2 ** 31, ((1 << 31) - 1, 0)),  # exact tie rounding to INT32_MAX
    (0.1, (1717986918, -3)),
    (2.0 ** 40, (1 << 30, 41)),
])
def test_quantize_multiplier_pinned(m, expected):
    qm, shift = quantize_multiplier(m)
    assert (int(qm), int(shift)) == expected
    assert qm.dtype == shift.dtype == np.int64


def test_quantize_multiplier_single_rounding_saturates_shift():
    def pair(m, single):
        return [int(v) for v in quantize_multiplier(m, single_rounding=single)]

    assert pair(2.0 ** 31, True) == [2 ** 31 - 1, 30]
    assert pair(2.0 ** 29, True) == [2 ** 30, 30]
    assert pair(2.0 ** 31, False) == [2 ** 30, 32]


def test_quantize_multiplier_is_vectorised():
    qm, shift = quantize_multiplier(np.array([[0.5, 0.0], [0.75, 2.0 ** -40]]))
    assert qm.tolist() == [[1 << 30, 0], [3 << 29, 0]]
    assert shift.tolist() == [[0, 0], [0, 0]]


@PROPERTY
@given(st.one_of(st.floats(min_value=0, max_value=2.0 ** 40, allow_nan=False),
                 st.floats(min_value=2.0 ** -36, max_value=2.0 ** -28)),
       st.booleans())
def test_quantize_multiplier_matches_exact_oracle(m, single):
    qm, shift = quantize_multiplier(m, single_rounding=single)
    assert (int(qm), int(shift)) == quantize_multiplier_oracle(m, single)


@pytest.mark.parametrize("m, message", [
    (-0.5, "real multiplier must be a finite non-negative number, not -0.5"),
    (float("nan"), "real multiplier must be a finite non-negative number, not nan"),
    (float("inf"), "real multiplier must be a finite non-negative number, not inf"),
])
def test_quantize_multiplier_rejects(m, message):
    with pytest.raises(ConfigError) as err:
        quantize_multiplier(m)
    assert str(err.value) == message


# ------------------------------------------------------------------ SRDHM and RDBPOT

@pytest.mark.parametrize("a, b, expected", [
    (INT32_MIN, INT32_MIN, INT32_MAX),           # the one saturating case
    (INT32_MIN, INT32_MAX, -INT32_MAX),          # -2**31 * (2**31 - 1) / 2**31 exactly
    (INT32_MAX, INT32_MAX, INT32_MAX - 1),
    (1 << 30, 1, 1),                             # +0.5 -> 1
    (-(1 << 30), 1, 0),                          # -0.5 -> 0: ties go toward +inf
    (3 << 29, 2, 2),                             # +1.5 -> 2
    (-(3 << 29), 2, -1),                         # -1.5 -> -1
    ((1 << 30) + 1, 1, 1),
    (-(1 << 30) - 1, 1, -1),                     # just beyond -0.5 -> -1
    (0, INT32_MIN, 0),
])
def test_srdhm_pinned(a, b, expected):
    assert int(saturating_rounding_doubling_high_mul(a, b)) == expected
    assert srdhm_c(a, b) == expected


@PROPERTY
@given(int32s, int32s)
def test_srdhm_matches_c_and_is_round_half_up(a, b):
    got = int(saturating_rounding_doubling_high_mul(a, b))
    assert got == srdhm_c(a, b)
    if not a == b == INT32_MIN:
        assert got == round_fraction(Fraction(a * b, 1 << 31), Rounding.HALF_UP)


@pytest.mark.parametrize("x, e, expected", [
    (12345, 0, 12345), (-12345, 0, -12345), (INT32_MIN, 0, INT32_MIN),
    (INT32_MIN, 31, -1), (INT32_MAX, 31, 1), (1 << 30, 31, 1), (-(1 << 30), 31, -1),
    ((1 << 30) - 1, 31, 0), (-(1 << 30) + 1, 31, 0),
    (5, 1, 3), (-5, 1, -3), (3, 1, 2), (-3, 1, -2), (-4, 1, -2), (7, 2, 2), (-7, 2, -2),
])
def test_rdbpot_pinned(x, e, expected):
    assert int(rounding_divide_by_pot(x, e)) == expected
    assert rdbpot_c(x, e) == expected


@PROPERTY
@given(int32s, st.integers(0, 31))
def test_rdbpot_matches_c_and_is_round_half_away(x, e):
    got = int(rounding_divide_by_pot(x, e))
    assert got == rdbpot_c(x, e)
    assert got == round_fraction(Fraction(x, 1 << e), Rounding.HALF_AWAY)


def test_rdbpot_per_channel_exponents():
    x = np.array([[5, 5, 5], [-5, -5, -5]])
    assert rounding_divide_by_pot(x, np.array([0, 1, 2])).tolist() == [[5, 3, 1], [-5, -3, -1]]


def test_block_errors():
    with pytest.raises(QsimOverflowError) as err:
        saturating_rounding_doubling_high_mul(1 << 31, 1)
    assert str(err.value) == ("1 element of a overflow int32 [-2147483648, 2147483647]: "
                              "a = 2147483648 is 1 above the int32 maximum 2147483647")
    with pytest.raises(ConfigError) as err:
        rounding_divide_by_pot(1, 32)
    assert str(err.value) == "exponent must be between 0 and 31, not 32"
    with pytest.raises(ConfigError) as err:
        rounding_divide_by_pot(1.5, 1)
    assert str(err.value) == "x must be integers, not dtype float64"


# ------------------------------------------------------------------ MultiplyByQuantizedMultiplier

@PROPERTY
@given(int32s, st.integers(0, INT32_MAX), st.integers(-31, 30), st.booleans())
def test_mbqm_matches_tflite_source(x, qm, shift, single):
    expected = mbqm_oracle(x, qm, shift, single)
    if expected is None:
        with pytest.raises(QsimOverflowError):
            multiply_by_quantized_multiplier(x, qm, shift, single)
    else:
        assert int(multiply_by_quantized_multiplier(x, qm, shift, single)) == expected


@PROPERTY
@given(int32s, st.integers(1 << 30, INT32_MAX), st.integers(-31, 0))
def test_single_rounding_is_exact_half_up(x, qm, shift):
    got = int(multiply_by_quantized_multiplier(x, qm, shift, single_rounding=True))
    assert got == round_fraction(Fraction(x * qm, 1 << (31 - shift)), Rounding.HALF_UP)


@pytest.mark.parametrize("x, qm, shift, single, expected", [
    (100, 1 << 30, 0, False, 50), (100, 1 << 30, 0, True, 50),
    (-3, 1 << 30, 0, False, -1), (-3, 1 << 30, 0, True, -1),       # -1.5: SRDHM half up
    (3, 1 << 30, 0, False, 2), (3, 1 << 30, 0, True, 2),
    (-5, 1 << 30, -1, False, -1), (-5, 1 << 30, -1, True, -1),     # -1.25
    (-6, 1 << 30, -1, False, -2), (-6, 1 << 30, -1, True, -1),     # -1.5: away vs up
    (-7, 3 << 29, -1, False, -3), (-7, 3 << 29, -1, True, -3),     # -2.625 (-5.25, -2.5)
    (INT32_MIN, 1 << 30, -31, False, -1), (INT32_MIN, 1 << 30, -31, True, 0),  # -0.5, shift 31
    (INT32_MAX, INT32_MAX, -31, False, 1), (INT32_MAX, INT32_MAX, -31, True, 1),
    (1 << 20, 1 << 30, 10, False, 1 << 29), (1 << 20, 1 << 30, 10, True, 1 << 29),
])
def test_mbqm_pinned(x, qm, shift, single, expected):
    assert int(multiply_by_quantized_multiplier(x, qm, shift, single)) == expected


def test_double_rounding_differs_from_single_rounding():
    # x * M = 5 / 4 = 1.25 exactly. Double: SRDHM(5, 2**30) = 2.5 rounds (half up) to 3, then
    # RDBPOT(3, 1) = 1.5 rounds (half away) to 2. Single: floor(1.25 + 0.5) = 1.
    assert int(multiply_by_quantized_multiplier(5, 1 << 30, -1)) == 2
    assert int(multiply_by_quantized_multiplier(5, 1 << 30, -1, single_rounding=True)) == 1


def test_mbqm_errors():
    with pytest.raises(QsimOverflowError) as err:
        multiply_by_quantized_multiplier(np.array([1, 1 << 28]), 1 << 30, 4)
    assert str(err.value) == ("1 element of x * 2**left_shift overflow int32 "
                              "[-2147483648, 2147483647]: x * 2**left_shift[1] = 4294967296 is "
                              "2147483649 above the int32 maximum 2147483647")
    with pytest.raises(QsimOverflowError) as err:
        multiply_by_quantized_multiplier(1 << 30, 1 << 30, 4, single_rounding=True)
    assert str(err.value).startswith("1 element of MultiplyByQuantizedMultiplier result "
                                     "overflow int32")
    with pytest.raises(ConfigError) as err:
        multiply_by_quantized_multiplier(1, 1 << 31, 0)
    assert str(err.value) == "quantized multiplier must be between 0 and 2147483647, not 2147483648"
    with pytest.raises(ConfigError) as err:
        multiply_by_quantized_multiplier(1, 1 << 30, 31)
    assert str(err.value) == "shift must be between -31 and 30, not 31"


# ------------------------------------------------------------------ requantize vs oracles

SEMANTICS = [s.value for s in Semantics]
# requantize() under the LiteRT semantics is one of the older definitions: XNNPACK's float32
# requantization is ONNX Runtime's; the builtin kernels' (for CONV_2D) is gemmlowp's.
ORACLE = {"litert": "onnxruntime", "litert-reference": "tflite", "litert-optimized": "tflite"}
FORMATS = [INT8, UINT8, INT16, IntFormat(4, True), IntFormat(4, False)]


@st.composite
def requant_cases(draw):
    fmt = draw(st.sampled_from(FORMATS))
    channels = draw(st.integers(1, 4))
    s_in = draw(st.floats(min_value=2.0 ** -10, max_value=1.0, width=32))
    s_w = draw(st.lists(st.floats(min_value=2.0 ** -10, max_value=1.0, width=32),
                        min_size=channels, max_size=channels))
    s_out = draw(st.floats(min_value=2.0 ** -10, max_value=20.0, width=32))
    zp = draw(st.integers(fmt.min, fmt.max))
    acc = draw(st.lists(st.lists(int32s, min_size=channels, max_size=channels),
                        min_size=1, max_size=6))
    return fmt, s_in, s_w, s_out, zp, acc


@pytest.mark.parametrize("semantics", SEMANTICS)
@PROPERTY
@given(case=requant_cases())
def test_requantize_matches_its_definition(semantics, case):
    fmt, s_in, s_w, s_out, zp, acc = case
    expected = [[oracle(ORACLE.get(semantics, semantics), a, s_in, w, s_out, zp, fmt) for a, w in zip(row, s_w)]
                for row in acc]
    args = (np.array(acc), np.float32(s_in), np.float32(s_w), np.float32(s_out), zp, fmt)
    if any(v is None for row in expected for v in row):
        with pytest.raises(QsimOverflowError):
            requantize(*args, semantics)
        return
    got = requantize(*args, semantics)
    assert got.dtype == np.int64
    assert got.tolist() == expected


TIE_MODES = {  # how each semantics breaks an exact tie of acc * M, for M = 1/2 and M = 1/4
    "onnx": (Rounding.HALF_EVEN, Rounding.HALF_EVEN),
    "onnxruntime": (Rounding.HALF_EVEN, Rounding.HALF_EVEN),
    "pytorch-fbgemm": (Rounding.HALF_EVEN, Rounding.HALF_EVEN),
    # M = 1/2 is qm = 2**30, shift 0: only SRDHM rounds (half up). M = 1/4 has shift -1:
    # SRDHM is exact and RDBPOT rounds (half away).
    "tflite": (Rounding.HALF_UP, Rounding.HALF_AWAY),
    "litert-reference": (Rounding.HALF_UP, Rounding.HALF_AWAY),
    "litert-optimized": (Rounding.HALF_UP, Rounding.HALF_AWAY),
    "litert": (Rounding.HALF_EVEN, Rounding.HALF_EVEN),
    "tflite-single-rounding": (Rounding.HALF_UP, Rounding.HALF_UP),
    "fixed-point": (Rounding.HALF_UP, Rounding.HALF_UP),
}


@pytest.mark.parametrize("semantics", SEMANTICS)
@PROPERTY
@given(k=st.integers(-60, 60))
def test_requantize_exact_ties(semantics, k):
    """acc * M = k + 1/2 exactly, with M exact in every engine: the tie rule decides."""
    half, quarter = TIE_MODES[semantics]
    for scale, acc, mode in ((0.5, 2 * k + 1, half), (0.25, 4 * k + 2, quarter)):
        value = int(requantize(np.array([acc]), 1.0, scale, 1.0, 0, INT16, semantics)[0])
        assert value == round_fraction(Fraction(2 * k + 1, 2), mode)


def test_tflite_tie_rounding_is_away_at_shift_but_up_without():
    # M = 1/2 has shift 0 (qm = 2**30): only SRDHM rounds, so -0.5 goes to 0 (half up).
    half = requantize(np.array([-1, 1, -3]), 1.0, 0.5, 1.0, 0, INT8, "tflite")
    assert half.tolist() == [0, 1, -1]
    # M = 1/4 has shift -1: SRDHM is exact (-0.5 * 2**31 ...), RDBPOT rounds away.
    quarter = requantize(np.array([-2, 2, -6]), 1.0, 0.25, 1.0, 0, INT8, "tflite")
    assert quarter.tolist() == [-1, 1, -2]


NEAR_TIE = dict(acc=-3889, a_scale=np.float32(0.05), b_scale=np.float32(0.02),
                y_scale=np.uint32(1035409550).view(np.float32))


def test_near_tie_preconditions():
    """float32 turns the non-tie -43.49999959953129 into the tie -43.5."""
    m = NEAR_TIE["a_scale"] * NEAR_TIE["b_scale"] / NEAR_TIE["y_scale"]
    assert m.dtype == np.float32
    exact = Fraction(NEAR_TIE["acc"]) * Fraction(float(m))
    assert float(exact) == -43.49999959953129
    assert np.float32(NEAR_TIE["acc"]) * m == np.float32(-43.5)


@pytest.mark.parametrize("semantics, expected", [
    ("onnx", -43), ("onnxruntime", -44), ("pytorch-fbgemm", -44),
    ("tflite", -44), ("tflite-single-rounding", -43), ("fixed-point", -43),
])
def test_near_tie_pinned_per_semantics(semantics, expected):
    got = requantize(np.array([NEAR_TIE["acc"]]), NEAR_TIE["a_scale"], NEAR_TIE["b_scale"],
                     NEAR_TIE["y_scale"], 0, INT8, semantics)
    assert got.tolist() == [expected]


def test_per_channel_along_axis_1_of_nchw(rng):
    acc = rng.integers(-50000, 50000, (2, 3, 4, 5))
    w = np.float32([0.01, 0.02, 0.005])
    for semantics in SEMANTICS:
        got = requantize(acc, 0.1, w, 0.5, 3, INT8, semantics, channel_axis=1)
        for c in range(3):
            alone = requantize(acc[:, c], 0.1, w[c], 0.5, 3, INT8, semantics)
            np.testing.assert_array_equal(got[:, c], alone)


def test_fixed_point_is_tflite_single_rounding(rng):
    acc = np.concatenate([rng.integers(INT32_MIN, INT32_MAX, (20000, 8), endpoint=True),
                          rng.integers(-4096, 4096, (20000, 8))])
    w = rng.uniform(1e-4, 0.05, 8).astype(np.float32)
    for s_in, s_out, fmt, zp in ((0.02, 0.1, INT8, -5), (0.5, 0.4, UINT8, 128),
                                 (1e-3, 3.0, INT16, 0)):
        fixed = requantize(acc, s_in, w, s_out, zp, fmt, "fixed-point")
        single = requantize(acc, s_in, w, s_out, zp, fmt, "tflite-single-rounding")
        np.testing.assert_array_equal(fixed, single)


def test_fixed_point_defines_what_tflite_single_rounding_refuses():
    # M = 2.5: acc * M leaves int32 before the zero point is added; TFLite's DCHECK fails
    # there, the hardware path simply saturates at the output format.
    acc = np.array([1 << 30, -(1 << 30), 100])
    assert requantize(acc, 1.0, 2.5, 1.0, 0, INT8, "fixed-point").tolist() == [127, -128, 127]
    with pytest.raises(QsimOverflowError):
        requantize(acc, 1.0, 2.5, 1.0, 0, INT8, "tflite-single-rounding")
    assert requantize(acc[2:], 1.0, 2.5, 1.0, 0, INT16, "tflite-single-rounding").tolist() == [250]


def test_pytorch_fbgemm_equals_onnxruntime_for_int32_bias_in_acc(rng):
    acc = np.concatenate([rng.integers(INT32_MIN, INT32_MAX, (20000, 8), endpoint=True),
                          rng.integers(-20000, 20000, (20000, 8))])
    w = rng.uniform(1e-4, 0.05, 8).astype(np.float32)
    for s_in, s_out, fmt, zp in ((0.02, 0.1, INT8, -5), (0.5, 0.01, UINT8, 128)):
        fbgemm = requantize(acc, s_in, w, s_out, zp, fmt, "pytorch-fbgemm")
        ort = requantize(acc, s_in, w, s_out, zp, fmt, "onnxruntime")
        # equal while f32(acc) * M stays inside int32; beyond it fbgemm's cvtps2dq gives -2**31
        product = acc.astype(np.float32) * ((np.float32(s_in) * w) / np.float32(s_out))
        inside = np.abs(product.astype(np.float64)) < 2.0 ** 31
        np.testing.assert_array_equal(fbgemm[inside], ort[inside])
        assert np.all(fbgemm[~inside] == fmt.min)
        assert (~inside).sum() > 0 or s_in == 0.02


def test_disagreement_rates_are_small_but_nonzero(rng):
    """Measured, not assumed: how often engines differ on realistic int8 accumulators."""
    acc = rng.integers(-40000, 40000, (50000, 16))
    w = rng.uniform(0.002, 0.02, 16).astype(np.float32)
    results = {s: requantize(acc, 0.03, w, 0.2, 0, INT16, s) for s in SEMANTICS}
    rate = {s: float(np.mean(results[s] != results["onnx"])) for s in SEMANTICS}
    print(f"\nfraction differing from onnx: {rate}")
    assert rate["onnx"] == 0.0
    assert rate["fixed-point"] == rate["tflite-single-rounding"]
    assert 0 < rate["litert-reference"] < 0.01
    assert rate["onnxruntime"] < 1e-3
    assert np.array_equal(results["litert"], results["onnxruntime"])
    assert np.all(np.abs(results["litert-reference"] - results["onnx"]) <= 1)


# ------------------------------------------------------------------ FixedPointRequantizer

def test_fixed_point_requantizer_fields_and_call():
    rq = FixedPointRequantizer.from_scales(0.05, np.float32([0.02, 0.04]), 0.1, -3, "int8")
    # float32 scales: M = 0.009999999776... = 0.64 * 2**-6 (and twice that), qm = 0.64 * 2**31.
    assert rq.multiplier.tolist() == [1374389504, 1374389504]
    assert rq.shift.tolist() == [-6, -5]
    assert rq.out_fmt == INT8 and rq.out_zero_point == -3 and rq.rounding is Rounding.HALF_UP
    acc = np.array([[100, 100], [-100, -100], [5, 5], [-5, -5], [10000, -10000]])
    # M = 0.01 and 0.02: 1.0 -> 1, -1 -> -1, 0.05 -> 0, 0.1 -> 0, then + zp and clamp.
    assert rq(acc).tolist() == [[-2, -1], [-4, -5], [-3, -3], [-3, -3], [97, -128]]
    even = FixedPointRequantizer(rq.multiplier, rq.shift, -3, INT8, "half_even")
    assert even.rounding is Rounding.HALF_EVEN


def test_fixed_point_requantizer_is_half_up_on_exact_ties():
    rq = FixedPointRequantizer(np.array(1 << 30), np.array(0), 0, INT16)  # M = 1/2
    assert rq(np.array([-3, -1, 1, 3])).tolist() == [-1, 0, 1, 2]
    rq = FixedPointRequantizer(np.array(1 << 30), np.array(0), 0, INT16, Rounding.FLOOR)
    assert rq(np.array([-3, -1, 1, 3])).tolist() == [-2, -1, 0, 1]


def test_fixed_point_shift_extremes():
    # shift 0: right shift 31; shift -31: right shift 62; shift 30: right shift 1.
    assert FixedPointRequantizer(np.array((1 << 31) - 1), np.array(0), 0, "int32")(
        np.array([INT32_MIN, INT32_MAX])).tolist() == [INT32_MIN + 1, INT32_MAX - 1]
    assert FixedPointRequantizer(np.array((1 << 31) - 1), np.array(-31), 0, "int8")(
        np.array([-(1 << 32), (1 << 32) - 1])).tolist() == [-2, 2]
    assert FixedPointRequantizer(np.array(1 << 30), np.array(30), 0, "int32")(
        np.array([3, -3])).tolist() == [3 << 29, -(3 << 29)]


def test_fixed_point_accepts_33_bit_accumulators_only():
    rq = FixedPointRequantizer(np.array(1 << 30), np.array(-20), 0, INT16)
    assert rq(np.array([-(1 << 32), (1 << 32) - 1])).tolist() == [-2048, 2048]
    with pytest.raises(QsimOverflowError) as err:
        rq(np.array([1 << 32]))
    assert str(err.value) == ("1 element of acc overflow int33 [-4294967296, 4294967295]: "
                              "acc[0] = 4294967296 is 1 above the int33 maximum 4294967295")


@pytest.mark.parametrize("kwargs, message", [
    (dict(multiplier=np.array([1 << 31]), shift=np.array([0])),
     "multiplier must be between 0 and 2147483647, not 2147483648"),
    (dict(multiplier=np.array([1 << 30]), shift=np.array([31])),
     "shift must be between -31 and 30, not 31"),
    (dict(multiplier=np.array([1 << 30, 1 << 30]), shift=np.array([0])),
     "shift shape (1,) does not match multiplier shape (2,)"),
    (dict(multiplier=np.ones((2, 2), np.int64), shift=np.ones((2, 2), np.int64)),
     "multiplier must be a scalar or 1-D (one per output channel), not shape (2, 2)"),
    (dict(multiplier=np.array([1.5]), shift=np.array([0])),
     "multiplier must be integers, not dtype float64"),
    (dict(multiplier=np.array([1]), shift=np.array([0]), rounding="up"),
     "rounding mode must be one of half_even, half_away, half_up, half_down, floor, ceil, "
     "toward_zero, not 'up'"),
])
def test_fixed_point_requantizer_rejects(kwargs, message):
    with pytest.raises(ConfigError) as err:
        FixedPointRequantizer(out_zero_point=0, out_fmt=INT8, **kwargs)
    assert str(err.value) == message


def test_fixed_point_from_scales_rejects_huge_multiplier():
    with pytest.raises(ConfigError) as err:
        FixedPointRequantizer.from_scales(1.0, [1.0, 2.0 ** 30], 1.0, 0, INT8)
    assert str(err.value) == ("real multiplier 1073741824.0 (channel 1) needs shift 31; the "
                              "fixed-point requantizer supports shifts up to 30 (multipliers "
                              "below 2**30)")


# ------------------------------------------------------------------ requantize bad input

@pytest.mark.parametrize("kwargs, message", [
    (dict(in_scale=0.0), "in_scale = 0.0 is not a positive finite number"),
    (dict(out_scale=-1.0), "out_scale = -1.0 is not a positive finite number"),
    (dict(weight_scale=np.float32([0.5, -0.5, 0.5])),
     "weight_scale[1] = -0.5 is not a positive finite number"),
    (dict(weight_scale=np.float32([0.5, np.inf, 0.5])),
     "weight_scale[1] = inf is not a positive finite number"),
    (dict(in_scale=[0.1, 0.2]), "in_scale must be a scalar, not shape (2,)"),
    (dict(weight_scale=np.ones((3, 1))),
     "weight_scale must be a scalar or 1-D (one per output channel), not shape (3, 1)"),
    (dict(weight_scale=np.float32([0.5, 0.5])),
     "weight_scale has 2 entries but axis -1 of acc shape (2, 3) has 3"),
    (dict(channel_axis=2), "channel_axis 2 is out of range for acc of shape (2, 3)"),
    (dict(out_zero_point=128), "out_zero_point 128 is outside int8 [-128, 127]"),
    (dict(out_zero_point=1.5), "out_zero_point must be one integer, not 1.5"),
    (dict(out_fmt="int1"),
     "out_fmt: IntFormat bits must be between 2 and 64 for signed formats, not 1"),
    (dict(out_fmt="int64"), "out_fmt must be at most 32 bits wide, not int64"),
    (dict(out_fmt="float8"), "out_fmt: integer format must be a name like 'int8' or 'uint4', "
                             "not 'float8'"),
    (dict(semantics="gemmlowp"), "requantization semantics must be one of onnx, onnxruntime, "
                                 "litert, litert-reference, litert-optimized, tflite-single-rounding, pytorch-fbgemm, fixed-point"
                                 " (or tflite, an alias of litert-reference), not 'gemmlowp'"),
    (dict(acc=np.ones((2, 3))), "acc must be integers, not dtype float64"),
])
@pytest.mark.parametrize("semantics", ["onnx", "tflite", "fixed-point"])
def test_requantize_rejects(kwargs, message, semantics):
    args = dict(acc=np.zeros((2, 3), np.int32), in_scale=0.1,
                weight_scale=np.float32([0.5, 0.5, 0.5]), out_scale=0.2, out_zero_point=0,
                out_fmt=INT8, semantics=semantics)
    args.update(kwargs)
    with pytest.raises(ConfigError) as err:
        requantize(**args)
    assert str(err.value) == message


def test_requantize_rejects_accumulators_beyond_int32():
    with pytest.raises(QsimOverflowError) as err:
        requantize(np.array([1, 1 << 31]), 0.1, 0.1, 0.1, 0, INT8, "onnxruntime")
    assert str(err.value) == ("1 element of acc overflow int32 [-2147483648, 2147483647]: "
                              "acc[1] = 2147483648 is 1 above the int32 maximum 2147483647")


# ------------------------------------------------------------------ the real engines

def _qlinear_matmul_model(a_type: int, b_type: int, y_type: int, m: int, k: int, n: int):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    per_col = [n]
    inputs = [
        helper.make_tensor_value_info("a", a_type, [m, k]),
        helper.make_tensor_value_info("a_scale", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("a_zero_point", a_type, []),
        helper.make_tensor_value_info("b", b_type, [k, n]),
        helper.make_tensor_value_info("b_scale", TensorProto.FLOAT, per_col),
        helper.make_tensor_value_info("b_zero_point", b_type, per_col),
        helper.make_tensor_value_info("y_scale", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("y_zero_point", y_type, []),
    ]
    node = helper.make_node("QLinearMatMul", [i.name for i in inputs], ["y"])
    graph = helper.make_graph([node], "qlinear_matmul", inputs,
                              [helper.make_tensor_value_info("y", y_type, [m, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def _run_engines(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    from onnx.reference import ReferenceEvaluator

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return (session.run(None, feeds)[0].astype(np.int64),
            ReferenceEvaluator(model).run(None, feeds)[0].astype(np.int64))


def test_near_tie_in_onnxruntime_and_the_onnx_reference():
    """The NUMERICS.md case: exact -43.49999959953129, float32 -43.5: ORT -44, reference -43."""
    TensorProto = pytest.importorskip("onnx").TensorProto  # noqa: N806

    a = np.array([[-127, -79]], np.int8)
    b = np.array([[30], [1]], np.int8)
    acc = int_matmul(a, b)
    assert acc.tolist() == [[NEAR_TIE["acc"]]]
    feeds = dict(a=a, a_scale=np.array(NEAR_TIE["a_scale"]), a_zero_point=np.array(0, np.int8),
                 b=b, b_scale=np.array([NEAR_TIE["b_scale"]]), b_zero_point=np.zeros(1, np.int8),
                 y_scale=np.array(NEAR_TIE["y_scale"]), y_zero_point=np.array(0, np.int8))
    model = _qlinear_matmul_model(TensorProto.INT8, TensorProto.INT8, TensorProto.INT8, 1, 2, 1)
    by_ort, by_reference = _run_engines(model, feeds)
    assert by_ort.tolist() == [[-44]]
    assert by_reference.tolist() == [[-43]]
    args = (acc, NEAR_TIE["a_scale"], NEAR_TIE["b_scale"], NEAR_TIE["y_scale"], 0, INT8)
    assert requantize(*args, "onnxruntime").tolist() == by_ort.tolist()
    assert requantize(*args, "onnx").tolist() == by_reference.tolist()


# float32(acc) rounds 770623843 up to 770623872 before the float32 product: ORT gives 95
# (94.50000763), while rounding the exact 94.50000191 to float32 first would give the tie 94.5.
BIG_ACC = dict(acc=770623843, m=np.uint32(872655797).view(np.float32))


def test_onnxruntime_converts_acc_to_float32_first():
    acc, m = np.array([BIG_ACC["acc"]]), BIG_ACC["m"]
    assert float(np.float32(acc[0])) == 770623872.0
    assert requantize(acc, 1.0, m, 1.0, 0, INT8, "onnxruntime").tolist() == [95]
    assert requantize(acc, 1.0, m, 1.0, 0, INT8, "onnx").tolist() == [95]
    exact_then_float32 = np.float32(BIG_ACC["acc"] * float(m))
    assert exact_then_float32 == np.float32(94.5)  # what a float64-then-float32 model would see


def test_large_accumulator_in_onnxruntime_and_the_reference():
    TensorProto = pytest.importorskip("onnx").TensorProto  # noqa: N806

    k = 47778
    a = np.array([[127] * k + [127, 35]], np.int8)
    b = np.array([[127] * k + [98, 1]], np.int8).T
    assert int_matmul(a, b).tolist() == [[BIG_ACC["acc"]]]
    feeds = dict(a=a, a_scale=np.array(np.float32(1)), a_zero_point=np.array(0, np.int8),
                 b=b, b_scale=np.array([BIG_ACC["m"]]), b_zero_point=np.zeros(1, np.int8),
                 y_scale=np.array(np.float32(1)), y_zero_point=np.array(0, np.int8))
    model = _qlinear_matmul_model(TensorProto.INT8, TensorProto.INT8, TensorProto.INT8, 1, k + 2, 1)
    by_ort, by_reference = _run_engines(model, feeds)
    assert by_ort.tolist() == by_reference.tolist() == [[95]]


@pytest.mark.parametrize("signed_a", [True, False])
def test_qlinear_matmul_random_matches_both_engines(rng, signed_a):
    """Per-column weight scales, nonzero zero points; u8 activations use weights in [-64, 63]
    so that the engine's int16 pair sums (vpmaddubsw) cannot saturate."""
    TensorProto = pytest.importorskip("onnx").TensorProto  # noqa: N806

    m, k, n = 48, 24, 16
    if signed_a:
        a = rng.integers(-128, 128, (m, k)).astype(np.int8)
        a_zp, a_type, y_type, y_fmt = np.int8(-3), TensorProto.INT8, TensorProto.INT8, INT8
        b = rng.integers(-127, 128, (k, n)).astype(np.int8)
    else:
        a = rng.integers(0, 256, (m, k)).astype(np.uint8)
        a_zp, a_type, y_type, y_fmt = np.uint8(121), TensorProto.UINT8, TensorProto.UINT8, UINT8
        b = rng.integers(-64, 64, (k, n)).astype(np.int8)
    disagreements = 0
    for trial in range(20):
        a_s = np.float32(rng.uniform(0.005, 0.05))
        b_s = rng.uniform(0.002, 0.03, n).astype(np.float32)
        y_s = np.float32(rng.uniform(0.05, 0.5))
        y_zp = np.asarray(rng.integers(-10, 11) if signed_a else rng.integers(100, 156), a.dtype)
        feeds = dict(a=a, a_scale=np.array(a_s), a_zero_point=np.array(a_zp), b=b, b_scale=b_s,
                     b_zero_point=np.zeros(n, np.int8), y_scale=np.array(y_s),
                     y_zero_point=np.array(y_zp))
        model = _qlinear_matmul_model(a_type, TensorProto.INT8, y_type, m, k, n)
        by_ort, by_reference = _run_engines(model, feeds)
        acc = int_matmul(a.astype(np.int64) - int(a_zp), b)
        args = (acc, a_s, b_s, y_s, int(y_zp), y_fmt)
        np.testing.assert_array_equal(requantize(*args, "onnxruntime"), by_ort)
        np.testing.assert_array_equal(requantize(*args, "onnx"), by_reference)
        disagreements += int(np.count_nonzero(by_ort != by_reference))
    print(f"\nORT vs reference disagreements: {disagreements} of {20 * m * n}")


def test_requantize_rounding_helper_is_consistent():
    # The oracle helpers agree with qsim.numerics on a few ties (guards the oracles themselves).
    halves = [Fraction(v, 2) for v in (-3, -1, 1, 3)]
    assert [round_fraction(v, Rounding.HALF_UP) for v in halves] == [-1, 0, 1, 2]
    assert [round_fraction(v, Rounding.HALF_AWAY) for v in halves] == [-2, -1, 1, 2]
    assert math.isclose(float(f32(Fraction(1, 3))), float(np.float32(1 / 3)), rel_tol=0)


def test_litert_optimized_gemms_round_like_ruy():
    """ruy (LiteRT's optimized CONV_2D and FULLY_CONNECTED): SRDHM, then a rounding right shift
    half up; the reference kernels round the second step half away from zero."""
    from qsim.quant.requant import litert_requantize

    acc = np.array([-12, 12, -4, 4, -20])  # M = 2**-3: -1.5, 1.5, -0.5, 0.5, -2.5
    args = (acc, 2.0 ** -4, 2.0 ** -6, 2.0 ** -7, 0, "int8")
    for op in ("CONV_2D", "FULLY_CONNECTED"):
        assert litert_requantize(*args, "litert-optimized", op=op).tolist() == [-1, 2, 0, 1, -2]
    assert litert_requantize(*args, "litert-reference", op="CONV_2D").tolist() == [-2, 2, -1, 1, -3]
    # depthwise: fewer than 8 output channels (here 5, along the last axis) all take the
    # reference rounding of the optimized kernel's leftover channels
    assert litert_requantize(*args, "litert-optimized", op="DEPTHWISE_CONV_2D").tolist() == [-2, 2, -1, 1, -3]


def test_litert_optimized_depthwise_rounds_by_blocks_of_8_channels():
    """LiteRT's optimized DEPTHWISE_CONV_2D output stage: channels in complete blocks of 8 round
    half up (ruy's vector rounding), the leftover channels half away
    (MultiplyByQuantizedMultiplier); litert_requantize routes litert-optimized
    DEPTHWISE_CONV_2D there."""
    from qsim.quant.requant import litert_optimized_depthwise_requantize, litert_requantize

    ties = np.array([-12, 12, -4, 4, -20])  # M = 2**-3: -1.5, 1.5, -0.5, 0.5, -2.5
    up, away = [-1, 2, 0, 1, -2], [-2, 2, -1, 1, -3]
    for channels in (1, 3, 8, 13, 17):
        per_channel = np.repeat(ties[:, None], channels, axis=1)  # (5, C): a column per channel
        for axis, acc in ((-1, per_channel), (0, per_channel.T.copy()),
                          (1, np.repeat(per_channel[:, :, None], 2, axis=2))):
            args = (acc, 2.0 ** -4, [2.0 ** -6] * channels, 2.0 ** -7, 0, "int8")
            y = litert_optimized_depthwise_requantize(*args, channel_axis=axis)
            assert np.array_equal(y, litert_requantize(*args, "litert-optimized",
                                                       op="DEPTHWISE_CONV_2D", channel_axis=axis))
            columns = np.moveaxis(y, axis, -1).reshape(-1, channels) if axis != 1 else \
                y.transpose(0, 2, 1).reshape(-1, channels)
            for c in range(channels):
                want = up if c < 8 * (channels // 8) else away
                assert columns[:, c].tolist() == (want if axis != 1 else [v for v in want for _ in (0, 1)])
