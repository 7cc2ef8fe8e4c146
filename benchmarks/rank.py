"""Source-ranking benchmarks: speed against the forward-pass floor, scorer cost, score agreement.

Protocols (all offline; data = scikit-learn digits written as 64 px PNGs, 10 classes):

1. **Speed** (default). In one run, on the same sources, images (the train split) and batch
   size: the *floor* is a bare ``torch.inference_mode`` loop of each source's backbone over
   already-preprocessed tensors; *rank* is ``transferkit.ranking.rank_sources`` end to end
   (decode each PNG once, each source's transform, forward, head softmax, LogME, cache write)
   with a fresh cache; *cached* is the same call again (cache read + LogME). Rounds alternate
   floor / rank / cached so machine noise hits all three alike; we report medians and
   ``rank / floor`` (target <= 1.10) and ``cached / floor`` (target <= 0.10), in wall time
   and in CPU time of the process (all threads: the helper threads that decode and transform
   count too). On a shared, oversubscribed machine wall time swings by 2x between rounds and
   CPU time is the steadier measure of the work added. Sources are loaded once before timing
   (model loading is reported apart; the floor has none).
   Then the cost of a ``@random`` control: the first source against its ``@random`` copy
   (``control_cost``; target <= 1.2).
2. **Scorer cost**: every registered scorer on synthetic features (10 classes, N up to
   10,000 at D = 1280, and D growing at fixed N; LEEP/NCE get N x 1000 probabilities).
3. **Agreement** (``--agreement``): every scorer on every packaged image source and its
   ``@random`` copy, against the test accuracy of a short full fine-tune of each; Kendall tau,
   the regret of each score's top pick, and whether every random copy ranks below every
   pretrained source. This is how ``DEFAULT_SCORE`` was chosen.

Usage::

    python benchmarks/rank.py --quick          # < 3 minutes on 2 CPU cores
    python benchmarks/rank.py                  # the full speed + scorer protocol
    python benchmarks/rank.py --agreement      # score vs fine-tune agreement (slow)

The last line printed is one JSON object with every result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from transferkit.data import load_task_data
from transferkit.data.synthetic import write_image_folder
from transferkit.features import with_image_size
from transferkit.scoring import SCORERS, get_scorer
from transferkit.ranking import rank_sources
from transferkit.sources import input_pipeline, load_source


def digits_folder(root: Path, per_class: int) -> Path:
    folder = root / f"digits-{per_class}"
    if not folder.is_dir():
        write_image_folder(folder, {str(d): per_class for d in range(10)}, size=64)
    return folder


def load_sources(ids: list[str], image_size: int | None) -> tuple[list, dict]:
    loaded, seconds = [], {}
    for source_id in ids:
        started = time.perf_counter()
        torch.manual_seed(0)
        loaded.append(with_image_size(load_source(source_id), image_size))
        seconds[source_id] = time.perf_counter() - started
    return loaded, seconds


# -- 1. speed ------------------------------------------------------------------------------------


def preprocess(sources: list, files: list[Path], batch_size: int) -> list[list[torch.Tensor]]:
    """Each source's batches of preprocessed tensors (outside any timing)."""
    from transferkit.data.image import open_image

    images = [open_image(f) for f in files]
    batches = []
    for src in sources:
        pipe = input_pipeline(src, train=False)
        xs = torch.stack([pipe.load(im) for im in images])
        batches.append(list(xs.split(batch_size)))
    return batches


@torch.inference_mode()
def floor_seconds(sources: list, batches: list[list[torch.Tensor]]) -> tuple[float, float]:
    """(wall, CPU) seconds of the bare forward loop."""
    with Clock() as clock, torch.inference_mode():
        for src, bs in zip(sources, batches):
            src.backbone.eval()
            for x in bs:
                src.backbone(pixel_values=x)
    return clock.wall, clock.cpu


class Clock:
    """Wall time and this process's CPU time (all threads) of a block."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


#: Digits per class of the control-cost protocol (~400 train images, the size issue 17 names).
CONTROL_PER_CLASS = 60


def control_cost(args, root: Path) -> dict:
    """Seconds to score a ``@random`` control against its pretrained source (same architecture,
    same ``CONTROL_PER_CLASS`` digits per class, LogME, no cache): the control also pays for its BatchNorm statistics, estimated
    from target examples. Fresh copies per call (the estimate marks a source's statistics done);
    alternated rounds, medians; target: ratio <= 1.2."""
    import copy

    task = load_task_data(digits_folder(root, CONTROL_PER_CLASS))
    source_id = args.sources[0]
    (pretrained, control), _ = load_sources([source_id, f"{source_id}@random"], args.image_size)
    rank_sources(task, [copy.deepcopy(control)], ["logme"], batch_size=args.batch_size, use_cache=False)  # warm-up
    times: dict[str, list[float]] = {"pretrained": [], "random": []}
    for r in range(args.repeats):
        for name in (("pretrained", "random") if r % 2 == 0 else ("random", "pretrained")):
            src = copy.deepcopy(pretrained if name == "pretrained" else control)
            with Clock() as clock:
                rank_sources(task, [src], ["logme"], batch_size=args.batch_size, use_cache=False)
            times[name].append(clock.wall)
        print(f"  round {r + 1}: pretrained {times['pretrained'][-1]:.2f}s, @random {times['random'][-1]:.2f}s",
              flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"source": source_id, "images": len(task.train), "rounds": times, "median_seconds": med,
            "random_over_pretrained": med["random"] / med["pretrained"], "target": "<= 1.2"}


def speed(args, root: Path) -> dict:
    task = load_task_data(digits_folder(root, args.per_class))
    files = list(task.train.examples)
    sources, load_s = load_sources(args.sources, args.image_size)
    batches = preprocess(sources, files, args.batch_size)
    # warm-up: first calls allocate and initialise lazily (also the transforms' first run)
    floor_seconds(sources, [b[:1] for b in batches])
    rank_sources(task, sources, ["logme"], batch_size=args.batch_size, use_cache=False)
    rounds = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="tk-rank-cache-") as cache:
            floor_wall, floor_cpu = floor_seconds(sources, batches)
            with Clock() as first:
                rank_sources(task, sources, ["logme"], batch_size=args.batch_size, cache_dir=cache)
            with Clock() as cached:
                rows = rank_sources(task, sources, ["logme"], batch_size=args.batch_size, cache_dir=cache)
            assert all(row["cached"] for row in rows)
        rounds.append({"floor_s": floor_wall, "rank_s": first.wall, "cached_s": cached.wall,
                       "floor_cpu_s": floor_cpu, "rank_cpu_s": first.cpu, "cached_cpu_s": cached.cpu})
        print(f"  round {r + 1}: wall floor {floor_wall:.2f}s rank {first.wall:.2f}s ({first.wall / floor_wall:.3f}x) "
              f"cached {cached.wall:.3f}s ({cached.wall / floor_wall:.3f}x) | CPU floor {floor_cpu:.2f}s "
              f"rank {first.cpu:.2f}s ({first.cpu / floor_cpu:.3f}x) cached {cached.cpu:.3f}s "
              f"({cached.cpu / floor_cpu:.3f}x)", flush=True)
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    paired = {k: statistics.median(x[f"{k}_s"] / x["floor_s"] for x in rounds) for k in ("rank", "cached")}
    return {
        "sources": args.sources, "images": len(files), "image_size": args.image_size or "native",
        "batch_size": args.batch_size, "repeats": args.repeats, "rounds": rounds,
        **{f"median_{k}": v for k, v in med.items()},
        "rank_over_floor": med["rank_s"] / med["floor_s"],
        "cached_over_floor": med["cached_s"] / med["floor_s"],
        "rank_over_floor_cpu": med["rank_cpu_s"] / med["floor_cpu_s"],
        "cached_over_floor_cpu": med["cached_cpu_s"] / med["floor_cpu_s"],
        "median_paired_rank_over_floor": paired["rank"],
        "median_paired_cached_over_floor": paired["cached"],
        "load_seconds": load_s,
    }


# -- 2. scorer cost ------------------------------------------------------------------------------


def synthetic(n: int, d: int, classes: int = 10, source_classes: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, d))
    X = (centres[y] + 2.0 * rng.normal(size=(n, d))).astype(np.float32)
    logits = rng.normal(size=(n, source_classes)) + 3.0 * np.eye(classes, source_classes)[y]
    P = np.exp(logits - logits.max(1, keepdims=True))
    return X, (P / P.sum(1, keepdims=True)).astype(np.float32), y


def time_scorer(name: str, X, P, y, repeats: int) -> float:
    inputs = P if get_scorer(name).input_kind == "probabilities" else X
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        get_scorer(name).fit(inputs, y)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def scorer_cost(args) -> dict:
    grid = [(n, args.scorer_d) for n in args.scorer_n] + [(args.d_sweep_n, d) for d in args.scorer_dims]
    results = []
    for n, d in dict.fromkeys(grid):
        X, P, y = synthetic(n, d)
        row = {"n": n, "d": d}
        for name in SCORERS.names():
            row[name] = time_scorer(name, X, P, y, repeats=3 if n * d <= 2_600_000 else 1)
        results.append(row)
        print("  N=%-6d D=%-5d " % (n, d) + "  ".join(f"{k} {v:.3f}s" for k, v in row.items() if k not in "nd"),
              flush=True)
    return {"grid": results}


# -- 3. agreement ---------------------------------------------------------------------------------


def agreement(args, root: Path) -> dict:
    from transferkit.config import FitConfig
    from transferkit.evaluation.metrics import classification_metrics
    from transferkit.runs import predict_proba
    from transferkit.training import train_target
    from transferkit.ranking import default_candidates

    ids = default_candidates("image")
    ids = ids + [f"{i}@random" for i in ids]
    targets = {"digits": digits_folder(root, args.per_class)}
    if not args.quick:
        targets["faces"] = faces_folder(root)
    names = SCORERS.names()
    # What decides in `--source auto`: a short run of the user's strategy. Two of them here,
    # with FitConfig's defaults otherwise (the same config for every candidate).
    truths = {"full": FitConfig(strategy="full", epochs=args.agreement_epochs, image_size=args.agreement_size,
                                baseline="none"),
              "linear_probe": FitConfig(strategy="linear_probe", image_size=args.agreement_size, baseline="none")}
    out = {}
    for target, folder in targets.items():
        task = load_task_data(folder)
        rows = rank_sources(task, ids, names, image_size=args.agreement_size, batch_size=args.batch_size,
                            cache_dir=root / "cache")
        by_source = {r["source"]: r for r in rows}
        accuracy: dict[str, dict[str, float]] = {}
        for truth, cfg in truths.items():
            accuracy[truth] = {}
            for source_id in ids:
                torch.manual_seed(cfg.seed)
                src = load_source(source_id)
                model, _ = train_target(task, src, cfg, verbose=False)
                proba = predict_proba(model, src, task.test.examples, batch_size=64)
                acc = classification_metrics(task.test.labels, proba.argmax(1), task.classes)["accuracy"]
                accuracy[truth][source_id] = acc
                print(f"  {target}: {source_id:<26} {truth} test accuracy {acc:.3f}", flush=True)
        per_score = summarize_agreement(by_source, accuracy, names)
        for name, entry in per_score.items():
            print(f"  {target}: {name:<19} " + "  ".join(
                f"{t}: tau {entry[t]['tau_all']:+.2f} tau(pretrained) {entry[t]['tau_pretrained']:+.2f} "
                f"regret top-1 {entry[t]['regret_top1_pretrained']:.3f} top-3 {entry[t]['regret_top3_pretrained']:.3f}"
                for t in truths) + f"  randoms last {entry['randoms_below_pretrained']}", flush=True)
        out[target] = {"test_accuracy": accuracy, "scores": {r["source"]: {n: r[n] for n in names} for r in rows},
                       "per_score": per_score, "train_examples": len(task.train), "test_examples": len(task.test)}
        (root / f"agreement-{target}.json").write_text(json.dumps(out[target], indent=1, default=float))
    return {"candidates": ids, "image_size": args.agreement_size, "full_epochs": args.agreement_epochs,
            "configs": {t: c.to_dict() for t, c in truths.items()}, "targets": out}


def summarize_agreement(scores: dict, accuracy: dict, names: list[str]) -> dict:
    """Per score: Kendall tau against each truth (all candidates, pretrained only), the regret of
    the top-1 and of the best of the top-3 among pretrained sources (what ``--source auto``
    with default candidates and ``top_k=3`` risks), and whether every @random copy ranks below
    every pretrained source."""
    from scipy.stats import kendalltau

    ids = list(next(iter(accuracy.values())))
    pre = [s for s in ids if not s.endswith("@random")]
    out = {}
    for name in names:
        value = {s: scores[s][name] for s in ids if scores[s][name] is not None}
        rnd = [v for s, v in value.items() if s.endswith("@random")]
        entry = {"randoms_below_pretrained": bool(rnd) and max(rnd) < min(value[s] for s in pre if s in value)}
        for truth, acc in accuracy.items():
            scored_pre = [s for s in pre if s in value]
            order = sorted(scored_pre, key=lambda s: -value[s])
            best = max(acc[s] for s in pre)
            entry[truth] = {
                "tau_all": float(kendalltau([value[s] for s in value], [acc[s] for s in value])[0]),
                "tau_pretrained": float(kendalltau([value[s] for s in scored_pre], [acc[s] for s in scored_pre])[0]),
                "top1_all": max(value, key=value.get),
                "regret_top1_pretrained": best - acc[order[0]],
                "regret_top3_pretrained": best - max(acc[s] for s in order[:3]),
            }
        out[name] = entry
    return out


def faces_folder(root: Path) -> Path:
    """scikit-image's LFW subset: 100 faces and 100 non-faces, 25 x 25 grey."""
    from PIL import Image
    from skimage.data import lfw_subset

    folder = root / "faces"
    if not folder.is_dir():
        images = lfw_subset()
        for i, im in enumerate(images):
            label = "face" if i < 100 else "not_face"
            (folder / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray((im * 255).round().astype(np.uint8), "L").save(folder / label / f"{i:03d}.png")
    return folder


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="Small sizes: finishes in under 3 minutes on 2 cores.")
    p.add_argument("--agreement", action="store_true", help="Run the score-vs-fine-tune agreement protocol only.")
    p.add_argument("--sources", default="mobilenet_v2,efficientnet_lite0,efficientnet_lite1")
    p.add_argument("--per-class", type=int, default=None, help="Digits per class (default 40; quick 12).")
    p.add_argument("--image-size", type=int, default=None, help="Input side (default: each source's own; quick 128).")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None, help="Timing rounds (default 5; quick 3).")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    p.add_argument("--workdir", type=Path, default=None,
                   help="Where the digits folder and cache go (default: a temp dir).")
    args = p.parse_args(argv)
    args.sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    args.per_class = args.per_class or (12 if args.quick else 40)
    args.image_size = args.image_size or (128 if args.quick else None)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.scorer_n = [500, 2000] if args.quick else [1000, 2500, 5000, 10000]
    args.scorer_d = 1280
    args.scorer_dims = [256, 1280] if args.quick else [256, 512, 1280, 2048]
    args.d_sweep_n = 2000
    args.agreement_size, args.agreement_epochs = 64, 4
    if args.threads:
        torch.set_num_threads(args.threads)

    machine = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average": list(os.getloadavg())}
    results = {"benchmark": "rank", "quick": args.quick, "machine": machine, "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="tk-bench-rank-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if args.agreement:
            print("Agreement: scores vs short full fine-tunes", flush=True)
            results["agreement"] = agreement(args, root)
        else:
            print(f"Speed: {', '.join(args.sources)} on {args.per_class * 10} digits, batch {args.batch_size}",
                  flush=True)
            results["speed"] = speed(args, root)
            s = results["speed"]
            print(f"rank_time / floor = {s['rank_over_floor']:.3f} wall, {s['rank_over_floor_cpu']:.3f} CPU "
                  f"(target <= 1.10); cached / floor = {s['cached_over_floor']:.3f} wall, "
                  f"{s['cached_over_floor_cpu']:.3f} CPU (target <= 0.10)", flush=True)
            print(f"Cost of a @random control: {args.sources[0]} against {args.sources[0]}@random", flush=True)
            results["control_cost"] = control_cost(args, root)
            print(f"@random / pretrained = {results['control_cost']['random_over_pretrained']:.3f} "
                  "(target <= 1.2)", flush=True)
            print("Scorer cost (seconds per fit, 10 classes, synthetic features)", flush=True)
            results["scorers"] = scorer_cost(args)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    print(json.dumps(results, default=float))
    return results


if __name__ == "__main__":
    main()
