"""LoRA vs full fine-tuning: trainable fraction, peak resident memory and steps/s.

Each measurement runs in its own subprocess (``--child``) so that the peak resident set size
(``ru_maxrss``) belongs to that one training run; children alternate full / lora within each
round and medians are reported. The child reports:

- trainable and total parameters (``trainer.stages[*]["trainable_parameters"]``, and the model);
- ``rss_before_train_mb``: resident memory after imports, data and model are loaded;
- ``peak_rss_mb``: the process's peak, and the difference (memory that training itself added);
- steps/s of ``pipeline.train_target`` (wall time / optimiser steps; per-epoch validation counted).

Workloads: packaged ``mobilenet_v2`` at 64 px on Fashion-MNIST PNGs (batch 32), and packaged
``minilm`` (all-MiniLM-L6-v2, 22.7M parameters; 128 tokens, batch 16) on SpamAssassin emails.
LoRA: rank 8, alpha 16, on every Linear / non-grouped Conv2d (image) or BERT query/value (text).

    python benchmarks/peft.py --quick
    python benchmarks/peft.py
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys

from _timing import WORK, Timer, common_args, emit, log, machine, median, setup


def child(strategy: str, workload: str, quick: bool, threads: int) -> None:
    setup(threads)
    import psutil

    from _data import fashion_mnist_folder, spam_table
    from transferkit.config import FitConfig
    from transferkit.data import load_task_data
    from transferkit.training import train_target
    from transferkit.sources import load_source

    if workload == "image":
        per_class = 10 if quick else 20
        task = load_task_data(fashion_mnist_folder(WORK / f"fmnist-ft-{per_class}", per_class, 0, 10), seed=0)
        src = load_source("mobilenet_v2")
        cfg = FitConfig(strategy=strategy, image_size=64, batch_size=32, epochs=2, baseline="none", seed=0,
                        lr=1e-4 if strategy == "full" else 1e-3)
    else:
        n = 60 if quick else 120
        WORK.mkdir(parents=True, exist_ok=True)
        task = load_task_data(spam_table(WORK / f"spam-{n}.csv", n=n, seed=0), seed=0)
        src = load_source("minilm")
        cfg = FitConfig(strategy=strategy, max_length=128, batch_size=16, epochs=1, baseline="none", seed=0,
                        lr=5e-5 if strategy == "full" else 5e-4)
    before = psutil.Process().memory_info().rss / 2**20
    with Timer() as t:
        model, trainer = train_target(task, src, cfg, verbose=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = sum(p.numel() for p in model.parameters())
    trainable = max(s["trainable_parameters"] for s in trainer.stages)
    steps = cfg.epochs * math.ceil(len(task.train) / cfg.batch_size)
    print(json.dumps({"strategy": strategy, "workload": workload, "trainable_parameters": trainable,
                      "total_parameters": total, "trainable_fraction": trainable / total,
                      "rss_before_train_mb": before, "peak_rss_mb": peak, "training_rss_increase_mb": peak - before,
                      "steps": steps, "seconds": t.seconds, "steps_per_second": steps / t.seconds,
                      "best_val_accuracy": trainer.stages[-1]["best_val_accuracy"]}))


def main() -> None:
    parser = common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--child", nargs=2, metavar=("STRATEGY", "WORKLOAD"))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--workloads", nargs="*", default=["image", "text"])
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.quick, args.threads)
        return
    rounds = args.rounds or (1 if args.quick else 3)
    out = {"benchmark": "peft", "machine": machine(args.threads), "rounds": rounds}
    for workload in args.workloads:
        runs = {"full": [], "lora": []}
        for r in range(rounds):
            for strategy in (["full", "lora"] if r % 2 == 0 else ["lora", "full"]):
                cmd = [sys.executable, __file__, "--child", strategy, workload, "--threads", str(args.threads)]
                cmd += ["--quick"] if args.quick else []
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    log(proc.stderr[-3000:])
                    raise SystemExit(f"child {strategy} {workload} failed")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[strategy].append(res)
                log(f"[{workload}] round {r} {strategy}: {res}")
        summary = {}
        for strategy, rs in runs.items():
            summary[strategy] = {k: median([x[k] for x in rs]) for k in
                                 ("trainable_parameters", "total_parameters", "trainable_fraction", "rss_before_train_mb",
                                  "peak_rss_mb", "training_rss_increase_mb", "steps_per_second", "best_val_accuracy")}
            summary[strategy]["steps_per_second_rounds"] = [x["steps_per_second"] for x in rs]
        summary["lora_vs_full"] = {
            "trainable_ratio": summary["lora"]["trainable_parameters"] / summary["full"]["trainable_parameters"],
            "peak_rss_ratio": summary["lora"]["peak_rss_mb"] / summary["full"]["peak_rss_mb"],
            "training_rss_increase_ratio": summary["lora"]["training_rss_increase_mb"]
            / max(summary["full"]["training_rss_increase_mb"], 1e-9),
            "steps_per_second_ratio": summary["lora"]["steps_per_second"] / summary["full"]["steps_per_second"]}
        out[workload] = summary
    emit(out)


if __name__ == "__main__":
    main()
