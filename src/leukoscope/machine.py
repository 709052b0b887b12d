"""A description of the machine, recorded beside every measured number."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})
"""CPU flags of instructions that multiply and add int8 values in one step (x86 VNNI and AMX,
Arm's dot product). Without one, x86 int8 kernels add pairs of products in 16 bits, which
8-bit weights overflow, and gain less: on the 2-core AMD EPYC with AVX2 only, the two released
7-bit int8 exports ran 1.22-1.27 times as fast as fp32 end to end in ONNX Runtime
(``benchmarks/results/inference-epyc-avx2-imports.json``)."""


def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text(errors="replace") if path.exists() else ""


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


REPORTED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
)
"""Instruction sets on which the speed of fp32, bf16 and int8 inference (and so the ranking of
ONNX Runtime and OpenVINO) depends."""


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags; None where /proc/cpuinfo says nothing about them."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def has_int8_dot_product() -> bool | None:
    """Whether the CPU has int8 dot-product instructions; None where /proc/cpuinfo says
    nothing about its flags."""
    flags = cpu_flags()
    return None if flags is None else not INT8_DOT_PRODUCT_FLAGS.isdisjoint(flags)


def has_bf16_matrix_units() -> bool:
    """Whether the CPU has AMX bf16 tile instructions, on which OpenVINO computes bfloat16
    about twice as fast as fp32 (False where /proc/cpuinfo says nothing)."""
    return "amx_bf16" in (cpu_flags() or ())


def cpu_cores() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def platform_name() -> str:
    """The operating system and architecture, e.g. ``Linux-6.1.0-x86_64-with-glibc2.36``, as
    :func:`platform.platform` names them but without starting a process: that asks ``uname -p``
    for the processor, and a process forked from one running OpenVINO's threads crashed
    (SIGSEGV) while a benchmark described the machine."""
    libc, version = platform.libc_ver()
    name = f"{platform.system()}-{platform.release()}-{platform.machine()}"
    return f"{name}-with-{libc}{version}" if libc else name


def describe_machine() -> dict[str, Any]:
    """CPU, cores usable by this process, accelerator, and library versions."""
    import torch  # here, not at the top: the predictor asks for the CPU's flags without torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "int8_dot_product": has_int8_dot_product(),
    }
    flags = cpu_flags()
    if flags is not None:
        info["cpu_flags"] = {flag: flag in flags for flag in REPORTED_FLAGS}
    return info
