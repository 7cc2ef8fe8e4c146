"""The no-transfer baselines (``--baseline classical|scratch|both|none``) and the loop's deadline.

Classical: one linear model per modality (``evaluation/baseline.py``) that beats chance clearly
on a learnable toy, is deterministic for a seed, and chooses its hyper-parameters on validation
when validation is large enough, else by k-fold cross-validation, then refits on train + val.
Scratch: the source's architecture from random init, stopped by the transfer run's training time
(``Trainer(deadline=...)``), which the stage records.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import FAST, TINY_IMAGE_SOURCE
from PIL import Image
from test_bad_images import cli

from transferkit.config import FitConfig, cli_args
from transferkit.data import load_task_data
from transferkit.data.base import Split, TaskData
from transferkit.engine.probe import MIN_VAL_EXAMPLES
from transferkit.evaluation import baseline as baselines


def accuracy(task: TaskData, proba: np.ndarray) -> float:
    return float((proba.argmax(1) == task.test.labels).mean())


def series(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Slow sines, fast sines and noisy ramps, of random phase and length 30-80."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n):
        label, t = i % 3, np.arange(rng.integers(30, 80))
        if label == 2:
            x = t / len(t) * rng.uniform(1, 2) + 0.3 * rng.standard_normal(len(t))
        else:
            x = np.sin(t * (0.2 if label == 0 else 1.1) + rng.uniform(0, 6.3)) + 0.2 * rng.standard_normal(len(t))
        xs.append(x.astype(np.float32))
        ys.append(label)
    return xs, np.array(ys, dtype=np.int64)


def series_task(train: int, val: int, test: int = 30, seed: int = 0) -> TaskData:
    splits = []
    for k, n in enumerate((train, val, test)):
        xs, ys = series(n, seed * 10 + k)
        splits.append(Split(xs, ys))
    return TaskData("sequence", ["slow", "fast", "ramp"], *splits)


def assert_deterministic(baseline, task: TaskData, seed: int = 0) -> tuple[np.ndarray, dict]:
    first, info = baseline(task, seed)
    again, info_again = baseline(task, seed)
    np.testing.assert_allclose(first, again, atol=1e-6)
    assert info["baseline_params"].keys() == info_again["baseline_params"].keys()
    for key in ("side", "length", "C", "channels"):
        assert info["baseline_params"].get(key) == info_again["baseline_params"].get(key)
    assert info["baseline_chosen_by"] == info_again["baseline_chosen_by"]
    return first, info


# -- classical, per modality ------------------------------------------------------------------------


def test_image_pixels_baseline_learns_digits_and_sees_they_are_grey(image_folder):
    task = load_task_data(image_folder)  # 4 digits x 12, 32 px grey PNGs
    proba, info = assert_deterministic(baselines.pixels_baseline, task)
    assert proba.shape == (len(task.test), 4) and np.allclose(proba.sum(1), 1)
    assert accuracy(task, proba) >= 0.75  # chance 0.25
    assert info["baseline"] == "pixels_logreg" and info["baseline_params"]["channels"] == 1
    assert info["baseline_params"]["side"] in baselines.PIXEL_SIDES
    assert info["baseline_chosen_by"].endswith("-fold cross-validation")  # 8 val examples: too few to choose on
    assert f"{info['baseline_params']['side']}x{info['baseline_params']['side']} grey pixels" in \
        info["baseline_description"]


def test_image_pixels_baseline_keeps_colour_when_the_images_have_it():
    colours = {0: (200, 30, 30), 1: (30, 200, 30), 2: (30, 30, 200)}
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        labels = np.arange(n) % 3
        images = [Image.fromarray(np.clip(np.array(colours[int(y)]) + rng.integers(-40, 40, (20, 24, 3)), 0, 255)
                                  .astype(np.uint8), "RGB") for y in labels]
        return Split(images, labels.astype(np.int64))

    task = TaskData("image", ["red", "green", "blue"], split(30), split(9), split(15))
    proba, info = baselines.pixels_baseline(task, 0)
    assert info["baseline_params"]["channels"] == 3 and "RGB pixels" in info["baseline_description"]
    assert accuracy(task, proba) == 1.0


def test_text_tfidf_baseline_learns_the_emails(text_table):
    task = load_task_data(text_table)
    proba, info = assert_deterministic(baselines.tfidf_baseline, task)
    assert accuracy(task, proba) >= 0.85  # chance 0.5
    assert info["baseline"] == "tfidf_logreg" and info["baseline_params"]["C"] in baselines.TEXT_C_GRID
    assert info["baseline_params"]["char_wb_ngrams"] == [2, 5] and info["baseline_params"]["word_ngrams"] == [1, 2]
    assert info["baseline_chosen_by"].endswith("-fold cross-validation")


def test_text_baseline_chooses_on_a_large_validation_split():
    rng = np.random.default_rng(1)
    words = {0: ["invoice", "payment", "refund", "bank"], 1: ["match", "goal", "team", "score"]}

    def split(n: int) -> Split:
        labels = np.arange(n) % 2
        return Split([" ".join(rng.choice(words[int(y)] + ["the", "and", "today"], 5)) for y in labels],
                     labels.astype(np.int64))

    task = TaskData("text", ["money", "sport"], split(40), split(MIN_VAL_EXAMPLES), split(20))
    proba, info = baselines.tfidf_baseline(task, 0)
    assert info["baseline_chosen_by"] == "validation" and accuracy(task, proba) >= 0.9
    assert info["baseline_val_accuracy"] >= 0.9
    assert f"fitted on {40 + MIN_VAL_EXAMPLES} examples" in info["baseline_description"]  # refitted on train + val


def test_audio_logmel_baseline_tells_tones_apart(tmp_path):
    from transferkit.data.audio import write_tone_folder

    write_tone_folder(tmp_path / "tones", {"a": 12, "b": 12, "c": 12}, sample_rate=8000, seconds=0.4)
    task = load_task_data(tmp_path / "tones")
    proba, info = assert_deterministic(baselines.logmel_baseline, task)
    assert accuracy(task, proba) >= 0.85  # chance 1/3
    assert info["baseline"] == "logmel_logreg" and info["baseline_params"]["mel_bands"] == baselines.AUDIO_MELS


def test_sequence_baseline_learns_sines_and_ramps():
    task = series_task(60, 12)
    proba, info = assert_deterministic(baselines.series_baseline, task)
    assert accuracy(task, proba) >= 0.8  # chance 1/3
    assert info["baseline"] == "series_logreg" and info["baseline_params"]["length"] in baselines.SERIES_LENGTHS
    assert info["baseline_params"]["channels"] == 1


def test_multichannel_series_give_features_per_channel():
    x = np.stack([np.arange(50.0), -np.arange(50.0), np.ones(50)])
    features = baselines._series_features(x, 16)
    assert features.shape == (3 * (16 + 6) + 1,)
    slopes = features.reshape(-1)[:-1].reshape(3, 22)[:, 16 + 4]
    assert slopes[0] > 0 > slopes[1] and slopes[2] == pytest.approx(0)
    short = baselines._series_features(np.array([1.0, 3.0]), 16)  # shorter than the length: interpolated
    assert short[:16] == pytest.approx(np.linspace(1, 3, 16))


# -- how the hyper-parameters are chosen -------------------------------------------------------------


def test_choice_on_validation_when_it_is_large_enough_else_by_cross_validation():
    on_val = series_task(30, MIN_VAL_EXAMPLES + 10)  # 60 val examples, 20 per class: meaningful
    _, info = baselines.series_baseline(on_val, 0)
    assert info["baseline_chosen_by"] == "validation"
    assert info["baseline_val_accuracy"] is not None
    assert f"fitted on {30 + MIN_VAL_EXAMPLES + 10} examples" in info["baseline_description"]
    curve = dict((length, loss) for length, loss in info["baseline_params"]["length_curve"])
    assert set(curve) == set(baselines.SERIES_LENGTHS)
    assert info["baseline_params"]["length"] == min(curve, key=curve.get)  # the lowest held-out log-loss

    small_val = series_task(30, 9)  # 9 val examples: cross-validated over the 39 of train + val
    _, info = baselines.series_baseline(small_val, 0)
    assert info["baseline_chosen_by"] == "5-fold cross-validation"
    assert "fitted on 39 examples" in info["baseline_description"]

    no_val = series_task(30, 0)
    _, info = baselines.series_baseline(no_val, 0)
    assert info["baseline_chosen_by"] == "5-fold cross-validation" and info["baseline_val_accuracy"] is None


def test_too_few_examples_to_cross_validate_take_the_defaults():
    task = series_task(3, 0, test=6)  # one example per class
    proba, info = baselines.series_baseline(task, 0)
    assert info["baseline_chosen_by"].startswith("default")
    assert info["baseline_params"]["length"] == baselines.DEFAULT_LENGTH and proba.shape == (6, 3)


# -- the options -------------------------------------------------------------------------------------


def test_old_configs_with_a_true_or_false_baseline_still_load(tmp_path):
    assert FitConfig.from_dict({"baseline": True}).baseline == "classical"
    assert FitConfig.from_dict({"baseline": False}).baseline == "none"
    assert FitConfig().baseline == "classical"
    (tmp_path / "old.yaml").write_text("baseline: no\nepochs: 2\n")  # YAML 1.1: no is false
    assert FitConfig.from_file(tmp_path / "old.yaml").baseline == "none"
    assert cli_args({"baseline": False}) == ["--baseline", "none"] and cli_args({"baseline": True}) == []
    assert cli_args({"baseline": "both"}) == ["--baseline", "both"]


@pytest.fixture(scope="module")
def tiny_run(image_folder, tmp_path_factory):
    from transferkit import fit

    out = tmp_path_factory.mktemp("baselines") / "run"
    run = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="linear_probe", out=out, verbose=False,
              **{**FAST, "baseline": "none"})
    return out, run


def test_baseline_none_trains_no_baseline(tiny_run):
    _, run = tiny_run
    assert not [key for key in run.metrics if "baseline" in key] and "transfer_gain" not in run.metrics


def test_a_stored_run_from_before_still_loads(tiny_run, tmp_path):
    import shutil

    from transferkit.evaluation.report import reproduce_command
    from transferkit.runs import load_run, read_run_config

    out, _ = tiny_run
    for old, now in ((True, "classical"), (False, "none")):
        copy = tmp_path / f"old-{old}"
        shutil.copytree(out, copy)
        config = json.loads((copy / "config.json").read_text())
        config["fit"]["baseline"] = old
        (copy / "config.json").write_text(json.dumps(config))
        read_run_config(copy)
        assert load_run(copy).fit_config.baseline == now
        assert ("--baseline none" in reproduce_command(config)) == (not old)
        assert "--no-baseline" not in reproduce_command(config)


def test_cli_refuses_an_unknown_baseline_in_one_line(image_folder, tmp_path):
    code, _, err = cli(["fit", image_folder, "--source", TINY_IMAGE_SOURCE, "--out", tmp_path / "run", "--quiet",
                        "--baseline", "bogus"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: `--baseline` must be one of classical, scratch, both, none; got 'bogus'.")
    assert not (tmp_path / "run").exists()


# -- scratch: the transfer's time, a deadline in the loop ----------------------------------------------


@pytest.fixture(scope="module")
def digits(image_folder):
    from transferkit.sources import load_source

    return load_task_data(image_folder), lambda: load_source(TINY_IMAGE_SOURCE)


def scratch_config(**options) -> FitConfig:
    return FitConfig(**{"strategy": "full", "batch_size": 8, "image_size": 32, "augment": False,
                        "baseline": "none", **options})


def test_a_passed_deadline_stops_the_stage_after_one_step_and_says_so(digits):
    from transferkit.training import train_target

    task, source = digits
    _, trainer = train_target(task, source(), scratch_config(epochs=6), verbose=False, deadline=time.perf_counter())
    stage = trainer.stages[-1]
    assert stage["stopped_on_time"] is True and stage["optimizer_steps"] == 1
    assert stage["epochs_run"] == 1 < stage["planned_epochs"] == 6
    assert stage["planned_optimizer_steps"] == 6 * 4 and stage["seconds_limit"] <= 0
    assert len(trainer.history) == 1  # the partial epoch is evaluated as an epoch end


def test_without_a_deadline_or_before_it_the_stage_runs_its_epochs(digits):
    from transferkit.training import train_target

    task, source = digits
    _, trainer = train_target(task, source(), scratch_config(epochs=2), verbose=False)
    assert trainer.stages[-1]["epochs_run"] == 2 and "stopped_on_time" not in trainer.stages[-1]
    _, trainer = train_target(task, source(), scratch_config(epochs=2), verbose=False,
                              deadline=time.perf_counter() + 1e6)
    stage = trainer.stages[-1]
    assert stage["stopped_on_time"] is False and stage["epochs_run"] == 2
    assert stage["schedule_steps"] == stage["planned_optimizer_steps"] == stage["optimizer_steps"]


def test_a_deadline_re_plans_the_schedule_to_the_steps_that_fit(digits):
    from transferkit.training import train_target

    task, source = digits
    _, trainer = train_target(task, source(), scratch_config(epochs=500), verbose=False,
                              deadline=time.perf_counter() + 2.0)
    stage = trainer.stages[-1]
    assert stage["stopped_on_time"] is True and stage["epochs_run"] < 500
    assert stage["optimizer_steps"] <= stage["schedule_steps"] < stage["planned_optimizer_steps"] == 500 * 4
    lrs = [row["lr"] for row in trainer.history]
    assert lrs[-1] < max(lrs)  # annealed toward the re-planned end, not cut at the planned peak


def test_scratch_baseline_gets_the_transfer_time_and_records_it(digits):
    from transferkit.training import run_baseline

    task, source = digits
    metrics = run_baseline(task, source(), scratch_config(baseline="scratch", epochs=2), verbose=False, seconds=0.0)
    params = metrics["baseline_params"]
    assert metrics["baseline"] == "scratch" and metrics["baseline_kind"] == "scratch"
    assert params["stopped_on_time"] is True and params["seconds_limit"] == 0.0
    assert params["epochs_run"] < params["planned_epochs"] and params["optimizer_steps"] == 1
    assert "stopped on time" in metrics["baseline_description"] and "baseline_test_accuracy" in metrics
    assert not [key for key in metrics if key.startswith("scratch_")]


def test_both_puts_the_scratch_baseline_beside_the_classical_one(digits):
    from transferkit.training import run_baseline

    task, source = digits
    metrics = run_baseline(task, source(), scratch_config(baseline="both", epochs=2), verbose=False, seconds=0.0)
    assert metrics["baseline"] == "pixels_logreg" and metrics["baseline_kind"] == "classical"
    assert metrics["scratch_baseline"] == "scratch" and metrics["scratch_baseline_kind"] == "scratch"
    for key in ("test_accuracy", "test_macro_f1", "seconds", "params", "description"):
        assert f"baseline_{key}" in metrics and f"scratch_baseline_{key}" in metrics
    assert run_baseline(task, source(), scratch_config(), verbose=False, seconds=0.0) == {}
