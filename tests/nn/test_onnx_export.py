"""export_onnx: ONNX Runtime runs the exported graphs and agrees with qsim's float engine."""

from __future__ import annotations

import numpy as np
import pytest

from qsim.errors import ConfigError
from qsim.nn import layers as L
from qsim.nn.engine import run
from qsim.nn.graph import Graph, TensorType
from qsim.quant.params import QuantParams

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from qsim.nn.onnx_export import export_onnx  # noqa: E402


def ort_run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("network", ["mlp", "cnn"])
def test_exported_digits_networks_agree_with_the_engine(network):
    pytest.importorskip("sklearn")
    from qsim.nn.examples import EXAMPLES, digits_data

    graph = EXAMPLES[network]()
    _, _, x_test, y_test = digits_data("flat" if network == "mlp" else "image")
    model = export_onnx(graph)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    assert model.ir_version == 7 and model.producer_name == "qsim"
    ops = [n.op_type for n in model.graph.node]
    assert ops == (["Gemm", "Relu", "Gemm", "Relu", "Gemm"] if network == "mlp" else
                   ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm"])
    (inp,) = model.graph.input
    assert inp.name == "image" and inp.type.tensor_type.shape.dim[0].dim_param == "N"
    (ours,) = ort_run(model, {"image": x_test})
    reference = run(graph, {"image": x_test}).outputs["logits"]
    assert np.allclose(ours, reference, rtol=1e-5, atol=1e-5)
    assert np.array_equal(ours.argmax(axis=1), reference.argmax(axis=1))


def every_kind_graph(rng) -> Graph:
    """Every exportable layer kind once, with non-default attributes."""
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return Graph("kinds", {"x": TensorType((2, 4, 9, 9)), "v": TensorType((2, 3, 5))}, [
        L.Conv2d("conv", ("x",), ("c",), in_channels=4, out_channels=6, kernel=3, strides=(2, 1),
                 pads=(1, 0, 1, 2), groups=2, weight=f32(6, 2, 3, 3), bias=f32(6),
                 activation=("clip", -0.5, 1.5)),
        L.BatchNorm("bn", ("c",), ("b",), gamma=f32(6), beta=f32(6), mean=f32(6),
                    var=np.abs(f32(6)) + 0.1, eps=1e-3),
        L.Relu("relu", ("b",), ("r",)),
        L.MaxPool("max", ("r",), ("m",), kernel=2, strides=2, pads=(1, 0, 0, 0), ceil_mode=True),
        L.AvgPool("avg", ("r",), ("a",), kernel=3, strides=2, pads=1, count_include_pad=False),
        L.Add("add", ("m", "a"), ("s",), activation="relu"),
        L.Conv2d("pw", ("s",), ("p",), in_channels=6, out_channels=2, weight=f32(2, 6, 1, 1)),
        L.Concat("cat", ("s", "p"), ("k",), axis=1),
        L.Clip("clip", ("k",), ("kc",), lo=float("-inf"), hi=0.75),
        L.GlobalAvgPool("gap", ("kc",), ("g",)),
        L.Flatten("flat", ("g",), ("gf",)),
        L.Linear("fc", ("gf",), ("y",), in_features=8, out_features=5, weight=f32(8, 5), bias=f32(5),
                 activation="relu"),
        L.Softmax("soft", ("y",), ("prob",)),
        L.Linear("seq", ("v",), ("w",), in_features=5, out_features=4, weight=f32(5, 4), bias=f32(4)),
        L.Transpose("tr", ("w",), ("wt",), perm=(0, 2, 1)),
        L.Reshape("rs", ("wt",), ("wr",), shape=(0, -1)),
        L.Linear("nobias", ("v",), ("z",), in_features=5, out_features=2, weight=f32(5, 2)),
    ], ["prob", "wr", "k", "z"])


def test_every_layer_kind_agrees_with_the_engine(rng):
    graph = every_kind_graph(rng)
    model = export_onnx(graph)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Conv", "Clip", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "Add", "Relu",
                   "Conv", "Concat", "Clip", "GlobalAveragePool", "Flatten", "Gemm", "Relu", "Softmax",
                   "MatMul", "Add", "Transpose", "Reshape", "MatMul"]
    clip = next(n for n in model.graph.node if n.name == "clip")
    assert list(clip.input) == ["k", "", "clip.max"]  # no lower bound: the input is omitted
    feeds = {"x": rng.standard_normal((2, 4, 9, 9)).astype(np.float32),
             "v": rng.standard_normal((2, 3, 5)).astype(np.float32)}
    ours = ort_run(model, feeds)
    reference = run(graph, feeds).outputs
    for name, value in zip(graph.outputs, ours):
        assert value.shape == reference[name].shape, name
        assert np.allclose(value, reference[name], rtol=1e-5, atol=1e-5), name


def test_dilated_average_pool_needs_opset_19(rng):
    x = rng.standard_normal((1, 2, 7, 7)).astype(np.float32)
    graph = Graph("d", {"x": TensorType((None, 2, 7, 7))},
                  [L.AvgPool("avg", ("x",), ("y",), kernel=2, dilations=2)], ["y"])
    with pytest.raises(ConfigError) as exc:
        export_onnx(graph)
    assert str(exc.value) == ("layer 'avg' (avgpool): AveragePool has dilations only from opset 19; "
                              "export with opset >= 19, not 13")
    (y,) = ort_run(export_onnx(graph, opset=19), {"x": x})
    assert np.allclose(y, run(graph, {"x": x}).outputs["y"], atol=1e-6)


def test_refusals():
    newest = onnx.defs.onnx_opset_version()
    fc = dict(in_features=4, out_features=2, weight=np.zeros((4, 2), np.float32))
    params = QuantParams(np.float32(0.1), 0, "int8")
    cases = [
        (Graph("g", {"x": TensorType((None, 4))}, [L.Linear("fc", ("x",), ("y",), **fc, input_params=params)],
               ["y"]),
         {}, "layer 'fc' (linear): has input_params; export_onnx writes float graphs only (export the "
             "float graph and quantize it with onnxruntime.quantization)"),
        (Graph("g", {"x": TensorType((None, 4))}, [L.Quantize("q", ("x",), ("y",), params=params)], ["y"]),
         {}, "layer 'q' (quantize): is a quantization layer; export_onnx writes float graphs only"),
        (Graph("g", {"x": TensorType((None, 4), "uint8")}, [L.Flatten("f", ("x",), ("y",))], ["y"]),
         {}, "graph 'g': input 'x' is uint8[Nx4]; export_onnx writes float graphs only"),
        (Graph("g", {"x": TensorType((None, 4))}, [L.Gelu("gelu", ("x",), ("y",))], ["y"]),
         {}, "layer 'gelu' (gelu): has no ONNX export (supported: conv2d, linear, matmul, add, relu, "
             "clip, maxpool, avgpool, globalavgpool, flatten, reshape, concat, transpose, softmax, "
             "batchnorm)"),
        (Graph("g", {"x": TensorType((None, 4))},
               [L.Linear("fc", ("x",), ("y",), in_features=4, out_features=2)], ["y"]),
         {}, "layer 'fc' (linear): has no weights (a shape-only graph cannot be exported)"),
        (Graph("g", {"x": TensorType((None, 4))}, [L.Relu("r", ("x",), ("y",))], ["y"]),
         {"opset": 12}, f"opset must be an int from 13 to {newest}, not 12"),
    ]
    for graph, options, message in cases:
        with pytest.raises(ConfigError) as exc:
            export_onnx(graph, **options)
        assert str(exc.value) == message
