"""Are transferkit's defaults fast? Feature extraction settings and the CLI's start-up time.

1. **Feature extraction**: ``transferkit.engine.extract.extract_features`` (what ``linear_probe`` and
   ``lp_ft`` run; its defaults: ``inference_mode``, contiguous NCHW, eager, torch's thread count)
   against the same loop (same ``DataLoader`` over the same ``ExampleDataset``: decode + eval
   transform, batch 64) with every combination of {``no_grad``, ``inference_mode``} x
   {channels_last off/on} x {``torch.compile`` off/on}. Compile time (the first call) is reported
   apart and not counted. Source: packaged ``mobilenet_v2`` at 64 px on Fashion-MNIST PNGs.
   Rounds alternate the variants; ``defaults_vs_best`` = default median / best median (target <= 1.05).
   Also measured for information: the defaults with 2 torch threads instead of ``--threads``.
2. **Start-up**: wall time of ``transferkit --help`` vs ``python -c "import torch"`` in fresh
   subprocesses, alternated, medians (target: ratio <= 1.5); and whether the CLI module imports
   torch at all.

    python benchmarks/defaults.py --quick      # no torch.compile (its compile alone can take minutes)
    python benchmarks/defaults.py
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import time

from _timing import WORK, Timer, common_args, emit, fresh, log, machine, median, setup


def cli_startup(reps: int) -> dict:
    exe = shutil.which("transferkit") or str(__import__("pathlib").Path(sys.executable).parent / "transferkit")
    cmds = {"transferkit_help": [exe, "--help"], "import_torch": [sys.executable, "-c", "import torch"]}
    times = {k: [] for k in cmds}
    for r in range(reps):
        for name in (list(cmds) if r % 2 == 0 else list(cmds)[::-1]):
            started = time.perf_counter()
            subprocess.run(cmds[name], capture_output=True, check=True)
            times[name].append(time.perf_counter() - started)
    probe = subprocess.run([sys.executable, "-c", "import sys, transferkit.cli; "
                            "print(sorted(m for m in ('torch', 'numpy', 'transformers', 'timm', 'accelerate', "
                            "'sklearn', 'PIL') if m in sys.modules))"], capture_output=True, text=True)
    med = {k: median(v) for k, v in times.items()}
    return {"seconds": med, "rounds": times, "ratio_help_vs_import_torch": med["transferkit_help"] / med["import_torch"],
            "heavy_modules_imported_by_cli": probe.stdout.strip(), "target": "<= 1.5"}


def main() -> None:
    parser = common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args()
    setup(args.threads)
    import numpy as np
    import torch

    from _data import fashion_mnist_folder
    from transferkit.data import load_task_data
    from transferkit.engine.extract import extract_features
    from transferkit.sources import input_pipeline, load_source
    from transferkit.sources.inputs import ExampleDataset

    rounds = args.rounds or (3 if args.quick else 5)
    images = args.images or (128 if args.quick else 384)
    use_compile = (not args.quick) if args.compile is None else args.compile
    per_class = max(1, images // 10)
    task = load_task_data(fashion_mnist_folder(WORK / f"fmnist-defaults-{per_class}", per_class, 0, 1),
                          val_fraction=0.01, seed=0)
    src = load_source("mobilenet_v2")
    src.preprocessing.image_size = 64
    examples = list(task.train.examples)[:images]
    dataset = ExampleDataset(examples, None, input_pipeline(src, train=False))
    batch = 64

    def loop(bb, grad_mode, channels_last):
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, collate_fn=dataset.collate)
        ctx = torch.inference_mode if grad_mode == "inference_mode" else torch.no_grad
        out = []
        with ctx():
            for inputs, _ in loader:
                x = inputs["pixel_values"]
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append(bb(pixel_values=x).float())
        return torch.cat(out)

    backbones, compile_seconds = {}, {}
    reference = extract_features(fresh(src).backbone, dataset, batch_size=batch)
    grid = list(itertools.product(("no_grad", "inference_mode"), (False, True), (False, True) if use_compile else (False,)))
    max_diff = {}
    for grad_mode, cl, comp in grid:
        bb = fresh(src).backbone.eval()
        if cl:
            bb = bb.to(memory_format=torch.channels_last)
        if comp:
            bb = torch.compile(bb)
        name = f"{grad_mode}|{'channels_last' if cl else 'contiguous'}|{'compiled' if comp else 'eager'}"
        with Timer() as t:
            feats = loop(bb, grad_mode, cl)  # warm-up; for compiled models this is the compile
        compile_seconds[name] = t.seconds
        max_diff[name] = float((feats - reference).abs().max())
        backbones[name] = (bb, grad_mode, cl)
        log(f"{name}: first call {t.seconds:.1f}s, max |diff| vs defaults {max_diff[name]:.2e}")
    default_bb = fresh(src).backbone

    def run_default(threads):
        torch.set_num_threads(threads)
        try:
            with Timer() as t:
                extract_features(default_bb, dataset, batch_size=batch)
        finally:
            torch.set_num_threads(args.threads)
        return t.seconds

    variants = {"transferkit_defaults": lambda: run_default(args.threads)}
    for name, (bb, gm, cl) in backbones.items():
        variants[name] = (lambda bb=bb, gm=gm, cl=cl: _timed(loop, bb, gm, cl))
    if args.threads != 2:
        variants["transferkit_defaults|2_threads"] = lambda: run_default(2)
    times = {k: [] for k in variants}
    for r in range(rounds):
        keys = list(variants)
        keys = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in keys:
            if k.endswith("2_threads") and r >= 2:
                continue  # informative only, and very slow on a busy machine: two rounds are enough
            times[k].append(variants[k]())
        log(f"round {r}: " + ", ".join(f"{k} {times[k][-1]:.2f}s" for k in keys if times[k]))
    med = {k: median(v) for k, v in times.items()}
    grid_med = {k: v for k, v in med.items() if "|" in k and "threads" not in k}
    best = min(grid_med, key=grid_med.get)
    startup = cli_startup(3 if args.quick else 7)
    emit({"benchmark": "defaults", "machine": machine(args.threads),
          "setup": {"source": "mobilenet_v2", "image_size": 64, "images": len(dataset), "batch_size": batch,
                    "rounds": rounds, "compile": use_compile},
          "extraction_seconds": med, "best_variant": best, "best_seconds": grid_med[best],
          "defaults_vs_best": med["transferkit_defaults"] / grid_med[best], "target_defaults_vs_best": "<= 1.05",
          "first_call_seconds": compile_seconds, "max_abs_feature_diff_vs_defaults": max_diff,
          "images_per_second_defaults": len(dataset) / med["transferkit_defaults"],
          "cli": startup})


def _timed(fn, *a):
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
