"""Choosing a mixed-precision mode that is fast on this machine."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from transferkit.errors import ConfigError

#: CPU flags (``/proc/cpuinfo``) that mean bf16 matrix maths runs natively: x86 AVX512-BF16 and
#: AMX-BF16, Arm's BF16 extension (``bf16`` in the ``Features`` line).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
#: Where the CPU flags are read from (Linux).
CPUINFO = Path("/proc/cpuinfo")
#: Environment variable that overrides the CPU flags: ``1`` means native bf16, ``0`` none.
CPU_BF16_ENV = "TRANSFERKIT_CPU_BF16"
_ENV_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU reports bf16 instructions.

    Without ``cpuinfo``, the environment variable ``TRANSFERKIT_CPU_BF16`` decides when it is
    set: ``1`` (or ``true``, ``yes``, ``on``) treats this CPU as having native bf16, ``0`` (or
    ``false``, ``no``, ``off``) as having none, whatever ``/proc/cpuinfo`` says. This runs the
    bf16 path on any machine (slowly where bf16 is emulated), or keeps a bf16-capable machine on
    fp32, e.g. to test both sides. Unset or empty: the flags are read from ``/proc/cpuinfo``.

    Args:
        cpuinfo: The text of ``/proc/cpuinfo`` to parse; the environment variable does not
            apply to it. None: this machine's (unreadable means False).

    Raises:
        ConfigError: ``TRANSFERKIT_CPU_BF16`` is set to anything else.
    """
    if cpuinfo is None:
        forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
        if forced:
            if forced not in _ENV_VALUES:
                raise ConfigError(f"`{CPU_BF16_ENV}` must be 1 or 0 (native bf16 on this CPU or not); "
                                  f"got {os.environ[CPU_BF16_ENV]!r}. Unset it to read /proc/cpuinfo.")
            return _ENV_VALUES[forced]
        try:
            cpuinfo = CPUINFO.read_text()
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
    ``TRANSFERKIT_CPU_BF16`` overrides the CPU's flags (see ``cpu_has_native_bf16``).

    Args:
        precision: ``"no"``, ``"bf16"`` or ``"fp16"``.

    Returns:
        ``"no"``, ``"bf16"`` or ``"fp16"``.
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
