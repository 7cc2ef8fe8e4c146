"""Choosing the source: rank candidates by transferability scores, then let short fine-tunes decide.

``rank_sources`` scores every candidate on the target's train split (features from
:mod:`transferkit.features`, cached; scorers from :mod:`transferkit.scoring`) and
``write_ranking`` saves the table, ``ranking.json`` and a bar chart. ``select_source`` is
``transferkit fit --source auto``: rank, keep the top-k, then successive halving with short
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

Which split is scored: the **train split only** by default. The test split is never used for
model choice. The validation split judges the short fine-tunes, so keeping it out of the
scores keeps that judgement (and the Kendall tau between score and validation accuracy)
independent of the data the score saw. ``splits=("train", "val")`` scores on both (more
examples, steadier scores, at the price of that independence); each split is cached on its
own, so switching costs only the new split's forward passes.

Default score: LogME; see ``DEFAULT_SCORE`` and the "## rank" section of docs/BENCHMARKS.md
for the measurements behind the choice. Negative controls (``transferkit rank --controls``)
are ``@random`` copies, whose BatchNorm statistics come from the train split
(``features.estimate_batchnorm_statistics``): the random network as training would start it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from transferkit.config import FitConfig
from transferkit.data.base import TaskData
from transferkit.errors import ConfigError, DataError
from transferkit.outdir import OutputDir
from transferkit.sources.base import RANDOM_SUFFIX, SourceModel

#: The score ``--source auto`` ranks by, chosen from the measurements in docs/BENCHMARKS.md
#: ("## rank": the packaged ImageNet sources and their ``@random`` copies on digits and on
#: faces vs non-faces, against short ``full`` and ``linear_probe`` runs). LogME never pruned the
#: best pretrained source out of the top 3 (LEEP and NCE did, by 17-26 points on digits), was
#: as good as any score at the top-1 pick except the costlier cross-validated ``linear``, needs
#: no source head (LEEP/NCE score nothing for headless sources), has nothing to tune and scores
#: 10,000 x 1280 features in under 2 s, and it ranked every ``@random`` copy last on both
#: targets. It is no oracle: on faces its first pick was 7.5-15 points below the best
#: pretrained source, which is why short fine-tunes make the choice.
DEFAULT_SCORE = "logme"
SCORABLE_SPLITS = ("train", "val")


# -- ranking -------------------------------------------------------------------------------------


def rank_sources(
    task: TaskData,
    sources: Sequence[str | SourceModel],
    scores: Sequence[str] = (DEFAULT_SCORE,),
    *,
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    splits: Sequence[str] = ("train",),
    use_cache: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
    verbose: bool = False,
) -> list[dict]:
    """Scores every source on the target task and ranks them by the first score.

    Args:
        task: The target data.
        sources: Source ids (``ID@random`` gives a random-init negative control) or loaded sources.
        scores: Scorer names (``transferkit scorers``); the first one ranks. ``leep`` and
            ``nce`` need a source head and are None (with a note) for sources without one.
        batch_size: Examples per forward pass.
        cache_dir: Feature cache directory (default ``$TRANSFERKIT_CACHE`` or
            ``~/.cache/transferkit/features``).
        image_size: Input side for image sources (default: each source's own).
        splits: The splits scored (see the module docstring); "test" is refused.
        use_cache: Read and write the feature cache.
        seed: Seed set before loading each source id, so ``@random`` draws are reproducible
            (and cached) and match what ``fit`` trains with the same seed.
        device: Where forward passes run (default: CUDA when present, else CPU).
        verbose: Print one line per source as it is scored.

    Returns:
        One row per source, best first: ``{"source", <score>: float or None, ..., "seconds",
        "rank", "notes", ...}``. ``seconds`` is the ranking cost of that source: features
        (cache read, or decoding share + transforms + forward passes) and scoring, split in
        ``feature_seconds`` and ``score_seconds``; loading the model is ``load_seconds``.

    Raises:
        UnknownNameError: A scorer or source name is unknown (with a did-you-mean hint).
        ConfigError: An option is invalid, or a source does not take the data's modality.
    """
    from transferkit.features import source_features, with_image_size
    from transferkit.scoring import get_scorer

    scores = _check_scores(scores)
    for name in scores:
        get_scorer(name)  # unknown names fail before any work
    splits = check_splits(splits)
    if not sources:
        raise ConfigError("`sources` is empty; give at least one source id, e.g. ['mobilenet_v2'].")
    check_source_ids([s for s in sources if isinstance(s, str)])

    loaded, load_seconds = [], []
    for s in sources:
        started = time.perf_counter()
        src = _load(s, seed)
        _check_modality(src, task)
        loaded.append(with_image_size(src, image_size))
        load_seconds.append(time.perf_counter() - started)

    parts = [source_features(loaded, task.splits()[name].examples, batch_size=batch_size, cache_dir=cache_dir,
                             use_cache=use_cache, device=device, statistics_from=task.train.examples)
             for name in splits]
    labels = np.concatenate([task.splits()[name].labels for name in splits])
    rows = []
    for i, src in enumerate(loaded):
        outs = [part[i] for part in parts]
        feats = np.concatenate([o.features for o in outs])
        probs = None if outs[0].probabilities is None else np.concatenate([o.probabilities for o in outs])
        row = {"source": src.id, "rank": None, "random_control": src.id.endswith(RANDOM_SUFFIX),
               "examples": int(len(labels)), "feature_dim": int(feats.shape[1]),
               "head_classes": None if probs is None else int(probs.shape[1]),
               "cached": all(o.cached for o in outs), "load_seconds": load_seconds[i],
               "feature_seconds": sum(o.seconds for o in outs), "notes": []}
        started = time.perf_counter()
        for name in scores:
            row[name] = _score(name, feats, probs, labels, row["notes"])
        row["score_seconds"] = time.perf_counter() - started
        row["seconds"] = row["feature_seconds"] + row["score_seconds"]
        rows.append(row)
        if verbose:
            shown = ", ".join(f"{n} {_fmt(row[n])}" for n in scores)
            print(f"  {src.id}: {shown} ({row['seconds']:.1f}s{', cached features' if row['cached'] else ''})")
    return _ranked(rows, scores[0])


def _score(name: str, feats: np.ndarray, probs: np.ndarray | None, labels: np.ndarray, notes: list) -> float | None:
    from transferkit.scoring import get_scorer

    scorer = get_scorer(name)
    X = feats
    if scorer.input_kind == "probabilities":
        if probs is None:
            notes.append(f"{name} skipped: the source has no classifier head")
            return None
        X = probs
    try:
        return float(scorer.fit(X, labels).score_)
    except DataError as e:
        notes.append(f"{name} failed: {e}")
        return None


def _ranked(rows: list[dict], primary: str) -> list[dict]:
    """Rows sorted best first by ``primary`` (unscored last), with 1-based ``rank``."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i][primary] is None, -(rows[i][primary] or 0.0), i))
    ranked = [rows[i] for i in order]
    for r, row in enumerate(ranked, 1):
        row["rank"], row["ranked_by"] = r, primary
    return ranked


def default_candidates(modality: str) -> list[str]:
    """Every packaged source of ``modality`` (``transferkit sources``)."""
    from transferkit.sources import list_sources

    return [s.name for s in list_sources() if s.modality == modality]


# -- output ---------------------------------------------------------------------------------------


def score_names(rows: list[dict]) -> list[str]:
    """The score columns of ranking rows: the ranking score first, then as asked for."""
    from transferkit.scoring import SCORERS

    names = list(dict.fromkeys(k for row in rows for k in row if k in SCORERS))
    primary = next((row["ranked_by"] for row in rows if row.get("ranked_by") in names), None)
    return [primary, *(n for n in names if n != primary)] if primary else names


def markdown_table(rows: list[dict], scores: Sequence[str] | None = None) -> str:
    """The ranking as a Markdown table (notes as a list below it)."""
    scores = list(scores or score_names(rows))
    lines = ["| rank | source | " + " | ".join(scores) + " | seconds |",
             "|---:|---|" + "---:|" * len(scores) + "---:|"]
    notes = []
    for row in rows:
        cells = [_fmt(row.get(s)) + ("*" if row.get(s) is None else "") for s in scores]
        lines.append(f"| {row['rank']} | {row['source']} | " + " | ".join(cells) + f" | {row['seconds']:.1f} |")
        notes += [f"- {row['source']}: {n}" for n in row.get("notes", [])]
    if notes:
        lines += ["", "\\* not scored:", *notes]
    return "\n".join(lines) + "\n"


def write_ranking(rows: list[dict], out_dir: str | os.PathLike | OutputDir, *, title: str | None = None
                  ) -> dict[str, Path]:
    """Writes ``ranking.json`` (one row per source), ``ranking.md`` and ``ranking.png``, in one swap.

    Args:
        rows: The ranking, best first.
        out_dir: The folder, or one already claimed with ``OutputDir.claim(path, "ranking")``.
        title: The heading of the table and the chart.

    Returns:
        The written paths by kind: ``{"json", "markdown", "png"}``.
    """
    if not isinstance(out_dir, OutputDir):
        with OutputDir.claim(out_dir, "ranking") as claimed:
            return write_ranking(rows, claimed, title=title)
    from transferkit._io import write_json

    names = {"json": "ranking.json", "markdown": "ranking.md", "png": "ranking.png"}

    def write(folder: Path) -> None:
        write_json(folder / names["json"], rows)
        heading = f"# {title}\n\n" if title else "# Source ranking\n\n"
        (folder / names["markdown"]).write_text(heading + markdown_table(rows))
        plot_ranking(rows, folder / names["png"], title=title)

    out_dir.publish(write)
    return {kind: out_dir.path / name for kind, name in names.items()}


def plot_ranking(rows: list[dict], path: str | os.PathLike, *, title: str | None = None) -> None:
    """A horizontal bar chart per score (best at the top; ``@random`` controls in grey)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    scores = score_names(rows) or ["seconds"]
    fig = Figure(figsize=(4.2 * len(scores), 0.45 * len(rows) + 1.6), layout="constrained")
    axes = fig.subplots(1, len(scores), squeeze=False)[0]
    names = [r["source"] for r in rows][::-1]
    for k, (ax, score) in enumerate(zip(axes, scores)):
        values = [r.get(score) for r in rows][::-1]
        colours = ["#9e9e9e" if r.get("random_control") else "#1f77b4" for r in rows][::-1]
        shown = [v for v in values if v is not None] or [0.0]
        lo, hi = min(shown), max(shown)
        span = (hi - lo) or abs(hi) or 1.0
        # all-negative scores (LEEP, NCE): bars start just left of the worst so differences show
        base = lo - 0.2 * span if hi < 0 else 0.0
        ax.barh(range(len(names)), [(v if v is not None else base) - base for v in values], left=base, color=colours)
        for y, v in enumerate(values):
            ax.text(base, y, " n/a" if v is None else f" {v:.4g}", va="center", fontsize=7)
        if hi < 0:
            ax.set_xlim(base, hi + 0.1 * span)
        ax.set_yticks(range(len(names)), names if k == 0 else [""] * len(names), fontsize=8)
        ax.set_title(f"{score} (higher is better)" if score != "seconds" else score, fontsize=9)
        if base == 0.0:
            ax.axvline(0, color="black", linewidth=0.6)
    if any(r.get("random_control") for r in rows):
        from matplotlib.patches import Patch

        handles = [Patch(color="#1f77b4", label="pretrained"), Patch(color="#9e9e9e", label="@random control")]
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle(title or "Source ranking", fontsize=10)
    fig.savefig(path, dpi=110)


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
    from scipy.stats import kendalltau

    from transferkit.training import prepare_source, train_target

    candidates = list(dict.fromkeys(candidates or default_candidates(task.modality)))
    if not candidates:
        raise ConfigError(f"No packaged {task.modality} source to choose from; pass `--candidates` "
                          "with source ids (see `transferkit sources`).")
    if verbose:
        print(f"Ranking {len(candidates)} candidate sources by {score} on the train split ...")
    check_source_ids(candidates)
    prepared = []  # each candidate as `fit` would train it (seeded @random draw, image size, cut_at ...)
    for source_id in candidates:
        prepared.append(prepare_source(_load(source_id, cfg.seed), cfg, task))
        _check_modality(prepared[-1], task)
    rows = rank_sources(task, prepared, [score], batch_size=cfg.batch_size, cache_dir=cache_dir, verbose=verbose)
    del prepared
    scored = [r for r in rows if r[score] is not None]
    if not scored:
        raise DataError(f"No candidate could be scored with {score!r}: "
                        + "; ".join(n for r in rows for n in r["notes"]) + ". Try another `score`.")
    top = [r["source"] for r in scored[:top_k]]
    score_of = {r["source"]: r[score] for r in scored}

    first = short_epochs or max(1, cfg.epochs // 4)
    rounds, alive, last_acc = [], list(top), {}
    r = 0
    while len(alive) > 1:
        epochs = min(cfg.epochs, first * eta**r)
        probe_epochs = max(1, min(cfg.probe_epochs, math.ceil(cfg.probe_epochs * epochs / cfg.epochs)))
        short = dataclasses.replace(cfg, epochs=epochs, probe_epochs=probe_epochs, baseline=False, wise_ft=False,
                                    patience=0, checkpoint_every=0, report_to=[],
                                    **({"resume": False} if hasattr(cfg, "resume") else {}))
        if verbose:
            print(f"Round {r + 1}: {len(alive)} candidates x {epochs} epoch(s) of {cfg.strategy} "
                  f"(probe epochs {probe_epochs})")
        results = []
        for source_id in alive:
            t0 = time.perf_counter()
            # as in `fit`: an @random candidate is the seeded draw that was ranked
            _, trainer = train_target(task, _load(source_id, cfg.seed), short, verbose=verbose)
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
    winner = alive[0]

    tau = p = None
    tau_note = "needs short runs of at least 2 candidates (top_k >= 2)"
    if rounds and len(rounds[0]["results"]) >= 2:
        x = [score_of[res["source"]] for res in rounds[0]["results"]]
        y = [res["val_accuracy"] for res in rounds[0]["results"]]
        t, pv = kendalltau(x, y)
        if np.isfinite(t):
            tau, p, tau_note = float(t), float(pv), f"{score} vs round-1 validation accuracy over the top {len(x)}"
        else:
            tau_note = "undefined: the scores or the validation accuracies are all equal"
    report = {
        "score": score, "candidates": candidates, "ranking": rows, "top_k": top, "rounds": rounds,
        "short_run_val_accuracy": last_acc, "choice": winner, "kendall_tau": tau, "kendall_p": p,
        "kendall_note": tau_note, "seconds": time.perf_counter() - started,
    }
    if verbose:
        print(format_selection(report))
    return winner, report


def format_selection(report: dict) -> str:
    """A few lines summarising a ``select_source`` report."""
    lines = [f"Source selection by {report['score']}: top {len(report['top_k'])} of {len(report['candidates'])}"]
    for row in report["ranking"]:
        acc = report["short_run_val_accuracy"].get(row["source"])
        shown = f"  short-run val acc {acc:.3f}" if acc is not None else ""
        lines.append(f"  {row['rank']:>2}. {row['source']:<32} {report['score']} {_fmt(row[report['score']])}{shown}")
    tau = report["kendall_tau"]
    lines.append(f"Chosen: {report['choice']}.  Kendall tau (score vs short-run accuracy): "
                 + (f"{tau:+.2f}" if tau is not None else f"n/a ({report['kendall_note']})"))
    return "\n".join(lines)


# -- helpers ---------------------------------------------------------------------------------------


def _check_scores(scores) -> list[str]:
    if isinstance(scores, str):
        scores = [s for s in scores.split(",") if s.strip()]
    scores = [s.strip() for s in scores]
    if not scores:
        raise ConfigError("`scores` is empty; give at least one scorer, e.g. 'logme' (see `transferkit scorers`).")
    return list(dict.fromkeys(scores))


def check_splits(splits) -> list[str]:
    splits = [splits] if isinstance(splits, str) else list(splits)
    bad = [s for s in splits if s not in SCORABLE_SPLITS]
    if bad or not splits:
        raise ConfigError(f"`splits` must be 'train' or 'train,val'; got {splits!r}. The test split is never "
                          "used to choose a model.")
    return list(dict.fromkeys(splits))


def check_source_ids(ids: list[str]) -> None:
    """Fails fast on unknown short names and schemes (before any model is loaded)."""
    from transferkit.sources import PACKAGED, SCHEMES, load_source

    for source_id in ids:
        name = source_id.strip().removesuffix(RANDOM_SUFFIX) if isinstance(source_id, str) else source_id
        if not isinstance(name, str) or not name or (":" in name and name.split(":", 1)[0] not in SCHEMES) \
                or (":" not in name and name not in PACKAGED):
            load_source(source_id)  # raises the registry's did-you-mean error


def _load(source: str | SourceModel, seed: int) -> SourceModel:
    from transferkit.sources import load_source

    if isinstance(source, SourceModel):
        return source
    torch.manual_seed(seed)
    return load_source(source)


def _check_modality(src: SourceModel, task: TaskData) -> None:
    if src.modality != task.modality:
        raise ConfigError(f"Source {src.id!r} takes {src.modality} inputs but the data is {task.modality}. "
                          f"Pick {task.modality} sources from `transferkit sources`.")


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
