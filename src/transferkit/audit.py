"""``transferkit audit``: the brute-force oracle for ``--source auto --strategy auto``.

Every (source, strategy) pair is fully trained with ``fit`` at every seed (no baseline, no
search) and scored on the test split; the table gives test accuracy mean ± std and seconds per
pair, best first. It is what ``benchmarks/selection.py`` measures auto against, and what a user
runs to learn how good an auto choice was. Each finished cell is appended to
``checkpoints/cells.jsonl`` inside ``--out`` as it ends, so a killed audit rerun with the same
``--out`` continues where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferkit.config import FitConfig
from transferkit.data import TaskData, load_task_data
from transferkit.engine import is_main_process
from transferkit.engine.progress import Stage
from transferkit.errors import ConfigError
from transferkit.outdir import CHECKPOINTS, OutputDir
from transferkit.runs import data_options

FILES = ("audit.json", "audit.md", "audit.csv")


def audit(data: str | Path | TaskData, candidates: Sequence[str], strategies: Sequence[str], *, seeds: int = 3,
          out: str | Path | None = None, config: FitConfig | None = None, verbose: bool = True) -> dict:
    """Trains every (candidate, strategy) pair at seeds 0..seeds-1; returns ``{"cells", "pairs"}``.

    ``cells``: one row per run (source, strategy, seed, test/val accuracy, seconds); ``pairs``: per
    pair the mean and std of test accuracy over seeds and the mean seconds, best first. ``config``
    holds the training options every run shares (its ``strategy`` and ``seed`` are overridden).
    """
    from transferkit.pipeline import fit
    from transferkit.ranking import check_source_ids
    from transferkit.strategies import get_strategy

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"`--seeds` must be a whole number >= 1; got {seeds!r}.")
    candidates, strategies = list(dict.fromkeys(candidates)), list(dict.fromkeys(strategies))
    if not candidates or not strategies:
        raise ConfigError("`--candidates` and `--strategies` each need at least one name, e.g. "
                          "`--candidates mobilenet_v2,efficientnet_lite0 --strategies linear_probe,full`.")
    if "auto" in candidates or "auto" in strategies:
        raise ConfigError("The audit trains named pairs; 'auto' is what it checks. List source ids and strategies.")
    check_source_ids(candidates)
    for name in strategies:
        get_strategy(name)
    base = (config or FitConfig()).to_dict() | {"baseline": "none"}
    outdir = None if out is None else OutputDir.claim(out, "audit", inputs=[] if isinstance(data, TaskData) else [data],
                                                      lock=is_main_process())
    try:
        task = data if isinstance(data, TaskData) else load_task_data(data, **data_options(FitConfig.from_dict(base)))
        log = outdir.path / CHECKPOINTS / "cells.jsonl" if outdir is not None else None
        cells = _done_cells(log)
        todo = [(source, strategy, seed) for source in candidates for strategy in strategies for seed in range(seeds)
                if not any((c["source"], c["strategy"], c["seed"]) == (source, strategy, seed) for c in cells)]
        with Stage("audit", len(todo), "runs", enabled=verbose and is_main_process()) as shown:
            for source, strategy, seed in todo:
                if verbose:
                    print(f"audit: {source} + {strategy}, seed {seed}")
                started = time.perf_counter()
                run = fit(task, source=source, strategy=strategy, config=FitConfig.from_dict(base | {"seed": seed}),
                          verbose=False)
                val = run.metrics["stages"][-1].get("best_val_accuracy") if run.metrics["stages"] else None
                cells.append({"source": source, "strategy": strategy, "seed": seed,
                              "test_accuracy": run.metrics["test_accuracy"], "val_accuracy": val,
                              "seconds": time.perf_counter() - started})
                _append(log, cells[-1])
                shown.advance()
        result = {"cells": cells, "pairs": summarise(cells), "seeds": seeds, "data": task.summary()}
        if outdir is not None and is_main_process():
            outdir.publish(lambda folder: _write(folder, result))
        return result
    finally:
        if outdir is not None:
            outdir.release()


def summarise(cells: list[dict]) -> list[dict]:
    """Per (source, strategy): test accuracy mean, std (ddof 1; 0 for one seed), mean seconds; best first."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["source"], cell["strategy"]), []).append(cell)
    pairs = []
    for (source, strategy), rows in groups.items():
        acc = np.array([r["test_accuracy"] for r in rows])
        pairs.append({"source": source, "strategy": strategy, "seeds": len(rows), "test_accuracy": float(acc.mean()),
                      "test_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                      "seconds": float(np.mean([r["seconds"] for r in rows]))})
    pairs.sort(key=lambda p: -p["test_accuracy"])
    for rank, pair in enumerate(pairs, 1):
        pair["rank"] = rank
    return pairs


def markdown(result: dict) -> str:
    lines = [f"# Audit: every pair fully trained, {result['seeds']} seed(s)", "",
             "| rank | source | strategy | test accuracy | ± std | seconds |", "|---:|---|---|---:|---:|---:|"]
    lines += [f"| {p['rank']} | {p['source']} | {p['strategy']} | {p['test_accuracy']:.4f} | {p['test_std']:.4f} | "
              f"{p['seconds']:.1f} |" for p in result["pairs"]]
    total = sum(c["seconds"] for c in result["cells"])
    return "\n".join([*lines, "", f"Total training time {total:.0f} s over {len(result['cells'])} runs."]) + "\n"


def _write(folder: Path, result: dict) -> None:
    import csv

    (folder / "audit.json").write_text(json.dumps(result, indent=2))
    (folder / "audit.md").write_text(markdown(result))
    with open(folder / "audit.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["source", "strategy", "seed", "test_accuracy", "val_accuracy", "seconds"])
        writer.writeheader()
        writer.writerows(result["cells"])


def _done_cells(log: Path | None) -> list[dict]:
    """The cells an earlier, unfinished audit into the same folder finished (a torn last line is dropped)."""
    if log is None or not log.is_file():
        return []
    cells = []
    for line in log.read_text().splitlines():
        try:
            cell = json.loads(line)
        except ValueError:
            continue
        if isinstance(cell, dict) and {"source", "strategy", "seed", "test_accuracy", "seconds"} <= set(cell):
            cells.append(cell)
    return cells


def _append(log: Path | None, cell: dict) -> None:
    if log is None:
        return
    log.parent.mkdir(exist_ok=True)
    with open(log, "a") as f:
        f.write(json.dumps(cell) + "\n")
