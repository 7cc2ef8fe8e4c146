"""Exact resume of a run: its checkpoints, which one to continue from, and restoring a stage from it.

The training loop (``engine/loop.py``) holds one :class:`RunCheckpoints` and calls it at three
points; everything about files, fingerprints and restoring lives here (the format is in
``engine/checkpoint.py``, the user's view in ``docs/SCALING.md``):

- ``open(resume)`` when the Trainer is built: removes interrupted writes; without ``resume``
  removes an earlier run's checkpoints; with it finds the newest valid checkpoint and refuses
  one of a different run (options, data or process count changed), naming what changed.
- ``restore_complete(...)`` / ``restore_partial(...)`` when a stage starts. A strategy's stages
  are numbered by the order it calls ``fit``; a stage the checkpoint shows complete gets its
  final weights, history and generator states back instead of training, so strategy code runs
  unchanged. The stage the checkpoint is inside gets its model, optimizer, scheduler, early-
  stopping record and position back; data order and augmentation are pure functions of (seed,
  stage, epoch, example) (``engine/data.py``), so the loop re-derives the epoch's order and
  skips the batches done.
- ``save(...)`` between optimiser steps and at every epoch end and stage end.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.config import FitConfig
from transferkit.data.base import TaskData
from transferkit.engine import checkpoint as ckpt
from transferkit.engine.schedule import peak_lr
from transferkit.data.base import examples_fingerprint
from transferkit.errors import ConfigError, NonFiniteLossError

#: FitConfig fields that may change between a run and its resume (they do not change the numbers).
RESUME_MAY_CHANGE = frozenset({"checkpoint_every", "keep_checkpoints", "num_workers", "report_to", "baseline",
                               "skip_bad", "resume", "overwrite", "debug", "quiet"})


@dataclass
class StageState:
    """Where one ``fit`` call stands; what a checkpoint saves besides weights and optimizer."""

    index: int  # the stage's number in the run (the order of the strategy's ``fit`` calls)
    name: str
    epochs: int
    epoch: int = 0  # the epoch being run (0-based); equals ``epochs`` when finished
    batch: int = 0  # batches of ``epoch`` already done by this process
    step: int = 0  # batches done in the whole stage (the step named in NaN messages)
    optimizer_steps: int = 0
    best_accuracy: float = -1.0
    best_epoch: int = -1
    best_state: dict | None = None
    loss_sum: float = 0.0  # this process's sum of loss * examples in the current epoch
    seen: int = 0
    examples: int = 0  # examples trained on by this process in the whole stage
    elapsed: float = 0.0  # seconds spent before a resume
    started: float = 0.0  # ``time.perf_counter()`` at the stage's start, less ``elapsed``
    loader_rng: torch.Tensor | None = field(default=None, repr=False)  # DataLoader generator at the epoch start


def run_fingerprint(config: FitConfig, processes: int, source_id: str, task: TaskData) -> dict:
    """What must match for a checkpoint to belong to this run (options, data, process count)."""
    return jsonable({
        "config": {k: v for k, v in config.to_dict().items() if k not in RESUME_MAY_CHANGE},
        "processes": processes, "source": source_id,
        "train_examples": len(task.train), "val_examples": len(task.val),
        "labels": _labels_hash(task.labels_of("train"), task.labels_of("val")),
        # path, size and modification time of each file (content of texts): edited data is another run
        "examples": examples_fingerprint([*task.train.examples, *task.val.examples])})


class RunCheckpoints:
    """The checkpoints of one run in ``directory`` (None: the run writes none and cannot resume).

    Attributes:
        resumed_from: Name of the checkpoint this run resumed from (None for a fresh start).
    """

    def __init__(self, accelerator, directory: Path | None, config: FitConfig, fingerprint: dict, *,
                 verbose: bool = True) -> None:
        self.accelerator, self.directory, self.config = accelerator, directory, config
        self.fingerprint, self.verbose = fingerprint, verbose
        self.resumed_from: str | None = None
        self._found: ckpt.Checkpoint | None = None  # the checkpoint to resume from, until its stage restored it

    def open(self, resume: bool) -> None:
        """Clears interrupted writes; starts over (``resume`` False) or finds the checkpoint to resume from."""
        acc, directory = self.accelerator, self.directory
        if acc.is_main_process:
            for name in ckpt.clean_interrupted(directory):
                self._warn(f"Removed {name!r} in {str(directory)!r}: a checkpoint write that was interrupted "
                           "(the checkpoints before it are intact).")
        acc.wait_for_everyone()
        if not resume:
            existing = ckpt.list_checkpoints(directory)
            if existing and acc.is_main_process:
                self._warn(f"Starting a new run: removing {len(existing)} checkpoint(s) of an earlier run in "
                           f"{str(directory)!r} (pass `--resume` to continue from them instead).")
                for path in existing:
                    ckpt._discard(path)
            acc.wait_for_everyone()
            return
        found, skipped = ckpt.find_resume_point(directory, self._warn)
        if found is None:
            self._warn(f"`--resume`: no checkpoint in {str(directory)!r} yet; training from the beginning.")
            return
        self._check_fingerprint(found)
        self._found, self.resumed_from = found, found.path.name
        acc.wait_for_everyone()  # every process has read the checkpoint before the bad ones are moved
        if acc.is_main_process:
            for path in skipped:
                ckpt.set_aside(path)
            print(f"transferkit: resuming from {found.path} ({found.position.describe()}, stage "
                  f"{found.state['stage']!r})", file=sys.stderr, flush=True)

    def _check_fingerprint(self, found: ckpt.Checkpoint) -> None:
        """Refuses a checkpoint of another run; names every option, data or process count that changed."""
        old, new = found.state.get("fingerprint", {}), self.fingerprint
        missing = object()
        diffs = []
        for key in sorted(set(old) | set(new)):
            if key == "config":
                diffs += _config_changes(old.get("config", {}), new["config"])
            elif key in old and old[key] != new.get(key, missing):  # (a key added since is not compared)
                diffs.append("the data's files changed (a size or modification time differs)" if key == "examples"
                             else f"{key} {old.get(key)!r} -> {new.get(key)!r}")
        if diffs:
            raise ConfigError(f"Cannot resume from {str(found.path)!r}: it belongs to a different run ("
                              + "; ".join(diffs) + "). Resume with the same options, data and number of "
                              "processes, or start over without `--resume`.")

    # -- restoring a stage ---------------------------------------------------------------------

    def stage_is_complete(self, index: int) -> bool:
        """True when the checkpoint resumed from lies past stage ``index`` (or is its `done` state)."""
        pos = self._found.position if self._found is not None else None
        return pos is not None and (pos.stage > index or (pos.stage == index and pos.done))

    def restore_complete(self, model: nn.Module, index: int, stage: str,
                         on_epoch_start: Callable[[int, nn.Module], None] | None) -> tuple[list, list]:
        """Instead of training: the stage's final weights and generator states from its `done` checkpoint.

        Returns the run's history and stages as they stood at the end of the stage.
        """
        name = ckpt.Position(index, done=True).name
        if self._found is not None and self._found.path.name == name:
            found = self._found
        else:
            try:
                found = ckpt.read_checkpoint(self.directory / name)
            except ckpt.CheckpointError as e:
                raise ckpt.CheckpointError(
                    f"Cannot resume: stage {index} ({stage!r}) is complete but its final state is unusable: {e}. "
                    "Start over without `--resume`.") from None
        _check_stage(found, stage)
        if on_epoch_start is not None:  # structural effects (which layers train) of the epochs it ran
            for epoch in range(found.state["stages"][index]["epochs_run"]):
                on_epoch_start(epoch, model)
        model.load_state_dict(found.tensors["model"])
        ckpt.set_rng_state(found.process_tensors(self.accelerator.process_index))
        if found is self._found:
            self._found = None
        if self.verbose and self.accelerator.is_main_process:
            print(f"transferkit: stage {stage!r} was complete; restored it from {name}", file=sys.stderr, flush=True)
        return found.state["history"], found.state["stages"]

    def restore_partial(self, run: StageState, model: nn.Module, optimizer, scheduler,
                        on_epoch_start: Callable[[int, nn.Module], None] | None) -> tuple[list, list] | None:
        """Continues stage ``run.index`` where the checkpoint stopped inside it (None: not resuming it).

        Restores the model, optimizer, scheduler, gradient scaler, generators and ``run``; returns the
        run's history and stages as they stood at the checkpoint.
        """
        if self._found is None or self._found.position.stage != run.index:
            return None
        found, self._found = self._found, None
        _check_stage(found, run.name)
        state, pos, acc = found.state, found.position, self.accelerator
        if on_epoch_start is not None:  # the hooks that ran before the checkpoint, for their structural effects
            for epoch in range(pos.epoch + (1 if pos.batch else 0)):
                on_epoch_start(epoch, model)
        model.load_state_dict(found.tensors["model"])
        optimizer.load_state_dict(ckpt.optimizer_from_tensors(found.tensors.get("optimizer", {}), state["optimizer"]))
        scheduler.load_state_dict(dict(state["scheduler"]))
        if acc.scaler is not None and state.get("grad_scaler"):
            acc.scaler.load_state_dict(state["grad_scaler"])
        mine = found.process_tensors(acc.process_index)
        run.epoch, run.batch, run.step = pos.epoch, pos.batch, state["step"]
        run.optimizer_steps, run.elapsed, run.examples = state["optimizer_steps"], state["elapsed"], state["examples"]
        run.best_accuracy, run.best_epoch = state["best_val_accuracy"], state["best_epoch"]
        run.best_state = found.tensors.get("best")
        run.loss_sum, run.seen = float(mine["sums"][0]), int(mine["sums"][1])
        run.loader_rng = mine["loader_rng"].to(torch.uint8)
        acc.step = pos.batch  # gradient accumulation counts batches within the epoch
        ckpt.set_rng_state(mine)
        return state["history"], state["stages"]

    # -- writing -------------------------------------------------------------------------------

    def save(self, run: StageState, model: nn.Module, optimizer, scheduler, history: list, stages: list,
             done: bool = False) -> None:
        """Writes a checkpoint (main process) after checking that every weight is finite (all processes).

        ``done`` marks the stage's final state (weights only: no optimizer or scheduler is saved).
        """
        if self.directory is None:
            return
        acc = self.accelerator
        if acc.distributed_type.name in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
            raise ConfigError(f"Checkpoints (`--checkpoint-every`, `--resume`) support one process and DDP; this run "
                              f"uses {acc.distributed_type.name}. Leave out `--out`'s checkpoints or use DDP.")
        weights = model.state_dict()
        bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteLossError(
                f"The weights became non-finite ({', '.join(bad[:3])}) by step {run.step} (epoch {run.epoch + 1}, "
                f"stage {run.name!r}); training stopped and no checkpoint was written. Try a lower `--lr`"
                + (f" (now {peak_lr(optimizer):g})" if optimizer else "")
                + " or `--precision no`.")
        local = {**ckpt.rng_state(), "sums": torch.tensor([run.loss_sum, run.seen], dtype=torch.float64)}
        if run.loader_rng is not None:
            local["loader_rng"] = run.loader_rng
        processes = self._gather_per_process(local)
        if acc.is_main_process:
            tensors = {"model": weights, "processes": processes}
            state = {"stage": run.name, "stage_index": run.index, "epochs": run.epochs, "step": run.step,
                     "optimizer_steps": run.optimizer_steps, "examples": run.examples,
                     "elapsed": time.perf_counter() - run.started, "best_val_accuracy": run.best_accuracy,
                     "best_epoch": run.best_epoch, "history": history, "stages": stages,
                     "fingerprint": self.fingerprint, "num_processes": acc.num_processes}
            if done:
                position = ckpt.Position(run.index, done=True)
            else:
                position = ckpt.Position(run.index, epoch=run.epoch, batch=run.batch)
                self._add_optimizer_state(tensors, state, optimizer, scheduler, run.best_state)
            ckpt.write_checkpoint(self.directory, position, tensors, jsonable(state))
            ckpt.prune(self.directory, self.config.keep_checkpoints)
        acc.wait_for_everyone()

    def _add_optimizer_state(self, tensors: dict, state: dict, optimizer, scheduler, best: dict | None) -> None:
        """What a checkpoint inside a stage holds besides a `done` one: optimizer, scheduler, best weights."""
        opt_tensors, state["optimizer"] = ckpt.optimizer_to_tensors(optimizer.state_dict())
        tensors["optimizer"] = opt_tensors
        state["scheduler"] = scheduler.state_dict()
        if self.accelerator.scaler is not None:  # fp16 loss scaling on GPUs
            state["grad_scaler"] = self.accelerator.scaler.state_dict()
        if best is not None:
            tensors["best"] = best

    def _gather_per_process(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"<rank>.<name>": tensor}`` for every process (tensors only: nothing is pickled)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return {f"0.{k}": v for k, v in local.items()}
        out = {}
        for name, value in sorted(local.items()):
            rows = acc.gather(value.reshape(1, -1).to(acc.device)).cpu()
            out.update({f"{rank}.{name}": rows[rank] for rank in range(acc.num_processes)})
        return out

    def _warn(self, message: str) -> None:
        if self.accelerator.is_main_process:
            warnings.warn(message, stacklevel=3)


def _config_changes(old: dict, new: dict) -> list[str]:
    """The options that differ, as ``--flag old -> new`` (options added or removed since are allowed)."""
    missing = object()
    defaults = jsonable(FitConfig().to_dict())
    diffs = []
    for name in sorted(set(old) | set(new)):
        if name not in new:  # an option this version no longer has
            continue
        if name not in old and new[name] == defaults.get(name, missing):  # an option added since, at its default
            continue
        if old.get(name, missing) != new[name]:
            diffs.append(f"`--{name.replace('_', '-')}` {old.get(name, '(not set)')!r} -> {new[name]!r}")
    return diffs


def _check_stage(found: ckpt.Checkpoint, stage: str) -> None:
    if found.state["stage"] != stage:
        raise ConfigError(f"Cannot resume from {str(found.path)!r}: its stage {found.position.stage} is "
                          f"{found.state['stage']!r} but the strategy now calls it {stage!r}. Resume with the "
                          "same `--strategy`, or start over without `--resume`.")


def _labels_hash(*label_sets: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for labels in label_sets:
        for name, y in sorted(labels.items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(np.asarray(y, dtype=np.int64)).tobytes())
    return h.hexdigest()[:16]


def jsonable(obj):
    """``obj`` as it reads back from JSON (tuples become lists); fails loudly on anything else."""
    return json.loads(json.dumps(obj))
