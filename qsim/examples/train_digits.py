"""Training of the example networks qsim ships: a digits MLP and a small digits CNN, in numpy.

This script owns the float training of the two networks whose weights live in ``qsim/data/``
(``digits_mlp.npz``, ``digits_cnn.npz``) and that :mod:`qsim.nn.examples` turns into graphs:

* **MLP** 64 -> 32 -> 16 -> 10, ReLU after each hidden Linear;
* **CNN** 1x8x8 -> Conv 3x3 pad 1, 8 channels, ReLU -> MaxPool 2 -> Conv 3x3 pad 1,
  16 channels, ReLU -> MaxPool 2 -> Flatten (64) -> Linear 64 -> 10.

Both are trained on scikit-learn's bundled 8x8 digits with the fixed split of
:func:`qsim.examples.qat_digits.load_split` (1348 training / 449 test images scaled to
[0, 1]), softmax cross-entropy and Adam (the optimizer of that example), in float32 with a
fixed seed: the weight initialisation and the batch order come from one
``numpy.random.default_rng(seed)``. Convolutions are one matrix product over im2col rows
(:func:`qsim.quant.kernels.im2col`); their backward pass scatters the column gradients back
with one strided add per kernel tap (:func:`_col2im`).

The weight files are written with fixed zip timestamps, so re-running
``python -m qsim.examples.train_digits`` on the same machine rewrites them byte for byte.
Keys are the layer names of :mod:`qsim.nn.examples`: ``fc1.weight`` is ``(in, out)`` like
:class:`qsim.nn.layers.Linear`, ``conv1.weight`` is ``(out, in, kh, kw)``.
"""

from __future__ import annotations

import argparse
import io
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from qsim.errors import ConfigError
from qsim.examples.qat_digits import Adam, _batches, _softmax_cross_entropy, load_split
from qsim.quant.kernels import conv_geometry, im2col

__all__ = ["TrainConfig", "MLP_CONFIG", "CNN_CONFIG", "MLP_WIDTHS", "CNN_CHANNELS", "DATA_DIR",
           "train_mlp", "train_cnn", "mlp_logits", "cnn_logits", "save_weights", "load_weights",
           "main"]

#: Hidden and output widths of the MLP (input 64 = 8 x 8 pixels).
MLP_WIDTHS = (64, 32, 16, 10)
#: Output channels of the CNN's two convolutions.
CNN_CHANNELS = (8, 16)
#: Where the shipped weights live (packaged as ``qsim/data/*``).
DATA_DIR = Path(__file__).resolve().parents[1] / "data"


@dataclass(frozen=True)
class TrainConfig:
    """Seed and optimisation settings of one training run."""

    seed: int = 0
    epochs: int = 30
    batch: int = 32
    lr: float = 3e-3


#: The settings the shipped weights were trained with.
MLP_CONFIG = TrainConfig(seed=0, epochs=40, batch=32, lr=3e-3)
CNN_CONFIG = TrainConfig(seed=0, epochs=30, batch=32, lr=3e-3)


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------------------------

def mlp_logits(params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Float32 forward pass of the MLP on ``x`` of shape ``(N, 64)``."""
    h = x
    layers = len(MLP_WIDTHS) - 1
    for i in range(1, layers + 1):
        h = h @ params[f"fc{i}.weight"] + params[f"fc{i}.bias"]
        if i < layers:
            h = np.maximum(h, np.float32(0))
    return h


def train_mlp(x: np.ndarray, y: np.ndarray, config: TrainConfig = MLP_CONFIG) -> dict[str, np.ndarray]:
    """Train the MLP on ``x`` ``(N, 64)`` and labels ``y``; returns its float32 weights."""
    _check_config(config)
    rng = np.random.default_rng(config.seed)
    params: dict[str, np.ndarray] = {}
    for i, (fan_in, fan_out) in enumerate(zip(MLP_WIDTHS[:-1], MLP_WIDTHS[1:]), start=1):
        params[f"fc{i}.weight"] = _he(rng, (fan_in, fan_out), fan_in)
        params[f"fc{i}.bias"] = np.zeros(fan_out, np.float32)
    names = list(params)
    opt = Adam([params[n] for n in names], config.lr)
    layers = len(MLP_WIDTHS) - 1
    for _ in range(config.epochs):
        for idx in _batches(rng, len(y), config.batch):
            acts = [x[idx]]
            for i in range(1, layers + 1):
                z = acts[-1] @ params[f"fc{i}.weight"] + params[f"fc{i}.bias"]
                acts.append(np.maximum(z, np.float32(0)) if i < layers else z)
            _, dz = _softmax_cross_entropy(acts[-1], y[idx])
            grads: dict[str, np.ndarray] = {}
            for i in range(layers, 0, -1):
                grads[f"fc{i}.weight"] = acts[i - 1].T @ dz
                grads[f"fc{i}.bias"] = dz.sum(axis=0)
                if i > 1:
                    dz = (dz @ params[f"fc{i}.weight"].T) * (acts[i - 1] > 0)
            opt.step([grads[n] for n in names])
    return params


# --------------------------------------------------------------------------------------------
# CNN: 3x3 "same" convolutions as im2col products, 2x2 max pooling
# --------------------------------------------------------------------------------------------

def _im2col(x: np.ndarray) -> np.ndarray:
    """Rows ``(N*H*W, C*9)`` of a 3x3, stride 1, pad 1 convolution, columns ordered (c, kh, kw)
    like ``weight.reshape(out, -1)``."""
    n, c, h, w = x.shape
    cols = im2col(x, conv_geometry((h, w), (3, 3), pads=(1, 1, 1, 1)))  # (N, C, H, W, 3, 3)
    return cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * 9)


def _col2im(dcols: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Adjoint of :func:`_im2col`: sum each column gradient into the input pixel it read."""
    n, c, h, w = shape
    d = dcols.reshape(n, h, w, c, 3, 3).transpose(0, 3, 4, 5, 1, 2)  # (N, C, 3, 3, H, W)
    padded = np.zeros((n, c, h + 2, w + 2), dtype=dcols.dtype)
    for i in range(3):  # one strided add per kernel tap, vectorised over everything else
        for j in range(3):
            padded[:, :, i:i + h, j:j + w] += d[:, :, i, j]
    return padded[:, :, 1:-1, 1:-1]


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, _, h, wd = x.shape
    cols = _im2col(x)
    z = cols @ w.reshape(w.shape[0], -1).T + b
    return z.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols


def _pool(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2 max pooling, stride 2; also the index (0..3) of each window's first maximum."""
    n, c, h, w = a.shape
    windows = a.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, h // 2, w // 2, 4)
    where = windows.argmax(axis=-1)
    return np.take_along_axis(windows, where[..., None], axis=-1)[..., 0], where


def _unpool(grad: np.ndarray, where: np.ndarray) -> np.ndarray:
    n, c, h2, w2 = grad.shape
    windows = np.zeros((n, c, h2, w2, 4), dtype=grad.dtype)
    np.put_along_axis(windows, where[..., None], grad[..., None], axis=-1)
    return windows.reshape(n, c, h2, w2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, 2 * h2, 2 * w2)


def cnn_logits(params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Float32 forward pass of the CNN on ``x`` of shape ``(N, 1, 8, 8)``."""
    a = x
    for name in ("conv1", "conv2"):
        z, _ = _conv(a, params[f"{name}.weight"], params[f"{name}.bias"])
        a, _ = _pool(np.maximum(z, np.float32(0)))
    return a.reshape(len(a), -1) @ params["fc.weight"] + params["fc.bias"]


def train_cnn(x: np.ndarray, y: np.ndarray, config: TrainConfig = CNN_CONFIG) -> dict[str, np.ndarray]:
    """Train the CNN on ``x`` ``(N, 1, 8, 8)`` and labels ``y``; returns its float32 weights."""
    _check_config(config)
    rng = np.random.default_rng(config.seed)
    c1, c2 = CNN_CHANNELS
    params = {
        "conv1.weight": _he(rng, (c1, 1, 3, 3), 9), "conv1.bias": np.zeros(c1, np.float32),
        "conv2.weight": _he(rng, (c2, c1, 3, 3), c1 * 9), "conv2.bias": np.zeros(c2, np.float32),
        "fc.weight": _he(rng, (c2 * 4, 10), c2 * 4), "fc.bias": np.zeros(10, np.float32),
    }
    names = list(params)
    opt = Adam([params[n] for n in names], config.lr)
    for _ in range(config.epochs):
        for idx in _batches(rng, len(y), config.batch):
            x0 = x[idx]
            z1, cols1 = _conv(x0, params["conv1.weight"], params["conv1.bias"])
            r1 = np.maximum(z1, np.float32(0))
            p1, where1 = _pool(r1)
            z2, cols2 = _conv(p1, params["conv2.weight"], params["conv2.bias"])
            r2 = np.maximum(z2, np.float32(0))
            p2, where2 = _pool(r2)
            flat = p2.reshape(len(idx), -1)
            _, dlogits = _softmax_cross_entropy(flat @ params["fc.weight"] + params["fc.bias"], y[idx])
            grads = {"fc.weight": flat.T @ dlogits, "fc.bias": dlogits.sum(axis=0)}
            dz2 = _unpool((dlogits @ params["fc.weight"].T).reshape(p2.shape), where2) * (z2 > 0)
            rows2 = dz2.transpose(0, 2, 3, 1).reshape(-1, c2)
            grads["conv2.weight"] = (rows2.T @ cols2).reshape(params["conv2.weight"].shape)
            grads["conv2.bias"] = rows2.sum(axis=0)
            dp1 = _col2im(rows2 @ params["conv2.weight"].reshape(c2, -1), p1.shape)
            dz1 = _unpool(dp1, where1) * (z1 > 0)
            rows1 = dz1.transpose(0, 2, 3, 1).reshape(-1, c1)
            grads["conv1.weight"] = (rows1.T @ cols1).reshape(params["conv1.weight"].shape)
            grads["conv1.bias"] = rows1.sum(axis=0)
            opt.step([grads[n] for n in names])
    return params


def _check_config(config: TrainConfig) -> None:
    for name in ("seed", "epochs", "batch"):
        value = getattr(config, name)
        low = {"seed": 0, "epochs": 1, "batch": 1}[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be an int of at least {low}, not {value!r}")
    if not (isinstance(config.lr, (int, float)) and 0 < config.lr < np.inf):
        raise ConfigError(f"lr must be a positive finite number, not {config.lr!r}")


# --------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------

def save_weights(path: Path | str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` whose bytes depend only on the arrays.

    ``numpy.savez`` stamps each member with the current time; fixed timestamps make a
    regenerated file identical to the committed one when the weights are.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(value), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                             buffer.getvalue())


def load_weights(path: Path | str) -> dict[str, np.ndarray]:
    """The arrays of a weight file, by name, in file order."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

#: Per network: trainer, forward pass, input shape (the split's images are (N, 64)).
_NETWORKS: dict[str, tuple[Callable, Callable, tuple[int, ...]]] = {
    "mlp": (train_mlp, mlp_logits, (-1, 64)),
    "cnn": (train_cnn, cnn_logits, (-1, 1, 8, 8)),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Train both networks, print their test accuracy, write the weight files."""
    parser = argparse.ArgumentParser(prog="python -m qsim.examples.train_digits",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR,
                        help=f"directory of the weight files (default: {DATA_DIR})")
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = load_split()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, (train, logits, shape) in _NETWORKS.items():
        start = time.perf_counter()
        params = train(x_train.reshape(shape), y_train)
        seconds = time.perf_counter() - start
        predicted = logits(params, x_test.reshape(shape)).argmax(axis=1)
        correct = int(np.count_nonzero(predicted == y_test))
        path = args.out_dir / f"digits_{name}.npz"
        save_weights(path, params)
        print(f"digits_{name}: {correct}/{len(y_test)} test images correct "
              f"({correct / len(y_test):.2%}), trained in {seconds:.1f} s -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
