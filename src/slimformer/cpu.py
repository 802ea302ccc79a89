"""What this CPU is: its model name, instruction-set flags and usable cores. Read once, from /proc/cpuinfo.

Everything that names the CPU beside a number (benchmarks, reports, the quantizer's choice of 7- or 8-bit
weights) asks here, so the parsing lives in one place and costs nothing in a torch-free process.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# instruction sets the benchmark records, by the /proc/cpuinfo flag that shows each
ISA_FLAGS = {
    "avx2": "avx2",
    "avx512": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx": "amx_int8",
    "avx512_bf16": "avx512_bf16",  # bf16 arithmetic: training runs under bf16 autocast (precision auto)
    "amx_bf16": "amx_bf16",
}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot-product instructions
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bfloat16 arithmetic


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def cpu_model() -> str:
    """The CPU's model name ("Intel(R) Xeon(R) Processor", "AMD EPYC 7B13", ...)."""
    return _cpuinfo()[0]


def isa_flags() -> frozenset[str]:
    """The CPU's instruction-set flags (empty when /proc/cpuinfo is unreadable)."""
    return _cpuinfo()[1]


def isa_summary() -> dict[str, bool]:
    """Which of the instruction sets in ISA_FLAGS this CPU has."""
    flags = isa_flags()
    return {name: flag in flags for name, flag in ISA_FLAGS.items()}


def has_vnni() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX)."""
    return bool(set(VNNI_FLAGS) & isa_flags())


def has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16), so bf16 training is faster."""
    return bool(set(BF16_FLAGS) & isa_flags())


def default_threads() -> int:
    """Threads to use when none are given: every core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
