"""Choosing a mixed-precision mode that is fast on this machine."""

from __future__ import annotations

import warnings
from pathlib import Path

#: CPU flags (``/proc/cpuinfo``) that mean bf16 matrix maths runs natively: x86 AVX512-BF16 and
#: AMX-BF16, Arm's BF16 extension (``bf16`` in the ``Features`` line).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU reports bf16 instructions.

    Args:
        cpuinfo: The text of ``/proc/cpuinfo`` (read when None; unreadable means False).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and NATIVE_BF16_FLAGS & set(value.split()):
            return True
    return False


def resolve_precision(precision: str) -> str:
    """The Accelerate ``mixed_precision`` to use for ``--precision``.

    On a GPU: fp16 as asked; bf16 where the GPU supports it (Ampere and later), else a warning
    and fp16. On a CPU: bf16 only with native support (emulated bf16 is many times slower);
    fp16 autocast is a GPU feature. Anything else falls back to fp32 with a warning.
    """
    import torch

    if precision == "no":
        return "no"
    if torch.cuda.is_available():
        if precision == "bf16" and not _gpu_has_native_bf16():
            warnings.warn("--precision bf16 is not supported by this GPU; training with fp16 instead.", stacklevel=2)
            return "fp16"
        return precision
    if precision == "bf16" and cpu_has_native_bf16():
        return "bf16"
    warnings.warn(f"--precision {precision} is not fast on this CPU (no native support); training in fp32.",
                  stacklevel=2)
    return "no"


def _gpu_has_native_bf16() -> bool:
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch: no emulation argument
        return torch.cuda.is_bf16_supported()
