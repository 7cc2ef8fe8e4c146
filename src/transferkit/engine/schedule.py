"""The schedule a run leaves to transferkit: batch size and epochs, sized to the train split.

A fixed number of epochs is a different amount of training at every data size: 5 epochs of 54
examples at batch 32 are 10 optimiser steps, too few for a warm-up and a decay, let alone a new
head. So when ``--batch-size`` and ``--epochs`` are not given:

- the batch size is the train split over 8, rounded down to a power of two and kept within
  8-32 (a small set still takes several steps an epoch; 32 is where CPU throughput levels off);
- the epochs are as many as ``--min-steps`` optimiser steps need, and at least ``MIN_EPOCHS``.

``resolve_schedule`` fills them once per run (it is idempotent: given values stay).
"""

from __future__ import annotations

import dataclasses
import math

from transferkit.config import FitConfig

MIN_BATCH, MAX_BATCH = 8, 32
#: Batches an epoch aims at: the batch size is N / BATCHES_PER_EPOCH, within the bounds above.
BATCHES_PER_EPOCH = 8
MIN_EPOCHS = 3


def resolve_schedule(cfg: FitConfig, train_examples: int, processes: int = 1) -> FitConfig:
    """``cfg`` with ``batch_size`` and ``epochs`` filled for ``train_examples`` (split over ``processes``)."""
    per_process = max(1, math.ceil(train_examples / processes))
    batch = cfg.batch_size or auto_batch_size(per_process)
    epochs = cfg.epochs or max(MIN_EPOCHS, math.ceil(cfg.min_steps / steps_per_epoch(per_process, batch,
                                                                                      cfg.grad_accum)))
    if (batch, epochs) == (cfg.batch_size, cfg.epochs):
        return cfg
    return dataclasses.replace(cfg, batch_size=batch, epochs=epochs)


def auto_batch_size(examples: int) -> int:
    """``examples / 8`` rounded down to a power of two, within ``MIN_BATCH``-``MAX_BATCH``."""
    target = max(1, examples // BATCHES_PER_EPOCH)
    return min(MAX_BATCH, max(MIN_BATCH, 2 ** int(math.log2(target))))


def steps_per_epoch(examples: int, batch_size: int, grad_accum: int = 1) -> int:
    """Optimiser steps in one epoch of ``examples`` (the last, partial batch included)."""
    return math.ceil(math.ceil(examples / batch_size) / grad_accum)


def peak_lr(optimizer) -> float:
    """The highest learning rate of ``optimizer``'s groups before the schedule scaled it."""
    return max(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups)
