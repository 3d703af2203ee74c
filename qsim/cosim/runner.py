"""Run Programs on the Verilator build of the RTL through cocotb, and compare with the model.

:func:`run_programs` runs a batch of Programs for one configuration inside a single simulator
process (one build, one start-up); :func:`cosim_program` also runs the bit-accurate model and
the timing model and reports every disagreement.

The jobs and the results cross to and from the simulator as JSON files in a private temporary
folder made for each run (never in ``keep_dir``, which only receives the log and the
waveform). The results carry the run's random id and are written in one rename at the end of
the testbench, so a run reports only what its own simulator produced: a missing, partial or
foreign results file is a :class:`~qsim.errors.SimulationError`, never a verdict.
"""

from __future__ import annotations

import json
import numbers
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, TYPE_CHECKING, Sequence

import numpy as np

from qsim.cosim.result import RtlResult
from qsim.cosim.words import program_images, readback_words, unpack_memory
from qsim.errors import ConfigError, SimulationError
from qsim.program import Program

if TYPE_CHECKING:
    from qsim.compile import GemmPlan

__all__ = ["run_programs", "cosim_program", "compare", "compare_plan", "CosimReport",
           "check_timeout_cycles", "MAX_TIMEOUT_CYCLES"]

#: Largest accepted ``timeout_cycles`` (10**12 cycles: about ten days at 1.2 M cycles/s).
MAX_TIMEOUT_CYCLES = 10**12

#: Names of the exchange files inside the run's private folder.
JOBS_FILE = "jobs.json"
RESULTS_FILE = "results.json"


def check_timeout_cycles(value, what: str = "timeout_cycles") -> int | None:
    """``value`` as an int, or None; raises :class:`ConfigError` (naming ``what``) unless
    1 <= value <= :data:`MAX_TIMEOUT_CYCLES`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{what} must be an int, not {value!r}")
    if not 1 <= value <= MAX_TIMEOUT_CYCLES:
        raise ConfigError(f"{what} must be between 1 and {MAX_TIMEOUT_CYCLES}, not {value}")
    return int(value)


def _job(program: Program, timeout_cycles: int | None) -> dict:
    from qsim.timing import simulate_timing

    if timeout_cycles is None:
        timeout_cycles = 2 * simulate_timing(program).cycles + 1000
    job = {"name": program.name, "images": program_images(program),
           "reads": readback_words(program), "timeout_cycles": int(timeout_cycles)}
    if program.config.has_dram:
        from qsim.cosim.dram import dram_words, readback_dram_words, start_writes

        # memories start cleared (as after reset); the program and its data are in DRAM
        job["images"] = {key: [0] * len(words) for key, words in job["images"].items()
                         if key != "cmd"}
        job["dram"] = {"words": dram_words(program), "read": readback_dram_words(program),
                       "latency": program.config.dram_latency,
                       "start": start_writes(program)}
    return job


def _log_tail(log: Path) -> str:
    from qsim.cosim.build import log_tail

    return log_tail(log, missing="(the simulator wrote no log)", empty="(the log is empty)")


def _prepare_keep_dir(keep_dir: Path) -> Path:
    work = Path(keep_dir)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write the run's files to {work}: {exc.strerror or exc}") from None
    if not work.is_dir():
        raise ConfigError(f"cannot write the run's files to {work}: it is not a directory")
    return work


def _simulate(build, exchange: Path, log: Path, env: dict[str, str], waves_file: Path | None) -> None:
    """Launch the simulator on ``build`` (one process, its own process group) and wait.

    A failed cocotb test is an error whether or not pytest is running (cocotb checks its
    results file only under pytest, so qsim checks it itself).
    """
    from cocotb_tools.check_results import get_results

    from qsim.cosim.build import _verilator_runner
    from qsim.cosim.harness import HARNESS_NAME
    from qsim.cosim.procs import Terminated

    runner = _verilator_runner()
    runner.qsim_env = env
    test_args = ["--trace-file", str(waves_file)] if waves_file is not None else []
    junit = exchange / "results.xml"
    failure = None
    try:
        runner.test(hdl_toplevel=HARNESS_NAME, hdl_toplevel_lang="verilog",
                    test_module="qsim.cosim.tb", build_dir=build.sim_build, test_dir=exchange,
                    waves=waves_file is not None, test_args=test_args, log_file=log,
                    results_xml=str(junit))
    except Terminated:
        raise  # SIGTERM: stop without a verdict
    except (RuntimeError, SystemExit) as exc:  # the simulator's exit status, or cocotb giving up
        failure = f"the simulator failed ({exc})"
    try:
        tests, failed = get_results(junit)
    except (RuntimeError, OSError, ValueError, SyntaxError):  # no or a broken JUnit file
        tests, failed = 0, 0
    if failed:
        failure = f"the testbench failed ({failed} of {tests} tests)"
    if failure is not None:
        raise SimulationError(f"{failure}; last lines of the simulator's log:\n{_log_tail(log)}")


def _read_results(results_file: Path, spec: dict, log: Path) -> list[dict]:
    """The results the testbench wrote for this run, checked to be complete and its own."""
    jobs = spec["jobs"]

    def fail(what: str) -> SimulationError:
        return SimulationError(f"{what}; last lines of the simulator's log:\n{_log_tail(log)}")

    if not results_file.is_file():
        raise fail("the simulation ended without writing its results")
    try:
        data = json.loads(results_file.read_text())
        if data["run_id"] != spec["run_id"]:
            raise fail("the results file belongs to another run")
        raw = data["results"]
        if not isinstance(raw, list) or data.get("complete") is not True:
            raise ValueError
        for out, job in zip(raw, jobs):
            if out["status"] == "timeout":
                int(out["busy"])
                continue
            if out["status"] != "ok" or set(out["memories"]) != set(job["reads"]):
                raise ValueError
            if any(len(out["memories"][k]) != n for k, n in job["reads"].items()):
                raise ValueError
            if set(out["counters"]) != set(spec["counters"]):
                raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise fail("the simulation's results file is incomplete or malformed") from None
    finished = len(raw) == len(jobs) or (raw and raw[-1]["status"] == "timeout")
    if not finished or len(raw) > len(jobs):
        raise fail(f"the simulation returned {len(raw)} results for {len(jobs)} programs")
    return raw


def run_programs(programs: Sequence[Program], *, timeout_cycles: int | None = None,
                 waves: bool = False, keep_dir: Path | None = None) -> list[RtlResult]:
    """Run ``programs`` (all for one configuration) on the RTL under Verilator.

    Parameters
    ----------
    programs : sequence of Program
    timeout_cycles : int, optional
        Per program, 1 to :data:`MAX_TIMEOUT_CYCLES`; default twice the timing model's
        prediction plus 1000.
    waves : bool
        Record a VCD waveform of the whole run (a separate, slower build).
    keep_dir : Path, optional
        Write the simulator's log (``sim.log``) and the waveform (``waves.vcd``) there
        instead of a temporary folder that is deleted afterwards.

    Raises
    ------
    ConfigError
        Bad ``timeout_cycles``, programs of different configurations, unusable ``keep_dir``
        or build cache.
    SimulationError
        The simulator failed, ended without complete results, or a program did not finish
        within its timeout.
    """
    from qsim.cosim.build import ensure_build
    from qsim.cosim.harness import CLOCK_PERIOD_NS
    from rtl.sram import SRAM_ARRAY
    from qsim.hw import COUNTERS, csr_map, memory_names
    from rtl.dram_model import DRAM_MEMORY_NAME

    timeout_cycles = check_timeout_cycles(timeout_cycles)
    if not programs:
        return []
    config = programs[0].config
    for p in programs[1:]:
        if p.config != config:
            raise ConfigError("all programs of one co-simulation run must share a configuration")
    work = _prepare_keep_dir(keep_dir) if keep_dir is not None else None
    t_start = time.perf_counter()
    build = ensure_build(config, waves=waves)
    spec = {
        "run_id": secrets.token_hex(16),
        "clock_period_ns": CLOCK_PERIOD_NS,
        "memory_names": memory_names(config),
        "sram_array": SRAM_ARRAY,
        "counters": list(COUNTERS),
        "csr": csr_map(),
        "dram_path": ["dram", DRAM_MEMORY_NAME],
        "core_path": ["core"] if config.has_dram else [],
        "jobs": [_job(p, timeout_cycles) for p in programs],
    }
    with tempfile.TemporaryDirectory(prefix="qsim-cosim-") as private:
        exchange = Path(private)  # mode 0700, new for this run: nothing stale, nothing planted
        out_dir = work if work is not None else exchange
        jobs_file, results_file = exchange / JOBS_FILE, exchange / RESULTS_FILE
        log = out_dir / "sim.log"
        waves_file = out_dir / "waves.vcd" if waves else None
        if waves_file is not None:
            waves_file.unlink(missing_ok=True)  # never report an older run's waveform
        jobs_file.write_text(json.dumps(spec))
        env = {"QSIM_COSIM_JOBS": str(jobs_file), "QSIM_COSIM_RESULTS": str(results_file)}
        _simulate(build, exchange, log, env, waves_file)
        raw = _read_results(results_file, spec, log)
    total = time.perf_counter() - t_start
    results = []
    for program, job, out in zip(programs, spec["jobs"], raw):
        if out["status"] == "timeout":
            raise SimulationError(
                f"{program.name}: the RTL did not raise done within {job['timeout_cycles']} "
                f"cycles (busy={out['busy']})"
            )
        memories = {key: unpack_memory(program, key, words)
                    for key, words in out["memories"].items()}
        acc = memories["acc"]
        outputs = {name: lay.unpack(memories[lay.memory]) for name, lay in program.outputs.items()}
        extra = {"load_s": out["load_s"], "read_s": out["read_s"], "build_s": build.build_s,
                 "build_key": build.key}
        if waves_file is not None:
            extra["waves"] = str(waves_file)
        result = RtlResult(counters={k: int(v) for k, v in out["counters"].items()}, acc=acc,
                           outputs=outputs, error=bool(out["error"]), memories=memories,
                           wall_s=total / len(programs), sim_wall_s=out["sim_s"], extra=extra)
        if "dram" in out:
            from qsim.cosim.dram import dram_bytes_from_words

            result.dram = dram_bytes_from_words(out["dram"], config.dram_width)
            result.error_code, result.error_cmd = out["error_code"], out["error_cmd"]
            result.outputs.update(program.dram_outputs_from(result.dram))
        results.append(result)
    return results


@dataclass
class CosimReport:
    """Agreement of the RTL with the bit-accurate model and the timing model for one Program.

    ``elements``/``mismatches`` count the program's output elements; ``acc_mismatches``
    counts every differing lane of the accumulator words the program touches (padding
    included), so a stray write outside the outputs is caught too; ``act_mismatches`` does
    the same for the activation words of a program that writes them (a REQUANT).
    """

    name: str
    elements: int
    mismatches: int
    acc_mismatches: int
    model_cycles: int
    rtl_cycles: int
    counter_diffs: dict[str, tuple[int, int]]
    wall_s: float
    sim_wall_s: float
    utilization: float | None
    first_mismatches: list[str] = field(default_factory=list)
    act_mismatches: int = 0
    dram_mismatches: int = 0  # differing DRAM bytes (bus interface)
    dram_bytes: dict[str, int] | None = None  # bytes read and written, from the timing model

    @property
    def sim_cycles_per_s(self) -> float | None:
        """Simulated cycles per second; ``None`` when no simulation time was measured."""
        return self.rtl_cycles / self.sim_wall_s if self.sim_wall_s > 0 else None

    @property
    def agrees(self) -> bool:
        return (self.mismatches == 0 and self.acc_mismatches == 0 and self.act_mismatches == 0
                and self.dram_mismatches == 0 and not self.counter_diffs)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "elements": self.elements,
            "mismatches": self.mismatches,
            "dram_bytes": self.dram_bytes,
            "acc_mismatches": self.acc_mismatches,
            "dram_mismatches": self.dram_mismatches,
            "act_mismatches": self.act_mismatches,
            "model_cycles": self.model_cycles,
            "rtl_cycles": self.rtl_cycles,
            "counter_diffs": {k: list(v) for k, v in self.counter_diffs.items()},
            "utilization": self.utilization,
            "wall_s": round(self.wall_s, 4),
            "sim_cycles_per_s": None if self.sim_cycles_per_s is None else round(self.sim_cycles_per_s, 1),
            "agrees": self.agrees,
            "first_mismatches": self.first_mismatches,
        }


def compare(program: Program, rtl: RtlResult,
            reference: Mapping[str, np.ndarray] | None = None) -> CosimReport:
    """Compare one RTL result with the model and the timing model, and its outputs named in
    ``reference`` with those values too (a reference computed apart from the model, e.g. the
    direct product of a GEMM): ``mismatches`` counts both."""
    from qsim.model import execute
    from qsim.timing import simulate_timing

    model = execute(program)
    timing = simulate_timing(program)
    diffs = {}
    first = []
    for key, got in rtl.memories.items():
        expected = model.memories[key]
        diffs[key] = np.argwhere(expected != got)
        first += [f"{key} word {int(w)} lane {int(lane)}: model {int(expected[w, lane])}, "
                  f"rtl {int(got[w, lane])}" for w, lane in diffs[key][:5]]
    diff = diffs["acc"]
    first = first[:5]
    predicted = timing.counters()
    counter_diffs = {k: (v, rtl.counters.get(k, -1)) for k, v in predicted.items()
                     if v != rtl.counters.get(k, -1)}
    if rtl.error:
        counter_diffs["error"] = (0, 1)
    dram_mismatches = 0
    if program.config.has_dram:
        want = bytes(model.dram)
        got = bytes(rtl.dram or b"")[: len(want)].ljust(len(want), b"\0")
        bad = [i for i in range(len(want)) if want[i] != got[i]]
        dram_mismatches = len(bad)
        first += [f"DRAM byte {i:#x}: model {want[i]:#04x}, rtl {got[i]:#04x}" for i in bad[:5]]
        first = first[:5]
    elements = sum(int(out.size) for out in model.outputs.values())
    mismatches = sum(int(np.count_nonzero(model.outputs[k] != rtl.outputs[k])) for k in model.outputs)
    for name, want in (reference or {}).items():
        mismatches += int(np.count_nonzero(rtl.outputs[name] != want))
    return CosimReport(
        name=program.name, elements=elements, mismatches=mismatches, acc_mismatches=len(diff),
        model_cycles=timing.cycles, rtl_cycles=rtl.cycles, counter_diffs=counter_diffs,
        wall_s=rtl.wall_s, sim_wall_s=rtl.sim_wall_s, utilization=timing.utilization,
        first_mismatches=first, act_mismatches=len(diffs.get("act", ())),
        dram_mismatches=dram_mismatches,
        dram_bytes=timing.dram_bytes if program.config.has_dram else None,
    )


def compare_plan(plan: GemmPlan, results: Sequence[RtlResult], expected: np.ndarray) -> CosimReport:
    """Compare the RTL results of every Program of ``plan`` and their assembled product.

    Each Program is compared with the model and the timing model (:func:`compare`); the
    RTL's outputs are assembled (:meth:`GemmPlan.assemble`) and compared with ``expected``,
    the direct product. ``elements``/``mismatches`` count the M x N product,
    ``acc_mismatches`` and the cycles are summed over the Programs, ``counter_diffs`` is keyed
    ``"<program> <counter>"``. A plan of one Program gives exactly :func:`compare`'s report.
    """
    if len(results) != len(plan.programs):
        raise ValueError(f"{len(results)} RTL results for {len(plan.programs)} programs")
    reports = [compare(p, r) for p, r in zip(plan.programs, results)]
    if len(reports) == 1:
        return reports[0]
    got = plan.assemble([r.outputs["C"] for r in results])
    diff = np.argwhere(got != expected)
    first = [f"C[{int(i)}, {int(j)}]: rtl {int(got[i, j])}, reference {int(expected[i, j])}"
             for i, j in diff[:5]]
    elements = int(expected.size)
    if plan.requant is not None:  # the 8-bit results too, against the requantized product
        got_y = plan.assemble_y([r.outputs["Y"] for r in results])
        want_y = plan.requant.reference(plan.config, expected)
        diff_y = np.argwhere(got_y != want_y)
        first += [f"Y[{int(i)}, {int(j)}]: rtl {int(got_y[i, j])}, reference {int(want_y[i, j])}"
                  for i, j in diff_y[:5]]
        diff = np.concatenate([diff, diff_y])
        elements += int(want_y.size)
    first += [f"{rep.name}: {line}" for rep in reports for line in rep.first_mismatches][:5 - len(first)]
    model_cycles = sum(rep.model_cycles for rep in reports)
    cfg = plan.config
    return CosimReport(
        name=plan.name, elements=elements,
        mismatches=len(diff), acc_mismatches=sum(rep.acc_mismatches for rep in reports),
        model_cycles=model_cycles, rtl_cycles=sum(rep.rtl_cycles for rep in reports),
        counter_diffs={f"{rep.name} {k}": v for rep in reports for k, v in rep.counter_diffs.items()},
        wall_s=sum(r.wall_s for r in results), sim_wall_s=sum(r.sim_wall_s for r in results),
        utilization=plan.m * plan.k * plan.n / (cfg.macs_per_cycle * model_cycles) if model_cycles else None,
        first_mismatches=first[:5], act_mismatches=sum(rep.act_mismatches for rep in reports),
    )


def cosim_program(program: Program, **kwargs) -> CosimReport:
    """Run one Program on the RTL and compare it with the model and the timing model."""
    rtl = run_programs([program], **kwargs)[0]
    return compare(program, rtl)
