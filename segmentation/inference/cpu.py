"""What the CPU computes natively, from /proc/cpuinfo: chooses the CPU variants' arithmetic.

* bf16 (``avx512_bf16``, ``amx_bf16``): OpenVINO runs the fp32 export in bf16 at about twice
  ONNX Runtime's fp32 speed (segmentation.inference.openvino_backend);
* an int8 dot product without saturation (``avx512_vnni``, ``avx_vnni``, ``amx_int8``): ONNX
  Runtime's u8 x s8 kernels use ``VPDPBUSD`` there. Without it (AVX2, AVX-512 without VNNI) they
  use ``VPMADDUBSW``, whose 16-bit intermediate sums saturate, and an int8 model with signed
  weights loses accuracy (the ONNX Runtime and OpenVINO quantisation guides describe it; measured
  here: mask Dice against fp32 0.975 instead of >= 0.99). Unsigned weights (u8 x u8) do not
  saturate (segmentation.inference.quantize picks them on such CPUs).
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
#: /proc/cpuinfo flags of x86 CPUs that compute bf16 natively (AVX512-BF16; AMX tiles).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: /proc/cpuinfo flags of x86 CPUs with an int8 dot product that does not saturate (VNNI; AMX).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags of the first ``flags`` line of ``cpuinfo`` (default: read /proc/cpuinfo).

    Returns an empty set where there is no such file or line (not Linux, not x86).
    """
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 natively: ``avx512_bf16`` or ``amx_bf16`` among its flags.

    Args:
        cpuinfo: Text in /proc/cpuinfo's format (default: read /proc/cpuinfo).
    """
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)


def cpu_has_int8_dot(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has a non-saturating int8 dot product: VNNI or AMX-INT8 among its flags.

    Args:
        cpuinfo: Text in /proc/cpuinfo's format (default: read /proc/cpuinfo).
    """
    return bool(cpu_flags(cpuinfo) & INT8_DOT_FLAGS)


__all__ = ["CPUINFO", "INT8_DOT_FLAGS", "NATIVE_BF16_FLAGS", "cpu_flags", "cpu_has_int8_dot", "cpu_has_native_bf16"]
