"""Facts about the generated hardware that the RTL, the timing model, the cosim harnesses and
the docs share: counter names, memory instance names and every pipeline latency.

Each fact is defined here once. :mod:`rtl` builds the hardware from these numbers (a pipeline
is as deep as the latency named here, a counter port is named as listed here), :mod:`qsim.timing`
predicts cycles with the same numbers, and the co-simulation harnesses read counters and
memories by the names listed here. A change here changes all of them together; the
cycle-exact co-simulation tests catch any part that does not follow.
"""

from __future__ import annotations

from qsim.config import AcceleratorConfig, Dataflow, RequantMode

__all__ = [
    "COUNTERS", "COUNTER_BITS", "COUNTER_HELP", "memory_names", "buffer_release_delay",
    "array_latency", "array_input_bits", "ppu_stages", "ppu_latency", "PPU_SATURATE",
    "is_output_stationary", "os_tile_spacing", "os_write_latency", "write_meta_delay",
    "CSR_REGISTERS", "CSR_COUNTER_BASE", "csr_map", "CSR_ID", "DMA_COUNTERS",
    "OPERAND_READ_LATENCY", "CMD_FETCH_LATENCY", "ACC_READ_STAGES", "pe_product_stages",
]

#: Cycles from an activation- or weight-memory read to its word in a register that feeds
#: the array: the block RAM's synchronous read, then a register (the RAM's output is slow
#: on FPGAs: 5.8 ns clock-to-output on an ECP5 at speed grade 6, so nothing computes on it).
OPERAND_READ_LATENCY = 2

#: Cycles from the fetcher's first command-memory read to the first command being decodable:
#: the synchronous read, then the fetch register the controller decodes. The fetcher reads
#: ahead (the read data is a second queue entry), so later commands still follow their
#: predecessor's take by one cycle.
CMD_FETCH_LATENCY = 2

#: Stages of the accumulator write-back: the read of the word a row adds to, a register on
#: the read data, then the add and the write. Rows writing a word in the two cycles before
#: have their sums forwarded instead of the (older) memory word.
ACC_READ_STAGES = 2

#: Value of the ``ID`` register ("qSIM" in ASCII).
CSR_ID = 0x7153494D

#: The control/status registers of the AXI4-Lite interface, 32 bits each:
#: ``name: (byte offset, access, meaning)``. Counter ``i`` of :data:`COUNTERS` follows at
#: ``CSR_COUNTER_BASE + 8 * i`` (low 32 bits) and ``+ 4`` (high bits). docs/dram.md prints
#: this table; the RTL decodes it and the drivers address it from here.
CSR_REGISTERS = {
    "ID": (0x00, "ro", f"{CSR_ID:#010x} ('qSIM')"),
    "CTRL": (0x04, "wo", "write 1 to bit 0: start (ignored while busy)"),
    "STATUS": (0x08, "ro", "bit 0 busy, bit 1 done, bit 2 error"),
    "ERROR_CODE": (0x0C, "ro", "why the last run stopped: 0 none, 1 unknown opcode, 2 DRAM "
                               "error response, 3 misaligned DRAM address, 4 bad program length"),
    "ERROR_CMD": (0x10, "ro", "index of the command that stopped the run (0xffffffff: the "
                              "program fetch at start)"),
    "CMD_BASE": (0x14, "rw", "DRAM byte address of command word 0"),
    "CMD_COUNT": (0x18, "rw", "command words fetched into the command memory at start"),
    "ARRAY": (0x1C, "ro", "rows (bits 0-7), cols (8-15), bus bytes (16-23), int4 (bit 24), "
                          "output-stationary (bit 25)"),
}
CSR_COUNTER_BASE = 0x40


def csr_map() -> dict[str, int]:
    """Byte offset of every register, counters included (``<name>`` and ``<name>_hi``)."""
    out = {name: offset for name, (offset, _, _) in CSR_REGISTERS.items()}
    for i, name in enumerate(COUNTERS):
        out[name] = CSR_COUNTER_BASE + 8 * i
        out[f"{name}_hi"] = CSR_COUNTER_BASE + 8 * i + 4
    return out

#: Width of every performance counter.
COUNTER_BITS = 48

#: Performance counters, in port order, with what each counts while ``busy``. All are
#: cleared by ``start``. :meth:`qsim.timing.TimingResult.counters` predicts every one.
COUNTER_HELP = {
    "cycles": "busy cycles",
    "act_reads": "activation-memory words read (one per streamed row)",
    "weight_reads": "weight-memory words read (one per weight-tile row; output-stationary: one "
                    "per streamed step)",
    "acc_reads": "accumulator words read (accumulating rows and post-processing reads)",
    "acc_writes": "accumulator words written",
    "matmuls": "MATMUL commands executed",
    "requants": "REQUANT commands executed",
    "act_writes": "activation-memory words written by the post-processing unit",
    "ppu_outputs": "elements requantized and written by the post-processing unit",
    "wait_array": "cycles a fetched MATMUL or HALT waits for the weight loader, the stream "
                  "slot or a weight buffer (output-stationary: the stream slot)",
    "wait_drain": "cycles a fetched REQUANT waits for earlier MATMULs to finish writing",
    "wait_ppu": "cycles a fetched command waits for the post-processing unit to finish",
    "loads": "LOAD commands executed",
    "stores": "STORE commands executed",
    "dram_reads": "bytes read from DRAM (data beats times the bus width; the program fetch "
                  "at start included)",
    "dram_writes": "bytes written to DRAM (data beats times the bus width)",
    "dma_busy": "cycles the DMA engine is busy (the program fetch at start included)",
    "wait_dma": "cycles a fetched command waits for the DMA engine: a LOAD/STORE while "
                "another runs, a command with wait while LOAD/STOREs run, a REQUANT while a "
                "LOAD writes the activation memory",
}
COUNTERS = tuple(COUNTER_HELP)
#: The counters of the bus interface (always zero without one, ``dram_width`` 0).
DMA_COUNTERS = ("loads", "stores", "dram_reads", "dram_writes", "dma_busy", "wait_dma")

#: Largest magnitude the post-processing unit keeps before adding the zero point and
#: clamping; any larger result clamps the same way (zero points and bounds are 9-bit).
PPU_SATURATE = 1023


def memory_names(config: AcceleratorConfig) -> dict[str, str]:
    """Instance names of the memories inside the top module, keyed like the Program's memories.

    In exported Verilog each is a ``qsim_sram`` macro whose storage array
    (:data:`rtl.sram.SRAM_ARRAY`) testbenches load. The three parameter memories of the
    post-processing unit exist only when ``config.requant`` is not ``none``.
    """
    names = {"act": "act_mem", "weight": "weight_mem", "acc": "acc_mem", "cmd": "cmd_mem"}
    if config.requant is not RequantMode.NONE:
        names.update({"bias": "bias_mem", "scale": "scale_mem", "qctl": "qctl_mem"})
    return names


def buffer_release_delay(config: AcceleratorConfig) -> int:
    """Cycles after a tile's last issue before its weight buffer may be reloaded.

    The last activation of a tile reaches PE (r, c) ``L + r + c`` cycles after its issue
    (``L`` = :data:`OPERAND_READ_LATENCY`); the loader writes row ``r`` of a buffer
    ``1 + L + r`` cycles after taking the command, visible one cycle later. The write must not
    become visible before the last use in column C - 1. Weights and activations have the same
    read latency, so it cancels.
    """
    return max(config.cols - 3, 0)


def pe_product_stages(config: AcceleratorConfig) -> int:
    """Register stages between a PE's multiplier and its adder: 1 in the weight-stationary PE
    (:class:`rtl.pe.ProcessingElement`), 0 in the output-stationary one."""
    return 0 if is_output_stationary(config) else 1


def array_latency(config: AcceleratorConfig) -> int:
    """Weight-stationary: cycles from an activation-memory read to the accumulator write of
    its row, ``R + C + 2``.

    Two cycles of read latency (:data:`OPERAND_READ_LATENCY`), then ``R + C - 1`` for every
    row ``r`` and column ``c`` (``r`` cycles of input skew, ``R - 1 - r`` down the columns
    to the bottom of the array, ``c`` across and ``C - 1 - c`` of deskew), one more for the
    PE's product register (:func:`pe_product_stages`), ending in the cycle of the
    write-back's write stage.
    """
    return config.rows + config.cols + OPERAND_READ_LATENCY - 1 + pe_product_stages(config)


def is_output_stationary(config: AcceleratorConfig) -> bool:
    return config.dataflow is Dataflow.OUTPUT_STATIONARY


def os_tile_spacing(config: AcceleratorConfig) -> int:
    """Output-stationary: the least number of cycles between the last issues of two
    consecutive MATMULs, ``R``.

    A finished tile is copied from its PE accumulators into the column drain registers in one
    cycle per column, and the drain registers need ``R`` cycles to shift its ``R`` rows out
    of the top of the array; it is also the number of accumulator words a tile writes, one
    per cycle. The streamer holds a tile back (``wait`` between tiles) until its last issue
    keeps this distance.
    """
    return config.rows


def os_write_latency(config: AcceleratorConfig) -> int:
    """Output-stationary: cycles from a MATMUL's last activation/weight issue to the
    accumulator write of its first output row (row ``j`` is written ``j`` cycles later):
    ``R + C + 2``.

    Two cycles of read latency (:data:`OPERAND_READ_LATENCY`), ``R - 1`` cycles of skew to
    the bottom row, ``c`` across to column ``c``, one register to the column's drain load, one
    to the top drain register, ``C - 1 - c`` of deskew; the write-back's write stage is that
    cycle.
    """
    return config.rows + config.cols + OPERAND_READ_LATENCY


def write_meta_delay(config: AcceleratorConfig) -> int:
    """Depth of the metadata pipeline from the controller to the write-back's read stage.

    Weight-stationary: a row issued at ``s`` is written at ``s + array_latency``, its
    metadata enters at ``s`` and the write stage follows the read stage by
    :data:`ACC_READ_STAGES` cycles: ``array_latency - 2``. Output-stationary: the controller's
    drain engine emits a tile's first row one cycle after the last issue, so
    ``os_write_latency - 3``. Both are ``R + C - 1``.
    """
    if is_output_stationary(config):
        return os_write_latency(config) - 1 - ACC_READ_STAGES
    return array_latency(config) - ACC_READ_STAGES


def array_input_bits(config: AcceleratorConfig) -> int:
    """Width of one activation element inside the array: the memory's plus one bit, so that
    a MATMUL with ``act_unsigned`` feeds uint values zero-extended and others sign-extended
    into the same signed multipliers (9 x 8 bits at int8, 5 x 4 at int4)."""
    return config.input_format.bits + 1


def ppu_stages(config: AcceleratorConfig) -> int:
    """Register stages of the post-processing unit's datapath (0 without a unit).

    ``fixed-point``: (bias add, multiply), (rounding shift, zero point, clamp).
    ``float32``: (bias add, int32 to float32 rounding), (significand product),
    (float32 rounding, rounding to integer, zero point, clamp).
    """
    return {RequantMode.NONE: 0, RequantMode.FIXED_POINT: 2, RequantMode.FLOAT32: 3}[config.requant]


def ppu_latency(config: AcceleratorConfig) -> int:
    """Cycles from a post-processing accumulator read to the activation write of its row."""
    return 1 + ppu_stages(config)


def csr_table_markdown() -> str:
    """The register map as the Markdown table docs/dram.md shows (a test keeps them equal):
    :data:`CSR_REGISTERS`, then the low and high halves of every counter of :data:`COUNTERS`."""
    rows = ["| Offset | Register | Access | Meaning |", "| --- | --- | --- | --- |"]
    for name, (offset, access, meaning) in CSR_REGISTERS.items():
        rows.append(f"| `{offset:#04x}` | `{name}` | {access} | {meaning} |")
    for i, name in enumerate(COUNTERS):
        offset = CSR_COUNTER_BASE + 8 * i
        rows.append(f"| `{offset:#04x}` | `{name}` | ro | counter bits 0-31: {COUNTER_HELP[name]} |")
        rows.append(f"| `{offset + 4:#04x}` | `{name}_hi` | ro | counter bits 32-{COUNTER_BITS - 1} |")
    return "\n".join(rows)
