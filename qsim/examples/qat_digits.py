"""Quantization-aware training on scikit-learn's digits: INT4 QAT recovers what INT4 PTQ loses.

This example owns a small numpy MLP (64 -> 16 -> 16 -> 16 -> 10; each hidden layer is a Linear
without bias, BatchNorm and ReLU; softmax cross-entropy, Adam), its training loops, and the
comparison of four deployments of it on the bundled 8x8 digits data set
(:func:`sklearn.datasets.load_digits`, no download):

* ``float``: the float32 network with each BatchNorm folded into its Linear and the ReLU fused
  (:func:`qsim.quant.fold.fuse_conv_bn_relu`, ONNX Runtime's folding order);
* ``int8_ptq`` / ``int4_ptq``: post-training quantization of that network (weights symmetric
  per output channel, layer inputs asymmetric per tensor, calibrated by min/max on the
  training set);
* ``int4_qat``: the same INT4 network after fine-tuning the folded float one with
  :class:`qsim.quant.qat.FakeQuant` on every weight and layer input.

Every quantized accuracy is measured with integer arithmetic: quantized inputs and weights,
int32 accumulators (:func:`qsim.numerics.int_matmul`) with an int32 bias, requantization
through float32 (dequantize, then quantize) and the fused ReLU as an integer clamp; the class
is the argmax of the last layer's dequantized accumulators (no output requantization).
Run ``python -m qsim.examples.qat_digits``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from qsim.errors import ConfigError
from qsim.numerics import INT32, int_matmul
from qsim.quant.calibrate import MinMaxObserver
from qsim.quant.fold import FusedLayer, fuse_conv_bn_relu
from qsim.quant.ops import dequantize, quantize
from qsim.quant.params import QuantParams
from qsim.quant.qat import FakeQuant

__all__ = ["load_split", "run", "format_table", "format_seed_table", "main", "SPLIT_SEED"]

#: Seed of the train/test split: fixed, so every training seed is scored on the same test set.
SPLIT_SEED = 2024
#: Share of the 1797 images held out for testing.
TEST_SHARE = 0.25
#: BatchNorm epsilon and running-statistics momentum (PyTorch's defaults).
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits images scaled to [0, 1] (float32) and labels, split by :data:`SPLIT_SEED`.

    Returns ``(x_train, y_train, x_test, y_test)``: 1348 training and 449 test images.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # an optional (test) dependency of qsim
        raise ImportError("the digits example needs scikit-learn: pip install scikit-learn") from err

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_test = int(round(len(y) * TEST_SHARE))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


# --------------------------------------------------------------------------------------------
# The network and its float training
# --------------------------------------------------------------------------------------------

@dataclass
class BNLayer:
    """A hidden layer: Linear without bias -> BatchNorm -> ReLU, float32."""

    w: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray


@dataclass
class MLP:
    """Hidden BNLayers, then a Linear output layer with bias."""

    hidden: list[BNLayer]
    w_out: np.ndarray
    b_out: np.ndarray

    @classmethod
    def init(cls, rng: np.random.Generator, widths: Sequence[int]) -> MLP:
        def he(fan_out: int, fan_in: int) -> np.ndarray:
            return (rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32)

        layers = [BNLayer(he(out, inp), np.ones(out, np.float32), np.zeros(out, np.float32),
                          np.zeros(out, np.float32), np.ones(out, np.float32))
                  for inp, out in zip(widths[:-2], widths[1:-1])]
        return cls(layers, he(widths[-1], widths[-2]), np.zeros(widths[-1], np.float32))

    def parameters(self) -> list[np.ndarray]:
        params = [p for layer in self.hidden for p in (layer.w, layer.gamma, layer.beta)]
        return params + [self.w_out, self.b_out]

    def logits_eval(self, x: np.ndarray) -> np.ndarray:
        """Inference-mode forward pass (BatchNorm with running statistics)."""
        h = x
        for layer in self.hidden:
            z = h @ layer.w.T
            n = (z - layer.running_mean) / np.sqrt(layer.running_var + np.float32(BN_EPS))
            h = np.maximum(layer.gamma * n + layer.beta, 0)
        return h @ self.w_out.T + self.b_out

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Training-mode step: batch statistics; running statistics updated as PyTorch does."""
        m = x.shape[0]
        c = np.float32(BN_MOMENTUM)
        h, caches = x, []
        for layer in self.hidden:
            z = h @ layer.w.T
            mu, var = z.mean(axis=0), z.var(axis=0)
            inv = np.float32(1) / np.sqrt(var + np.float32(BN_EPS))
            n = (z - mu) * inv
            a = layer.gamma * n + layer.beta
            caches.append((h, n, inv, a))
            h = np.maximum(a, 0)
            layer.running_mean = (1 - c) * layer.running_mean + c * mu
            layer.running_var = (1 - c) * layer.running_var + c * var * np.float32(m / (m - 1))
        loss, dlogits = _softmax_cross_entropy(h @ self.w_out.T + self.b_out, y)
        grads = [dlogits.T @ h, dlogits.sum(axis=0)]
        dh = dlogits @ self.w_out
        for layer, (h_in, n, inv, a) in zip(reversed(self.hidden), reversed(caches)):
            da = dh * (a > 0)
            dn = da * layer.gamma
            # BatchNorm backward through the batch mean and variance.
            dz = inv / m * (m * dn - dn.sum(axis=0) - n * (dn * n).sum(axis=0))
            grads[:0] = [dz.T @ h_in, (da * n).sum(axis=0), da.sum(axis=0)]
            dh = dz @ layer.w
        return loss, grads


def _softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    m = logits.shape[0]
    loss = float(-np.log(p[np.arange(m), y] + 1e-12).mean())
    p[np.arange(m), y] -= 1
    return loss, (p / m).astype(np.float32)


class Adam:
    """Adam (Kingma & Ba) on a list of float32 arrays, updated in place."""

    def __init__(self, params: list[np.ndarray], lr: float, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.params = params
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        c1 = 1 - self.beta1 ** self.t
        c2 = 1 - self.beta2 ** self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            p -= (self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(np.float32)


def _batches(rng: np.random.Generator, n: int, size: int):
    order = rng.permutation(n)
    for start in range(0, n - size + 1, size):  # full batches only: BatchNorm needs m > 1
        yield order[start:start + size]


def train_float(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, hidden: Sequence[int],
                epochs: int, batch: int, lr: float) -> MLP:
    """Train the float MLP with BatchNorm."""
    net = MLP.init(rng, [x.shape[1], *hidden, 10])
    opt = Adam(net.parameters(), lr)
    for _ in range(epochs):
        for idx in _batches(rng, len(y), batch):
            _, grads = net.loss_and_grads(x[idx], y[idx])
            opt.step(grads)
    return net


# --------------------------------------------------------------------------------------------
# Deployment: the folded float network and its integer versions
# --------------------------------------------------------------------------------------------

@dataclass
class FoldedMLP:
    """The deployable network: BatchNorm and ReLU fused into each hidden layer."""

    layers: list[FusedLayer]
    w_out: np.ndarray
    b_out: np.ndarray

    def hidden_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """The input of every layer: ``x`` and each hidden activation."""
        outs = [x]
        for layer in self.layers:
            outs.append(layer.activate(outs[-1] @ layer.weight.T + layer.bias))
        return outs

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.hidden_outputs(x)[-1] @ self.w_out.T + self.b_out


def fold(net: MLP) -> FoldedMLP:
    """Fold each trained BatchNorm into its Linear (ONNX Runtime's float32 order), fuse the ReLU."""
    layers = [fuse_conv_bn_relu(h.w, None, h.gamma, h.beta, h.running_mean, h.running_var, BN_EPS,
                                activation="relu", channel_axis=0) for h in net.hidden]
    return FoldedMLP(layers, net.w_out.copy(), net.b_out.copy())


@dataclass
class IntegerMLP:
    """A folded network with the quantization parameters of every layer input.

    ``act_params[i]`` quantizes the input of layer ``i`` (the image, then each hidden
    activation); weights are quantized symmetric per output channel in ``weight_fmt``.
    """

    model: FoldedMLP
    act_params: list[QuantParams]
    weight_fmt: str

    def _linear(self, q_x: np.ndarray, x_params: QuantParams, w: np.ndarray,
                bias: np.ndarray) -> tuple[np.ndarray, QuantParams]:
        w_params = MinMaxObserver(self.weight_fmt, symmetric=True, per_channel_axis=0).observe(w).compute()
        # The accumulator of output channel c has scale s_x * s_w[c]; the bias is int32 in it.
        acc_scale = x_params.scale * w_params.scale
        acc_params = QuantParams(acc_scale, 0, INT32, axis=-1)
        q_b = quantize(bias, QuantParams(acc_scale, 0, INT32, axis=0))
        acc = int_matmul(q_x - x_params.zero_point, quantize(w, w_params).T) + q_b
        return acc, acc_params

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class predictions computed with integer accumulators."""
        q = quantize(x, self.act_params[0])
        for layer, p_in, p_out in zip(self.model.layers, self.act_params, self.act_params[1:]):
            acc, p_acc = self._linear(q, p_in, layer.weight, layer.bias)
            lo, hi = layer.quantized_range(p_out)  # the fused ReLU, as an integer clamp
            q = np.clip(quantize(dequantize(acc, p_acc), p_out), lo, hi)
        acc, p_acc = self._linear(q, self.act_params[-1], self.model.w_out, self.model.b_out)
        # Each class has its own weight scale, so compare real values, not raw accumulators.
        return dequantize(acc, p_acc).argmax(axis=1)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(self.predict(x) == y))


def ptq(model: FoldedMLP, x_calib: np.ndarray, weight_fmt: str, act_fmt: str) -> IntegerMLP:
    """Post-training quantization: min/max calibration of every layer input on ``x_calib``."""
    params = [MinMaxObserver(act_fmt).observe(a).compute() for a in model.hidden_outputs(x_calib)]
    return IntegerMLP(model, params, weight_fmt)


def qat(model: FoldedMLP, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, fmt: str,
        epochs: int, batch: int, lr: float, freeze_epochs: int) -> IntegerMLP:
    """Fine-tune the folded float network with fake quantization, then quantize it.

    Weights are fake-quantized per output channel (symmetric, range of the current weights);
    layer inputs per tensor with a moving-average range, frozen for the last
    ``freeze_epochs`` epochs so that the weights adapt to the final scales.
    """
    weights = [layer.weight.copy() for layer in model.layers] + [model.w_out.copy()]
    biases = [layer.bias.copy() for layer in model.layers] + [model.b_out.copy()]
    fq_acts = [FakeQuant(fmt, tracking="moving_average", averaging_constant=0.1) for _ in weights]
    fq_ws = [FakeQuant(fmt, symmetric=True, per_channel_axis=0, tracking="current") for _ in weights]
    opt = Adam(weights + biases, lr)
    last = len(weights) - 1
    for epoch in range(epochs):
        if epoch == epochs - freeze_epochs:
            for fq in fq_acts:
                fq.freeze()
        for idx in _batches(rng, len(y), batch):
            a, caches = x[idx], []
            for i, (w, b) in enumerate(zip(weights, biases)):
                a_hat, w_hat = fq_acts[i](a), fq_ws[i](w)
                z = a_hat @ w_hat.T + b
                caches.append((a_hat, w_hat, z))
                a = z if i == last else np.maximum(z, 0)
            _, dz = _softmax_cross_entropy(a, y[idx])
            dws, dbs = [None] * len(weights), [None] * len(weights)
            for i in range(last, -1, -1):
                a_hat, w_hat, z = caches[i]
                if i < last:
                    dz = dz * (z > 0)
                dws[i] = fq_ws[i].backward(dz.T @ a_hat)
                dbs[i] = dz.sum(axis=0)
                dz = fq_acts[i].backward(dz @ w_hat)
            opt.step(dws + dbs)
    layers = [FusedLayer(w, b, "relu", np.float32(0), np.float32(np.inf), 0)
              for w, b in zip(weights[:-1], biases[:-1])]
    tuned = FoldedMLP(layers, weights[-1], biases[-1])
    return IntegerMLP(tuned, [fq.params for fq in fq_acts], fmt)


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------

def _check_count(value: int, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an int of at least {low}, not {value!r}")
    return int(value)


def run(seed: int = 0, hidden: Sequence[int] = (16, 16, 16), epochs: int = 40,
        qat_epochs: int = 12, batch: int = 32, lr: float = 3e-3, qat_lr: float = 1e-3,
        freeze_epochs: int = 3) -> dict:
    """Train, fold, quantize and fine-tune; return test accuracies and the setup.

    Parameters
    ----------
    seed : int
        Seed of the weight initialisation and of the batch order (the split is fixed).
    hidden : sequence of int
        Widths of the hidden Linear -> BatchNorm -> ReLU layers.
    epochs, qat_epochs : int
        Float training epochs; QAT fine-tuning epochs (the QAT starts from the float network).
    batch : int
        Mini-batch size (at least 2: BatchNorm).
    lr, qat_lr : float
        Adam learning rates of the float training and of the fine-tuning.
    freeze_epochs : int
        Final QAT epochs with the activation ranges frozen.

    Returns
    -------
    dict
        ``float_bn`` (float network with its BatchNorm), ``float`` (BatchNorm folded),
        ``int8_ptq``, ``int4_ptq``, ``int4_qat`` (test accuracies in [0, 1]), and ``seed``,
        ``hidden``, ``epochs``, ``qat_epochs``, ``train_size``, ``test_size``.
    """
    seed = _check_count(seed, "seed", 0)
    epochs = _check_count(epochs, "epochs", 1)
    qat_epochs = _check_count(qat_epochs, "qat_epochs", 1)
    batch = _check_count(batch, "batch", 2)
    freeze_epochs = _check_count(freeze_epochs, "freeze_epochs", 0)
    hidden = tuple(_check_count(h, "hidden width", 1) for h in hidden)
    if freeze_epochs > qat_epochs:
        raise ConfigError(f"freeze_epochs ({freeze_epochs}) must not exceed qat_epochs ({qat_epochs})")
    x_train, y_train, x_test, y_test = load_split()
    rng = np.random.default_rng(seed)
    net = train_float(x_train, y_train, rng, hidden, epochs, batch, lr)
    folded = fold(net)

    def float_accuracy(logits: np.ndarray) -> float:
        return float(np.mean(logits.argmax(axis=1) == y_test))

    results = {
        "float_bn": float_accuracy(net.logits_eval(x_test)),
        "float": float_accuracy(folded.logits(x_test)),
        "int8_ptq": ptq(folded, x_train, "int8", "int8").accuracy(x_test, y_test),
        "int4_ptq": ptq(folded, x_train, "int4", "int4").accuracy(x_test, y_test),
    }
    tuned = qat(folded, x_train, y_train, rng, "int4", qat_epochs, batch, qat_lr, freeze_epochs)
    results["int4_qat"] = tuned.accuracy(x_test, y_test)
    results.update(seed=seed, hidden=hidden, epochs=epochs, qat_epochs=qat_epochs,
                   train_size=len(y_train), test_size=len(y_test))
    return results


ROWS = [
    ("float_bn", "float32 (with BatchNorm)", "float32", "float32"),
    ("float", "float32 (BN folded)", "float32", "float32"),
    ("int8_ptq", "INT8 PTQ", "int8 per-channel", "int8 per-tensor"),
    ("int4_ptq", "INT4 PTQ", "int4 per-channel", "int4 per-tensor"),
    ("int4_qat", "INT4 QAT", "int4 per-channel", "int4 per-tensor"),
]


def format_table(results: dict) -> str:
    """The results of :func:`run` as a Markdown table."""
    lines = ["| model | weights | activations | test accuracy |", "|---|---|---|---|"]
    for key, name, weights, acts in ROWS:
        correct = round(results[key] * results["test_size"])
        lines.append(f"| {name} | {weights} | {acts} | {results[key]:.4f} "
                     f"({correct}/{results['test_size']}) |")
    return "\n".join(lines)


def format_seed_table(runs: Sequence[dict]) -> str:
    """Several :func:`run` results as one Markdown row per seed (correct test images)."""
    keys = [key for key, *_ in ROWS]
    lines = ["| seed | " + " | ".join(name for _, name, *_ in ROWS) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for r in runs:
        counts = [str(round(r[k] * r["test_size"])) for k in keys]
        lines.append(f"| {r['seed']} | " + " | ".join(counts) + " |")
    means = [np.mean([r[k] * r["test_size"] for r in runs]) for k in keys]
    lines.append("| mean | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: parse the options, call :func:`run` per seed, print the tables."""
    parser = argparse.ArgumentParser(prog="python -m qsim.examples.qat_digits",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="training seeds; with several, one summary row per seed")
    parser.add_argument("--hidden", type=int, nargs="+", default=[16, 16, 16],
                        help="widths of the hidden Linear-BatchNorm-ReLU layers")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--qat-epochs", type=int, default=12)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    runs = [run(seed=seed, hidden=args.hidden, epochs=args.epochs, qat_epochs=args.qat_epochs)
            for seed in args.seed]
    first = runs[0]
    widths = "-".join(map(str, (64, *first["hidden"], 10)))
    print(f"digits: {first['train_size']} training / {first['test_size']} test images, "
          f"MLP {widths}, {first['epochs']} float + {first['qat_epochs']} QAT epochs")
    if len(runs) == 1:
        print(f"seed {first['seed']}")
        print(format_table(first))
    else:
        print(f"correct test images out of {first['test_size']}")
        print(format_seed_table(runs))
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
