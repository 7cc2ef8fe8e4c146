"""`--source auto` / `--strategy auto`: the pruning rule, the combined ranking, the budget plan,
successive halving and the probe floor (each stage would fail here if it were skipped)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import transferkit.selection as selection
from transferkit.config import FitConfig
from transferkit.data import load_task_data
from transferkit.engine.probe import cross_validate_head
from transferkit.pipeline import fit

from conftest import FAST

TINY = ["timm:test_efficientnet@random", "timm:test_vit@random"]


@pytest.fixture(scope="module")
def task(image_folder):
    return load_task_data(image_folder)


def _row(source: str, correct: np.ndarray, **scores) -> dict:
    return {"source": source, "cv_accuracy": float(correct.mean()), "_correct": correct, "notes": [],
            **{name: scores.get(name) for name in selection.SELECTION_SCORES}}


def test_prune_drops_only_what_is_clearly_worse_and_top_k_caps_the_rest():
    rng = np.random.default_rng(0)
    best = rng.random(400) < 0.90
    near = best.copy()
    near[np.flatnonzero(best)[:8]] = False  # 2 points below: within the margin
    far = best & (rng.random(400) < 0.6)  # ~36 points below
    rows = [_row("best", best), _row("near", near), _row("far", far)]
    selection._prune(rows, top_k=None)
    assert [r["pruned"] is None for r in rows] == [True, True, False]
    assert "below best's" in rows[2]["pruned"] and rows[2]["probe_gap"][0] == pytest.approx(best.mean() - far.mean())
    selection._prune(rows, top_k=1)
    assert rows[0]["pruned"] is None and rows[1]["pruned"] == "beyond --top-k 1"


def test_combined_ranking_lets_scores_break_near_ties_but_not_overturn_the_probe():
    base = np.r_[np.ones(180, bool), np.zeros(20, bool)]  # 0.90
    rows = [_row("a", base, logme=1.0), _row("b", base.copy(), logme=5.0)]
    selection._combine(rows, ["logme"], 200)
    assert [r["source"] for r in rows] == ["b", "a"]  # equal probes: the score decides
    worse = base.copy()
    worse[:40] = False  # 0.70: far outside the probe's noise
    rows = [_row("a", base, logme=1.0), _row("b", worse, logme=5.0)]
    selection._combine(rows, ["logme"], 200)
    assert [r["source"] for r in rows] == ["a", "b"] and [r["rank"] for r in rows] == [1, 2]


def test_cross_validated_probe_pairs_candidates_on_the_same_folds():
    rng = np.random.default_rng(1)
    y = np.tile(np.arange(3), 30)
    good = rng.normal(size=(90, 40)) + 2 * rng.normal(size=(3, 40))[y]  # separable class means
    noise = rng.normal(size=(90, 400))  # more features than examples: the span coordinates path
    a = cross_validate_head(good[:60], y[:60], good[60:], y[60:], 3)
    b = cross_validate_head(noise[:60], y[:60], noise[60:], y[60:], 3)
    assert a.accuracy > 0.9 and b.accuracy < 0.6 and len(a.correct) == len(b.correct) == 90
    assert a.val_accuracy > 0.8 and len(a.fold_accuracies) == 3
    assert cross_validate_head(good[:3], np.array([0, 1, 2]), good[:0], y[:0], 3) is None  # one example a class


def _plan(task, monkeypatch, budget_seconds, per_example=1e-3):
    from transferkit.training import resolve_options

    monkeypatch.setattr(selection, "measure_costs",
                        lambda s, t, c: {"train_step_per_example": per_example, "forward": per_example / 3})
    cfg = resolve_options(FitConfig(batch_size=16, image_size=32, min_steps=300), task)  # 300+ steps: 2 rounds fit
    alive = [{"source": s, "_modules": ["Conv2d"]} for s in ("a", "b")]
    return selection.plan_pairs(task, cfg, alive, ["lp_ft", "full", "lora"], selection.Clock(budget_seconds))


def test_budget_plan_sizes_the_rounds_and_drops_what_does_not_fit(task, monkeypatch):
    pairs, plan, note = _plan(task, monkeypatch, 3600)
    assert note is None and [(p.source, p.strategy) for p in pairs] == [("a", "lp_ft"), ("a", "full"),
                                                                        ("b", "lp_ft"), ("b", "full")]  # no LoRA on CNNs
    assert plan["rounds"] == 2 and plan["fraction"] == pytest.approx(1 / 9)  # the last round is 1/ETA of the schedule
    full = pairs[0].full_seconds  # at 1e-3 s per example
    pairs, plan, note = _plan(task, monkeypatch, 3600, per_example=1e-3 * 0.6 * 3600 / full)
    assert note is None and 1 <= len(pairs) < 4  # a full run is 60 % of the budget: fewer pairs
    pairs, plan, note = _plan(task, monkeypatch, 1.0, per_example=10.0)
    assert pairs == [] and "no fine-tunes" in note and "--budget" in note


def _fake_training(monkeypatch, accuracy: dict):
    seen = []

    class FakeTrainer:
        def __init__(self, key, epochs):
            self.stages = [{"best_val_accuracy": accuracy[key] + epochs / 1000}]

    def fake_train(task, src, cfg, verbose=True, **kw):
        seen.append((src.id, cfg.strategy, cfg.epochs))
        return None, FakeTrainer((src.id, cfg.strategy), cfg.epochs)

    monkeypatch.setattr("transferkit.training.train_target", fake_train)
    return seen


def _pairs(accuracy):
    return [selection._Pair(s, st, i, full_seconds=1.0) for i, (s, st) in enumerate(accuracy)]


def test_halving_keeps_the_best_third_and_gives_it_three_times_the_steps(task, monkeypatch):
    from transferkit.training import resolve_options

    accuracy = {("a", "lp_ft"): 0.5, ("a", "full"): 0.9, ("b", "lp_ft"): 0.7, ("b", "full"): 0.2}
    seen = _fake_training(monkeypatch, accuracy)
    monkeypatch.setattr(selection, "load_candidate", lambda s, seed: type("S", (), {"id": s})())
    cfg = resolve_options(FitConfig(**{**FAST, "epochs": 9}), task)
    pairs = _pairs(accuracy)
    rounds = selection._halving(task, cfg, pairs, 1 / 9, selection.Clock(3600), 0.0, lambda *a: None)
    assert [(r["epochs"], len(r["results"])) for r in rounds] == [(1, 4), (3, 2)]
    assert rounds[0]["kept"] == ["a + full", "b + lp_ft"] and (pairs[0].source, pairs[0].strategy) == ("a", "full")
    assert len(seen) == 6


@pytest.mark.parametrize("fine_tune_val, n_val, expected", [
    (0.95, 200, "full"), (0.80, 200, "linear_probe"),
    (0.87, 200, "linear_probe"),  # above the probe, within one standard error (0.036 on 200 examples)
    (0.95, 20, "linear_probe"),  # 2 examples more out of 20: within the noise (0.113)
])
def test_a_fine_tune_is_chosen_only_beyond_the_noise_above_its_probe(fine_tune_val, n_val, expected):
    rows = [{"source": "a", "probe_val_accuracy": 0.85, "pruned": None, "probe_gap": None}]
    pair = selection._Pair("a", "full", 0, 1.0, val_accuracy=fine_tune_val)
    choice = selection._decide(rows, rows[0], [pair, selection._Pair("a", "lp_ft", 1, 1.0, val_accuracy=0.1)],
                               ["linear_probe", "full", "lp_ft"], None, n_val)
    assert choice.strategy == expected
    margin = selection.floor_margin(0.85, n_val)
    assert margin == pytest.approx((2 * 0.85 * 0.15 / n_val) ** 0.5)
    assert (choice.floor == {"source": "a", "val_accuracy": 0.85, "margin": margin}) == (expected == "full")


@pytest.mark.parametrize("gap, se, expected", [(0.03, 0.04, "lora"), (0.0, 0.03, "linear_probe"),
                                               (-0.02, 0.03, "linear_probe")])
def test_on_a_small_validation_split_the_fold_check_decides(gap, se, expected):
    rows = [{"source": "a", "probe_val_accuracy": 1.0, "pruned": None, "probe_gap": None}]
    check = {"source": "a", "strategy": "lora", "cv_accuracy": 0.9, "probe_cv_accuracy": 0.9 - gap, "gap": gap,
             "se": se, "beats_probe": gap > 0}
    pair = selection._Pair("a", "lora", 0, 1.0, val_accuracy=1.0)  # val cannot tell: both at 1.0 of 16
    choice = selection._decide(rows, rows[0], [pair], ["linear_probe", "lora"], None, 16, check)
    assert choice.strategy == expected and choice.floor is None and "fold check" in choice.report["why"]


def test_pairs_tied_with_the_leader_in_its_last_round_are_fold_checked_too():
    pairs = [selection._Pair(s, st, i, 1.0, val_accuracy=v)
             for i, (s, st, v) in enumerate([("a", "lp_ft", 0.7), ("a", "full", 0.7), ("b", "lp_ft", 0.7), ("b", "full", 0.5)])]
    last = [{"source": p.source, "strategy": p.strategy, "val_accuracy": p.val_accuracy} for p in pairs[:2] + pairs[3:]]
    rounds = [{"results": [{"source": "b", "strategy": "lp_ft", "val_accuracy": 0.7}]}, {"results": last}]
    tied = selection._tied_leaders(pairs, rounds)  # b + lp_ft reached 0.7 in an earlier, shorter round only
    assert [(p.source, p.strategy) for p in tied] == [("a", "lp_ft"), ("a", "full")]


def test_the_fold_check_predicts_every_example_out_of_fold_on_the_probes_folds(shuffled_folder):
    from transferkit.engine.probe import CV_FOLDS, stratified_folds
    from transferkit.training import resolve_options

    task = load_task_data(shuffled_folder)
    cfg = resolve_options(FitConfig(**{**FAST, "epochs": 1}), task)
    y = np.concatenate([task.train.labels, task.val.labels])
    probe = {"source": TINY[0], "cv_accuracy": 0.25, "_correct": np.zeros(len(y), bool)}
    pair = selection._Pair(TINY[0], "full", 0, full_seconds=1.0, val_accuracy=0.5)
    check = selection._fold_check(task, cfg, pair, probe, selection.Clock(3600), 0.0, lambda *a: None)
    assert check["folds"] == len(stratified_folds(y, cfg.seed, CV_FOLDS)) == 3
    assert len(check["correct"]) == len(y) and check["cv_accuracy"] == pytest.approx(check["correct"].mean())
    assert check["gap"] == pytest.approx(check["cv_accuracy"])  # the probe got nothing right here
    assert selection._fold_check(task, cfg, pair, probe, selection.Clock(0.5), 0.0, lambda *a: None)["skipped"]


def test_a_probe_perfect_on_validation_is_not_raced(task, monkeypatch):
    """Nothing can beat val 1.0 beyond the noise (on a validation split big enough to judge): no cost
    is measured and no fine-tune runs."""
    monkeypatch.setattr(selection, "SMALL_VAL", 0)
    def evidence(source_id, task, cfg, cache_dir):
        return {**_row(source_id, np.ones(len(task.train) + len(task.val), bool)), "probe_val_accuracy": 1.0, "seconds": 0.1,
                "_modules": ["Conv2d"]}

    monkeypatch.setattr(selection, "_evidence", evidence)
    monkeypatch.setattr(selection, "plan_pairs", lambda *a: pytest.fail("the search should not be planned"))
    choice = selection.choose(task, FitConfig(**{**FAST, "strategy": "auto", "candidates": TINY}), verbose=False)
    assert choice.strategy == "linear_probe" and choice.report["rounds"] == []
    assert "leaves no room" in choice.report["why"]


@pytest.fixture(scope="module")
def shuffled_folder(tmp_path_factory):
    """Digits with their class folders shuffled: no probe is perfect on validation, so auto races."""
    from transferkit.data.synthetic import write_image_folder

    root = tmp_path_factory.mktemp("shuffled")
    files = write_image_folder(root / "digits", {"0": 12, "1": 12, "2": 12, "3": 12}, size=32)
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(4), 12))
    for f, label in zip(files, labels):
        (root / "data" / str(label)).mkdir(parents=True, exist_ok=True)
        f.rename(root / "data" / str(label) / f.name)
    return root / "data"


def test_strategy_auto_end_to_end_writes_the_evidence_and_a_loadable_run(shuffled_folder, tmp_path):
    from transferkit.runs import load_run

    torch.manual_seed(0)
    run = fit(shuffled_folder, source="auto", strategy="auto", out=tmp_path / "run", verbose=False,
              **{**FAST, "candidates": TINY, "strategies": ["full"], "budget": 30})
    report = run.metrics["selection"]
    assert report["asked"] == {"source": "auto", "strategy": "auto"}
    assert report["strategies"] == ["linear_probe", "full"]
    assert run.metrics["strategy"] in ("linear_probe", "full") and report["chosen_strategy"] == run.metrics["strategy"]
    assert "plan" in report and report["plan"]["measured"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["fit"]["strategy"] == run.metrics["strategy"]  # the run rebuilds as what was trained
    assert load_run(tmp_path / "run").metrics["selection"]["choice"] == run.metrics["source"]
    assert "Candidates" in selection.format_selection(report)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Source selection" in md and "chosen strategy" in md and "cv_accuracy" in md


def test_report_lists_the_short_fine_tunes():
    from transferkit.evaluation.report.ranking import ranking_rows

    rounds = [{"round": 1, "epochs": 1, "results": [{"source": "a", "strategy": "full", "val_accuracy": 0.5,
                                                     "seconds": 3.0}]}]
    found = ranking_rows(None, {"ranking": [{"source": "a", "cv_accuracy": 0.9}], "rounds": rounds})
    assert len(found["rounds"]) == 1 and found["rounds"][0][:3] == ["1", "a + full", "1"]


def test_audit_trains_every_pair_and_seed_and_resumes_from_its_cells(image_folder, tmp_path, monkeypatch):
    from transferkit.audit import audit
    from transferkit.cli import main

    out = tmp_path / "audit"
    result = audit(image_folder, TINY[:1], ["linear_probe"], seeds=2, out=out, config=FitConfig(**FAST), verbose=False)
    assert [(c["seed"], c["strategy"]) for c in result["cells"]] == [(0, "linear_probe"), (1, "linear_probe")]
    pair = result["pairs"][0]
    accs = [c["test_accuracy"] for c in result["cells"]]
    assert pair["test_accuracy"] == pytest.approx(np.mean(accs)) and pair["test_std"] == pytest.approx(np.std(accs, ddof=1))
    assert {p.name for p in out.iterdir()} >= {"audit.json", "audit.md", "audit.csv"}
    assert "| 1 | timm:test_efficientnet@random | linear_probe |" in (out / "audit.md").read_text()

    killed = tmp_path / "killed"  # an audit killed after its first cell continues from it
    (killed / "checkpoints").mkdir(parents=True)
    (killed / ".transferkit.json").write_text(json.dumps({"kind": "audit", "complete": False}))
    (killed / "checkpoints" / "cells.jsonl").write_text(json.dumps(result["cells"][0]) + "\n{torn")
    trained = []
    import transferkit.pipeline as pipeline

    real_fit = pipeline.fit
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: trained.append(k["config"].seed) or real_fit(*a, **k))
    again = audit(image_folder, TINY[:1], ["linear_probe"], seeds=2, out=killed, config=FitConfig(**FAST), verbose=False)
    assert trained == [1] and again["cells"][0] == result["cells"][0]
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", str(image_folder), "--candidates", "auto", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
