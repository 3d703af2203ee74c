"""qsim.quant.kernels against a naive Python-integer oracle, and every error it can raise."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsim.errors import ConfigError, QsimOverflowError
from qsim.quant.kernels import (
    conv_geometry,
    conv_integer,
    matmul_integer,
    qlinear_conv,
    qlinear_matmul,
)

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- oracles


def naive_matmul(a, b, a_zp=0, b_zp=0):
    """(a - a_zp) @ (b - b_zp) for 2-D operands with Python ints, one MAC at a time."""
    a_zp = np.broadcast_to(np.asarray(a_zp).reshape(-1, 1) if np.size(a_zp) > 1 else a_zp,
                           a.shape)
    b_zp = np.broadcast_to(b_zp, b.shape)
    rows, depth = a.shape
    cols = b.shape[1]
    out = np.zeros((rows, cols), dtype=np.int64)
    for m in range(rows):
        for n in range(cols):
            out[m, n] = sum((int(a[m, k]) - int(a_zp[m, k])) * (int(b[k, n]) - int(b_zp[k, n]))
                            for k in range(depth))
    return out


def naive_conv(x, w, x_zp, w_zp, strides, pads, dilations, group):
    """ONNX ConvInteger with Python ints: every output, channel and tap visited explicitly."""
    n_batch, channels = x.shape[:2]
    outputs = w.shape[0]
    nd = x.ndim - 2
    cg, mg = channels // group, outputs // group
    spatial, kernel = x.shape[2:], w.shape[2:]
    w_zp = np.broadcast_to(np.asarray(w_zp).reshape(-1), (outputs,))
    out_shape = [(spatial[i] + pads[i] + pads[i + nd] - ((kernel[i] - 1) * dilations[i] + 1))
                 // strides[i] + 1 for i in range(nd)]
    y = np.zeros([n_batch, outputs] + out_shape, dtype=np.int64)
    for n, m in itertools.product(range(n_batch), range(outputs)):
        g = m // mg
        for o in itertools.product(*map(range, out_shape)):
            total = 0
            for c in range(cg):
                for t in itertools.product(*map(range, kernel)):
                    pos = [o[i] * strides[i] - pads[i] + t[i] * dilations[i] for i in range(nd)]
                    inside = all(0 <= pos[i] < spatial[i] for i in range(nd))
                    xv = int(x[(n, g * cg + c, *pos)]) - int(x_zp) if inside else 0
                    total += xv * (int(w[(m, c, *t)]) - int(w_zp[m]))
            y[(n, m, *o)] = total
    return y


def random_int8(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, size=shape).astype(dtype)


# --------------------------------------------------------------------------- matmul_integer


@pytest.mark.parametrize("a_dtype, b_dtype", [(np.uint8, np.uint8), (np.uint8, np.int8),
                                              (np.int8, np.int8), (np.int8, np.uint8)])
def test_matmul_integer_matches_naive_oracle(rng, a_dtype, b_dtype):
    for rows, depth, cols in [(1, 1, 1), (3, 5, 4), (4, 9, 2), (2, 16, 7)]:
        a = random_int8(rng, a_dtype, (rows, depth))
        b = random_int8(rng, b_dtype, (depth, cols))
        a_zp = int(random_int8(rng, a_dtype, ()))
        b_zp = random_int8(rng, b_dtype, (cols,))  # per column
        got = matmul_integer(a, b, a_zp, b_zp)
        assert got.dtype == np.int64
        assert np.array_equal(got, naive_matmul(a, b, a_zp, b_zp))


def test_matmul_integer_per_row_a_zero_point(rng):
    a = random_int8(rng, np.uint8, (4, 6))
    b = random_int8(rng, np.int8, (6, 3))
    a_zp = random_int8(rng, np.uint8, (4,))
    expected = naive_matmul(a, b, a_zp, 0)
    assert np.array_equal(matmul_integer(a, b, a_zp), expected)
    assert np.array_equal(matmul_integer(a, b, a_zp.reshape(4, 1)), expected)


def test_matmul_integer_onnx_spec_example():
    # onnx/backend/test/case/node/matmulinteger.py
    a = np.array([[11, 7, 3], [10, 6, 2], [9, 5, 1], [8, 4, 0]], dtype=np.uint8)
    b = np.array([[1, 4], [2, 5], [3, 6]], dtype=np.uint8)
    got = matmul_integer(a, b, np.array([12], np.uint8), np.array([0], np.uint8))
    assert got.tolist() == [[-38, -83], [-44, -98], [-50, -113], [-56, -128]]


@pytest.mark.parametrize("a_shape, b_shape", [
    ((2, 3, 5, 300), (300, 4)),        # batched a, plain b, chunked reduction
    ((5, 300), (2, 300, 4)),           # plain a, batched b
    ((2, 1, 5, 300), (3, 300, 4)),     # both batched, broadcast
    ((300,), (300, 4)),                # vector @ matrix
    ((2, 5, 300), (300,)),             # batch of matrices @ vector
    ((300,), (300,)),                  # dot product
])
def test_matmul_integer_broadcasts_like_numpy(rng, a_shape, b_shape):
    a = random_int8(rng, np.uint8, a_shape)
    b = random_int8(rng, np.int8, b_shape)
    got = matmul_integer(a, b, 131, -7)
    expected = np.matmul(a.astype(np.int64) - 131, b.astype(np.int64) + 7)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_matmul_integer_batched_zero_points(rng):
    a = random_int8(rng, np.int8, (2, 3, 4))
    b = random_int8(rng, np.int8, (2, 4, 5))
    a_zp = random_int8(rng, np.int8, (2, 3, 1))
    b_zp = random_int8(rng, np.int8, (2, 1, 5))
    expected = np.matmul(a.astype(np.int64) - a_zp, b.astype(np.int64) - b_zp)
    assert np.array_equal(matmul_integer(a, b, a_zp, b_zp), expected)


def test_matmul_integer_large_k_is_exact(rng):
    # 255 * 255 * 4000 needs 28 bits: the float32 path must be cut into exact chunks.
    a = np.full((3, 4000), 255, np.uint8)
    b = np.full((4000, 2), 255, np.uint8)
    assert matmul_integer(a, b).tolist() == [[255 * 255 * 4000] * 2] * 3
    a = random_int8(rng, np.uint8, (8, 4000))
    b = random_int8(rng, np.uint8, (4000, 8))
    assert np.array_equal(matmul_integer(a, b, 3, 250),
                          (a.astype(np.int64) - 3) @ (b.astype(np.int64) - 250))


def test_matmul_integer_refuses_int32_overflow():
    depth = 33027  # 33027 * 255 * 255 = 2147580675 > 2**31 - 1
    a = np.full((1, depth), 255, np.uint8)
    b = np.full((depth, 1), 255, np.uint8)
    with pytest.raises(QsimOverflowError) as info:
        matmul_integer(a, b)
    assert str(info.value) == (
        "1 element of MatMulInteger accumulator overflow int32 [-2147483648, 2147483647]: "
        "MatMulInteger accumulator[0, 0] = 2147580675 is 97028 above the int32 maximum "
        "2147483647"
    )
    assert info.value.count == 1
    # 33025 * 65025 = 2147450625 is the longest all-255 reduction that fits
    assert matmul_integer(a[:, :33025], b[:33025]).tolist() == [[33025 * 65025]]


@pytest.mark.parametrize("call, message", [
    (lambda: matmul_integer(np.zeros((2, 3), np.int32), np.zeros((3, 2), np.int8)),
     "a must be a uint8 or int8 array, not dtype int32"),
    (lambda: matmul_integer(np.zeros((2, 3), np.int8), np.zeros((3, 2), np.float32)),
     "b must be a uint8 or int8 array, not dtype float32"),
    (lambda: matmul_integer(np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8)),
     "MatMulInteger shapes do not align: a (2, 3) has K = 3 but b (4, 2) has K = 4"),
    (lambda: matmul_integer(np.zeros((2, 2, 3), np.int8), np.zeros((3, 3, 2), np.int8)),
     "MatMulInteger batch dimensions do not broadcast: a (2, 2, 3) and b (3, 3, 2)"),
    (lambda: matmul_integer(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.int8),
                            np.int8(1)),
     "a_zero_point dtype int8 does not match a dtype uint8"),
    (lambda: matmul_integer(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.int8), 0, 128),
     "b_zero_point 128 is outside int8 [-128, 127]"),
    (lambda: matmul_integer(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.int8),
                            np.zeros(3, np.uint8)),
     "a_zero_point shape (3,) does not fit a of shape (2, 3): expected a scalar, (2,) or a "
     "shape that broadcasts to (2, 1)"),
    (lambda: matmul_integer(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.int8), 0,
                            np.zeros(3, np.int8)),
     "b_zero_point shape (3,) does not fit b of shape (3, 2): expected a scalar, (2,) or a "
     "shape that broadcasts to (1, 2)"),
    (lambda: matmul_integer(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.int8), 1.5),
     "a_zero_point must be integers, not dtype float64"),
])
def test_matmul_integer_errors(call, message):
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message


# --------------------------------------------------------------------------- conv_integer

CONV_CASES = [
    # (x shape, w shape, strides, pads, dilations, group)
    ((1, 1, 5), (1, 1, 3), (1,), (0, 0), (1,), 1),                   # 1-D
    ((2, 3, 9), (4, 3, 3), (2,), (1, 2), (2,), 1),                   # 1-D stride, asym pad, dil
    ((1, 1, 4, 4), (1, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),   # 2-D same-ish
    ((2, 2, 6, 5), (3, 2, 2, 3), (2, 1), (0, 1, 2, 0), (1, 2), 1),   # asym pads, mixed
    ((1, 4, 5, 5), (6, 2, 3, 3), (1, 2), (1, 0, 1, 2), (2, 1), 2),   # groups
    ((2, 3, 6, 6), (3, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3),   # depthwise
    ((1, 2, 5, 6), (6, 1, 2, 2), (2, 2), (0, 0, 1, 1), (2, 2), 2),   # channel multiplier 3
    ((1, 6, 4, 4), (4, 3, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2),   # pointwise, groups
    ((1, 2, 7, 3), (2, 2, 3, 1), (3, 1), (2, 0, 2, 0), (3, 1), 1),   # pads larger than stride
    ((1, 2, 3, 3, 4), (2, 2, 2, 2, 2), (1, 1, 2), (0, 1, 0, 1, 0, 1), (1, 1, 1), 1),  # 3-D
]


@pytest.mark.parametrize("x_shape, w_shape, strides, pads, dilations, group", CONV_CASES)
@pytest.mark.parametrize("dtypes", [(np.uint8, np.int8), (np.int8, np.int8),
                                    (np.uint8, np.uint8)])
def test_conv_integer_matches_naive_oracle(rng, x_shape, w_shape, strides, pads, dilations,
                                           group, dtypes):
    x = random_int8(rng, dtypes[0], x_shape)
    w = random_int8(rng, dtypes[1], w_shape)
    x_zp = int(random_int8(rng, dtypes[0], ()))
    w_zp = random_int8(rng, dtypes[1], (w_shape[0],))  # per output channel
    got = conv_integer(x, w, x_zp, w_zp, strides=strides, pads=pads, dilations=dilations,
                       group=group)
    expected = naive_conv(x, w, x_zp, w_zp, strides, pads, dilations, group)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_conv_integer_random_geometry(data):
    nd = data.draw(st.integers(1, 2), label="spatial dims")
    group = data.draw(st.integers(1, 3), label="group")
    cg = data.draw(st.integers(1, 3), label="channels per group")
    mg = data.draw(st.integers(1, 2), label="outputs per group")
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    dilations = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    strides = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    pads = tuple(data.draw(st.integers(0, 2)) for _ in range(2 * nd))
    spatial = tuple(max(data.draw(st.integers(1, 6)),
                        (k - 1) * d + 1 - pads[i] - pads[i + nd])
                    for i, (k, d) in enumerate(zip(kernel, dilations)))
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x = random_int8(rng, np.uint8, (2, group * cg) + spatial)
    w = random_int8(rng, np.int8, (group * mg, cg) + kernel)
    x_zp = int(rng.integers(0, 256))
    w_zp = random_int8(rng, np.int8, (group * mg,))
    got = conv_integer(x, w, x_zp, w_zp, strides=strides, pads=pads, dilations=dilations,
                       group=group)
    assert np.array_equal(got, naive_conv(x, w, x_zp, w_zp, strides, pads, dilations, group))


def test_conv_integer_onnx_spec_example():
    # onnx/backend/test/case/node/convinteger.py, "with padding"
    x = np.arange(2, 11, dtype=np.uint8).reshape(1, 1, 3, 3)
    w = np.ones((2, 1, 2, 2), np.uint8)
    got = conv_integer(x, w, np.uint8(1), np.array([0, 1], np.uint8), pads=[1, 1, 1, 1])
    assert got[0, 0].tolist() == [[1, 3, 5, 3], [5, 12, 16, 9], [11, 24, 28, 15],
                                  [7, 15, 17, 9]]
    assert not got[0, 1].any()


@pytest.mark.parametrize("auto_pad, size, stride, kernel, pads", [
    ("SAME_UPPER", 5, 2, 4, (1, 2)),   # out 3, total pad 4 - ... = 3: 1 before, 2 after
    ("SAME_LOWER", 5, 2, 4, (2, 1)),
    ("SAME_UPPER", 6, 1, 3, (1, 1)),
    ("VALID", 6, 2, 3, (0, 0)),
    ("NOTSET", 6, 2, 3, (0, 0)),
])
def test_conv_geometry_auto_pad(auto_pad, size, stride, kernel, pads):
    geometry = conv_geometry((size,), (kernel,), strides=(stride,), auto_pad=auto_pad)
    assert geometry.pads == pads
    expected = -(-size // stride) if auto_pad.startswith("SAME") else (size - kernel) // stride + 1
    assert geometry.output == (expected,)


def test_conv_integer_auto_pad_equals_explicit_pads(rng):
    x = random_int8(rng, np.uint8, (1, 2, 5, 7))
    w = random_int8(rng, np.int8, (3, 2, 4, 3))
    for mode in ("SAME_UPPER", "SAME_LOWER"):
        geometry = conv_geometry((5, 7), (4, 3), strides=(2, 3), auto_pad=mode)
        auto = conv_integer(x, w, 17, strides=(2, 3), auto_pad=mode)
        explicit = conv_integer(x, w, 17, strides=(2, 3), pads=geometry.pads)
        assert auto.shape == (1, 3, 3, 3)
        assert np.array_equal(auto, explicit)
        assert np.array_equal(auto, naive_conv(x, w, 17, 0, (2, 3), geometry.pads, (1, 1), 1))


def test_conv_integer_refuses_int32_overflow():
    # a 1 x 33100 kernel of 255 * 255 products: 33100 * 65025 = 2152327500
    x = np.full((1, 1, 1, 33100), 255, np.uint8)
    w = np.full((1, 1, 1, 33100), 255, np.uint8)
    with pytest.raises(QsimOverflowError) as info:
        conv_integer(x, w)
    assert str(info.value) == (
        "1 element of ConvInteger accumulator overflow int32 [-2147483648, 2147483647]: "
        "ConvInteger accumulator[0, 0, 0, 0] = 2152327500 is 4843853 above the int32 maximum "
        "2147483647"
    )


@pytest.mark.parametrize("kwargs, message", [
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8), group=3),
     "group 3 does not divide the 4 input channels of x"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((3, 2, 3, 3), np.int8), group=2),
     "group 2 does not divide the 3 output channels of w"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8), group=2),
     "w has 4 input channels per group, but x has 4 channels in 2 groups (2 per group)"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 3, 3, 3), np.int8)),
     "w has 3 input channels per group, but x has 4 channels in 1 group (4 per group)"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8), group=0),
     "group must be a positive int, not 0"),
    (dict(x=np.zeros((4, 5), np.uint8), w=np.zeros((2, 4), np.int8)),
     "x must be (N, C, *spatial) with at least one spatial axis, not shape (4, 5)"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3), np.int8)),
     "w must be (M, C/group, *kernel) with 4 dimensions like x (1, 4, 5, 5), not shape "
     "(2, 4, 3)"),
    (dict(x=np.zeros((1, 4, 5, 5), np.float32), w=np.zeros((2, 4, 3, 3), np.int8)),
     "x must be a uint8 or int8 array, not dtype float32"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8),
          w_zero_point=np.zeros(3, np.int8)),
     "w_zero_point shape (3,) does not fit w with 2 output channels: expected a scalar or (2,)"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8),
          x_zero_point=np.zeros(4, np.uint8)),
     "x_zero_point must be a scalar (per tensor), not shape (4,)"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8),
          w_zero_point=np.uint8(3)),
     "w_zero_point dtype uint8 does not match w dtype int8"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8),
          strides=(1,)),
     "strides must be a sequence of 2 ints, not (1,)"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8),
          dilations=(1, 0)),
     "dilations must be positive ints, not [1, 0]"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8),
          pads=(0, -1, 0, 0)),
     "pads must be non-negative ints, not [0, -1, 0, 0]"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8),
          pads=(1, 1, 1, 1), auto_pad="SAME_UPPER"),
     "pads [1, 1, 1, 1] cannot be combined with auto_pad='SAME_UPPER'"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8),
          auto_pad="SAME"),
     "auto_pad must be one of NOTSET, SAME_UPPER, SAME_LOWER, VALID, not 'SAME'"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8),
          dilations=(3, 1)),
     "spatial axis 0: the dilated kernel spans 7 but the padded input has only 5 "
     "(input 5, pads 0 + 0)"),
    (dict(x=np.zeros((1, 4, 5, 5), np.uint8), w=np.zeros((2, 4, 3, 3), np.int8),
          kernel_shape=(3, 2)),
     "kernel_shape [3, 2] does not match w's kernel [3, 3]"),
])
def test_conv_integer_errors(kwargs, message):
    with pytest.raises(ConfigError) as info:
        conv_integer(**kwargs)
    assert str(info.value) == message


# --------------------------------------------------------------------------- QLinear ops


def test_qlinear_matmul_output_format_follows_y_zero_point(rng):
    a = random_int8(rng, np.uint8, (3, 8))
    b = random_int8(rng, np.int8, (8, 4))
    y8 = qlinear_matmul(a, 0.02, np.uint8(120), b, 0.01, np.int8(0), 0.1, np.int8(-3))
    yu = qlinear_matmul(a, 0.02, np.uint8(120), b, 0.01, np.int8(0), 0.1, np.uint8(128))
    assert y8.dtype == np.int8 and yu.dtype == np.uint8
    acc = naive_matmul(a, b, 120, 0)
    multiplier = np.float32(np.float32(0.02) * np.float32(0.01)) / np.float32(0.1)
    expected = np.clip(np.rint(acc * np.float64(multiplier)) - 3, -128, 127)
    assert np.array_equal(y8, expected)
    # a plain int zero point needs an explicit format
    assert np.array_equal(qlinear_matmul(a, 0.02, 120, b, 0.01, 0, 0.1, -3, out_fmt="int8"), y8)


def test_qlinear_conv_adds_bias_before_requantization(rng):
    x = random_int8(rng, np.int8, (1, 2, 4, 4))
    w = random_int8(rng, np.int8, (3, 2, 3, 3))
    bias = np.array([1000, -2000, 30000], np.int32)
    w_scale = np.array([0.01, 0.02, 0.005], np.float32)
    y = qlinear_conv(x, np.float32(0.05), np.int8(3), w, w_scale, np.int8(0), np.float32(0.7),
                     np.int8(5), bias, pads=[1, 1, 1, 1], semantics="onnxruntime")
    acc = naive_conv(x, w, 3, 0, (1, 1), (1, 1, 1, 1), (1, 1), 1) + bias.reshape(1, 3, 1, 1)
    multiplier = (np.float32(0.05) * w_scale / np.float32(0.7)).reshape(1, 3, 1, 1)
    scaled = acc.astype(np.float32) * multiplier
    expected = np.rint(np.clip(scaled, -128 - 5, 127 - 5)).astype(np.int64) + 5
    assert y.dtype == np.int8
    assert np.array_equal(y, expected)


@pytest.mark.parametrize("semantics", ["onnx", "onnxruntime", "tflite",
                                       "tflite-single-rounding", "pytorch-fbgemm",
                                       "fixed-point"])
def test_qlinear_ops_hand_the_exact_accumulator_to_requantize(rng, semantics):
    from qsim.quant.requant import requantize

    a = random_int8(rng, np.int8, (5, 40))
    b = random_int8(rng, np.int8, (40, 6))
    w_scale = np.array([0.011, 0.023, 0.005, 0.017, 0.031, 0.002], np.float32)
    got = qlinear_matmul(a, np.float32(0.037), np.int8(-5), b, w_scale, np.int8(0),
                         np.float32(0.61), np.int8(7), semantics=semantics)
    acc = naive_matmul(a, b, -5, 0)
    expected = requantize(acc, np.float32(0.037), w_scale, np.float32(0.61), 7, "int8",
                          semantics)
    assert got.dtype == np.int8 and np.array_equal(got, expected)

    x = random_int8(rng, np.int8, (1, 3, 5, 5))
    w = random_int8(rng, np.int8, (6, 3, 3, 3))
    bias = rng.integers(-3000, 3000, 6).astype(np.int32)
    got = qlinear_conv(x, np.float32(0.037), np.int8(2), w, w_scale, np.int8(0),
                       np.float32(0.61), np.int8(-7), bias, strides=[2, 2], pads=[1, 0, 1, 2],
                       semantics=semantics)
    acc = naive_conv(x, w, 2, 0, (2, 2), (1, 0, 1, 2), (1, 1), 1) + bias.reshape(1, 6, 1, 1)
    expected = requantize(acc, np.float32(0.037), w_scale, np.float32(0.61), -7, "int8",
                          semantics, channel_axis=1)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("call, message", [
    (lambda: qlinear_matmul(np.zeros((2, 3), np.uint8), 0.1, 0, np.zeros((3, 2), np.int8),
                            0.1, 0, 0.1, 3),
     "the output format is ambiguous: y_zero_point 3 has no 8-bit dtype; give out_fmt "
     "(for example 'uint8' or 'int8')"),
    (lambda: qlinear_matmul(np.zeros((2, 3), np.uint8), 0.1, 0, np.zeros((3, 2), np.int8),
                            0.1, 0, 0.1, np.uint8(3), out_fmt="int8"),
     "out_fmt int8 contradicts y_zero_point dtype uint8"),
    (lambda: qlinear_matmul(np.zeros((2, 3), np.uint8), 0.1, 0, np.zeros((3, 2), np.int8),
                            np.array([0.1, 0.2, 0.3], np.float32), 0, 0.1, np.uint8(3)),
     "b_scale shape (3,) is not a scalar or (2,) (per column of b)"),
    (lambda: qlinear_matmul(np.zeros((2, 3), np.uint8), np.array([0.1, 0.2], np.float32), 0,
                            np.zeros((3, 2), np.int8), 0.1, 0, 0.1, np.uint8(3)),
     "a_scale shape (2,) is not a scalar (per tensor)"),
    (lambda: qlinear_matmul(np.zeros((2, 3), np.uint8), -0.1, 0, np.zeros((3, 2), np.int8),
                            0.1, 0, 0.1, np.uint8(3)),
     "a_scale must be positive and finite, not -0.1"),
    (lambda: qlinear_matmul(np.zeros((2, 3), np.uint8), 0.1, np.zeros(2, np.uint8),
                            np.zeros((3, 2), np.int8), 0.1, 0, 0.1, np.uint8(3)),
     "a_zero_point must be a scalar (per tensor), not shape (2,)"),
    (lambda: qlinear_matmul(np.zeros((2, 3), np.uint8), 0.1, 0, np.zeros((3, 2), np.int8),
                            0.1, 0, 0.1, np.uint8(3), semantics="tensorrt"),
     "requantization semantics must be one of onnx, onnxruntime, litert, litert-reference, litert-optimized, "
     "tflite-single-rounding, pytorch-fbgemm, fixed-point (or tflite, an alias of litert-reference), not 'tensorrt'"),
    (lambda: qlinear_conv(np.zeros((1, 2, 3, 3), np.int8), 0.1, 0, np.zeros((4, 2, 1, 1), np.int8),
                          0.1, 0, 0.1, np.int8(0), np.zeros(3, np.int32)),
     "bias shape (3,) does not match the 4 output channels of w: expected (4,)"),
    (lambda: qlinear_conv(np.zeros((1, 2, 3, 3), np.int8), 0.1, 0, np.zeros((4, 2, 1, 1), np.int8),
                          np.ones(3, np.float32), 0, 0.1, np.int8(0)),
     "w_scale shape (3,) is not a scalar or (4,) (per output channel)"),
    (lambda: qlinear_conv(np.zeros((1, 2, 3, 3), np.int8), 0.1, 0, np.zeros((4, 2, 1, 1), np.int8),
                          0.1, 0, 0.1, np.int8(0), np.zeros(4, np.float32)),
     "bias must be int32, not dtype float32"),
])
def test_qlinear_errors(call, message):
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message


def test_qlinear_conv_refuses_bias_that_wraps_the_accumulator():
    x = np.full((1, 1, 2, 2), 127, np.int8)
    w = np.full((1, 1, 2, 2), 127, np.int8)
    bias = np.array([2 ** 31 - 1 - 4 * 127 * 127 + 1], np.int32)
    with pytest.raises(QsimOverflowError) as info:
        qlinear_conv(x, 0.1, 0, w, 0.1, 0, 0.1, np.int8(0), bias)
    assert str(info.value) == (
        "1 element of QLinearConv accumulator (with bias) overflow int32 "
        "[-2147483648, 2147483647]: QLinearConv accumulator (with bias)[0, 0, 0, 0] = "
        "2147483648 is 1 above the int32 maximum 2147483647"
    )
