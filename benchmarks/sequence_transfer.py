"""Sequence transfer: a model trained by transferkit on MNIST-1D, transferred to small UCR/UEA tasks.

Protocol
--------
- **Source task**: MNIST-1D (Greydanus 2020), generated offline with
  ``mnist1d.data.make_dataset(get_dataset_args())`` (4,000 train / 1,000 test series of 40 steps,
  10 classes; ``get_dataset()`` would download). ``transferkit fit`` trains ``--arch`` (default
  ``seq:cnn1d``) on it with strategy ``full`` into a run directory, once per benchmark run
  (seed 0). Its MNIST-1D test accuracy is reported.
- **Targets**: GunPoint (2 classes, 50 train / 150 test, 150 steps), ArrowHead (3 classes,
  36 / 175, 251 steps) and BasicMotions (4 classes, 40 / 40, 6 channels, 100 steps), from the
  copies aeon ships (``aeon.datasets.load_classification(name, split=...)``, offline). Each is
  written as a Parquet values table with the official train/test split kept; transferkit cuts
  a stratified 15 % validation split from train (per seed). BasicMotions has 6 channels and the
  source 1: the source's shared layers run on each channel and the features are averaged.
- **Arms**, each per target and seed, same epochs and batch size (16), best validation epoch kept:
  ``scratch`` (the same architecture from random init, ``full`` at lr 3e-3);
  ``transfer_full`` (``--source run:SRC``, ``full`` at lr 1e-3);
  ``transfer_probe`` (``run:SRC``, ``linear_probe``: a head on frozen source features).
- Test accuracy on the official test split, mean ± std over ``--seeds`` seeds; the gain of each
  transfer arm over ``scratch`` (the peer measured in the same run) in accuracy points.

    python benchmarks/sequence_transfer.py --quick     # < 3 minutes on 2 idle cores
    python benchmarks/sequence_transfer.py             # the table in docs/BENCHMARKS.md

The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import statistics

from _timing import WORK, Timer, common_args, emit, log, machine, setup

TARGETS = ("GunPoint", "ArrowHead", "BasicMotions")
ARMS = {
    "scratch": dict(strategy="full", lr=3e-3),
    "transfer_full": dict(strategy="full", lr=1e-3),
    "transfer_probe": dict(strategy="linear_probe"),
}


def mnist1d_table(path, n_train: int | None):
    from mnist1d.data import get_dataset_args, make_dataset

    from transferkit.data.sequence import write_series_table

    data = make_dataset(get_dataset_args())  # generated locally, seeded by the package's defaults
    x, y = data["x"][:n_train], data["y"][:n_train]
    series = list(x) + list(data["x_test"])
    labels = [str(int(v)) for v in list(y) + list(data["y_test"])]
    splits = ["train"] * len(x) + ["test"] * len(data["x_test"])
    return write_series_table(path, series, labels, splits=splits)


def aeon_table(path, name: str):
    import numpy as np
    from aeon.datasets import load_classification

    from transferkit.data.sequence import write_series_table

    series, labels, splits = [], [], []
    for split in ("train", "test"):
        x, y = load_classification(name, split=split)
        series += [np.asarray(s, dtype=np.float64) for s in x]
        labels += [str(v) for v in y]
        splits += [split] * len(x)
    return write_series_table(path, series, labels, splits=splits)


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> None:
    parser = common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--arch", default="seq:cnn1d", help="the source architecture (a seq: id)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="target epochs (default 100, quick 15)")
    parser.add_argument("--source-epochs", type=int, default=None, help="MNIST-1D epochs (default 30, quick 6)")
    parser.add_argument("--targets", nargs="*", default=list(TARGETS))
    args = parser.parse_args()
    setup(args.threads)
    from transferkit import fit

    epochs = args.epochs or (15 if args.quick else 100)
    source_epochs = args.source_epochs or (6 if args.quick else 30)
    n_train = 1500 if args.quick else None
    work = WORK / "sequence_transfer"
    work.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "sequence_transfer", "quick": args.quick, "arch": args.arch, "seeds": args.seeds,
              "epochs": epochs, "machine": machine(args.threads)}

    # 1. the source task, trained by transferkit
    source_table = mnist1d_table(work / f"mnist1d{'-quick' if args.quick else ''}.parquet", n_train)
    source_dir = work / f"source-{'quick' if args.quick else 'full'}"
    with Timer() as t:
        src = fit(source_table, source=args.arch, strategy="full", out=source_dir, verbose=False, seed=0,
                  epochs=source_epochs, lr=3e-3, batch_size=64, baseline="none")
    sizes = src.metrics["data"]["split_sizes"]
    result["source"] = {"task": "MNIST-1D", "train_series": sizes["train"] + sizes["val"],
                        "epochs": source_epochs, "test_accuracy": src.metrics["test_accuracy"],
                        "seconds": round(t.seconds, 1), "run": str(source_dir)}
    log(f"source {args.arch} on MNIST-1D: test accuracy {src.metrics['test_accuracy']:.3f} ({t.seconds:.0f} s)")

    # 2. each target: scratch vs transfer, per seed
    result["targets"] = {}
    for name in args.targets:
        table = aeon_table(work / f"{name}.parquet", name)
        scores: dict[str, list[float]] = {arm: [] for arm in ARMS}
        seconds: dict[str, float] = {arm: 0.0 for arm in ARMS}
        for seed in range(args.seeds):
            for arm, options in ARMS.items():
                source = args.arch if arm == "scratch" else f"run:{source_dir}"
                with Timer() as t:
                    run = fit(table, source=source, verbose=False, seed=seed, epochs=epochs, probe_epochs=100,
                              probe_lr=1e-2, batch_size=16, baseline="none", **options)
                scores[arm].append(run.metrics["test_accuracy"])
                seconds[arm] += t.seconds
                log(f"{name} seed {seed} {arm}: {run.metrics['test_accuracy']:.3f} ({t.seconds:.0f} s)")
        summary = {}
        for arm in ARMS:
            m, s = mean_std(scores[arm])
            summary[arm] = {"mean": m, "std": s, "runs": scores[arm], "seconds": round(seconds[arm], 1)}
            if arm != "scratch":
                summary[arm]["gain_points"] = 100 * (m - mean_std(scores["scratch"])[0])
        result["targets"][name] = summary

    # 3. the table
    print(f"\nsource: {args.arch} trained by transferkit on MNIST-1D, test accuracy "
          f"{result['source']['test_accuracy']:.3f}; targets: test accuracy, mean ± std over {args.seeds} seeds")
    print("| target | scratch | transfer: full fine-tune | transfer: linear probe |")
    print("|---|---|---|---|")
    for name, summary in result["targets"].items():
        cells = [f"{summary['scratch']['mean']:.3f} ± {summary['scratch']['std']:.3f}"]
        for arm in ("transfer_full", "transfer_probe"):
            a = summary[arm]
            cells.append(f"{a['mean']:.3f} ± {a['std']:.3f} ({a['gain_points']:+.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    emit(result)


if __name__ == "__main__":
    main()
