"""cocotb testbench: run a batch of jobs on the accelerator inside one simulator process.

The runner (:mod:`qsim.cosim.runner`) writes the jobs as JSON to the file named by
``QSIM_COSIM_JOBS`` (in a private folder made for the run); this test loads each job's memory
images and command words straight into the RTL memories (zero simulated time), pulses
``start``, waits for ``done`` with a cycle timeout, reads the counters and the memory words
each job asks for (``reads``: the accumulator memory, and the activation memory after a
REQUANT), and writes the results as JSON to ``QSIM_COSIM_RESULTS``, tagged with the run's id.
The results file appears in one rename after the last job, so it is either complete or
absent. Python is idle while the accelerator runs: the clock is generated in the Verilog
harness and the only wake-up is the rising edge of ``done``.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer


@cocotb.test()
async def run_jobs(dut) -> None:
    with open(os.environ["QSIM_COSIM_JOBS"]) as f:
        spec = json.load(f)
    period = spec["clock_period_ns"]
    bench = top = dut.dut
    for name in spec.get("core_path", []):  # the accelerator inside a DRAM bench
        top = getattr(top, name)
    array = spec["sram_array"]
    memories = {key: getattr(getattr(top, name), array) for key, name in spec["memory_names"].items()}
    results = []

    dut.rst.value = 1
    dut.start.value = 0
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    host = None
    if any("dram" in job for job in spec["jobs"]):
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
        dram_mem = bench
        for name in spec["dram_path"]:
            dram_mem = getattr(dram_mem, name)
        dram_mem = getattr(dram_mem, array)

    for job in spec["jobs"]:
        if "dram" in job:
            results.append(await _run_dram_job(dut, host, job, spec, memories, dram_mem))
            if results[-1]["status"] != "ok":
                break
            continue
        t0 = time.perf_counter()
        for key, words in job["images"].items():
            mem = memories[key]
            for address, word in enumerate(words):
                mem[address].value = word
        await FallingEdge(dut.clk)
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        t1 = time.perf_counter()
        timeout = Timer(job["timeout_cycles"] * period, "ns")
        fired = await First(RisingEdge(dut.done), timeout)
        t2 = time.perf_counter()
        if fired is timeout:
            results.append({"status": "timeout", "load_s": t1 - t0, "sim_s": t2 - t1,
                            "busy": int(dut.busy.value)})
            break
        counters = {name: int(getattr(dut, name).value) for name in spec["counters"]}
        words = {key: [int(memories[key][address].value) for address in range(count)]
                 for key, count in job["reads"].items()}
        t3 = time.perf_counter()
        results.append({"status": "ok", "counters": counters, "error": int(dut.error.value),
                        "memories": words, "load_s": t1 - t0, "sim_s": t2 - t1, "read_s": t3 - t2})

    _write_results(spec, results)


async def _run_dram_job(dut, host, job, spec, memories, dram_mem) -> dict:
    """One job through the front door: DRAM image in the DRAM model, registers over AXI4-Lite
    (start, then counters and errors read back), DRAM and memories read back for checking."""
    period = spec["clock_period_ns"]
    csr = spec["csr"]
    t0 = time.perf_counter()
    for key, words in job["images"].items():  # on-chip memories start cleared
        mem = memories[key]
        for address, word in enumerate(words):
            mem[address].value = word
    for address, word in enumerate(job["dram"]["words"]):
        dram_mem[address].value = word
    dut.dram_latency.value = job["dram"]["latency"]
    await FallingEdge(dut.clk)
    for offset, value in job["dram"]["start"]:
        await host.write_dword(offset, value)
    t1 = time.perf_counter()
    if not int(dut.irq.value):
        timeout = Timer(job["timeout_cycles"] * period, "ns")
        fired = await First(RisingEdge(dut.irq), timeout)
        if fired is timeout:
            return {"status": "timeout", "load_s": t1 - t0, "sim_s": time.perf_counter() - t1,
                    "busy": int(dut.busy.value)}
    t2 = time.perf_counter()
    counters = {}
    for name in spec["counters"]:
        low = await host.read_dword(csr[name])
        high = await host.read_dword(csr[f"{name}_hi"])
        counters[name] = low | high << 32
    status = await host.read_dword(csr["STATUS"])
    error_code = await host.read_dword(csr["ERROR_CODE"])
    error_cmd = await host.read_dword(csr["ERROR_CMD"])
    words = {key: [int(memories[key][address].value) for address in range(count)]
             for key, count in job["reads"].items()}
    dram = [int(dram_mem[address].value) for address in range(job["dram"]["read"])]
    t3 = time.perf_counter()
    return {"status": "ok", "counters": counters, "error": (status >> 2) & 1,
            "error_code": error_code, "error_cmd": error_cmd, "memories": words, "dram": dram,
            "load_s": t1 - t0, "sim_s": t2 - t1, "read_s": t3 - t2}


def _write_results(spec, results) -> None:
    target = os.environ["QSIM_COSIM_RESULTS"]
    partial = f"{target}.part"
    with open(partial, "w") as f:
        json.dump({"run_id": spec["run_id"], "complete": True, "results": results}, f)
    os.replace(partial, target)
