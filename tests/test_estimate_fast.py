"""The fast path of memory-aware estimates equals the full one, counter for counter.

The full path is the definition: :func:`qsim.compile_dram.plan_dram_gemm` writes the command
objects and :func:`qsim.timing.timing_of_commands` walks them one by one (the co-simulation
tests compare it with the RTL). The fast path, which ``qsim estimate`` uses with a bus
interface, builds the same commands as columns (:func:`qsim.compile_dram.dram_gemm_stream`)
and skips repeated stretches (:func:`qsim.timing.run_stream`); the DMA transfer costs skip
repeated stretches too (``qsim.dma``, ``skip=True``).
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from qsim import dma, timing
from qsim.compile_dram import dram_gemm_stream, plan_dram_gemm
from qsim.config import AcceleratorConfig
from qsim.errors import ProgramError
from qsim.nn.zoo import resnet50
from qsim.timing import CommandStream, timing_of_commands, timing_of_stream

RESNET50_SHAPES = sorted({(g.m, g.k, g.n) for _, g in resnet50().gemms(1)})


def _config(rows, dataflow, precision, width, latency, **changes) -> AcceleratorConfig:
    return AcceleratorConfig(rows=rows, cols=rows, dataflow=dataflow, input_format=precision,
                             weight_format=precision, dram_width=width, dram_latency=latency,
                             **changes)


def _check(config: AcceleratorConfig, m: int, k: int, n: int, requant: bool = False) -> None:
    plan = plan_dram_gemm(config, m, k, n, requant)
    stream, geometry = dram_gemm_stream(config, m, k, n, requant)
    assert (geometry.block, geometry.blocks) == (plan.block, plan.blocks)
    full_stream = CommandStream.from_commands(plan.commands[:-1])  # without the Halt
    for column in ("kind", "wait", "count", "memory", "dram_addr", "accumulate", "lanes"):
        assert np.array_equal(getattr(stream, column), getattr(full_stream, column)), column
    full = timing_of_commands(config, plan.commands, m * k * n)
    fast = timing_of_stream(config, stream, m * k * n)
    assert fast.counters() == full.counters(), (config.describe(), m, k, n, requant)
    assert fast.useful_macs == full.useful_macs == m * k * n


# every distinct ResNet-50 GEMM on these configurations (the default memories)
RESNET_CONFIGS = [
    (16, "ws", "int8", 16, 40), (16, "os", "int8", 64, 1), (16, "ws", "int4", 8, 200),
    (16, "os", "int4", 4, 40), (8, "os", "int4", 16, 200), (4, "os", "int4", 64, 1),
]


@pytest.mark.parametrize("rows,dataflow,precision,width,latency", RESNET_CONFIGS)
def test_resnet50_layers(rows, dataflow, precision, width, latency):
    config = _config(rows, dataflow, precision, width, latency)
    for m, k, n in RESNET50_SHAPES:
        _check(config, m, k, n)


@pytest.mark.parametrize("rows,dataflow,precision", list(itertools.product(
    (4, 8, 16), ("ws", "os"), ("int8", "int4"))))
def test_random_shapes(rows, dataflow, precision):
    """Random shapes on small memories (many blocks, a short last one), every bus width and
    latency, with and without requantization on chip."""
    rng = random.Random(f"{rows}{dataflow}{precision}")
    for width, latency in itertools.product((4, 8, 16, 64), (1, 40, 200)):
        config = _config(rows, dataflow, precision, width, latency,
                         act_mem_words=rng.choice((256, 1024)),
                         acc_mem_words=rng.choice((512, 2048)), weight_mem_words=1024,
                         requant=rng.choice(("none", "fixed-point", "float32")),
                         max_burst=rng.choice((2, 16, 64)), dma_outstanding=rng.choice((1, 4)))
        most = 20 * rows  # about the same number of commands on every array
        m, k, n = rng.randint(1, 400), rng.randint(1, most), rng.randint(1, most)
        for requant in (False, True) if config.requant.value != "none" else (False,):
            try:
                _check(config, m, k, n, requant)
            except ProgramError:  # does not fit: both paths refuse it alike
                with pytest.raises(ProgramError):
                    dram_gemm_stream(config, m, k, n, requant)


@pytest.mark.parametrize("constant,change", [
    ("array_latency", 5), ("buffer_release_delay", 4), ("ppu_latency", 3),
    ("os_write_latency", 6), ("os_tile_spacing", 2),
])
def test_pipeline_constants_changed(monkeypatch, constant, change):
    """The fast path follows qsim.hw's pipeline constants: with any of them changed both
    paths still agree (the timing model reads them from qsim.hw, never a copy)."""
    original = getattr(timing, constant)
    monkeypatch.setattr(timing, constant, lambda config: original(config) + change)
    for dataflow, requant in (("ws", False), ("os", False), ("ws", True), ("os", True)):
        config = _config(8, dataflow, "int8", 16, 40, requant="fixed-point",
                         act_mem_words=1024, acc_mem_words=1024)
        for m, k, n in ((300, 100, 70), (49, 260, 40), (1, 64, 100)):
            _check(config, m, k, n, requant)


def test_transfers_skip_exactly():
    """The DMA engine's cost with repeated stretches skipped equals the cycle-by-cycle walk."""
    rng = random.Random(3)
    for _ in range(120):
        width = rng.choice((4, 8, 16, 32, 64))
        burst = rng.choice((1, 2, 16, 256))
        grid = width * burst
        args = (rng.choice((1, 2, 7, 100, 900)) + rng.randint(0, 20),
                rng.choice((1, 4, 16, 64, 128, 256)) + rng.choice((0, 1, 3)), width,
                rng.randrange(0, grid, min(64, grid)) if grid >= 64 else 0,
                rng.choice((1, 2, 40, 200)), burst, rng.choice((1, 2, 4, 16)))
        for fn in (dma.load_cycles, dma.store_cycles):
            assert fn.__wrapped__(*args, skip=True) == fn.__wrapped__(*args, skip=False), args


@pytest.mark.parametrize("rows,cycles,dram_bytes", [(16, 22667976, 105454688),
                                                     (8, 84190508, 163763456)])
def test_resnet50_estimate_exact_figures(rows, cycles, dram_bytes):
    """The memory-aware ResNet-50 estimates of `qsim bench estimate` (16 x 16 and the default
    8 x 8, a 16-byte bus, 40 cycles of latency): the figures the full path gives, layer by
    layer (the 8 x 8 one walks 641,623 commands, too slow to repeat here)."""
    from qsim.nn.estimate import estimate_network

    est = estimate_network(resnet50(), _config(rows, "ws", "int8", 16, 40))
    assert (est.cycles, est.dram_bytes) == (cycles, dram_bytes)


def test_bench_estimate_lines():
    """`qsim bench estimate` prints the memory-aware figures next to the on-chip one, with a
    verdict for the 16 x 16 target only; a result without them has no such lines."""
    from qsim.bench import format_bench_estimate

    aware = {"16x16": {"estimate_s": 0.0461, "cold_s": 0.2, "cycles": 22667668,
                       "dram_bytes": 105454688, "energy_pj": 53898498531.1, "target_s": 0.5},
             "default": {"estimate_s": 0.61, "cold_s": 0.7, "cycles": 84189984,
                         "dram_bytes": 163763456, "energy_pj": 80523538922.1, "target_s": None}}
    r = {"resnet50_estimate_s": 0.0039, "resnet50_cold_s": 0.0045, "resnet50_cycles": 64181243,
         "resnet50_energy_pj": 40464900000.0, "sweep_points": 1296, "sweep_workers": 2,
         "sweep_s": 5.41, "sweep_points_per_s": 239.4, "meets_target": True,
         "machine": {"cpu": "AMD EPYC", "cores": 2, "load_avg_1min": 1.0},
         "memory_aware": aware}
    lines = format_bench_estimate(r)
    assert lines[1:3] == [
        "  memory-aware, 16x16           46.1 ms (median), first 200.0 ms; 22,667,668 cycles, "
        "105,454,688 DRAM bytes, 53,898.5 uJ; target <= 0.5 s: met",
        "  memory-aware, default 8x8     610.0 ms (median), first 700.0 ms; 84,189,984 cycles, "
        "163,763,456 DRAM bytes, 80,523.5 uJ"]
    assert lines[-1] == ("targets (estimate <= 0.5 s, memory-aware 16x16 <= 0.5 s, 1,000-point "
                         "sweep <= 120 s): met")
    del r["memory_aware"]
    lines = format_bench_estimate(r)
    assert len(lines) == 4 and "memory-aware" not in "\n".join(lines)
