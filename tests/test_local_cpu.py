"""Which CPU features the local runtime may use: pure decisions, no native code."""

from __future__ import annotations

from panelfuse.providers.local_cpu import (
    PREBUILT_X86_FEATURES,
    LoadOptions,
    cpu_flags,
    missing_for_prebuilt,
    portable_build_hint,
)

MANYLINUX = ["cp310-abi3-manylinux2014_x86_64", "cp310-abi3-manylinux_2_17_x86_64"]
V3_FLAGS = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}


def test_a_library_with_amx_is_loaded_without_extra_buffer_types() -> None:
    amx = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
    plain = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | REPACK = 1 |"
    assert LoadOptions.for_system_info(amx).no_extra_bufts is True
    assert LoadOptions.for_system_info(plain).no_extra_bufts is False


def test_cpu_flags_read_from_cpuinfo() -> None:
    text = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse avx2 fma\n\nprocessor\t: 1\nflags\t: x\n"
    assert cpu_flags(text) == {"fpu", "sse", "avx2", "fma"}
    assert cpu_flags("processor : 0\nFeatures\t: fp asimd evtstrm\n") == {"fp", "asimd", "evtstrm"}
    assert cpu_flags("") == set()


def test_an_old_x86_cpu_is_refused_by_the_prebuilt_wheel_only() -> None:
    old = {"sse", "sse2", "sse4_2", "avx"}  # Sandy Bridge: AVX but no AVX2/FMA/F16C/BMI2
    assert missing_for_prebuilt("x86_64", old, MANYLINUX) == ["avx2", "fma", "f16c", "bmi2"]
    assert missing_for_prebuilt("x86_64", V3_FLAGS, MANYLINUX) == []
    assert missing_for_prebuilt("x86_64", V3_FLAGS | {"avx512f", "amx_tile", "amx_int8"}, MANYLINUX) == []
    # a source build was compiled for this CPU; ARM64 wheels target armv8-a; unknown flags are trusted
    assert missing_for_prebuilt("x86_64", old, ["cp311-cp311-linux_x86_64"]) == []
    assert missing_for_prebuilt("aarch64", {"fp", "asimd"}, ["cp310-abi3-manylinux2014_aarch64"]) == []
    assert missing_for_prebuilt("x86_64", set(), MANYLINUX) == []


def test_the_refusal_says_how_to_build_a_portable_runtime() -> None:
    hint = portable_build_hint(["avx2", "fma"])
    assert "avx2, fma" in hint and "--no-binary xllamacpp" in hint and "-DGGML_AVX2=OFF" in hint
    assert set(PREBUILT_X86_FEATURES) >= {"avx2", "fma", "f16c"}
