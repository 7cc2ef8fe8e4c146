"""Ranking on 1 process vs 2 (sharded extraction through Accelerate), and the per-example cost it implies.

``transferkit rank DIR --sources S --no-cache`` runs once as one process and once under
``torchrun --nproc_per_node 2`` (each process extracts one contiguous shard of the images; the
shards are gathered and the main process scores), alternated for ``--rounds`` rounds; one torch
thread per process in both, so the two processes use the two cores that the single process
leaves half idle. Data: scikit-learn's digits written as 64 px PNGs (``--per-class`` per class),
ranked at ``--image-size``. Reports wall-clock medians (interpreter start, imports, model loads
included) and the ranking work itself (the sum of ``ranking.json``'s per-source seconds:
features and scores on the main process), the speed-ups, and the seconds per (source x example),
which docs/SCALING.md extrapolates to larger rankings.

    python benchmarks/scaling.py --quick
    python benchmarks/scaling.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import WORK, emit, log, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds (~2 minutes on 2 cores)")
    parser.add_argument("--sources", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--per-class", type=int, default=None, help="digits per class (default 40, quick 16)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (quick 2)")
    args = parser.parse_args()
    per_class, rounds = args.per_class or (16 if args.quick else 40), args.rounds or (2 if args.quick else 3)
    from transferkit.data.synthetic import write_image_folder

    data = WORK / f"scaling-digits-{per_class}"
    if not data.is_dir():
        write_image_folder(data, {str(d): per_class for d in range(10)}, size=64)
    bin_dir = Path(sys.executable).parent
    rank = ["-m", "transferkit", "rank", str(data), "--sources", args.sources, "--no-cache", "--quiet",
            "--image-size", str(args.image_size)]
    commands = {"1 process": [sys.executable, *rank],
                "2 processes": [str(bin_dir / "torchrun"), "--nproc_per_node", "2", *rank]}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    times: dict[str, list[float]] = {k: [] for k in commands}
    work: dict[str, list[float]] = {k: [] for k in commands}  # features + scores, from ranking.json
    examples = None
    for r in range(rounds):
        for name in (list(commands) if r % 2 == 0 else list(commands)[::-1]):
            out = Path(tempfile.mkdtemp(prefix="tk-scaling-"))
            started = time.perf_counter()
            subprocess.run([*commands[name], "--out", str(out / "rank")], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - started)
            rows = json.loads((out / "rank" / "ranking.json").read_text())
            examples = rows[0]["examples"]
            work[name].append(sum(row["seconds"] for row in rows))
            shutil.rmtree(out, ignore_errors=True)
            log(f"round {r}: {name} {times[name][-1]:.1f}s wall, {work[name][-1]:.1f}s ranking")
    med = {k: statistics.median(v) for k, v in times.items()}
    med_work = {k: statistics.median(v) for k, v in work.items()}
    n_sources = len(args.sources.split(","))
    images = examples or per_class * 10
    emit({"benchmark": "scaling", "machine": machine(1),
          "setup": {"sources": args.sources, "images_ranked": images, "image_size": args.image_size,
                    "rounds": rounds, "threads_per_process": 1},
          "median_seconds": med, "rounds_seconds": times, "speedup_2_vs_1": med["1 process"] / med["2 processes"],
          "median_ranking_seconds": med_work, "ranking_rounds_seconds": work,
          "ranking_speedup_2_vs_1": med_work["1 process"] / med_work["2 processes"],
          "ranking_seconds_per_source_example_1_process": med_work["1 process"] / (n_sources * images),
          "fixed_seconds_per_command": {k: med[k] - med_work[k] for k in med}})


if __name__ == "__main__":
    main()
