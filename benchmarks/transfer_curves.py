"""Transfer vs training from scratch at 5, 10, 20 and 50 labels per class (mean ± std over seeds).

Compute budget (2 shared CPU cores): images fed at ``--image-size`` 32 px, texts cut to
``--max-length`` 64 tokens, small fixed test sets, probes rather than fine-tunes for transfer,
and a short scratch schedule. These choices favour speed over the best accuracy of every method.

Image tasks (Fashion-MNIST and MNIST as 28 px grey PNGs, upscaled to 32 px; a fixed test set of
``--test-per-class`` images per class drawn once from each official test split; the ``N`` labels
per class are drawn per seed from the training split, and transferkit cuts its validation
split from those N, so N is the whole label budget):

- ``imagenet_probe``: packaged ``mobilenet_v2`` (ImageNet-1k), ``linear_probe`` (frozen features,
  head trained on cached features, best epoch on validation);
- ``other_dataset_probe``: ``run:DIR`` where DIR is a transferkit run that fully fine-tuned
  ``mobilenet_v2`` on the *other* dataset (``--source-per-class`` labels per class, 2 epochs)
  -- so MNIST features for Fashion-MNIST and vice versa -- then ``linear_probe``;
- ``scratch``: the same MobileNetV2 from random initialisation (``mobilenet_v2@random``),
  ``full`` training for ``--scratch-epochs`` epochs at lr 1e-3 (transferkit's baseline recipe);
- ``pixels_logreg``: scikit-learn logistic regression on the raw 784 pixels (a cheap scratch
  baseline that needs no deep network).

Text task (SpamAssassin, spam vs ham; fixed test set of ``--text-test-per-class`` per class):

- ``minilm_probe``: packaged ``minilm`` (all-MiniLM-L6-v2), ``linear_probe``, ``--max-length`` tokens;
- ``tfidf``: transferkit's classical text baseline, ``evaluation.baseline.tfidf_baseline`` (TF-IDF word
  1-2 + char_wb 2-5 grams, logistic regression; C chosen on validation, or by k-fold CV when it is small;
  numbers in docs/BENCHMARKS.md from before the char n-grams used word 1-2 grams and validation only).

The plot goes to ``docs/transfer_curves.png``; the last stdout line is the JSON of every number.

    python benchmarks/transfer_curves.py --quick     # 2 seeds, N in {5, 20}, images only, MNIST skipped
    python benchmarks/transfer_curves.py             # the full protocol (about 30-40 min on 2 busy cores)
"""

from __future__ import annotations

import argparse
import json

from _timing import BENCH_DIR, WORK, Timer, common_args, emit, fresh, log, machine, setup


def main() -> None:
    parser = common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--labels", type=int, nargs="*", default=None)
    parser.add_argument("--datasets", nargs="*", default=None, help="fashion_mnist mnist spam")
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--text-test-per-class", type=int, default=40)
    parser.add_argument("--source-per-class", type=int, default=50)
    parser.add_argument("--scratch-epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--plot", default=str(BENCH_DIR.parent / "docs" / "transfer_curves.png"))
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="combine the results of runs made per dataset (their JSON lines, or the "
                             "transfer_curves_partial.json of an interrupted run), plot, print the JSON")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.plot)
        return
    setup(args.threads)
    import numpy as np
    import pandas as pd
    import torch
    from sklearn.linear_model import LogisticRegression

    from _data import folder_arrays, image_folder, spam_pool
    from transferkit.config import FitConfig
    from transferkit.data import load_task_data
    from transferkit.evaluation.baseline import tfidf_baseline
    from transferkit.pipeline import fit
    from transferkit.runs import predict_proba
    from transferkit.training import train_target
    from transferkit.sources import load_source

    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    labels = args.labels or ([5, 20] if args.quick else [5, 10, 20, 50])
    datasets = args.datasets or (["fashion_mnist"] if args.quick else ["fashion_mnist", "mnist", "spam"])
    if args.quick:
        args.source_per_class = min(args.source_per_class, 30)
        args.scratch_epochs = min(args.scratch_epochs, 2)
    results: dict = {}  # dataset -> method -> N -> [accuracy per seed]
    seconds: dict = {}

    def record(ds, method, n, acc, secs):
        results.setdefault(ds, {}).setdefault(method, {}).setdefault(str(n), []).append(float(acc))
        seconds.setdefault(ds, {}).setdefault(method, 0.0)
        seconds[ds][method] += secs
        log(f"{ds} {method} N={n}: {acc:.3f} ({secs:.1f}s)")
        (WORK / "transfer_curves_partial.json").write_text(json.dumps({"results": results, "seconds": seconds}))

    def probe(task, src, seed, **extra):
        s = fresh(src)
        cfg = FitConfig(strategy="linear_probe", batch_size=32, baseline="none", seed=seed, **extra)
        model, _ = train_target(task, s, cfg, verbose=False)
        proba = predict_proba(model, s, task.test.examples, batch_size=64)
        return float((proba.argmax(1) == task.test.labels).mean())

    image_sets = [d for d in datasets if d in ("fashion_mnist", "mnist")]
    if image_sets:
        imagenet = load_source("mobilenet_v2")
        scratch_src = None
        other_sources = {}
        for ds in image_sets:
            other = "mnist" if ds == "fashion_mnist" else "fashion_mnist"
            run_dir = WORK / f"source-run-{other}-{args.source_per_class}"
            if not (run_dir / "model.safetensors").is_file():
                with Timer() as t:
                    folder = image_folder(other, WORK / f"{other}-src-{args.source_per_class}", args.source_per_class,
                                          seed=99, test_per_class=10)
                    run = fit(folder, source="mobilenet_v2", strategy="full", out=run_dir, verbose=False,
                              image_size=args.image_size, epochs=2, baseline="none", seed=0)
                log(f"source run on {other}: test accuracy {run.metrics['test_accuracy']:.3f} ({t.seconds:.0f}s)")
            other_sources[ds] = load_source(f"run:{run_dir}")
        for ds in image_sets:
            for n in labels:
                for seed in seeds:
                    folder = image_folder(ds, WORK / f"{ds}-{n}-s{seed}-t{args.test_per_class}", n, seed=seed,
                                          test_per_class=args.test_per_class)
                    task = load_task_data(folder, seed=seed)
                    with Timer() as t:
                        acc = probe(task, imagenet, seed, image_size=args.image_size)
                    record(ds, "imagenet_probe", n, acc, t.seconds)
                    with Timer() as t:
                        acc = probe(task, other_sources[ds], seed, image_size=args.image_size)
                    record(ds, "other_dataset_probe", n, acc, t.seconds)
                    with Timer() as t:
                        if scratch_src is None:
                            torch.manual_seed(0)
                            scratch_src = load_source("mobilenet_v2@random")
                        torch.manual_seed(seed)
                        s = load_source("mobilenet_v2@random")  # a fresh random draw per seed
                        cfg = FitConfig(strategy="full", image_size=args.image_size, epochs=args.scratch_epochs, lr=1e-3,
                                        batch_size=32, baseline="none", seed=seed)
                        model, _ = train_target(task, s, cfg, verbose=False)
                        acc = float((predict_proba(model, s, task.test.examples, batch_size=64).argmax(1)
                                     == task.test.labels).mean())
                    record(ds, "scratch", n, acc, t.seconds)
                    with Timer() as t:
                        xtr, ytr, _ = folder_arrays(folder, "train")
                        xte, yte, _ = folder_arrays(folder, "test")
                        acc = LogisticRegression(C=1.0, max_iter=2000).fit(xtr, ytr).score(xte, yte)
                    record(ds, "pixels_logreg", n, acc, t.seconds)

    if "spam" in datasets:
        texts, y = spam_pool()
        rng = np.random.default_rng(12345)
        test_idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:args.text_test_per_class] for c in (0, 1)])
        pool = np.setdiff1d(np.arange(len(y)), test_idx)
        minilm = load_source("minilm")
        for n in labels:
            for seed in seeds:
                r = np.random.default_rng(seed)
                train_idx = np.concatenate([r.permutation(pool[y[pool] == c])[:n] for c in (0, 1)])
                path = WORK / f"spam-{n}-s{seed}-t{args.text_test_per_class}.csv"
                rows = [{"text": texts[i], "label": "spam" if y[i] else "ham", "split": split}
                        for split, idx in (("train", train_idx), ("test", test_idx)) for i in idx]
                pd.DataFrame(rows).to_csv(path, index=False)
                task = load_task_data(path, seed=seed)
                with Timer() as t:
                    acc = probe(task, minilm, seed, max_length=args.max_length)
                record("spam", "minilm_probe", n, acc, t.seconds)
                with Timer() as t:
                    proba, _ = tfidf_baseline(task, seed)
                    acc = float((proba.argmax(1) == task.test.labels).mean())
                record("spam", "tfidf", n, acc, t.seconds)

    summary = {ds: {m: {n: {"mean": float(np.mean(v)), "std": float(np.std(v)), "seeds": v}
                        for n, v in per_n.items()} for m, per_n in methods.items()}
               for ds, methods in results.items()}
    plot(summary, args.plot)
    emit({"benchmark": "transfer_curves", "machine": machine(args.threads),
          "setup": {"labels_per_class": labels, "seeds": seeds, "image_size": args.image_size, "max_length": args.max_length,
                    "test_per_class": args.test_per_class, "text_test_per_class": args.text_test_per_class,
                    "source_run_labels_per_class": args.source_per_class, "scratch_epochs": args.scratch_epochs},
          "results": summary, "seconds": seconds, "plot": args.plot})


def merge(paths: list[str], plot_path: str) -> None:
    import numpy as np

    summary, seconds, runs = {}, {}, []
    for path in paths:
        lines = [line for line in open(path).read().splitlines() if line.startswith("{")]
        data = json.loads(lines[-1])
        if data.get("benchmark") == "transfer_curves":  # a finished run's JSON line
            summary.update(data["results"])
            runs.append({"from": path, "machine": data["machine"], "setup": data["setup"]})
        else:  # a partial file: accuracies per seed
            for ds, methods in data["results"].items():
                summary[ds] = {m: {n: {"mean": float(np.mean(v)), "std": float(np.std(v)), "seeds": v}
                                   for n, v in per_n.items()} for m, per_n in methods.items()}
            runs.append({"from": path, "partial": True})
        for ds, per in data.get("seconds", {}).items():
            seconds[ds] = per
    plot(summary, plot_path)
    emit({"benchmark": "transfer_curves", "merged_from": runs, "results": summary, "seconds": seconds,
          "plot": plot_path, "machine": runs[0].get("machine", {}), "setup": next(
              (r["setup"] for r in runs if "setup" in r), {})})


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "spam": "SpamAssassin"}
    fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 4), squeeze=False)
    for ax, (ds, methods) in zip(axes[0], summary.items()):
        for method, per_n in methods.items():
            ns = sorted(per_n, key=int)
            means = [per_n[n]["mean"] for n in ns]
            stds = [per_n[n]["std"] for n in ns]
            ax.errorbar([int(n) for n in ns], means, yerr=stds, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([int(n) for n in ns], [str(n) for n in ns])
        ax.set_xlabel("labels per class")
        ax.set_ylabel("test accuracy")
        ax.set_title(titles.get(ds, ds))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
