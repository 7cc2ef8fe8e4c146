"""Transfer strategies side by side: Fashion-MNIST, 20 labels per class, an ImageNet source.

Source: packaged ``mobilenet_v2`` (ImageNet-1k) at ``--image-size`` px (default 32: the
28 px images upscaled a little; chosen so 3 seeds fit on 2 busy cores). Data: 20 Fashion-MNIST images per class
drawn per seed from the official training split (transferkit cuts its validation split from
these 20) and a fixed test set of ``--test-per-class`` images per class from the official test
split. Every strategy goes through ``pipeline.train_target`` + ``pipeline.predict_proba`` with
the same seed, data, batch (32) and epoch budget; mean ± std of test accuracy over seeds.

Strategies and their learning rates (``--epochs`` fine-tuning epochs each; probes 60 epochs on
cached features at probe_lr 3e-3):

- ``linear_probe``; ``full`` (lr 3e-4); ``lp_ft`` (probe, then lr 1e-4); ``layerwise_lr``
  (lr 3e-4 at the heads, x0.7 per group toward the input); ``l2sp`` (lr 3e-4, alpha = beta = 0.01);
  ``lora`` (r 8, alpha 16, lr 1e-3); optional (``--only``): ``bitfit`` (lr 1e-3), ``full+wise_ft``;
- WiSE-FT: ``lp_ft`` (and optionally ``full``) with ``wise_ft=True`` (alpha between the source and the
  fine-tuned shared layers chosen on validation; the chosen alpha is reported);
- ``scratch``: the same MobileNetV2 from random initialisation, ``full`` at lr 1e-3.

    python benchmarks/strategies.py --quick
    python benchmarks/strategies.py
"""

from __future__ import annotations

import argparse
import json

from _timing import WORK, Timer, common_args, emit, fresh, log, machine, setup

VARIANTS = {
    "linear_probe": dict(strategy="linear_probe"),
    "full": dict(strategy="full", lr=3e-4),
    "lp_ft": dict(strategy="lp_ft", lr=1e-4),
    "layerwise_lr": dict(strategy="layerwise_lr", lr=3e-4),
    "l2sp": dict(strategy="l2sp", lr=3e-4),
    "lora": dict(strategy="lora", lr=1e-3),
    "bitfit": dict(strategy="bitfit", lr=1e-3),
    "lp_ft+wise_ft": dict(strategy="lp_ft", lr=1e-4, wise_ft=True),
    "full+wise_ft": dict(strategy="full", lr=3e-4, wise_ft=True),
    "scratch": dict(strategy="full", lr=1e-3),
}


def main() -> None:
    parser = common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--only", nargs="*", default=None, help="a subset of: " + " ".join(VARIANTS))
    args = parser.parse_args()
    setup(args.threads)
    import numpy as np
    import torch

    from _data import fashion_mnist_folder
    from transferkit.config import FitConfig
    from transferkit.data import load_task_data
    from transferkit.runs import predict_proba
    from transferkit.training import train_target
    from transferkit.sources import load_source

    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    epochs = args.epochs or (1 if args.quick else 2)
    names = args.only or (["linear_probe", "full", "lp_ft", "lora", "lp_ft+wise_ft", "scratch"] if args.quick
                          else [n for n in VARIANTS if n not in ("bitfit", "full+wise_ft")])
    imagenet = load_source("mobilenet_v2")
    rows: dict = {name: [] for name in names}
    for seed in seeds:
        folder = fashion_mnist_folder(WORK / f"fashion_mnist-{args.per_class}-s{seed}-t{args.test_per_class}",
                                      args.per_class, seed, args.test_per_class)
        task = load_task_data(folder, seed=seed)
        for name in names:
            if name == "scratch":
                torch.manual_seed(seed)
                src = load_source("mobilenet_v2@random")
            else:
                src = fresh(imagenet)
            cfg = FitConfig(image_size=args.image_size, batch_size=32, epochs=epochs, baseline="none", seed=seed, **VARIANTS[name])
            with Timer() as t:
                model, trainer = train_target(task, src, cfg, verbose=False)
                acc = float((predict_proba(model, src, task.test.examples, batch_size=64).argmax(1)
                             == task.test.labels).mean())
            row = {"seed": seed, "test_accuracy": acc, "seconds": t.seconds,
                   "trainable_parameters": max(s["trainable_parameters"] for s in trainer.stages),
                   "best_val_accuracy": trainer.stages[-1]["best_val_accuracy"]}
            wise = [s for s in trainer.stages if s["stage"] == "wise_ft"]
            if wise:
                row["wise_ft_alpha"] = wise[0]["alpha"]
            rows[name].append(row)
            log(f"seed {seed} {name}: {row}")
            (WORK / "strategies_partial.json").write_text(json.dumps(rows))
    summary = {}
    for name, rs in rows.items():
        accs = [r["test_accuracy"] for r in rs]
        summary[name] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "seeds": accs,
                         "seconds_mean": float(np.mean([r["seconds"] for r in rs])),
                         "trainable_parameters": rs[0]["trainable_parameters"]}
        if "wise_ft_alpha" in rs[0]:
            summary[name]["wise_ft_alpha"] = [r["wise_ft_alpha"] for r in rs]
    if "scratch" in summary:
        for name in summary:
            summary[name]["gain_vs_scratch"] = summary[name]["mean"] - summary["scratch"]["mean"]
    emit({"benchmark": "strategies", "machine": machine(args.threads),
          "setup": {"source": "mobilenet_v2 (ImageNet-1k)", "image_size": args.image_size, "labels_per_class": args.per_class,
                    "test_per_class": args.test_per_class, "epochs": epochs, "probe_epochs": 60, "seeds": seeds,
                    "variants": {n: VARIANTS[n] for n in names}},
          "results": summary})


if __name__ == "__main__":
    main()
