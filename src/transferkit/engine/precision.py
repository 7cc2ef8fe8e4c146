"""Choosing a mixed-precision mode that is fast on this machine."""

from __future__ import annotations

import warnings
from pathlib import Path


def cpu_has_native_bf16() -> bool:
    """True when the CPU reports bf16 instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """The Accelerate ``mixed_precision`` to use for ``--precision``.

    On a CPU without native bf16, bf16 runs emulated and many times slower, so it falls back to
    fp32 with a warning; fp16 autocast is a GPU feature and falls back likewise on a CPU.
    """
    import torch

    if precision == "no" or torch.cuda.is_available():
        return precision
    if precision == "bf16" and cpu_has_native_bf16():
        return "bf16"
    warnings.warn(f"--precision {precision} is not fast on this CPU (no native support); training in fp32.",
                  stacklevel=2)
    return "no"
