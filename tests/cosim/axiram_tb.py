"""cocotb test module: the accelerator's DMA engine against cocotbext-axi's ``AxiRam``.

Run by tests/cosim/test_axiram.py on a Verilator build of the bare accelerator (``qsim_top``,
no DRAM model, clock driven from here). The AXI4 master port ``mem__*`` is served by
``cocotbext.axi.AxiRam`` and the register port ``csr__*`` is driven by qsim's
:class:`qsim.cocotb.QsimDriver` (``AxiLiteMaster``), whose DRAM handle is the AxiRam.

Every program's DRAM image goes into the AxiRam, the host starts it through the registers,
and once ``irq`` rises the test checks, exactly: no error (STATUS, ERROR_CODE), the final DRAM
bytes and the decoded outputs against :func:`qsim.model.execute` (and ``a @ b``), nothing
written outside the program's footprint, and every counter that does not depend on the
memory's timing against :func:`qsim.timing.simulate_timing`. Cycles are only recorded: AxiRam
has its own timing, not the DRAM model's.

Inputs (environment): ``QSIM_AXIRAM_CONFIG`` (the configuration as JSON),
``QSIM_AXIRAM_SHAPES`` (JSON list of ``[m, k, n]``), ``QSIM_AXIRAM_SEED`` and
``QSIM_AXIRAM_REPORT`` (where a JSON summary of each run is written).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
from pathlib import Path

import cocotb
import numpy as np
from cocotb.types import LogicArray
from cocotbext.axi import AxiBus, AxiRam

from qsim.cocotb import STATUS_BUSY, STATUS_DONE, STATUS_ERROR, QsimDriver, error_name
from qsim.compile_dram import compile_gemm_dram
from qsim.config import AcceleratorConfig
from qsim.model import execute
from qsim.timing import simulate_timing

CLOCK_NS = 10
MEM_PREFIX = "mem_"  # mem__araddr, ...: Amaranth names the ports <member>__<signal>
CSR_PREFIX = "csr_"

#: Counters that count work, not cycles: the same whatever the memory's timing.
WORK_COUNTERS = ("act_reads", "weight_reads", "acc_reads", "acc_writes", "matmuls",
                 "requants", "act_writes", "ppu_outputs", "loads", "stores",
                 "dram_reads", "dram_writes")

#: The AXI ID signals: cocotbext-axi requires them, the accelerator's master has none
#: (AXI4 makes them optional; an absent ID is 0).
ID_SIGNALS = ("awid", "bid", "arid", "rid")


class _TiedOff:
    """An ID pin the master does not have: reads as 0, and whatever the slave drives on it
    must be 0 (the ID of the request it answers)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __len__(self) -> int:
        return 1

    @property
    def value(self) -> LogicArray:
        return LogicArray("0")

    @value.setter
    def value(self, value) -> None:
        self.setimmediatevalue(value)

    def setimmediatevalue(self, value) -> None:
        if isinstance(value, LogicArray) and not value.is_resolvable:
            return  # the initial X a source puts on its outputs
        assert int(value) == 0, f"{self._name}: the slave answered with ID {int(value)}"


class _WithIds:
    """``dut`` as cocotbext-axi's bus lookup sees it, plus tied-off ID pins under ``prefix``."""

    def __init__(self, dut, prefix: str) -> None:
        self._dut = dut
        self._extra = {f"{prefix}_{name}": _TiedOff(name) for name in ID_SIGNALS}
        self._name = dut._name
        self._log = dut._log

    def __dir__(self):
        return [*dir(self._dut), *self._extra]

    def __getattr__(self, name: str):
        extra = self.__dict__.get("_extra", {})
        if name in extra:
            return extra[name]
        return getattr(self.__dict__["_dut"], name)


class _RamWords:
    """The AxiRam as :class:`QsimDriver` sees a DRAM handle: ``ram[i].value`` is the
    ``width``-byte word at byte address ``i * width``, little-endian."""

    def __init__(self, ram: AxiRam, width: int) -> None:
        self.ram = ram
        self.width = width

    def __getitem__(self, index: int) -> _RamWord:
        return _RamWord(self, int(index))


class _RamWord:
    def __init__(self, words: _RamWords, index: int) -> None:
        self.words = words
        self.index = index

    @property
    def value(self) -> int:
        w = self.words.width
        return int.from_bytes(self.words.ram.read(self.index * w, w), "little")

    @value.setter
    def value(self, word: int) -> None:
        w = self.words.width
        self.words.ram.write(self.index * w, int(word).to_bytes(w, "little"))


class AxiRules:
    """Watches the master's side of the AXI4 port at every rising edge and records what breaks
    the protocol (AMBA AXI A3.2.1: once VALID is high it stays high, its payload unchanged,
    until READY; a burst stays inside 4 KiB; addresses are aligned to the beat size) and what
    the traffic was (bursts, beats, most read bursts in flight)."""

    PAYLOAD = {"ar": ("araddr", "arlen", "arsize", "arburst"),
               "aw": ("awaddr", "awlen", "awsize", "awburst"),
               "w": ("wdata", "wstrb", "wlast")}

    def __init__(self, dut, prefix: str, width: int) -> None:
        self.pins = {name: getattr(dut, f"{prefix}_{name}")
                     for names in self.PAYLOAD.values() for name in names}
        for ch in ("ar", "aw", "w", "r", "b"):
            for sig in ("valid", "ready"):
                self.pins[ch + sig] = getattr(dut, f"{prefix}_{ch}{sig}")
        self.pins["rlast"] = getattr(dut, f"{prefix}_rlast")
        self.clk = dut.clk
        self.width = width
        self.errors: list[str] = []
        self.bursts = {"ar": 0, "aw": 0}
        self.beats = {"r": 0, "w": 0}
        self.max_reads_open = 0
        self.cycle = 0

    def _value(self, name: str) -> int:
        return int(self.pins[name].value)

    async def watch(self) -> None:
        from cocotb.triggers import RisingEdge

        held: dict[str, tuple] = {}
        reads_open = 0
        edge = RisingEdge(self.clk)
        while True:
            await edge
            self.cycle += 1
            for ch, names in self.PAYLOAD.items():
                valid, ready = self._value(ch + "valid"), self._value(ch + "ready")
                payload = tuple(self._value(n) for n in names)
                if ch in held and not valid:
                    self.errors.append(f"cycle {self.cycle}: {ch}valid fell before {ch}ready")
                elif ch in held and payload != held[ch]:
                    self.errors.append(f"cycle {self.cycle}: {ch} payload changed while "
                                       f"waiting: {held[ch]} -> {payload}")
                held.pop(ch, None)
                if valid and not ready:
                    held[ch] = payload
                if valid and ready:
                    if ch == "w":
                        self.beats["w"] += 1
                        continue
                    addr, length, size, burst = payload
                    self.bursts[ch] += 1
                    nbytes = (length + 1) << size
                    if 1 << size != self.width or burst != 1:
                        self.errors.append(f"cycle {self.cycle}: {ch} size {size} burst {burst}")
                    if addr % (1 << size) or (addr & 0xFFF) + nbytes > 0x1000:
                        self.errors.append(f"cycle {self.cycle}: {ch} burst of {nbytes} bytes "
                                           f"at {addr:#x} unaligned or across 4 KiB")
                    if ch == "ar":
                        reads_open += 1
            if self._value("rvalid") and self._value("rready"):
                self.beats["r"] += 1
                reads_open -= self._value("rlast")
            self.max_reads_open = max(self.max_reads_open, reads_open)


def _programs(cfg: AcceleratorConfig, shapes, seed: int):
    rng = np.random.default_rng(seed)
    for i, (m, k, n) in enumerate(shapes):
        a = rng.integers(-128, 128, size=(m, k))
        b = rng.integers(-128, 128, size=(k, n))
        yield compile_gemm_dram(cfg, a, b, name=f"axiram{i}_{m}x{k}x{n}"), a, b


async def _run_programs(dut, stalls: bool) -> list[dict]:
    cfg = AcceleratorConfig.from_json(os.environ["QSIM_AXIRAM_CONFIG"])
    shapes = json.loads(os.environ["QSIM_AXIRAM_SHAPES"])
    seed = int(os.environ["QSIM_AXIRAM_SEED"])

    ram = AxiRam(AxiBus.from_prefix(_WithIds(dut, MEM_PREFIX), MEM_PREFIX), dut.clk, dut.rst,
                 size=cfg.dram_capacity)
    for channel in (ram.write_if, ram.read_if):  # one INFO line per burst otherwise
        channel.log.setLevel(logging.WARNING)
    if stalls:  # the slave holds each channel's ready (or valid) low in 40 % of the cycles
        pick = random.Random(seed)
        for channel in (ram.read_if.ar_channel, ram.read_if.r_channel, ram.write_if.aw_channel,
                        ram.write_if.w_channel, ram.write_if.b_channel):
            channel.set_pause_generator(itertools.cycle([pick.random() < 0.4
                                                         for _ in range(pick.randrange(50, 100))]))
    driver = QsimDriver(dut, cfg, clock=CLOCK_NS, prefix=CSR_PREFIX,
                        dram=_RamWords(ram, cfg.dram_width))
    rules = AxiRules(dut, MEM_PREFIX, cfg.dram_width)
    cocotb.start_soon(rules.watch())
    await driver.reset(4)
    assert await driver.read_register("ID") == 0x7153494D

    runs = []
    for program, a, b in _programs(cfg, shapes, seed):
        model = execute(program)
        timing = simulate_timing(program)
        expected = timing.counters()
        footprint = program.dram_footprint()
        ram.write(0, bytes(cfg.dram_capacity))  # nothing left from the previous program
        bursts, beats = dict(rules.bursts), dict(rules.beats)
        rules.max_reads_open = 0
        await driver.load(program)
        result = await driver.run(program, timeout_cycles=8 * expected["cycles"] + 5000)

        name = program.name
        assert not result.error and result.error_code == 0, (
            f"{name}: STATUS {result.status:#x}, ERROR_CODE {result.error_code} "
            f"({error_name(result.error_code)}) at command {result.error_cmd:#x}")
        assert result.status & (STATUS_BUSY | STATUS_DONE | STATUS_ERROR) == STATUS_DONE, \
            f"{name}: STATUS {result.status:#x}"
        got_dram = bytes(ram.read(0, footprint))
        want_dram = bytes(model.dram)
        bad = [i for i in range(footprint) if got_dram[i] != want_dram[i]]
        assert not bad, (f"{name}: {len(bad)} of {footprint} DRAM bytes differ from the model, "
                         f"first at {bad[0]:#x}: {got_dram[bad[0]]:#04x} "
                         f"(expected {want_dram[bad[0]]:#04x})")
        assert bytes(ram.read(footprint, cfg.dram_capacity - footprint)) == \
            bytes(cfg.dram_capacity - footprint), f"{name}: a write outside the footprint"
        assert set(result.outputs) == set(model.outputs), name
        for key, want in model.outputs.items():
            np.testing.assert_array_equal(result.outputs[key], want, err_msg=f"{name}: {key}")
        np.testing.assert_array_equal(result.outputs["C"], a @ b, err_msg=f"{name}: C")
        work = {key: result.counters[key] for key in WORK_COUNTERS}
        assert work == {key: expected[key] for key in WORK_COUNTERS}, (
            f"{name}: counters {work}, the timing model's "
            f"{ {key: expected[key] for key in WORK_COUNTERS} }")
        assert work["dram_reads"] == timing.dram_bytes["read"], name
        assert work["dram_writes"] == timing.dram_bytes["written"], name
        assert work["dram_writes"] > 0 and work["stores"] > 0, name

        assert not rules.errors, f"{name}: AXI rules broken: {rules.errors[:5]}"
        bursts = {ch: rules.bursts[ch] - bursts[ch] for ch in bursts}
        beats = {ch: rules.beats[ch] - beats[ch] for ch in beats}
        assert beats == {"r": work["dram_reads"] // cfg.dram_width,
                         "w": work["dram_writes"] // cfg.dram_width}, (name, beats)
        plan = program.meta["dram_plan"]
        runs.append({"name": name, "shape": [int(x) for x in a.shape] + [int(b.shape[1])],
                     "commands": len(program.commands), "row_blocks": plan.blocks,
                     "rtl_cycles": result.cycles, "model_cycles": expected["cycles"],
                     "dram_reads": work["dram_reads"], "dram_writes": work["dram_writes"],
                     "loads": work["loads"], "stores": work["stores"],
                     "read_bursts": bursts["ar"], "write_bursts": bursts["aw"],
                     "max_reads_in_flight": rules.max_reads_open})
        dut._log.info("%s%s: %d cycles under AxiRam (timing model at latency %d: %d), "
                      "%d bytes read in %d bursts, %d written in %d", name,
                      " (stalls)" if stalls else "", result.cycles,
                      cfg.dram_latency, expected["cycles"], work["dram_reads"], bursts["ar"],
                      work["dram_writes"], bursts["aw"])
    return runs


def _report(test: str, runs: list[dict]) -> None:
    path = os.environ.get("QSIM_AXIRAM_REPORT")
    if not path:
        return
    report = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    report[test] = runs
    Path(path).write_text(json.dumps(report, indent=1))


@cocotb.test()
async def gemms_against_axiram(dut):
    """The programs against a plain AxiRam (ready whenever it can take a transfer)."""
    _report("gemms_against_axiram", await _run_programs(dut, stalls=False))


@cocotb.test()
async def gemms_against_axiram_with_stalls(dut):
    """The same programs with the AxiRam stalling every channel at random."""
    _report("gemms_against_axiram_with_stalls", await _run_programs(dut, stalls=True))
