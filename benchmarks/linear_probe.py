"""Linear probe: transferkit vs the CLIP-paper recipe vs the forward-pass floor, in one run.

Same source (packaged ``mobilenet_v2``, ImageNet-1k, at 64 px), same images (Fashion-MNIST PNGs:
``N`` labels per class + a fixed test set), same batch size (64 for every forward pass), same
torch threads. Rounds alternate the three variants (rotating which goes first) and medians are
reported.

What is timed (the source is loaded once, outside the timings; each variant gets a fresh copy):

- **transferkit**: ``training.train_target`` with ``strategy="linear_probe"`` (decode + transform +
  forward over train and val, then the convex head fit with its L2 chosen on val or by
  cross-validation, refitted on train + val) + ``runs.predict_proba`` on the test images
  (decode + transform + forward + head). This is ``fit`` without source loading, baseline,
  report and file writing.
- **recipe** (Radford et al. 2021, CLIP's linear-probe code): a torch ``DataLoader`` that opens
  each PNG with PIL and applies the same eval transform, an ``inference_mode`` forward loop over
  train, val and test, then scikit-learn ``LogisticRegression(C=0.316, max_iter=1000)`` fitted on
  the train features and scored on the test features.
- **floor**: a bare ``inference_mode`` loop of the backbone over the same train+val+test images,
  already decoded, transformed and batched into tensors before the clock starts, at its fastest:
  contiguous batches of 64, channels-last batches of 64 and channels-last pieces of
  ``INFERENCE_PIXELS`` (what transferkit feeds) are all timed, and the floor is their minimum.

Accuracy (untimed): the same transferkit and recipe calls on ``--draws`` other draws of the
labelled examples (seeds 1, 2, ...; the same test images), so the accuracy delta is a mean over
draws rather than one split's luck.

JSON keys: ``efficiency_vs_forward_floor`` = floor / transferkit (target >= 0.90),
``time_ratio_vs_peer`` = transferkit / recipe (target <= 1.00), ``accuracy_delta_vs_peer`` =
mean over draws of transferkit test accuracy - recipe test accuracy (target >= -0.003), raw
medians and per-round times. ``--image-size`` (default 64) sets the side every variant uses.

    python benchmarks/linear_probe.py --quick
    python benchmarks/linear_probe.py
"""

from __future__ import annotations

import argparse
import time

from _timing import WORK, Timer, common_args, emit, fresh, log, machine, median, setup


def main() -> None:
    parser = common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--test-per-class", type=int, default=None, help="default 100 (quick 30)")
    parser.add_argument("--draws", type=int, default=None, help="labelled draws for the accuracy (default 5, quick 2)")
    parser.add_argument("--profile", action="store_true", help="cProfile one transferkit call (to stderr)")
    args = parser.parse_args()
    setup(args.threads)
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from _data import fashion_mnist_folder
    from transferkit.config import FitConfig
    from transferkit.data import load_task_data
    from transferkit.engine.extract import INFERENCE_PIXELS
    from transferkit.runs import predict_proba
    from transferkit.training import train_target
    from transferkit.sources import input_pipeline, load_source

    per_class = args.per_class or (20 if args.quick else 30)
    rounds = args.rounds or (2 if args.quick else 4)
    test_per_class = args.test_per_class or (30 if args.quick else 100)
    draws = args.draws or (2 if args.quick else 5)

    def task_of(seed: int):
        return load_task_data(fashion_mnist_folder(WORK / f"fmnist-lp-{per_class}-{test_per_class}-s{seed}", per_class,
                                                   seed, test_per_class), seed=0)

    task = task_of(0)
    batch, size = 64, args.image_size
    cfg = FitConfig(strategy="linear_probe", image_size=size, batch_size=batch // 2, baseline="none", seed=0)
    src = load_source("mobilenet_v2")
    src.preprocessing.image_size = size
    transform = input_pipeline(src, train=False).transform  # the same eval transform for every variant
    files = {s: list(task.splits()[s].examples) for s in ("train", "val", "test")}
    every = files["train"] + files["val"] + files["test"]
    log(f"{len(files['train'])} train, {len(files['val'])} val, {len(files['test'])} test images")

    # -- the floor's tensors, made before any clock starts
    floor_batches = [torch.stack([transform(Image.open(f).convert("RGB")) for f in every[i: i + batch]])
                     for i in range(0, len(every), batch)]

    def floor_in(layout, per: int = batch) -> dict:
        bb = fresh(src).backbone.eval().to(memory_format=layout)
        batches = [x.contiguous(memory_format=layout) for b in floor_batches for x in b.split(per)]
        with Timer() as t, torch.inference_mode():
            for x in batches:
                bb(pixel_values=x)
        return {"seconds": t.seconds}

    def transferkit(task=task) -> dict:
        s = fresh(src)
        test = task.splits()["test"]
        with Timer() as t:
            model, trainer = train_target(task, s, cfg, verbose=False)
            proba = predict_proba(model, s, list(test.examples), batch_size=batch)
        acc = float((proba.argmax(1) == np.asarray(test.labels)).mean())
        probe_stage = sum(st["seconds"] for st in trainer.stages)  # train + val features and the head fit
        return {"seconds": t.seconds, "probe_stage_seconds": probe_stage, "accuracy": acc,
                "l2_c": trainer.stages[-1].get("l2_c"), "c_chosen_by": trainer.stages[-1].get("c_chosen_by")}

    class Files(torch.utils.data.Dataset):
        def __init__(self, paths):
            self.paths = paths

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            return transform(Image.open(self.paths[i]).convert("RGB"))

    def recipe(task=task) -> dict:
        bb = fresh(src).backbone.eval()
        paths = {s: list(task.splits()[s].examples) for s in ("train", "val", "test")}
        ys = {s: np.asarray(task.splits()[s].labels) for s in ("train", "test")}
        with Timer() as t:
            feats = {}
            with torch.inference_mode():
                for split in ("train", "val", "test"):
                    loader = torch.utils.data.DataLoader(Files(paths[split]), batch_size=batch)
                    feats[split] = torch.cat([bb(pixel_values=x) for x in loader]).numpy()
            started = time.perf_counter()
            clf = LogisticRegression(C=0.316, max_iter=1000).fit(feats["train"], ys["train"])
            fit_seconds = time.perf_counter() - started
            acc = float((clf.predict(feats["test"]) == ys["test"]).mean())
        return {"seconds": t.seconds, "head_fit_seconds": fit_seconds, "accuracy": acc}

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(transferkit)
        pstats.Stats(prof, stream=__import__("sys").stderr).sort_stats("cumulative").print_stats(35)

    variants = {"floor_contiguous": lambda: floor_in(torch.contiguous_format), "transferkit": transferkit,
                "floor_channels_last": lambda: floor_in(torch.channels_last), "recipe": recipe,
                "floor_channels_last_pieces": lambda: floor_in(torch.channels_last, INFERENCE_PIXELS // size**2)}
    times = {k: [] for k in variants}
    transferkit()  # warm-up (first-call allocations, lazy imports); not counted
    for r in range(rounds):
        order = list(variants)[r % len(variants):] + list(variants)[:r % len(variants)]
        for name in order:
            out = variants[name]()
            times[name].append(out)
            log(f"round {r} {name}: {out}")
    med = {k: median([o["seconds"] for o in v]) for k, v in times.items()}
    med["floor"] = min(med[k] for k in med if k.startswith("floor_"))
    accuracy = {"transferkit": [times["transferkit"][-1]["accuracy"]], "recipe": [times["recipe"][-1]["accuracy"]]}
    for seed in range(1, draws):
        other = task_of(seed)
        for name, run in (("transferkit", transferkit), ("recipe", recipe)):
            accuracy[name].append(run(other)["accuracy"])
        log(f"draw {seed}: transferkit {accuracy['transferkit'][-1]:.4f}, recipe {accuracy['recipe'][-1]:.4f}")
    deltas = [a - b for a, b in zip(accuracy["transferkit"], accuracy["recipe"])]
    emit({
        "benchmark": "linear_probe",
        "setup": {"source": "mobilenet_v2 (ImageNet-1k)", "image_size": size, "batch_size": batch,
                  "data": f"Fashion-MNIST, {per_class} labels/class (train+val), {test_per_class}/class test",
                  "images": len(every), "rounds": rounds, "draws": draws},
        "machine": machine(args.threads),
        "floor_seconds": med["floor"], "transferkit_seconds": med["transferkit"], "recipe_seconds": med["recipe"],
        "floor_contiguous_seconds": med["floor_contiguous"], "floor_channels_last_seconds": med["floor_channels_last"],
        "floor_channels_last_pieces_seconds": med["floor_channels_last_pieces"],
        "transferkit_probe_stage_seconds": median([o["probe_stage_seconds"] for o in times["transferkit"]]),
        "recipe_head_fit_seconds": median([o["head_fit_seconds"] for o in times["recipe"]]),
        "transferkit_l2_c": [o["l2_c"] for o in times["transferkit"]][-1],
        "efficiency_vs_forward_floor": med["floor"] / med["transferkit"],
        "time_ratio_vs_peer": med["transferkit"] / med["recipe"],
        "accuracy_per_draw": accuracy, "accuracy_transferkit": float(np.mean(accuracy["transferkit"])),
        "accuracy_recipe": float(np.mean(accuracy["recipe"])), "accuracy_delta_vs_peer": float(np.mean(deltas)),
        "accuracy_delta_std_over_draws": float(np.std(deltas)),
        "targets": {"efficiency_vs_forward_floor": ">= 0.90", "time_ratio_vs_peer": "<= 1.00",
                    "accuracy_delta_vs_peer": ">= -0.003"},
        "rounds_seconds": {k: [round(o["seconds"], 3) for o in v] for k, v in times.items()},
    })


if __name__ == "__main__":
    main()
