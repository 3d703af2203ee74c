"""Run a Program on a plain Verilator C++ loop over the same RTL (no cocotb, no Python).

This is the speed baseline of ``qsim bench cosim``: it shows what the co-simulation costs
over the fastest way to run the same Verilator model. It checks the same results.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from qsim.cosim.result import RtlResult
from qsim.cosim.words import program_images, readback_words, unpack_memory
from qsim.errors import SimulationError
from qsim.program import Program

__all__ = ["run_native"]


def run_native(program: Program, timeout_cycles: int | None = None) -> RtlResult:
    """Run ``program`` on the native build and return its counters and accumulator words.

    The memory images and the results go through a private temporary folder; the simulator
    runs in its own process group and is stopped if qsim is interrupted.
    """
    from qsim.cosim.build import ensure_build
    from qsim.cosim.procs import run_process
    from qsim.cosim.runner import check_timeout_cycles
    from qsim.timing import simulate_timing
    from qsim.hw import COUNTERS, memory_names

    timeout_cycles = check_timeout_cycles(timeout_cycles)
    cfg = program.config
    build = ensure_build(cfg, flavor="native")
    if timeout_cycles is None:
        timeout_cycles = 2 * simulate_timing(program).cycles + 1000
    names = memory_names(cfg)
    reads = readback_words(program)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qsim-native-") as tmp:
        job = Path(tmp)
        requests = []
        for key, words in program_images(program).items():
            (job / f"{key}.hex").write_text("".join(f"{w:x}\n" for w in words))
            requests.append(f"load {names[key]} {key}.hex")
        requests += [f"read {names[key]} {count} {key}_out.hex" for key, count in reads.items()]
        (job / "job.txt").write_text("".join(f"{r}\n" for r in requests))
        with open(job / "stdout", "w+") as out, open(job / "stderr", "w+") as err:
            code = run_process([str(build.native_binary), str(job), str(timeout_cycles)],
                               stdout=out, stderr=err)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if code != 0:
            raise SimulationError(f"the native simulation failed (exit {code}): {stderr.strip()[-2000:]}")
        try:
            report = json.loads(stdout.strip().splitlines()[-1])
            counters = {name: int(report[name]) for name in COUNTERS}
            words = {key: [int(line, 16) for line in (job / f"{key}_out.hex").read_text().split()]
                     for key in reads}
        except (OSError, ValueError, IndexError, KeyError, TypeError):
            raise SimulationError("the native simulation ended without complete results: "
                                  f"{(stderr or stdout).strip()[-2000:]}") from None
        if not report["done"]:
            raise SimulationError(f"{program.name}: the RTL did not raise done within "
                                  f"{timeout_cycles} cycles")
        for key, count in reads.items():
            if len(words[key]) != count:
                raise SimulationError(f"the native simulation returned {len(words[key])} of "
                                      f"{count} {key} words")
    memories = {key: unpack_memory(program, key, w) for key, w in words.items()}
    outputs = {name: lay.unpack(memories[lay.memory]) for name, lay in program.outputs.items()}
    return RtlResult(counters=counters, acc=memories["acc"], outputs=outputs,
                     error=bool(report["error"]), wall_s=time.perf_counter() - t0,
                     sim_wall_s=float(report["sim_s"]), memories=memories,
                     extra={"build_s": build.build_s, "build_key": build.key})
