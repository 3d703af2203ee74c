"""The example networks qsim ships with trained weights: a digits MLP and a digits CNN.

This module owns the float IR graphs of the two networks trained by
:mod:`qsim.examples.train_digits` (weights in ``qsim/data/digits_mlp.npz`` and
``digits_cnn.npz``) and the data split they were trained and tested on. Activations are
separate :class:`~qsim.nn.layers.Relu` layers, as an ONNX export has them; post-training
quantization (:mod:`qsim.nn.ptq`) fuses them into the layer before.

=========  ====================================================================  ==========
graph      layers                                                                input
=========  ====================================================================  ==========
digits_mlp fc1 (64->32), relu1, fc2 (32->16), relu2, fc3 (16->10) -> "logits"    (N, 64)
digits_cnn conv1 (1->8, 3x3 pad 1), relu1, pool1 (2x2), conv2 (8->16, 3x3 pad 1),  (N,1,8,8)
           relu2, pool2 (2x2), flatten (64), fc (64->10) -> "logits"
=========  ====================================================================  ==========

The input is called ``"image"`` (float32 pixels in [0, 1]), the output ``"logits"``. Every
layer writes a tensor named like the layer, so ``run(graph, feeds, keep=True).values["relu1"]``
is the output of ``relu1``.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from qsim.errors import ConfigError
from qsim.nn.graph import Graph, TensorType
from qsim.nn.layers import Conv2d, Flatten, Linear, MaxPool, Relu

__all__ = ["digits_mlp", "digits_cnn", "digits_data", "EXAMPLES", "TEST_SIZE", "TRAIN_SIZE"]

#: Images in the fixed split of :func:`digits_data`.
TRAIN_SIZE = 1348
TEST_SIZE = 449


def _weights(name: str) -> dict[str, np.ndarray]:
    path = resources.files("qsim").joinpath("data", f"{name}.npz")
    with resources.as_file(path) as file, np.load(file, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def digits_mlp() -> Graph:
    """The float digits MLP, 64 -> 32 -> 16 -> 10 with ReLU, and its shipped weights."""
    w = _weights("digits_mlp")
    layers = []
    widths = (64, 32, 16, 10)
    source = "image"
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        last = i == len(widths) - 1
        out = "logits" if last else f"fc{i}"
        layers.append(Linear(f"fc{i}", (source,), (out,), in_features=fan_in, out_features=fan_out,
                             weight=w[f"fc{i}.weight"], bias=w[f"fc{i}.bias"]))
        if not last:
            layers.append(Relu(f"relu{i}", (out,), (f"relu{i}",)))
            source = f"relu{i}"
    return Graph("digits_mlp", {"image": TensorType((None, 64))}, layers, ["logits"])


def digits_cnn() -> Graph:
    """The float digits CNN (two 3x3 convolutions with ReLU and 2x2 max pooling, then a
    64 -> 10 Linear) and its shipped weights."""
    w = _weights("digits_cnn")
    layers = []
    source, channels = "image", 1
    for i, out_channels in enumerate((8, 16), start=1):
        layers += [
            Conv2d(f"conv{i}", (source,), (f"conv{i}",), in_channels=channels, out_channels=out_channels,
                   kernel=3, pads=1, weight=w[f"conv{i}.weight"], bias=w[f"conv{i}.bias"]),
            Relu(f"relu{i}", (f"conv{i}",), (f"relu{i}",)),
            MaxPool(f"pool{i}", (f"relu{i}",), (f"pool{i}",), kernel=2, strides=2),
        ]
        source, channels = f"pool{i}", out_channels
    layers += [
        Flatten("flatten", (source,), ("flatten",)),
        Linear("fc", ("flatten",), ("logits",), in_features=64, out_features=10,
               weight=w["fc.weight"], bias=w["fc.bias"]),
    ]
    return Graph("digits_cnn", {"image": TensorType((None, 1, 8, 8))}, layers, ["logits"])


#: The example graphs by short name.
EXAMPLES = {"mlp": digits_mlp, "cnn": digits_cnn}


def digits_data(layout: str = "flat") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed train/test split the example networks were trained and scored on.

    The split of :func:`qsim.examples.qat_digits.load_split`: scikit-learn's 1797 digits,
    pixels scaled to [0, 1] in float32, 1348 training and 449 test images, labels int64.

    Parameters
    ----------
    layout : {"flat", "image"}
        ``"flat"``: images as ``(N, 64)`` (the MLP's input); ``"image"``: ``(N, 1, 8, 8)``
        (the CNN's).

    Returns
    -------
    x_train, y_train, x_test, y_test : np.ndarray
    """
    if layout not in ("flat", "image"):
        raise ConfigError(f"layout must be 'flat' or 'image', not {layout!r}")
    from qsim.examples.qat_digits import load_split

    x_train, y_train, x_test, y_test = load_split()
    if layout == "image":
        x_train, x_test = x_train.reshape(-1, 1, 8, 8), x_test.reshape(-1, 1, 8, 8)
    return x_train, y_train, x_test, y_test
