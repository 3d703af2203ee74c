"""Benchmark of ``qsim infer`` against ONNX Runtime, and the digits ONNX models it runs.

This module owns the two small digits networks that the ONNX parity tests and the benchmark
share, built directly with ``onnx.helper`` (no exporter involved):

* an MLP ``64 -> 32 -> 10`` (Gemm, Relu, Gemm), and
* a CNN ``1x8x8 -> conv 3x3 (8, pad 1) -> relu -> maxpool 2 -> conv 3x3 (16) -> relu ->
  flatten -> gemm (10)``.

The MLP is trained by 300 steps of full-batch gradient descent (numpy, fixed seed); the CNN's
convolutions are fixed-seed random filters under a ridge-regression readout. Both are fitted on
scikit-learn's bundled digits (no download) and classify 92.5 % and 84 % of the 200 held-out
digits. :func:`quantize` runs
``onnxruntime.quantization.quantize_static`` on them, calibrated on digits images.

:func:`bench_ort` runs digits through ONNX Runtime and through qsim's engine, side by side at
batch 1 and 256, single-threaded, and reports both times and their ratio with the machine and
thread settings. Run it with ``qsim bench infer`` or ``python -m qsim.nn.bench_infer``.
onnx, onnxruntime and scikit-learn are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["digits", "digits_mlp", "digits_cnn", "quantize", "ort_session", "ort_run",
           "bench_ort", "machine", "report_lines", "main"]

_F32 = np.float32
#: Digits images used to calibrate the quantizer (the first ones of the data set).
CALIBRATION = slice(0, 500)
#: Held-out digits images the parity tests and the benchmark run (never used for fitting).
HELD_OUT = slice(1597, 1797)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as float32 images ``(N, 1, 8, 8)`` in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(_F32).reshape(-1, 1, 8, 8), data.target.astype(np.int64)


def _ridge(features: np.ndarray, labels: np.ndarray, classes: int = 10,
           penalty: float = 1e-1) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares readout ``W (classes x F), b`` onto one-hot targets (float64 solve)."""
    f = np.concatenate([features.astype(np.float64), np.ones((len(features), 1))], axis=1)
    targets = np.eye(classes)[labels]
    gram = f.T @ f + penalty * np.eye(f.shape[1])
    solution = np.linalg.solve(gram, f.T @ targets)
    return solution[:-1].T.astype(_F32), solution[-1].astype(_F32)


def _train_mlp(x: np.ndarray, labels: np.ndarray, seed: int, hidden: int = 32, steps: int = 300,
               rate: float = 0.5) -> tuple[np.ndarray, ...]:
    """Full-batch gradient descent on softmax cross-entropy (float64), PyTorch weight layout."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 1.0 / 8.0, (x.shape[1], hidden))
    w2 = rng.normal(0.0, 1.0 / np.sqrt(hidden), (hidden, 10))
    b1, b2 = np.zeros(hidden), np.zeros(10)
    data, targets = x.astype(np.float64), np.eye(10)[labels]
    for _ in range(steps):
        h = np.maximum(data @ w1 + b1, 0.0)
        z = h @ w2 + b2
        p = np.exp(z - z.max(axis=1, keepdims=True))
        g = (p / p.sum(axis=1, keepdims=True) - targets) / len(data)
        gh = (g @ w2.T) * (h > 0)
        w2 -= rate * h.T @ g
        b2 -= rate * g.sum(axis=0)
        w1 -= rate * data.T @ gh
        b1 -= rate * gh.sum(axis=0)
    return tuple(np.ascontiguousarray(v.T if v.ndim == 2 else v).astype(_F32)
                 for v in (w1, b1, w2, b2))


def _model(nodes: list, inits: dict[str, np.ndarray], input_shape: list, name: str,
           opset: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="qsim.nn.bench_infer")
    model.ir_version = 8 if opset < 21 else 10
    return model


def digits_mlp(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Float MLP ``x (N, 64) -> Gemm 32 -> Relu -> Gemm 10 -> y`` (transB=1, PyTorch layout)."""
    from onnx import helper

    images, labels = digits()
    w1, b1, w2, b2 = _train_mlp(images.reshape(-1, 64)[:HELD_OUT.start], labels[:HELD_OUT.start],
                                seed)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
             helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"], name="fc2", transB=1)]
    return _model(nodes, {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, ["N", 64], "digits_mlp", opset)


def digits_cnn(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Float CNN ``x (N, 1, 8, 8) -> Conv 8 3x3 pad 1 -> Relu -> MaxPool 2 -> Conv 16 3x3 -> Relu
    -> Flatten -> Gemm 10 -> y``."""
    from onnx import helper

    from qsim.nn import layers as L
    from qsim.nn.engine import run
    from qsim.nn.graph import Graph, TensorType

    rng = np.random.default_rng(seed)
    images, labels = digits()
    c1 = rng.normal(0.0, 1.0 / 3.0, (8, 1, 3, 3)).astype(_F32)
    cb1 = rng.normal(0.0, 0.1, 8).astype(_F32)
    c2 = rng.normal(0.0, 1.0 / 8.0, (16, 8, 3, 3)).astype(_F32)
    cb2 = rng.normal(0.0, 0.1, 16).astype(_F32)
    # The readout is fitted on the features of the float network (qsim's float engine).
    features = Graph("features", {"x": TensorType((None, 1, 8, 8))}, [
        L.Conv2d("conv1", ("x",), ("a",), in_channels=1, out_channels=8, kernel=3, pads=1,
                 weight=c1, bias=cb1, activation="relu"),
        L.MaxPool("pool", ("a",), ("p",), kernel=2, strides=2),
        L.Conv2d("conv2", ("p",), ("b",), in_channels=8, out_channels=16, kernel=3, weight=c2,
                 bias=cb2, activation="relu"),
        L.Flatten("flatten", ("b",), ("f",)),
    ], ["f"])
    f = run(features, {"x": images[:HELD_OUT.start]}).outputs["f"]
    g, gb = _ridge(f, labels[:HELD_OUT.start])
    node = helper.make_node
    nodes = [node("Conv", ["x", "c1", "cb1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             node("Relu", ["a"], ["ar"], name="relu1"),
             node("MaxPool", ["ar"], ["p"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p", "c2", "cb2"], ["b"], name="conv2"),
             node("Relu", ["b"], ["br"], name="relu2"),
             node("Flatten", ["br"], ["f"], name="flatten"),
             node("Gemm", ["f", "g", "gb"], ["y"], name="fc", transB=1)]
    return _model(nodes, {"c1": c1, "cb1": cb1, "c2": c2, "cb2": cb2, "g": g, "gb": gb},
                  ["N", 1, 8, 8], "digits_cnn", opset)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence quantize_static's advice (root-logger warnings) while it runs."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def quantize(model: onnx.ModelProto, calibration: np.ndarray, *, quant_format: str = "QOperator",
             activation: str = "int8", weight: str = "int8", per_channel: bool = True,
             batch: int = 100) -> onnx.ModelProto:
    """``onnxruntime.quantization.quantize_static`` with MinMax calibration on ``calibration``.

    Parameters
    ----------
    model : onnx.ModelProto
        A float model with one input.
    calibration : np.ndarray
        Calibration inputs, fed in batches of ``batch``.
    quant_format : {"QOperator", "QDQ"}
    activation : {"int8", "uint8"}
    weight : {"int8", "uint8", "int4"}
        ``int4`` needs ``quant_format="QDQ"`` (ONNX Runtime writes DequantizeLinear nodes on int4
        initializers).
    per_channel : bool
        Per-output-channel weight scales.

    Returns
    -------
    onnx.ModelProto
        The quantized model.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int4": QuantType.QInt4}
    initializers = {i.name for i in model.graph.initializer}
    name = next(i.name for i in model.graph.input if i.name not in initializers)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: calibration[i:i + batch]}
                                 for i in range(0, len(calibration), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "quantized.onnx"
        onnx.save(model, source)
        quantize_static(source, target, Reader(), quant_format=getattr(QuantFormat, quant_format),
                        per_channel=per_channel, activation_type=types[activation],
                        weight_type=types[weight])
        return onnx.load(target)


def ort_session(model: onnx.ModelProto, *, extra_outputs: tuple[str, ...] = (),
                optimize: bool = True, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session; ``extra_outputs`` exposes intermediate tensors too.

    ``threads`` > 0 sets ``intra_op_num_threads`` to it and runs the graph sequentially on one
    inter-op thread (``inter_op_num_threads = 1``); 0 keeps ONNX Runtime's defaults.
    """
    import onnx
    import onnxruntime as ort

    if extra_outputs:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.graph.output.extend(onnx.helper.make_value_info(name, onnx.TypeProto())
                                  for name in extra_outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def ort_run(session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of ``session`` by name."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


#: The speed target: qsim's time over ONNX Runtime's, at every measured batch.
TARGET_RATIO = 2.0
#: Batch sizes measured by default (single images and a large batch).
BATCHES = (1, 256)


def machine() -> dict[str, Any]:
    """The CPU the benchmark runs on: model name, logical CPUs, qsim's instruction path
    (:func:`qsim.quant.isa.detect_isa`) and whether it has VNNI."""
    import os
    import platform

    from qsim.quant.isa import cpu_flags, detect_isa

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    flags = cpu_flags()
    return {"cpu": model, "cpus": os.cpu_count(), "isa": detect_isa(),
            "vnni": bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))}


@contextlib.contextmanager
def _single_blas_thread() -> Iterator[str]:
    """numpy's BLAS on one thread while the block runs (threadpoolctl), and a description."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn, which the benchmark needs, brings it
        yield "numpy BLAS threads: library default (threadpoolctl is not installed)"
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield "numpy BLAS 1 thread (threadpoolctl)"


def _interleaved(first, second, repeats: int, rounds: int = 5) -> tuple[float, float]:
    """Median seconds of ``first()`` and of ``second()`` over ``repeats`` timed calls each,
    after two warm-up calls of each (allocations, qsim's plan compilation). The calls come in
    ``rounds`` alternating blocks (``first`` then ``second``), so that load from other
    processes falls on both alike while neither evicts the other's caches between calls."""
    for _ in range(2):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    clock = time.perf_counter
    block = max(1, -(-repeats // rounds))
    for r in range(rounds):
        count = min(block, repeats - r * block)
        for fn, out in ((first, times[0]), (second, times[1])):
            for _ in range(count):
                t0 = clock()
                fn()
                out.append(clock() - t0)
    return float(np.median(times[0])), float(np.median(times[1]))


def _bit_mismatches(ours: np.ndarray, theirs: np.ndarray) -> int:
    """Elements whose bits differ (so -0.0 against 0.0 counts); every element if the shapes
    or dtypes differ."""
    if ours.shape != theirs.shape or ours.dtype != theirs.dtype:
        return int(np.size(theirs))
    a, b = np.ascontiguousarray(ours), np.ascontiguousarray(theirs)
    if a.dtype.kind == "f":
        a, b = a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")
    return int(np.count_nonzero(a != b))


def bench_ort(batches: tuple[int, ...] = BATCHES, repeats: int | None = None,
              threads: int = 1) -> dict[str, Any]:
    """Time ONNX Runtime and qsim on the QOperator digits CNN and MLP (int8, per channel).

    Both run the same digits in the same process at each batch size of ``batches``: ONNX
    Runtime with its default graph optimizations, ``threads`` intra-op threads and one
    inter-op thread (``threads = 0``: its default pools), qsim with :func:`qsim.nn.engine.run`
    under the ``onnxruntime`` semantics on the imported graph (the import is not timed) and,
    when ``threads`` is 1, numpy's BLAS limited to one thread. The two are timed in
    alternating blocks; each time is the median of ``repeats`` runs (default: 300 at batch 1
    down to 30 for large batches) after two warm-up runs. The outputs are compared bit for
    bit too (``mismatches`` must be 0). A model that fails to run gets an ``error`` instead
    of figures, and then no verdict.

    Returns
    -------
    dict
        ``{"benchmark": "infer", "machine": {...}, "threads": {...}, "target_ratio": 2.0,
        "runs": [{"model", "batch", "repeats", "ort_s", "qsim_s", "ratio", "mismatches"} or
        {"model", "batch", "error"}, ...], "meets_target": bool or None}``.
    """
    from qsim.nn.engine import run
    from qsim.nn.onnx_import import load_onnx

    images, _ = digits()
    runs: list[dict[str, Any]] = []
    blas = contextlib.nullcontext("numpy BLAS threads: library default") if threads != 1 \
        else _single_blas_thread()
    with blas as blas_note:
        for name, build in (("cnn", digits_cnn), ("mlp", digits_mlp)):
            shape = (-1, 1, 8, 8) if name == "cnn" else (-1, 64)
            try:
                model = quantize(build(), images[CALIBRATION].reshape(shape))
                session = ort_session(model, threads=threads)
                graph = load_onnx(model)
            except Exception as exc:  # noqa: BLE001 - reported, and no verdict
                runs.extend({"model": name, "batch": b, "error": f"{type(exc).__name__}: {exc}"}
                            for b in batches)
                continue
            for batch in batches:
                x = images[np.arange(batch) % len(images)].reshape(shape)
                feeds = {"x": x}
                count = repeats or (300 if batch <= 8 else 100 if batch <= 64 else 30)
                try:
                    ort_s, qsim_s = _interleaved(lambda: session.run(None, feeds),
                                                 lambda: run(graph, feeds, "onnxruntime"), count)
                    ours = run(graph, feeds, "onnxruntime").outputs["y"]
                    theirs = session.run(None, feeds)[0]
                    mismatches = _bit_mismatches(ours, theirs)
                except Exception as exc:  # noqa: BLE001
                    runs.append({"model": name, "batch": batch,
                                 "error": f"{type(exc).__name__}: {exc}"})
                    continue
                runs.append({"model": name, "batch": batch, "repeats": count, "ort_s": ort_s,
                             "qsim_s": qsim_s, "ratio": qsim_s / ort_s, "mismatches": mismatches})
    failed = any("error" in r or r["mismatches"] for r in runs)
    return {"benchmark": "infer", "machine": machine(),
            "threads": {"onnxruntime": {"intra_op": threads or "default",
                                        "inter_op": 1 if threads else "default"},
                        "qsim": blas_note},
            "target_ratio": TARGET_RATIO, "runs": runs,
            "meets_target": None if failed or not runs
            else all(r["ratio"] <= TARGET_RATIO for r in runs)}


def report_lines(report: dict[str, Any]) -> list[str]:
    """The benchmark as text: the machine, the thread settings, one line per model and batch,
    and the verdict (none when a run failed or disagreed)."""
    m, t = report["machine"], report["threads"]
    ort = t["onnxruntime"]
    lines = [f"machine: {m['cpu']}, {m['cpus']} logical CPUs, instruction path {m['isa']} "
             f"(VNNI: {'yes' if m['vnni'] else 'no'})",
             f"threads: onnxruntime intra_op {ort['intra_op']}, inter_op {ort['inter_op']}; "
             f"qsim {t['qsim']}"]
    for r in report["runs"]:
        head = f"{r['model']}, batch {r['batch']}"
        if "error" in r:
            lines.append(f"{head:<16} FAILED: {r['error']}")
            continue
        lines.append(f"{head:<16} onnxruntime {r['ort_s'] * 1e3:8.3f} ms, qsim "
                     f"{r['qsim_s'] * 1e3:8.3f} ms, ratio {r['ratio']:5.2f}x, "
                     f"{r['mismatches']} mismatches (median of {r['repeats']})")
    target = f"qsim within {report['target_ratio']:g}x of onnxruntime at every batch"
    if report["meets_target"] is None:
        lines.append(f"target: {target}: no verdict (a run failed or disagreed)")
    else:
        lines.append(f"target: {target}: {'met' if report['meets_target'] else 'NOT met'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m qsim.nn.bench_infer [--batch N ...] [--repeats N] [--threads N]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m qsim.nn.bench_infer",
                                     description=bench_ort.__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per engine (default: 300 at batch 1 to 30 at 256)")
    parser.add_argument("--threads", type=int, default=1,
                        help="ONNX Runtime intra-op threads (0: its default; 1 also limits "
                             "numpy's BLAS to one thread)")
    args = parser.parse_args(argv)
    report = bench_ort(tuple(args.batch), args.repeats, args.threads)
    print("\n".join(report_lines(report)))
    return 0 if report["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
