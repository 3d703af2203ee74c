"""Instruction-path names, detection and the per-engine saturation table (qsim.quant.isa)."""

from __future__ import annotations

import numpy as np
import pytest

from qsim.errors import ConfigError
from qsim.quant.isa import (ISA_NAMES, _flags_from_cpuinfo, cpu_flags, detect_isa, isa_from_flags,
                            parse_isa, resolve_isa, u8s8_saturates)
from qsim.quant.kernels import qlinear_matmul


@pytest.mark.parametrize("flags, isa", [
    ("fpu sse2 avx avx2 fma", "avx2"),
    ("avx2 avx512f avx512bw", "avx512bw"),
    ("avx2 avx_vnni", "avx-vnni"),
    ("avx2 avx512f avx512bw avx512_vnni", "avx512-vnni"),
    ("avx2 avx512bw avx512_vnni avx_vnni amx_tile amx_int8", "amx-int8"),
    ("sse2 sse4_1", "sse"),
    ("fp asimd asimddp", "exact"),
])
def test_isa_from_cpu_flags(tmp_path, flags, isa):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert isa_from_flags(_flags_from_cpuinfo(cpuinfo)) == isa
    assert _flags_from_cpuinfo(tmp_path / "missing") == frozenset()


def test_cpuid_agrees_with_the_kernel_s_flags():
    """Executing cpuid/xgetbv gives the same path as the flags Linux reports for this CPU."""
    assert cpu_flags() <= _flags_from_cpuinfo() | {"avx_vnni", "amx_tile", "amx_int8"}
    assert detect_isa() == isa_from_flags(_flags_from_cpuinfo())
    assert resolve_isa("auto") == detect_isa() and resolve_isa("AVX2") == "avx2"


@pytest.mark.parametrize("isa, ort, fbgemm", [
    ("sse", False, False), ("avx2", True, True), ("avx512bw", True, True), ("avx-vnni", False, True),
    ("avx512-vnni", False, False), ("amx-int8", False, False), ("exact", False, False),
])
def test_which_engine_saturates_on_which_path(isa, ort, fbgemm):
    assert u8s8_saturates(isa, "onnxruntime") is ort
    assert u8s8_saturates(isa, "pytorch-fbgemm") is fbgemm


def test_fbgemm_has_no_avx_vnni_kernel():
    """On an AVX-VNNI CPU without AVX-512, ORT is exact but fbgemm takes its AVX2 kernel."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (8, 64)).astype(np.uint8)
    b = rng.integers(-128, 128, (64, 8)).astype(np.int8)
    args = (a, np.float32(0.02), np.uint8(128), b, np.float32(0.01), np.int8(0), np.float32(0.8), np.uint8(100))

    def ours(semantics, isa):
        return qlinear_matmul(*args, semantics=semantics, isa=isa)

    assert np.array_equal(ours("onnxruntime", "avx-vnni"), ours("onnxruntime", "exact"))
    assert np.array_equal(ours("pytorch-fbgemm", "avx-vnni"), ours("pytorch-fbgemm", "avx2"))
    assert not np.array_equal(ours("pytorch-fbgemm", "avx-vnni"), ours("pytorch-fbgemm", "exact"))
    # the other semantics are no engine's: the path is irrelevant
    assert np.array_equal(ours("onnx", "avx2"), ours("onnx", "exact"))


@pytest.mark.parametrize("value", ["avx3", "", 5, None, "auto "])
def test_bad_isa(value):
    if value == "auto ":
        assert parse_isa(value) == "auto"
        return
    with pytest.raises(ConfigError) as err:
        parse_isa(value)
    assert str(err.value) == ("isa must be one of auto, sse, avx2, avx512bw, avx-vnni, avx512-vnni, "
                              f"amx-int8, exact, not {value!r}")
    assert ISA_NAMES[0] == "auto"


def test_only_cpus_without_avx2_run_ort_s_sse2_element_wise_kernels():
    from qsim.quant.isa import ort_fma_kernels

    assert [name for name in ISA_NAMES[1:] if not ort_fma_kernels(name)] == ["sse"]


def test_bad_engine():
    with pytest.raises(ConfigError) as err:
        u8s8_saturates("avx2", "tflite")
    assert str(err.value) == "engine must be one of onnxruntime, pytorch-fbgemm, not 'tflite'"
