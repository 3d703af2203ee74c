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
from qsim.cosim.words import pack_words, unpack_words
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
    from rtl.top import COUNTERS

    timeout_cycles = check_timeout_cycles(timeout_cycles)
    cfg = program.config
    build = ensure_build(cfg, flavor="native")
    if timeout_cycles is None:
        timeout_cycles = 2 * simulate_timing(program).cycles + 1000
    bits = {"act": cfg.input_format.bits, "weight": cfg.weight_format.bits, "acc": cfg.acc_bits}
    acc_words = program.footprint()["acc"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qsim-native-") as tmp:
        job = Path(tmp)
        images = {key: pack_words(image, bits[key]) for key, image in program.initial_images().items()}
        images["cmd"] = program.encoded()
        for key, words in images.items():
            (job / f"{key}.hex").write_text("".join(f"{w:x}\n" for w in words))
        with open(job / "stdout", "w+") as out, open(job / "stderr", "w+") as err:
            code = run_process([str(build.native_binary), str(job), str(acc_words), str(timeout_cycles)],
                               stdout=out, stderr=err)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if code != 0:
            raise SimulationError(f"the native simulation failed (exit {code}): {stderr.strip()[-2000:]}")
        try:
            report = json.loads(stdout.strip().splitlines()[-1])
            counters = {name: int(report[name]) for name in COUNTERS}
            words = [int(line, 16) for line in (job / "acc_out.hex").read_text().split()]
        except (OSError, ValueError, IndexError, KeyError, TypeError):
            raise SimulationError("the native simulation ended without complete results: "
                                  f"{(stderr or stdout).strip()[-2000:]}") from None
        if not report["done"]:
            raise SimulationError(f"{program.name}: the RTL did not raise done within "
                                  f"{timeout_cycles} cycles")
        if len(words) != acc_words:
            raise SimulationError(f"the native simulation returned {len(words)} of {acc_words} "
                                  f"accumulator words")
    acc = unpack_words(words, cfg.cols, cfg.acc_bits)
    outputs = {name: lay.unpack(acc) for name, lay in program.outputs.items()}
    return RtlResult(counters=counters, acc=acc, outputs=outputs, error=bool(report["error"]),
                     wall_s=time.perf_counter() - t0, sim_wall_s=float(report["sim_s"]),
                     extra={"build_s": build.build_s, "build_key": build.key})
