from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qsim.errors import ConfigError
from qsim.numerics import INT4, IntFormat
from qsim.quant.calibrate import (
    EntropyObserver, MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver, PercentileObserver,
    compute_params, fake_quantize, make_observer, parse_format, quant_range,
)

ort_quant_utils = pytest.importorskip("onnxruntime.quantization.quant_utils")
ort_calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")
from onnx import TensorProto  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ORT_TYPES = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int4": TensorProto.INT4,
             "uint4": TensorProto.UINT4, "int16": TensorProto.INT16, "uint16": TensorProto.UINT16}
OPTIONS = [(False, False), (True, False), (False, True), (True, True)]  # (symmetric, reduce_range)


def message(exc_info) -> str:
    return str(exc_info.value)


# ------------------------------------------------------------------------------------------
# Ranges and the ORT scale / zero-point rule
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ORT_TYPES))
@pytest.mark.parametrize("symmetric, reduce_range", OPTIONS)
def test_quant_range_equals_ort_tables(name, symmetric, reduce_range):
    qmin, qmax = ort_quant_utils.get_qmin_qmax_for_qType(
        ORT_TYPES[name], reduce_range=reduce_range, symmetric=symmetric)
    assert quant_range(name, symmetric, reduce_range) == (int(qmin), int(qmax))


def test_quant_range_beyond_ort_formats():
    assert quant_range("int2") == (-2, 1)
    assert quant_range("int2", symmetric=True) == (-1, 1)  # ternary
    assert quant_range("uint2", symmetric=True) == (0, 3)
    assert quant_range("int3", symmetric=True) == (-3, 3)
    assert quant_range("int3", reduce_range=True) == (-2, 1)
    assert quant_range("uint3", reduce_range=True) == (0, 3)
    assert quant_range(IntFormat(6), reduce_range=True, symmetric=True) == (-16, 15)


def random_ranges(rng, count):
    """Ranges across float32's whole span, with the degenerate and one-signed cases."""
    mags = 10.0 ** rng.uniform(-45, 38, size=(count, 2))
    signs = rng.choice([-1.0, 1.0], size=(count, 2))
    pairs = (signs * mags).astype(np.float32)
    pairs[::7, 0] = 0
    pairs[::11, 1] = pairs[::11, 0]  # zero-width ranges
    pairs[::13] = np.abs(pairs[::13])  # all positive
    pairs[::17] = -np.abs(pairs[::17])  # all negative
    pairs[::19] = rng.standard_normal((pairs[::19].shape[0], 2)).astype(np.float32)  # ordinary
    pairs[:4] = [[0, 0], [-1e-38, 1e-38], [np.float32(-3.4e38), np.float32(3.4e38)], [-1, 1]]
    return np.sort(pairs, axis=1)


@pytest.mark.parametrize("name", list(ORT_TYPES))
@pytest.mark.parametrize("symmetric, reduce_range", OPTIONS)
def test_compute_params_is_bit_exact_with_ort(rng, name, symmetric, reduce_range):
    qtype = ORT_TYPES[name]
    qmin, qmax = ort_quant_utils.get_qmin_qmax_for_qType(qtype, reduce_range=reduce_range,
                                                         symmetric=symmetric)
    ranges = random_ranges(rng, 400)
    ours = compute_params(ranges[:, 0], ranges[:, 1], name, symmetric, reduce_range, axis=0)
    for i, (lo, hi) in enumerate(ranges):
        zp, scale = ort_quant_utils.compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32),
                                                     qmin, qmax, symmetric)
        assert np.asarray(scale).dtype == np.float32
        assert ours.scale[i].tobytes() == np.asarray(scale).tobytes(), (lo, hi, ours.scale[i], scale)
        assert int(ours.zero_point[i]) == int(zp), (lo, hi)
        single = compute_params(lo, hi, name, symmetric, reduce_range)
        assert single.scale.tobytes() == ours.scale[i].tobytes()
        assert int(single.zero_point) == int(ours.zero_point[i])


def test_compute_params_exact_values():
    p = compute_params(-1.0, 3.0, "int8")
    assert p.scale.dtype == np.float32 and p.scale == np.float32(4 / 255)
    assert int(p.zero_point) == -64  # rne(-128 + 63.75)
    p = compute_params(-1.0, 1.0, "int8", symmetric=True)
    assert p.scale == np.float32(2 / 254) and int(p.zero_point) == 0
    p = compute_params(0.0, 2.55, "uint8")
    assert p.scale == np.float32(np.float64(np.float32(2.55)) / 255) and int(p.zero_point) == 0
    p = compute_params(-0.5, 2.0, "uint8", symmetric=True)
    assert p.scale == np.float32(4 / 255) and int(p.zero_point) == 128
    p = compute_params(0.5, 2.0, "int8", reduce_range=True)  # widened to [0, 2], onto [-64, 64]
    assert p.scale == np.float32(2 / 128) and int(p.zero_point) == -64
    p = compute_params(-0.5, 0.5, "int2", symmetric=True)  # ternary
    assert p.scale == np.float32(0.5) and int(p.zero_point) == 0
    p = compute_params(0.0, 0.0, "uint8")
    assert p.scale == np.float32(1) and int(p.zero_point) == 0
    assert p.fmt.name == "uint8" and p.axis is None


def test_compute_params_per_channel():
    p = compute_params([-1.0, 0.0, -2.0], [1.0, 4.0, 0.0], "int8", symmetric=True, axis=1)
    assert p.axis == 1
    assert p.scale.tolist() == [np.float32(2 / 254), np.float32(8 / 254), np.float32(4 / 254)]
    assert p.zero_point.tolist() == [0, 0, 0]


@pytest.mark.parametrize("call, text", [
    (lambda: compute_params(1.0, -1.0), "rmin = 1.0 is above rmax = -1.0"),
    (lambda: compute_params([0.0, 2.0], [1.0, 1.0], axis=0), "rmin[1] = 2.0 is above rmax[1] = 1.0"),
    (lambda: compute_params(np.nan, 1.0), "rmin must be a finite float32 value, not nan"),
    (lambda: compute_params(-1.0, 1e39), "rmax must be a finite float32 value, not 1e+39"),
    (lambda: compute_params([0.0], [1.0, 2.0], axis=0), "rmin shape (1,) and rmax shape (2,) differ"),
    (lambda: compute_params([0.0, 0.0], [1.0, 2.0]),
     "per-channel ranges (shape (2,)) need axis=; give scalars for per-tensor parameters"),
    (lambda: compute_params(0.0, 1.0, axis=0), "per-channel ranges must be 1-D, not shape ()"),
    (lambda: compute_params(-1.0, 1.0, "int9x"),
     "unknown integer format 'int9x': expected a name like 'int8', 'uint8', 'int4', 'uint4' or 'int2'"),
    (lambda: compute_params(-1.0, 1.0, "int32"),
     "calibration supports formats of 2 to 16 bits, not int32"),
    (lambda: compute_params(-1.0, 1.0, 8), "fmt must be an IntFormat or a name like 'int8', not 8"),
    (lambda: compute_params(-1.0, 1.0, "int2", reduce_range=True),
     "reduce_range drops one bit of range and needs a format of at least 3 bits, not int2"),
])
def test_compute_params_errors(call, text):
    with pytest.raises(ConfigError) as exc:
        call()
    assert message(exc) == text


def test_parse_format():
    assert parse_format("UINT4").name == "uint4"
    assert parse_format(INT4) is INT4


# ------------------------------------------------------------------------------------------
# Observer interface and errors
# ------------------------------------------------------------------------------------------

ALL_OBSERVERS = [
    lambda **kw: MinMaxObserver(**kw),
    lambda **kw: MovingAverageMinMaxObserver(0.1, **kw),
    lambda **kw: PercentileObserver(99.0, num_bins=256, **kw),
    lambda **kw: MSEObserver(num_candidates=20, num_bins=256, **kw),
    lambda **kw: EntropyObserver(num_bins=256, **kw),
]


@pytest.mark.parametrize("make", ALL_OBSERVERS)
def test_observers_reject_bad_batches(make):
    obs = make(per_channel_axis=1)
    with pytest.raises(ConfigError) as exc:
        obs.compute()
    assert message(exc) == (f"{type(obs).__name__} has no calibration data: call observe() with "
                            f"at least one batch before compute()")
    with pytest.raises(ConfigError) as exc:
        obs.observe(np.zeros((0, 3)))
    assert message(exc) == ("calibration batch 0 is empty (shape (0, 3)); every batch needs at "
                            "least one value")
    with pytest.raises(ConfigError) as exc:
        obs.observe(np.array([[1.0, np.nan], [np.nan, 2.0]]))
    assert message(exc) == ("calibration batch 0 has 2 non-finite values (first: x[0, 1] = nan); "
                            "observers need finite data")
    with pytest.raises(ConfigError) as exc:
        obs.observe(np.zeros(5))
    assert message(exc) == ("per_channel_axis 1 is out of range for a batch of shape (5,) "
                            "(1 dimension)")
    obs.observe(np.ones((2, 3)))
    with pytest.raises(ConfigError) as exc:
        obs.observe(np.ones((2, 4)))
    assert message(exc) == "calibration batch 1 has 4 channels on axis 1 but earlier batches had 3"
    assert obs.batches == 1


@pytest.mark.parametrize("call, text", [
    (lambda: MinMaxObserver("float8"),
     "unknown integer format 'float8': expected a name like 'int8', 'uint8', 'int4', 'uint4' or 'int2'"),
    (lambda: MinMaxObserver(per_channel_axis=1.0), "per_channel_axis must be an int or None, not 1.0"),
    (lambda: MinMaxObserver(symmetric=1), "symmetric must be a bool, not 1"),
    (lambda: MinMaxObserver("int2", reduce_range=True),
     "reduce_range drops one bit of range and needs a format of at least 3 bits, not int2"),
    (lambda: PercentileObserver(0), "percentile must be in (0, 100], not 0"),
    (lambda: PercentileObserver(100.5), "percentile must be in (0, 100], not 100.5"),
    (lambda: PercentileObserver(-3.0), "percentile must be in (0, 100], not -3.0"),
    (lambda: MovingAverageMinMaxObserver(0.0), "averaging_constant must be in (0, 1], not 0.0"),
    (lambda: MovingAverageMinMaxObserver(1.5), "averaging_constant must be in (0, 1], not 1.5"),
    (lambda: EntropyObserver(num_bins=64, num_quantized_bins=128),
     "num_quantized_bins (128) must not exceed num_bins (64)"),
    (lambda: MSEObserver(num_bins=1000), "num_bins must be a power of two between 8 and 1048576, not 1000"),
    (lambda: MSEObserver(num_bins=4), "num_bins must be between 8 and 1048576, not 4"),
    (lambda: MSEObserver(num_candidates=0), "num_candidates must be at least 1, not 0"),
    (lambda: make_observer("kl"),
     "unknown observer 'kl': expected one of minmax, moving_average, percentile, mse, entropy"),
])
def test_observer_option_errors(call, text):
    with pytest.raises(ConfigError) as exc:
        call()
    assert message(exc) == text


def test_minmax_exact_over_batches_and_channels(rng):
    batches = [rng.standard_normal((4, 6, 5)).astype(np.float32) * (k + 1) for k in range(3)]
    obs = MinMaxObserver("uint8")
    per_channel = MinMaxObserver("int8", symmetric=True, per_channel_axis=-2, reduce_range=True)
    for b in batches:
        assert obs.observe(b) is obs
        per_channel.observe(b)
    data = np.stack(batches)
    lo, hi = obs.compute_range()
    assert lo.dtype == np.float32 and lo.shape == () and lo == data.min() and hi == data.max()
    lo, hi = per_channel.compute_range()
    assert np.array_equal(lo, data.min(axis=(0, 1, 3))) and np.array_equal(hi, data.max(axis=(0, 1, 3)))
    p = per_channel.compute()
    q = compute_params(lo, hi, "int8", symmetric=True, reduce_range=True, axis=-2)
    assert p.axis == -2 and np.array_equal(p.scale, q.scale) and np.array_equal(p.zero_point, q.zero_point)
    assert obs.count == 3 * 4 * 6 * 5 and per_channel.count == 3 * 4 * 5
    assert repr(per_channel) == ("MinMaxObserver(int8, axis=-2, symmetric=True, reduce_range=True, "
                                 "batches=3)")


def test_moving_average_exact():
    obs = MovingAverageMinMaxObserver(0.5, "int8")
    obs.observe([-1.0, 1.0]).observe([-3.0, 5.0]).observe([0.0, 3.0])
    lo, hi = obs.compute_range()
    assert (lo, hi) == (np.float32(-1.0), np.float32(3.0))  # -1 -> -2 -> -1; 1 -> 3 -> 3
    obs = MovingAverageMinMaxObserver(0.25, per_channel_axis=0)
    obs.observe([[0.0, 4.0], [-8.0, 0.0]]).observe([[0.0, 8.0], [-4.0, 0.0]])
    lo, hi = obs.compute_range()
    assert lo.tolist() == [0.0, -7.0] and hi.tolist() == [5.0, 0.0]


# ------------------------------------------------------------------------------------------
# Histogram observers against ONNX Runtime's HistogramCollector
# ------------------------------------------------------------------------------------------

def ort_histogram_range(method, batches, symmetric, num_bins, num_quantized_bins=128, percentile=99.9):
    collector = ort_calibrate.HistogramCollector(
        method=method, symmetric=symmetric, num_bins=num_bins,
        num_quantized_bins=num_quantized_bins, percentile=percentile, scenario="same")
    for batch in batches:
        collector.collect({"x": batch})
    result = collector.compute_collection_result()["x"]
    return result[0], result[1]


def calibration_batches(rng, trial):
    count = 1 + trial % 4
    batches = [(rng.standard_normal(rng.integers(200, 2000)) * rng.uniform(0.1, 3)
                + rng.uniform(-1, 1)).astype(np.float32) for _ in range(count)]
    if trial % 3 == 0:
        batches = [np.maximum(b, 0) for b in batches]  # ReLU-like, many exact zeros
    if trial % 5 == 0:
        batches = [rng.laplace(size=700).astype(np.float32) * (k + 1) for k in range(count)]
    return batches


@pytest.mark.parametrize("trial", range(8))
def test_percentile_matches_ort(rng, trial, capsys):
    batches = calibration_batches(rng, trial)
    for symmetric in (False, True):
        obs = PercentileObserver(99.9, symmetric=symmetric, num_bins=2048)
        for b in batches:
            obs.observe(b)
        lo, hi = obs.compute_range()
        ort_lo, ort_hi = ort_histogram_range("percentile", batches, symmetric, 2048, percentile=99.9)
        assert (lo, hi) == (ort_lo, ort_hi), (symmetric, lo, hi, ort_lo, ort_hi)


@pytest.mark.parametrize("trial", range(8))
def test_entropy_matches_ort(rng, trial, capsys):
    batches = calibration_batches(rng, trial)
    # ORT's own search is a Python loop; growing 2048-bin histograms make it take seconds.
    bins = 2048 if len(batches) == 1 else (512, 128)[trial % 2]
    obs = EntropyObserver(num_bins=bins, num_quantized_bins=128)
    for b in batches:
        obs.observe(b)
    lo, hi = obs.compute_range()
    ort_lo, ort_hi = ort_histogram_range("entropy", batches, False, bins, 128)
    assert lo.tobytes() == np.float32(ort_lo).tobytes() and hi.tobytes() == np.float32(ort_hi).tobytes()


def test_entropy_clips_outliers(rng):
    x = np.concatenate([rng.standard_normal(20000), [40.0, -35.0]]).astype(np.float32)
    lo, hi = EntropyObserver().observe(x).compute_range()
    assert -35 < lo < -2 and 2 < hi < 40
    assert EntropyObserver("int4").num_quantized_bins == 8


def test_percentile_symmetric_uses_absolute_values():
    x = np.arange(-1000, 1001, dtype=np.float32)
    lo, hi = PercentileObserver(100.0, symmetric=True, num_bins=2000).observe(x).compute_range()
    assert (lo, hi) == (-1000.0, 1000.0)
    lo, hi = PercentileObserver(50.0, symmetric=True, num_bins=2000).observe(x).compute_range()
    assert (lo, hi) == (-500.0, 500.0)  # half of |x| is <= 500 (bin edges are 0.5 apart)


def test_histograms_per_channel_equal_separate_observers(rng):
    x = rng.standard_normal((3, 500)).astype(np.float32) * np.array([[1], [4], [0.1]], np.float32)
    for make in (lambda **kw: PercentileObserver(99.0, num_bins=512, **kw),
                 lambda **kw: EntropyObserver(num_bins=512, **kw),
                 lambda **kw: MSEObserver(num_bins=512, num_candidates=50, **kw)):
        lo, hi = make(per_channel_axis=0).observe(x).compute_range()
        for c in range(3):
            clo, chi = make().observe(x[c]).compute_range()
            assert (lo[c], hi[c]) == (clo, chi)


class _Reader:
    def __init__(self, batches):
        self._batches = iter([{"X": b} for b in batches])

    def get_next(self):
        return next(self._batches, None)


def test_quantize_static_parameters_are_reproduced(rng, tmp_path, capsys):
    """End to end: the scales and zero points ORT's quantize_static writes into a QDQ model."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    w = rng.standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [16, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [16, 4])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    batches = [(rng.standard_normal((16, 8)) * (k + 1) + 0.5).astype(np.float32) for k in range(3)]
    everything = np.stack(batches)  # quantize_static histograms all batches at once

    def run(method):
        quantize_static(tmp_path / "m.onnx", tmp_path / "q.onnx", _Reader(batches),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method)
        q = onnx.load(tmp_path / "q.onnx")
        return {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}

    def same(params, scale, zero_point):
        assert params.scale.tobytes() == np.asarray(scale, np.float32).tobytes()
        assert params.zero_point.tolist() == np.asarray(zero_point).astype(np.int64).tolist()

    minmax = MinMaxObserver("uint8")
    for b in batches:
        minmax.observe(b)
    weights = MinMaxObserver("int8", symmetric=True, per_channel_axis=1, reduce_range=True).observe(w)
    for method, observer in [
        (CalibrationMethod.MinMax, minmax),
        (CalibrationMethod.Entropy, EntropyObserver("uint8", num_bins=128, num_quantized_bins=128)
         .observe(everything)),
    ]:
        inits = run(method)
        same(observer.compute(), inits["X_scale"], inits["X_zero_point"])
        same(weights.compute(), inits["W_scale"], inits["W_zero_point"])
    # quantize_static's Entropy equals its MinMax: one 128-bin histogram has one window.
    assert EntropyObserver("uint8", num_bins=128, num_quantized_bins=128).observe(everything) \
        .compute_range() == minmax.compute_range()
    # ORT's Percentile defaults to the |x| histogram (CalibTensorRangeSymmetric=True) and
    # then quantizes the uint8 activation asymmetrically.
    inits = run(CalibrationMethod.Percentile)
    lo, hi = PercentileObserver(99.999, symmetric=True).observe(everything).compute_range()
    same(compute_params(lo, hi, "uint8"), inits["X_scale"], inits["X_zero_point"])


# ------------------------------------------------------------------------------------------
# MSE observer
# ------------------------------------------------------------------------------------------

def test_mse_histogram_errors_are_exact_for_bin_centres(rng):
    # limit 2**5 = 32 with 64 bins: bin width 1, centres k + 0.5 are exact float32 values
    centres = np.arange(-32, 32) + 0.5
    x = rng.choice(centres, size=3000, p=np.exp(-np.abs(centres) / 3) / np.exp(-np.abs(centres) / 3).sum())
    x = np.concatenate([x, [31.5, -20.5, 0.0, 0.0]]).astype(np.float32)
    obs = MSEObserver("int4", num_bins=64, num_candidates=40).observe(x)
    ratios, errors = obs.candidate_errors()
    assert ratios.tolist() == (np.arange(40, 0, -1) / 40).astype(np.float32).tolist()
    brute = []
    for r in ratios:
        p = compute_params(r * x.min(), r * x.max(), "int4")
        brute.append(np.mean((fake_quantize(x, p).astype(np.float64) - x) ** 2))
    np.testing.assert_allclose(errors[:, 0], brute, rtol=1e-12)
    best = int(np.argmin(brute))
    assert sorted(brute)[1] > brute[best] * (1 + 1e-6)  # a unique optimum, so argmin is stable
    lo, hi = obs.compute_range()
    assert (lo, hi) == (ratios[best] * x.min(), ratios[best] * x.max())


def test_mse_beats_minmax_with_outliers(rng):
    x = np.concatenate([rng.standard_normal(5000), [25.0, -30.0]]).astype(np.float32)
    mse = MSEObserver("int4", symmetric=True).observe(x).compute()
    minmax = MinMaxObserver("int4", symmetric=True).observe(x).compute()
    err = lambda p: np.mean((fake_quantize(x, p).astype(np.float64) - x) ** 2)  # noqa: E731
    assert mse.scale < minmax.scale / 3
    assert err(mse) < err(minmax) / 3  # measured: 0.240 against 0.872


def test_mse_histogram_merges_exactly_when_the_range_grows(rng):
    a = rng.uniform(-1, 1, 1000).astype(np.float32)
    b = rng.uniform(-3, 3, 1000).astype(np.float32)
    grown = MSEObserver(num_bins=256).observe(a).observe(b)._hist
    direct = MSEObserver(num_bins=256).observe(np.concatenate([b, a]))._hist
    assert grown.exponent.tolist() == direct.exponent.tolist() == [2]
    assert np.array_equal(grown.counts, direct.counts)


def test_mse_all_zero_channel():
    obs = MSEObserver(per_channel_axis=0).observe(np.array([[0.0, 0.0], [1.0, -2.0]]))
    lo, hi = obs.compute_range()
    assert lo.tolist() == [0.0, -2.0] and hi.tolist() == [0.0, 1.0]
    assert obs.compute().scale[0] == np.float32(1)


# ------------------------------------------------------------------------------------------
