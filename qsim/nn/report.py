"""The accuracy report of the example networks: float against int8, int4 and mixed precision.

This module owns the comparison shipped with qsim (:func:`accuracy_report`): for the digits
MLP and CNN of :mod:`qsim.nn.examples`, four deployments scored on the fixed test split

==========  ===================================================================================
variant     what runs
==========  ===================================================================================
``float``   the float graph (float32 engine)
``int8``    :func:`qsim.nn.ptq.quantize_graph`: int8 weights per channel, int8 activations
``int4``    the same with int4 weights (activations stay int8)
``mixed``   per-layer weight bits from :func:`qsim.nn.ptq.plan_weight_bits` under a budget of
            ``budget_bits`` bits per weight on average (int8 activations)
==========  ===================================================================================

with top-1 accuracy as exact counts, the packed weight bytes (biases excluded), and the SQNR
(:func:`qsim.quant.analysis.sqnr_db`) of every quantized Conv2d/Linear layer's dequantized
output against the float graph's value of the same tensor, on the test images. Activations are
calibrated with min/max on the training images, as ONNX Runtime's ``quantize_static`` does;
the integer graphs run under one requantization semantics (ONNX Runtime's by default).

:func:`format_report` gives the Markdown tables, :func:`plot_report` the figure.
``python -m qsim.nn.report`` prints the tables (``--figure out.png`` saves the figure,
:func:`save_figure`).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from qsim.errors import ConfigError
from qsim.nn import layers as L
from qsim.nn.engine import run
from qsim.nn.examples import EXAMPLES, digits_data
from qsim.nn.graph import Graph
from qsim.nn.ptq import plan_weight_bits, quantize_graph
from qsim.quant.analysis import sqnr_db
from qsim.quant.mixed import weight_bytes
from qsim.quant.ops import dequantize
from qsim.quant.requant import Semantics

__all__ = ["VariantResult", "Report", "VARIANTS", "COLORS", "accuracy_report", "format_report", "plot_report",
           "figure_path", "save_figure", "main"]

#: The deployments compared, in table order.
VARIANTS = ("float", "int8", "int4", "mixed")
#: One colour per variant in every panel of :func:`plot_report`.
COLORS = dict(zip(VARIANTS, ("C0", "C1", "C2", "C3")))
_LAYOUT = {"mlp": "flat", "cnn": "image"}


@dataclass(frozen=True)
class VariantResult:
    """One network in one deployment.

    Attributes
    ----------
    network, variant : str
        ``"mlp"``/``"cnn"`` and one of :data:`VARIANTS`.
    weight_bits : dict of str to int
        Weight width per Conv2d/Linear layer (32 for float).
    correct, total : int
        Correct test images and test images.
    weight_bytes : int
        Packed weight storage, ``sum ceil(weights * bits / 8)`` (biases excluded).
    layer_sqnr_db : dict of str to float
        SQNR of each Conv2d/Linear layer's output (empty for float).
    """

    network: str
    variant: str
    weight_bits: dict[str, int]
    correct: int
    total: int
    weight_bytes: int
    layer_sqnr_db: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @property
    def weights(self) -> str:
        """The weight widths in words: ``float32``, ``int8``, or ``fc1 int4, fc2 int8, ...``."""
        widths = set(self.weight_bits.values())
        if widths == {32}:
            return "float32"
        if len(widths) == 1:
            return f"int{widths.pop()}"
        return ", ".join(f"{name} int{b}" for name, b in self.weight_bits.items())


@dataclass(frozen=True)
class Report:
    """Every :class:`VariantResult` and the settings that produced them."""

    results: tuple[VariantResult, ...]
    semantics: str
    calibration_images: int
    budget_bits: float

    def result(self, network: str, variant: str) -> VariantResult:
        for r in self.results:
            if r.network == network and r.variant == variant:
                return r
        raise KeyError(f"no result for {network!r} {variant!r}")

    @property
    def networks(self) -> list[str]:
        return list(dict.fromkeys(r.network for r in self.results))


def _layer_sqnr(float_graph: Graph, quantized: Graph, feeds: dict[str, np.ndarray],
                semantics: str) -> tuple[np.ndarray, dict[str, float]]:
    """Logits of the quantized graph and the SQNR of each of its Conv2d/Linear outputs."""
    reference = run(float_graph, feeds, keep=True).values
    result = run(quantized, feeds, semantics, keep=True)
    record = quantized.meta["ptq"]
    sqnr = {}
    for layer in quantized.layers:
        if isinstance(layer, (L.Conv2d, L.Linear)):
            tensor = layer.outputs[0]
            approx = dequantize(result.values[tensor], record.tensor_params[tensor])
            sqnr[layer.name] = sqnr_db(reference[record.float_tensor[tensor]], approx)
    return result.outputs["logits"], sqnr


def accuracy_report(networks: Sequence[str] = ("mlp", "cnn"), *, semantics: str = "onnxruntime",
                    budget_bits: float = 5.0, calibration_images: int | None = None) -> Report:
    """Score float, int8, int4 and mixed-precision versions of the digits examples.

    Parameters
    ----------
    networks : sequence of str
        ``"mlp"`` and/or ``"cnn"``.
    semantics : str
        Requantization semantics the integer graphs run under
        (:class:`~qsim.quant.requant.Semantics`).
    budget_bits : float
        Budget of the mixed-precision plan in bits per weight on average:
        ``floor(weights * budget_bits / 8)`` bytes, between 2 and 8.
    calibration_images : int, optional
        Calibrate on the first this many training images (default: all 1348).

    Returns
    -------
    Report
    """
    Semantics.parse(semantics)
    unknown = [n for n in networks if n not in EXAMPLES]
    if unknown or not networks:
        raise ConfigError(f"networks must be a non-empty selection of {', '.join(map(repr, EXAMPLES))}, "
                          f"not {tuple(networks)!r}")
    if isinstance(budget_bits, bool) or not isinstance(budget_bits, (int, float)) \
            or not 2 <= budget_bits <= 8:
        raise ConfigError(f"budget_bits must be a number from 2 to 8, not {budget_bits!r}")
    results = []
    for network in networks:
        graph = EXAMPLES[network]()
        x_train, _, x_test, y_test = digits_data(_LAYOUT[network])
        if calibration_images is not None:
            if isinstance(calibration_images, bool) or not isinstance(calibration_images, int) \
                    or not 1 <= calibration_images <= len(x_train):
                raise ConfigError(f"calibration_images must be an int from 1 to {len(x_train)}, "
                                  f"not {calibration_images!r}")
            x_train = x_train[:calibration_images]
        calibration = {"image": x_train}
        feeds = {"image": x_test}
        sizes = {layer.name: layer.weight.size for layer in graph.layers
                 if isinstance(layer, (L.Conv2d, L.Linear))}

        def scored(variant: str, bits: dict[str, int], logits: np.ndarray,
                   sqnr: dict[str, float] | None = None) -> VariantResult:
            hits = int(np.count_nonzero(logits.argmax(axis=1) == y_test))
            stored = sum(weight_bytes(sizes[n], b) for n, b in bits.items())
            return VariantResult(network, variant, bits, hits, len(y_test), stored, sqnr or {})

        results.append(scored("float", dict.fromkeys(sizes, 32), run(graph, feeds).outputs["logits"]))
        budget = math.floor(sum(sizes.values()) * budget_bits / 8)
        plans = {"int8": 8, "int4": 4,
                 "mixed": plan_weight_bits(graph, calibration, budget).widths}
        for variant, bits in plans.items():
            quantized = quantize_graph(graph, calibration, weight_bits=bits)
            logits, sqnr = _layer_sqnr(graph, quantized, feeds, semantics)
            results.append(scored(variant, quantized.meta["ptq"].weight_bits, logits, sqnr))
    return Report(tuple(results), Semantics.parse(semantics).value,
                  len(x_train), float(budget_bits))


def format_report(report: Report) -> str:
    """The report as two Markdown tables: accuracy per deployment, then SQNR per layer."""
    lines = ["| network | variant | weights | activations | weight bytes | correct | accuracy |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in report.results:
        acts = "float32" if r.variant == "float" else "int8"
        lines.append(f"| {r.network} | {r.variant} | {r.weights} | {acts} | {r.weight_bytes} | "
                     f"{r.correct}/{r.total} | {r.accuracy:.2%} |")
    quantized = [v for v in VARIANTS if v != "float"]
    lines += ["", "| network | layer | " + " | ".join(f"{v} SQNR dB" for v in quantized) + " |",
              "|---|---|" + "---:|" * len(quantized)]
    for network in report.networks:
        first = report.result(network, quantized[0])
        for layer in first.layer_sqnr_db:
            cells = []
            for v in quantized:
                r = report.result(network, v)
                cells.append(f"{r.layer_sqnr_db[layer]:.2f} (int{r.weight_bits[layer]})")
            lines.append(f"| {network} | {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_report(report: Report) -> Figure:
    """Accuracy per deployment and SQNR per layer as one figure.

    The first axes has one group of bars per network and one ``BarContainer`` per variant
    (labelled with the variant; heights are test accuracies in percent, bar labels the correct
    counts). Each following axes belongs to one network (title ``"<network>: SQNR per
    layer"``): one group per Conv2d/Linear layer, one ``BarContainer`` per quantized variant,
    heights in dB, bar labels the weight width. A variant has the same colour
    (:data:`COLORS`) in every axes; one figure legend names them.
    """
    networks = report.networks
    fig = Figure(figsize=(4.5 * (1 + len(networks)), 4.2))
    axes = fig.subplots(1, 1 + len(networks), squeeze=False)[0]
    ax = axes[0]
    x = np.arange(len(networks), dtype=float)
    width = 0.8 / len(VARIANTS)
    for i, variant in enumerate(VARIANTS):
        rows = [report.result(n, variant) for n in networks]
        bars = ax.bar(x + (i - (len(VARIANTS) - 1) / 2) * width, [100 * r.accuracy for r in rows],
                      width=width, label=variant, color=COLORS[variant])
        ax.bar_label(bars, labels=[str(r.correct) for r in rows], fontsize=7)
    ax.set_xticks(x, networks)
    low = min(100 * r.accuracy for r in report.results)
    ax.set_ylim(max(0.0, low - 5.0), 100.5)
    ax.set_ylabel(f"test accuracy (%) of {report.results[0].total} images")
    ax.set_title("top-1 accuracy")
    quantized = [v for v in VARIANTS if v != "float"]
    for ax, network in zip(axes[1:], networks):
        layers = list(report.result(network, quantized[0]).layer_sqnr_db)
        x = np.arange(len(layers), dtype=float)
        width = 0.8 / len(quantized)
        for i, variant in enumerate(quantized):
            r = report.result(network, variant)
            bars = ax.bar(x + (i - (len(quantized) - 1) / 2) * width,
                          [r.layer_sqnr_db[name] for name in layers], width=width, label=variant,
                          color=COLORS[variant])
            ax.bar_label(bars, labels=[f"int{r.weight_bits[name]}" for name in layers], fontsize=7)
        ax.set_xticks(x, layers)
        ax.set_ylabel("SQNR (dB)")
        ax.set_title(f"{network}: SQNR per layer")
    fig.suptitle(f"digits examples, {report.semantics} semantics, calibrated on "
                 f"{report.calibration_images} images")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=len(VARIANTS), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def figure_path(name: str | os.PathLike) -> tuple[Path, str]:
    """The file a figure saved as ``name`` lands in, and its format.

    As matplotlib decides: the format is the extension's (any case); a name without one gets
    ``.png`` (``savefig.format``) appended, except an existing device or FIFO (``/dev/null``,
    ``/dev/stdout``), which is written as it is, in PNG. An extension matplotlib cannot write
    raises :class:`ConfigError` listing the ones it can.
    """
    import stat

    from matplotlib import rcParams
    from matplotlib.backend_bases import FigureCanvasBase

    text = os.fspath(name)
    extension = os.path.splitext(text)[1][1:]
    if extension:
        fmt = extension.lower()
    else:
        fmt = rcParams["savefig.format"]
        try:
            mode = os.stat(text).st_mode
            special = not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)
        except OSError:
            special = False
        if not special:
            text = text.rstrip(".") + "." + fmt
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise ConfigError(f"cannot save the figure as {os.fspath(name)}: unsupported format "
                          f"{extension!r} (supported: {', '.join(sorted(supported))})")
    return Path(text), fmt


def save_figure(fig: Figure, name: str | os.PathLike) -> Path:
    """Save ``fig`` (dpi 120) where :func:`figure_path` says, with :func:`qsim.io.open_output`
    (atomic for a regular file), and return that path."""
    from qsim.io import open_output

    path, fmt = figure_path(name)
    with open_output(path, "wb") as handle:
        fig.savefig(handle, format=fmt, dpi=120)
    return path


def _semantics(name: str) -> str:
    """``--semantics``: any name :meth:`Semantics.parse` accepts (aliases too), else one error
    naming the valid ones."""
    try:
        return Semantics.parse(name).value
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build the report, print its tables, optionally save the figure."""
    parser = argparse.ArgumentParser(prog="python -m qsim.nn.report", description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["mlp", "cnn"], choices=list(EXAMPLES))
    parser.add_argument("--semantics", default="onnxruntime", type=_semantics,
                        help="requantization semantics (default onnxruntime; tflite is an alias "
                             "of litert-reference)")
    parser.add_argument("--budget-bits", type=float, default=5.0,
                        help="mixed-precision budget in bits per weight on average (default 5)")
    parser.add_argument("--figure", metavar="PNG", help="save the figure to this file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.figure:
        figure_path(args.figure)
    report = accuracy_report(args.networks, semantics=args.semantics, budget_bits=args.budget_bits)
    print(format_report(report))
    if args.figure:
        print(f"figure saved to {save_figure(plot_report(report), args.figure)}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
