from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from qsim.errors import QsimOverflowError
from qsim.numerics import (
    INT4, INT8, INT32, UINT4, UINT8, IntFormat, Rounding, check_fits, find_overflows,
    int_matmul, pack_int2, pack_int4, round_div, round_float, round_shift, saturate,
    unpack_int2, unpack_int4, wrap,
)


def test_format_ranges_and_names():
    assert (INT8.min, INT8.max, INT8.name) == (-128, 127, "int8")
    assert (UINT4.min, UINT4.max, UINT4.name) == (0, 15, "uint4")
    assert (IntFormat(2).min, IntFormat(2).max) == (-2, 1)
    assert IntFormat(64).max == 2**63 - 1
    assert IntFormat.parse("uint8") == UINT8
    assert IntFormat.parse(" INT4 ") == INT4


@pytest.mark.parametrize("bits, signed, message", [
    (1, True, "IntFormat bits must be between 2 and 64 for signed formats, not 1"),
    (65, True, "IntFormat bits must be between 2 and 64 for signed formats, not 65"),
    (64, False, "IntFormat bits must be between 2 and 63 for unsigned formats, not 64"),
])
def test_format_rejects_bad_widths(bits, signed, message):
    with pytest.raises(ValueError) as exc:
        IntFormat(bits, signed)
    assert str(exc.value) == message


def test_format_rejects_bad_types_and_names():
    with pytest.raises(TypeError, match=r"IntFormat bits must be an int, not 8.0"):
        IntFormat(8.0)
    with pytest.raises(ValueError, match=r"integer format must be a name like 'int8' or 'uint4', not 'float8'"):
        IntFormat.parse("float8")


def test_wrap_and_saturate():
    x = np.array([-129, -128, 127, 128, 255, 256, -1000])
    assert wrap(x, INT8).tolist() == [127, -128, 127, -128, -1, 0, 24]
    assert saturate(x, INT8).tolist() == [-128, -128, 127, 127, 127, 127, -128]
    assert wrap(x, UINT8).tolist() == [127, 128, 127, 128, 255, 0, 24]
    assert wrap(np.array([2**31, -2**31 - 1]), INT32).tolist() == [-2**31, 2**31 - 1]
    assert wrap(np.array([7, 8, -9]), INT4).tolist() == [7, -8, 7]


TIES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])


@pytest.mark.parametrize("mode, expected", [
    (Rounding.HALF_EVEN, [-2, -2, 0, 0, 2, 2]),
    (Rounding.HALF_AWAY, [-3, -2, -1, 1, 2, 3]),
    (Rounding.HALF_UP, [-2, -1, 0, 1, 2, 3]),
    (Rounding.HALF_DOWN, [-3, -2, -1, 0, 1, 2]),
    (Rounding.FLOOR, [-3, -2, -1, 0, 1, 2]),
    (Rounding.CEIL, [-2, -1, 0, 1, 2, 3]),
    (Rounding.TOWARD_ZERO, [-2, -1, 0, 0, 1, 2]),
])
def test_rounding_modes_on_ties(mode, expected):
    assert round_float(TIES, mode).tolist() == expected
    # The same ties as exact rationals n / 2 through round_div and round_shift.
    assert round_div((TIES * 2).astype(np.int64), 2, mode).tolist() == expected
    assert round_shift((TIES * 2).astype(np.int64), 1, mode).tolist() == expected


def test_round_float_does_not_round_the_fraction():
    # 0.49999999999999994 + 0.5 rounds to 1.0 in float64; the exact value is below one half.
    x = np.nextafter(0.5, 0.0)
    assert round_float(x, "half_up") == 0.0
    assert round_float(x, "half_away") == 0.0


def test_round_div_matches_exact_rationals(rng):
    n = rng.integers(-10**12, 10**12, 2000)
    d = rng.integers(1, 10**6, 2000)
    for mode in Rounding:
        got = round_div(n, d, mode)
        for ni, di, gi in zip(n[:200].tolist(), d[:200].tolist(), got[:200].tolist()):
            q = Fraction(ni, di)
            fl = q.numerator // q.denominator
            frac = q - fl
            if mode is Rounding.FLOOR:
                want = fl
            elif mode is Rounding.CEIL:
                want = fl + (frac != 0)
            elif mode is Rounding.TOWARD_ZERO:
                want = fl + (frac != 0 and q < 0)
            elif frac != Fraction(1, 2):
                want = fl + (frac > Fraction(1, 2))
            elif mode is Rounding.HALF_EVEN:
                want = fl + (fl % 2)
            elif mode is Rounding.HALF_AWAY:
                want = fl + (q > 0)
            elif mode is Rounding.HALF_UP:
                want = fl + 1
            else:
                want = fl
            assert gi == want, (mode, ni, di)


def test_round_shift_per_channel_and_bounds():
    x = np.array([[5, 6, 7], [-5, -6, -7]])
    assert round_shift(x, np.array([0, 1, 2]), "half_up").tolist() == [[5, 3, 2], [-5, -3, -2]]
    with pytest.raises(ValueError, match="shift must be between 0 and 62, not 63"):
        round_shift(x, 63)
    with pytest.raises(ValueError, match="rounding mode must be one of half_even, half_away, "
                                         "half_up, half_down, floor, ceil, toward_zero, not 'nearest'"):
        round_shift(x, 1, "nearest")


def test_pack_int4_low_nibble_first():
    assert pack_int4(np.array([1, -2, 7])).tolist() == [0xE1, 0x07]
    assert unpack_int4(bytes([0xE1, 0x07]), 3).tolist() == [1, -2, 7]
    assert unpack_int4(bytes([0xE1, 0x07]), 3, signed=False).tolist() == [1, 14, 7]


def test_pack_int2_roundtrip(rng):
    v = rng.integers(-2, 2, 37)
    packed = pack_int2(v)
    assert packed.size == 10
    assert unpack_int2(packed, 37).tolist() == v.tolist()
    assert pack_int2(np.array([1, -2, 0, -1])).tolist() == [0b11001001]


def test_pack_rejects_out_of_range_and_short_buffers():
    with pytest.raises(QsimOverflowError, match=r"value 16 does not fit in 4 bits \(allowed -8 to 15\)"):
        pack_int4(np.array([1, 16]))
    with pytest.raises(ValueError, match="5 fields of 4 bits need 3 bytes, but 2 were given"):
        unpack_int4(bytes([0, 0]), 5)


def test_overflow_report_names_elements():
    x = np.array([[0, 130], [-200, 5]])
    found = find_overflows(x, INT8)
    assert [(o.index, o.value, o.excess) for o in found] == [((0, 1), 130, 3), ((1, 0), -200, -72)]
    with pytest.raises(QsimOverflowError) as exc:
        check_fits(x, INT8, "acts")
    assert str(exc.value) == (
        "2 elements of acts overflow int8 [-128, 127]: acts[0, 1] = 130 is 3 above the int8 "
        "maximum 127; acts[1, 0] = -200 is 72 below the int8 minimum -128")
    assert exc.value.count == 2
    check_fits(np.array([-128, 127]), INT8)


def test_int_matmul_is_exact_across_paths(rng):
    # int8: float32 BLAS in chunks of 1024; int16: float64; int32: int64 fallback.
    for lo, hi, k in ((-128, 128, 3000), (-2**15, 2**15, 300), (-2**30, 2**30, 4)):
        a = rng.integers(lo, hi, (17, k))
        b = rng.integers(lo, hi, (k, 9))
        exact = np.array([[sum(int(x) * int(y) for x, y in zip(row, col)) for col in b.T] for row in a])
        assert np.array_equal(int_matmul(a, b), exact)
    worst = np.full((2, 2048), -128)
    assert int_matmul(worst, np.full((2048, 1), -128)).tolist() == [[2048 * 16384]] * 2
