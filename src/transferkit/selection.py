"""Choosing the source: rank candidates by transferability scores, then let short fine-tunes decide.

``select_source`` is ``transferkit fit --source auto``: rank (``transferkit.ranking``): rank, keep the top-k, then successive halving with short
fine-tunes on the train split judged on validation; the report says how well the score
predicted the short runs (Kendall's tau).

Why scores prune and fine-tunes decide: no published score ranks sources reliably. Measured
on four image targets with the packaged ImageNet sources, each of LogME, LEEP, NCE, regularized
H-score and kNN picked a source 4 to 68 points worse than the best on at least one target, and
one ranked a random-init network first. A score is cheap (one forward pass per example and a
closed-form fit) and good at throwing out the clearly bad; a few epochs of the real training
are what separate the good. Successive halving (Jamieson & Talwalkar, AISTATS 2016; Li et al.,
"Hyperband", JMLR 2018) spends those epochs where they matter: every survivor of a round gets
``eta`` times the epochs of the round before, and ``1/eta`` of them survive.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence

import numpy as np
import torch

from transferkit.config import FitConfig
from transferkit.data.base import TaskData
from transferkit.errors import ConfigError, DataError
from transferkit.ranking import (
    DEFAULT_SCORE,
    check_modality,
    check_source_ids,
    default_candidates,
    fmt,
    load_candidate,
    rank_sources,
)

# -- --source auto --------------------------------------------------------------------------------


def select_source(
    task: TaskData,
    candidates: Sequence[str] | None = None,
    cfg: FitConfig | None = None,
    *,
    top_k: int = 3,
    score: str = DEFAULT_SCORE,
    short_epochs: int | None = None,
    eta: int = 2,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> tuple[str, dict]:
    """``--source auto``: rank the candidates, keep the top-k, successive halving on short fine-tunes.

    Round 0 fine-tunes each of the top-k candidates (``cfg`` with few epochs, no baseline)
    on the train split and measures validation accuracy; the best ``1/eta`` survive into the
    next round with ``eta`` times the epochs, until one is left. Ties in validation accuracy
    go to the higher score.

    Args:
        task: The target data.
        candidates: Source ids (default: every packaged source of the data's modality).
        cfg: The run's config; the short runs use its strategy, learning rates, batch size,
            image size and seed, with fewer epochs.
        top_k: Candidates that get short fine-tunes (1 picks the top-scored source directly).
        score: The scorer that ranks (``transferkit scorers``).
        short_epochs: Fine-tuning epochs in round 0 (default ``max(1, cfg.epochs // 4)``); the
            linear-probe epochs shrink in the same proportion.
        eta: Halving rate: each round keeps ``ceil(n / eta)`` candidates.
        cache_dir: Feature cache directory.
        verbose: Print progress.

    Returns:
        ``(winner id, report)``. The report holds ``score``, ``candidates``, ``ranking`` (the
        rows of :func:`rank_sources`), ``top_k``, ``rounds`` (epochs and validation accuracy
        per candidate per round), ``short_run_val_accuracy`` (each top-k candidate's last
        round), ``choice``, ``kendall_tau`` and ``kendall_p`` (score vs round-0 validation
        accuracy over the top-k; None when undefined) and ``seconds``.
    """
    from transferkit.scoring import get_scorer

    started = time.perf_counter()
    cfg = cfg or FitConfig()
    get_scorer(score)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"`--top-k` must be a whole number >= 1; got {top_k!r}.")
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise ConfigError(f"`eta` must be a whole number >= 2; got {eta!r}.")
    if short_epochs is not None and (isinstance(short_epochs, bool) or not isinstance(short_epochs, int)
                                     or short_epochs < 1):
        raise ConfigError(f"`short_epochs` must be a whole number >= 1; got {short_epochs!r}.")
    # The caller's RNG comes back untouched: `fit` seeds, selects, then loads the winner, which
    # must be the same @random draw as the one ranked here (each load below seeds with cfg.seed).
    with torch.random.fork_rng(devices=[]):
        return _select(task, candidates, cfg, top_k, score, short_epochs, eta, cache_dir, verbose, started)


def _select(task, candidates, cfg, top_k, score, short_epochs, eta, cache_dir, verbose, started) -> tuple[str, dict]:
    from transferkit.training import prepare_source, resolve_options

    cfg = resolve_options(cfg, task)  # the epochs and batch size the full run will have

    candidates = list(dict.fromkeys(candidates or default_candidates(task.modality)))
    if not candidates:
        raise ConfigError(f"No packaged {task.modality} source to choose from; pass `--candidates` "
                          "with source ids (see `transferkit sources`).")
    if verbose:
        print(f"Ranking {len(candidates)} candidate sources by {score} on the train split ...")
    check_source_ids(candidates)
    prepared = []  # each candidate as `fit` would train it (seeded @random draw, image size, cut_at ...)
    for source_id in candidates:
        prepared.append(prepare_source(load_candidate(source_id, cfg.seed), cfg, task))
        check_modality(prepared[-1], task)
    rows = rank_sources(task, prepared, [score], batch_size=cfg.batch_size, cache_dir=cache_dir, verbose=verbose)
    del prepared
    scored = [r for r in rows if r[score] is not None]
    if not scored:
        raise DataError(f"No candidate could be scored with {score!r}: "
                        + "; ".join(n for r in rows for n in r["notes"]) + ". Try another `score`.")
    top = [r["source"] for r in scored[:top_k]]
    score_of = {r["source"]: r[score] for r in scored}

    rounds, last_acc, winner = _successive_halving(task, top, cfg, short_epochs or max(1, cfg.epochs // 4), eta,
                                                   verbose)
    tau, p, tau_note = _kendall(rounds, score_of, score)
    report = {
        "score": score, "candidates": candidates, "ranking": rows, "top_k": top, "rounds": rounds,
        "short_run_val_accuracy": last_acc, "choice": winner, "kendall_tau": tau, "kendall_p": p,
        "kendall_note": tau_note, "seconds": time.perf_counter() - started,
    }
    if verbose:
        print(format_selection(report))
    return winner, report


def _successive_halving(task: TaskData, top: list[str], cfg: FitConfig, first: int, eta: int,
                        verbose: bool) -> tuple[list[dict], dict[str, float], str]:
    """Short fine-tunes of ``top``, ``eta`` times the epochs each round, ``1/eta`` surviving;
    returns the rounds, each candidate's last validation accuracy and the winner."""
    from transferkit.training import train_target

    rounds, alive, last_acc = [], list(top), {}
    r = 0
    while len(alive) > 1:
        epochs = min(cfg.epochs, first * eta**r)
        probe_epochs = max(1, min(cfg.probe_epochs, math.ceil(cfg.probe_epochs * epochs / cfg.epochs)))
        short = dataclasses.replace(cfg, epochs=epochs, probe_epochs=probe_epochs, baseline=False, wise_ft=False,
                                    wise_ft_per_group=False, patience=0, checkpoint_every=0, report_to=[],
                                    resume=False)
        if verbose:
            print(f"Round {r + 1}: {len(alive)} candidates x {epochs} epoch(s) of {cfg.strategy} "
                  f"(probe epochs {probe_epochs})")
        results = []
        for source_id in alive:
            t0 = time.perf_counter()
            # as in `fit`: an @random candidate is the seeded draw that was ranked
            _, trainer = train_target(task, load_candidate(source_id, cfg.seed), short, verbose=verbose)
            acc = float(trainer.stages[-1]["best_val_accuracy"]) if trainer.stages else 0.0
            last_acc[source_id] = acc
            results.append({"source": source_id, "val_accuracy": acc, "seconds": time.perf_counter() - t0})
        order = sorted(results, key=lambda x: (-x["val_accuracy"], top.index(x["source"])))
        alive = [x["source"] for x in order[: math.ceil(len(alive) / eta)]]
        rounds.append({"round": r + 1, "epochs": epochs, "probe_epochs": probe_epochs, "results": results,
                       "kept": alive})
        if epochs >= cfg.epochs and len(alive) > 1:  # full budget reached: the best of this round wins
            alive = alive[:1]
        r += 1
    return rounds, last_acc, alive[0]


def _kendall(rounds: list[dict], score_of: dict[str, float], score: str) -> tuple[float | None, float | None, str]:
    """Kendall's tau (and p) between the score and round-1 validation accuracy, with a note."""
    from scipy.stats import kendalltau

    if not rounds or len(rounds[0]["results"]) < 2:
        return None, None, "needs short runs of at least 2 candidates (top_k >= 2)"
    x = [score_of[res["source"]] for res in rounds[0]["results"]]
    y = [res["val_accuracy"] for res in rounds[0]["results"]]
    t, pv = kendalltau(x, y)
    if not np.isfinite(t):
        return None, None, "undefined: the scores or the validation accuracies are all equal"
    return float(t), float(pv), f"{score} vs round-1 validation accuracy over the top {len(x)}"


def format_selection(report: dict) -> str:
    """A few lines summarising a ``select_source`` report."""
    lines = [f"Source selection by {report['score']}: top {len(report['top_k'])} of {len(report['candidates'])}"]
    for row in report["ranking"]:
        acc = report["short_run_val_accuracy"].get(row["source"])
        shown = f"  short-run val acc {acc:.3f}" if acc is not None else ""
        lines.append(f"  {row['rank']:>2}. {row['source']:<32} {report['score']} {fmt(row[report['score']])}{shown}")
    tau = report["kendall_tau"]
    lines.append(f"Chosen: {report['choice']}.  Kendall tau (score vs short-run accuracy): "
                 + (f"{tau:+.2f}" if tau is not None else f"n/a ({report['kendall_note']})"))
    return "\n".join(lines)


# -- helpers ---------------------------------------------------------------------------------------


