"""Post-training quantization of IR graphs: structure, accuracy under every semantics, errors,
mixed precision, and parity with ONNX Runtime's quantize_static.

Accuracies are exact counts of correct test images (of 449) for the shipped weights, calibrated
on all 1348 training images with min/max; they do not depend on BLAS (the integer graphs are
exact, the float calibration ranges were identical under every thread count tried).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from qsim.errors import ConfigError
from qsim.nn import layers as L
from qsim.nn.engine import run
from qsim.nn.graph import Graph, TensorType
from qsim.nn.ptq import (
    PTQRecord, choose_weight_bits, fold_and_fuse, plan_weight_bits, quantize_graph, weight_layers,
)
from qsim.quant.analysis import sqnr_db
from qsim.quant.fold import fold_batchnorm
from qsim.quant.requant import Semantics

pytest.importorskip("sklearn")
from qsim.nn.examples import digits_cnn, digits_data, digits_mlp  # noqa: E402

SEMANTICS = [s.value for s in Semantics if s is not Semantics.LITERT_OPTIMIZED]  # litert-optimized refuses conv and quantize layers (checked in test_tflite.py)
#: Correct test images: float, int8 weights and int4 weights (int8 activations), every semantics.
FLOAT = {"mlp": 436, "cnn": 443}
INT8 = {"mlp": 436, "cnn": 443}
INT4 = {"mlp": 430, "cnn": 438}
#: int8 PTQ may lose at most this many test images against float (it loses none).
INT8_MARGIN = 2


@pytest.fixture(scope="module")
def digits():
    out = {}
    for network, make, layout in (("mlp", digits_mlp, "flat"), ("cnn", digits_cnn, "image")):
        x_train, _, x_test, y_test = digits_data(layout)
        out[network] = (make(), {"image": x_train}, {"image": x_test}, y_test)
    return out


@pytest.fixture(scope="module")
def quantized(digits):
    return {(network, bits): quantize_graph(graph, calib, weight_bits=bits)
            for network, (graph, calib, _, _) in digits.items() for bits in (8, 4)}


def ulps(a, b) -> int:
    """Distance of two positive float32 values in units in the last place."""
    return abs(int(np.float32(a).view(np.int32)) - int(np.float32(b).view(np.int32)))


def correct(graph: Graph, feeds, labels, semantics: str = "onnxruntime") -> int:
    # isa="exact": the network's own integers, not those of a CPU whose u8 x s8 kernel saturates
    logits = run(graph, feeds, semantics, isa="exact").outputs["logits"]
    return int(np.count_nonzero(logits.argmax(axis=1) == labels))


def test_quantized_mlp_structure(quantized):
    q = quantized[("mlp", 8)]
    assert [(layer.name, layer.kind, layer.inputs, layer.outputs) for layer in q.layers] == [
        ("quantize_image", "quantize", ("image",), ("image_quantized",)),
        ("fc1", "linear", ("image_quantized",), ("relu1",)),
        ("fc2", "linear", ("relu1",), ("relu2",)),
        ("fc3", "linear", ("relu2",), ("logits_quantized",)),
        ("dequantize_logits", "dequantize", ("logits_quantized",), ("logits",)),
    ]
    assert q.inputs == digits_mlp().inputs and q.outputs == ["logits"]
    record = q.meta["ptq"]
    assert isinstance(record, PTQRecord) and record.weight_bits == {"fc1": 8, "fc2": 8, "fc3": 8}
    assert record.float_tensor == {"image_quantized": "image", "relu1": "relu1", "relu2": "relu2",
                                   "logits_quantized": "logits"}
    fc1 = q.layer("fc1")
    assert fc1.activation == "relu" and q.layer("fc3").activation is None
    assert fc1.weight.dtype == np.int8 and fc1.bias.dtype == np.int32
    assert fc1.weight_params.axis == 1 and fc1.weight_params.scale.shape == (32,)
    assert np.all(fc1.weight_params.zero_point == 0)
    assert np.abs(fc1.weight).max(axis=0).tolist() == [127] * 32  # symmetric [-127, 127], per channel
    image = record.tensor_params["image_quantized"]
    assert image.scale == np.float32(1 / 255) and int(image.zero_point) == -128
    assert record.tensor_params["relu1"] is fc1.output_params is q.layer("fc2").input_params
    assert int(fc1.output_params.zero_point) == -128  # the range starts at 0 after the fused ReLU


def test_quantized_cnn_passes_pools_and_flatten_through(quantized):
    q = quantized[("cnn", 8)]
    assert [layer.name for layer in q.layers] == [
        "quantize_image", "conv1", "pool1", "conv2", "pool2", "flatten", "fc", "dequantize_logits"]
    record = q.meta["ptq"]
    # A max pool and a flatten compute on integers and keep their input's parameters (ORT's rule).
    assert record.tensor_params["pool1"] is record.tensor_params["relu1"]
    assert record.tensor_params["flatten"] is record.tensor_params["relu2"]
    conv1 = q.layer("conv1")
    assert conv1.weight.shape == (8, 1, 3, 3) and conv1.weight_params.axis == 0
    assert conv1.activation == "relu" and conv1.outputs == ("relu1",)


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("network", ["mlp", "cnn"])
def test_int8_and_int4_accuracy_under_every_semantics(digits, quantized, network, semantics):
    graph, _, feeds, labels = digits[network]
    assert correct(graph, feeds, labels) == FLOAT[network]
    int8 = correct(quantized[(network, 8)], feeds, labels, semantics)
    int4 = correct(quantized[(network, 4)], feeds, labels, semantics)
    assert int8 == INT8[network] and FLOAT[network] - int8 <= INT8_MARGIN
    assert int4 == INT4[network] and int4 < int8


def test_narrow_weights_stay_in_their_format(digits):
    graph, calib, feeds, labels = digits["mlp"]
    int4 = quantize_graph(graph, calib, weight_bits=4)
    int2 = quantize_graph(graph, calib, weight_bits=2)
    for name in weight_layers(graph):
        w4, w2 = int4.layer(name).weight, int2.layer(name).weight
        assert w4.dtype == w2.dtype == np.int8
        assert w4.min() >= -8 and w4.max() <= 7 and int4.layer(name).weight_params.fmt.name == "int4"
        assert sorted(np.unique(w2).tolist()) == [-1, 0, 1]  # symmetric int2 is ternary
    assert correct(int2, feeds, labels) == 180  # two bits are too few for this network


def test_bias_is_quantized_like_onnxruntime(quantized, digits):
    q, float_graph = quantized[("cnn", 8)], digits["cnn"][0]
    for name in ("conv1", "conv2", "fc"):
        layer = q.layer(name)
        scale = (np.float32(layer.input_params.scale) * layer.weight_params.scale).astype(np.float64)
        expected = np.rint(float_graph.layer(name).bias.astype(np.float64) / scale)
        assert np.array_equal(layer.bias, expected.astype(np.int32))


def test_options(digits):
    graph, calib, feeds, labels = digits["mlp"]
    u8 = quantize_graph(graph, calib, activation_format="uint8")
    params = u8.meta["ptq"].tensor_params
    assert params["image_quantized"].fmt.name == "uint8" and int(params["image_quantized"].zero_point) == 0
    assert int(params["logits_quantized"].zero_point) == 156
    assert correct(u8, feeds, labels) == 436
    per_tensor = quantize_graph(graph, calib, per_channel=False)
    assert per_tensor.layer("fc1").weight_params.axis is None
    asymmetric = quantize_graph(graph, calib, symmetric_weights=False)
    w = asymmetric.layer("fc1").weight  # each channel's range spans all of int8, zero points vary
    assert w.min(axis=0).tolist() == [-128] * 32 and w.max(axis=0).tolist() == [127] * 32
    assert asymmetric.layer("fc1").weight_params.zero_point[:4].tolist() == [24, -16, 14, 33]
    assert correct(asymmetric, feeds, labels) == 436
    reduced = quantize_graph(graph, calib, reduce_range=True)
    assert np.abs(reduced.layer("fc1").weight).max() == 64  # int8 weights on [-64, 64]
    assert reduced.meta["ptq"].tensor_params["relu1"].scale == params["relu1"].scale  # activations full range
    minmax = quantize_graph(graph, calib).meta["ptq"].tensor_params["logits_quantized"]
    for observer in ("percentile", "mse", "entropy"):
        q = quantize_graph(graph, calib, observer=observer)
        assert q.meta["ptq"].options["observer"] == observer
        assert q.meta["ptq"].tensor_params["logits_quantized"].scale < minmax.scale  # they clip outliers
        assert correct(q, feeds, labels) == 436
    batches = [{"image": calib["image"][i:i + 500]} for i in range(0, 1348, 500)]
    in_batches = quantize_graph(graph, batches).meta["ptq"].tensor_params
    in_one = quantize_graph(graph, calib).meta["ptq"].tensor_params
    # min/max: batching is irrelevant up to float32 summation order (BLAS blocks 500 and 1348
    # rows differently on some CPUs): scales within 2 ULP, zero points equal
    assert all(ulps(in_batches[t].scale, p.scale) <= 2 for t, p in in_one.items())
    assert all(int(in_batches[t].zero_point) == int(p.zero_point) for t, p in in_one.items())


def bn_graph(rng) -> Graph:
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return Graph("bn", {"x": TensorType((None, 2, 6, 6))}, [
        L.Conv2d("conv", ("x",), ("c",), in_channels=2, out_channels=4, kernel=3, pads=1,
                 weight=f32(4, 2, 3, 3)),
        L.BatchNorm("bn", ("c",), ("b",), gamma=f32(4), beta=f32(4), mean=f32(4), var=np.abs(f32(4)) + 0.1),
        L.Clip("relu6", ("b",), ("r",), lo=0.0, hi=6.0),
        L.MaxPool("pool", ("r",), ("p",), kernel=2, strides=2),
        L.Flatten("flat", ("p",), ("f",)),
        L.Linear("fc", ("f",), ("y",), in_features=36, out_features=5, weight=f32(36, 5), bias=f32(5)),
        L.BatchNorm("bn_fc", ("y",), ("z",), gamma=f32(5), beta=f32(5), mean=f32(5),
                    var=np.abs(f32(5)) + 0.1),
        L.Relu("relu", ("z",), ("out",)),
        L.Softmax("softmax", ("out",), ("prob",)),
    ], ["prob"])


def test_fold_and_fuse(rng):
    graph = bn_graph(rng)
    fused = fold_and_fuse(graph)
    assert [(layer.name, layer.outputs, getattr(layer, "activation", None)) for layer in fused.layers] == [
        ("conv", ("r",), ("clip", 0.0, 6.0)), ("pool", ("p",), None), ("flat", ("f",), None),
        ("fc", ("out",), "relu"), ("softmax", ("prob",), None)]
    conv, bn = graph.layer("conv"), graph.layer("bn")
    weight, bias = fold_batchnorm(conv.weight, None, bn.gamma, bn.beta, bn.mean, bn.var, bn.eps)
    assert np.array_equal(fused.layer("conv").weight, weight)
    assert np.array_equal(fused.layer("conv").bias, bias)
    fc, bn_fc = graph.layer("fc"), graph.layer("bn_fc")
    weight, _ = fold_batchnorm(fc.weight, fc.bias, bn_fc.gamma, bn_fc.beta, bn_fc.mean, bn_fc.var, bn_fc.eps,
                               channel_axis=1)
    assert np.array_equal(fused.layer("fc").weight, weight)
    x = rng.standard_normal((16, 2, 6, 6)).astype(np.float32)
    assert np.allclose(run(fused, {"x": x}).outputs["prob"], run(graph, {"x": x}).outputs["prob"], atol=1e-6)
    assert graph.layer("conv").activation is None  # the input graph is unchanged
    unfolded = fold_and_fuse(graph, fold_bn=False)
    assert [layer.name for layer in unfolded.layers] == [
        "conv", "bn", "relu6", "pool", "flat", "fc", "bn_fc", "relu", "softmax"]


def test_softmax_stays_float_behind_a_dequantize(rng):
    graph = bn_graph(rng)
    x = rng.standard_normal((64, 2, 6, 6)).astype(np.float32)
    q = quantize_graph(graph, {"x": x})
    assert [layer.kind for layer in q.layers] == [
        "quantize", "conv2d", "maxpool", "flatten", "linear", "dequantize", "softmax"]
    assert q.layers[-2].inputs == ("out",) and q.layers[-2].outputs == ("out_dequantized",)
    relu6 = q.meta["ptq"].tensor_params["r"]
    assert float(relu6.scale) * (127 - int(relu6.zero_point)) <= 6.0 + float(relu6.scale)
    for semantics in SEMANTICS:
        prob = run(q, {"x": x}, semantics).outputs["prob"]
        assert np.abs(prob - run(graph, {"x": x}).outputs["prob"]).max() < 0.05


def residual_graph(rng) -> Graph:
    f32 = lambda *shape: (0.3 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    return Graph("res", {"x": TensorType((None, 3, 8, 8))}, [
        L.MaxPool("inpool", ("x",), ("xp",), kernel=1),
        L.Conv2d("c1", ("x",), ("c1",), in_channels=3, out_channels=4, kernel=3, pads=1,
                 weight=f32(4, 3, 3, 3), bias=f32(4)),
        L.Relu("r1", ("c1",), ("r1",)),
        L.Conv2d("c2", ("r1",), ("c2",), in_channels=4, out_channels=4, kernel=3, pads=1,
                 weight=f32(4, 4, 3, 3)),
        L.Add("add", ("r1", "c2"), ("s",)),
        L.Relu("relu", ("s",), ("sr",)),
        L.AvgPool("avg", ("sr",), ("a",), kernel=2, strides=2),
        L.Conv2d("c3", ("a",), ("c3",), in_channels=4, out_channels=2, kernel=1, weight=f32(2, 4, 1, 1)),
        L.Concat("cat", ("a", "c3"), ("k",), axis=1),
        L.GlobalAvgPool("gap", ("k",), ("g",)),
        L.Flatten("flat", ("g",), ("gf",)),
        L.Linear("fc", ("gf",), ("y",), in_features=6, out_features=3, weight=f32(6, 3), bias=f32(3)),
    ], ["y", "a", "xp"])


def test_requantizing_layers_get_their_params(rng):
    graph = residual_graph(rng)
    x = rng.random((32, 3, 8, 8)).astype(np.float32)
    q = quantize_graph(graph, {"x": x})
    params = q.meta["ptq"].tensor_params
    assert [(layer.name, layer.inputs, layer.outputs) for layer in q.layers] == [
        ("inpool", ("x",), ("xp",)),  # float input: the max pool stays float, as in ORT
        ("quantize_x", ("x",), ("x_quantized",)),
        ("c1", ("x_quantized",), ("r1",)), ("c2", ("r1",), ("c2",)), ("add", ("r1", "c2"), ("sr",)),
        ("avg", ("sr",), ("a_quantized",)), ("c3", ("a_quantized",), ("c3",)),
        ("cat", ("a_quantized", "c3"), ("k",)), ("gap", ("k",), ("g",)), ("flat", ("g",), ("gf",)),
        ("fc", ("gf",), ("y_quantized",)),
        ("dequantize_y", ("y_quantized",), ("y",)), ("dequantize_a", ("a_quantized",), ("a",))]
    add = q.layer("add")
    assert add.activation == "relu" and add.input_params == (params["r1"], params["c2"])
    assert add.output_params is params["sr"]
    assert q.layer("avg").input_params is params["sr"] and q.layer("gap").input_params is params["k"]
    assert q.layer("cat").input_params == (params["a_quantized"], params["c3"])
    reference = run(graph, {"x": x}).outputs
    for semantics in SEMANTICS:
        out = run(q, {"x": x}, semantics).outputs
        assert np.array_equal(out["xp"], reference["xp"])
        for name in ("y", "a"):  # 35.8 dB and more over five seeds
            assert sqnr_db(reference[name], out[name]) > 30, (semantics, name)


@pytest.mark.parametrize("options, message", [
    ({"activation_format": "int16"}, "activation_format must be 'int8' or 'uint8', not 'int16'"),
    ({"weight_bits": 3}, "weight_bits must be 8, 4 or 2, not 3"),
    ({"weight_bits": {"fc1": 16}}, "weight_bits['fc1'] must be 8, 4 or 2, not 16"),
    ({"weight_bits": {"relu1": 4}},
     "weight_bits names 'relu1', which is not a Conv2d or Linear layer of graph 'digits_mlp' (those are "
     "'fc1', 'fc2', 'fc3')"),
    ({"observer": "kl"}, "observer must be one of 'minmax', 'percentile', 'mse', 'entropy', not 'kl'"),
    ({"per_channel": "yes"}, "per_channel must be a bool, not 'yes'"),
    ({"weight_bits": 2, "reduce_range": True},
     "layer 'fc1' (linear): int2 weights: reduce_range drops one bit of range and needs a format of at "
     "least 3 bits, not int2"),
    ({"calibration_feeds": []},
     "calibration_feeds is empty: quantizing graph 'digits_mlp' needs at least one calibration batch"),
    ({"calibration_feeds": {"image": np.zeros((0, 64), np.float32)}},
     "calibration batch 0: input 'image' has no samples (shape (0, 64))"),
    ({"calibration_feeds": 7},
     "calibration_feeds must be a mapping of input names to arrays or a sequence of such mappings, not int"),
])
def test_option_errors(options, message):
    feeds = options.pop("calibration_feeds", {"image": np.ones((4, 64), np.float32)})
    with pytest.raises(ConfigError) as exc:
        quantize_graph(digits_mlp(), feeds, **options)
    assert str(exc.value) == message


def test_graph_errors(rng):
    x = {"x": np.ones((2, 4), np.float32)}
    matmul = Graph("m", {"x": TensorType((None, 4)), "w": TensorType((4, 3))},
                   [L.MatMul("mm", ("x", "w"), ("y",))], ["y"])
    cases = [
        (matmul, "layer 'mm' (matmul): cannot be quantized (quantize_graph supports conv2d, linear, add, "
                 "avgpool, globalavgpool, concat, maxpool, flatten, reshape, transpose, relu, clip, softmax, "
                 "layernorm, gelu)"),
        (bn_graph(rng), "layer 'bn' (batchnorm): is not folded (only a BatchNorm that alone reads the "
                        "output of a Conv2d or Linear folds, with fold_bn=True) and has no integer version"),
        (Graph("s", {"x": TensorType((None, 4))},
               [L.Linear("fc", ("x",), ("y",), in_features=4, out_features=2)], ["y"]),
         "layer 'fc' (linear): has no weights (a shape-only graph cannot be quantized)"),
    ]
    for graph, message in cases:
        feeds = {"x": np.ones((2, 2, 6, 6), np.float32)} if graph.name == "bn" else dict(x)
        if graph.name == "m":
            feeds["w"] = np.ones((4, 3), np.float32)
        with pytest.raises(ConfigError) as exc:
            quantize_graph(graph, feeds, fold_bn=graph.name != "bn")
        assert str(exc.value) == message
    q = quantize_graph(digits_mlp(), {"image": np.ones((4, 64), np.float32)})
    with pytest.raises(ConfigError) as exc:
        quantize_graph(q, {"image": np.ones((4, 64), np.float32)})
    assert str(exc.value) == ("layer 'quantize_image' (quantize): is already quantized; quantize_graph takes "
                              "a float graph")


def test_mixed_precision_plan(digits):
    graph, calib, feeds, labels = digits["mlp"]
    plan = plan_weight_bits(graph, calib, budget_bytes=1700)
    assert plan.widths == {"fc1": 4, "fc2": 8, "fc3": 8} and plan.cost == 1696 and plan.budget == 1700
    assert {s.name: s.metric for s in plan.layers} == {"fc1": "output", "fc2": "output", "fc3": "output"}
    bits = choose_weight_bits(graph, calib, 1700)
    assert bits == plan.widths
    mixed = quantize_graph(graph, calib, weight_bits=bits)
    assert mixed.meta["ptq"].weight_bits == bits
    assert correct(mixed, feeds, labels) == 433
    assert choose_weight_bits(graph, calib, 2720) == {"fc1": 8, "fc2": 8, "fc3": 8}
    assert choose_weight_bits(graph, calib, 1360, metric="weights") == {"fc1": 4, "fc2": 4, "fc3": 4}
    cnn_graph, cnn_calib, cnn_feeds, cnn_labels = digits["cnn"]
    cnn_bits = choose_weight_bits(cnn_graph, cnn_calib, 1165)
    assert cnn_bits == {"conv1": 8, "conv2": 4, "fc": 4}
    assert correct(quantize_graph(cnn_graph, cnn_calib, weight_bits=cnn_bits), cnn_feeds, cnn_labels) == 437
    with pytest.raises(ConfigError) as exc:
        choose_weight_bits(graph, calib, 100)
    assert str(exc.value) == "budget 100 bytes is below the smallest possible 680 bytes (all layers at int2)"
    with pytest.raises(ConfigError) as exc:
        choose_weight_bits(graph, calib, 1000, widths=(8, 6))
    assert str(exc.value) == "each width must be 8, 4 or 2, not 6"


# --------------------------------------------------------------------------------------------
# Parity with onnxruntime.quantization.quantize_static
# --------------------------------------------------------------------------------------------

#: ORT names the output of a Gemm whose Relu it removed after the Gemm's own output tensor;
#: qsim's fused layer writes the Relu's tensor. Same values, other names.
ORT_TENSORS = {
    "mlp": {"image": "image_quantized", "fc1": "relu1", "fc2": "relu2", "logits": "logits_quantized"},
    "cnn": {"image": "image_quantized", "conv1": "relu1", "conv2": "relu2", "logits": "logits_quantized"},
}


@pytest.mark.parametrize("network, activations", [("mlp", "int8"), ("mlp", "uint8"), ("cnn", "int8")])
def test_parameters_equal_onnxruntime_quantize_static(digits, tmp_path, caplog, network, activations):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )

    from qsim.nn.onnx_export import export_onnx

    graph, calib, feeds, labels = digits[network]
    batches = [{"image": calib["image"][i:i + 100]} for i in range(0, len(calib["image"]), 100)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    onnx.save(export_onnx(graph), tmp_path / "float.onnx")
    caplog.set_level(logging.ERROR)  # ORT suggests pre-processing and QDQ; neither is needed here
    activation_type = QuantType.QInt8 if activations == "int8" else QuantType.QUInt8
    quantize_static(tmp_path / "float.onnx", tmp_path / "int8.onnx", Reader(),
                    quant_format=QuantFormat.QOperator, per_channel=True, activation_type=activation_type,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    model = onnx.load(tmp_path / "int8.onnx")
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ours = quantize_graph(graph, batches, activation_format=activations)
    record = ours.meta["ptq"]

    # ORT removes the Relus exactly where qsim fuses them.
    assert "Relu" not in [n.op_type for n in model.graph.node]
    for ort_name, name in ORT_TENSORS[network].items():
        params = record.tensor_params[name]
        # Activation ranges come from float32 activations that qsim (numpy BLAS) and ORT (MLAS)
        # sum in different orders: equal on some CPUs, up to 2 ULP apart on others.
        assert ulps(found[f"{ort_name}_scale"], params.scale) <= 4, name
        assert found[f"{ort_name}_zero_point"].dtype == params.fmt.numpy_dtype()
        assert int(found[f"{ort_name}_zero_point"]) == int(params.zero_point), name
    for name in weight_layers(graph):
        layer = ours.layer(name)
        assert np.array_equal(found[f"{name}.weight_scale"].view(np.uint32),
                              layer.weight_params.scale.view(np.uint32))
        assert not np.any(found[f"{name}.weight_zero_point"])
        # Gemm B is (out, in) with transB=1; qsim's Linear weight is (in, out).
        weight = layer.weight.T if isinstance(layer, L.Linear) else layer.weight
        assert np.array_equal(found[f"{name}.weight_quantized"], weight)
        assert np.array_equal(found[f"{name}.bias_quantized"], layer.bias)
    from qsim.nn.onnx_import import load_onnx

    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, feeds)
    # ORT's model run by qsim (on this CPU's path, uint8 included): bit for bit
    assert np.array_equal(logits, run(load_onnx(model), feeds, "onnxruntime").outputs["logits"])
    # qsim's own parameters are within a few ULP of ORT's, so its logits are within as much
    mine = run(ours, feeds, "onnxruntime").outputs["logits"]
    assert np.abs(mine - logits).max() <= 1e-5 * np.abs(logits).max()
