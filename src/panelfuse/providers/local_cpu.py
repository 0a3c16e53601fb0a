"""Which CPU features the local runtime may use, decided before any native code runs.

The embedded panel runs llama.cpp through xllamacpp's prebuilt wheels. On Linux x86-64 those are
compiled with GGML_NATIVE=OFF for x86-64-v3 (AVX, AVX2, FMA, F16C, BMI2) and nothing wider: no
AVX-512 and no AMX kernels are in the library, so the AMX crash (llama.cpp asks the kernel for AMX
tile permission on the main thread only, then runs AMX kernels on worker threads) cannot happen. On
ARM64 they target armv8-a, which every ARM64 CPU runs.

Two guards remain, both pure functions of what the machine and the library say:
- an x86-64 CPU older than x86-64-v3 would die on the first AVX2 instruction (SIGILL), so the
  prebuilt wheel is refused there with a clear error that says how to build a portable one;
- a library that reports AMX (a user's own native build) is loaded with llama.cpp's extra buffer
  types off (`no_extra_bufts`), the switch that keeps weights out of the AMX buffer.
"""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass
from pathlib import Path

# What xllamacpp's manylinux x86_64 wheels are compiled for (llama.cpp's defaults with GGML_NATIVE=OFF).
PREBUILT_X86_FEATURES = ("avx", "avx2", "fma", "f16c", "bmi2")

# A build for CPUs without them: every SIMD extension beyond the x86-64 baseline off; llguidance and
# BoringSSL off, since both are fetched from GitHub at configure time (llama.cpp's own grammar engine
# covers JSON schemas, and the engine's HTTP side is a private socket that needs no TLS).
PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF "
    "-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF "
    "-DLLAMA_LLGUIDANCE=OFF -DLLAMA_BUILD_BORINGSSL=OFF"
)


@dataclass(frozen=True)
class LoadOptions:
    """How a model is loaded, given what the loaded library reports (`llama_print_system_info()`)."""

    no_extra_bufts: bool

    @classmethod
    def for_system_info(cls, system_info: str) -> LoadOptions:
        # "AMX_INT8 = 1" appears only when AMX kernels were compiled in; keep weights out of their buffer.
        return cls(no_extra_bufts="AMX" in system_info.upper())


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def missing_for_prebuilt(machine: str, flags: set[str], wheel_tags: list[str]) -> list[str]:
    """The CPU features a prebuilt (manylinux) x86-64 wheel needs and this CPU lacks; [] when safe.

    `wheel_tags` are the Tag lines of the installed wheel: a local source build (tag `linux_x86_64`)
    was compiled for this machine's flags, so nothing is missing for it. Unknown flags (no
    /proc/cpuinfo) are trusted, as the wheel's own platform tag is.
    """
    if machine.lower() not in ("x86_64", "amd64") or not flags:
        return []
    if not any("manylinux" in tag for tag in wheel_tags):
        return []
    return [f for f in PREBUILT_X86_FEATURES if f not in flags]


def installed_wheel_tags(dist_name: str = "xllamacpp") -> list[str]:
    """The Tag lines of an installed distribution's WHEEL file ([] when it is not installed)."""
    try:
        wheel = importlib.metadata.distribution(dist_name).read_text("WHEEL") or ""
    except importlib.metadata.PackageNotFoundError:
        return []
    return [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]


def runtime_missing() -> list[str]:
    """What the installed runtime needs and this machine's CPU lacks (read before loading it)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return missing_for_prebuilt(platform.machine(), cpu_flags(cpuinfo), installed_wheel_tags())


def portable_build_hint(missing: list[str]) -> str:
    return (
        f"this CPU lacks {', '.join(missing)}, which the prebuilt xllamacpp wheel needs; build a portable one: "
        f"CMAKE_ARGS='{PORTABLE_CMAKE_ARGS}' pip install --force-reinstall --no-cache-dir --no-binary xllamacpp "
        "xllamacpp (scripts/bootstrap.sh does this by itself on such a CPU)"
    )
