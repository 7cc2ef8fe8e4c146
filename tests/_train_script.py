"""A tiny training run through the engine's ``Trainer``, for the resume and distributed tests.

    python tests/_train_script.py --out DIR [options]
    accelerate launch --multi_gpu --num_processes 2 tests/_train_script.py --out DIR [options]

Builds a 4-class task from scikit-learn's bundled digits (in memory, 16 px RGB), a tiny MLP
source (dropout, no BatchNorm), trains it with ``--strategy`` through ``Trainer`` with
checkpoints in ``DIR/checkpoints``, and on the main process writes ``DIR/model.safetensors``
and ``DIR/result.json``. Test-only switches slow a run down or stall a checkpoint write so a
test can kill it at a chosen moment; they never change the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn



class TinyMLP(nn.Module):
    """16x16 RGB -> 32 features: two linear layers with GELU and dropout."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(3 * 16 * 16, 32), nn.Linear(32, 32), nn.Dropout(dropout)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.drop(nn.functional.gelu(self.fc1(pixel_values.flatten(1))))
        return nn.functional.gelu(self.fc2(x))


def tiny_source(dropout: float):
    from transferkit.sources.base import LayerGroup, Preprocessing, SourceModel

    return SourceModel(
        id="test:tiny-mlp", modality="image", backbone=TinyMLP(dropout), feature_dim=32,
        preprocessing=Preprocessing("image", image_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        layer_groups=[LayerGroup("fc1", ["fc1.weight", "fc1.bias"]), LayerGroup("fc2", ["fc2.weight", "fc2.bias"])],
        spec={}, architecture="tiny-mlp", weights="random init")


def tiny_task(n_train: int, n_val: int, n_test: int = 8):
    from transferkit.data.base import Split, TaskData
    from transferkit.data.synthetic import digit_image

    def split(n: int, offset: int) -> Split:
        labels = np.arange(n) % 4
        images = [digit_image(offset + i, size=16, digit=int(d)).convert("RGB") for i, d in enumerate(labels)]
        return Split(images, labels.astype(np.int64))

    return TaskData("image", ["0", "1", "2", "3"], split(n_train, 0), split(n_val, 1000), split(n_test, 2000))


def train(model, trainer, strategy: str, lr: float) -> None:
    """The strategies under test: one stage; two stages (probe, then fine-tune with a per-epoch hook)."""
    from transferkit.surgery.freezing import set_trainable

    def every_parameter():
        return [{"params": [p for p in model.parameters()], "lr": lr}]

    if strategy == "full":
        set_trainable(model)
        trainer.fit(model, every_parameter(), stage="full")
    elif strategy == "two_stage":  # LP-FT, with the fine-tuning stage unfreezing fc1 after its first epoch
        def unfreeze(epoch, _model):
            set_trainable(model, groups=None if epoch else ["fc2"], heads=True)

        set_trainable(model, groups=[], heads=True)
        trainer.fit_heads_on_features(model, stage="linear_probe")
        unfreeze(0, model)
        trainer.fit(model, every_parameter(), stage="fine_tune", on_epoch_start=unfreeze)
    else:
        raise SystemExit(f"unknown strategy {strategy!r}")


def stall_checkpoint_write(number: int, marker: Path) -> None:
    """Makes the ``number``-th checkpoint write stop for a minute after its first file, with a marker."""
    from transferkit.engine import checkpoint

    original, count = checkpoint.write_checkpoint, [0]

    def write_file(path, data):
        original_write_file(path, data)
        if count[0] == number and path.name == "model.safetensors":
            marker.write_text(str(path.parent))
            time.sleep(60)

    def write_checkpoint(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    original_write_file = checkpoint._write_file
    checkpoint._write_file = write_file
    checkpoint.write_checkpoint = write_checkpoint


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--strategy", default="full")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--probe-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=48)
    p.add_argument("--n-val", type=int, default=15)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--head-dropout", type=float, default=0.2)
    p.add_argument("--head-hidden", type=int, default=4,
                   help="hidden width of the heads; 0: linear heads, whose probe stage is a convex fit")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--patience", type=int, default=0)
    p.add_argument("--precision", default="no")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--keep", type=int, default=2)
    p.add_argument("--no-checkpoints", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--step-delay", type=float, default=0.0, help="sleep before every forward pass (seconds)")
    p.add_argument("--stall-write", type=int, default=0, help="stall the N-th checkpoint write (see above)")
    args = p.parse_args(argv)

    from transferkit._io import save_weights
    from transferkit.config import FitConfig
    from transferkit.engine import Trainer
    from transferkit.runs import predict_proba
    from transferkit.surgery.target import build_target_model

    torch.set_num_threads(1)  # the same kernels and reduction order in every run of a test
    (args.out / "pids").mkdir(parents=True, exist_ok=True)  # torchrun starts workers in their own sessions:
    (args.out / "pids" / str(os.getpid())).touch()  # a test that kills a run kills these too
    started = time.perf_counter()
    cfg = FitConfig(strategy="full", epochs=args.epochs, probe_epochs=args.probe_epochs, batch_size=args.batch_size,
                    grad_accum=args.grad_accum, lr=args.lr, probe_lr=args.lr, seed=args.seed, patience=args.patience,
                    head_dropout=args.head_dropout, num_workers=args.num_workers, warmup_ratio=0.2, precision=args.precision,
                    checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep, baseline="none")
    task = tiny_task(args.n_train, args.n_val)
    torch.manual_seed(args.seed)
    source = tiny_source(args.dropout)
    # by default a hidden layer: the probe stage is then trained by the loop (linear heads are a convex fit,
    # no steps to kill)
    model = build_target_model(source, {"label": 4}, args.head_hidden, args.head_dropout)
    if args.step_delay:  # on the heads: they run in every stage, the probe on cached features included
        for head in model.heads.values():
            head.register_forward_pre_hook(lambda *_: time.sleep(args.step_delay))
    if args.stall_write:
        stall_checkpoint_write(args.stall_write, args.out / "stalled-write.txt")
    trainer = Trainer(cfg, task, source, verbose=False, resume=args.resume,
                      checkpoint_dir=None if args.no_checkpoints else args.out / "checkpoints")
    train(model, trainer, args.strategy, args.lr)
    # log-probabilities: logits up to a per-example constant (softmax gives back the same probabilities)
    val_logits = np.log(predict_proba(model, source, task.val.examples, "label", batch_size=args.batch_size * 2))
    if trainer.is_main_process:
        args.out.mkdir(parents=True, exist_ok=True)
        save_weights(model.state_dict(), args.out / "model.safetensors")
        (args.out / "result.json").write_text(json.dumps({
            "resumed_from": trainer.resumed_from, "history": trainer.history, "stages": trainer.stages,
            "num_processes": trainer.accelerator.num_processes, "val_logits": val_logits.tolist(),
            "seconds": time.perf_counter() - started, "pid": os.getpid()}, indent=1))
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
