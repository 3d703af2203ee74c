"""Which x86 instruction path an inference engine's int8 kernels take, and what follows for its results.

ONNX Runtime (MLAS) and PyTorch (fbgemm) pick their uint8 x int8 GEMM kernel from the CPU's
features at run time, and the kernels do not compute the same integers: without a VNNI kernel
they add pairs of u8 x s8 products in saturating int16 (``vpmaddubsw``), with one
(``vpdpbusd``) or AMX they accumulate in int32 and are exact. So "what ORT computes" is a
function of the model, the inputs **and** the instruction path. This module owns the names of
the paths, the detection of the running CPU's path, and the one question an engine's
emulation asks of a path: do u8 x s8 pairs saturate there? The arithmetic of a saturating
kernel is in :mod:`qsim.quant.hazards`.

Paths (``--isa`` on the command line, ``isa=`` in the Python API and in scenario files):

==============  ===============================================  ============  ===============
name            CPU features                                     onnxruntime   pytorch-fbgemm
==============  ===============================================  ============  ===============
``auto``        the running CPU's (:func:`detect_isa`)           that path's   that path's
``sse``         x86-64 without AVX2 (SSE2/SSE4.1 kernels)        exact         exact (fbgemm
                                                                               needs AVX2)
``avx2``        AVX2, no AVX512BW, no VNNI                       saturates     saturates
``avx512bw``    AVX512BW (Skylake-SP, Cascade Lake without       saturates     saturates
                VNNI), no VNNI
``avx-vnni``    AVX-VNNI, no AVX512 (Alder Lake and later        exact         saturates (no
                client cores)                                                  AVX-VNNI kernel)
``avx512-vnni`` AVX512-VNNI (Cascade Lake, Ice Lake, Zen 4 ...)  exact         exact
``amx-int8``    AMX-INT8 (Sapphire Rapids and later)             exact         exact (VNNI)
``exact``       no particular CPU: int32 accumulation            exact         exact
==============  ===============================================  ============  ===============

The path also selects ONNX Runtime's element-wise kernels: on ``sse`` QLinearAdd and the
logistic (QLinearSigmoid, Sigmoid) run MLAS's SSE2 code, without fused multiply-adds
(:func:`ort_fma_kernels`); every other path has AVX2 and FMA3 and runs the FMA kernels.

``avx2`` is measured for both engines (onnxruntime 1.32, torch 2.13, AMD EPYC; see
``tests/golden``); the other rows follow the engines' kernel selection in their sources
(MLAS ``platform.cpp``; fbgemm's instruction sets ``avx2``, ``avx512``, ``avx512_vnni`` and
their ``_ymm`` variants, with no AVX-VNNI kernel) and the exactness of ``vpdpbusd`` and
``tdpbusd``. Detection executes ``cpuid`` and ``xgetbv`` (the questions both engines ask),
so it also sees the CPU that an emulator such as ``qemu-x86_64 -cpu NAME`` presents; where
machine code cannot be run it falls back to ``/proc/cpuinfo`` flags.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
from functools import lru_cache
from pathlib import Path

from qsim.errors import ConfigError

__all__ = [
    "ISA_NAMES",
    "SATURATING_ISAS",
    "parse_isa",
    "resolve_isa",
    "detect_isa",
    "isa_from_flags",
    "cpu_flags",
    "u8s8_saturates",
    "check_engine",
]

#: Every accepted ``isa`` value, ``auto`` first.
ISA_NAMES = ("auto", "sse", "avx2", "avx512bw", "avx-vnni", "avx512-vnni", "amx-int8", "exact")

#: Per engine, the paths whose u8 x s8 kernels saturate pairs of products to int16.
SATURATING_ISAS = {
    "onnxruntime": frozenset({"avx2", "avx512bw"}),
    "pytorch-fbgemm": frozenset({"avx2", "avx512bw", "avx-vnni"}),
}


def parse_isa(value: object) -> str:
    """``value`` as one of :data:`ISA_NAMES` (``auto`` kept), or :class:`ConfigError`."""
    if not isinstance(value, str) or value.strip().lower() not in ISA_NAMES:
        raise ConfigError(f"isa must be one of {', '.join(ISA_NAMES)}, not {value!r}")
    return value.strip().lower()


def resolve_isa(value: object = "auto") -> str:
    """The concrete path for ``value``: ``auto`` becomes the running CPU's (:func:`detect_isa`)."""
    name = parse_isa(value)
    return detect_isa() if name == "auto" else name


def ort_fma_kernels(isa: str) -> bool:
    """Whether ONNX Runtime's element-wise kernels on ``isa`` (a concrete path) use FMA3.

    MLAS selects its AVX2/FMA3 QLinearAdd and logistic kernels when the CPU has both; a CPU
    without AVX2 (``sse``) runs the SSE2 code, whose multiplications and additions round
    separately. ``exact`` names no CPU and keeps the FMA kernels of every current x86 CPU.
    """
    return parse_isa(isa) != "sse"


def check_engine(engine: object) -> str:
    """``engine`` if it names an engine whose kernels qsim emulates (:data:`SATURATING_ISAS`),
    else :class:`ConfigError`."""
    if engine not in SATURATING_ISAS:
        raise ConfigError(f"engine must be one of {', '.join(SATURATING_ISAS)}, not {engine!r}")
    return str(engine)


def u8s8_saturates(isa: str, engine: str = "onnxruntime") -> bool:
    """Whether ``engine``'s uint8 x int8 kernels on ``isa`` (a concrete path) saturate int16 pair sums."""
    return parse_isa(isa) in SATURATING_ISAS[check_engine(engine)]


def isa_from_flags(flags: set[str] | frozenset[str]) -> str:
    """The path a CPU with these ``/proc/cpuinfo``-style feature names takes.

    VNNI or AMX-INT8 wins over everything (MLAS and fbgemm both prefer them); else AVX512BW,
    else AVX2; an x86 CPU with none of them (SSE2 is in every x86-64) is ``sse``: MLAS's
    SSE4.1 and SSE2 u8 x s8 kernels widen to 16 bits before multiplying and do not saturate.
    No x86 flag at all (another architecture) gives ``exact``.
    """
    if "amx_int8" in flags and "amx_tile" in flags:
        return "amx-int8"
    if "avx512_vnni" in flags and "avx512bw" in flags:
        return "avx512-vnni"
    if "avx_vnni" in flags:
        return "avx-vnni"
    if "avx512bw" in flags:
        return "avx512bw"
    if "avx2" in flags:
        return "avx2"
    if "sse2" in flags:
        return "sse"
    return "exact"


def _flags_from_cpuinfo(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


# cpuid(leaf, subleaf) -> (eax, ebx, ecx, edx) and xgetbv(0), as x86-64 System V functions:
#   push rbx; mov eax, edi; mov ecx, esi; mov r8, rdx; cpuid;
#   mov [r8], eax; mov [r8+4], ebx; mov [r8+8], ecx; mov [r8+12], edx; pop rbx; ret
_CPUID_CODE = bytes([
    0x53, 0x89, 0xF8, 0x89, 0xF1, 0x49, 0x89, 0xD0, 0x0F, 0xA2,
    0x41, 0x89, 0x00, 0x41, 0x89, 0x58, 0x04, 0x41, 0x89, 0x48, 0x08, 0x41, 0x89, 0x50, 0x0C,
    0x5B, 0xC3,
])
#   xor ecx, ecx; xgetbv; shl rdx, 32; or rax, rdx; ret
_XGETBV_CODE = bytes([0x31, 0xC9, 0x0F, 0x01, 0xD0, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0, 0xC3])


def _cpuid_flags() -> frozenset[str] | None:
    """Feature names from executing ``cpuid``/``xgetbv``, or ``None`` where that is impossible."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    page.write(_CPUID_CODE + bytes(64 - len(_CPUID_CODE)) + _XGETBV_CODE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(page))
    regs = (ctypes.c_uint32 * 4)()
    cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p)(base)
    xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64)(base + 64)

    def leaf(eax: int, ecx: int = 0) -> tuple[int, int, int, int]:
        cpuid(eax, ecx, ctypes.addressof(regs))
        return tuple(regs)  # type: ignore[return-value]

    flags: set[str] = set()
    top = leaf(0)[0]
    _, _, ecx1, edx1 = leaf(1)
    os_ymm = os_zmm = os_amx = False
    if edx1 & (1 << 26):
        flags.add("sse2")
    if ecx1 & (1 << 27):  # OSXSAVE: the OS saves the extended state; ask which parts
        xcr0 = xgetbv()
        os_ymm = (xcr0 & 0x6) == 0x6
        os_zmm = os_ymm and (xcr0 & 0xE0) == 0xE0
        os_amx = (xcr0 & 0x60000) == 0x60000
    if top >= 7:
        _, ebx7, ecx7, edx7 = leaf(7)
        eax71 = leaf(7, 1)[0]
        if os_ymm and ebx7 & (1 << 5):
            flags.add("avx2")
        if os_ymm and eax71 & (1 << 4):
            flags.add("avx_vnni")
        if os_zmm and ebx7 & (1 << 30):
            flags.add("avx512bw")
        if os_zmm and ecx7 & (1 << 11):
            flags.add("avx512_vnni")
        if os_amx and edx7 & (1 << 24):
            flags.add("amx_tile")
        if os_amx and edx7 & (1 << 25):
            flags.add("amx_int8")
    try:
        page.close()
    except BufferError:  # a ctypes view still exports the page: leave it to the collector
        pass
    return frozenset(flags)


def cpu_flags() -> frozenset[str]:
    """The int8-relevant feature names of the running CPU (``cpuid``, else ``/proc/cpuinfo``)."""
    flags = _cpuid_flags()
    return flags if flags is not None else _flags_from_cpuinfo()


@lru_cache(maxsize=1)
def detect_isa() -> str:
    """The instruction path ORT's and fbgemm's u8 x s8 kernels take on the running CPU."""
    return isa_from_flags(cpu_flags())
