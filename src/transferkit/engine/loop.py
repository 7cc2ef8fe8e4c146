"""The one training loop, on Hugging Face Accelerate.

Accelerate owns devices, processes (DDP), mixed precision and gradient accumulation; this
loop owns what transfer needs on top: AdamW with parameter groups, warm-up + cosine, early
stopping on validation accuracy with the best weights restored, an optional penalty (L2-SP),
per-epoch hooks (gradual unfreezing), a stop within one step of a NaN/inf loss, an optional
wall-clock deadline (``Trainer(deadline=...)``: the stage stops at the first optimiser step past it,
its schedule re-planned to the steps that fit), and checkpoints that resume a killed run to the same bits.

One stage (one ``fit`` call) reads top to bottom: prepare the loaders, optimizer and schedule
(``_prepare_stage``); run epochs of steps (``_train_epoch``, ``_step``); evaluate, record and
stop early at each epoch end (``_end_epoch``); restore the best weights and record the stage
(``_finish_stage``). Resuming is ``engine/resume.py``'s: the loop asks it at a stage's start
whether to restore instead of train, and hands it the state to save (``_save``).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.config import FitConfig
from transferkit.data.base import TaskData
from transferkit.engine.data import EpochSampler, SeededExamples
from transferkit.engine.extract import extract_features
from transferkit.engine.launch import make_accelerator
from transferkit.engine.precision import resolve_precision
from transferkit.engine.progress import Stage
from transferkit.engine.probe import fit_linear_head, validation_is_meaningful
from transferkit.engine.schedule import peak_lr, resolve_schedule
from transferkit.engine.resume import RunCheckpoints, StageState, run_fingerprint
from transferkit.engine.tracking import RunTracking
from transferkit.errors import ConfigError, NonFiniteLossError
from transferkit.sources.base import SourceModel
from transferkit.sources.inputs import ExampleDataset, input_pipeline
from transferkit.surgery.freezing import count_trainable
from transferkit.surgery.target import DEFAULT_TASK, TargetModel


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
class _Stage:
    """What one ``fit`` call trains with: the model, and its loaders and optimizer as Accelerate prepared them."""

    model: nn.Module
    prepared: nn.Module  # ``model`` as Accelerate wrapped it (DDP); re-wrapped when the trainable set changes
    wrapped_for: frozenset  # the trainable parameters when it was wrapped
    trainable: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    val_set: torch.utils.data.Dataset
    sampler: EpochSampler
    examples: torch.utils.data.Dataset
    loader_rng: torch.Generator
    penalty: Callable[[nn.Module], torch.Tensor] | None
    on_epoch_start: Callable[[int, nn.Module], None] | None
    keep_norm_stats: bool = False  # BatchNorm layers normalise with their running statistics, left as they are
    show: Callable[..., None] = lambda **_: None  # updates the progress bar
    planned_steps: int = 0  # optimiser steps of the stage's schedule as planned (epochs x steps per epoch)
    schedule_steps: int = 0  # where the warm-up + cosine ends now: planned_steps, or fewer re-planned to a deadline
    deadline: float | None = None  # ``time.perf_counter()`` by which the stage stops (None: no limit)
    clock: float = 0.0  # ``time.perf_counter()`` when this process started (or resumed) the stage's steps
    steps_here: int = 0  # optimiser steps since ``clock``
    stopped_on_time: bool = False  # the deadline (or the re-planned schedule's end) stopped the stage


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
        deadline: A wall-clock limit for the loop's stages, as a ``time.perf_counter()`` value
            (``time.perf_counter() + seconds`` for a budget of ``seconds`` from now; one value
            may be shared by several trainers, e.g. the fine-tunes of a search). A stage still
            running at the deadline stops at the end of the first optimiser step past it
            (gradient accumulation is never cut), evaluates that partial epoch as an epoch end
            does, keeps its best (or last) weights as usual and records ``stopped_on_time``,
            ``seconds_limit`` and the steps it planned (``planned_epochs``,
            ``planned_optimizer_steps``, ``schedule_steps``) in ``stages``. Its warm-up + cosine
            schedule is re-planned to end where the deadline falls (below). A stage that starts
            after the deadline still takes one step. Convex stages (``fit_heads_on_features``
            with linear heads) run in one go and are never cut. None (the default): no limit,
            and nothing above is recorded. Every process stops at the same step.
    """

    #: Optimiser steps of a stage timed before its schedule is first re-planned to the deadline.
    REPLAN_AFTER_STEPS = 5
    #: Share of the time left that a re-planned schedule fills (epoch ends and timing noise take the rest).
    REPLAN_SAFETY = 0.9

    def __init__(self, config: FitConfig, task: TaskData, source: SourceModel, *, verbose: bool = True,
                 task_weights: dict[str, float] | None = None, checkpoint_dir: str | Path | None = None,
                 resume: bool = False, run_dir: str | Path | None = None, deadline: float | None = None) -> None:
        from accelerate.utils import set_seed

        self.task = task
        #: ``time.perf_counter()`` by which the loop's stages stop (None: no limit); see the class docstring.
        self.deadline = deadline
        self.verbose = verbose
        self.task_weights = task_weights or {DEFAULT_TASK: 1.0}
        self.accelerator = make_accelerator(resolve_precision(config.precision), config.grad_accum)
        self.config = config = resolve_schedule(config, len(task.train), self.accelerator.num_processes)
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
        self._checkpoints = RunCheckpoints(
            self.accelerator, self.checkpoint_dir, config,
            run_fingerprint(config, self.accelerator.num_processes, source.id, task), verbose=verbose)
        if self.checkpoint_dir is not None:
            self._checkpoints.open(resume)
        elif resume:
            raise ConfigError("`--resume` needs the run directory that holds the checkpoints (`--out`).")
        #: Name of the checkpoint this run resumed from (None for a fresh start).
        self.resumed_from: str | None = self._checkpoints.resumed_from
        #: Whether the shared layers' BatchNorm statistics are the source's trained ones (``--bn-stats auto``).
        self.source_statistics = (source.weights != "random init" and not config.init_mix
                                  and not config.reinit)
        #: Whether the validation split is large enough to choose on (the best epoch, early
        #: stopping, a probe's L2); otherwise a stage keeps its last epoch.
        self.choose_on_val = validation_is_meaningful(val_labels[task.task_name], task.num_classes)

    @property
    def is_main_process(self) -> bool:
        """True on the one process that writes files and prints (always True without a launcher)."""
        return self.accelerator.is_main_process

    # -- stages ----------------------------------------------------------------------------

    def fit(self, model: nn.Module, param_groups: list[dict], *, stage: str, epochs: int | None = None,
            penalty: Callable[[nn.Module], torch.Tensor] | None = None,
            on_epoch_start: Callable[[int, nn.Module], None] | None = None,
            train_set=None, val_set=None, keep_norm_stats: bool | None = None,
            deadline: float | None = None) -> None:
        """Trains the parameters in ``param_groups`` (each with its own ``lr``) for ``epochs``,
        or until ``deadline`` (a ``time.perf_counter()`` value; default: the trainer's, see the
        class docstring).

        BatchNorm layers stay in inference mode (their running statistics normalise and are not
        updated; their affine weights still train if trainable) with ``--bn-stats keep``, or with
        ``auto`` (the default) when the stage asks for it (``keep_norm_stats``: a strategy whose
        head was fitted on those features) or, when it does not say, when the statistics are the
        source's trained ones (not a random init, ``--init-mix`` or ``--reinit``).
        Statistics of a few dozen examples per batch, and of a target unlike the source's data,
        shift every feature under the head: on 8 and 32 digits per class and 8 Fashion-MNIST
        items per class (MobileNetV2, batches of 8-32), ``full`` went from 0.575 / 0.810 / 0.641
        test accuracy with batch statistics to 0.833 / 0.888 / 0.694 with the running ones.
        """
        epochs = epochs or self.config.epochs
        index = len(self.stages)
        if self._checkpoints.stage_is_complete(index):
            self.history, self.stages = self._checkpoints.restore_complete(model, index, stage, on_epoch_start)
            return
        st = self._prepare_stage(model, param_groups, index, epochs, penalty, on_epoch_start,
                                 self.train_set if train_set is None else train_set,
                                 self.val_set if val_set is None else val_set)
        mode = self.config.bn_stats
        st.keep_norm_stats = mode == "keep" or (mode == "auto" and (
            self.source_statistics if keep_norm_stats is None else keep_norm_stats))
        st.deadline = self.deadline if deadline is None else deadline
        run = StageState(index, stage, epochs)
        restored = self._checkpoints.restore_partial(run, model, st.optimizer, st.scheduler, on_epoch_start)
        if restored is not None:
            self.history, self.stages = restored
        run.started = time.perf_counter() - run.elapsed
        st.clock = time.perf_counter()
        visible = self.verbose and self.accelerator.is_main_process
        with Stage(stage, epochs * len(st.loader), "batches", enabled=visible,
                   completed=run.epoch * len(st.loader) + run.batch, deadline=st.deadline) as shown:
            st.show = shown.update
            while run.epoch < epochs:
                self._train_epoch(st, run)
                if self._end_epoch(st, run):
                    break
            if st.stopped_on_time:
                shown.update(status=f"{shown.status}, stopped on time")
        self._finish_stage(st, run)

    def _prepare_stage(self, model: nn.Module, param_groups: list[dict], index: int, epochs: int, penalty,
                       on_epoch_start, train_set, val_set) -> _Stage:
        cfg, acc = self.config, self.accelerator
        sampler = EpochSampler(len(train_set), cfg.seed, stream=index)
        examples = train_set if getattr(train_set, "deterministic", False) else SeededExamples(train_set, cfg.seed, index)
        loader_rng = torch.Generator().manual_seed(cfg.seed + index)
        loader = torch.utils.data.DataLoader(examples, batch_size=cfg.batch_size, sampler=sampler, drop_last=False,
                                             collate_fn=train_set.collate, generator=loader_rng,
                                             num_workers=cfg.num_workers)
        val_loader = self._eval_loader(val_set)
        groups = [g for g in param_groups if g["params"]]  # frozen ones stay: a hook may unfreeze them later
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        prepared, optimizer, loader, val_loader = acc.prepare(model, optimizer, loader, val_loader)
        # The schedule counts optimiser steps of the global batch: the same for N processes with batch B
        # as for one with N·B (the scheduler is not handed to Accelerate, which would step it N times).
        steps = epochs * math.ceil(len(loader) / cfg.grad_accum)
        scheduler = warmup_cosine(optimizer.optimizer, int(cfg.warmup_ratio * steps), steps)
        return _Stage(model, prepared, _trainable_ids(model), count_trainable(model), optimizer, scheduler, loader,
                      val_loader, val_set, sampler, examples, loader_rng, penalty, on_epoch_start,
                      planned_steps=steps, schedule_steps=steps)

    def _train_epoch(self, st: _Stage, run: StageState) -> None:
        """The rest of epoch ``run.epoch``: from its start, or after the batches a resumed run already did."""
        cfg, acc, epoch = self.config, self.accelerator, run.epoch
        if st.on_epoch_start is not None and run.batch == 0:
            st.on_epoch_start(epoch, st.model)
        st.prepared, st.wrapped_for = self._rewrap_if_trainable_changed(st.model, st.prepared, st.wrapped_for)
        st.prepared.train()
        if st.keep_norm_stats:
            for module in st.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        st.sampler.epoch = st.examples.epoch = epoch
        if run.batch == 0:
            run.loader_rng = st.loader_rng.get_state()
        else:  # a resumed epoch: same worker seeds as the interrupted one, done batches skipped
            st.loader_rng.set_state(run.loader_rng)
        batches = acc.skip_first_batches(st.loader, run.batch) if run.batch else st.loader
        for inputs, labels in batches:
            loss = self._step(st, run, inputs, labels)
            n = next(iter(labels.values())).shape[0]
            run.batch, run.step, run.seen, run.examples = run.batch + 1, run.step + 1, run.seen + n, run.examples + n
            run.loss_sum += loss.item() * n
            st.show(advance=1, status=f"epoch {epoch + 1}/{run.epochs} loss {run.loss_sum / run.seen:.4f}")
            if acc.sync_gradients:
                run.optimizer_steps += 1
                self.tracking.log_step(run.name, loss.item(), st.scheduler.get_last_lr()[0])
                if (cfg.checkpoint_every and run.optimizer_steps % cfg.checkpoint_every == 0
                        and run.batch < len(st.loader)):
                    self._save(st, run)
                if st.deadline is not None:
                    st.steps_here += 1
                    if st.steps_here == self.REPLAN_AFTER_STEPS:
                        self._replan_to_deadline(st, run)
                    if self._out_of_time(st, run):
                        st.stopped_on_time = True  # `_end_epoch` evaluates this partial epoch, then the stage ends
                        break

    def _step(self, st: _Stage, run: StageState, inputs: dict, labels: dict) -> torch.Tensor:
        """One batch: forward, loss (+ penalty), backward; an optimiser step at the end of an accumulation."""
        acc = self.accelerator
        with acc.accumulate(st.prepared):
            loss = self._loss(st.prepared(**inputs), labels)
            if st.penalty is not None:
                loss = loss + st.penalty(st.model)
            self._stop_if_not_finite(loss, run, st.optimizer)
            acc.backward(loss)
            st.optimizer.step()  # Accelerate's wrapper steps only at the end of an accumulation
            if acc.sync_gradients and not st.optimizer.step_was_skipped:
                st.scheduler.step()
            st.optimizer.zero_grad()
        return loss

    def _end_epoch(self, st: _Stage, run: StageState) -> bool:
        """Evaluates, records the epoch and keeps the best weights; True when early stopping ends the stage."""
        epoch = run.epoch
        val_loss, val_acc = self.evaluate(st.prepared, st.val_loader)
        row = {"stage": run.name, "epoch": epoch + 1,
               "train_loss": self._mean_over_processes(run.loss_sum, run.seen),
               "val_loss": val_loss, "val_accuracy": val_acc, "lr": st.scheduler.get_last_lr()[0]}
        self.history.append(row)
        self.tracking.log_epoch(row)
        st.show(status=f"epoch {epoch + 1}/{run.epochs} loss {row['train_loss']:.4f} val_acc {val_acc:.3f}")
        stop = False
        if not self.choose_on_val:  # too few validation examples to choose an epoch on: keep the latest
            run.best_accuracy, run.best_epoch, run.best_state = val_acc, epoch + 1, None
        elif val_acc > run.best_accuracy:
            run.best_accuracy, run.best_epoch = val_acc, epoch + 1
            run.best_state = {k: v.detach().clone() for k, v in st.model.state_dict().items()}
        elif self.config.patience and epoch + 1 - run.best_epoch >= self.config.patience:
            stop = True
        run.epoch, run.batch, run.loss_sum, run.seen = epoch + 1, 0, 0.0, 0
        if st.deadline is not None and not stop and not st.stopped_on_time and run.epoch < run.epochs:
            self._replan_to_deadline(st, run)  # the time per step now includes the validation passes
            st.stopped_on_time = self._out_of_time(st, run)
        stop = stop or st.stopped_on_time
        if not stop and run.epoch < run.epochs:  # the last epoch's state is the stage's `done` checkpoint
            self._save(st, run)
        return stop

    # -- a deadline --------------------------------------------------------------------------

    def _replan_to_deadline(self, st: _Stage, run: StageState) -> None:
        """Ends the warm-up + cosine schedule at the optimiser steps that fit before ``st.deadline``.

        The choice: re-plan rather than keep the planned schedule and cut it. A cut cosine stops
        at a high learning rate, which leaves a model trained from scratch far from where its
        schedule would have annealed it, so a deadline would judge an unfinished run. The time
        per step is measured on this process's steps of the stage so far (at the
        ``REPLAN_AFTER_STEPS``-th step, then at every epoch end, when it includes the validation
        passes); ``REPLAN_SAFETY`` of the time left is filled. The schedule never grows past the
        planned steps, and the stage stops when it reaches its re-planned end (the learning rate
        is 0 there). Processes agree on the mean of their estimates.
        """
        now = time.perf_counter()
        per_step = (now - st.clock) / max(st.steps_here, 1)
        fit = float(run.optimizer_steps + max(0.0, self.REPLAN_SAFETY * (st.deadline - now)) / max(per_step, 1e-9))
        if self.accelerator.num_processes > 1:
            estimate = torch.tensor([min(fit, 1e12)], dtype=torch.float64, device=self.accelerator.device)
            fit = float(self.accelerator.reduce(estimate, "mean").item())
        total = max(run.optimizer_steps + 1, min(st.planned_steps, int(fit)))
        if total == st.schedule_steps:
            return
        st.schedule_steps = total
        batches = len(st.loader)  # the progress bar's total: the batches up to the schedule's new end
        st.show(total=min(run.epochs * batches, run.epoch * batches + run.batch
                          + (total - run.optimizer_steps) * self.config.grad_accum))
        warmup = int(self.config.warmup_ratio * total)
        scheduler = st.scheduler
        scheduler.lr_lambdas = [functools.partial(_warmup_cosine, warmup=warmup, total=total)
                                for _ in scheduler.lr_lambdas]
        for group, base, lam in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * lam(scheduler.last_epoch)  # the next step already uses the new schedule
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    def _out_of_time(self, st: _Stage, run: StageState) -> bool:
        """True on every process once one is past the deadline, or the re-planned schedule has ended."""
        late = time.perf_counter() >= st.deadline or (st.schedule_steps < st.planned_steps
                                                       and run.optimizer_steps >= st.schedule_steps)
        if self.accelerator.num_processes > 1:  # every process must stop at the same step
            flag = torch.tensor([float(late)], device=self.accelerator.device)
            late = bool(self.accelerator.reduce(flag, "sum").item())
        return late

    def _finish_stage(self, st: _Stage, run: StageState) -> None:
        """Restores the best epoch's weights, records the stage and writes its `done` checkpoint."""
        acc = self.accelerator
        if run.best_state is not None:
            st.model.load_state_dict(run.best_state)
        self._release(acc)
        seconds = time.perf_counter() - run.started
        limit = {} if st.deadline is None else {
            "stopped_on_time": st.stopped_on_time, "seconds_limit": st.deadline - run.started,
            "planned_epochs": run.epochs, "planned_optimizer_steps": st.planned_steps,
            "schedule_steps": st.schedule_steps}
        self.stages.append({"stage": run.name, "epochs_run": run.epoch, "best_epoch": run.best_epoch,
                            "best_val_accuracy": run.best_accuracy, "trainable_parameters": st.trainable,
                            "optimizer_steps": run.optimizer_steps,
                            "batchnorm": "kept" if st.keep_norm_stats else "updated", "seconds": seconds,
                            "examples_per_second": run.examples * acc.num_processes / max(seconds, 1e-9), **limit})
        self._save(st, run, done=True)

    def _save(self, st: _Stage, run: StageState, done: bool = False) -> None:
        """Hands the stage's state to the run's checkpoints (a no-op without a checkpoint directory)."""
        self._checkpoints.save(run, st.model, st.optimizer, st.scheduler, self.history, self.stages, done=done)

    def external_stage(self, model: nn.Module, stage: str, train: Callable[[], dict]) -> None:
        """A stage that another library's loop trains (``train()`` trains ``model`` in place and
        returns the stage record, which this appends to ``stages``), checkpointed like the others:
        its ``done`` checkpoint holds ``model``'s weights, and a resumed run restores them instead
        of training again. Not checkpointed inside the stage (``--checkpoint-every`` does not apply)."""
        index = len(self.stages)
        if self._checkpoints.stage_is_complete(index):
            self.history, self.stages = self._checkpoints.restore_complete(model, index, stage, None)
            return
        started = time.perf_counter()
        self.stages.append(train())
        self._save_one_step_stage(model, index, stage, started)

    def fit_heads_on_features(self, model: TargetModel, *, stage: str = "linear_probe", refit: bool = True) -> None:
        """Trains only the heads, on shared-layer features computed once (no augmentation).

        Linear heads are fitted as convex problems (``engine/probe.py``: L2 chosen on val or by
        cross-validation, then refitted on train + val when ``refit``); heads with a hidden
        layer are trained by the loop for ``probe_epochs`` at ``probe_lr``.
        """
        heads = HeadsOnFeatures(model)
        index = len(self.stages)
        if self._checkpoints.stage_is_complete(index):  # no need to extract features again
            self.history, self.stages = self._checkpoints.restore_complete(heads, index, stage, None)
            return
        started = time.perf_counter()
        device = self.accelerator.device
        model.backbone.to(device)
        visible = self.verbose and self.accelerator.is_main_process
        feats = {name: extract_features(model.backbone, ds, batch_size=self.config.batch_size * 2, device=device,
                                        num_workers=self.config.num_workers, verbose=visible, name=f"features {name}")
                 for name, ds in (("train", self.train_eval_set), ("val", self.val_set))}
        if not len(feats["val"]):  # no validation split: an empty (0, features) block, not (0, 0)
            feats["val"] = feats["train"].new_zeros((0, *feats["train"].shape[1:]))
        if all(_linear_layer(head) is not None for head in model.heads.values()):
            self._fit_linear_heads(heads, feats, stage, index, refit, started)
            return
        train = FeatureDataset(feats["train"], {t: torch.as_tensor(y) for t, y in self.train_set.labels.items()})
        val = FeatureDataset(feats["val"], {t: torch.as_tensor(y) for t, y in self.val_set.labels.items()})
        self.fit(heads, [{"params": list(model.heads.parameters()), "lr": self.config.probe_lr}], stage=stage,
                 epochs=self.config.probe_epochs, train_set=train, val_set=val)

    def _fit_linear_heads(self, heads: HeadsOnFeatures, feats: dict[str, torch.Tensor], stage: str, index: int,
                          refit: bool, started: float) -> None:
        """Each head's linear layer set to its convex fit; the stage recorded and checkpointed."""
        for split, x in feats.items():
            finite = torch.isfinite(x.flatten(1)).all(1)
            if not bool(finite.all()):
                raise NonFiniteLossError(
                    f"The shared layers' features hold NaN or infinite values (the first at {split} example "
                    f"{int((~finite).nonzero()[0])}) in stage {stage!r}; the heads were not fitted. Check the "
                    "inputs for NaN, or try `--precision no`.")
        fits = {}
        for task, head in heads.heads.items():
            layer = _linear_layer(head)
            fit = fit_linear_head(feats["train"], self.train_set.labels[task], feats["val"], self.val_set.labels[task],
                                  layer.out_features, refit=refit, seed=self.config.seed)
            with torch.no_grad():
                layer.weight.copy_(fit.weight)
                layer.bias.copy_(fit.bias)
            fits[task] = fit
        main = fits[self.task.task_name]
        val_acc = main.val_accuracy if main.val_accuracy is not None else 0.0  # held out even when refitted
        self.history.append({"stage": stage, "epoch": 1, "train_loss": main.train_loss, "val_loss": main.val_loss,
                             "val_accuracy": val_acc})  # a convex fit: no learning rate
        seconds = time.perf_counter() - started
        self.stages.append({"stage": stage, "epochs_run": 1, "best_epoch": 1, "best_val_accuracy": val_acc,
                            "trainable_parameters": count_trainable(heads), "seconds": seconds,
                            "examples_per_second": main.fitted_on / max(seconds, 1e-9), **main.record()})
        self._save_one_step_stage(heads, index, stage, started, val_acc)

    def _save_one_step_stage(self, model: nn.Module, index: int, stage: str, started: float,
                             best_accuracy: float = -1.0) -> None:
        """The ``done`` checkpoint of a stage that ran in one go, not through the loop (no optimizer)."""
        run = StageState(index, stage, 1)
        run.epoch, run.best_epoch, run.best_accuracy, run.started = 1, 1, best_accuracy, started
        self._checkpoints.save(run, model, None, None, self.history, self.stages, done=True)

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

    # -- helpers -----------------------------------------------------------------------------

    def _loss(self, logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.task_weights.get(t, 1.0) * F.cross_entropy(logits[t].float(), y) for t, y in labels.items())

    def _eval_loader(self, dataset):
        return torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size * 2,
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

    def _stop_if_not_finite(self, loss: torch.Tensor, run: StageState, optimizer) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self.accelerator.num_processes > 1:  # every process must stop at the same step
            flag = torch.tensor([float(bad)], device=self.accelerator.device)
            bad = bool(self.accelerator.reduce(flag, "sum").item())
        if bad:
            value = loss.item() if not torch.isfinite(loss.detach()).all() else "non-finite on another process"
            raise NonFiniteLossError(
                f"The training loss became {value} at step {run.step} (epoch {run.epoch + 1}, stage {run.name!r}); "
                f"training stopped and no weights from this step were saved. Try a lower `--lr` (now "
                f"{peak_lr(optimizer):g}), `--precision no`, or check the inputs for NaN.")

    def _rewrap_if_trainable_changed(self, model: nn.Module, prepared: nn.Module, wrapped_for: frozenset):
        """DDP reduces only parameters that were trainable when it wrapped the model; re-wrap after unfreezing."""
        now = _trainable_ids(model)
        if now == wrapped_for or prepared is model:
            return prepared, now
        acc = self.accelerator
        acc._models = [m for m in acc._models if m is not prepared]
        return acc.prepare_model(model), now


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 0 at ``total`` (as transformers'
    ``get_cosine_schedule_with_warmup``, without importing transformers)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(_warmup_cosine, warmup=warmup, total=total))


def _warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _linear_layer(head: nn.Module) -> nn.Linear | None:
    """The head's one linear layer when it is linear (dropout aside), else None."""
    layers = [m for m in head.modules() if any(True for _ in m.parameters(recurse=False))]
    return layers[0] if len(layers) == 1 and isinstance(layers[0], nn.Linear) else None


def _trainable_ids(model: nn.Module) -> frozenset:
    return frozenset(id(p) for p in model.parameters() if p.requires_grad)
