"""Data order and augmentation as pure functions of (seed, stage, epoch, example).

Two small pieces make training reproducible across restarts, process counts and DataLoader
workers, with no generator state to carry around:

- ``EpochSampler``: the order of epoch ``e`` of stage ``s`` is ``randperm(n)`` drawn from a
  generator seeded with ``(seed, s, e)``. A resumed run re-derives it; Accelerate shards it
  across processes (process ``p`` of ``N`` takes batches ``p, p + N, ...``), so ``N``
  processes with batch ``B`` see exactly the global batches of one process with batch ``N·B``.
- ``SeededExamples``: loading example ``i`` in epoch ``e`` runs under its own seed (Python,
  NumPy and torch's CPU generator are seeded, then restored), so a random crop does not
  depend on which process or worker loads the example, on prefetching, or on what ran before.

The global generators are therefore used only by the model itself (dropout, stochastic depth),
one step after another, and a checkpoint that saves them between steps resumes exactly.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def example_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (``seed, stage, epoch, index``)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSampler(torch.utils.data.Sampler[int]):
    """A shuffled order that depends only on ``(seed, stream, epoch)``; set ``epoch`` before iterating.

    The epoch attribute is deliberately not called ``set_epoch``: Accelerate calls
    ``set_epoch`` with its own iteration counter, which restarts at 0 for a resumed loader.
    """

    def __init__(self, length: int, seed: int, stream: int = 0) -> None:
        self.length, self.seed, self.stream, self.epoch = length, seed, stream, 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(example_seed(self.seed, self.stream, self.epoch))
        return iter(torch.randperm(self.length, generator=generator).tolist())


class SeededExamples(torch.utils.data.Dataset):
    """Wraps a dataset so that loading example ``i`` in ``epoch`` uses its own random seed."""

    def __init__(self, dataset, seed: int, stream: int = 0) -> None:
        self.dataset, self.seed, self.stream, self.epoch = dataset, seed, stream, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        seed = example_seed(self.seed, self.stream, self.epoch, i)
        saved = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.random.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's stay untouched
        try:
            return self.dataset[i]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.default_generator.set_state(saved[2])

    def collate(self, items):
        return self.dataset.collate(items)
