"""Verification components for your own cocotb testbenches of an accelerator with a bus
interface (``config.dram_width > 0``).

* :class:`QsimDriver` drives the accelerator as a host would: the program's DRAM image goes
  into the DRAM model's memory, ``CMD_BASE``, ``CMD_COUNT`` and ``CTRL`` are written over the
  AXI4-Lite register port (``cocotbext.axi.AxiLiteMaster``), ``irq`` is awaited, and the
  counters, ``STATUS``, ``ERROR_CODE`` and ``ERROR_CMD`` are read back over the same port.
* :class:`Scoreboard` holds what the bit-accurate model (:func:`qsim.model.execute`) and the
  timing model (:func:`qsim.timing.simulate_timing`) expect of one program and checks a
  result against it, exactly.
* :func:`run_tests` runs test modules against the cached Verilator build of the DRAM bench
  (:func:`qsim.cosim.build.ensure_build`) with cocotb's runner.

cocotb and cocotbext-axi are imported only when a driver is made, so the scoreboard works
without a simulator. docs/dram.md shows a regression written with these.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from qsim.config import AcceleratorConfig
from qsim.errors import ConfigError, SimulationError
from qsim.hw import COUNTERS, csr_map
from qsim.program import ERROR_CODES, DmaFault, Program

if TYPE_CHECKING:
    from qsim.cosim.build import CosimBuild

__all__ = ["QsimDriver", "RunResult", "Scoreboard", "ScoreboardMismatch", "CocotbRun",
           "run_tests", "DEFAULT_DRAM_PATH", "error_name"]

#: Where :class:`QsimDriver` finds the DRAM model's storage array, from the test's ``dut``
#: (the harness ``qsim_harness``: ``dut`` is the bench, ``dram`` the DRAM model).
DEFAULT_DRAM_PATH = "dut.dram.dram_mem.mem"

#: STATUS bits.
STATUS_BUSY, STATUS_DONE, STATUS_ERROR = 1, 2, 4

_ERROR_NAMES = {code: name for name, code in ERROR_CODES.items()}


def error_name(code: int) -> str:
    """The key of :data:`qsim.program.ERROR_CODES` for an ``ERROR_CODE`` value."""
    return _ERROR_NAMES.get(int(code), f"unknown ({int(code)})")


@dataclass
class RunResult:
    """What :meth:`QsimDriver.run` read back after one program.

    ``counters`` are read over the bus (48 bits, low and high halves), ``error`` is STATUS
    bit 2, ``dram`` the DRAM bytes ``0 .. program.dram_footprint() - 1`` and ``outputs`` the
    program's ``dram_outputs`` decoded from them. ``sim_time_ns`` is the simulated time
    from the first register write to ``irq``; ``wall_s`` the host time of the whole run.
    """

    name: str
    counters: dict[str, int]
    status: int
    error: bool
    error_code: int
    error_cmd: int
    dram: bytes
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    sim_time_ns: float = 0.0
    wall_s: float = 0.0

    @property
    def cycles(self) -> int:
        return self.counters.get("cycles", -1)

    @property
    def error_name(self) -> str:
        return error_name(self.error_code)


class QsimDriver:
    """Host-side driver of a DRAM bench in a cocotb test.

    Parameters
    ----------
    dut
        The test's top-level handle (qsim's harness, or your own with the same pins).
    config : AcceleratorConfig
        The configuration the simulated design was built for (``dram_width > 0``).
    clock : float, optional
        Clock period in ns. ``None``: the harness generates the clock itself (qsim's
        harness, :data:`qsim.cosim.harness.CLOCK_PERIOD_NS`); a number: the driver starts a
        :class:`cocotb.clock.Clock` of that period on ``clk``.
    prefix : str
        Prefix of the AXI4-Lite pins (``s_axil_awaddr``, ...).
    dram : str or handle
        The DRAM model's storage array: a handle, or a dotted path from ``dut``
        (:data:`DEFAULT_DRAM_PATH`).
    clk, rst, irq : str
        Names of the clock, the active-high reset and the interrupt pins on ``dut``.
    quiet : bool
        Log the AXI4-Lite master's transactions only at WARNING and above (cocotbext-axi
        logs every access at INFO otherwise).
    """

    def __init__(self, dut, config: AcceleratorConfig, clock: float | None = None,
                 prefix: str = "s_axil", dram=DEFAULT_DRAM_PATH, *, clk: str = "clk",
                 rst: str = "rst", irq: str = "irq", quiet: bool = True) -> None:
        import logging

        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        from qsim.cosim.harness import CLOCK_PERIOD_NS

        if not config.has_dram:
            raise ConfigError("QsimDriver needs a configuration with a bus interface (dram_width)")
        self.dut = dut
        self.config = config
        self.clk = getattr(dut, clk)
        self.rst = getattr(dut, rst)
        self.irq = getattr(dut, irq)
        self.period_ns = float(CLOCK_PERIOD_NS if clock is None else clock)
        if clock is not None:
            from cocotb import start_soon
            from cocotb.clock import Clock

            start_soon(Clock(self.clk, self.period_ns, unit="ns").start())
        self.dram = self._resolve(dram) if isinstance(dram, str) else dram
        self.registers = csr_map()
        if quiet:  # cocotbext-axi's logger, named after the top level and the prefix
            logging.getLogger(f"cocotb.{dut._name}.{prefix}").setLevel(logging.WARNING)
        self.bus = AxiLiteMaster(AxiLiteBus.from_prefix(dut, prefix), self.clk, self.rst)
        if quiet:
            for channel in (self.bus.write_if, self.bus.read_if):
                channel.log.setLevel(logging.WARNING)

    def _resolve(self, path: str):
        handle = self.dut
        for name in path.split("."):
            handle = getattr(handle, name)
        return handle

    async def reset(self, cycles: int = 2) -> None:
        """Hold ``rst`` high for ``cycles`` clock cycles (``start`` low if the pin exists)."""
        from cocotb.triggers import FallingEdge

        self.rst.value = 1
        if hasattr(self.dut, "start"):
            self.dut.start.value = 0
        for _ in range(cycles):
            await FallingEdge(self.clk)
        self.rst.value = 0

    # registers ---------------------------------------------------------------------------
    def _offset(self, name: str) -> int:
        try:
            return self.registers[name]
        except KeyError:
            raise KeyError(f"no register {name!r}; registers: {', '.join(self.registers)}") from None

    async def read_register(self, name: str) -> int:
        """Read one 32-bit register by its name in :func:`qsim.hw.csr_map` (a counter's
        ``<name>`` is its low half, ``<name>_hi`` the high one)."""
        return int(await self.bus.read_dword(self._offset(name)))

    async def write_register(self, name: str, value: int) -> None:
        await self.bus.write_dword(self._offset(name), int(value) & 0xFFFFFFFF)

    async def read_counter(self, name: str) -> int:
        """A whole counter (both halves)."""
        return await self.read_register(name) | await self.read_register(f"{name}_hi") << 32

    # DRAM --------------------------------------------------------------------------------
    async def load(self, program: Program) -> None:
        """Write ``program``'s DRAM image (program, inputs; zeros between them) into the
        DRAM model's memory from address 0; nothing else is touched."""
        from qsim.cosim.dram import dram_words

        self._check(program)
        for address, word in enumerate(dram_words(program)):
            self.dram[address].value = word

    def read_dram(self, nbytes: int) -> bytes:
        """DRAM bytes ``0 .. nbytes - 1``, read from the DRAM model's memory."""
        from qsim.cosim.dram import dram_bytes_from_words

        width = self.config.dram_width
        words = [int(self.dram[i].value) for i in range(-(-nbytes // width))]
        return dram_bytes_from_words(words, width)[:nbytes]

    def _check(self, program: Program) -> None:
        if program.config != self.config:
            raise ConfigError(f"{program.name}: the program is for another configuration than "
                              "the driver's")

    # a run -------------------------------------------------------------------------------
    async def run(self, program: Program, timeout_cycles: int | None = None) -> RunResult:
        """Start ``program`` (already :meth:`load`-ed) over the bus, wait for ``irq`` and read
        everything back.

        Sets the DRAM model's ``dram_latency`` input (if the design has it) to
        ``config.dram_latency``, writes ``CMD_BASE``, ``CMD_COUNT`` and ``CTRL = 1``, waits
        at most ``timeout_cycles`` (default: twice the timing model's cycles plus 1000)
        and raises :class:`~qsim.errors.SimulationError` if ``irq`` does not rise.
        """
        from cocotb.triggers import FallingEdge, First, RisingEdge, Timer
        from cocotb.utils import get_sim_time

        from qsim.cosim.dram import start_writes

        self._check(program)
        if timeout_cycles is None:
            from qsim.timing import simulate_timing

            timeout_cycles = 2 * simulate_timing(program).cycles + 1000
        t0 = time.perf_counter()
        if hasattr(self.dut, "dram_latency"):
            self.dut.dram_latency.value = self.config.dram_latency
        await FallingEdge(self.clk)
        start_ns = get_sim_time("ns")
        for offset, value in start_writes(program):
            await self.bus.write_dword(offset, value)
        if not int(self.irq.value):
            timeout = Timer(timeout_cycles * self.period_ns, "ns")
            if await First(RisingEdge(self.irq), timeout) is timeout:
                status = await self.read_register("STATUS")
                raise SimulationError(f"{program.name}: irq did not rise within {timeout_cycles} "
                                      f"cycles (STATUS {status:#x})")
        sim_ns = get_sim_time("ns") - start_ns
        counters = {name: await self.read_counter(name) for name in COUNTERS}
        status = await self.read_register("STATUS")
        error_code = await self.read_register("ERROR_CODE")
        error_cmd = await self.read_register("ERROR_CMD")
        dram = self.read_dram(program.dram_footprint())
        outputs = program.dram_outputs_from(dram)
        return RunResult(name=program.name, counters=counters, status=status,
                         error=bool(status & STATUS_ERROR), error_code=error_code,
                         error_cmd=error_cmd, dram=dram, outputs=outputs, sim_time_ns=sim_ns,
                         wall_s=time.perf_counter() - t0)


class ScoreboardMismatch(AssertionError):
    """A result that differs from the model; ``problems`` lists every difference found."""

    def __init__(self, name: str, problems: list[str]) -> None:
        super().__init__(f"{name}: {len(problems)} difference(s) from the model:\n  "
                         + "\n  ".join(problems))
        self.problems = problems


class Scoreboard:
    """What the models expect of ``program``, computed once.

    ``expected_outputs`` (the ``dram_outputs`` and ``outputs`` of the bit-accurate model),
    ``expected_dram`` (the final DRAM image) and ``expected_counters`` (the timing model's
    counters, ``cycles`` included). A program the model stops at a faulting LOAD/STORE
    (:class:`qsim.program.DmaFault`) is expected to end with ``error`` set and that
    command's ``ERROR_CODE``/``ERROR_CMD``; its outputs, DRAM and counters are not checked.
    """

    #: How many differing elements or bytes a message lists per output.
    SHOW = 5

    def __init__(self, program: Program) -> None:
        from qsim.model import execute
        from qsim.timing import simulate_timing

        self.program = program
        self.fault: DmaFault | None = None
        self.expected_outputs: dict[str, np.ndarray] = {}
        self.expected_dram: bytes | None = None
        self.expected_counters: dict[str, int] = {}
        try:
            model = execute(program)
        except DmaFault as fault:
            self.fault = fault
            return
        self.expected_outputs = dict(model.outputs)
        if model.dram is not None:  # its DRAM outputs are in model.outputs already
            self.expected_dram = bytes(model.dram)
        self.expected_counters = dict(simulate_timing(program).counters())

    @property
    def expected_cycles(self) -> int | None:
        return self.expected_counters.get("cycles")

    def mismatches(self, result) -> list[str]:
        """Every difference of ``result`` (a :class:`RunResult`, or anything with
        ``counters``, ``outputs``, ``dram``, ``error``, ``error_code``, ``error_cmd``, such
        as :class:`qsim.cosim.result.RtlResult`) from the expectation; empty if it agrees."""
        problems: list[str] = []
        code = int(getattr(result, "error_code", 0) or 0)
        cmd = int(getattr(result, "error_cmd", 0) or 0)
        if self.fault is not None:
            want_code = ERROR_CODES[self.fault.code]
            want_cmd = self.fault.command & 0xFFFFFFFF
            if not result.error:
                problems.append(f"error: expected the run to stop with {self.fault.code} "
                                f"({self.fault}), it ended without error")
            if (code, cmd) != (want_code, want_cmd):
                problems.append(f"ERROR_CODE/ERROR_CMD: expected {want_code} ({self.fault.code}) "
                                f"at command {want_cmd:#x}, got {code} ({error_name(code)}) at "
                                f"command {cmd:#x}")
            return problems
        if result.error or code:
            problems.append(f"error: expected none, got STATUS error={int(bool(result.error))}, "
                            f"ERROR_CODE {code} ({error_name(code)}), ERROR_CMD {cmd:#x}")
        for name, want in self.expected_outputs.items():
            got = result.outputs.get(name)
            if got is None:
                problems.append(f"output {name}: missing from the result")
                continue
            got = np.asarray(got)
            if got.shape != want.shape:
                problems.append(f"output {name}: shape {got.shape}, expected {want.shape}")
                continue
            bad = np.argwhere(got != want)
            if len(bad):
                shown = ", ".join(
                    f"{name}[{', '.join(str(int(i)) for i in idx)}] = {int(got[tuple(idx)])} "
                    f"(expected {int(want[tuple(idx)])})" for idx in bad[: self.SHOW])
                more = f" and {len(bad) - self.SHOW} more" if len(bad) > self.SHOW else ""
                problems.append(f"output {name}: {len(bad)} of {want.size} elements differ: "
                                f"{shown}{more}")
        if self.expected_dram is not None:
            want = self.expected_dram
            got = bytes(result.dram or b"")
            got = got[: len(want)].ljust(len(want), b"\0")
            bad = [i for i in range(len(want)) if want[i] != got[i]]
            if bad:
                shown = ", ".join(f"{i:#x}: {got[i]:#04x} (expected {want[i]:#04x})"
                                  for i in bad[: self.SHOW])
                more = f" and {len(bad) - self.SHOW} more" if len(bad) > self.SHOW else ""
                problems.append(f"DRAM: {len(bad)} of {len(want)} bytes differ: {shown}{more}")
        for name, want in self.expected_counters.items():
            got = result.counters.get(name)
            if got != want:
                what = "cycles" if name == "cycles" else f"counter {name}"
                delta = f", {got - want:+d}" if got is not None else ""
                problems.append(f"{what}: {got} (expected {want}{delta})")
        return problems

    def check(self, result) -> None:
        """Raise :class:`ScoreboardMismatch` (an ``AssertionError``, so cocotb fails the
        test) listing every difference; return None if ``result`` agrees exactly."""
        problems = self.mismatches(result)
        if problems:
            raise ScoreboardMismatch(self.program.name, problems)


# running test modules ----------------------------------------------------------------------
@dataclass
class CocotbRun:
    """Outcome of :func:`run_tests`: test counts from cocotb's JUnit file and the files."""

    tests: int
    failed: int
    results_xml: Path
    log: Path
    build: CosimBuild
    wall_s: float

    @property
    def passed(self) -> int:
        return self.tests - self.failed


def run_tests(config: AcceleratorConfig, *modules: str | os.PathLike, test_dir=None,
              check: bool = True, extra_env: dict[str, str] | None = None,
              testcase: str | Sequence[str] | None = None) -> CocotbRun:
    """Run cocotb test ``modules`` against qsim's Verilator build of ``config`` (built once,
    then cached; see :func:`qsim.cosim.build.ensure_build`).

    Each module is a Python file (its folder goes on the simulator's ``PYTHONPATH``) or an
    importable module name. The top level is qsim's harness (``qsim_harness``: ``clk``,
    ``rst``, ``irq``, ``dram_latency``, the ``s_axil_*`` pins; ``dut`` is the bench).
    ``test_dir`` (default: the current folder) receives ``results.xml`` and ``sim.log``.
    With ``check`` a failed test or simulator is a :class:`~qsim.errors.SimulationError`.
    """
    from cocotb_tools.check_results import get_results

    from qsim.cosim.build import _verilator_runner, ensure_build, log_tail
    from qsim.cosim.harness import HARNESS_NAME

    if not modules:
        raise ValueError("run_tests needs at least one test module")
    names, paths = [], []
    for module in modules:
        text = os.fspath(module)
        if text.endswith(".py") or os.sep in text:
            path = Path(text).resolve()
            if not path.is_file():
                raise ConfigError(f"no test module {path}")
            names.append(path.stem)
            paths.append(str(path.parent))
        else:
            names.append(text)
    t0 = time.perf_counter()
    build = ensure_build(config)
    test_dir = Path.cwd() if test_dir is None else Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    junit = test_dir / "results.xml"
    log = test_dir / "sim.log"
    junit.unlink(missing_ok=True)  # never report an older run
    runner = _verilator_runner()
    search = list(dict.fromkeys(paths)) + sys.path
    runner.qsim_env = {"PYTHONPATH": os.pathsep.join(search), **(extra_env or {})}
    failure = None
    try:
        runner.test(hdl_toplevel=HARNESS_NAME, hdl_toplevel_lang="verilog", test_module=names,
                    build_dir=build.sim_build, test_dir=test_dir, log_file=log,
                    results_xml=str(junit), testcase=testcase)
    except (RuntimeError, SystemExit) as exc:
        failure = f"the simulator failed ({exc})"
    try:
        tests, failed = get_results(junit)
    except (RuntimeError, OSError, ValueError, SyntaxError):
        tests, failed = 0, 0
        failure = failure or "the simulation wrote no results"
    run = CocotbRun(tests=tests, failed=failed, results_xml=junit, log=log, build=build,
                    wall_s=time.perf_counter() - t0)
    if check and (failure or failed or not tests):
        why = failure or (f"{failed} of {tests} tests failed" if tests else "no tests ran")
        raise SimulationError(f"{why}; last lines of {log}:\n{log_tail(log, 40)}")
    return run
