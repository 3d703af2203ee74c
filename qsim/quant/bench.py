"""Speed of qsim's exact int8 GEMM next to a float32 GEMM of the same shape.

This module owns one benchmark and its target: :func:`bench_int8_gemm` times
:func:`qsim.quant.kernels.matmul_integer` (and :func:`~qsim.quant.kernels.qlinear_matmul`,
which adds requantization) on ``size x size x size`` int8 operands and ``numpy.matmul`` on
the same operands as float32, in the same run, interleaved, and reports the median times and
the throughput ratio. The target is a ratio of at least 0.25: exactness may cost at most 4x.
The benchmark also checks that qsim's product is exact against an int64 matmul. It is a
function to call (or ``python -m qsim.quant.bench``), never a timed unit test.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from qsim.quant.kernels import matmul_integer, qlinear_matmul

__all__ = ["bench_int8_gemm", "TARGET_RATIO"]

#: qsim int8 GEMM throughput / float32 GEMM throughput that the benchmark must reach.
TARGET_RATIO = 0.25


def bench_int8_gemm(size: int = 512, repeats: int = 9, seed: int = 0) -> dict[str, Any]:
    """Time qsim's exact int8 GEMM against float32 ``numpy.matmul`` on one shape.

    Parameters
    ----------
    size : int
        M = K = N.
    repeats : int
        Timed runs of each contender (interleaved, after one warm-up); medians are reported
        because the machine is shared.
    seed : int
        Seed of the random int8 operands.

    Returns
    -------
    dict
        ``size``, ``repeats``; ``matmul_integer_s``, ``qlinear_matmul_s`` and ``float32_s``
        (median seconds, the three interleaved); ``ratio`` = float32 time / matmul_integer
        time (qsim throughput over float32 throughput) and ``qlinear_ratio`` likewise;
        ``matmul_integer_alone_s``, ``float32_alone_s`` and ``ratio_alone``, the same two timed
        each in a loop of its own; ``target`` and ``meets_target`` (``ratio >= target``);
        ``exact`` (qsim's product equals the int64 one) and ``gmacs`` (qsim's MAC rate).

    Raises
    ------
    AssertionError
        If qsim's result is not exactly the int64 product (it must never be).
    """
    if size < 1 or repeats < 1:
        raise ValueError(f"size and repeats must be positive, not {size} and {repeats}")
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (size, size)).astype(np.int8)
    b = rng.integers(-128, 128, (size, size)).astype(np.int8)
    a_zero_point = np.int8(3)  # asymmetric activations, symmetric weights: the usual layout
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    scales = (np.float32(0.0213), np.float32(0.0071), np.float32(1.37))

    def run_integer() -> np.ndarray:
        return matmul_integer(a, b, a_zero_point)

    def run_qlinear() -> np.ndarray:
        return qlinear_matmul(a, scales[0], a_zero_point, b, scales[1], np.int8(0), scales[2],
                              np.int8(0), semantics="onnxruntime")

    def run_float() -> np.ndarray:
        return np.matmul(a32, b32)

    contenders = {"matmul_integer": run_integer, "qlinear_matmul": run_qlinear,
                  "float32": run_float}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    results = {name: run() for name, run in contenders.items()}  # warm-up
    for _ in range(repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)

    # The same two calls each in a loop of their own: what a caller timing one kernel sees.
    # The figures differ from the interleaved ones because glibc hands the megabytes of
    # temporaries back to the OS or not depending on what ran before (page faults).
    alone: dict[str, list[float]] = {"matmul_integer": [], "float32": []}
    for name in alone:
        run = contenders[name]
        run()
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            alone[name].append(time.perf_counter() - start)

    reference = (a.astype(np.int64) - int(a_zero_point)) @ b.astype(np.int64)
    exact = bool(np.array_equal(results["matmul_integer"], reference))
    assert exact, "qsim's int8 GEMM differs from the int64 product"
    median = {name: float(np.median(values)) for name, values in times.items()}
    ratio = median["float32"] / median["matmul_integer"]
    return {
        "size": size,
        "repeats": repeats,
        "matmul_integer_s": median["matmul_integer"],
        "qlinear_matmul_s": median["qlinear_matmul"],
        "float32_s": median["float32"],
        "ratio": ratio,
        "qlinear_ratio": median["float32"] / median["qlinear_matmul"],
        "matmul_integer_alone_s": float(np.median(alone["matmul_integer"])),
        "float32_alone_s": float(np.median(alone["float32"])),
        "ratio_alone": float(np.median(alone["float32"]) / np.median(alone["matmul_integer"])),
        "target": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "exact": exact,
        "gmacs": size ** 3 / median["matmul_integer"] / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m qsim.quant.bench [--size N] [--repeats R]``: print the figures."""
    parser = argparse.ArgumentParser(prog="python -m qsim.quant.bench",
                                     description=bench_int8_gemm.__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    r = bench_int8_gemm(args.size, args.repeats, args.seed)
    n = r["size"]
    print(f"int8 GEMM {n}x{n}x{n}, median of {r['repeats']} runs (exact: {r['exact']})")
    print(f"  qsim matmul_integer  {r['matmul_integer_s'] * 1e3:8.2f} ms  "
          f"({r['gmacs']:.1f} GMAC/s)")
    print(f"  qsim qlinear_matmul  {r['qlinear_matmul_s'] * 1e3:8.2f} ms")
    print(f"  numpy float32 matmul {r['float32_s'] * 1e3:8.2f} ms")
    print(f"  ratio (qsim / float32 throughput): {r['ratio']:.2f} "
          f"(qlinear_matmul {r['qlinear_ratio']:.2f}); target >= {r['target']}: "
          f"{'met' if r['meets_target'] else 'NOT met'}")
    print(f"  each alone in its own loop: matmul_integer {r['matmul_integer_alone_s'] * 1e3:.2f} "
          f"ms, float32 {r['float32_alone_s'] * 1e3:.2f} ms, ratio {r['ratio_alone']:.2f}")
    return 0 if r["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
