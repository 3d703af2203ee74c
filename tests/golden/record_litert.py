"""Record LiteRT's outputs for the TFLite cases of ``tests/nn/tflite_models.golden_cases``.

Run with a Python that has ``ai-edge-litert`` and ``tflite`` (the test suite installs
neither LiteRT nor TensorFlow), from the repository root::

    python -m venv /tmp/lv && /tmp/lv/bin/pip install ai-edge-litert==2.3.0 tflite numpy
    PYTHONPATH=. /tmp/lv/bin/python tests/golden/record_litert.py

It writes ``tests/golden/litert.npz``: for each case ``NAME/model`` (the flatbuffer as uint8),
``NAME/in/INPUT`` and ``NAME/MODE/OUTPUT`` for the three interpreter configurations qsim names
(``litert``: the default op resolver, XNNPACK delegate applied; ``litert-optimized``: builtin
optimized kernels without delegates; ``litert-reference``: builtin reference kernels), and
``meta/*`` (LiteRT version, CPU flags of the recording machine). A configuration that refuses a
model is recorded as ``NAME/MODE/error``.
"""

from __future__ import annotations

import platform
import sys

import numpy as np

from tests.nn.tflite_models import golden_cases

MODES = ("litert", "litert-optimized", "litert-reference")


def _interpreter(model: bytes, mode: str):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = {"litert": OpResolverType.AUTO,
            "litert-optimized": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            "litert-reference": OpResolverType.BUILTIN_REF}[mode]
    return Interpreter(model_content=model, experimental_op_resolver_type=kind)


def run(model: bytes, feeds: dict, mode: str) -> dict:
    it = _interpreter(model, mode)
    it.allocate_tensors()
    for detail in it.get_input_details():
        it.set_tensor(detail["index"], feeds[detail["name"]])
    it.invoke()
    return {d["name"]: it.get_tensor(d["index"]).copy() for d in it.get_output_details()}


def main(path: str = "tests/golden/litert.npz") -> None:
    from importlib.metadata import version

    arrays = {}
    for name, (model, feeds) in golden_cases().items():
        arrays[f"{name}/model"] = np.frombuffer(model, np.uint8)
        for key, value in feeds.items():
            arrays[f"{name}/in/{key}"] = value
        for mode in MODES:
            try:
                for key, value in run(model, feeds, mode).items():
                    arrays[f"{name}/{mode}/{key}"] = value
            except (RuntimeError, ValueError) as exc:
                arrays[f"{name}/{mode}/error"] = np.array(str(exc).splitlines()[0])
    flags = ""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("flags")), "")
    except OSError:
        pass
    arrays["meta/litert"] = np.array(version("ai-edge-litert"))
    arrays["meta/python"] = np.array(sys.version.split()[0])
    arrays["meta/machine"] = np.array(platform.machine())
    arrays["meta/cpu_flags"] = np.array(" ".join(f for f in flags.split()
                                                 if f.startswith(("avx", "sse4", "fma", "amx"))))
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: {len(golden_cases())} cases")


if __name__ == "__main__":
    main(*sys.argv[1:])
