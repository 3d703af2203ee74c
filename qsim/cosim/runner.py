"""Run Programs on the Verilator build of the RTL through cocotb, and compare with the model.

:func:`run_programs` runs a batch of Programs for one configuration inside a single simulator
process (one build, one start-up); :func:`cosim_program` also runs the bit-accurate model and
the timing model and reports every disagreement.
"""

from __future__ import annotations

import pickle
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from qsim.cosim.result import RtlResult
from qsim.cosim.words import pack_words, unpack_words
from qsim.errors import ConfigError, SimulationError
from qsim.program import Program

__all__ = ["run_programs", "cosim_program", "compare", "CosimReport"]


def _job(program: Program, timeout_cycles: int | None) -> dict:
    from qsim.timing import simulate_timing

    cfg = program.config
    bits = {"act": cfg.input_format.bits, "weight": cfg.weight_format.bits, "acc": cfg.acc_bits}
    images = {key: pack_words(image, bits[key]) for key, image in program.initial_images().items()}
    images["cmd"] = program.encoded()
    if timeout_cycles is None:
        timeout_cycles = 2 * simulate_timing(program).cycles + 1000
    return {"name": program.name, "images": images, "acc_words": program.footprint()["acc"],
            "timeout_cycles": int(timeout_cycles)}


def run_programs(programs: Sequence[Program], *, timeout_cycles: int | None = None,
                 waves: bool = False, keep_dir: Path | None = None) -> list[RtlResult]:
    """Run ``programs`` (all for one configuration) on the RTL under Verilator.

    Parameters
    ----------
    programs : sequence of Program
    timeout_cycles : int, optional
        Per program; default twice the timing model's prediction plus 1000.
    waves : bool
        Record a VCD waveform of the whole run (a separate, slower build).
    keep_dir : Path, optional
        Keep the run's files (logs, waveform) there instead of a temporary folder.

    Raises
    ------
    SimulationError
        The simulator failed, or a program did not finish within its timeout.
    """
    from qsim.cosim.build import ensure_build
    from qsim.cosim.harness import CLOCK_PERIOD_NS, HARNESS_NAME
    from rtl.sram import SRAM_ARRAY
    from rtl.top import COUNTERS, MEMORY_NAMES

    if not programs:
        return []
    config = programs[0].config
    for p in programs[1:]:
        if p.config != config:
            raise ConfigError("all programs of one co-simulation run must share a configuration")
    t_start = time.perf_counter()
    build = ensure_build(config, waves=waves)
    spec = {
        "clock_period_ns": CLOCK_PERIOD_NS,
        "memory_names": MEMORY_NAMES,
        "sram_array": SRAM_ARRAY,
        "counters": COUNTERS,
        "jobs": [_job(p, timeout_cycles) for p in programs],
    }
    holder = None
    if keep_dir is None:
        holder = tempfile.TemporaryDirectory(prefix="qsim-cosim-")
        work = Path(holder.name)
    else:
        work = Path(keep_dir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        jobs_file = work / "jobs.pkl"
        results_file = work / "results.pkl"
        log = work / "sim.log"
        with open(jobs_file, "wb") as f:
            pickle.dump(spec, f, protocol=pickle.HIGHEST_PROTOCOL)
        from qsim.cosim.build import _verilator_runner

        runner = _verilator_runner()
        extra_env = {"QSIM_COSIM_JOBS": str(jobs_file), "QSIM_COSIM_RESULTS": str(results_file)}
        test_args = ["--trace-file", str(work / "waves.vcd")] if waves else []
        try:
            runner.test(hdl_toplevel=HARNESS_NAME, hdl_toplevel_lang="verilog",
                        test_module="qsim.cosim.tb",
                        build_dir=build.sim_build, test_dir=work, extra_env=extra_env,
                        waves=waves, test_args=test_args, log_file=log)
        except (RuntimeError, SystemExit) as exc:
            raise SimulationError(f"the simulator failed ({exc}); see {log}") from None
        if not results_file.is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise SimulationError(f"the simulation produced no results; last lines of the log:\n{tail}")
        with open(results_file, "rb") as f:
            raw = pickle.load(f)
        total = time.perf_counter() - t_start
        results = []
        for program, job, out in zip(programs, spec["jobs"], raw):
            if out["status"] == "timeout":
                raise SimulationError(
                    f"{program.name}: the RTL did not raise done within {job['timeout_cycles']} "
                    f"cycles (busy={out['busy']})"
                )
            acc = unpack_words(out["acc"], config.cols, config.acc_bits)
            outputs = {name: lay.unpack(acc) for name, lay in program.outputs.items()}
            extra = {"load_s": out["load_s"], "read_s": out["read_s"], "build_s": build.build_s,
                     "build_key": build.key}
            if waves:
                extra["waves"] = str(work / "waves.vcd")
            results.append(RtlResult(counters=out["counters"], acc=acc, outputs=outputs,
                                     error=bool(out["error"]), wall_s=total / len(programs),
                                     sim_wall_s=out["sim_s"], extra=extra))
        if len(raw) < len(programs):
            raise SimulationError(f"the simulation returned {len(raw)} of {len(programs)} results")
        return results
    finally:
        if holder is not None:
            holder.cleanup()


@dataclass
class CosimReport:
    """Agreement of the RTL with the bit-accurate model and the timing model for one Program.

    ``elements``/``mismatches`` count the program's output elements; ``acc_mismatches``
    counts every differing lane of the accumulator words the program touches (padding
    included), so a stray write outside the outputs is caught too.
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

    @property
    def sim_cycles_per_s(self) -> float:
        return self.rtl_cycles / self.sim_wall_s if self.sim_wall_s > 0 else float("inf")

    @property
    def agrees(self) -> bool:
        return self.mismatches == 0 and self.acc_mismatches == 0 and not self.counter_diffs

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "elements": self.elements,
            "mismatches": self.mismatches,
            "acc_mismatches": self.acc_mismatches,
            "model_cycles": self.model_cycles,
            "rtl_cycles": self.rtl_cycles,
            "counter_diffs": {k: list(v) for k, v in self.counter_diffs.items()},
            "utilization": self.utilization,
            "wall_s": round(self.wall_s, 4),
            "sim_cycles_per_s": round(self.sim_cycles_per_s, 1),
            "agrees": self.agrees,
            "first_mismatches": self.first_mismatches,
        }


def compare(program: Program, rtl: RtlResult) -> CosimReport:
    """Compare one RTL result with the model and the timing model."""
    from qsim.model import execute
    from qsim.timing import simulate_timing

    model = execute(program)
    timing = simulate_timing(program)
    expected = model.memories["acc"]
    diff = np.argwhere(expected != rtl.acc)
    first = [f"acc word {int(w)} lane {int(lane)}: model {int(expected[w, lane])}, "
             f"rtl {int(rtl.acc[w, lane])}" for w, lane in diff[:5]]
    predicted = timing.counters()
    counter_diffs = {k: (v, rtl.counters.get(k, -1)) for k, v in predicted.items()
                     if v != rtl.counters.get(k, -1)}
    if rtl.error:
        counter_diffs["error"] = (0, 1)
    elements = sum(int(out.size) for out in model.outputs.values())
    mismatches = sum(int(np.count_nonzero(model.outputs[k] != rtl.outputs[k])) for k in model.outputs)
    return CosimReport(
        name=program.name, elements=elements, mismatches=mismatches, acc_mismatches=len(diff),
        model_cycles=timing.cycles, rtl_cycles=rtl.cycles, counter_diffs=counter_diffs,
        wall_s=rtl.wall_s, sim_wall_s=rtl.sim_wall_s, utilization=timing.utilization,
        first_mismatches=first,
    )


def cosim_program(program: Program, **kwargs) -> CosimReport:
    """Run one Program on the RTL and compare it with the model and the timing model."""
    rtl = run_programs([program], **kwargs)[0]
    return compare(program, rtl)
