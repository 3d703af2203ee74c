"""Record fbgemm's requantization (PyTorch ``quantized::linear``/``conv2d``) with a float bias
and with multipliers so large that ``f32(acc) * M`` leaves int32.

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.13.0 numpy   # the CPU wheel
    PYTHONPATH=. /tmp/tv/bin/python tests/golden/record_fbgemm.py [--out tests/golden/fbgemm.npz]

The test suite installs neither torch nor this script's needs; it reads what the script wrote
(``tests/quant/test_fbgemm_golden.py``). Every case has full-range uint8 activations and int8
weights in ``[-64, 63]``: no pair of u8 x s8 products can reach the int16 bound, so the
accumulators are the same integers on every instruction path (``vpmaddubsw`` or VNNI) and the
recorded outputs pin fbgemm's requantization alone. ``meta`` still names the path, CPU and
versions they came from.

Cases (each with per-tensor and with per-channel weights):

* ``bias``: a float bias per output channel chosen (by search over candidate values) so that
  fbgemm's two float-bias rules, ``fma(b, f32(1/ats), f32(acc))`` (per-tensor kernels) and
  ``f32(f32(acc) + f32(b/ats))`` (per-channel kernels), give different outputs somewhere in
  each channel where such a bias was found;
* ``huge``: an output scale so small that about half of the products ``f32(acc) * M`` are
  beyond int32 (``cvtps2dq`` gives ``-2**31``), without and with a float bias, and with a fused
  ReLU.

Linear layers of 1 to 37 outputs (vector remainders of every kind), and convolutions taking
each of fbgemm's kernels: im2col, 1x1 (pointwise), groupwise (4 channels per group),
depthwise 3x3 and 5x5 (8, 9 and 5 channels: with and without a scalar-sized tail) and
depthwise with a channel multiplier, on one 8x8 image; then, from their own seed, larger cases
(``BIG_LINEARS``, ``BIG_CONVS``: 96 to 256 rows, batches of 2 and 3 images up to 13x12, 1x1 with
24 outputs, depthwise 3x3 with 12 channels and 5x5 stride 2 with a channel multiplier) for more
recorded values; the bias search looks at the first ``SEARCH_ROWS`` accumulator rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from qsim.quant.isa import detect_isa  # noqa: E402
from qsim.quant.kernels import conv_integer  # noqa: E402
from qsim.quant.ortops import cvtps_epi32, fma_f32  # noqa: E402

F = np.float32
#: (m, k, n) of the linear cases
LINEARS = [(16, 64, 21), (9, 33, 37), (1, 100, 8), (5, 17, 3)]
#: (channels, outputs, kernel, stride, pad, dilation, group) of the conv cases
CONVS = [(8, 16, 3, 1, 1, 1, 1), (3, 8, 3, 2, 1, 1, 1), (16, 7, 1, 1, 0, 1, 1), (16, 16, 3, 1, 1, 1, 4),
         (8, 8, 3, 1, 1, 1, 8), (9, 9, 3, 2, 1, 1, 9), (5, 5, 5, 1, 2, 1, 5), (8, 16, 3, 1, 1, 1, 8)]
KINDS = ("bias", "huge", "huge_bias", "huge_relu")
#: larger cases, recorded after the ones above from their own seed (``BIG_SEED``), so the
#: earlier cases stay what they were: (m, k, n) linears, and convs as
#: (geometry as in ``CONVS``, (batch, height, width) of the input)
BIG_SEED = 2027
BIG_LINEARS = [(256, 48, 19), (160, 24, 40), (96, 130, 13)]
BIG_CONVS = [((8, 16, 3, 1, 1, 1, 1), (2, 12, 12)), ((12, 12, 3, 1, 1, 1, 12), (2, 12, 12)),
             ((16, 24, 1, 1, 0, 1, 1), (2, 10, 10)), ((7, 14, 5, 2, 2, 1, 7), (3, 13, 11))]
#: accumulator rows the bias search looks at (all of them in the small cases)
SEARCH_ROWS = 512


def fbgemm_rule(acc, ats, m, bias, zp, per_tensor):
    """The two float-bias rules (per_tensor picks one) and cvtps2dq: what the search
    discriminates with; qsim's implementation is tested against torch, not against this."""
    x = acc.astype(F)
    if bias is not None:
        x = fma_f32(bias, F(1) / ats, x) if per_tensor else F(x + F(bias / ats))
    with np.errstate(over="ignore", invalid="ignore"):
        return np.clip(cvtps_epi32(F(x * m)) + zp, 0, 255)


def choose_bias(acc, axis, ats, m, zp, rng, samples=20000):
    """Per channel, a bias whose outputs differ between the two rules, where one is found."""
    acc = np.moveaxis(acc, axis, -1).reshape(-1, acc.shape[axis])[:SEARCH_ROWS]
    n = acc.shape[1]
    ats = np.broadcast_to(ats, (n,))
    m = np.broadcast_to(m, (n,))
    bias = np.empty(n, F)
    for j in range(n):
        b = rng.normal(0, 2, samples).astype(F)
        a = np.broadcast_to(acc[:, j:j + 1], (acc.shape[0], samples))
        differ = (fbgemm_rule(a, ats[j], m[j], b, zp, True)
                  != fbgemm_rule(a, ats[j], m[j], b, zp, False)).any(axis=0)
        bias[j] = b[np.argmax(differ)] if differ.any() else b[0]
    return bias


def operands(kind, per_channel, n, acc_of, rng):
    """Scales, zero points and bias for one case; ``acc_of(x_zp)`` gives the accumulators."""
    x_scale, x_zp = F(rng.uniform(0.01, 0.03)), int(rng.integers(100, 156))
    w_scale = rng.uniform(0.002, 0.01, n).astype(F) if per_channel else F(rng.uniform(0.002, 0.01))
    y_zp = int(rng.integers(60, 200))
    acc = acc_of(x_zp)
    ats = F(x_scale) * np.asarray(w_scale, F)
    if kind == "bias":
        y_scale = F(rng.uniform(0.05, 0.3))
        m = ats / y_scale
        bias = choose_bias(acc, 1, np.broadcast_to(ats, (n,)), np.broadcast_to(m, (n,)), y_zp, rng)
    else:
        # about half of |f32(acc) * M| beyond 2**31
        typical = float(np.median(np.abs(acc[acc != 0]))) if np.any(acc) else 1.0
        y_scale = F(float(np.max(ats)) * typical / 2.0 ** 31)
        bias = rng.normal(0, 2, n).astype(F) if kind == "huge_bias" else None
    return {"x_scale": x_scale, "x_zero_point": np.uint8(x_zp), "w_scale": np.asarray(w_scale, F),
            "y_scale": y_scale, "y_zero_point": np.uint8(y_zp),
            **({} if bias is None else {"bias": bias})}


def record(out: dict) -> None:
    import torch

    torch.backends.quantized.engine = "fbgemm"

    def weights(w, scale):
        t = torch.from_numpy(w)
        if scale.ndim == 0:
            return torch._make_per_tensor_quantized_tensor(t, float(scale), 0)
        return torch._make_per_channel_quantized_tensor(
            t, torch.from_numpy(scale.astype(np.float64)), torch.zeros(len(scale), dtype=torch.long), 0)

    def acts(x, o):
        return torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), float(o["x_scale"]),
                                                       int(o["x_zero_point"]))

    def bias_of(o):
        return torch.from_numpy(o["bias"]) if "bias" in o else None

    def linear_cases(i, m, k, n, rng):
        for per_channel in (False, True):
            for kind in KINDS:
                x = rng.integers(0, 256, (m, k)).astype(np.uint8)
                w = rng.integers(-64, 64, (n, k)).astype(np.int8)
                o = operands(kind, per_channel, n,
                             lambda zp: (x.astype(np.int64) - zp) @ w.T.astype(np.int64), rng)
                packed = torch.ops.quantized.linear_prepack(weights(w, o["w_scale"]), bias_of(o))
                op = torch.ops.quantized.linear_relu if kind == "huge_relu" else torch.ops.quantized.linear
                y = op(acts(x, o), packed, float(o["y_scale"]), int(o["y_zero_point"]))
                name = f"linear{i}_{'pc' if per_channel else 'pt'}_{kind}"
                out.update({f"{name}/{key}": value for key, value in o.items()})
                out.update({f"{name}/x": x, f"{name}/w": w, f"{name}/y": y.int_repr().numpy()})

    def conv_cases(i, case, batch_hw, rng):
        c, oc, kernel, stride, pad, dilation, group = case
        for per_channel in (False, True):
            for kind in KINDS:
                x = rng.integers(0, 256, (batch_hw[0], c, *batch_hw[1:])).astype(np.uint8)
                w = rng.integers(-64, 64, (oc, c // group, kernel, kernel)).astype(np.int8)
                o = operands(kind, per_channel, oc, lambda zp: conv_integer(
                    x, w, np.uint8(zp), np.zeros(oc, np.int8), strides=(stride,) * 2, pads=(pad,) * 4,
                    dilations=(dilation,) * 2, group=group), rng)
                packed = torch.ops.quantized.conv2d_prepack(weights(w, o["w_scale"]), bias_of(o), [stride] * 2,
                                                            [pad] * 2, [dilation] * 2, group)
                op = torch.ops.quantized.conv2d_relu if kind == "huge_relu" else torch.ops.quantized.conv2d
                y = op(acts(x, o), packed, float(o["y_scale"]), int(o["y_zero_point"]))
                name = f"conv{i}_{'pc' if per_channel else 'pt'}_{kind}"
                out.update({f"{name}/{key}": value for key, value in o.items()})
                out.update({f"{name}/x": x, f"{name}/w": w, f"{name}/y": y.int_repr().numpy(),
                            f"{name}/geometry": np.array(case)})

    rng = np.random.default_rng(2026)
    for i, (m, k, n) in enumerate(LINEARS):
        linear_cases(i, m, k, n, rng)
    for i, case in enumerate(CONVS):
        conv_cases(i, case, (1, 8, 8), rng)
    rng = np.random.default_rng(BIG_SEED)
    for i, (m, k, n) in enumerate(BIG_LINEARS, len(LINEARS)):
        linear_cases(i, m, k, n, rng)
    for i, (case, batch_hw) in enumerate(BIG_CONVS, len(CONVS)):
        conv_cases(i, case, batch_hw, rng)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("fbgemm.npz"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    out: dict[str, np.ndarray] = {}
    record(out)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    meta = {"isa": detect_isa(), "torch": torch.__version__, "cpu": cpu,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "engine": torch.backends.quantized.engine}
    out["meta"] = np.array(json.dumps(meta, sort_keys=True))
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, "
          f"{sum(1 for k in out if k.endswith('/y'))} cases): {meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
