"""Sharding work across processes launched with Accelerate (``accelerate launch``, ``torchrun``).

Feature extraction for source ranking is embarrassingly parallel: each process takes one
contiguous shard of the examples, runs every source on it, and the shards are gathered back in
order on every process. A single process (the default) never imports Accelerate here: every
helper short-circuits on ``WORLD_SIZE`` (set by the launchers), so the single-process path
has no overhead at all.

Gathering moves tensors (``accelerate.utils.gather``), padded to the largest shard and
trimmed afterwards, so nothing is pickled.
"""

from __future__ import annotations

import os

import torch


def _launched() -> bool:
    """True when a launcher started several processes (``WORLD_SIZE`` > 1); no imports."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _state():
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # Without a GPU, Accelerate only forms a multi-process group when asked for the CPU
    # (`accelerate launch --cpu` sets ACCELERATE_USE_CPU); a plain `torchrun` on a CPU
    # machine should shard too. The state is shared: whoever creates it first decides.
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def num_processes() -> int:
    """How many processes share the work (1 without a launcher)."""
    return _state().num_processes if _launched() else 1


def is_distributed() -> bool:
    """True when running as one of several processes that form a process group."""
    return num_processes() > 1


def process_index() -> int:
    """This process's rank (0 without a launcher)."""
    return _state().process_index if is_distributed() else 0


def is_main_process() -> bool:
    return process_index() == 0


def device() -> torch.device:
    """The device this process should compute on: Accelerate's when distributed, else CUDA if present."""
    if is_distributed():
        return _state().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def shard_bounds(n: int, processes: int | None = None, index: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of this process's contiguous shard of ``n`` items.

    The first ``n % processes`` shards hold one item more, as in Accelerate's
    ``split_between_processes``.
    """
    processes = num_processes() if processes is None else processes
    index = process_index() if index is None else index
    base, extra = divmod(n, processes)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenates every process's shard of an ``(n_i, ...)`` tensor, in rank order.

    Args:
        local: This process's rows, as cut by :func:`shard_bounds` for ``n`` items.
        n: Total rows over all processes.

    Returns:
        The ``(n, ...)`` tensor, on the CPU, on every process (``local`` itself when single).
    """
    if not is_distributed():
        return local
    from accelerate.utils import gather

    processes = num_processes()
    sizes = [shard_bounds(n, processes, i) for i in range(processes)]
    longest = max(stop - start for start, stop in sizes)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    full = gather(padded.to(device())).cpu()
    return torch.cat([full[i * longest: i * longest + (stop - start)] for i, (start, stop) in enumerate(sizes)])


def broadcast_flags(flags: list[bool]) -> list[bool]:
    """The main process's list of booleans, on every process (so all take the same branch)."""
    if not is_distributed():
        return flags
    from accelerate.utils import broadcast

    t = torch.tensor([int(f) for f in flags] or [0], dtype=torch.int64, device=device())
    return [bool(v) for v in broadcast(t, from_process=0).cpu().tolist()][: len(flags)]


def wait_for_everyone() -> None:
    """A barrier across processes (nothing when single)."""
    if is_distributed():
        _state().wait_for_everyone()
