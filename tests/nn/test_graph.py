from __future__ import annotations

import numpy as np
import pytest

from qsim.errors import ConfigError
from qsim.nn.graph import GemmShape, Graph, TensorType, window_output
from qsim.nn.layers import (
    Add, AvgPool, Concat, Conv2d, Flatten, GlobalAvgPool, Linear, MatMul, MaxPool, Relu, Reshape,
    Transpose,
)


def test_window_output_matches_onnx_rules():
    assert window_output(32, 3, 1, 1, 1) == 32
    assert window_output(224, 7, 2, 3, 3) == 112
    assert window_output(5, 2, 2, 0, 0) == 2
    assert window_output(5, 2, 2, 0, 0, ceil_mode=True) == 3
    assert window_output(7, 3, 1, 0, 0, dilation=2) == 3
    with pytest.raises(ConfigError, match=r"a window of 5 \(dilation 1\) does not fit an input of 3 padded by 0\+0"):
        window_output(3, 5, 1, 0, 0)


def _small_cnn() -> Graph:
    layers = [
        Conv2d("conv", ("x",), ("c",), in_channels=1, out_channels=4, kernel=3, pads=1),
        Relu("relu", ("c",), ("r",)),
        MaxPool("pool", ("r",), ("p",), kernel=2, strides=2),
        Flatten("flat", ("p",), ("f",)),
        Linear("fc", ("f",), ("y",), in_features=64, out_features=10),
    ]
    return Graph("cnn", {"x": TensorType((None, 1, 8, 8))}, layers, ["y"])


def test_shape_inference_and_gemms():
    g = _small_cnn()
    types = g.infer(batch=5)
    assert [str(types[t]) for t in ("c", "p", "f", "y")] == [
        "float32[5x4x8x8]", "float32[5x4x4x4]", "float32[5x64]", "float32[5x10]"]
    assert str(g.infer()["f"]) == "float32[Nx64]"
    assert [gm for _, gm in g.gemms(batch=5)] == [GemmShape(320, 9, 4), GemmShape(5, 64, 10)]
    assert g.macs(5) == 320 * 9 * 4 + 5 * 64 * 10


def test_depthwise_conv_is_one_gemm_per_group():
    conv = Conv2d("dw", ("x",), ("y",), in_channels=32, out_channels=32, kernel=3, strides=2,
                  pads=1, groups=32)
    assert conv.weight_shape == (32, 1, 3, 3)
    assert conv.gemms([TensorType((2, 32, 16, 16))]) == [GemmShape(2 * 8 * 8, 9, 1, 32)]


@pytest.mark.parametrize("make, message", [
    (lambda: Graph("g", {"x": TensorType((1, 4))}, [Relu("a", ("y",), ("z",))], ["z"]),
     "graph 'g': layer 'a' reads 'y', which no graph input or earlier layer defines"),
    (lambda: Graph("g", {"x": TensorType((1, 4))}, [Relu("a", ("x",), ("x",))], ["x"]),
     "graph 'g': tensor 'x' is written twice"),
    (lambda: Graph("g", {"x": TensorType((1, 4))}, [Relu("a", ("x",), ("y",)), Relu("a", ("y",), ("z",))], ["z"]),
     "graph 'g': two layers are named 'a'"),
    (lambda: Graph("g", {"x": TensorType((1, 4))}, [Relu("a", ("x",), ("y",))], ["w"]),
     "graph 'g': output(s) w are never written"),
    (lambda: Conv2d("c", ("x",), ("y",), in_channels=6, out_channels=4, groups=4),
     "layer 'c' (conv2d): groups = 4 must divide in_channels = 6 and out_channels = 4"),
    (lambda: Conv2d("c", ("x",), ("y",), in_channels=2, out_channels=4, weight=np.zeros((4, 2, 3, 3))),
     r"layer 'c' (conv2d): weight shape (4, 2, 3, 3) is not (4, 2, 1, 1)"),
    (lambda: Linear("l", ("x",), ("y",), in_features=3, out_features=2, weight=np.zeros((2, 3))),
     r"layer 'l' (linear): weight shape (2, 3) is not (3, 2)"),
])
def test_construction_errors(make, message):
    with pytest.raises(ConfigError) as exc:
        make()
    assert str(exc.value) == message


@pytest.mark.parametrize("layer, inputs, message", [
    (Conv2d("c", ("x",), ("y",), in_channels=3, out_channels=4), [TensorType((1, 2, 8, 8))],
     "layer 'c' (conv2d): expects 3 input channels, got float32[1x2x8x8]"),
    (Conv2d("c", ("x",), ("y",), in_channels=3, out_channels=4, kernel=9), [TensorType((1, 3, 8, 8))],
     r"layer 'c' (conv2d): a window of 9 (dilation 1) does not fit an input of 8 padded by 0+0"),
    (Linear("l", ("x",), ("y",), in_features=5, out_features=2), [TensorType((1, 4))],
     "layer 'l' (linear): expects (..., 5) input, got float32[1x4]"),
    (Add("a", ("x", "z"), ("y",)), [TensorType((1, 4)), TensorType((1, 3))],
     "layer 'a' (add): cannot broadcast float32[1x4] with float32[1x3]"),
    (Reshape("r", ("x",), ("y",), shape=(5, -1)), [TensorType((2, 6))],
     r"layer 'r' (reshape): cannot reshape float32[2x6] to (5, -1)"),
    (Concat("k", ("a", "b"), ("y",), axis=1), [TensorType((1, 2, 4)), TensorType((1, 2, 5))],
     "layer 'k' (concat): cannot concatenate float32[1x2x4] and float32[1x2x5] on axis 1"),
    (MatMul("m", ("a", "b"), ("y",)), [TensorType((2, 3)), TensorType((4, 5))],
     "layer 'm' (matmul): cannot multiply float32[2x3] by float32[4x5]"),
    (Transpose("t", ("x",), ("y",), perm=(0, 0)), [TensorType((2, 3))],
     r"layer 't' (transpose): perm (0, 0) is not a permutation of the axes of float32[2x3]"),
    (GlobalAvgPool("g", ("x",), ("y",)), [TensorType((2, 3))],
     "layer 'g' (globalavgpool): expects a rank-4 NCHW input, got float32[2x3]"),
])
def test_inference_errors(layer, inputs, message):
    with pytest.raises(ConfigError) as exc:
        layer.infer(inputs)
    assert str(exc.value) == message


def test_pool_concat_reshape_shapes():
    x = TensorType((2, 3, 7, 7))
    assert AvgPool("a", ("x",), ("y",), kernel=3, strides=2, pads=1, ceil_mode=True).infer([x]) == \
        [TensorType((2, 3, 4, 4))]
    assert Concat("c", ("x", "x"), ("y",), axis=1).infer([x, x]) == [TensorType((2, 6, 7, 7))]
    assert Reshape("r", ("x",), ("y",), shape=(0, -1)).infer([x]) == [TensorType((2, 147))]
    assert Flatten("f", ("x",), ("y",), axis=2).infer([x]) == [TensorType((6, 49))]


def test_add_keeps_an_unknown_batch_whichever_operand_carries_it():
    add = Add("a", ("c", "x"), ("y",))
    assert add.infer([TensorType((1, 10)), TensorType((None, 10))]) == [TensorType((None, 10))]
    assert add.infer([TensorType((None, 10)), TensorType((10,))]) == [TensorType((None, 10))]
    assert add.infer([TensorType((3, 10)), TensorType((3, 10))]) == [TensorType((3, 10))]
