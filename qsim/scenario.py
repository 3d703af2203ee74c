"""Scenario files: an accelerator and the workloads to run on it, in TOML.

A scenario names a configuration (a preset plus overrides) and a list of workloads, and
says whether to co-simulate the RTL. :func:`run_scenario` runs each workload on the
bit-accurate model, the timing model and (optionally) the RTL, and reports agreement::

    [scenario]
    name = "default"
    seed = 2026                 # seeds the random operands of every workload

    [accelerator]
    preset = "default-8x8"      # optional; any AcceleratorConfig field may follow
    acc_bits = 32

    [[gemm]]                    # one table per GEMM: C[m, n] = A[m, k] @ B[k, n]
    name = "ragged"             # optional
    m = 37
    k = 100
    n = 29

    [[network]]                 # a whole quantized network, every GEMM on the accelerator
    name = "cnn"                # optional
    model = "digits_cnn"        # a built-in network, or the path of an ONNX model
    weight_bits = 8             # post-training quantization of a float model (8, 4 or 2)
    semantics = "onnxruntime"   # requantization semantics of the host-side steps
    batch = 4                   # inputs: the first `batch` digits test images

    [run]
    rtl = true                  # co-simulate on Verilator (false: model and timing only)
    timeout_cycles = 1000000    # optional per-workload limit

Every key is checked: unknown tables or keys, wrong types and impossible shapes are
reported with the file and the table they are in.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qsim.config import AcceleratorConfig, preset
from qsim.errors import ConfigError, QsimError
from qsim.nn.graph import Graph

__all__ = ["GemmWorkload", "NetworkWorkload", "Scenario", "WorkloadReport", "ScenarioReport", "load_scenario",
           "parse_scenario", "run_scenario"]

_TABLES = {"scenario", "accelerator", "gemm", "network", "run"}
_SCENARIO_KEYS = {"name", "description", "seed"}
_GEMM_KEYS = {"name", "m", "k", "n"}
_NETWORK_KEYS = {"name", "model", "weight_bits", "activation_format", "semantics", "batch"}
#: Built-in networks a scenario may name (float graphs quantized by the scenario's PTQ).
BUILTIN_NETWORKS = ("digits_mlp", "digits_cnn")
_RUN_KEYS = {"rtl", "timeout_cycles"}


@dataclass(frozen=True)
class GemmWorkload:
    """``C[m, n] = A[m, k] @ B[k, n]`` with random int8 operands."""

    name: str
    m: int
    k: int
    n: int

    def operands(self, config: AcceleratorConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        fa, fw = config.input_format, config.weight_format
        a = rng.integers(fa.min, fa.max + 1, (self.m, self.k))
        b = rng.integers(fw.min, fw.max + 1, (self.k, self.n))
        return a, b


@dataclass(frozen=True)
class NetworkWorkload:
    """A whole network: a built-in one or an ONNX model, quantized if it is float."""

    name: str
    model: str
    weight_bits: int = 8
    activation_format: str = "int8"
    semantics: str = "onnxruntime"
    batch: int = 4

    def load(self, source_dir: Path) -> tuple[Graph, dict[str, np.ndarray]]:
        """The quantized graph and its input feeds (digits test images)."""
        from qsim.nn.examples import digits_data

        x_train, _, x_test, _ = digits_data()
        if self.model in BUILTIN_NETWORKS:
            from qsim.nn import examples

            graph = getattr(examples, self.model)()
        else:
            from qsim.nn.onnx_import import load_onnx

            path = Path(self.model)
            graph = load_onnx(path if path.is_absolute() else source_dir / path)
        (input_name, declared), = graph.inputs.items()
        shape = tuple(d for d in declared.shape[1:])

        def images(x: np.ndarray) -> np.ndarray:
            return x.reshape((x.shape[0],) + shape).astype(np.float32)

        if not any(layer.kind in ("quantize", "dequantize") or getattr(layer, "output_params", None)
                   for layer in graph.layers):
            from qsim.nn.ptq import quantize_graph

            graph = quantize_graph(graph, {input_name: images(x_train[:256])},
                                   weight_bits=self.weight_bits,
                                   activation_format=self.activation_format)
        return graph, {input_name: images(x_test[: self.batch])}


@dataclass(frozen=True)
class Scenario:
    name: str
    config: AcceleratorConfig
    workloads: tuple[GemmWorkload, ...]
    seed: int = 0
    description: str = ""
    rtl: bool = True
    timeout_cycles: int | None = None
    source: str = "<scenario>"
    networks: tuple[NetworkWorkload, ...] = ()


def _unknown(where: str, keys: set[str], allowed: set[str]) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(extra)} (allowed: {', '.join(sorted(allowed))})"
        )


def _int(where: str, key: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where}: {key} must be an integer of at least {low}, not {value!r}")
    return value


def parse_scenario(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a parsed TOML document and build the :class:`Scenario`."""
    _unknown(source, set(data), _TABLES)
    head = data.get("scenario", {})
    if not isinstance(head, dict):
        raise ConfigError(f"{source}: [scenario] must be a table")
    _unknown(f"{source} [scenario]", set(head), _SCENARIO_KEYS)
    name = head.get("name", Path(source).stem)
    seed = _int(f"{source} [scenario]", "seed", head.get("seed", 0), low=0)

    acc = dict(data.get("accelerator", {}))
    base = preset(acc.pop("preset")) if "preset" in acc else AcceleratorConfig()
    try:
        config = base.replace(**acc)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{source} [accelerator]: {exc}") from None

    gemms = data.get("gemm", [])
    if not isinstance(gemms, list) or not isinstance(data.get("network", []), list):
        raise ConfigError(f"{source}: [[gemm]] and [[network]] must be arrays of tables")
    if not gemms and not data.get("network"):
        raise ConfigError(f"{source}: at least one [[gemm]] or [[network]] workload is needed")
    workloads = []
    for i, entry in enumerate(gemms, start=1):
        where = f"{source} [[gemm]] {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        _unknown(where, set(entry), _GEMM_KEYS)
        for key in ("m", "k", "n"):
            if key not in entry:
                raise ConfigError(f"{where}: missing {key}")
        m, k, n = (_int(where, key, entry[key]) for key in ("m", "k", "n"))
        workloads.append(GemmWorkload(str(entry.get("name", f"gemm{i}")), m, k, n))

    networks = []
    for i, entry in enumerate(data.get("network", []), start=1):
        where = f"{source} [[network]] {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        _unknown(where, set(entry), _NETWORK_KEYS)
        if "model" not in entry:
            raise ConfigError(f"{where}: missing model (one of {', '.join(BUILTIN_NETWORKS)}, or an ONNX path)")
        model = entry["model"]
        if not isinstance(model, str) or not (model in BUILTIN_NETWORKS or model.endswith(".onnx")):
            raise ConfigError(f"{where}: model must be one of {', '.join(BUILTIN_NETWORKS)} or a path "
                              f"ending in .onnx, not {model!r}")
        bits = entry.get("weight_bits", 8)
        if bits not in (2, 4, 8) or isinstance(bits, bool):
            raise ConfigError(f"{where}: weight_bits must be 8, 4 or 2, not {bits!r}")
        act = entry.get("activation_format", "int8")
        if act not in ("int8", "uint8"):
            raise ConfigError(f"{where}: activation_format must be int8 or uint8, not {act!r}")
        from qsim.quant.requant import Semantics

        semantics = Semantics.parse(entry.get("semantics", "onnxruntime")).value
        batch = _int(where, "batch", entry.get("batch", 4))
        networks.append(NetworkWorkload(str(entry.get("name", model)), model, bits, act, semantics, batch))

    run = data.get("run", {})
    _unknown(f"{source} [run]", set(run), _RUN_KEYS)
    rtl = run.get("rtl", True)
    if not isinstance(rtl, bool):
        raise ConfigError(f"{source} [run]: rtl must be true or false, not {rtl!r}")
    timeout = run.get("timeout_cycles")
    if timeout is not None:
        timeout = _int(f"{source} [run]", "timeout_cycles", timeout)
    return Scenario(name=str(name), config=config, workloads=tuple(workloads), seed=seed,
                    description=str(head.get("description", "")), rtl=rtl,
                    timeout_cycles=timeout, source=source, networks=tuple(networks))


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(data, source=str(path))


@dataclass
class WorkloadReport:
    """One workload's agreement and costs (RTL fields are None when it was not run)."""

    name: str
    shape: tuple[int, int, int]
    elements: int
    model_cycles: int
    utilization: float
    rtl_cycles: int | None = None
    mismatches: int | None = None
    counter_diffs: dict[str, tuple[int, int]] = field(default_factory=dict)
    sim_cycles_per_s: float | None = None

    @property
    def agrees(self) -> bool:
        if self.rtl_cycles is None:
            return True
        return self.mismatches == 0 and self.rtl_cycles == self.model_cycles and not self.counter_diffs

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "m": self.shape[0], "k": self.shape[1], "n": self.shape[2],
            "elements": self.elements, "mismatches": self.mismatches,
            "model_cycles": self.model_cycles, "rtl_cycles": self.rtl_cycles,
            "utilization": round(self.utilization, 6),
            "counter_diffs": {k: list(v) for k, v in self.counter_diffs.items()},
            "sim_cycles_per_s": None if self.sim_cycles_per_s is None else round(self.sim_cycles_per_s, 1),
            "agrees": self.agrees,
        }


@dataclass
class ScenarioReport:
    scenario: Scenario
    workloads: list[WorkloadReport]
    wall_s: float
    networks: list[Any] = field(default_factory=list)  # NetworkCosimReport per [[network]]

    @property
    def agrees(self) -> bool:
        return all(w.agrees for w in self.workloads) and all(n.agrees for n in self.networks)

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario.name, "config": self.scenario.config.to_dict(),
                "rtl": self.scenario.rtl, "agrees": self.agrees, "wall_s": round(self.wall_s, 3),
                "workloads": [w.to_dict() for w in self.workloads],
                "networks": [n.to_dict() for n in self.networks]}


def run_scenario(scenario: Scenario) -> ScenarioReport:
    """Compile every workload, run the model and the timing model, and the RTL if asked."""
    from qsim.compile import compile_gemm
    from qsim.model import execute, reference_gemm
    from qsim.timing import simulate_timing

    t0 = time.perf_counter()
    rng = np.random.default_rng(scenario.seed)
    cfg = scenario.config
    programs, reports = [], []
    for w in scenario.workloads:
        a, b = w.operands(cfg, rng)
        program = compile_gemm(cfg, a, b, name=w.name)
        model = execute(program)
        if not np.array_equal(model.outputs["C"], reference_gemm(a, b, cfg.acc_bits)):
            raise QsimError(f"{w.name}: the model disagrees with the direct product (a qsim bug)")
        timing = simulate_timing(program)
        programs.append(program)
        reports.append(WorkloadReport(w.name, (w.m, w.k, w.n), int(model.outputs["C"].size),
                                      timing.cycles, timing.utilization or 0.0))
    if scenario.rtl:
        from qsim.cosim.runner import compare, run_programs

        results = run_programs(programs, timeout_cycles=scenario.timeout_cycles)
        for program, rtl, report in zip(programs, results, reports):
            cmp = compare(program, rtl)
            report.rtl_cycles = cmp.rtl_cycles
            report.mismatches = cmp.mismatches + cmp.acc_mismatches
            report.counter_diffs = cmp.counter_diffs
            report.sim_cycles_per_s = cmp.sim_cycles_per_s
    networks = []
    if scenario.networks:
        from qsim.nn.accelerate import cosim_network

        source_dir = Path(scenario.source).parent
        for net in scenario.networks:
            graph, feeds = net.load(source_dir)
            report = cosim_network(graph, feeds, cfg, net.semantics, rtl=scenario.rtl,
                                   timeout_cycles=scenario.timeout_cycles)
            report.network = net.name
            networks.append(report)
    return ScenarioReport(scenario, reports, time.perf_counter() - t0, networks)
