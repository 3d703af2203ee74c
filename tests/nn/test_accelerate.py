"""Quantized networks compiled for the accelerator equal the integer reference exactly."""

from __future__ import annotations

import numpy as np
import pytest

from qsim.config import AcceleratorConfig
from qsim.nn import layers as L
from qsim.nn.accelerate import cosim_network, compile_network
from qsim.nn.engine import run
from qsim.nn.graph import Graph, TensorType
from qsim.quant.params import QuantParams
from qsim.quant.requant import Semantics

#: Every semantics qsim models exactly for conv and linear layers (litert-optimized refuses
#: them, see tests/nn/test_tflite.py).
EXACT_SEMANTICS = [s.value for s in Semantics if s is not Semantics.LITERT_OPTIMIZED]

# Tiny memories force every layer to be cut into several Programs.
TINY = AcceleratorConfig(rows=4, cols=4, act_mem_words=64, weight_mem_words=32,
                         acc_mem_words=48, cmd_mem_words=8)


def _qcnn(rng) -> Graph:
    u8 = lambda s, z: QuantParams(np.float32(s), z, "uint8")  # noqa: E731
    per_ch = lambda n, lo: QuantParams(rng.uniform(lo, 2 * lo, n).astype(np.float32), np.zeros(n), "int8", axis=0)  # noqa: E731
    w1 = rng.integers(-127, 128, (6, 2, 3, 3)).astype(np.int8)
    w2 = rng.integers(-8, 8, (6, 2, 3, 3)).astype(np.int8)  # int4 values, groups = 3
    w3 = rng.integers(-127, 128, (54, 10)).astype(np.int8)
    p1, p2 = u8(0.04, 9), u8(0.06, 0)
    return Graph("qcnn", {"x": TensorType((None, 2, 7, 7), "uint8")}, [
        L.Conv2d("conv1", ("x",), ("a",), in_channels=2, out_channels=6, kernel=3, pads=1,
                 weight=w1, bias=rng.integers(-500, 500, 6).astype(np.int32), activation="relu",
                 input_params=u8(0.02, 128), weight_params=per_ch(6, 0.004), output_params=p1),
        L.Conv2d("conv2", ("a",), ("b",), in_channels=6, out_channels=6, kernel=3, strides=2,
                 groups=3, weight=w2, input_params=p1,
                 weight_params=QuantParams(np.float32(0.05), 0, "int4"), output_params=p2),
        L.MaxPool("pool", ("b",), ("c",), kernel=2, strides=1, pads=(0, 0, 1, 1)),
        L.Flatten("flat", ("c",), ("d",)),
        L.Linear("fc", ("d",), ("y",), in_features=54, out_features=10, weight=w3,
                 weight_params=QuantParams(rng.uniform(0.001, 0.002, 10).astype(np.float32), np.zeros(10),
                                           "int8", axis=1),
                 bias=rng.integers(-3000, 3000, 10).astype(np.int32), input_params=p2,
                 output_params=QuantParams(np.float32(0.1), 3, "int8")),
    ], ["y"])


@pytest.mark.parametrize("semantics", EXACT_SEMANTICS)
def test_compiled_network_equals_integer_reference(rng, semantics):
    graph = _qcnn(rng)
    feeds = {"x": rng.integers(0, 256, (3, 2, 7, 7)).astype(np.uint8)}
    reference = run(graph, feeds, semantics, keep=True, isa="exact")  # the datapath is exact
    compiled = compile_network(graph, feeds, TINY, semantics, keep=True)
    for name in ("a", "b", "y"):
        assert np.array_equal(compiled.result.values[name], reference.values[name]), name
    # conv1: one GEMM (147 x 18 x 6); conv2: one per group (27 x 18 x 2); fc: one (3 x 54 x 10)
    assert [(r.layer, r.m, r.k, r.n) for r in compiled.records] == [
        ("conv1", 147, 18, 6), ("conv2", 27, 18, 2), ("conv2", 27, 18, 2), ("conv2", 27, 18, 2),
        ("fc", 3, 54, 10)]
    assert all(len(r.programs) > 1 for r in compiled.records)  # the tiny memories force chunking
    assert compiled.cycles == sum(compiled.layer_cycles().values()) > 0


@pytest.mark.verilator
def test_network_cosim_on_the_rtl(rng):
    graph = _qcnn(rng)
    feeds = {"x": rng.integers(0, 256, (2, 2, 7, 7)).astype(np.uint8)}
    report = cosim_network(graph, feeds, TINY, "onnxruntime")
    assert report.output_mismatches == 0 and report.output_elements == 20
    assert report.rtl_mismatches == 0 and report.counter_diffs == 0
    assert report.rtl_cycles == report.model_cycles > 0
    assert report.programs > 10 and report.agrees


def _digits_networks():
    from qsim.nn.examples import digits_cnn, digits_data, digits_mlp
    from qsim.nn.ptq import quantize_graph

    flat_train, _, flat_test, _ = digits_data()
    img_train, _, img_test, _ = digits_data(layout="image")
    for name, make, train, test in (("mlp", digits_mlp, flat_train, flat_test),
                                    ("cnn", digits_cnn, img_train, img_test)):
        float_graph = make()
        (input_name,) = float_graph.inputs
        for bits in (8, 4):
            graph = quantize_graph(float_graph, {input_name: train[:256]}, weight_bits=bits)
            yield f"{name}-int{bits}", graph, {input_name: test[:32]}


@pytest.mark.parametrize("semantics", EXACT_SEMANTICS)
def test_every_example_network_compiles_to_its_integer_reference(semantics):
    for name, graph, feeds in _digits_networks():
        reference = run(graph, feeds, semantics, isa="exact")
        compiled = compile_network(graph, feeds, AcceleratorConfig(), semantics)
        for out in graph.outputs:
            assert np.array_equal(compiled.result.outputs[out], reference.outputs[out]), (name, out)
        assert len(compiled.records) == 3, name  # three conv/linear layers each


@pytest.mark.verilator
def test_example_networks_on_the_rtl():
    for name, graph, feeds in _digits_networks():
        report = cosim_network(graph, feeds, AcceleratorConfig(), "onnxruntime")
        assert report.agrees, (name, report.to_dict())
        assert report.output_mismatches == 0 and report.rtl_mismatches == 0
        assert report.rtl_cycles == report.model_cycles > 0

