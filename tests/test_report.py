"""The run report: ``report.md`` and a self-contained ``report.html``, looked at in headless Chromium."""

from __future__ import annotations

import base64
import html as html_module
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, TINY_IMAGE_SOURCE
from PIL import Image

from transferkit.evaluation.report import ranking_rows, write_report
from transferkit.evaluation.report.facts import recipe_rows

SECTIONS = ("verdict", "data", "source", "transfer", "curves", "errors", "gain", "examples", "calibration", "cost",
            "reproduce")
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 2400)


@pytest.fixture(scope="module")
def image_run(image_folder, tmp_path_factory):
    """One image run with its no-transfer baseline (the report's full set of inputs)."""
    from transferkit import fit

    out = tmp_path_factory.mktemp("report") / "run"
    fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="linear_probe", out=out, verbose=False,
        **{**FAST, "baseline": "both"})
    return out


def embedded_pngs(html: str, thumbnails: bool = False) -> list[Image.Image]:
    """The page's plots (``<img src=...>``), or with ``thumbnails`` the worst examples' thumbnails
    (``<img class="thumb" ...>``)."""
    images = []
    pattern = r'<img class="thumb" src="data:image/png;base64,([^"]+)"' if thumbnails else \
        r'<img src="data:image/png;base64,([^"]+)"'
    for data in re.findall(pattern, html):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        images.append(image)
    return images


def ink(image: Image.Image) -> float:
    """Share of pixels that are not (near) white."""
    grey = image.convert("L")
    histogram = grey.histogram()
    return 1.0 - sum(histogram[245:]) / max(1, grey.width * grey.height)


def test_fit_writes_a_self_contained_html_report(image_run):
    html = (image_run / "report.html").read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    # self-contained: no scripts, no external assets
    assert "<script" not in html.lower()
    assert not re.findall(r'(?:src|href)="(?!data:image/png;base64,|#)', html)
    assert "<style>" in html and "max-width:1000px" in html
    images = embedded_pngs(html)
    # comparison, transfer map, learning curves, confusion matrix, per-class bars
    assert len(images) >= 5
    for image in images:
        assert image.format == "PNG" and image.width >= 300 and image.height >= 100
        assert ink(image) > 0.01 and len(image.getcolors(1 << 16) or range(1 << 16)) > 8
    assert "Transfer" in html and "baseline" in html
    md = (image_run / "report.md").read_text()
    for heading in ("## Data", "## Source and transfer map", "## Schedule", "## Stages", "## Per class (test)",
                    "## Per-class gain over the baseline (test recall)", "## Test examples it gets most wrong",
                    "## Calibration (test)", "## Cost"):
        assert heading in md
    assert "report.html" in md
    # what ran: a linear probe is a convex fit (no loop schedule to show), at the size given
    assert re.search(r"\| convex head fit \| lbfgs logistic regression, L2 C = [\d.e-]+ \(.+\), fitted on \d+", md)
    schedule = md.split("## Schedule")[1].split("\n## ")[0]
    assert "| input size | 32 px |" in schedule and "| epochs |" not in schedule
    assert "<h3>Schedule</h3>" in html


def test_the_report_names_both_baselines_and_what_they_chose(image_run):
    """`--baseline both`: the classical one (what `transfer_gain` is against) and the scratch one,
    each named with its chosen hyper-parameters, in both reports and the cost table."""
    metrics = json.loads((image_run / "metrics.json").read_text())
    assert metrics["baseline"] == "pixels_logreg" and metrics["scratch_baseline"] == "scratch"
    assert metrics["transfer_gain"] == pytest.approx(metrics["test_accuracy"] - metrics["baseline_test_accuracy"])
    md, html = (image_run / "report.md").read_text(), (image_run / "report.html").read_text()
    assert "| | transfer | no-transfer baseline | scratch baseline |" in md
    side, c = metrics["baseline_params"]["side"], metrics["baseline_params"]["C"]
    assert f"No-transfer baseline: pixels_logreg: logistic regression on {side}x{side} grey pixels, L2 C = {c:g}" in md
    assert "Scratch baseline: scratch: test_efficientnet from random init" in md
    assert "scratch baseline (wall time)" in html and "Against the scratch baseline:" in html
    assert f"logistic regression on {side}x{side} grey pixels" in html
    cost = md.split("## Cost")[1]
    assert ", baseline " in cost and ", scratch baseline " in cost


def test_fit_keeps_the_worst_test_examples_and_the_calibration(image_run):
    """What the report's new sections read: the highest-loss test examples and the reliability bins."""
    metrics = json.loads((image_run / "metrics.json").read_text())
    worst, n_test = metrics["test_top_losses"], metrics["data"]["split_sizes"]["test"]
    assert len(worst) == min(12, n_test)
    losses = [w["loss"] for w in worst]
    assert losses == sorted(losses, reverse=True)
    classes = metrics["data"]["classes"]
    for w in worst:
        assert w["true"] in classes and w["predicted"] in classes and w["correct"] == (w["true"] == w["predicted"])
        assert w["loss"] == pytest.approx(-math.log(w["p_true"]))
        assert w["p_predicted"] >= w["p_true"] and Path(w["file"]).is_absolute() and Path(w["file"]).is_file()
    wrong = sum(sum(row) - row[i] for i, row in enumerate(metrics["test_confusion_matrix"]))
    assert sum(not w["correct"] for w in worst) == min(wrong, len(worst))  # every mistake ranks above every hit
    calibration = metrics["test_calibration"]
    assert calibration["examples"] == n_test and sum(b["count"] for b in calibration["bins"]) == n_test
    assert calibration["accuracy"] == pytest.approx(metrics["test_accuracy"]) and 0 <= calibration["ece"] <= 1
    # the recall deltas against each baseline, from the per-class metrics both recorded
    md = (image_run / "report.md").read_text()
    gain = md.split("## Per-class gain over the baseline")[1].split("\n## ")[0]
    for c, m in metrics["test_per_class"].items():
        base, scratch = metrics["baseline_test_per_class"][c], metrics["scratch_baseline_test_per_class"][c]
        assert (f"| {c} | {m['support']} | {m['recall']:.3f} | {base['recall']:.3f} | "
                f"{(m['recall'] - base['recall']) * 100:+.1f} |") in gain
        assert f"| {scratch['recall']:.3f} | {(m['recall'] - scratch['recall']) * 100:+.1f} |" in gain
    # thumbnails of the worst images: small PNGs made from the files, one per example
    html = (image_run / "report.html").read_text()
    thumbs = embedded_pngs(html, thumbnails=True)
    assert len(thumbs) == len(worst)
    assert all(t.format == "PNG" and max(t.size) <= 80 and ink(t) > 0.01 for t in thumbs)
    section = html.split('id="examples"')[1].split("</section>")[0]
    origin = Path(metrics["data"]["origin"]).resolve()
    for w in worst:  # named relative to the data folder
        assert f'<div class="name">{Path(w["file"]).relative_to(origin).as_posix()}</div>' in section
    assert len(section) < 100_000  # the thumbnails stay small
    assert 'id="calibration"' in html and "ECE" in html and "Reliability diagram" in html


def test_calibration_bins_and_ece_match_their_definition():
    from transferkit.evaluation.metrics import calibration, wilson_interval

    proba = np.array([[0.95, 0.05], [0.92, 0.08], [0.62, 0.38], [0.3, 0.7], [0.45, 0.55], [1.0, 0.0]])
    labels = np.array([0, 1, 0, 1, 0, 0])
    cal = calibration(labels, proba, bins=10)
    by_bin = {round(b["low"], 1): b for b in cal["bins"] if b["count"]}
    assert by_bin[0.9]["count"] == 3 and by_bin[0.9]["accuracy"] == pytest.approx(2 / 3)  # 1.0 lands in the top bin
    assert by_bin[0.5]["count"] == 1 and by_bin[0.5]["accuracy"] == 0.0
    expected = sum(b["count"] / 6 * abs(b["accuracy"] - b["confidence"]) for b in by_bin.values())
    assert cal["ece"] == pytest.approx(expected) and cal["accuracy"] == pytest.approx(4 / 6)
    perfect = calibration(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert perfect["ece"] == 0.0
    assert calibration(np.zeros(0, int), np.zeros((0, 2)))["ece"] is None
    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(1.0, 10)[1] == 1.0 and wilson_interval(1.0, 10)[0] < 0.75
    assert wilson_interval(0.5, 0) is None


def test_top_losses_describe_each_modality():
    from transferkit.evaluation.examples import SNIPPET, top_losses

    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    labels = np.array([1, 1, 0])
    texts = ["short  text\nwith a newline", "x" * 500, "tie"]
    rows = top_losses(texts, labels, proba, ["a", "b"], "text", k=2)
    assert [r["index"] for r in rows] == [0, 2]  # loss 2.30, then 0.69 (0.22 left out by k)
    assert rows[0]["text"] == "short text with a newline" and rows[0]["predicted"] == "a" and not rows[0]["correct"]
    assert len(top_losses(texts, labels, proba, ["a", "b"], "text")[2]["text"]) == SNIPPET
    files = top_losses([Path("rel/a.png"), "b.png", "c.png"], labels, proba, ["a", "b"], "image")
    assert all(Path(r["file"]).is_absolute() for r in files)
    series = top_losses([np.zeros((2, 50))] * 3, labels, proba, ["a", "b"], "sequence", k=1)
    assert series[0]["series"] == "2 x 50 values"
    assert top_losses([], np.zeros(0, int), np.zeros((0, 2)), ["a", "b"], "text") == []


def test_schedule_rows_mark_what_transferkit_sized():
    recipe = {"train_examples": 320, "batch_size": 32, "epochs": 10, "min_steps": 100, "steps_per_epoch": 10,
              "warmup_ratio": 0.1, "lr": 1e-4, "head_lr": 1e-3, "batchnorm": ["kept"],
              "weights_kept": "best epoch on 80 validation examples", "image_size": 64,
              "left_to_transferkit": ["epochs", "lr", "head_lr", "image_size"]}
    rows = dict(recipe_rows({"recipe": recipe}))
    assert rows["batch size"] == "32"  # given
    assert rows["epochs"] == "10 (auto: at least 100 optimizer steps, 10 per epoch)"
    assert rows["learning rate, heads"] == "0.001 (auto)" and rows["input size"] == "64 px (auto)"
    assert rows["BatchNorm statistics"] == "kept" and "convex head fit" not in rows
    assert recipe_rows({}) == []


def _fake_run(tmp_path, **metric_overrides):
    """A run directory written by hand: every optional report input present, transfer losing."""
    config = {"transferkit_version": "0", "classes": {"label": ["cat", "dog", "<b>&bird"]},
              "source": {"id": "mobilenet_v2", "architecture": "MobileNetV2", "weights": "ImageNet-1k",
                         "license": "BSD-3-Clause", "feature_dim": 1280, "layer_groups": ["a", "b"],
                         "spec": {"loader": "torchvision", "name": "mobilenet_v2"}, "preprocessing": {}},
              "fit": {"strategy": "lp_ft", "seed": 3, "lr": 1e-4, "probe_lr": 3e-3, "epochs": 2, "warmup_ratio": 0.1},
              "versions": {"torch": "2"}}
    per_class = {c: {"precision": p, "recall": p, "f1": p, "support": 4}
                 for c, p in (("cat", 0.5), ("dog", 0.25), ("<b>&bird", 0.75))}
    metrics = {
        "source": "mobilenet_v2", "strategy": "lp_ft", "seed": 3, "train_seconds": 12.5, "baseline_seconds": 9.0,
        "test_accuracy": 0.5, "test_macro_f1": 0.5, "test_per_class": per_class,
        "test_confusion_matrix": [[2, 1, 1], [2, 1, 1], [0, 1, 3]],
        "baseline_test_accuracy": 0.75, "baseline_test_macro_f1": 0.7, "baseline": "scratch",
        "baseline_test_per_class": per_class, "peak_memory_mb": 900.0,
        "tasks": {"label": {"accuracy": 0.5, "macro_f1": 0.5, "per_class": per_class},
                  "colour": {"accuracy": 0.9, "macro_f1": 0.85, "per_class": {"red": {}, "blue": {}}}},
        "wise_ft_alpha": 0.4, "wise_ft_curve": [[a / 10, 0.5 + 0.05 * min(a, 4) / 4] for a in range(11)],
        "selection": {"score": "logme", "choice": "mobilenet_v2", "kendall_tau": 0.33, "candidates": ["a", "b"],
                      "short_run_val_accuracy": {"mobilenet_v2": 0.6, "efficientnet_lite0": 0.5},
                      "ranking": [
                          {"rank": 1, "source": "mobilenet_v2", "logme": 1.2, "seconds": 3.0, "notes": [],
                           "random_control": False},
                          {"rank": 2, "source": "efficientnet_lite0", "logme": 0.9, "seconds": 4.0,
                           "notes": ["leep skipped: no head"], "random_control": False},
                          {"rank": 3, "source": "mobilenet_v2@random", "logme": -0.4, "seconds": 2.0, "notes": [],
                           "random_control": True}]},
        "stages": [{"stage": "linear_probe", "epochs_run": 5, "best_epoch": 4, "best_val_accuracy": 0.5,
                    "trainable_parameters": 3843, "seconds": 1.0, "examples_per_second": 500.0,
                    "group_lrs": {"heads": 3e-3}},
                   {"stage": "full", "epochs_run": 2, "best_epoch": 2, "best_val_accuracy": 0.6,
                    "trainable_parameters": 2_000_000, "seconds": 10.0, "examples_per_second": 50.0}],
        "transfer": {"by_origin": {"source": {"tensors": 10, "parameters": 2_000_000},
                                   "fresh": {"tensors": 2, "parameters": 3843}},
                     "trainable_parameters": 2_003_843, "total_parameters": 2_003_843, "frozen_parameters": 0},
        "test_top_losses": [
            {"index": 7, "file": "/data/pets/dog/gone.png", "true": "dog", "predicted": "<b>&bird", "p_predicted": 0.9,
             "p_true": 0.05, "loss": 2.9957, "correct": False},
            {"index": 2, "file": "/elsewhere/cat|1.png", "true": "cat", "predicted": "cat", "p_predicted": 0.4,
             "p_true": 0.4, "loss": 0.9163, "correct": True}],
        "test_calibration": {"bins": [{"low": b / 10, "high": (b + 1) / 10, "count": 6 if b in (4, 9) else 0,
                                       "confidence": (b + 0.5) / 10 if b in (4, 9) else None,
                                       "accuracy": (0.25 if b == 4 else 0.75) if b in (4, 9) else None}
                                      for b in range(10)],
                             "ece": 0.2, "examples": 12, "confidence": 0.7, "accuracy": 0.5},
        "data": {"modality": "image", "origin": "/data/pets", "classes": ["cat", "dog", "<b>&bird"],
                 "split_sizes": {"train": 30, "val": 6, "test": 12}, "split_given": False,
                 "class_counts": {s: {"cat": n, "dog": n, "<b>&bird": n} for s, n in
                                  (("train", 10), ("val", 2), ("test", 4))},
                 "skipped": [{"file": "broken.png", "reason": "cannot identify image file"}]},
    }
    metrics.update(metric_overrides)
    history = [{"stage": "linear_probe", "epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e,
                "val_accuracy": 0.1 * e, "lr": 3e-3} for e in range(1, 6)]
    history += [{"stage": "full", "epoch": e, "train_loss": 0.3 / e, "val_loss": 0.4, "val_accuracy": 0.6,
                 "lr": 1e-4 / e} for e in range(1, 3)]
    transfer = [{"tensor": f"backbone.features.{i}.weight", "shape": [100, 100], "origin": "source",
                 "group": f"features.{i}", "trainable": True} for i in range(10)]
    transfer += [{"tensor": "heads.label.0.weight", "shape": [3, 1280], "origin": "fresh", "group": "heads",
                  "trainable": True}]
    run = tmp_path / "fake"
    run.mkdir()
    for name, obj in (("config.json", config), ("metrics.json", metrics), ("history.json", history),
                      ("transfer_map.json", transfer)):
        (run / name).write_text(json.dumps(obj))
    return run


def test_report_flags_lost_transfer_and_shows_every_optional_section(tmp_path):
    run = _fake_run(tmp_path)
    write_report(run)
    html = (run / "report.html").read_text()
    assert 'class="verdict lost"' in html and "Transfer lost" in html and "-25.0" in html
    assert 'id="wiseft"' in html and "<b>0.4</b>" in html  # the α-curve, chosen α marked
    assert "Why this source" in html and '<tr class="chosen">' in html and "Kendall" in html
    assert "leep skipped: no head" in html and "short-run val accuracy" in html
    assert "broken.png" in html and "Preflight skipped 1" in html
    assert "heads 0.003" in html  # learning rate per group, when the stage recorded it
    assert "&lt;b&gt;&amp;bird" in html and "<b>&bird" not in html  # names are escaped
    assert len(embedded_pngs(html)) >= 7  # + ranking chart and α-curve
    md = (run / "report.md").read_text()
    assert "**Transfer lost**" in md and "## Source selection" in md and "## WiSE-FT" in md
    assert "Every task head" in html and "| colour | 0.9000 |" in md
    # the worst examples: files gone since (no thumbnail, the name alone), names escaped, pipes too
    examples = html.split('id="examples"')[1].split("</section>")[0]
    assert 'class="thumb"' not in examples and "2 image(s) could not be read" in examples
    assert "dog/gone.png" in examples and "cat|1.png" in examples and "predicted <b>&lt;b&gt;&amp;bird</b>" in examples
    assert "| 1 | dog/gone.png | dog | <b>&bird | 0.900 | 0.050 | 3.00 |" in md
    assert "| 2 | cat\\|1.png | cat | cat (right) |" in md
    assert "Most confused (true → predicted, test examples): dog → cat (2); cat → dog (1);" in md
    # calibration: the sentence (overconfident by 20 points) and the bins; gain against the scratch baseline
    assert "ECE) 0.200" in md and "overconfident by 20.0 points" in md
    assert "| 0.4-0.5 | 6 | 0.450 | 0.250 | -20.0 |" in md
    assert "## Per-class gain over the baseline" in md and "| cat | 4 | 0.500 | 0.500 | +0.0 | +0.0 |" in md
    assert 'id="gain"' in html and 'id="calibration"' in html


def test_report_without_baseline_or_history(tmp_path):
    run = _fake_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    for key in [k for k in metrics if k.startswith("baseline") or k.startswith("wise_ft") or k == "selection"]:
        del metrics[key]
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "history.json").unlink()
    (run / "transfer_map.json").unlink()
    write_report(run)
    html = (run / "report.html").read_text()
    assert 'class="verdict none"' in html and "No baseline" in html and 'id="wiseft"' not in html
    assert "Chosen by the user" in html
    assert 'id="gain"' not in html and "## Per-class gain" not in (run / "report.md").read_text()


@pytest.mark.parametrize("modality", ["text", "audio"])
def test_worst_text_and_audio_examples_are_a_table(tmp_path, modality):
    run = _fake_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["data"]["modality"] = modality
    what = {"text": "refund <now> | or else"} if modality == "text" else {"file": "/data/pets/dog/bark.wav"}
    metrics["test_top_losses"] = [{"index": 3, **what, "true": "dog", "predicted": "cat", "p_predicted": 0.7,
                                   "p_true": 0.2, "loss": 1.6094, "correct": False}]
    (run / "metrics.json").write_text(json.dumps(metrics))
    write_report(run)
    html, md = (run / "report.html").read_text(), (run / "report.md").read_text()
    examples = html.split('id="examples"')[1].split("</section>")[0]
    assert 'class="case' not in examples and "<th>p(predicted)</th>" in examples.replace(' class="n"', "")
    if modality == "text":
        assert "refund &lt;now&gt; | or else" in examples and "| 1 | refund <now> \\| or else | dog | cat |" in md
    else:
        assert "<code>dog/bark.wav</code>" in examples
        assert "| 1 | dog/bark.wav | dog | cat | 0.700 | 0.200 | 1.61 |" in md


def test_report_of_a_run_from_before_the_worst_examples(tmp_path):
    """Runs written before ``test_top_losses`` and ``test_calibration`` existed: no such sections, no errors."""
    run = _fake_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["test_top_losses"], metrics["test_calibration"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    write_report(run)
    html, md = (run / "report.html").read_text(), (run / "report.md").read_text()
    assert 'id="examples"' not in html and 'id="calibration"' not in html and 'id="gain"' in html
    assert "## Test examples" not in md and "## Calibration" not in md


def test_ranking_rows_accept_rank_output_and_selection_reports():
    rows = [{"source": "a", "rank": 1, "logme": 1.0, "leep": None, "seconds": 1.0, "notes": []}]
    assert ranking_rows(rows, None)["score"] == "logme"
    sel = ranking_rows(None, {"score": "leep", "choice": "a", "ranking": rows + [{"source": "b", "leep": 0.5}]})
    assert sel["score"] == "leep" and sel["facts"]["choice"] == "a" and len(sel["rows"]) == 2
    assert ranking_rows(None, None) == {"rows": [], "score": None, "facts": {}, "rounds": []}


def test_plotting_stays_off_the_cli_import_path():
    code = "import sys, transferkit.cli, transferkit.evaluation.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


# -- the page in a real browser ------------------------------------------------------------------

PROBE = """<script>
window.addEventListener("load", function () {
  var found = Array.prototype.map.call(document.images, function (im) {
    var r = im.getBoundingClientRect();
    return {natural: [im.naturalWidth, im.naturalHeight], complete: im.complete, thumb: im.className == "thumb",
            box: [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]};
  });
  var sections = {}, overflow = [];
  Array.prototype.forEach.call(document.querySelectorAll("main section"), function (s) {
    var box = s.getBoundingClientRect();
    sections[s.id] = [box.left, box.width, box.height];
    Array.prototype.forEach.call(s.querySelectorAll("*"), function (e) {
      var r = e.getBoundingClientRect();
      if (r.width > 0 && (r.right > box.right + 0.5 || r.left < box.left - 0.5)) {
        overflow.push(s.id + " " + e.tagName + " " + Math.round(r.left) + "-" + Math.round(r.right));
      }
    });
  });
  var pre = document.createElement("pre");
  pre.id = "tk-image-check";
  pre.textContent = JSON.stringify({images: found, sections: sections, overflow: overflow,
                                    page: document.documentElement.scrollWidth});
  document.body.appendChild(pre);
});
</script>"""


def chromium_binary() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(binary: str, profile, *args: str) -> subprocess.CompletedProcess:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
               "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}", "--force-device-scale-factor=1",
               "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_report_renders_in_headless_chromium(image_run, tmp_path):
    found = check_page_in_chromium(image_run / "report.html", tmp_path, SECTIONS)
    thumbs = [p for p in found["images"] if p["thumb"]]
    assert len(thumbs) == len(json.loads((image_run / "metrics.json").read_text())["test_top_losses"])
    assert all(w <= 96 for _, _, w, _ in (t["box"] for t in thumbs))  # drawn in their 96 px box


def check_page_in_chromium(page, tmp_path, sections, min_images: int = 5) -> dict:
    """Renders ``page`` in headless Chromium (skips without one): a screenshot with ink, each image
    decoded and inside the ~1000 px column, every section of ``sections`` laid out, and no element
    wider than its section. Returns what the probe found."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium binary (Debian: `apt-get install -y chromium`); the browser check needs one")
    report = page
    shot = tmp_path / "report.png"
    result = run_chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}", report.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == WINDOW
    assert ink(image) > 0.05 and len(image.getcolors(1 << 20) or ()) > 200  # a rendered page, not a blank one
    if os.environ.get("TRANSFERKIT_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(shot, os.environ["TRANSFERKIT_SCREENSHOT"])

    # The layout as Chromium computed it: each plot decoded (natural size > 0) and drawn on the page.
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = run_chromium(binary, tmp_path / "profile-dom", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="tk-image-check">([^<]*)</pre>', dom.stdout)
    assert found, dom.stderr[-2000:]
    probe = json.loads(html_module.unescape(found.group(1)))
    assert not probe["overflow"], probe["overflow"][:10]  # nothing sticks out of its section
    assert probe["page"] <= WINDOW[0]  # no horizontal scrolling
    for section in sections:
        assert section in probe["sections"] and probe["sections"][section][2] > 40, section
        assert probe["sections"][section][1] <= 1000, section
    plots = probe["images"]
    assert len(plots) >= min_images
    visible = 0
    for plot in plots:
        assert plot["complete"] and plot["natural"][0] > 0 and plot["natural"][1] > 0, plot
        x, y, w, h = plot["box"]
        assert 0 < w <= 1000 and h > 0  # inside the ~1000 px column
        if y + h <= WINDOW[1]:  # fully inside the screenshot: the plot's pixels are really there
            region = image.crop((round(x), round(y), round(x + w), round(y + h)))
            assert ink(region) > 0.02, plot
            visible += 1
    assert visible >= 2
    return probe


# -- experiment tracking (Accelerate's trackers) ---------------------------------------------------------


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_run(run_dir):
    from mlflow.tracking import MlflowClient

    from transferkit.engine.tracking import PROJECT, mlflow_tracking_uri

    client = MlflowClient(tracking_uri=mlflow_tracking_uri(run_dir))
    experiment = client.get_experiment_by_name(PROJECT)
    (run,) = client.search_runs([experiment.experiment_id])
    return run, client


def test_trackers_record_hyperparameters_steps_and_the_final_test_accuracy(tmp_path, monkeypatch):
    """What `fit --report-to tensorboard mlflow` does, replayed through the Trainer's hooks."""
    from accelerate import Accelerator

    from transferkit.config import FitConfig
    from transferkit.engine.tracking import RunTracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 file stores: reading needs it too
    run_dir = tmp_path / "run"
    cfg = FitConfig(strategy="full", epochs=2, report_to=["tensorboard", "mlflow"], freeze=["group0"])
    tracking = RunTracking(cfg.report_to, run_dir)
    tracking.start(Accelerator(cpu=True), {**cfg.to_dict(), "source": "timm:test_efficientnet@random"})
    for epoch in (1, 2):
        for step in range(3):
            tracking.log_step("full", loss=1.0 / (epoch + step), lr=1e-4 * (3 - step))
        tracking.log_epoch({"stage": "full", "epoch": epoch, "train_loss": 0.5 / epoch, "val_loss": 0.6,
                            "val_accuracy": 0.25 * epoch, "lr": 5e-5})
    metrics = {"test_accuracy": 0.625, "test_macro_f1": 0.5, "baseline_test_accuracy": 0.5,
               "transfer_gain": 0.125, "train_seconds": 3.0, "test_per_class": {"0": {"f1": 0.5}}}
    tracking.finish(metrics)
    tracking.finish(metrics)  # a second call is a no-op

    scalars = tensorboard_scalars(run_dir)
    assert scalars["test/accuracy"] == [(6, pytest.approx(0.625))]
    assert scalars["baseline/test_accuracy"][0][1] == pytest.approx(0.5)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in scalars["full/val_accuracy"]] == pytest.approx([0.25, 0.5])

    run, client = mlflow_run(run_dir)
    assert run.data.metrics["test/accuracy"] == pytest.approx(0.625)
    assert run.data.metrics["test/f1/0"] == pytest.approx(0.5)
    assert run.data.params["strategy"] == "full" and run.data.params["freeze"] == "group0"
    assert run.data.params["image_size"] == "none" and run.data.params["source"] == "timm:test_efficientnet@random"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6
    assert run.info.status == "FINISHED"


def test_tracking_options_are_checked():
    from transferkit.engine.tracking import RunTracking, flat_hparams
    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`--report-to` takes 'tensorboard' or 'mlflow'; got 'wandb'"):
        RunTracking(["wandb"], "run")
    with pytest.raises(ConfigError, match=r"writes its logs inside the run directory; pass `out`"):
        RunTracking(["tensorboard"], None)
    assert not RunTracking([], None).enabled
    assert flat_hparams({"a": [1, 2], "b": None, "c": {"d": 1.5}, "e": []}) == {
        "a": "1,2", "b": "none", "c.d": 1.5, "e": "none"}


def _tracking_is_wired() -> bool:
    import inspect

    from transferkit import pipeline
    from transferkit.engine import loop

    return "RunTracking" in inspect.getsource(loop) and ".tracking.finish(" in inspect.getsource(pipeline)


def test_fit_reports_to_tensorboard_and_mlflow(image_folder, tmp_path, monkeypatch):
    """Done-when: a TensorBoard and an MLflow run of the same fit both hold the final test accuracy."""
    if not _tracking_is_wired():
        pytest.skip("engine/loop.py and pipeline.py do not call transferkit.engine.tracking yet")
    from transferkit import fit

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "run"
    run = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="full", out=out, verbose=False,
              **{**FAST, "baseline": "classical", "report_to": ["tensorboard", "mlflow"]})
    accuracy = run.metrics["test_accuracy"]
    scalars = tensorboard_scalars(out)
    assert scalars["test/accuracy"][-1][1] == pytest.approx(accuracy)
    assert len(scalars["train/loss"]) >= FAST["epochs"]
    tracked, _ = mlflow_run(out)
    assert tracked.data.metrics["test/accuracy"] == pytest.approx(accuracy)
    assert tracked.data.metrics["baseline/test_accuracy"] == pytest.approx(run.metrics["baseline_test_accuracy"])
    assert tracked.data.params["strategy"] == "full"
