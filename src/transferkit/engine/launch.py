"""The Accelerator for this process, and launch lines that start fewer processes than asked.

Two launch pitfalls on machines without GPUs (Accelerate 1.x):

- ``accelerate launch --multi_gpu --num_processes N`` (or ``torchrun --nproc_per_node N``)
  starts N processes, but each one sees no GPU, decides it is alone and trains the whole data
  set: N copies of one run writing the same files. When the launcher's ``WORLD_SIZE`` is above 1
  and no GPU is present, transferkit asks Accelerate for CPU DDP (gloo) instead, so the N
  processes train one model together.
- ``accelerate launch --cpu --num_processes N``, and a config file with ``distributed_type:
  MULTI_CPU`` (without MPI), start a single process: that launcher ignores ``num_processes``.
  Nothing tells the script, so transferkit reads the launcher's command line and config file
  (Linux ``/proc``) and warns with the launch line that works.
"""

from __future__ import annotations

import json
import os
import warnings

import torch

from transferkit.errors import ConfigError


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
    """The Accelerator for training; warns when the launcher started fewer processes than asked.

    A single process may call this again with another ``mixed_precision`` (``fit`` twice in one
    Python session with different ``precision``): see ``release_precision``.

    Args:
        mixed_precision: Accelerate's ``mixed_precision`` (``"no"``, ``"bf16"``, ``"fp16"``).
        grad_accum: Batches per optimiser step.

    Returns:
        An ``accelerate.Accelerator``.

    Raises:
        ConfigError: A launched process (``WORLD_SIZE`` > 1) already has an Accelerator with
            another mixed precision.
    """
    from accelerate import Accelerator

    release_precision(mixed_precision)
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


def release_precision(mixed_precision: str) -> None:
    """Lets this process build an Accelerator with another mixed precision than an earlier one.

    Accelerate keeps one ``AcceleratorState`` per process and refuses a second Accelerator with
    another ``mixed_precision`` ("AcceleratorState has already been initialized"). In a single
    process without a launcher that state only carries the precision and plugins of the last
    Accelerator, so it is cleared (``AcceleratorState._reset_state()``); the ``PartialState``
    (device, process index) is kept. Accelerators made earlier share the state and see the new
    precision from then on; transferkit is done with them by then (one Trainer per training).
    Launched processes (``WORLD_SIZE`` > 1, or a distributed ``PartialState``) keep the state,
    which every process of the group must agree on: there the precision is fixed for the launch.

    Args:
        mixed_precision: The ``mixed_precision`` of the Accelerator about to be made.

    Raises:
        ConfigError: In a launched process whose Accelerate state has another mixed precision.
    """
    from accelerate.state import AcceleratorState, is_initialized
    from accelerate.utils import DistributedType

    if not is_initialized():
        return
    state = AcceleratorState()
    current = state.mixed_precision
    if current == mixed_precision or state.distributed_type == DistributedType.DEEPSPEED:
        return  # nothing to change (DeepSpeed takes its precision from its own config)
    if launched_processes() > 1 or state.use_distributed:
        raise ConfigError(
            f"This process already trained with mixed precision {current!r}, and a launched process "
            f"({launched_processes()} processes) cannot switch to {mixed_precision!r}: Accelerate fixes it "
            f"for the launch. Start a separate launch for the other `--precision`.")
    AcceleratorState._reset_state()


def requested_processes(parent_cmdline: list[str] | None = None, parent_cwd: str | None = None) -> int:
    """How many processes the launcher was asked for (1 if unknown).

    ``WORLD_SIZE`` when a launcher set it; otherwise, when the parent process is
    ``accelerate launch``, its ``--num_processes`` or the ``num_processes`` of its config file
    (``--config_file``, else Accelerate's default config).
    """
    if "WORLD_SIZE" in os.environ:
        return launched_processes()
    if parent_cmdline is None:
        try:
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
                parent_cmdline = f.read().decode(errors="replace").split("\0")
            parent_cwd = os.readlink(f"/proc/{os.getppid()}/cwd")
        except OSError:
            return 1
    names = [os.path.basename(a) for a in parent_cmdline]
    if not ("accelerate-launch" in names or "accelerate.commands.launch" in names
            or ("launch" in names and any(n.startswith("accelerate") for n in names))):
        return 1
    value = _flag_value(parent_cmdline, "--num_processes", "--num-processes")
    if value is None:
        value = _config_processes(_flag_value(parent_cmdline, "--config_file", "--config-file"), parent_cwd,
                                  cpu="--cpu" in parent_cmdline)
    try:
        return max(1, int(value)) if value is not None else 1
    except ValueError:
        return 1


def _flag_value(argv: list[str], *flags: str) -> str | None:
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1:]
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
    return None


def _config_processes(path: str | None, cwd: str | None, cpu: bool):
    """``num_processes`` of the Accelerate config file the launcher read (None if none)."""
    import yaml

    if path is None:
        if cpu:  # `--cpu` makes the launcher ignore the default config
            return None
        try:
            from accelerate.commands.config import default_config_file
        except ImportError:
            return None
        path = default_config_file
    full = os.path.join(cwd or "", os.path.expanduser(path))
    try:
        with open(full) as f:
            config = yaml.safe_load(f) if full.endswith((".yaml", ".yml")) else json.load(f)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return config.get("num_processes") if isinstance(config, dict) else None
