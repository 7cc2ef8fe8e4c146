"""The Accelerator for this process, and launch lines that start fewer processes than asked.

Two launch pitfalls on machines without GPUs (Accelerate 1.x):

- ``accelerate launch --multi_gpu --num_processes N`` (or ``torchrun --nproc_per_node N``)
  starts N processes, but each one sees no GPU, decides it is alone and trains the whole data
  set: N copies of one run writing the same files. When the launcher's ``WORLD_SIZE`` is above 1
  and no GPU is present, transferkit asks Accelerate for CPU DDP (gloo) instead, so the N
  processes train one model together.
- ``accelerate launch --cpu --num_processes N`` starts a single process (the ``--cpu``
  launcher ignores ``--num_processes``). Nothing tells the script, so transferkit reads the
  launcher's command line (Linux ``/proc``) and warns with the launch line that works.
"""

from __future__ import annotations

import os
import warnings

import torch


def launched_processes() -> int:
    """``WORLD_SIZE`` as set by ``accelerate launch`` / ``torchrun`` (1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def needs_cpu_backend() -> bool:
    """True when several processes were launched on a machine without a GPU (DDP must use gloo)."""
    return launched_processes() > 1 and not torch.cuda.is_available()


def partial_state():
    """Accelerate's ``PartialState``, created with the same CPU rule as the Trainer's Accelerator."""
    from accelerate import PartialState

    return PartialState(cpu=needs_cpu_backend())


def is_main_process() -> bool:
    """True on the process that writes files and prints (rank 0; always True for one process)."""
    return partial_state().is_main_process


_warned: list[int] = []  # warn once per process, not once per Trainer


def make_accelerator(mixed_precision: str, grad_accum: int):
    """The Accelerator for training; warns when the launcher started fewer processes than asked."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                              cpu=needs_cpu_backend())
    requested = requested_processes()
    if accelerator.is_main_process and requested > accelerator.num_processes and not _warned:
        _warned.append(requested)
        warnings.warn(
            f"The launcher was asked for {requested} processes but this run has {accelerator.num_processes}: "
            f"`accelerate launch --cpu --num_processes {requested}` starts a single process. To train with "
            f"{requested} processes on CPUs, run `accelerate launch --multi_gpu --num_processes {requested} "
            f"-m transferkit fit ...` (without GPUs transferkit uses DDP over gloo) or `torchrun "
            f"--nproc_per_node {requested} -m transferkit fit ...`.", stacklevel=3)
    return accelerator


def requested_processes(parent_cmdline: list[str] | None = None) -> int:
    """How many processes the launcher was asked for: ``WORLD_SIZE``, else the parent's
    ``accelerate launch ... --num_processes N`` (1 if unknown)."""
    if "WORLD_SIZE" in os.environ:
        return launched_processes()
    if parent_cmdline is None:
        try:
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
                parent_cmdline = f.read().decode(errors="replace").split("\0")
        except OSError:
            return 1
    names = [os.path.basename(a) for a in parent_cmdline]
    if not ("accelerate-launch" in names or "accelerate.commands.launch" in names
            or ("launch" in names and any(n.startswith("accelerate") for n in names))):
        return 1
    for i, arg in enumerate(parent_cmdline):
        for flag in ("--num_processes", "--num-processes"):
            value = arg[len(flag) + 1:] if arg.startswith(flag + "=") else (
                parent_cmdline[i + 1] if arg == flag and i + 1 < len(parent_cmdline) else None)
            if value is not None:
                try:
                    return max(1, int(value))
                except ValueError:
                    return 1
    return 1
