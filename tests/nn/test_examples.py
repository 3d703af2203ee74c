"""The shipped digits networks: graphs, weight files, pinned accuracy, reproducible training.

Accuracies are exact counts of correct test images (of 449). Training is float32 numpy with a
fixed seed; on the development machine (x86-64, numpy's OpenBLAS, Haswell kernels) it gave
byte-identical weight files with the default thread count and with OPENBLAS_NUM_THREADS=1. A
CPU whose BLAS sums in another order may train slightly different weights; the retraining test
checks the accuracy first, then the weights.
"""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from qsim.errors import ConfigError

pytest.importorskip("sklearn")
from qsim.examples import train_digits  # noqa: E402
from qsim.nn.engine import run  # noqa: E402
from qsim.nn.examples import TEST_SIZE, TRAIN_SIZE, digits_cnn, digits_data, digits_mlp  # noqa: E402

DATA = Path(train_digits.__file__).resolve().parents[1] / "data"

#: Correct test images of the shipped float networks, run through qsim.nn.engine.run.
PINNED = {"mlp": 436, "cnn": 443}


def test_graphs_have_the_documented_layers_and_shapes():
    mlp, cnn = digits_mlp(), digits_cnn()
    assert [(layer.name, layer.kind) for layer in mlp.layers] == [
        ("fc1", "linear"), ("relu1", "relu"), ("fc2", "linear"), ("relu2", "relu"), ("fc3", "linear")]
    assert [(layer.name, layer.kind) for layer in cnn.layers] == [
        ("conv1", "conv2d"), ("relu1", "relu"), ("pool1", "maxpool"), ("conv2", "conv2d"),
        ("relu2", "relu"), ("pool2", "maxpool"), ("flatten", "flatten"), ("fc", "linear")]
    assert str(mlp.inputs["image"]) == "float32[Nx64]"
    assert str(cnn.inputs["image"]) == "float32[Nx1x8x8]"
    assert mlp.outputs == cnn.outputs == ["logits"]
    assert str(mlp.infer(5)["logits"]) == str(cnn.infer(5)["logits"]) == "float32[5x10]"
    assert str(cnn.infer(5)["pool2"]) == "float32[5x16x2x2]"
    assert mlp.macs() == 64 * 32 + 32 * 16 + 16 * 10
    assert cnn.macs() == 64 * 8 * 9 + 16 * 16 * 8 * 9 + 64 * 10


def test_digits_data_is_the_fixed_split():
    x_train, y_train, x_test, y_test = digits_data()
    assert x_train.shape == (TRAIN_SIZE, 64) and x_test.shape == (TEST_SIZE, 64)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert np.bincount(y_test).tolist() == [49, 41, 43, 41, 37, 59, 40, 51, 45, 43]
    images = digits_data("image")
    assert images[0].shape == (TRAIN_SIZE, 1, 8, 8)
    assert np.array_equal(images[2].reshape(TEST_SIZE, 64), x_test)
    with pytest.raises(ConfigError) as exc:
        digits_data("nchw")
    assert str(exc.value) == "layout must be 'flat' or 'image', not 'nchw'"


@pytest.mark.parametrize("network", ["mlp", "cnn"])
def test_shipped_weights_give_the_pinned_accuracy(network):
    graph = {"mlp": digits_mlp, "cnn": digits_cnn}[network]()
    _, _, x_test, y_test = digits_data("flat" if network == "mlp" else "image")
    logits = run(graph, {"image": x_test}).outputs["logits"]
    assert int(np.count_nonzero(logits.argmax(axis=1) == y_test)) == PINNED[network]
    # The training script's own forward pass gives the same predictions.
    weights = train_digits.load_weights(DATA / f"digits_{network}.npz")
    forward = train_digits.mlp_logits if network == "mlp" else train_digits.cnn_logits
    assert np.array_equal(forward(weights, x_test).argmax(axis=1), logits.argmax(axis=1))
    assert np.allclose(forward(weights, x_test), logits, atol=1e-5)


def test_weight_files_are_small_float32_with_layer_keys():
    shapes = {
        "mlp": {"fc1.weight": (64, 32), "fc1.bias": (32,), "fc2.weight": (32, 16), "fc2.bias": (16,),
                "fc3.weight": (16, 10), "fc3.bias": (10,)},
        "cnn": {"conv1.weight": (8, 1, 3, 3), "conv1.bias": (8,), "conv2.weight": (16, 8, 3, 3),
                "conv2.bias": (16,), "fc.weight": (64, 10), "fc.bias": (10,)},
    }
    for network, expected in shapes.items():
        path = DATA / f"digits_{network}.npz"
        assert path.stat().st_size < 100_000
        weights = train_digits.load_weights(path)
        assert {k: v.shape for k, v in weights.items()} == expected
        assert all(v.dtype == np.float32 for v in weights.values())


def test_retraining_reproduces_the_shipped_weights(tmp_path):
    """Retraining gives the shipped networks again, up to float32 summation order.

    Training is float32 numpy: the BLAS kernel the CPU selects (OpenBLAS picks one per CPU
    family) changes summation orders, so the retrained weights are not bit-identical across
    machines. What holds on any machine: every weight within 1e-5 of the largest weight of its
    tensor (measured: at most 9e-7 on an AVX2 CPU, 0 on the AVX-512 machine that wrote the
    files) and the test accuracy within one image of the shipped networks'. The shipped files
    themselves are fixed, and everything downstream starts from them.
    """
    out = io.StringIO()
    with redirect_stdout(out):
        assert train_digits.main(["--out-dir", str(tmp_path)]) == 0
    printed = out.getvalue()
    for network in ("mlp", "cnn"):
        found = re.search(rf"digits_{network}: (\d+)/449 test images correct", printed)
        assert found and abs(int(found.group(1)) - PINNED[network]) <= 1, printed
        fresh = train_digits.load_weights(tmp_path / f"digits_{network}.npz")
        shipped = train_digits.load_weights(DATA / f"digits_{network}.npz")
        assert list(fresh) == list(shipped)
        for name in shipped:
            assert fresh[name].dtype == shipped[name].dtype and fresh[name].shape == shipped[name].shape
            limit = 1e-5 * np.abs(shipped[name]).max()
            assert np.abs(fresh[name] - shipped[name]).max() <= limit, (network, name)


@pytest.mark.parametrize("config, message", [
    (train_digits.TrainConfig(epochs=0), "epochs must be an int of at least 1, not 0"),
    (train_digits.TrainConfig(batch=2.5), "batch must be an int of at least 1, not 2.5"),
    (train_digits.TrainConfig(lr=0.0), "lr must be a positive finite number, not 0.0"),
])
def test_training_settings_are_checked(config, message):
    x = np.zeros((4, 64), np.float32)
    with pytest.raises(ConfigError) as exc:
        train_digits.train_mlp(x, np.zeros(4, np.int64), config)
    assert str(exc.value) == message
