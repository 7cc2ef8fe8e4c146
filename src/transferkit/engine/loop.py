"""The one training loop, on Hugging Face Accelerate.

Accelerate owns devices, processes (DDP/FSDP), mixed precision and gradient accumulation;
this loop owns what transfer needs on top: AdamW with parameter groups, warm-up + cosine,
early stopping on validation accuracy with the best weights restored, an optional penalty
(L2-SP), per-epoch hooks (gradual unfreezing) and a stop within one step of a NaN/inf loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.config import FitConfig
from transferkit.data.base import TaskData
from transferkit.engine.precision import resolve_precision
from transferkit.errors import NonFiniteLossError
from transferkit.features import extract_features
from transferkit.sources.base import SourceModel
from transferkit.sources.inputs import ExampleDataset, input_pipeline
from transferkit.surgery.freezing import count_trainable
from transferkit.surgery.target import TargetModel


class FeatureDataset(torch.utils.data.Dataset):
    """Cached features with labels, batched as ``({"features": x}, {task: y})``."""

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


class Trainer:
    """Trains a ``TargetModel`` on a task's train split, selecting on its validation split.

    Strategies call ``fit`` (fine-tune the parameters in the given groups) and
    ``fit_heads_on_features`` (train the heads on features computed once). Every stage appends
    per-epoch rows to ``history`` and a summary to ``stages``.
    """

    def __init__(self, config: FitConfig, task: TaskData, source: SourceModel, *, verbose: bool = True,
                 task_weights: dict[str, float] | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.task = task
        self.verbose = verbose
        self.task_weights = task_weights or {}
        self.accelerator = Accelerator(mixed_precision=resolve_precision(config.precision),
                                       gradient_accumulation_steps=config.grad_accum)
        set_seed(config.seed)
        labels = task.labels_of("train")
        train_pipe = input_pipeline(source, train=True, augment=config.augment)
        eval_pipe = input_pipeline(source, train=False)
        self.train_set = ExampleDataset(task.train.examples, labels, train_pipe)
        self.train_eval_set = ExampleDataset(task.train.examples, labels, eval_pipe)
        self.val_set = ExampleDataset(task.val.examples, task.labels_of("val"), eval_pipe)
        self.history: list[dict] = []
        self.stages: list[dict] = []

    # -- stages ----------------------------------------------------------------------------

    def fit(self, model: nn.Module, param_groups: list[dict], *, stage: str, epochs: int | None = None,
            penalty: Callable[[nn.Module], torch.Tensor] | None = None,
            on_epoch_start: Callable[[int, nn.Module], None] | None = None,
            train_set=None, val_set=None) -> None:
        """Trains the parameters in ``param_groups`` (each with its own ``lr``) for ``epochs``."""
        from transformers import get_cosine_schedule_with_warmup

        cfg, acc = self.config, self.accelerator
        epochs = epochs or cfg.epochs
        train_set, val_set = train_set or self.train_set, val_set or self.val_set
        generator = torch.Generator().manual_seed(cfg.seed + len(self.stages))
        loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                                             collate_fn=train_set.collate, generator=generator,
                                             num_workers=cfg.num_workers)
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.batch_size * 2, collate_fn=val_set.collate,
                                                 num_workers=cfg.num_workers)
        steps = epochs * math.ceil(len(loader) / cfg.grad_accum)
        groups = [g for g in param_groups if any(p.requires_grad for p in g["params"])]
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps), steps)
        prepared, optimizer, loader, val_loader, scheduler = acc.prepare(model, optimizer, loader, val_loader, scheduler)

        best = {"val_accuracy": -1.0, "epoch": -1, "state": None}
        started, step = time.perf_counter(), 0
        trainable = count_trainable(model)
        with _progress(self.verbose and acc.is_main_process) as progress:
            bar = progress.add_task(stage, total=epochs * len(loader), status="")
            for epoch in range(epochs):
                if on_epoch_start is not None:
                    on_epoch_start(epoch, model)
                prepared.train()
                total, seen = 0.0, 0
                for inputs, labels in loader:
                    with acc.accumulate(prepared):
                        loss = self._loss(prepared(**inputs), labels)
                        if penalty is not None:
                            loss = loss + penalty(model)
                        if not torch.isfinite(loss):
                            raise NonFiniteLossError(
                                f"The training loss became {loss.item()} at step {step} (epoch {epoch + 1}, stage "
                                f"{stage!r}); training stopped and no weights from this step were saved. Try a "
                                f"lower `--lr` (now {cfg.lr:g}), `--precision no`, or check the inputs for NaN."
                            )
                        acc.backward(loss)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad()
                    step += 1
                    n = next(iter(labels.values())).shape[0]
                    total, seen = total + loss.item() * n, seen + n
                    progress.update(bar, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {total / seen:.4f}")
                val_loss, val_acc = self.evaluate(prepared, val_loader)
                row = {"stage": stage, "epoch": epoch + 1, "train_loss": total / max(seen, 1),
                       "val_loss": val_loss, "val_accuracy": val_acc, "lr": scheduler.get_last_lr()[0]}
                self.history.append(row)
                progress.update(bar, status=f"epoch {epoch + 1}/{epochs} loss {row['train_loss']:.4f} "
                                            f"val_acc {val_acc:.3f}")
                if val_acc > best["val_accuracy"]:
                    best = {"val_accuracy": val_acc, "epoch": epoch + 1,
                            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                elif cfg.patience and epoch + 1 - best["epoch"] >= cfg.patience:
                    break
        if best["state"] is not None:
            model.load_state_dict(best["state"])
        acc.free_memory()
        self.stages.append({"stage": stage, "epochs_run": epoch + 1, "best_epoch": best["epoch"],
                            "best_val_accuracy": best["val_accuracy"], "trainable_parameters": trainable,
                            "seconds": time.perf_counter() - started,
                            "examples_per_second": seen * (epoch + 1) / max(time.perf_counter() - started, 1e-9)})

    def fit_heads_on_features(self, model: TargetModel, *, stage: str = "linear_probe") -> None:
        """Trains only the heads, on shared-layer features computed once (no augmentation)."""
        device = self.accelerator.device
        model.backbone.to(device)
        feats = {name: extract_features(model.backbone, ds, batch_size=self.config.batch_size * 2, device=device,
                                        num_workers=self.config.num_workers)
                 for name, ds in (("train", self.train_eval_set), ("val", self.val_set))}
        train = FeatureDataset(feats["train"], {t: torch.as_tensor(y) for t, y in self.train_set.labels.items()})
        val = FeatureDataset(feats["val"], {t: torch.as_tensor(y) for t, y in self.val_set.labels.items()})
        heads = HeadsOnFeatures(model)
        self.fit(heads, [{"params": list(model.heads.parameters()), "lr": self.config.probe_lr}], stage=stage,
                 epochs=self.config.probe_epochs, train_set=train, val_set=val)

    # -- helpers -----------------------------------------------------------------------------

    def _loss(self, logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.task_weights.get(t, 1.0) * F.cross_entropy(logits[t].float(), y) for t, y in labels.items())

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader) -> tuple[float, float]:
        """Validation loss and accuracy of the first task, gathered over all processes."""
        if len(loader.dataset) == 0:
            return float("nan"), 0.0
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


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[status]}"), disable=not enabled, transient=False)
