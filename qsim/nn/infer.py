"""``qsim infer``: run an ONNX or TFLite model on inputs from a file with integer-only arithmetic.

This module owns the command behind ``qsim infer MODEL.onnx --inputs X.npz --output Y.npz``:
reading the inputs (an ``.npz`` keyed by the model's input names, or one ``.npy`` array for a
single-input model), importing the model (:func:`qsim.nn.onnx_import.load_onnx`), running it
with :func:`qsim.nn.engine.run` under a requantization semantics, and writing the outputs keyed
by the model's output names. The output file is written to a temporary file in the same
directory and renamed into place (:func:`qsim.io.open_output`; a device such as ``/dev/null``
or a FIFO is written through instead), so that no partial output is ever left behind: on any
error the output path is untouched. Every mistake a user can make raises
:class:`~qsim.errors.ConfigError` with one message (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, Mapping

import numpy as np

from qsim.errors import ConfigError
from qsim.io import reading_archive
from qsim.nn.graph import Graph
from qsim.quant.requant import Semantics

__all__ = ["infer", "infer_command", "read_inputs", "write_outputs", "check_batch"]


def _graph(model: Any) -> Graph:
    if isinstance(model, Graph):
        return model
    from qsim.nn.tflite_import import is_tflite, load_tflite

    if is_tflite(model):
        return load_tflite(model)
    from qsim.nn.onnx_import import load_onnx

    return load_onnx(model)


def default_semantics(graph: Graph) -> str:
    """``litert`` (the default LiteRT interpreter) for a TFLite model, else ``onnxruntime``."""
    return "litert" if graph.meta.get("format") == "tflite" else "onnxruntime"


def infer(model: Any, feeds: Mapping[str, np.ndarray], semantics: Semantics | str | None = None,
          *, isa: str = "auto", keep: bool = False) -> dict[str, np.ndarray]:
    """Run an ONNX or TFLite model (a path, bytes, an ``onnx.ModelProto`` or an imported Graph).

    Parameters
    ----------
    model : path, bytes, onnx.ModelProto or Graph
    feeds : mapping of str to array
        One array per model input, batch first, with the model's element type.
    semantics : Semantics or str, optional
        Requantization semantics of the quantized layers; by default ``onnxruntime`` for ONNX
        models (ONNX Runtime bit for bit) and ``litert`` for TFLite models.
    isa : str
        Instruction path of the engine (:mod:`qsim.quant.isa`): ``auto`` (the running CPU),
        ``avx2``, ``avx512bw``, ``avx-vnni``, ``avx512-vnni``, ``amx-int8`` or ``exact``.
    keep : bool
        Return every intermediate tensor too, not only the outputs.

    Returns
    -------
    dict of str to array
        The model's outputs by name (with ``keep``, every tensor by name).
    """
    from qsim.nn.engine import run

    graph = _graph(model)
    kind = Semantics.parse(default_semantics(graph) if semantics is None else semantics)
    result = run(graph, feeds, kind, isa=isa, keep=keep)
    return dict(result.values) if keep else dict(result.outputs)


def read_inputs(path: str | os.PathLike, graph: Graph) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (by name) or of a ``.npy`` (the only input of ``graph``).

    Raises :class:`ConfigError` for an unreadable or malformed file, and for a bare array
    given to a model with several inputs. Names and shapes are checked by the engine.
    """
    label = os.fspath(path)
    if not os.path.exists(label):
        raise ConfigError(f"cannot read inputs {label}: No such file or directory")
    kind = [".npz"]
    with reading_archive(f"inputs {label}", kind):
        with open(label, "rb") as handle:
            head = handle.read(6)
            handle.seek(0)
            if head.startswith(b"PK"):  # a zip archive: .npz
                with np.load(handle, allow_pickle=False) as archive:
                    return {name: np.asarray(archive[name]) for name in archive.files}
            if head != b"\x93NUMPY":
                raise ConfigError(f"cannot read inputs {label}: not an .npz or .npy file (it starts "
                                  f"with neither signature)")
            kind[0] = ".npy"
            loaded = np.load(handle, allow_pickle=False)
    if len(graph.inputs) != 1:
        raise ConfigError(f"inputs {label} holds one array, but the model has {len(graph.inputs)} "
                          f"inputs ({', '.join(graph.inputs)}); use an .npz keyed by input name")
    return {next(iter(graph.inputs)): np.asarray(loaded)}


def write_outputs(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` at ``path`` with :func:`qsim.io.open_output`.

    A regular file is replaced atomically (temporary file, then rename) and keeps its mode; a
    symbolic link's target is written; a device or FIFO (``/dev/null``) is written through.
    """
    from qsim.io import open_output

    with open_output(path, "wb") as handle:
        # np.savez's layout (one NAME.npy member per array), written member by member:
        # np.savez(**arrays) would fail for a tensor named "file" or "allow_pickle".
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            for name, value in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)


def check_batch(label: str, feeds: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`ConfigError` if an input of ``feeds`` (read from ``label``) has no sample."""
    for name, value in feeds.items():
        if value.ndim >= 1 and value.shape[0] == 0:
            raise ConfigError(f"inputs {label}: input {name!r} has batch size 0 (shape "
                              f"{tuple(value.shape)}); at least one sample is needed")


def infer_command(model: str | os.PathLike, inputs: str | os.PathLike,
                  output: str | os.PathLike, semantics: str | None = None,
                  keep_intermediates: bool = False, calibration: str | os.PathLike | None = None,
                  weight_bits: int = 8, isa: str = "auto") -> int:
    """``qsim infer``: read, run, write; return the exit status (0).

    Prints one line per output (name and type) after writing ``output``. With
    ``keep_intermediates`` the file holds every tensor of the run (inputs and intermediates
    by their ONNX names). With ``calibration`` (inputs in the same format as ``inputs``) a
    float model is first quantized by qsim's post-training quantization
    (:func:`qsim.nn.ptq.quantize_graph`, ``weight_bits`` per layer) and then run with integers
    only. ``isa`` is the x86 instruction path of the engine the semantics names
    (:data:`qsim.quant.isa.ISA_NAMES`). Raises :class:`ConfigError` for every user error;
    ``output`` is then neither created nor modified.
    """
    from qsim.io import check_output
    from qsim.nn.engine import run
    from qsim.quant.isa import parse_isa

    if semantics is not None:
        Semantics.parse(semantics)
    isa = parse_isa(isa)
    check_output(output)
    graph = _graph(model)
    kind = Semantics.parse(default_semantics(graph) if semantics is None else semantics)
    if calibration is not None:
        from qsim.nn.ptq import quantize_graph

        if any(layer.kind in ("quantize", "dequantize") for layer in graph.layers):
            raise ConfigError("--calibration quantizes a float model, but this model is already quantized")
        samples = read_inputs(calibration, graph)
        check_batch(os.fspath(calibration), samples)
        graph = quantize_graph(graph, samples, weight_bits=weight_bits)
    feeds = read_inputs(inputs, graph)
    check_batch(os.fspath(inputs), feeds)
    result = run(graph, feeds, kind, isa=isa, keep=keep_intermediates)
    arrays = dict(result.values) if keep_intermediates else dict(result.outputs)
    write_outputs(output, arrays)
    for name in graph.outputs:
        value = result.outputs[name]
        dims = "x".join(str(d) for d in value.shape)
        print(f"{name}: {value.dtype}[{dims}]")
    extra = f", {len(arrays)} tensors" if keep_intermediates else ""
    print(f"wrote {output} ({graph.meta.get('format', 'ir')} model, {kind.value} semantics{extra})")
    return 0
