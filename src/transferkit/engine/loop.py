"""The one training loop, on Hugging Face Accelerate.

Accelerate owns devices, processes (DDP), mixed precision and gradient accumulation; this
loop owns what transfer needs on top: AdamW with parameter groups, warm-up + cosine, early
stopping on validation accuracy with the best weights restored, an optional penalty (L2-SP),
per-epoch hooks (gradual unfreezing), a stop within one step of a NaN/inf loss, and
checkpoints that resume a killed run to the same bits.

Resuming, in short (details in ``engine/checkpoint.py`` and ``docs/SCALING.md``):

- Data order and augmentation are pure functions of (seed, stage, epoch, example)
  (``engine/data.py``), so a resumed epoch re-derives its order and skips the batches done.
- A checkpoint between optimiser steps holds the model, optimizer, scheduler, the generators
  the model draws from (dropout), the early-stopping record and the history.
- A strategy's stages are numbered by the order it calls ``fit``; on resume, ``fit`` for a
  stage that the checkpoint shows complete restores that stage's final weights, history and
  generator states instead of training, so strategy code runs unchanged.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.config import FitConfig
from transferkit.data.base import TaskData
from transferkit.engine import checkpoint as ckpt
from transferkit.engine.data import EpochSampler, SeededExamples
from transferkit.engine.launch import make_accelerator
from transferkit.engine.precision import resolve_precision
from transferkit.errors import ConfigError, NonFiniteLossError
from transferkit.features import examples_fingerprint, extract_features
from transferkit.sources.base import SourceModel
from transferkit.sources.inputs import ExampleDataset, input_pipeline
from transferkit.surgery.freezing import count_trainable
from transferkit.engine.tracking import RunTracking
from transferkit.surgery.target import DEFAULT_TASK, TargetModel

#: FitConfig fields that may change between a run and its resume (they do not change the numbers).
RESUME_MAY_CHANGE = frozenset({"checkpoint_every", "keep_checkpoints", "num_workers", "report_to", "baseline",
                               "skip_bad", "resume", "overwrite", "debug", "quiet"})


class FeatureDataset(torch.utils.data.Dataset):
    """Cached features with labels, batched as ``({"features": x}, {task: y})``."""

    #: Loading an item draws no random numbers (no per-example seeding needed).
    deterministic = True

    def __init__(self, features: torch.Tensor, labels: dict[str, torch.Tensor]) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int):
        return self.features[i], {t: y[i] for t, y in self.labels.items()}

    def collate(self, items):
        return ({"features": torch.stack([x for x, _ in items])},
                {t: torch.stack([y[t] for _, y in items]) for t in self.labels})


class HeadsOnFeatures(nn.Module):
    """The target model's heads applied to cached features (the backbone is not run)."""

    def __init__(self, model: TargetModel) -> None:
        super().__init__()
        self.heads = model.heads

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {task: head(features) for task, head in self.heads.items()}


@dataclass
class _StageState:
    """Where one ``fit`` call stands; what a checkpoint saves besides weights and optimizer."""

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
    loader_rng: torch.Tensor | None = field(default=None, repr=False)  # DataLoader generator at the epoch start


class Trainer:
    """Trains a ``TargetModel`` on a task's train split, selecting on its validation split.

    Strategies call ``fit`` (fine-tune the parameters in the given groups) and
    ``fit_heads_on_features`` (train the heads on features computed once). Every stage appends
    per-epoch rows to ``history`` and a summary to ``stages``.

    Args:
        config: The run's options (``checkpoint_every``, ``keep_checkpoints`` among them).
        task: The target data.
        source: The source model (its preprocessing builds the inputs).
        verbose: Show a progress bar (main process only).
        task_weights: Loss weight per task.
        checkpoint_dir: Where to write resumable checkpoints (``<run>/checkpoints``); None: none.
        resume: Continue from the newest valid checkpoint in ``checkpoint_dir``. With no
            checkpoint there yet, training starts from the beginning (with a warning); with
            checkpoints that all fail to verify, ``CheckpointError`` is raised.
    """

    def __init__(self, config: FitConfig, task: TaskData, source: SourceModel, *, verbose: bool = True,
                 task_weights: dict[str, float] | None = None, checkpoint_dir: str | Path | None = None,
                 resume: bool = False, run_dir: str | Path | None = None) -> None:
        from accelerate.utils import set_seed

        self.config = config
        self.task = task
        self.verbose = verbose
        self.task_weights = task_weights or {DEFAULT_TASK: 1.0}
        self.accelerator = make_accelerator(resolve_precision(config.precision), config.grad_accum)
        set_seed(config.seed)
        train_pipe = input_pipeline(source, train=True, augment=config.augment)
        eval_pipe = input_pipeline(source, train=False)
        train_labels, val_labels = task.labels_of("train"), task.labels_of("val")
        self.train_set = ExampleDataset(task.train.examples, train_labels, train_pipe)
        self.train_eval_set = ExampleDataset(task.train.examples, train_labels, eval_pipe)
        self.val_set = ExampleDataset(task.val.examples, val_labels, eval_pipe)
        self.history: list[dict] = []
        self.stages: list[dict] = []
        self.tracking = RunTracking(config.report_to, run_dir)
        self.tracking.start(self.accelerator, {**config.to_dict(), "source": source.id,
                                               "train_examples": len(task.train), "val_examples": len(task.val)})
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        #: Name of the checkpoint this run resumed from (None for a fresh start).
        self.resumed_from: str | None = None
        self._resume: ckpt.Checkpoint | None = None
        self._fingerprint = _jsonable({
            "config": {k: v for k, v in config.to_dict().items() if k not in RESUME_MAY_CHANGE},
            "processes": self.accelerator.num_processes, "source": source.id,
            "train_examples": len(task.train), "val_examples": len(task.val),
            "labels": _labels_hash(train_labels, val_labels),
            # path, size and modification time of each file (content of texts): edited data is another run
            "examples": examples_fingerprint([*task.train.examples, *task.val.examples])})
        if self.checkpoint_dir is not None:
            self._open_checkpoints(resume)
        elif resume:
            raise ConfigError("`--resume` needs the run directory that holds the checkpoints (`--out`).")

    @property
    def is_main_process(self) -> bool:
        """True on the one process that writes files and prints (always True without a launcher)."""
        return self.accelerator.is_main_process

    # -- stages ----------------------------------------------------------------------------

    def fit(self, model: nn.Module, param_groups: list[dict], *, stage: str, epochs: int | None = None,
            penalty: Callable[[nn.Module], torch.Tensor] | None = None,
            on_epoch_start: Callable[[int, nn.Module], None] | None = None,
            train_set=None, val_set=None) -> None:
        """Trains the parameters in ``param_groups`` (each with its own ``lr``) for ``epochs``."""
        cfg, acc = self.config, self.accelerator
        epochs = epochs or cfg.epochs
        index = len(self.stages)
        if self._stage_is_complete(index):
            self._restore_complete_stage(model, index, stage, on_epoch_start)
            return
        train_set = self.train_set if train_set is None else train_set
        val_set = self.val_set if val_set is None else val_set
        sampler = EpochSampler(len(train_set), cfg.seed, stream=index)
        examples = train_set if getattr(train_set, "deterministic", False) else SeededExamples(train_set, cfg.seed, index)
        loader_rng = torch.Generator().manual_seed(cfg.seed + index)
        loader = torch.utils.data.DataLoader(examples, batch_size=cfg.batch_size, sampler=sampler, drop_last=False,
                                             collate_fn=train_set.collate, generator=loader_rng,
                                             num_workers=cfg.num_workers)
        val_loader = self._eval_loader(val_set)
        groups = [g for g in param_groups if any(p.requires_grad for p in g["params"])]
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        prepared, optimizer, loader, val_loader = acc.prepare(model, optimizer, loader, val_loader)
        # The schedule counts optimiser steps of the global batch: the same for N processes with batch B
        # as for one with N·B (the scheduler is not handed to Accelerate, which would step it N times).
        steps = epochs * math.ceil(len(loader) / cfg.grad_accum)
        scheduler = warmup_cosine(optimizer.optimizer, int(cfg.warmup_ratio * steps), steps)
        trainable = count_trainable(model)
        wrapped_for = _trainable_ids(model)

        run = _StageState()
        if self._resume is not None and self._resume.position.stage == index:
            self._restore_partial_stage(run, model, optimizer, scheduler, stage, on_epoch_start)
        started = time.perf_counter() - run.elapsed
        with _progress(self.verbose and acc.is_main_process) as progress:
            bar = progress.add_task(stage, total=epochs * len(loader), completed=run.epoch * len(loader) + run.batch,
                                    status="")
            while run.epoch < epochs:
                epoch = run.epoch
                if on_epoch_start is not None and run.batch == 0:
                    on_epoch_start(epoch, model)
                prepared, wrapped_for = self._rewrap_if_trainable_changed(model, prepared, wrapped_for)
                prepared.train()
                sampler.epoch = examples.epoch = epoch
                if run.batch == 0:
                    run.loader_rng = loader_rng.get_state()
                else:  # a resumed epoch: same worker seeds as the interrupted one, done batches skipped
                    loader_rng.set_state(run.loader_rng)
                batches = acc.skip_first_batches(loader, run.batch) if run.batch else loader
                for inputs, labels in batches:
                    with acc.accumulate(prepared):
                        loss = self._loss(prepared(**inputs), labels)
                        if penalty is not None:
                            loss = loss + penalty(model)
                        self._stop_if_not_finite(loss, run, stage)
                        acc.backward(loss)
                        optimizer.step()  # Accelerate's wrapper steps only at the end of an accumulation
                        if acc.sync_gradients and not optimizer.step_was_skipped:
                            scheduler.step()
                        optimizer.zero_grad()
                    n = next(iter(labels.values())).shape[0]
                    run.batch, run.step, run.seen, run.examples = run.batch + 1, run.step + 1, run.seen + n, run.examples + n
                    run.loss_sum += loss.item() * n
                    progress.update(bar, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {run.loss_sum / run.seen:.4f}")
                    if acc.sync_gradients:
                        run.optimizer_steps += 1
                        self.tracking.log_step(stage, loss.item(), scheduler.get_last_lr()[0])
                        if (cfg.checkpoint_every and run.optimizer_steps % cfg.checkpoint_every == 0
                                and run.batch < len(loader)):
                            self._save(run, index, stage, epochs, model, optimizer, scheduler, started)
                val_loss, val_acc = self.evaluate(prepared, val_loader)
                row = {"stage": stage, "epoch": epoch + 1, "train_loss": self._mean_over_processes(run.loss_sum, run.seen),
                       "val_loss": val_loss, "val_accuracy": val_acc, "lr": scheduler.get_last_lr()[0]}
                self.history.append(row)
                self.tracking.log_epoch(row)
                progress.update(bar, status=f"epoch {epoch + 1}/{epochs} loss {row['train_loss']:.4f} "
                                            f"val_acc {val_acc:.3f}")
                stop = False
                if val_acc > run.best_accuracy or len(val_set) == 0:  # no val split: keep the latest
                    run.best_accuracy, run.best_epoch = val_acc, epoch + 1
                    run.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                elif cfg.patience and epoch + 1 - run.best_epoch >= cfg.patience:
                    stop = True
                run.epoch, run.batch, run.loss_sum, run.seen = epoch + 1, 0, 0.0, 0
                if stop:
                    break
                if run.epoch < epochs:  # the last epoch's state is the stage's `done` checkpoint
                    self._save(run, index, stage, epochs, model, optimizer, scheduler, started)
        if run.best_state is not None:
            model.load_state_dict(run.best_state)
        self._release(acc)
        seconds = time.perf_counter() - started
        self.stages.append({"stage": stage, "epochs_run": run.epoch, "best_epoch": run.best_epoch,
                            "best_val_accuracy": run.best_accuracy, "trainable_parameters": trainable,
                            "seconds": seconds,
                            "examples_per_second": run.examples * acc.num_processes / max(seconds, 1e-9)})
        self._save(run, index, stage, epochs, model, None, None, started, done=True)

    def fit_heads_on_features(self, model: TargetModel, *, stage: str = "linear_probe") -> None:
        """Trains only the heads, on shared-layer features computed once (no augmentation)."""
        heads = HeadsOnFeatures(model)
        if self._stage_is_complete(len(self.stages)):  # no need to extract features again
            self._restore_complete_stage(heads, len(self.stages), stage, None)
            return
        device = self.accelerator.device
        model.backbone.to(device)
        feats = {name: extract_features(model.backbone, ds, batch_size=self.config.batch_size * 2, device=device,
                                        num_workers=self.config.num_workers)
                 for name, ds in (("train", self.train_eval_set), ("val", self.val_set))}
        train = FeatureDataset(feats["train"], {t: torch.as_tensor(y) for t, y in self.train_set.labels.items()})
        val = FeatureDataset(feats["val"], {t: torch.as_tensor(y) for t, y in self.val_set.labels.items()})
        self.fit(heads, [{"params": list(model.heads.parameters()), "lr": self.config.probe_lr}], stage=stage,
                 epochs=self.config.probe_epochs, train_set=train, val_set=val)

    @staticmethod
    def _release(acc) -> None:
        """Forgets the stage's prepared objects. ``free_memory`` also runs ``gc.collect()``, which
        cost ~20% of a short CPU run; only an accelerator's cache is worth that."""
        if acc.device.type == "cpu":
            for prepared in (acc._models, acc._optimizers, acc._schedulers, acc._dataloaders):
                prepared.clear()
        else:
            acc.free_memory()

    # -- evaluation ----------------------------------------------------------------------------

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader) -> tuple[float, float]:
        """Validation loss and accuracy of the first task, gathered over all processes.

        A plain DataLoader is sharded across processes here; Accelerate's padding of the last
        batch is dropped again by ``gather_for_metrics``, so every example counts exactly once.
        """
        if len(loader.dataset) == 0:
            return float("nan"), 0.0
        loader = self._prepared_loader(loader)
        model.eval()
        losses, correct, count = [], 0, 0
        for inputs, labels in loader:
            logits = model(**inputs)
            task = next(iter(labels))
            logit, y = self.accelerator.gather_for_metrics((logits[task].float(), labels[task]))
            losses.append(F.cross_entropy(logit, y, reduction="sum").item())
            correct += (logit.argmax(-1) == y).sum().item()
            count += y.numel()
        return sum(losses) / count, correct / count

    @torch.inference_mode()
    def predict(self, model: nn.Module, dataset, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """Logits per task for every example of ``dataset``, in order, on the CPU of every process.

        The examples are sharded across processes and gathered back without padding.
        """
        loader = self._prepared_loader(self._eval_loader(dataset, batch_size))
        model.eval()
        chunks: dict[str, list[torch.Tensor]] = {}
        for inputs, _ in loader:
            logits = self.accelerator.gather_for_metrics({t: v.float() for t, v in model(**inputs).items()})
            for task, value in logits.items():
                chunks.setdefault(task, []).append(value.cpu())
        return {task: torch.cat(parts) for task, parts in chunks.items()}

    # -- helpers -----------------------------------------------------------------------------

    def _loss(self, logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.task_weights.get(t, 1.0) * F.cross_entropy(logits[t].float(), y) for t, y in labels.items())

    def _eval_loader(self, dataset, batch_size: int | None = None):
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size or self.config.batch_size * 2,
                                           collate_fn=dataset.collate, num_workers=self.config.num_workers,
                                           generator=torch.Generator().manual_seed(self.config.seed))

    def _prepared_loader(self, loader):
        from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard

        if isinstance(loader, (DataLoaderShard, DataLoaderDispatcher)):
            return loader
        return self.accelerator.prepare_data_loader(loader)

    def _mean_over_processes(self, total: float, count: int) -> float:
        if self.accelerator.num_processes > 1:
            sums = torch.tensor([total, float(count)], dtype=torch.float64, device=self.accelerator.device)
            total, count = self.accelerator.reduce(sums, "sum").tolist()
        return total / max(count, 1)

    def _stop_if_not_finite(self, loss: torch.Tensor, run: _StageState, stage: str) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self.accelerator.num_processes > 1:  # every process must stop at the same step
            flag = torch.tensor([float(bad)], device=self.accelerator.device)
            bad = bool(self.accelerator.reduce(flag, "sum").item())
        if bad:
            value = loss.item() if not torch.isfinite(loss.detach()).all() else "non-finite on another process"
            raise NonFiniteLossError(
                f"The training loss became {value} at step {run.step} (epoch {run.epoch + 1}, stage {stage!r}); "
                f"training stopped and no weights from this step were saved. Try a lower `--lr` (now "
                f"{self.config.lr:g}), `--precision no`, or check the inputs for NaN.")

    def _rewrap_if_trainable_changed(self, model: nn.Module, prepared: nn.Module, wrapped_for: frozenset):
        """DDP reduces only parameters that were trainable when it wrapped the model; re-wrap after unfreezing."""
        now = _trainable_ids(model)
        if now == wrapped_for or prepared is model:
            return prepared, now
        acc = self.accelerator
        acc._models = [m for m in acc._models if m is not prepared]
        return acc.prepare_model(model), now

    # -- checkpoints ---------------------------------------------------------------------------

    def _open_checkpoints(self, resume: bool) -> None:
        acc, directory = self.accelerator, self.checkpoint_dir
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
        self._resume, self.resumed_from = found, found.path.name
        acc.wait_for_everyone()  # every process has read the checkpoint before the bad ones are moved
        if acc.is_main_process:
            for path in skipped:
                ckpt.set_aside(path)
            print(f"transferkit: resuming from {found.path} ({found.position.describe()}, stage "
                  f"{found.state['stage']!r})", file=sys.stderr, flush=True)

    def _check_fingerprint(self, found: ckpt.Checkpoint) -> None:
        """Refuses a checkpoint of another run; names every option, data or process count that changed."""
        old, new = found.state.get("fingerprint", {}), self._fingerprint
        missing = object()
        defaults = _jsonable(FitConfig().to_dict())
        diffs = []
        for key in sorted(set(old) | set(new)):
            if key != "config":
                if key in old and old[key] != new.get(key, missing):  # (a key added since is not compared)
                    diffs.append("the data's files changed (a size or modification time differs)" if key == "examples"
                                 else f"{key} {old.get(key)!r} -> {new.get(key)!r}")
                continue
            a, b = old.get("config", {}), new["config"]
            for name in sorted(set(a) | set(b)):
                if name not in b:  # an option this version no longer has
                    continue
                if name not in a and b[name] == defaults.get(name, missing):  # an option added since, at its default
                    continue
                if a.get(name, missing) != b[name]:
                    diffs.append(f"`--{name.replace('_', '-')}` {a.get(name, '(not set)')!r} -> {b[name]!r}")
        if diffs:
            raise ConfigError(f"Cannot resume from {str(found.path)!r}: it belongs to a different run ("
                              + "; ".join(diffs) + "). Resume with the same options, data and number of "
                              "processes, or start over without `--resume`.")

    def _stage_is_complete(self, index: int) -> bool:
        pos = self._resume.position if self._resume is not None else None
        return pos is not None and (pos.stage > index or (pos.stage == index and pos.done))

    def _restore_complete_stage(self, model: nn.Module, index: int, stage: str,
                                on_epoch_start: Callable[[int, nn.Module], None] | None) -> None:
        """Instead of training: the stage's final weights, history and generator states from its `done` checkpoint."""
        name = ckpt.Position(index, done=True).name
        if self._resume is not None and self._resume.path.name == name:
            found = self._resume
        else:
            try:
                found = ckpt.read_checkpoint(self.checkpoint_dir / name)
            except ckpt.CheckpointError as e:
                raise ckpt.CheckpointError(
                    f"Cannot resume: stage {index} ({stage!r}) is complete but its final state is unusable: {e}. "
                    "Start over without `--resume`.") from None
        self._check_stage(found, stage)
        if on_epoch_start is not None:  # structural effects (which layers train) of the epochs it ran
            for epoch in range(found.state["stages"][index]["epochs_run"]):
                on_epoch_start(epoch, model)
        model.load_state_dict(found.tensors["model"])
        self.history, self.stages = found.state["history"], found.state["stages"]
        ckpt.set_rng_state(found.process_tensors(self.accelerator.process_index))
        if found is self._resume:
            self._resume = None
        if self.verbose and self.is_main_process:
            print(f"transferkit: stage {stage!r} was complete; restored it from {name}", file=sys.stderr, flush=True)

    def _restore_partial_stage(self, run: _StageState, model: nn.Module, optimizer, scheduler, stage: str,
                               on_epoch_start: Callable[[int, nn.Module], None] | None) -> None:
        found, self._resume = self._resume, None
        self._check_stage(found, stage)
        state, pos = found.state, found.position
        if on_epoch_start is not None:  # the hooks that ran before the checkpoint, for their structural effects
            for epoch in range(pos.epoch + (1 if pos.batch else 0)):
                on_epoch_start(epoch, model)
        model.load_state_dict(found.tensors["model"])
        optimizer.load_state_dict(ckpt.optimizer_from_tensors(found.tensors.get("optimizer", {}), state["optimizer"]))
        scheduler.load_state_dict(dict(state["scheduler"]))
        if self.accelerator.scaler is not None and state.get("grad_scaler"):
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])
        self.history, self.stages = state["history"], state["stages"]
        mine = found.process_tensors(self.accelerator.process_index)
        run.epoch, run.batch, run.step = pos.epoch, pos.batch, state["step"]
        run.optimizer_steps, run.elapsed, run.examples = state["optimizer_steps"], state["elapsed"], state["examples"]
        run.best_accuracy, run.best_epoch = state["best_val_accuracy"], state["best_epoch"]
        run.best_state = found.tensors.get("best")
        run.loss_sum, run.seen = float(mine["sums"][0]), int(mine["sums"][1])
        run.loader_rng = mine["loader_rng"].to(torch.uint8)
        self.accelerator.step = pos.batch  # gradient accumulation counts batches within the epoch
        ckpt.set_rng_state(mine)

    def _check_stage(self, found: ckpt.Checkpoint, stage: str) -> None:
        if found.state["stage"] != stage:
            raise ConfigError(f"Cannot resume from {str(found.path)!r}: its stage {found.position.stage} is "
                              f"{found.state['stage']!r} but the strategy now calls it {stage!r}. Resume with the "
                              "same `--strategy`, or start over without `--resume`.")

    def _save(self, run: _StageState, index: int, stage: str, epochs: int, model: nn.Module, optimizer, scheduler,
              started: float, done: bool = False) -> None:
        """Writes a checkpoint (main process) after checking that every weight is finite (all processes)."""
        if self.checkpoint_dir is None:
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
                f"stage {stage!r}); training stopped and no checkpoint was written. Try a lower `--lr` (now "
                f"{self.config.lr:g}) or `--precision no`.")
        local = {**ckpt.rng_state(), "sums": torch.tensor([run.loss_sum, run.seen], dtype=torch.float64)}
        if run.loader_rng is not None:
            local["loader_rng"] = run.loader_rng
        processes = self._gather_per_process(local)
        if acc.is_main_process:
            tensors = {"model": weights, "processes": processes}
            state = {"stage": stage, "stage_index": index, "epochs": epochs, "step": run.step,
                     "optimizer_steps": run.optimizer_steps, "examples": run.examples,
                     "elapsed": time.perf_counter() - started, "best_val_accuracy": run.best_accuracy,
                     "best_epoch": run.best_epoch, "history": self.history, "stages": self.stages,
                     "fingerprint": self._fingerprint, "num_processes": acc.num_processes}
            if done:
                position = ckpt.Position(index, done=True)
            else:
                position = ckpt.Position(index, epoch=run.epoch, batch=run.batch)
                opt_tensors, state["optimizer"] = ckpt.optimizer_to_tensors(optimizer.state_dict())
                tensors["optimizer"] = opt_tensors
                state["scheduler"] = scheduler.state_dict()
                if acc.scaler is not None:  # fp16 loss scaling on GPUs
                    state["grad_scaler"] = acc.scaler.state_dict()
                if run.best_state is not None:
                    tensors["best"] = run.best_state
            ckpt.write_checkpoint(self.checkpoint_dir, position, tensors, _jsonable(state))
            ckpt.prune(self.checkpoint_dir, self.config.keep_checkpoints)
        acc.wait_for_everyone()

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


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 0 at ``total`` (as transformers'
    ``get_cosine_schedule_with_warmup``, without importing transformers)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(_warmup_cosine, warmup=warmup, total=total))


def _warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _labels_hash(*label_sets: dict[str, np.ndarray]) -> str:
    import hashlib

    h = hashlib.sha256()
    for labels in label_sets:
        for name, y in sorted(labels.items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(np.asarray(y, dtype=np.int64)).tobytes())
    return h.hexdigest()[:16]


def _trainable_ids(model: nn.Module) -> frozenset:
    return frozenset(id(p) for p in model.parameters() if p.requires_grad)


def _jsonable(obj):
    """``obj`` as it reads back from JSON (tuples become lists); fails loudly on anything else."""
    return json.loads(json.dumps(obj))


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[status]}"), disable=not enabled, transient=False)
