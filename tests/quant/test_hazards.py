"""The u8 x s8 ``vpmaddubsw`` saturation detector and its engine emulation.

The emulation is checked against a Python-integer model of MLAS's AVX2 kernel (pairs of K
elements ``(2j, 2j + 1)`` saturated to int16, summed in int32, zero points applied exactly).
ONNX Runtime itself is run on saturating inputs too: on an x86 CPU without VNNI its result
must equal the emulation, with VNNI (or AMX) it must equal the exact result; which of the two
this machine is comes from :func:`qsim.quant.isa.detect_isa` and is printed. Both kinds of
machine run every test here; golden files recorded on an AVX2 CPU check the emulation on any
machine (tests/quant/test_isa_golden.py).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qsim.errors import ConfigError
from qsim.quant.hazards import (
    SaturatedPair,
    conv_u8s8_avx2,
    matmul_u8s8_avx2,
    u8s8_conv_saturation,
    u8s8_saturation,
)
from qsim.quant.isa import detect_isa, u8s8_saturates
from qsim.quant.kernels import conv_integer, qlinear_conv, qlinear_matmul


def sat16(value: int) -> int:
    return max(-32768, min(32767, value))


def naive_avx2_matmul(a, b, a_zp=0, b_zp=0):
    """MLAS AVX2 u8s8 GEMM, one pair at a time, with Python ints."""
    rows, depth = a.shape
    cols = b.shape[1]
    out = np.zeros((rows, cols), dtype=np.int64)
    for m, n in itertools.product(range(rows), range(cols)):
        total = 0
        for j in range(0, depth, 2):
            pair = int(a[m, j]) * int(b[j, n])
            if j + 1 < depth:
                pair += int(a[m, j + 1]) * int(b[j + 1, n])
            total += sat16(pair)
        row_sum = sum(int(v) for v in a[m])
        col_sum = sum(int(v) for v in b[:, n])
        out[m, n] = total - b_zp * row_sum - a_zp * col_sum + depth * a_zp * b_zp
    return out


def naive_avx2_conv(x, w, x_zp, strides, pads, group):
    """ONNX Runtime's u8s8 conv lowering: channels-last im2col padded with x_zp, K = (tap, c)."""
    n_batch, channels, height, width = x.shape
    outputs, cg, kh, kw = w.shape
    mg = outputs // group
    oh = (height + pads[0] + pads[2] - kh) // strides[0] + 1
    ow = (width + pads[1] + pads[3] - kw) // strides[1] + 1
    y = np.zeros((n_batch, outputs, oh, ow), dtype=np.int64)
    for n, m, i, j in itertools.product(range(n_batch), range(outputs), range(oh), range(ow)):
        g = m // mg
        a_row, b_col = [], []
        for ty, tx, c in itertools.product(range(kh), range(kw), range(cg)):
            py, px = i * strides[0] - pads[0] + ty, j * strides[1] - pads[1] + tx
            inside = 0 <= py < height and 0 <= px < width
            a_row.append(int(x[n, g * cg + c, py, px]) if inside else x_zp)
            b_col.append(int(w[m, c, ty, tx]))
        y[n, m, i, j] = naive_avx2_matmul(np.array([a_row]), np.array(b_col)[:, None],
                                          x_zp, 0)[0, 0]
    return y


# --------------------------------------------------------------------------- constructed cases


def test_full_range_operands_saturate_every_pair():
    a = np.full((2, 4), 255, np.uint8)
    b = np.full((4, 3), 127, np.int8)
    report = u8s8_saturation(a, b)
    # each pair: 255*127 + 255*127 = 64770 > 32767; two pairs per output
    assert report.exact.tolist() == [[129540] * 3] * 2
    assert report.engine.tolist() == [[65534] * 3] * 2
    assert report.count == 6 and report.saturated_pairs == 12 and report.max_error == 64006
    assert report.positions.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert report.examples[0] == SaturatedPair(output=(0, 0), k=((0,), (1,)), a=(255, 255),
                                               b=(127, 127), exact=64770, saturated=32767)
    assert [p.output for p in report.examples] == [(0, 0), (0, 0), (0, 1), (0, 1), (0, 2)]
    assert report.describe().startswith(
        "6 of 6 outputs differ from the exact result (max error 64006); 12 u8 x s8 pair sums "
        "saturate int16: output [0, 0]: 255*127 + 255*127 = 64770 at K [0], [1] saturates to "
        "32767; "
    )
    assert np.array_equal(matmul_u8s8_avx2(a, b), report.engine)


def test_negative_saturation():
    a = np.array([[255, 255, 1]], np.uint8)
    b = np.array([[-128], [-128], [-128]], np.int8)
    report = u8s8_saturation(a, b)
    assert report.exact.tolist() == [[-65408]]
    assert report.engine.tolist() == [[-32768 - 128]]
    assert report.examples[0].saturated == -32768


def test_pairs_are_even_odd_k_indices():
    # 255*127 + 255*127 sits on K 1 and 2, which MLAS never pairs: no saturation ...
    a = np.array([[0, 255, 255, 0]], np.uint8)
    b = np.array([[0], [127], [127], [0]], np.int8)
    assert not u8s8_saturation(a, b)
    # ... while on K 2 and 3 it does
    a = np.array([[0, 0, 255, 255]], np.uint8)
    b = np.array([[0], [0], [127], [127]], np.int8)
    report = u8s8_saturation(a, b)
    assert report.examples[0].k == ((2,), (3,))


def test_odd_k_pairs_last_element_with_zero():
    a = np.array([[0, 0, 255]], np.uint8)
    b = np.array([[0], [0], [-128]], np.int8)
    report = u8s8_saturation(a, b)
    assert report.saturated_pairs == 0 and report.engine.tolist() == [[-32640]]


def test_reduce_range_weights_never_saturate(rng):
    # weights in [-64, 63] (reduce_range): 255 * 64 * 2 = 32640 <= 32767
    a = np.full((16, 64), 255, np.uint8)
    b = rng.choice(np.array([-64, 63], np.int8), size=(64, 16))
    report = u8s8_saturation(a, b)
    assert report.saturated_pairs == 0 and report.count == 0
    assert np.array_equal(report.engine, report.exact)


def test_opposite_saturations_can_cancel():
    # pair (0,1): 255*127 + 4*96 = 32769 -> 32767 (-2); pair (2,3): 255*-128 + 2*-65 = -32770
    # -> -32768 (+2): both saturate, the output is nevertheless right
    a = np.array([[255, 4, 255, 2]], np.uint8)
    b = np.array([[127], [96], [-128], [-65]], np.int8)
    report = u8s8_saturation(a, b)
    assert report.saturated_pairs == 2
    assert report.saturating.tolist() == [[True]]
    assert report.affected.tolist() == [[False]] and report.count == 0
    assert report.exact.tolist() == report.engine.tolist() == [[-1]]


def test_zero_points_shift_exact_and_engine_alike():
    a = np.full((1, 2), 255, np.uint8)
    b = np.full((2, 1), 127, np.int8)
    report = u8s8_saturation(a, b, a_zero_point=128, b_zero_point=np.int8(-1))
    assert report.exact.tolist() == [[2 * 127 * 128]]
    # the engine saturates the raw pair (64770 -> 32767) and corrects zero points exactly
    assert report.engine.tolist() == [[32767 + 1 * 510 - 128 * 254 - 2 * 128 * 1]]
    assert report.engine[0, 0] - report.exact[0, 0] == 32767 - 64770


def test_k_axis_moves_the_reduction():
    a = np.full((4, 2), 255, np.uint8)  # K along axis 0
    b = np.full((4, 3), 127, np.int8)
    report = u8s8_saturation(a, b, k_axis=0)
    assert report.exact.shape == (2, 3) and report.count == 6


# --------------------------------------------------------------------------- random data


@pytest.mark.parametrize("depth", [1, 2, 7, 16, 33])
def test_emulation_matches_naive_avx2_model(rng, depth):
    a = rng.integers(0, 256, (6, depth)).astype(np.uint8)
    b = rng.integers(-128, 128, (depth, 5)).astype(np.int8)
    report = u8s8_saturation(a, b, a_zero_point=117, b_zero_point=np.int8(-3), limit=1000)
    assert np.array_equal(report.engine, naive_avx2_matmul(a, b, 117, -3))
    # the emulation differs from the exact result exactly where the detector says
    assert np.array_equal(report.engine != report.exact, report.affected)
    # every reported pair really overflows int16, with the operand bytes it names
    for pair in report.examples:
        m, n = pair.output
        (k0,), (k1,) = pair.k
        assert pair.a == (int(a[m, k0]), int(a[m, k1]) if k1 < depth else 0)
        assert pair.b == (int(b[k0, n]), int(b[k1, n]) if k1 < depth else 0)
        assert pair.exact == pair.a[0] * pair.b[0] + pair.a[1] * pair.b[1]
        assert pair.saturated == sat16(pair.exact) != pair.exact
    assert len(report.examples) == report.saturated_pairs


def test_full_range_weights_break_most_outputs(rng):
    a = rng.integers(0, 256, (64, 256)).astype(np.uint8)
    b = rng.integers(-128, 128, (256, 64)).astype(np.int8)
    report = u8s8_saturation(a, b)
    assert report.count > report.exact.size // 2
    assert np.array_equal(report.engine != report.exact, report.affected)
    assert report.count == len(report.positions)
    assert len(report.examples) == 5
    # examples come first by output, then by K
    keys = [(np.ravel_multi_index(p.output, report.exact.shape), p.k) for p in report.examples]
    assert keys == sorted(keys)


def test_batched_operands(rng):
    a = rng.integers(0, 256, (3, 4, 10)).astype(np.uint8)
    b = rng.integers(-128, 128, (10, 5)).astype(np.int8)
    report = u8s8_saturation(a, b)
    for i in range(3):
        assert np.array_equal(report.engine[i], naive_avx2_matmul(a[i], b))
    assert report.engine.shape == (3, 4, 5)


# --------------------------------------------------------------------------- convolution


@pytest.mark.parametrize("channels, outputs, group, strides, pads", [
    (3, 4, 1, (1, 1), (1, 1, 1, 1)),   # odd K = 27: one pair spans two kernel taps
    (4, 6, 2, (2, 1), (0, 1, 2, 0)),   # groups
    (8, 4, 1, (1, 1), (1, 0, 0, 1)),   # channels a multiple of 4 (ConvSym's pairs)
])
def test_conv_emulation_matches_channels_last_model(rng, channels, outputs, group, strides,
                                                    pads):
    x = rng.integers(0, 256, (2, channels, 5, 5)).astype(np.uint8)
    w = rng.integers(-128, 128, (outputs, channels // group, 3, 3)).astype(np.int8)
    report = u8s8_conv_saturation(x, w, 131, strides=strides, pads=pads, group=group,
                                  limit=10_000)
    assert report.path == "gemm"
    assert np.array_equal(report.exact, conv_integer(x, w, 131, strides=strides, pads=pads,
                                                     group=group))
    assert np.array_equal(report.engine, naive_avx2_conv(x, w, 131, strides, pads, group))
    assert np.array_equal(report.engine != report.exact, report.affected)
    assert report.count > 0
    for pair in report.examples:
        n, m = pair.output[:2]
        for side, where in enumerate(pair.k):
            if not where:
                continue
            c, ty, tx = where
            oy, ox = pair.output[2:]
            py, px = oy * strides[0] - pads[0] + ty, ox * strides[1] - pads[1] + tx
            inside = 0 <= py < 5 and 0 <= px < 5
            assert pair.a[side] == (int(x[n, c, py, px]) if inside else 131)
            assert pair.b[side] == int(w[m, c - (m // (outputs // group)) * (channels // group),
                                         ty, tx])
    assert np.array_equal(conv_u8s8_avx2(x, w, 131, strides=strides, pads=pads, group=group),
                          report.engine)


def test_depthwise_conv_is_exact_in_onnxruntime(rng):
    x = np.full((1, 4, 5, 5), 255, np.uint8)
    w = np.full((4, 1, 3, 3), 127, np.int8)
    report = u8s8_conv_saturation(x, w, group=4, pads=[1, 1, 1, 1])
    assert report.path == "depthwise" and report.count == 0 and not report
    assert np.array_equal(report.engine, report.exact)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call, message", [
    (lambda: u8s8_saturation(np.zeros((2, 2), np.int8), np.zeros((2, 2), np.int8)),
     "a_u8 must be a uint8 array, not dtype int8"),
    (lambda: u8s8_saturation(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)),
     "b_s8 must be an int8 array, not dtype uint8"),
    (lambda: u8s8_saturation(np.zeros((2, 2), np.uint8), np.zeros((3, 2), np.int8)),
     "MatMulInteger shapes do not align: a (2, 2) has K = 2 but b (3, 2) has K = 3"),
    (lambda: u8s8_saturation(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.int8), limit=-1),
     "limit must be a non-negative int, not -1"),
    (lambda: u8s8_saturation(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.int8), k_axis=2),
     "k_axis 2 is out of range for a_u8 of shape (2, 2)"),
    (lambda: u8s8_conv_saturation(np.zeros((1, 3, 4, 4), np.uint8),
                                  np.zeros((2, 3, 3, 3), np.int8), group=2),
     "group 2 does not divide the 3 input channels of x"),
    (lambda: u8s8_conv_saturation(np.zeros((1, 3, 4, 4), np.int8),
                                  np.zeros((2, 3, 3, 3), np.int8)),
     "x_u8 must be a uint8 array, not dtype int8"),
])
def test_errors(call, message):
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message


# --------------------------------------------------------------------------- ONNX Runtime


def _ort_run(op_type, inputs, initializers, feeds, out_type, **attributes):
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper, numpy_helper

    names = [value.name for value in inputs] + list(initializers)
    node = helper.make_node(op_type, names, ["y"], **attributes)
    graph = helper.make_graph([node], "hazard", inputs,
                              [helper.make_tensor_value_info("y", out_type, None)],
                              initializer=[numpy_helper.from_array(v, k)
                                           for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _expect_engine(got, report, what):
    """Assert ONNX Runtime's result against the prediction for this CPU's instruction path."""
    isa = detect_isa()
    print(f"{what}: this CPU's path is {isa!r}; {report.count} of {report.exact.size} "
          f"outputs differ from the exact result on a saturating path; ONNX Runtime "
          f"{'saturates' if not np.array_equal(got, report.exact) else 'is exact'} here")
    assert np.array_equal(got, report.engine if u8s8_saturates(isa) else report.exact)


def test_onnxruntime_matmul_integer_u8s8(rng):
    from onnx import TensorProto, helper

    a = rng.integers(0, 256, (32, 128)).astype(np.uint8)
    b = rng.integers(-128, 128, (128, 48)).astype(np.int8)
    report = u8s8_saturation(a, b, a_zero_point=np.uint8(100))
    assert report.count > 0
    got = _ort_run("MatMulInteger", [helper.make_tensor_value_info("a", TensorProto.UINT8,
                                                                   a.shape)],
                   {"b": b, "a_zero_point": np.array(100, np.uint8),
                    "b_zero_point": np.array(0, np.int8)},
                   {"a": a}, TensorProto.INT32)
    _expect_engine(got, report, "MatMulInteger u8 x s8")


def test_onnxruntime_qlinear_conv_u8s8(rng):
    from onnx import TensorProto, helper

    x = rng.integers(0, 256, (1, 8, 10, 10)).astype(np.uint8)
    w = rng.integers(-128, 128, (16, 8, 3, 3)).astype(np.int8)
    x_scale, w_scale, y_scale = np.float32(0.02), np.float32(0.01), np.float32(7.3)
    report = u8s8_conv_saturation(x, w, 128, pads=[1, 1, 1, 1])
    assert report.count > 0
    got = _ort_run("QLinearConv",
                   [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)],
                   {"x_scale": np.array(x_scale), "x_zero_point": np.array(128, np.uint8),
                    "w": w, "w_scale": np.array(w_scale), "w_zero_point": np.array(0, np.int8),
                    "y_scale": np.array(y_scale), "y_zero_point": np.array(120, np.uint8)},
                   {"x": x}, TensorProto.UINT8, pads=[1, 1, 1, 1])
    exact = qlinear_conv(x, x_scale, np.uint8(128), w, w_scale, np.int8(0), y_scale,
                         np.uint8(120), pads=[1, 1, 1, 1], semantics="onnxruntime", isa="exact")
    from qsim.quant.requant import requantize

    engine = requantize(report.engine, x_scale, w_scale, y_scale, 120, "uint8", "onnxruntime",
                        channel_axis=1)
    predicted = type(report)(exact=exact.astype(np.int64), engine=engine,
                             affected=engine != exact, saturating=report.saturating,
                             saturated_pairs=report.saturated_pairs, examples=report.examples)
    assert predicted.count > 0  # the saturation survives requantization
    _expect_engine(got, predicted, "QLinearConv u8 x s8")


def test_qlinear_matmul_u8s8_prediction_requantized(rng):
    """The hazard seen at the 8-bit output, as NUMERICS.md reports (most outputs wrong)."""
    a = rng.integers(0, 256, (64, 256)).astype(np.uint8)
    b = rng.integers(-128, 128, (256, 64)).astype(np.int8)
    from qsim.quant.requant import requantize

    scales = (np.float32(0.02), np.float32(0.01), np.float32(0.9))
    exact = qlinear_matmul(a, scales[0], np.uint8(128), b, scales[1], np.int8(0), scales[2],
                           np.uint8(128), semantics="onnxruntime", isa="exact")
    engine = requantize(matmul_u8s8_avx2(a, b, 128), *scales, 128, "uint8", "onnxruntime")
    wrong = np.count_nonzero(engine != exact)
    assert wrong > exact.size // 2
    assert int(np.abs(engine.astype(np.int64) - exact).max()) > 10
