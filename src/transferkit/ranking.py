"""Ranking sources by transferability scores: ``transferkit rank``.

``rank_sources`` scores every candidate on the target's train split (features from
:mod:`transferkit.features`, cached; scorers from :mod:`transferkit.scoring`) and
``write_ranking`` saves the table, ``ranking.json`` and a bar chart. ``transferkit.selection``
builds ``--source auto`` on it.

Which split is scored: the **train split only** by default. The test split is never used for
model choice. The validation split judges the short fine-tunes of ``--source auto``, so keeping
it out of the scores keeps that judgement (and the Kendall tau between score and validation
accuracy) independent of the data the score saw. ``splits=("train", "val")`` scores on both (more
examples, steadier scores, at the price of that independence); each split is cached on its
own, so switching costs only the new split's forward passes.

Default score: LogME; see ``DEFAULT_SCORE`` and the "## rank" section of docs/BENCHMARKS.md
for the measurements behind the choice. Negative controls (``transferkit rank --controls``)
are ``@random`` copies, whose BatchNorm statistics come from the train split
(``features.estimate_batchnorm_statistics``): the random network as training would start it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

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
        src = load_candidate(s, seed)
        check_modality(src, task)
        loaded.append(with_image_size(src, image_size))
        load_seconds.append(time.perf_counter() - started)

    parts = [source_features(loaded, task.splits()[name].examples, batch_size=batch_size, cache_dir=cache_dir,
                             use_cache=use_cache, device=device, statistics_from=task.train.examples,
                             verbose=verbose)
             for name in splits]
    labels = np.concatenate([task.splits()[name].labels for name in splits])
    rows = []
    for i, src in enumerate(loaded):
        rows.append(scored_row(src, [part[i] for part in parts], labels, scores, load_seconds[i]))
        if verbose:
            row = rows[-1]
            shown = ", ".join(f"{n} {fmt(row[n])}" for n in scores)
            print(f"  {src.id}: {shown} ({row['seconds']:.1f}s{', cached features' if row['cached'] else ''})")
    return _ranked(rows, scores[0])


def scored_row(src: SourceModel, outs: list, labels: np.ndarray, scores: Sequence[str], load_seconds: float) -> dict:
    """One ranking row: what the source gave on the scored splits (``outs``, one per split) and its scores."""
    feats = np.concatenate([o.features for o in outs])
    probs = None if outs[0].probabilities is None else np.concatenate([o.probabilities for o in outs])
    row = {"source": src.id, "rank": None, "random_control": src.id.endswith(RANDOM_SUFFIX),
           "examples": int(len(labels)), "feature_dim": int(feats.shape[1]),
           "head_classes": None if probs is None else int(probs.shape[1]),
           "cached": all(o.cached for o in outs), "load_seconds": load_seconds,
           "feature_seconds": sum(o.seconds for o in outs), "notes": []}
    started = time.perf_counter()
    for name in scores:
        row[name] = _score(name, feats, probs, labels, row["notes"])
    row["score_seconds"] = time.perf_counter() - started
    row["seconds"] = row["feature_seconds"] + row["score_seconds"]
    return row


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
        cells = [fmt(row.get(s)) + ("*" if row.get(s) is None else "") for s in scores]
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


def load_candidate(source: str | SourceModel, seed: int) -> SourceModel:
    from transferkit.sources import load_source

    if isinstance(source, SourceModel):
        return source
    torch.manual_seed(seed)
    return load_source(source)


def check_modality(src: SourceModel, task: TaskData) -> None:
    if src.modality != task.modality:
        raise ConfigError(f"Source {src.id!r} takes {src.modality} inputs but the data is {task.modality}. "
                          f"Pick {task.modality} sources from `transferkit sources`.")


def fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
