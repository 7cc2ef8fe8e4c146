"""Choosing what to transfer: the source (``--source auto``), the strategy (``--strategy auto``) or
both, within a time budget (``--budget``).

The search spends its time cheapest evidence first:

1. **One forward pass per candidate** over train and val (cached, ``features.py``).
2. **Evidence per source**: the transferability scores that carry information here (a score
   that is the same for every candidate, or sits at its bound, such as H-score at C-1, is
   dropped with a note: ``scoring.informative``) and a **cross-validated probe**: stratified
   k-fold over train + val with the convex head (``engine.probe.cross_validate_head``), which
   predicts every example out of fold.
3. **Pruning by confidence, not by a top-k**: a source is dropped only when its probe is
   clearly worse than the best probe: the paired difference of out-of-fold correctness (same
   folds, example by example) is above ``PRUNE_MARGIN`` with ``PRUNE_Z`` standard errors to
   spare. A score never prunes on its own: measured, each single score put a source that
   fine-tunes best last on some target (docs/BENCHMARKS.md, "## rank").
4. **Combined ranking**: the probe's out-of-fold accuracy, moved by at most about one of its
   standard errors by the informative scores' consensus (their mean z-score across candidates):
   the probe measures, the scores break near-ties. It orders the fine-tuning candidates.
5. **Fine-tunes only on what survives**, as (source, strategy) pairs, by successive halving
   (Jamieson & Talwalkar, AISTATS 2016) on validation accuracy: round r trains every pair left
   for ``fraction * ETA**r`` of its full schedule and keeps the best ``1/ETA``. The fraction and
   the number of pairs come from the budget plan (``plan``): each source's cost per training
   example is measured (a timed forward + backward step at its input size) before any fine-tune.
6. **The floor**: a fine-tune is chosen only if it beats its own source's probe and the best
   probe on validation (both probes fitted on train alone, so all are judged on the same
   held-out examples) by more than ``FLOOR_SE`` standard errors of the difference (the
   one-standard-error rule: the simplest candidate unless another is better beyond the noise;
   on 32 validation examples one fine-tune beat the probe by 1 example and lost by 4 points on
   test); ``fit`` checks again after the full-length run (``Choice.floor``). A validation split
   under ``SMALL_VAL`` examples cannot tell: the leading fine-tune (and any tied with it) is then
   cross-validated on the probe's folds over train + val (``_fold_check``) and judged paired,
   example by example.

``fit`` then trains the choice with its full schedule and a deadline. ``transferkit audit`` is
the brute-force check of all this: every pair fully trained, several seeds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from transferkit.config import FitConfig
from transferkit.data.base import TaskData
from transferkit.engine.progress import Stage, clock as format_clock
from transferkit.errors import ConfigError
from transferkit.ranking import check_modality, check_source_ids, default_candidates, fmt, load_candidate, scored_row

#: Scores computed for every candidate (on the train split; those that need a source head are
#: None for headless sources). ``linear`` is left out: the cross-validated probe is its measurement.
SELECTION_SCORES = ("logme", "leep", "nce", "regularized_hscore", "hscore", "knn")
#: Fine-tuning strategies ``--strategy auto`` tries next to the linear probe, preferred in this
#: order on equal validation accuracy; transformer sources also get the PEFT methods.
FINE_TUNES = ("lp_ft", "full", "layerwise_lr")
TRANSFORMER_FINE_TUNES = ("lora", "bitfit")
#: A source is pruned when its probe is worse than the best probe by more than PRUNE_MARGIN
#: accuracy, PRUNE_Z standard errors of the paired out-of-fold difference below the estimate.
#: The margin keeps sources that fine-tuning may reorder: fine-tuning moved sources 4-5 points
#: past each other on natural photos (issue 14); a probe gap beyond that is rarely closed.
PRUNE_Z, PRUNE_MARGIN = 2.0, 0.02
#: Successive-halving rate: each round keeps ceil(n / ETA) pairs and gives them ETA x the steps.
ETA = 3
#: Shortest useful round: fewer optimizer steps than this say little about a fine-tune. Measured
#: (openclipart drawings, 96 train images): `full` reached val 0.38 after 12 steps, a chance-level
#: head still warming up, and 0.72 after 36, so a 12-step round dropped the pair that won the audit.
MIN_ROUND_STEPS = 30
#: A fine-tune must beat the probe on validation by this many standard errors of the difference.
FLOOR_SE = 1.0
#: Fewer validation examples than this cannot judge a fine-tune against the probe (one standard
#: error of the difference is 6 points or more at 80 % accuracy; on 16 tweets the probe's val 1.000
#: hid fine-tunes 5-7 points better on test): the leading fine-tune is then cross-validated on the
#: probe's folds over train + val and judged on every example, paired with the probe: the better
#: out-of-fold accuracy wins, a tie keeps the probe. (On the 4 benchmark targets where it ran, the
#: sign of that paired gap matched the audit every time; asking for one standard error, 3-7
#: points on 56-72 examples, would have kept the probe where a fine-tune was 5 points better.)
SMALL_VAL = 100
#: Share of the budget kept back for what the plan cannot time ahead (test predictions,
#: the baseline, writing the run) beyond their estimates.
RESERVE = 0.05
#: Examples timed per source when measuring the cost of a training step.
TIMED_EXAMPLES = 8


@dataclass
class Choice:
    """What the search chose, why, and the probe a fine-tune must beat after its full run."""

    source: str
    strategy: str
    report: dict
    floor: dict | None = None  # {"source", "val_accuracy"}: the probe the final fine-tune must beat


@dataclass
class _Pair:
    source: str
    strategy: str
    prior: int  # position in the preferred order (combined rank, then strategy order)
    full_seconds: float  # estimated cost of its full schedule
    val_accuracy: float | None = None
    rounds: list = field(default_factory=list)


class Clock:
    """Seconds left of a budget that started at ``started`` (``time.perf_counter``)."""

    def __init__(self, budget_seconds: float, started: float | None = None) -> None:
        self.budget = float(budget_seconds)
        self.started = time.perf_counter() if started is None else started

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()

    def stamp(self) -> str:
        return f"[{format_clock(self.elapsed())} of {format_clock(self.budget)}]"


def choose(task: TaskData, cfg: FitConfig, *, source: str = "auto", clock: Clock | None = None,
           cache_dir=None, verbose: bool = True) -> Choice:
    """Chooses the source (``source`` "auto": among ``cfg.candidates``, default every packaged
    source of the data's modality) and/or the strategy (``cfg.strategy`` "auto": among
    ``cfg.strategies``) as the module describes, within ``clock`` (default: ``cfg.budget`` minutes
    from now). Returns the ``Choice``; ``Choice.report`` is ``metrics["selection"]``.

    The caller's RNG state comes back untouched: ``fit`` seeds, chooses, then loads the choice,
    which must be the same ``@random`` draw as the one evaluated here.
    """
    clock = clock or Clock(cfg.budget * 60)
    with torch.random.fork_rng(devices=[]):
        return _choose(task, cfg, source, clock, cache_dir, verbose)


def _choose(task: TaskData, cfg: FitConfig, source: str, clock: Clock, cache_dir, verbose: bool) -> Choice:
    from transferkit.scoring import informative
    from transferkit.training import resolve_options

    cfg = resolve_options(cfg, task)
    ids = _source_ids(task, cfg, source)
    strategies = _strategy_names(task, cfg)
    say = print if verbose else (lambda *a, **k: None)
    say(f"{clock.stamp()} Evidence for {len(ids)} source(s): features, {len(SELECTION_SCORES)} scores and a "
        "cross-validated probe each ...")
    rows = []
    with Stage("select: evidence", len(ids), "sources", enabled=verbose) as shown:
        for sid in ids:
            rows.append(_evidence(sid, task, cfg, cache_dir))
            shown.advance(status=f"last {sid}")
    for row in rows:
        say(f"  {row['source']}: probe {fmt(row['cv_accuracy'])} out of fold ({row['seconds']:.1f}s)")
    dropped = informative({name: [r[name] for r in rows] for name in SELECTION_SCORES}, task.num_classes)
    used = [name for name in SELECTION_SCORES if dropped.get(name) is None]
    _combine(rows, used, len(task.train) + len(task.val))
    _prune(rows, cfg.top_k)
    report = {
        "asked": {"source": source, "strategy": cfg.strategy}, "candidates": ids, "strategies": strategies,
        "scores": used, "uninformative_scores": {k: v for k, v in dropped.items() if v},
        "prune_rule": (f"pruned when the probe is worse than the best by > {PRUNE_MARGIN:.0%} accuracy with "
                       f"{PRUNE_Z:g} standard errors to spare (paired, out of fold)"),
        "budget_seconds": clock.budget,
    }
    alive = [r for r in rows if r["pruned"] is None]
    best_probe = max(alive, key=lambda r: (r["cv_accuracy"] if r["cv_accuracy"] is not None else -1.0,
                                           r["combined"]))
    fine_tunes = [s for s in strategies if s != "linear_probe"]
    pairs, rounds, note = [], [], None
    best_val = best_probe["probe_val_accuracy"] or 0.0
    if fine_tunes and not len(task.val):
        note = "no fine-tunes: the validation split that judges them is empty"
    elif fine_tunes and len(task.val) >= SMALL_VAL and best_val + floor_margin(best_val, len(task.val)) >= 1.0:
        note = (f"no fine-tunes: the best probe's validation accuracy ({best_val:.3f}) leaves no room to beat it "
                "beyond the noise")
    elif fine_tunes:
        pairs, plan, note = plan_pairs(task, cfg, alive, fine_tunes, clock)
        report["plan"] = plan
        if len(pairs) > 1:
            say(f"{clock.stamp()} {_describe_plan(plan)}")
            rounds = _halving(task, cfg, pairs, plan["fraction"], clock, plan["keep_seconds"], say, verbose)
            if all(p.val_accuracy is None for p in pairs):
                pairs, note = [], "no fine-tunes: the budget ran out before the first short run"
    report["rounds"] = rounds
    fold_check = None
    if (len(task.val) < SMALL_VAL and pairs and pairs[0].val_accuracy is not None and "linear_probe" in strategies
            and best_probe["_correct"] is not None):
        checks = []
        for pair in _tied_leaders(pairs, rounds):  # a tie on a few validation examples says nothing
            checks.append(_fold_check(task, cfg, pair, best_probe, clock, report["plan"]["keep_seconds"], say))
            if "skipped" in checks[-1]:
                break
        done = [c for c in checks if "beats_probe" in c]
        fold_check = max(done, key=lambda c: c["cv_accuracy"]) if done else checks[0]
        report["fold_check"] = [{k: v for k, v in c.items() if k != "correct"} for c in checks]
    choice = _decide(rows, best_probe, pairs, strategies, note, len(task.val), fold_check)
    report |= {"ranking": public_rows(rows), "choice": choice.source, "chosen_strategy": choice.strategy, "confidence": _confidence(rows, choice),
               "why": choice.report["why"], "seconds": clock.elapsed()}
    choice.report = report
    say(f"{clock.stamp()} {format_selection(report)}")
    return choice


# -- candidates --------------------------------------------------------------------------------------


def _source_ids(task: TaskData, cfg: FitConfig, source: str) -> list[str]:
    ids = list(dict.fromkeys(cfg.candidates or default_candidates(task.modality))) if source == "auto" else [source]
    if not ids:
        raise ConfigError(f"No packaged {task.modality} source to choose from; pass `--candidates` "
                          "with source ids (see `transferkit sources`).")
    check_source_ids(ids)
    return ids


def _strategy_names(task: TaskData, cfg: FitConfig) -> list[str]:
    """The strategies searched: ``cfg.strategy`` alone, or for "auto" the probe and the fine-tunes."""
    from transferkit.strategies import STRATEGIES, get_strategy

    if cfg.strategy != "auto":
        return [cfg.strategy]
    names = list(dict.fromkeys(cfg.strategies)) or ["linear_probe", *FINE_TUNES, *TRANSFORMER_FINE_TUNES]
    for name in names:
        if name == "auto":
            raise ConfigError("`--strategies` lists the strategies `--strategy auto` chooses among; 'auto' is not "
                              f"one of them. Pick from: {', '.join(sorted(STRATEGIES))}.")
        get_strategy(name)
    if "linear_probe" not in names:
        names.insert(0, "linear_probe")  # the floor every fine-tune is judged against
    return [n for n in names if get_strategy(n).takes(task.modality)]


def _takes(strategy: str, src_modules: Sequence[str]) -> bool:
    """PEFT methods are tried on transformer sources only (where their papers and PEFT's examples apply)."""
    return strategy not in TRANSFORMER_FINE_TUNES or any("Attention" in name for name in src_modules)


# -- evidence per source -------------------------------------------------------------------------------


def _evidence(source_id: str, task: TaskData, cfg: FitConfig, cache_dir) -> dict:
    """One source's row: scores on train, the cross-validated probe over train + val, its costs."""
    from transferkit.engine.probe import cross_validate_head
    from transferkit.features import source_features
    from transferkit.training import prepare_source

    started = time.perf_counter()
    src = prepare_source(load_candidate(source_id, cfg.seed), cfg, task)
    check_modality(src, task)
    load_seconds = time.perf_counter() - started
    outs = {name: source_features([src], split.examples, batch_size=cfg.batch_size * 2, cache_dir=cache_dir,
                                  statistics_from=task.train.examples)[0]
            for name, split in (("train", task.train), ("val", task.val)) if len(split)}
    row = scored_row(src, [outs["train"]], task.train.labels, SELECTION_SCORES, load_seconds)
    row["feature_seconds"] = sum(o.seconds for o in outs.values())
    val_features = outs["val"].features if "val" in outs else np.zeros((0, outs["train"].features.shape[1]))
    cv = cross_validate_head(outs["train"].features, task.train.labels, val_features, task.val.labels,
                             task.num_classes, seed=cfg.seed)
    row |= ({**cv.record(), "cv_interval": _interval(cv.accuracy, len(cv.correct)), "_correct": cv.correct} if cv else
            {"cv_accuracy": None, "cv_fold_accuracies": [], "probe_val_accuracy": None, "_correct": None})
    if cv is None:
        row["notes"].append("no cross-validated probe: a class has a single example")
    modules = sorted({type(m).__name__ for m in src.backbone.modules()})
    row["_modules"] = modules
    row["input_size"] = src.preprocessing.image_size if src.modality == "image" else None
    row["seconds"] = time.perf_counter() - started
    return row


def _interval(p: float, n: int, z: float = 1.96) -> list[float]:
    """Wilson score interval of an accuracy ``p`` over ``n`` examples."""
    if n == 0:
        return [0.0, 1.0]
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _combine(rows: list[dict], scores: Sequence[str], n: int) -> None:
    """Sets ``combined`` and the 1-based ``rank`` of every row (see the module docstring, step 4)."""
    consensus = np.zeros(len(rows))
    for name in scores:
        values = np.array([np.nan if r[name] is None else r[name] for r in rows], dtype=float)
        if np.isfinite(values).sum() < 2:
            continue
        spread = np.nanstd(values)
        z = np.where(np.isfinite(values), (values - np.nanmean(values)) / (spread if spread > 0 else 1.0), 0.0)
        consensus += z / len(scores)
    acc = [r["cv_accuracy"] for r in rows]
    if all(a is None for a in acc):  # no probe could be cross-validated: the scores alone order
        combined = consensus
    else:
        measured = np.array([a if a is not None else 0.0 for a in acc])
        mean = float(measured.mean())
        combined = measured + math.sqrt(max(mean * (1 - mean), 1e-4) / max(n, 1)) * consensus
    for row, value in zip(rows, combined):
        row["combined"] = float(value)
    for rank, i in enumerate(sorted(range(len(rows)), key=lambda i: -rows[i]["combined"]), 1):
        rows[i]["rank"] = rank
    rows.sort(key=lambda r: r["rank"])


def _prune(rows: list[dict], top_k: int | None) -> None:
    """Sets ``pruned`` (None, or why) on every row: the confidence rule, then ``--top-k``."""
    measured = [r for r in rows if r["_correct"] is not None]
    best = max(measured, key=lambda r: r["cv_accuracy"], default=None)
    kept = 0
    for row in rows:
        row["pruned"] = None
        if best is not None and row is not best and row["_correct"] is not None:
            d = best["_correct"].astype(float) - row["_correct"].astype(float)
            gap, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
            row["probe_gap"] = [gap, se]
            if gap - PRUNE_Z * se > PRUNE_MARGIN:
                row["pruned"] = (f"probe {gap:.1%} ± {se:.1%} below {best['source']}'s (out of fold, paired): "
                                 "clearly worse")
                continue
        if top_k is not None and kept >= top_k:
            row["pruned"] = f"beyond --top-k {top_k}"
            continue
        kept += 1


# -- the budget plan -------------------------------------------------------------------------------


def plan_pairs(task: TaskData, cfg: FitConfig, alive: list[dict], fine_tunes: list[str],
               clock: Clock) -> tuple[list[_Pair], dict, str | None]:
    """The fine-tuning pairs and the round-1 fraction that fit the time left, with the plan.

    Every round of successive halving costs about ``fraction`` x the full cost of all pairs
    (ETA x the steps for 1/ETA of them), and the winner's full run follows; pairs are dropped
    from the end of the preferred order until round 1 gives each at least ``MIN_ROUND_STEPS``.
    Returns (pairs, plan, note): no pairs, with the note saying why, when not even one full
    fine-tune fits.
    """
    costs = {r["source"]: measure_costs(r["source"], task, cfg) for r in alive}
    steps = _schedule_steps(task, cfg)
    pairs = []
    for row in alive:
        for strategy in fine_tunes:
            if _takes(strategy, row["_modules"]):
                pairs.append(_Pair(row["source"], strategy, len(pairs),
                                   full_seconds=_full_seconds(costs[row["source"]], strategy, steps, task, cfg)))
    test_seconds = max(c["forward"] for c in costs.values()) * len(task.test)
    floor_seconds = max(c["forward"] for c in costs.values()) * (len(task.train) + len(task.val))

    scratch = cfg.baseline in ("scratch", "both")  # a from-scratch baseline gets the transfer's training seconds

    def after(final: float) -> float:  # after the search: the final run, the floor's probe, test predictions
        return final * (2 if scratch else 1) + floor_seconds + test_seconds * 2 + RESERVE * clock.budget

    plan = {"measured": costs, "optimizer_steps": steps, "pairs_considered": len(pairs),
            "left_at_plan": clock.left(), "after_final_seconds": after(0.0)}
    while pairs:
        final = max(p.full_seconds for p in pairs)
        search = clock.left() - after(final)
        rounds = _round_count(len(pairs))
        if len(pairs) == 1:
            if search >= 0:
                return pairs, plan | {"pairs": 1, "rounds": 0, "fraction": 1.0, "final_seconds": final,
                                      "keep_seconds": after(final), "eta_seconds": clock.elapsed() + after(final)}, None
        else:
            # the last round gets at most 1/ETA of the schedule: the winner's full run follows it
            fraction = min(ETA ** -rounds, search / (rounds * sum(p.full_seconds for p in pairs)))
            if fraction * steps >= MIN_ROUND_STEPS:
                return pairs, plan | {"pairs": len(pairs), "rounds": rounds, "fraction": fraction,
                                      "search_seconds": rounds * fraction * sum(p.full_seconds for p in pairs),
                                      "final_seconds": final, "keep_seconds": after(final),
                                      "eta_seconds": clock.elapsed() + search + after(final)}, None
        pairs.pop()  # the least preferred pair goes first
    needed = min((_full_seconds(c, s, steps, task, cfg) for c in costs.values() for s in fine_tunes), default=0.0)
    return [], plan, (f"no fine-tunes: the shortest needs ~{needed:.0f}s of the {max(clock.left(), 0):.0f}s left "
                      f"of --budget {clock.budget / 60:g}; pass a larger --budget to try them")


def measure_costs(source_id: str, task: TaskData, cfg: FitConfig) -> dict:
    """Seconds per example of one training step (forward, backward, AdamW) and of one forward
    pass of ``source_id`` at its prepared size, timed on ``TIMED_EXAMPLES`` train examples after a
    warm-up step (inputs loaded and transformed as training does)."""
    from transferkit.sources.inputs import input_pipeline
    from transferkit.surgery.target import build_target_model
    from transferkit.training import prepare_source

    src = prepare_source(load_candidate(source_id, cfg.seed), cfg, task)
    model = build_target_model(src, {task.task_name: task.num_classes}, cfg.head_hidden, cfg.head_dropout)
    examples = list(task.train.examples[:TIMED_EXAMPLES])
    pipe = input_pipeline(src, train=True, augment=cfg.augment)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    labels = torch.as_tensor(task.train.labels[:len(examples)])

    def step() -> float:
        t0 = time.perf_counter()
        logits = model(**pipe.collate([pipe.load(x) for x in examples]))[task.task_name]
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    model.train()
    step()  # warm-up: allocations, lazy initialisation
    train = step() / len(examples)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        model(**pipe.collate([pipe.load(x) for x in examples]))
        forward = (time.perf_counter() - t0) / len(examples)
    return {"train_step_per_example": train, "forward": forward}


def _schedule_steps(task: TaskData, cfg: FitConfig) -> int:
    from transferkit.engine.schedule import steps_per_epoch

    return cfg.epochs * steps_per_epoch(len(task.train), cfg.batch_size, cfg.grad_accum)


def _full_seconds(cost: dict, strategy: str, steps: int, task: TaskData, cfg: FitConfig) -> float:
    """A full schedule: its optimizer steps, a validation pass per epoch, and a probe's feature
    pass for the strategies that start from one."""
    from transferkit.strategies import get_strategy

    seconds = steps * cfg.batch_size * cfg.grad_accum * cost["train_step_per_example"]
    seconds += cfg.epochs * len(task.val) * cost["forward"]
    if get_strategy(strategy).probe_first:
        seconds += (len(task.train) + len(task.val)) * cost["forward"]
    return seconds


def _round_count(n: int) -> int:
    rounds = 0
    while n > 1:
        n, rounds = math.ceil(n / ETA), rounds + 1
    return rounds


def _describe_plan(plan: dict) -> str:
    return (f"Plan: {plan['pairs']} fine-tuning pair(s), {plan['rounds']} round(s) of successive halving from "
            f"{plan['fraction']:.0%} of the schedule (~{plan.get('search_seconds', 0):.0f}s), then the winner's full "
            f"run (~{plan['final_seconds']:.0f}s); ETA {format_clock(plan['eta_seconds'])}")


# -- successive halving --------------------------------------------------------------------------------


def _search_config(cfg: FitConfig, **changes) -> FitConfig:
    """``cfg`` for a run of the search: no baseline, WiSE-FT, early stop, checkpoints or trackers."""
    return dataclasses.replace(cfg, baseline="none", wise_ft=False, wise_ft_per_group=False, patience=0,
                               checkpoint_every=0, report_to=[], resume=False, **changes)


def _halving(task: TaskData, cfg: FitConfig, pairs: list[_Pair], fraction: float, clock: Clock, keep_seconds: float,
             say, verbose: bool = False) -> list[dict]:
    """Short fine-tunes of ``pairs``, ETA x the steps each round for the best 1/ETA; sets each
    pair's last ``val_accuracy``, leaves the leader first in ``pairs`` and returns the rounds.
    A pair that would start with less than ``keep_seconds`` (the winner's full run and what
    follows) plus its own estimate left is not trained, and the halving ends with that round."""
    from transferkit.training import train_target

    rounds, alive, r = [], list(pairs), 0
    while len(alive) > 1:
        share = fraction * ETA**r
        if share >= 1:  # the next round would be the full run: the leader of this one goes on
            break
        epochs = max(1, round(share * cfg.epochs))
        short = _search_config(cfg, epochs=epochs)
        planned = sum(p.full_seconds for p in alive) * epochs / cfg.epochs
        say(f"{clock.stamp()} Round {r + 1}: {len(alive)} pair(s) x {epochs} of {cfg.epochs} epochs "
            f"(~{planned:.0f}s)")
        results, late = [], []
        with Stage(f"select: round {r + 1}", len(alive), "fine-tunes", enabled=verbose) as shown:
            for pair in alive:
                if clock.left() < keep_seconds + pair.full_seconds * epochs / cfg.epochs:
                    late.append(pair)
                    shown.update(total=shown.total - 1)
                    continue
                t0 = time.perf_counter()
                _, trainer = train_target(task, load_candidate(pair.source, cfg.seed),
                                          dataclasses.replace(short, strategy=pair.strategy), verbose=False)
                pair.val_accuracy = float(trainer.stages[-1]["best_val_accuracy"]) if trainer.stages else 0.0
                results.append({"source": pair.source, "strategy": pair.strategy, "val_accuracy": pair.val_accuracy,
                                "seconds": time.perf_counter() - t0})
                say(f"    {pair.source} + {pair.strategy}: val {pair.val_accuracy:.3f} "
                    f"({results[-1]['seconds']:.0f}s)")
                shown.advance()
        trained = sorted((p for p in alive if all(p is not q for q in late)), key=lambda p: (-p.val_accuracy, p.prior))
        alive = trained[:1] if late else trained[:math.ceil(len(alive) / ETA)]
        rounds.append({"round": r + 1, "epochs": epochs, "share": share, "results": results,
                       "kept": [f"{p.source} + {p.strategy}" for p in alive],
                       "not_trained": [f"{p.source} + {p.strategy}: budget" for p in late],
                       "seconds": sum(x["seconds"] for x in results), "planned_seconds": planned})
        r += 1
        if not trained:
            break
    pairs.sort(key=lambda p: (all(p is not q for q in alive), -(p.val_accuracy or 0.0), p.prior))
    return rounds


# -- the decision ---------------------------------------------------------------------------------------


def floor_margin(accuracy: float, n: int) -> float:
    """``FLOOR_SE`` standard errors of the difference between two accuracies near ``accuracy`` on
    the same ``n`` validation examples, taken as independent (an upper bound for the paired error)."""
    return FLOOR_SE * math.sqrt(2 * accuracy * (1 - accuracy) / n) if n else 0.0


def _tied_leaders(pairs: list[_Pair], rounds: list[dict]) -> list[_Pair]:
    """The leader (``pairs[0]``) and the pairs of its last round at the same validation accuracy."""
    leader = pairs[0]
    last = rounds[-1]["results"] if rounds else []
    tied = {(x["source"], x["strategy"]) for x in last if x["val_accuracy"] == leader.val_accuracy}
    return [leader] + [p for p in pairs[1:] if (p.source, p.strategy) in tied]


def _fold_check(task: TaskData, cfg: FitConfig, pair: _Pair, best_probe: dict, clock: Clock, keep_seconds: float,
                say) -> dict:
    """``pair`` fine-tuned with its full schedule on each of the best probe's folds over train +
    val (the folds ``cross_validate_head`` used: same labels, same seed), every example predicted
    out of fold; the fine-tune wins when its out-of-fold accuracy is above the probe's (paired,
    same examples). Skipped, with the reason, when the folds do not fit the time left."""
    from transferkit.data.base import Split
    from transferkit.engine.probe import CV_FOLDS, stratified_folds
    from transferkit.runs import predict_proba
    from transferkit.training import prepare_source, train_prepared

    parts = [task.train, task.val]
    examples = [x for part in parts for x in part.examples]
    y = np.concatenate([part.labels for part in parts])
    extra = {k: np.concatenate([part.extra_labels[k] for part in parts]) for k in task.train.extra_labels}
    folds = stratified_folds(y, cfg.seed, CV_FOLDS)
    estimate = pair.full_seconds * sum(len(a) for a, _ in folds) / max(len(task.train), 1)
    check = {"source": pair.source, "strategy": pair.strategy, "folds": len(folds), "estimated_seconds": estimate}
    if not folds or clock.left() < keep_seconds + estimate:
        return check | {"skipped": f"{len(folds)} fold fine-tunes (~{estimate:.0f}s) do not fit the time left"}
    say(f"{clock.stamp()} Validation has {len(task.val)} examples: cross-validating {pair.source} + "
        f"{pair.strategy} on the probe's {len(folds)} folds (~{estimate:.0f}s)")
    started, correct = time.perf_counter(), np.zeros(len(y), dtype=bool)
    short = _search_config(cfg, strategy=pair.strategy)

    def split(index: np.ndarray) -> Split:
        return Split([examples[i] for i in index], y[index], {k: v[index] for k, v in extra.items()})

    for fit_on, held_out in folds:
        fold_task = dataclasses.replace(task, train=split(fit_on), val=split(held_out))
        src = prepare_source(load_candidate(pair.source, cfg.seed), short, fold_task)
        model, _ = train_prepared(fold_task, src, short, verbose=False)
        proba = predict_proba(model, src, fold_task.val.examples, task.task_name, batch_size=cfg.batch_size * 2)
        correct[held_out] = proba.argmax(1) == y[held_out]
    d = correct.astype(float) - best_probe["_correct"].astype(float)
    gap, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    return check | {"cv_accuracy": float(correct.mean()), "probe_source": best_probe["source"],
                    "probe_cv_accuracy": best_probe["cv_accuracy"], "gap": gap, "se": se,
                    "beats_probe": gap > 0, "seconds": time.perf_counter() - started, "correct": correct}


def _decide(rows: list[dict], best_probe: dict, pairs: list[_Pair], strategies: list[str],
            note: str | None, n_val: int, fold_check: dict | None = None) -> Choice:
    """The choice and why (see the module docstring, step 6)."""
    if fold_check is not None and "beats_probe" in fold_check:  # judged on every example, not on val
        measured = (f"{fold_check['cv_accuracy']:.3f} out of fold against the probe's "
                    f"{fold_check['probe_cv_accuracy']:.3f}, paired gap {fold_check['gap']:+.1%} "
                    f"± {fold_check['se']:.1%}")
        if fold_check["beats_probe"]:
            return Choice(fold_check["source"], fold_check["strategy"],
                          {"why": f"won the short fine-tunes and the fold check ({measured})"})
        return Choice(best_probe["source"], "linear_probe",
                      {"why": f"the best probe: the leading fine-tune ({fold_check['source']} + "
                              f"{fold_check['strategy']}) did not beat it in the fold check ({measured})"})
    probe_val = {r["source"]: r["probe_val_accuracy"] for r in rows}
    if not pairs:  # no fine-tune to judge: the best probe, or the top source for the asked strategy
        if "linear_probe" in strategies:
            why = "the best cross-validated probe" + (f"; {note}" if note else "")
            return Choice(best_probe["source"], "linear_probe", {"why": why})
        top = next(r for r in rows if r["pruned"] is None)
        return Choice(top["source"], strategies[0], {"why": "the top of the combined ranking"
                                                           + (f"; {note}" if note else "")})
    leader = pairs[0]
    if "linear_probe" not in strategies:  # a strategy was asked for: the halving decides the source
        return Choice(leader.source, leader.strategy, {"why": "won the short fine-tunes"
                                                              if len(pairs) > 1 else "the only candidate"})
    floor = max(probe_val.get(leader.source) or 0.0, best_probe["probe_val_accuracy"] or 0.0)
    margin = floor_margin(floor, n_val)
    if leader.val_accuracy is not None and leader.val_accuracy <= floor + margin:
        return Choice(best_probe["source"], "linear_probe",
                      {"why": f"the best probe: the leading fine-tune ({leader.source} + {leader.strategy}, val "
                              f"{leader.val_accuracy:.3f}) did not beat the probe's val {floor:.3f} by more than "
                              f"one standard error ({margin:.3f} on {n_val} examples)"})
    floor_source = best_probe["source"] if (best_probe["probe_val_accuracy"] or 0.0) >= (
        probe_val.get(leader.source) or 0.0) else leader.source
    why = ("the only fine-tune that fits the budget; it is kept only if it beats the probe after its full run"
           if leader.val_accuracy is None else
           f"won the short fine-tunes (val {leader.val_accuracy:.3f} > the probe's {floor:.3f} + {margin:.3f})")
    return Choice(leader.source, leader.strategy, {"why": why},
                  floor={"source": floor_source, "val_accuracy": floor, "margin": margin})


def _confidence(rows: list[dict], choice: Choice) -> str:
    """How sure the source choice is: the runner-up's paired probe gap, in words."""
    chosen = next(r for r in rows if r["source"] == choice.source)
    others = [r for r in rows if r is not chosen and r.get("probe_gap")]
    if chosen.get("probe_gap") is not None:  # the chosen is not the best probe: a fine-tune lifted it
        gap, se = chosen["probe_gap"]
        return f"its probe is {gap:.1%} ± {se:.1%} below the best probe's; the fine-tunes chose it"
    if not others:
        return "one candidate" if len(rows) == 1 else "no cross-validated probe to compare"
    gap, se = min((r["probe_gap"] for r in others), key=lambda g: g[0])
    runner = min(others, key=lambda r: r["probe_gap"][0])["source"]
    strength = "clear" if gap - PRUNE_Z * se > 0 else "within the noise"
    return f"probe {gap:.1%} ± {se:.1%} above the runner-up {runner} ({strength})"


def public_rows(rows: list[dict]) -> list[dict]:
    """The ranking rows without the private arrays (for metrics.json)."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def format_selection(report: dict) -> str:
    """A few lines summarising a ``choose`` report."""
    lines = [f"Candidates (combined ranking; scores used: {', '.join(report['scores']) or 'none'}):"]
    for row in report["ranking"]:
        shown = f"probe {fmt(row.get('cv_accuracy'))}"
        if row.get("probe_val_accuracy") is not None:
            shown += f" (val {row['probe_val_accuracy']:.3f})"
        lines.append(f"  {row['rank']:>2}. {row['source']:<32} {shown}"
                     + (f"  pruned: {row['pruned']}" if row.get("pruned") else ""))
    for name, reason in report["uninformative_scores"].items():
        lines.append(f"  {name} not used: {reason}")
    lines.append(f"Chosen: {report['choice']} + {report['chosen_strategy']}: {report['why']} "
                 f"({report['confidence']}).")
    return "\n".join(lines)


