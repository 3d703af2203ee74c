"""Run a Program on a plain Verilator C++ loop over the same RTL (no cocotb, no Python).

This is the speed baseline of ``qsim bench cosim``: it shows what the co-simulation costs
over the fastest way to run the same Verilator model. It checks the same results.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from qsim.cosim.result import RtlResult
from qsim.cosim.words import pack_words, unpack_words
from qsim.errors import SimulationError
from qsim.program import Program

__all__ = ["run_native"]


def run_native(program: Program, timeout_cycles: int | None = None) -> RtlResult:
    """Run ``program`` on the native build and return its counters and accumulator words."""
    from qsim.cosim.build import ensure_build
    from qsim.timing import simulate_timing
    from rtl.top import COUNTERS

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
        done = subprocess.run([str(build.native_binary), str(job), str(acc_words), str(timeout_cycles)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SimulationError(f"the native simulation failed (exit {done.returncode}): "
                                  f"{done.stderr.strip()[-2000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        if not report["done"]:
            raise SimulationError(f"{program.name}: the RTL did not raise done within "
                                  f"{timeout_cycles} cycles")
        words = [int(line, 16) for line in (job / "acc_out.hex").read_text().split()]
    acc = unpack_words(words, cfg.cols, cfg.acc_bits)
    outputs = {name: lay.unpack(acc) for name, lay in program.outputs.items()}
    return RtlResult(counters={name: int(report[name]) for name in COUNTERS}, acc=acc,
                     outputs=outputs, error=bool(report["error"]),
                     wall_s=time.perf_counter() - t0, sim_wall_s=float(report["sim_s"]),
                     extra={"build_s": build.build_s, "build_key": build.key})
