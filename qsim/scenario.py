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
    inputs = "x.npz"            # optional: the inputs by graph input name (default: digits)
    weight_bits = 8             # post-training quantization of a float model (8, 4 or 2)
    semantics = "onnxruntime"   # requantization semantics of the host-side steps
    isa = "exact"               # instruction path of the engine reference
    batch = 4                   # the first `batch` inputs

    [run]
    rtl = true                  # co-simulate on Verilator (false: model and timing only)
    timeout_cycles = 1000000    # optional per-program limit
    time_limit = 600            # optional wall-clock limit of the whole run, in seconds

Every key is checked: unknown tables or keys, wrong types and impossible shapes are
reported with the file and the table they are in. A GEMM larger than the memories is cut
into several Programs (:func:`qsim.compile.plan_gemm`, as network layers are); its cycles
are the sum over those Programs, each a separate run with its own start-up and drain. :func:`run_scenario` loads every network
and runs every workload on the model before any RTL work, so a mistake is reported before
a long co-simulation starts; on Ctrl-C or at the time limit it stops and reports the
workloads that finished (:attr:`ScenarioReport.stopped`).
"""

from __future__ import annotations

import math
import signal
import threading
import time
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from qsim.config import AcceleratorConfig, preset
from qsim.errors import ConfigError, QsimError
from qsim.nn.graph import Graph

__all__ = ["GemmWorkload", "NetworkWorkload", "Scenario", "WorkloadReport", "ScenarioReport", "load_scenario",
           "parse_scenario", "run_scenario", "TimeLimitReached", "MAX_TIME_LIMIT_S", "RTL_BATCH_CYCLES"]

_TABLES = {"scenario", "accelerator", "gemm", "network", "run"}
_SCENARIO_KEYS = {"name", "description", "seed"}
_GEMM_KEYS = {"name", "m", "k", "n", "dram_width", "dram_latency"}
_NETWORK_KEYS = {"name", "model", "inputs", "calibration", "weight_bits", "activation_format",
                 "semantics", "isa", "batch", "on_chip"}
#: Built-in networks a scenario may name (float graphs quantized by the scenario's PTQ).
BUILTIN_NETWORKS = ("digits_mlp", "digits_cnn")
_RUN_KEYS = {"rtl", "timeout_cycles", "time_limit"}
#: Largest accepted time limit in seconds (a little over 31 years: "no limit" for any real run,
#: and far below what the interval timer can hold).
MAX_TIME_LIMIT_S = 10**9
#: Programs run on the RTL in simulator processes of at most about this many predicted cycles
#: (about a second of simulation), so that progress is reported and an interrupted run keeps
#: its finished workloads, while small workloads still share one simulator start-up.
RTL_BATCH_CYCLES = 1_000_000
#: Digits images given to a network that names no inputs file.
_DIGITS_CALIBRATION = 256


class TimeLimitReached(KeyboardInterrupt):
    """The wall-clock limit of a scenario run expired (handled like Ctrl-C)."""


@dataclass(frozen=True)
class GemmWorkload:
    """``C[m, n] = A[m, k] @ B[k, n]`` with random int8 operands."""

    name: str
    m: int
    k: int
    n: int
    dram_width: int = 0  # with a bus interface: operands from DRAM, results to DRAM
    dram_latency: int = 0

    def config_for(self, config: AcceleratorConfig) -> AcceleratorConfig:
        """The scenario's accelerator, with this workload's bus interface if it has one."""
        if not self.dram_width:
            return config
        return config.replace(dram_width=self.dram_width, dram_latency=self.dram_latency)

    def operands(self, config: AcceleratorConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        fa, fw = config.input_format, config.weight_format
        a = rng.integers(fa.min, fa.max + 1, (self.m, self.k))
        b = rng.integers(fw.min, fw.max + 1, (self.k, self.n))
        return a, b


def _is_quantized(graph: Graph) -> bool:
    return any(layer.kind in ("quantize", "dequantize") or getattr(layer, "output_params", None)
               for layer in graph.layers)


@dataclass(frozen=True)
class NetworkWorkload:
    """A whole network: a built-in one or an ONNX model, quantized if it is float.

    Its inputs are the first ``batch`` digits test images, or, with ``inputs``, the arrays of
    an ``.npz`` keyed by the graph's input names (``.npy`` for a single-input graph; the first
    ``batch`` samples, all of them if ``batch`` is None). A float graph is quantized by qsim's
    PTQ, calibrated on ``calibration`` (same format), else on the inputs file, else on 256
    digits training images.
    """

    name: str
    model: str
    weight_bits: int = 8
    activation_format: str = "int8"
    semantics: str = "onnxruntime"
    batch: int | None = 4
    inputs: str | None = None
    calibration: str | None = None
    isa: str = "exact"
    on_chip: bool = False
    where: str = field(default="", compare=False)

    def load(self, source_dir: Path) -> tuple[Graph, dict[str, np.ndarray]]:
        """The quantized graph and its input feeds; :class:`ConfigError` names the table."""
        try:
            return self._load(source_dir)
        except QsimError as exc:
            raise ConfigError(f"{self.where or self.name}: {exc}") from None

    def _load(self, source_dir: Path) -> tuple[Graph, dict[str, np.ndarray]]:
        from qsim.nn.engine import check_feeds
        from qsim.nn.infer import check_batch, read_inputs

        def resolve(name: str) -> Path:
            path = Path(name)
            return path if path.is_absolute() else source_dir / path

        if self.model in BUILTIN_NETWORKS:
            from qsim.nn import examples

            graph = getattr(examples, self.model)()
        else:
            from qsim.nn.onnx_import import load_onnx

            graph = load_onnx(resolve(self.model))
        quantized = _is_quantized(graph)
        if quantized and self.calibration is not None:
            raise ConfigError(f"calibration quantizes a float model, but {self.model} is already quantized")
        if self.inputs is not None:
            label = str(resolve(self.inputs))
            feeds = read_inputs(label, graph)
            check_batch(label, feeds)
            available = min(int(v.shape[0]) for v in feeds.values() if v.ndim >= 1) if any(
                v.ndim >= 1 for v in feeds.values()) else 1
            if self.batch is not None:
                if self.batch > available:
                    raise ConfigError(f"batch = {self.batch}, but {label} holds {available} samples")
                feeds = {k: v[: self.batch] for k, v in feeds.items()}
            samples = feeds
        else:
            samples, feeds = self._digits(graph)
        if self.calibration is not None:
            label = str(resolve(self.calibration))
            samples = read_inputs(label, graph)
            check_batch(label, samples)
        feeds = check_feeds(graph, feeds)
        if not quantized:
            from qsim.nn.ptq import quantize_graph

            graph = quantize_graph(graph, check_feeds(graph, samples), weight_bits=self.weight_bits,
                                   activation_format=self.activation_format)
        return graph, feeds

    def _digits(self, graph: Graph) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Calibration and input feeds of digits images, if ``graph`` takes them."""
        from qsim.nn.examples import digits_data

        declared = list(graph.inputs.items())
        shape = tuple(declared[0][1].shape[1:]) if len(declared) == 1 else ()
        if (len(declared) != 1 or np.dtype(declared[0][1].dtype).kind != "f"
                or any(d is None for d in shape) or int(np.prod(shape, dtype=np.int64)) != 64):
            takes = ", ".join(f"{name} {kind}" for name, kind in declared)
            raise ConfigError(f"{self.model} does not take digits images (float inputs of 64 values "
                              f"each; its inputs: {takes}): name an inputs file, "
                              f"inputs = \"FILE.npz\", keyed by the graph's input names")
        (input_name, _), = declared
        x_train, _, x_test, _ = digits_data()
        batch = 4 if self.batch is None else self.batch

        def images(x: np.ndarray) -> np.ndarray:
            return x.reshape((x.shape[0],) + shape).astype(np.float32)

        return ({input_name: images(x_train[:_DIGITS_CALIBRATION])},
                {input_name: images(x_test[:batch])})


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
    time_limit: float | None = None


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


def _table(source: str, data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{key}] must be a table, not {value!r}")
    return value


def _string(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string, not {value!r}")
    return value


def check_time_limit(value: Any, what: str = "time_limit") -> float | None:
    """``value`` as seconds, or None; :class:`ConfigError` unless 0 < value <= 10**9."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 < value <= MAX_TIME_LIMIT_S):
        raise ConfigError(f"{what} must be a number of seconds above 0 and at most {MAX_TIME_LIMIT_S}, "
                          f"not {value!r}")
    return float(value)


def parse_scenario(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a parsed TOML document and build the :class:`Scenario`.

    Besides types and ranges, every GEMM is checked to be possible on the accelerator (one
    that does not fit its memories is cut into several Programs when it runs).
    """
    from qsim.compile import tile_gemm
    from qsim.cosim.runner import check_timeout_cycles
    from qsim.quant.isa import parse_isa

    _unknown(source, set(data), _TABLES)
    head = _table(source, data, "scenario")
    _unknown(f"{source} [scenario]", set(head), _SCENARIO_KEYS)
    name = head.get("name", Path(source).stem)
    seed = _int(f"{source} [scenario]", "seed", head.get("seed", 0), low=0)

    acc = dict(_table(source, data, "accelerator"))
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
        dram = {key: _int(where, key, entry[key]) for key in ("dram_width", "dram_latency")
                if key in entry}
        if dram and set(dram) != {"dram_width", "dram_latency"}:
            raise ConfigError(f"{where}: dram_width and dram_latency go together")
        workload = GemmWorkload(str(entry.get("name", f"gemm{i}")), m, k, n, **dram)
        try:
            if workload.dram_width:
                from qsim.compile_dram import plan_dram_gemm

                plan_dram_gemm(workload.config_for(config), m, k, n)
            else:
                tile_gemm(config, m, k, n)
        except QsimError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        workloads.append(workload)

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
        inputs = entry.get("inputs")
        if inputs is not None:
            inputs = _string(where, "inputs", inputs)
        calibration = entry.get("calibration")
        if calibration is not None:
            calibration = _string(where, "calibration", calibration)
        try:
            isa = parse_isa(entry.get("isa", "exact"))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        batch = entry.get("batch", None if inputs is not None else 4)
        if batch is not None:
            batch = _int(where, "batch", batch)
        on_chip = entry.get("on_chip", False)
        if not isinstance(on_chip, bool):
            raise ConfigError(f"{where}: on_chip must be true or false, not {on_chip!r}")
        networks.append(NetworkWorkload(str(entry.get("name", model)), model, bits, act, semantics, batch,
                                        inputs, calibration, isa, on_chip, where=where))

    run = _table(source, data, "run")
    _unknown(f"{source} [run]", set(run), _RUN_KEYS)
    rtl = run.get("rtl", True)
    if not isinstance(rtl, bool):
        raise ConfigError(f"{source} [run]: rtl must be true or false, not {rtl!r}")
    try:
        timeout = check_timeout_cycles(run.get("timeout_cycles"))
        limit = check_time_limit(run.get("time_limit"))
    except ConfigError as exc:
        raise ConfigError(f"{source} [run]: {exc}") from None
    return Scenario(name=str(name), config=config, workloads=tuple(workloads), seed=seed,
                    description=str(head.get("description", "")), rtl=rtl,
                    timeout_cycles=timeout, source=source, networks=tuple(networks),
                    time_limit=limit)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file (UTF-8 TOML)."""
    from qsim.io import read_text

    path = Path(path)
    text = read_text(path, "scenario ")
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
    counter_diffs: dict[str, tuple[int, int]] | None = None
    sim_cycles_per_s: float | None = None
    programs: int = 1
    dram_bytes: dict[str, int] | None = None  # read and written, with a bus interface

    @property
    def agrees(self) -> bool | None:
        """None when the RTL was not run (there was nothing to compare)."""
        if self.rtl_cycles is None:
            return None
        return self.mismatches == 0 and self.rtl_cycles == self.model_cycles and not self.counter_diffs

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "m": self.shape[0], "k": self.shape[1], "n": self.shape[2],
            "elements": self.elements, "programs": self.programs, "mismatches": self.mismatches,
            "model_cycles": self.model_cycles, "rtl_cycles": self.rtl_cycles,
            "utilization": round(self.utilization, 6),
            "counter_diffs": None if self.counter_diffs is None else
            {k: list(v) for k, v in self.counter_diffs.items()},
            "sim_cycles_per_s": None if self.sim_cycles_per_s is None else round(self.sim_cycles_per_s, 1),
            "dram_bytes": self.dram_bytes,
            "agrees": self.agrees,
        }


@dataclass
class ScenarioReport:
    """The workloads that finished, and whether the run was stopped before the others.

    ``stopped`` is None for a complete run, else ``"interrupted"`` (Ctrl-C) or
    ``"time-limit"``; ``unfinished`` names the workloads without a result. :attr:`agrees`
    is True only for a complete run with the RTL in which everything agreed, False as soon
    as one finished workload disagrees, and None otherwise (RTL not run, or stopped).
    """

    scenario: Scenario
    workloads: list[WorkloadReport]
    wall_s: float
    networks: list[Any] = field(default_factory=list)  # NetworkCosimReport per [[network]]
    stopped: str | None = None
    unfinished: list[str] = field(default_factory=list)
    time_limit: float | None = None

    @property
    def agrees(self) -> bool | None:
        verdicts = [w.agrees for w in self.workloads] + [n.agrees for n in self.networks]
        if any(v is False for v in verdicts):
            return False
        if self.stopped is not None or any(v is None for v in verdicts):
            return None
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario.name, "config": self.scenario.config.to_dict(),
                "rtl": self.scenario.rtl, "status": self.stopped or "complete",
                "time_limit_s": self.time_limit, "agrees": self.agrees,
                "wall_s": round(self.wall_s, 3),
                "workloads": [w.to_dict() for w in self.workloads],
                "networks": [n.to_dict() for n in self.networks],
                "unfinished": list(self.unfinished)}


@contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TimeLimitReached` in the main thread after ``seconds`` (SIGALRM)."""
    usable = (seconds is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def fire(signum, frame):  # noqa: ARG001 - signal handler signature
        raise TimeLimitReached()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class _Task:
    """One workload on its way through the model and the RTL."""

    kind: str  # "gemm" or "network"
    name: str
    programs: list = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)  # predicted, per program
    layers: list[str] = field(default_factory=list)  # per program (networks)
    report: Any = None  # WorkloadReport or NetworkCosimReport, once known
    check: Any = None  # the NetworkCheck of a network, (GemmPlan, expected C) of a GEMM
    model_s: float = 0.0  # wall time of a network's model run
    results: list = field(default_factory=list)
    done: bool = False


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _dram_gemm_model(w: GemmWorkload, cfg: AcceleratorConfig, a, b, rtl: bool) -> _Task:
    """A GEMM whose operands start and results end in DRAM: its program, model and timing."""
    from qsim.compile_dram import compile_gemm_dram
    from qsim.model import execute, reference_gemm
    from qsim.timing import simulate_timing

    program = compile_gemm_dram(cfg, a, b, name=w.name)
    expected = reference_gemm(a, b, cfg.acc_bits)
    if not np.array_equal(execute(program).outputs["C"], expected):
        raise QsimError(f"{w.name}: the model disagrees with the direct product (a qsim bug)")
    timing = simulate_timing(program)
    report = WorkloadReport(w.name, (w.m, w.k, w.n), w.m * w.n, timing.cycles,
                            w.m * w.k * w.n / (cfg.macs_per_cycle * timing.cycles),
                            dram_bytes=timing.dram_bytes)
    return _Task("gemm-dram", w.name, [program], [timing.cycles], [w.name], report,
                 check=expected, done=not rtl)


def _dram_gemm_rtl(task: _Task, timeout_cycles: int | None) -> None:
    from qsim.cosim.runner import compare, run_programs

    program = task.programs[0]
    result = run_programs([program], timeout_cycles=timeout_cycles)[0]
    task.results.append(result)
    cmp = compare(program, result, reference={"C": task.check})
    report = task.report
    report.rtl_cycles = cmp.rtl_cycles
    report.mismatches = cmp.mismatches + cmp.acc_mismatches + cmp.dram_mismatches
    report.counter_diffs = cmp.counter_diffs
    report.sim_cycles_per_s = cmp.sim_cycles_per_s
    task.done = True


def _rtl_batches(tasks: list[_Task]) -> list[list[tuple[_Task, int]]]:
    """(task, program index) groups run in one simulator process each, in order.

    GEMM workloads share a process while their predicted cycles stay under
    :data:`RTL_BATCH_CYCLES`; a network's programs are grouped the same way, never mixed with
    another workload's.
    """
    batches: list[list[tuple[_Task, int]]] = []
    current: list[tuple[_Task, int]] = []
    cycles = 0
    for task in tasks:
        if task.kind == "gemm-dram":
            continue  # run on their own (another configuration)
        if task.kind == "network" and current:
            batches.append(current)
            current, cycles = [], 0
        for i, c in enumerate(task.cycles):
            if current and cycles + c > RTL_BATCH_CYCLES:
                batches.append(current)
                current, cycles = [], 0
            current.append((task, i))
            cycles += c
        if task.kind == "network" and current:
            batches.append(current)
            current, cycles = [], 0
    if current:
        batches.append(current)
    return batches


def run_scenario(scenario: Scenario, *, time_limit: float | None = None,
                 progress: Callable[[str], None] | None = None) -> ScenarioReport:
    """Load every network, run every workload on the model and the timing model, then on the
    RTL if the scenario asks for it.

    ``time_limit`` (seconds; default the scenario's ``time_limit``) bounds the wall-clock time
    of the whole run. On Ctrl-C (KeyboardInterrupt) or at the limit the run stops: the report
    holds the workloads that finished, names the others in ``unfinished`` and says why in
    ``stopped``. ``progress`` receives one line per step (workload i/N, layer, ETA).
    """
    t0 = time.perf_counter()
    limit = check_time_limit(time_limit, "time limit") if time_limit is not None else scenario.time_limit
    tasks: list[_Task] = []
    stopped = None
    try:
        with _alarm(limit):
            _run(scenario, tasks, progress, t0, limit)
    except KeyboardInterrupt as exc:
        stopped = "time-limit" if isinstance(exc, TimeLimitReached) else "interrupted"
    total = len(scenario.workloads) + len(scenario.networks)
    finished = [t for t in tasks if t.done]
    if stopped is not None and len(finished) == total:
        stopped = None  # the signal came after the last workload finished
    names = [w.name for w in scenario.workloads] + [n.name for n in scenario.networks]
    done_names = {id(t) for t in finished}
    unfinished = [names[i] for i in range(total) if i >= len(tasks) or id(tasks[i]) not in done_names]
    return ScenarioReport(scenario, [t.report for t in finished if t.kind in ("gemm", "gemm-dram")],
                          time.perf_counter() - t0,
                          [t.report for t in finished if t.kind == "network"], stopped=stopped,
                          unfinished=unfinished if stopped else [], time_limit=limit)


def _run(scenario: Scenario, tasks: list[_Task], progress: Callable[[str], None] | None,
         t0: float, limit: float | None) -> None:
    """The body of :func:`run_scenario`: appends to ``tasks`` as workloads progress."""
    from qsim.compile import plan_gemm
    from qsim.model import execute, reference_gemm
    from qsim.timing import simulate_timing

    shown = [""]

    def tell(text: str) -> None:
        if limit is not None and time.perf_counter() - t0 > limit:
            raise TimeLimitReached()  # where SIGALRM is not available
        if progress is not None and text != shown[0]:
            shown[0] = text
            progress(text)

    cfg = scenario.config
    total = len(scenario.workloads) + len(scenario.networks)
    # 1. load every network (models, inputs, PTQ): mistakes surface before any long work
    source_dir = Path(scenario.source).parent
    loaded = []
    for i, net in enumerate(scenario.networks, start=len(scenario.workloads) + 1):
        tell(f"load [{i}/{total}] {net.name}")
        loaded.append(net.load(source_dir))
    # 2. the model and the timing model, workload by workload
    rng = np.random.default_rng(scenario.seed)
    for i, w in enumerate(scenario.workloads, start=1):
        tell(f"model [{i}/{total}] {w.name} ({w.m}x{w.k}x{w.n})")
        a, b = w.operands(cfg, rng)
        if w.dram_width:
            tasks.append(_dram_gemm_model(w, w.config_for(cfg), a, b, scenario.rtl))
            continue
        plan = plan_gemm(cfg, a, b, name=w.name, label_single=False)
        expected = reference_gemm(a, b, cfg.acc_bits)
        if not np.array_equal(plan.assemble([execute(p).outputs["C"] for p in plan.programs]), expected):
            raise QsimError(f"{w.name}: the model disagrees with the direct product (a qsim bug)")
        cycles = [simulate_timing(p).cycles for p in plan.programs]
        report = WorkloadReport(w.name, (w.m, w.k, w.n), w.m * w.n, sum(cycles),
                                w.m * w.k * w.n / (cfg.macs_per_cycle * sum(cycles)),
                                programs=len(plan.programs))
        tasks.append(_Task("gemm", w.name, plan.programs, cycles, [w.name] * len(cycles), report,
                           check=(plan, expected), done=not scenario.rtl))
    from qsim.nn.accelerate import check_network

    for i, (net, (graph, feeds)) in enumerate(zip(scenario.networks, loaded),
                                              start=len(scenario.workloads) + 1):
        tell(f"model [{i}/{total}] {net.name}")
        t_net = time.perf_counter()
        if net.on_chip:
            tasks.append(_on_chip_model(net, graph, feeds, cfg, t_net))
            continue
        try:
            check = check_network(graph, feeds, cfg, net.semantics, isa=net.isa,
                                  on_gemm=lambda layer, i=i, net=net: tell(
                                      f"model [{i}/{total}] {net.name}: layer {layer}"))
        except QsimError as exc:
            raise ConfigError(f"{net.where or net.name}: {exc}") from None
        task = _Task("network", net.name, check.programs, check.program_cycles, check.program_layers,
                     check=check, model_s=time.perf_counter() - t_net)
        if not scenario.rtl:
            _finish_network(task, None)
        tasks.append(task)
    if not scenario.rtl:
        return
    # 3. the RTL, in batches of about RTL_BATCH_CYCLES predicted cycles
    from qsim.cosim.runner import compare_plan, run_programs

    for task in tasks:  # networks without any product have nothing to simulate
        if task.kind == "network" and not task.programs and not isinstance(task.check, _OnChip):
            _finish_network(task, [])
    for n, task in enumerate(tasks, start=1):  # GEMMs from DRAM: their own configuration
        if task.kind == "gemm-dram":
            tell(f"RTL [{n}/{total}] {task.name}: operands from DRAM over the bus interface "
                 f"(latency {task.programs[0].config.dram_latency})")
            _dram_gemm_rtl(task, scenario.timeout_cycles)
    for n, task in enumerate(tasks, start=1):  # whole layers on chip: chain after chain
        if isinstance(task.check, _OnChip):
            tell(f"RTL [{n}/{total}] {task.name}: {len(task.check.run.chains)} chains on chip, "
                 f"each fed what the RTL produced")
            _on_chip_rtl(task, scenario.timeout_cycles)
    order = {id(t): n for n, t in enumerate(tasks, start=1)}
    total_cycles = sum(sum(t.cycles) for t in tasks)
    done_cycles, t_rtl = 0, time.perf_counter()
    for batch in _rtl_batches(tasks):
        numbers = sorted({order[id(t)] for t, _ in batch})
        span = f"{numbers[0]}" if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"
        task0 = batch[0][0]
        what = ", ".join(dict.fromkeys(t.name for t, _ in batch))
        if task0.kind == "network":
            layers = list(dict.fromkeys(task0.layers[j] for _, j in batch))
            first, last = batch[0][1] + 1, batch[-1][1] + 1
            what += (f": layer{'s' if len(layers) > 1 else ''} {', '.join(layers)} "
                     f"(programs {first}-{last} of {len(task0.programs)})")
        elapsed = time.perf_counter() - t_rtl
        eta = (f", ETA {_eta(elapsed / done_cycles * (total_cycles - done_cycles))}"
               if done_cycles else "")
        tell(f"RTL [{span}/{total}] {what}; {done_cycles:,} of {total_cycles:,} cycles done, "
             f"{_eta(elapsed)} elapsed{eta}")
        results = run_programs([t.programs[j] for t, j in batch], timeout_cycles=scenario.timeout_cycles)
        for (task, j), result in zip(batch, results):
            task.results.append(result)
            done_cycles += task.cycles[j]
            if len(task.results) < len(task.programs):
                continue
            if task.kind == "gemm":
                plan, expected = task.check
                cmp = compare_plan(plan, task.results, expected)
                report = task.report
                report.rtl_cycles = cmp.rtl_cycles
                report.mismatches = cmp.mismatches + cmp.acc_mismatches
                report.counter_diffs = cmp.counter_diffs
                report.sim_cycles_per_s = cmp.sim_cycles_per_s
                task.done = True
            else:
                _finish_network(task, task.results)


@dataclass
class _OnChip:
    """A network with whole layers on chip (``on_chip = true``): its model run and reference."""

    net: NetworkWorkload
    graph: Graph
    feeds: dict
    config: AcceleratorConfig
    run: Any
    reference: dict
    model_s: float


def _on_chip_report(check: _OnChip, run, reports: list | None, wall_s: float):
    from qsim.nn.accelerate import NetworkCosimReport
    from qsim.timing import simulate_timing

    outputs = run.outputs
    mismatches = sum(int(np.count_nonzero(outputs[k] != check.reference[k])) for k in outputs)
    layer_cycles = {}
    for chain_run in run.chains:
        cycles = simulate_timing(chain_run.chain.program).cycles
        layer_cycles["+".join(chain_run.chain.layers)] = cycles
    words = diffs = rtl_cycles = rtl_mismatches = None
    if reports is not None:
        words = sum(r.elements for r in reports)
        rtl_mismatches = sum(r.acc_mismatches + r.act_mismatches + r.mismatches for r in reports)
        rtl_cycles = sum(r.rtl_cycles for r in reports)
        diffs = sum(bool(r.counter_diffs) for r in reports)
    return NetworkCosimReport(
        network=check.net.name, output_elements=sum(int(v.size) for v in outputs.values()),
        output_mismatches=mismatches, programs=len(run.chains), acc_words=words,
        rtl_mismatches=rtl_mismatches, model_cycles=sum(layer_cycles.values()),
        rtl_cycles=rtl_cycles, counter_diffs=diffs, layer_cycles=layer_cycles, wall_s=wall_s,
        on_chip={"chains": [c.chain.layers for c in run.chains],
                 "host_layers": dict(run.host_layers)})


def _on_chip_model(net: NetworkWorkload, graph: Graph, feeds: dict, cfg: AcceleratorConfig,
                   t0: float) -> _Task:
    """The model run of an ``on_chip`` network: chains on the bit-accurate model."""
    from qsim.nn.engine import run as run_engine
    from qsim.nn.onchip import run_on_chip

    try:
        reference = run_engine(graph, feeds, net.semantics, isa=net.isa).outputs
        result = run_on_chip(graph, feeds, cfg, net.semantics, isa=net.isa)
    except QsimError as exc:
        raise ConfigError(f"{net.where or net.name}: {exc}") from None
    check = _OnChip(net, graph, feeds, cfg, result, reference, time.perf_counter() - t0)
    task = _Task("network", net.name, [], [], [], check=check, model_s=check.model_s)
    task.report = _on_chip_report(check, result, None, check.model_s)
    task.report.network = net.name
    task.done = True
    return task


def _on_chip_rtl(task: _Task, timeout_cycles: int | None) -> None:
    """Each chain on the RTL, its input what the RTL and the host layers produced."""
    from qsim.nn.onchip import cosim_on_chip

    check = task.check
    t0 = time.perf_counter()
    cosim = cosim_on_chip(check.graph, check.feeds, check.config, check.net.semantics,
                          isa=check.net.isa, timeout_cycles=timeout_cycles)
    task.report = _on_chip_report(check, cosim.run, cosim.reports,
                                  check.model_s + time.perf_counter() - t0)
    task.report.network = task.name
    task.done = True


def _finish_network(task: _Task, results: list | None) -> None:
    """The network's report from its RTL results (None: the RTL was not run)."""
    rtl_s = sum(r.wall_s for r in results or [])
    task.report = task.check.report(results, wall_s=task.model_s + rtl_s)
    task.report.network = task.name
    task.done = True
