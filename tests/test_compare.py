"""``transferkit compare``: run directories side by side (compare.html, compare.md), which run to keep,
the page looked at in headless Chromium as the run report is, and bad input as one line and exit 2."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import FAST, TINY_IMAGE_SOURCE
from test_bad_images import cli
from test_report import check_page_in_chromium, embedded_pngs

from transferkit.compare import RunSummary, summarise
from transferkit.outdir import folder_kind

SECTIONS = ("keep", "metrics", "curves", "classes", "cost", "runs")


@pytest.fixture(scope="module")
def runs(image_folder, tmp_path_factory):
    """Two tiny image runs on the same data: a linear probe (with its classical baseline) and a full fine-tune."""
    from transferkit import fit

    root = tmp_path_factory.mktemp("compare")
    fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="linear_probe", out=root / "probe", verbose=False,
        **{**FAST, "baseline": "classical"})
    fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="full", out=root / "full", verbose=False, **FAST)
    return [root / "probe", root / "full"]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` (hidden ones too): content hash and modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def compared(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "comparison"
    before = {run: snapshot(run) for run in runs}
    code, stdout, stderr = cli(["compare", *runs, "--out", out])
    assert code == 0, stderr
    return out, stdout, before


def test_compare_writes_a_page_and_a_table_and_leaves_the_runs_alone(runs, compared):
    out, stdout, before = compared
    for run in runs:
        assert snapshot(run) == before[run], f"{run} changed"
    assert folder_kind(out) == "comparison"
    md, html = (out / "compare.md").read_text(), (out / "compare.html").read_text()
    vals = {run.name: metrics_of(run)["stages"][-1]["best_val_accuracy"] for run in runs}
    kept = max(runs, key=lambda r: (vals[r.name], -metrics_of(r)["train_seconds"]))
    assert f"Keep {kept.name} (" in stdout and f"Keep {kept.name} (" in md
    assert "Chosen on validation, not on test." in md
    for run, strategy in zip(runs, ("linear_probe", "full"), strict=True):
        m = metrics_of(run)
        row = next(line for line in md.splitlines() if line.startswith(f"| {run.name} |"))
        assert f"| {TINY_IMAGE_SOURCE} | {strategy} | {vals[run.name]:.4f} | {m['test_accuracy']:.4f} |" in row
        assert re.search(r"\| \d\.\d{3}-\d\.\d{3} \|", row)  # the 95% interval
        verdict = row.rstrip(" |").rsplit("| ", 1)[1]
        assert verdict == "kept" if run == kept else verdict in ("not distinguishable", "better on test",
                                                                 "worse on test")
        assert f"- {run.name}: `{run.resolve()}`" in md
    gain = metrics_of(runs[0])["transfer_gain"] * 100
    assert f"| {gain:+.1f} (pixels_logreg) |" in md  # the probe's gain over its classical baseline
    assert "## Per class (test recall" in md and "## Cost" in md and "| strategy | linear_probe | full |" in md
    for section in SECTIONS:
        assert f'id="{section}"' in html
    assert "<script" not in html.lower() and not re.findall(r'(?:src|href)="(?!data:image/png;base64,|#)', html)
    assert len(embedded_pngs(html)) == 3  # intervals, learning curves overlaid, recall per class
    assert '<tr class="chosen">' in html


def test_compare_page_renders_in_headless_chromium(compared, tmp_path):
    out, _, _ = compared
    probe = check_page_in_chromium(out / "compare.html", tmp_path, SECTIONS, min_images=3)
    assert len(probe["images"]) == 3


def test_a_second_compare_replaces_the_first_and_a_users_folder_is_refused(runs, tmp_path):
    out = tmp_path / "cmp"
    assert cli(["compare", *runs, "--out", out])[0] == 0
    (out / "notes.txt").write_text("mine")  # a file the user added survives the replacement
    assert cli(["compare", *reversed(runs), "--out", out])[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert "| full |" in (out / "compare.md").read_text()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    code, _, stderr = cli(["compare", *runs, "--out", mine])
    assert code == 2 and "already holds files that transferkit did not write" in stderr
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def case(name, make, match):
    return pytest.param(make, match, id=name)


def _plain_folder(runs, tmp_path):
    folder = tmp_path / "holiday"
    folder.mkdir()
    (folder / "photo.txt").write_text("x")
    return [runs[0], folder]


def _broken_metrics(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs[1], broken)
    (broken / "metrics.json").write_text("{not json")
    return [runs[0], broken]


def _no_accuracy(runs, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(runs[1], odd)
    (odd / "metrics.json").write_text(json.dumps({"test_accuracy": "high"}))
    return [runs[0], odd]


BAD = [
    case("one run", lambda runs, tmp: [runs[0]], r"needs at least two run directories; got 1"),
    case("missing", lambda runs, tmp: [runs[0], tmp / "nowhere"], r"'.*nowhere' is not a run directory \(it does "
                                                                  r"not exist\)"),
    case("a file", lambda runs, tmp: [runs[0], runs[1] / "metrics.json"], r"is not a run directory \(it is a file\)"),
    case("not a run", _plain_folder, r"'.*holiday' is not a transferkit run directory \(no config.json\)"),
    case("twice", lambda runs, tmp: [runs[0], runs[0].parent / ".." / runs[0].parent.name / runs[0].name],
         r"is given twice"),
    case("broken json", _broken_metrics, r"metrics.json' is not valid JSON"),
    case("no accuracy", _no_accuracy, r"no numeric `test_accuracy`"),
]


@pytest.mark.parametrize(("make", "match"), BAD)
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, make, match):
    code, stdout, stderr = cli(["compare", *make(runs, tmp_path), "--out", tmp_path / "cmp"])
    assert code == 2 and re.search(match, stderr), stderr
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not (tmp_path / "cmp").exists()  # refused before anything was written


def test_out_inside_a_run_is_refused(runs):
    before = snapshot(runs[0])
    for out in (runs[0], runs[0] / "comparison"):
        code, _, stderr = cli(["compare", *runs, "--out", out])
        assert code == 2 and "which this command reads" in stderr, stderr
    assert snapshot(runs[0]) == before


# -- which run to keep ----------------------------------------------------------------------------


def fake(name: str, val: float | None, test: float, n: int = 400, seconds: float = 10.0,
         origin: str = "/data") -> RunSummary:
    metrics = {"test_accuracy": test, "train_seconds": seconds, "strategy": "full",
               "stages": [{"stage": "full", "best_val_accuracy": val}],
               "data": {"origin": origin, "classes": ["a", "b"], "split_sizes": {"test": n}}}
    return RunSummary(name, Path(name), {"source": {"id": "mobilenet_v2"}, "fit": {}}, metrics)


def test_the_kept_run_is_the_best_on_validation_not_on_test():
    result = summarise([fake("a", 0.80, 0.70), fake("b", 0.85, 0.72), fake("c", 0.75, 0.90)])
    assert result["keep"] == 1
    # a: 0.70 vs 0.72 on 400 examples overlaps; c: 0.90 is clear of b's interval
    assert result["verdicts"] == ["not distinguishable", "kept", "better on test"]
    assert any("validation and test disagree" in n for n in result["notes"])


def test_overlapping_intervals_are_not_distinguishable_and_ties_go_to_the_cheaper_run():
    result = summarise([fake("slow", 0.9, 0.80, n=50, seconds=100.0), fake("fast", 0.9, 0.84, n=50, seconds=5.0)])
    assert result["keep"] == 1 and result["verdicts"] == ["not distinguishable", "kept"]
    assert any("ties with slow" in n for n in result["notes"])
    assert any("not distinguishable" in n for n in result["notes"])


def test_no_validation_means_no_choice_and_other_test_sets_are_named():
    result = summarise([fake("a", None, 0.8), fake("b", None, 0.6, origin="/other")])
    assert result["keep"] is None and result["verdicts"] == ["no validation accuracy"] * 2
    assert any("none is recommended" in n for n in result["notes"])
    assert any("not tested on the same examples" in n for n in result["notes"])
    mixed = summarise([fake("a", None, 0.8), fake("b", 0.5, 0.6)])
    assert mixed["keep"] == 1 and any("No validation accuracy recorded for a" in n for n in mixed["notes"])
