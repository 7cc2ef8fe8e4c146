"""Shared helpers for the benchmark scripts: threads, machine notes, medians, the JSON last line."""

from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# Python puts the script's folder first on sys.path, where `benchmarks/peft.py` would shadow the
# real `peft` package (imported by transformers and by transferkit's LoRA). Keep the folder, last.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR] + [str(BENCH_DIR)]
WORK = Path(os.environ.get("TRANSFERKIT_BENCH_DIR", "/tmp/transferkit-bench"))


def common_args(parser, threads: int = 1):
    parser.add_argument("--quick", action="store_true", help="a small version (< 3 minutes on 2 idle cores)")
    parser.add_argument("--threads", type=int, default=threads,
                        help="torch intra-op threads for every variant (default 1: on a shared 2-core machine "
                             "2 threads ran 6-8x slower than 1 because of OpenMP barrier waits)")
    return parser


def setup(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)  # BLAS too: scikit-learn's solvers suffer the same oversubscription
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(threads)
    import warnings

    warnings.filterwarnings("ignore")


def machine(threads: int) -> dict:
    import torch

    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "torch_threads": threads,
            "python": platform.python_version(), "torch": torch.__version__, "command": " ".join(sys.argv)}


def median(xs):
    return statistics.median(xs) if xs else float("nan")


class Timer:
    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started


def fresh(src):
    """A deep copy of a loaded source (``train_target`` trains the source's backbone in place)."""
    return copy.deepcopy(src)


def emit(result: dict) -> None:
    result.setdefault("machine", {})["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, default=float), flush=True)


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)
