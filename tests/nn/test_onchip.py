"""Whole layers and chains of layers on the accelerator: every output equals the integer
reference under onnxruntime semantics, on the bit-accurate model and on the RTL."""

from __future__ import annotations

import numpy as np
import pytest

from qsim.config import AcceleratorConfig
from qsim.errors import ConfigError
from qsim.nn import layers as L
from qsim.nn.engine import run
from qsim.nn.graph import Graph, TensorType
from qsim.nn.onchip import compile_chain, cosim_on_chip, run_on_chip, why_not_on_chip
from qsim.quant.params import QuantParams
from qsim.quant.requant import Semantics
from tests.nn.test_accelerate import _digits_networks, _qcnn


def _q(scale, zp, fmt):
    return QuantParams(np.float32(scale), zp, fmt)


def _conv_chain(rng, act="uint8", out="int8", weights="int8") -> Graph:
    """conv 3x3 pad 1 + ReLU -> conv 3x3 stride 2, asymmetric pads, dilation 2 -> conv 1x1."""
    lo, hi = (-8, 8) if weights == "int4" else (-127, 128)
    signed_out = "int4" if out == "int4" else "int8"

    def per_channel(n, scale):
        return QuantParams(rng.uniform(scale, 2 * scale, n).astype(np.float32), np.zeros(n),
                           weights, axis=0)

    def weight(*shape):
        return rng.integers(lo, hi, shape).astype(np.int8)

    small = act.endswith("4")
    z_in, z_mid = (3, 2) if small else (131, 7)
    return Graph("chain", {"x": TensorType((None, 3, 9, 8), "uint8", act if small else None)}, [
        L.Conv2d("c1", ("x",), ("a",), in_channels=3, out_channels=5, kernel=3, pads=1,
                 weight=weight(5, 3, 3, 3), bias=rng.integers(-300, 300, 5).astype(np.int32),
                 activation="relu", input_params=_q(0.02, z_in, act),
                 weight_params=per_channel(5, 0.004 if not small else 0.05),
                 output_params=_q(0.05 if not small else 0.3, z_mid, act)),
        L.Conv2d("c2", ("a",), ("b",), in_channels=5, out_channels=7, kernel=3, strides=2,
                 pads=(2, 1, 1, 2), dilations=2, weight=weight(7, 5, 3, 3),
                 input_params=_q(0.05 if not small else 0.3, z_mid, act),
                 weight_params=per_channel(7, 0.003 if not small else 0.04),
                 output_params=_q(0.07 if not small else 0.5, -1, signed_out)),
        L.Conv2d("c3", ("b",), ("y",), in_channels=7, out_channels=4, kernel=1,
                 weight=weight(4, 7, 1, 1), bias=rng.integers(-90, 90, 4).astype(np.int32),
                 input_params=_q(0.07 if not small else 0.5, -1, signed_out),
                 weight_params=per_channel(4, 0.01 if not small else 0.08),
                 output_params=_q(0.04 if not small else 0.4, 1, signed_out)),
    ], ["y"])


def _cfg(rows, cols, precision="int8", **kw):
    sizes = dict(act_mem_words=2048, weight_mem_words=1024, acc_mem_words=256,
                 cmd_mem_words=1024, param_mem_words=16)
    sizes.update(kw)
    return AcceleratorConfig(rows=rows, cols=cols, requant="float32", input_format=precision,
                             weight_format=precision, **sizes)


@pytest.mark.parametrize("rows, cols", [(4, 4), (3, 5), (5, 2), (8, 8)])
def test_a_conv_chain_runs_as_one_program(rng, rows, cols):
    graph = _conv_chain(rng)
    feeds = {"x": rng.integers(0, 256, (2, 3, 9, 8)).astype(np.uint8)}
    reference = run(graph, feeds, "onnxruntime", isa="exact", keep=True)
    result = run_on_chip(graph, feeds, _cfg(rows, cols))
    assert [c.chain.layers for c in result.chains] == [["c1", "c2", "c3"]]
    assert result.host_layers == {}
    for name in ("a", "b", "y"):
        assert np.array_equal(result.values[name], reference.values[name]), name


def test_an_int4_chain_packs_two_values_per_byte(rng):
    graph = _conv_chain(rng, act="uint4", out="int4", weights="int4")
    feeds = {"x": rng.integers(0, 16, (2, 3, 9, 8)).astype(np.uint8)}
    reference = run(graph, feeds, "onnxruntime", isa="exact", keep=True)
    result = run_on_chip(graph, feeds, _cfg(4, 3, "int4"))
    assert [c.chain.layers for c in result.chains] == [["c1", "c2", "c3"]]
    for name in ("a", "b", "y"):
        assert np.array_equal(result.values[name], reference.values[name]), name
    # at int8 precision the same layers stay on the host, each saying why
    assert run_on_chip(graph, feeds, _cfg(4, 3)).host_layers["c1"] == \
        "its input is uint4; the activation memory holds 8-bit values (precision int8)"


def test_host_layers_between_chains(rng):
    graph = _qcnn(rng)
    feeds = {"x": rng.integers(0, 256, (3, 2, 7, 7)).astype(np.uint8)}
    reference = run(graph, feeds, "onnxruntime", isa="exact", keep=True)
    result = run_on_chip(graph, feeds, _cfg(3, 5))
    assert [c.chain.layers for c in result.chains] == [["conv1"], ["fc"]]
    assert result.host_layers == {"conv2": "grouped and non-2-D convolutions run on the host",
                                  "pool": "maxpool layers run on the host",
                                  "flat": "flatten layers run on the host"}
    for name in ("a", "b", "y"):
        assert np.array_equal(result.values[name], reference.values[name]), name


def test_digits_networks_on_the_model():
    cfg = AcceleratorConfig(requant="float32")
    for name, graph, feeds in _digits_networks():
        reference = run(graph, feeds, "onnxruntime", isa="exact")
        result = run_on_chip(graph, feeds, cfg)
        for out in graph.outputs:
            assert np.array_equal(result.outputs[out], reference.outputs[out]), name
        chains = [c.chain.layers for c in result.chains]
        assert chains == ([["fc1", "fc2", "fc3"]] if name.startswith("mlp")
                          else [["conv1"], ["conv2"], ["fc"]]), name


def test_reasons_a_layer_runs_on_the_host(rng):
    conv = _conv_chain(rng).layers[0]
    onnxrt = Semantics.ONNXRUNTIME
    assert why_not_on_chip(conv, AcceleratorConfig(), onnxrt) == \
        "onnxruntime needs requant float32, the configuration has none"
    assert why_not_on_chip(conv, _cfg(4, 4), Semantics.ONNX) == \
        "the post-processing unit implements onnxruntime, not onnx"
    assert why_not_on_chip(conv, _cfg(4, 4), onnxrt) is None
    assert why_not_on_chip(conv, _cfg(4, 4, dataflow="os"), onnxrt) == \
        "whole layers are lowered for the weight-stationary dataflow, the configuration is output_stationary"


def test_a_chain_too_big_for_the_memories_is_refused(rng):
    graph = _conv_chain(rng)
    x = rng.integers(0, 256, (2, 3, 9, 8)).astype(np.uint8)
    # act: input 1 tile x 2 images x 11 x 10 (pads 1) + a: 2 x 2 x 12 x 11 (c2's pads) + b: 2 x 2
    # x 4 x 4 + y: 1 x 2 x 4 x 4; weights: 2 x 9 x 1 + 2 x 9 x 2 + 1 x 1 x 2 tiles of 4 words
    with pytest.raises(ConfigError, match=r"^chain c \(c1, c2, c3\) does not fit the accelerator: "
                       r"act memory needs 844 words, has 512; weight memory needs 224 words, has 64$"):
        compile_chain(_cfg(4, 4, act_mem_words=512, weight_mem_words=64), graph.layers, x, name="c")


@pytest.mark.verilator
def test_networks_run_layer_after_layer_on_the_rtl(rng):
    """Each chain on the RTL, its input what the RTL and the host layers produced: the digits
    networks (int8, and int4 weights) and a three-layer int4 conv chain."""
    for name, graph, feeds in _digits_networks():
        reference = run(graph, feeds, "onnxruntime", isa="exact")
        report = cosim_on_chip(graph, feeds, AcceleratorConfig(requant="float32"))
        assert report.agrees, name
        assert report.rtl_cycles == report.model_cycles > 0
        for out in graph.outputs:
            assert np.array_equal(report.run.outputs[out], reference.outputs[out]), name
    graph = _conv_chain(rng, act="uint4", out="int4", weights="int4")
    feeds = {"x": rng.integers(0, 16, (2, 3, 9, 8)).astype(np.uint8)}
    report = cosim_on_chip(graph, feeds, _cfg(4, 3, "int4"))
    assert report.agrees and len(report.reports) == 1
    assert np.array_equal(report.run.outputs["y"], run(graph, feeds, "onnxruntime", isa="exact").outputs["y"])


def test_layers_the_lowering_cannot_keep_exact_stay_on_the_host(rng):
    """A linear layer over tokens (3-D input) and a narrow accumulator would give other numbers
    than the int32 reference: both stay on the host, each with its reason."""
    w = rng.integers(-127, 128, (6, 5)).astype(np.int8)
    fc = L.Linear("fc", ("x",), ("y",), in_features=6, out_features=5, weight=w,
                  input_params=_q(0.05, 3, "uint8"),
                  weight_params=QuantParams(np.float32(0.01), 0, "int8"),
                  output_params=_q(0.2, -2, "int8"))
    graph = Graph("tokens", {"x": TensorType((None, 4, 6), "uint8")}, [fc], ["y"])
    feeds = {"x": rng.integers(0, 256, (2, 4, 6)).astype(np.uint8)}
    result = run_on_chip(graph, feeds, _cfg(4, 4))
    assert result.host_layers == {
        "fc": "its input has 3 dimensions; linear layers on chip take (batch, features)"}
    assert np.array_equal(result.outputs["y"], run(graph, feeds, "onnxruntime", isa="exact").outputs["y"])
    chain = _conv_chain(rng)
    narrow = run_on_chip(chain, {"x": rng.integers(0, 256, (1, 3, 9, 8)).astype(np.uint8)},
                         _cfg(4, 4, acc_bits=17))
    assert narrow.host_layers["c1"] == ("its sums need int32 accumulators as the reference's, the "
                                        "configuration has acc_bits 17")


def test_a_chain_breaks_where_the_zero_points_of_one_tensor_disagree(rng):
    graph = _conv_chain(rng)
    c2 = graph.layers[1]
    c2.input_params = _q(float(c2.input_params.scale), 9, "uint8")  # the producer writes zp 7
    c2.__dict__.pop("_engine_prepared", None)
    feeds = {"x": rng.integers(0, 256, (2, 3, 9, 8)).astype(np.uint8)}
    reference = run(graph, feeds, "onnxruntime", isa="exact", keep=True)
    result = run_on_chip(graph, feeds, _cfg(4, 4))
    assert [c.chain.layers for c in result.chains] == [["c1"], ["c2", "c3"]]
    for name in ("a", "b", "y"):
        assert np.array_equal(result.values[name], reference.values[name]), name
