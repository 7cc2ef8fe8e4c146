"""A user's folders are never lost: `--out` guards, atomic run directories, locks, permissions.

Every refusal is checked byte for byte: the user's files are exactly what they were.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import FAST, TINY_IMAGE_SOURCE
from test_bad_images import cli

from transferkit.data.synthetic import write_image_folder
from transferkit.errors import ConfigError
from transferkit.outdir import LOCK, MARKER, OutputDir
from transferkit.pipeline import fit, soup
from transferkit.runs import load_run, save_run

QUICK = [*(f"--{k.replace('_', '-')}={v}" for k, v in FAST.items() if k != "baseline"), "--baseline", "none", "--quiet",
         "--source", TINY_IMAGE_SOURCE]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("three") / "data"
    write_image_folder(root, {"a": 8, "b": 8, "c": 8}, size=32)
    return root


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished run (read-only in the tests: copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    fit(data, source=TINY_IMAGE_SOURCE, out=out, verbose=False, **FAST)
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil

    tmp_path.mkdir(parents=True, exist_ok=True)
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


# -- 1. folders that are not transferkit's -------------------------------------------------------------


def test_a_project_folder_as_out_is_refused_and_left_byte_for_byte(data, tmp_path):
    project = tmp_path / "proj"
    (project / "checkpoints").mkdir(parents=True)
    (project / "checkpoints" / "resnet50.pt").write_bytes(b"weights")
    (project / "config.json").write_text('{"mine": true}')
    (project / "report.html").write_text("<p>my report</p>")
    before = snapshot(project)
    code, _, err = cli(["fit", str(data), "--out", str(project), *QUICK])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "already holds files that transferkit did not write" in err and "checkpoints" in err
    assert snapshot(project) == before


@pytest.mark.parametrize("where", ["data", "data/a", "data/new"])
def test_out_equal_to_or_inside_the_data_is_refused(where, data, tmp_path):
    import shutil

    shutil.copytree(data, tmp_path / "data")
    before = snapshot(tmp_path / "data")
    code, _, err = cli(["fit", str(tmp_path / "data"), "--out", str(tmp_path / where), *QUICK])
    assert code == 2 and "which this command reads" in err and len(err.strip().splitlines()) == 1
    assert snapshot(tmp_path / "data") == before


def test_soup_out_equal_to_an_ingredient_is_refused(finished, data, tmp_path):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    code, _, err = cli(["soup", str(run), str(finished), "--data", str(data), "--out", str(run)])
    assert code == 2 and "which this command reads" in err
    assert snapshot(run) == before


def test_export_never_overwrites_a_users_readme(finished, tmp_path):
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "README.md").write_text("my notes")
    (folder / "config.json").write_text("{}")
    before = snapshot(folder)
    code, _, err = cli(["export", str(finished), "--format", "timm", "--out", str(folder)])
    assert code == 2 and "did not write" in err
    assert snapshot(folder) == before
    # an earlier export is replaced, whole
    code, _, err = cli(["export", str(finished), "--format", "timm", "--out", str(tmp_path / "e")])
    assert code == 0, err
    code, _, err = cli(["export", str(finished), "--format", "onnx", "--out", str(tmp_path / "e")])
    assert code == 0, err
    assert (tmp_path / "e" / "model.onnx").is_file() and not (tmp_path / "e" / "model.safetensors").exists()


def test_rank_out_that_is_a_file_is_one_line(data, tmp_path):
    (tmp_path / "ranking").write_text("mine")
    code, _, err = cli(["rank", str(data), "--sources", TINY_IMAGE_SOURCE, "--out", str(tmp_path / "ranking"),
                        "--no-cache", "--quiet"])
    assert code == 2 and "is a file" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "ranking").read_text() == "mine"


# -- 3. finished runs, unfinished runs, two processes --------------------------------------------------


def test_a_finished_run_is_replaced_only_with_overwrite(finished, data, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / "notes.txt").write_text("what I tried")  # a file the user added to the run directory
    before = snapshot(run)
    code, _, err = cli(["fit", str(data), "--out", str(run), *QUICK])
    assert code == 2 and "already holds a finished run" in err and "--overwrite" in err
    assert snapshot(run) == before
    code, _, err = cli(["fit", str(data), "--out", str(run), *QUICK, "--overwrite", "--seed", "1"])
    assert code == 0, err
    assert load_run(run).config["fit"]["seed"] == 1
    assert (run / "notes.txt").read_text() == "what I tried"  # kept: transferkit did not write it
    assert not (run / "checkpoints").exists() and not (run / LOCK).exists()
    assert not list(tmp_path.glob(".run.*"))  # no staging folder left beside it


def test_checkpoints_of_an_unfinished_run_are_kept_unless_the_user_says(data, tmp_path):
    out = tmp_path / "run"
    with OutputDir.claim(out, "run"):  # what a killed `fit` leaves: its marker and a checkpoint
        (out / "checkpoints" / "ckpt-s00-e0001-b000000").mkdir(parents=True)
        (out / "checkpoints" / "ckpt-s00-e0001-b000000" / "trainer_state.json").write_text("{}")
    (out / "checkpoints" / "mine.pt").write_bytes(b"not transferkit's")
    before = snapshot(out)
    code, _, err = cli(["fit", str(data), "--out", str(out), *QUICK])
    assert code == 2 and "did not finish" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(out) == before
    code, _, err = cli(["fit", str(data), "--out", str(out), *QUICK, "--overwrite"])
    assert code == 0, err
    assert (out / "checkpoints" / "mine.pt").read_bytes() == b"not transferkit's"
    assert not (out / "checkpoints" / "ckpt-s00-e0001-b000000").exists()


def test_a_second_process_on_the_same_out_is_refused_and_touches_nothing(data, tmp_path):
    out = tmp_path / "run"
    with OutputDir.claim(out, "run"):  # the first process, still training
        (out / "checkpoints" / "ckpt-s00-e0001-b000000").mkdir(parents=True)
        before = snapshot(out)
        code, _, err = cli(["fit", str(data), "--out", str(out), *QUICK, "--overwrite"])
        assert code == 2 and "being written by another transferkit process" in err and str(os.getpid()) in err
        assert snapshot(out) == before


def test_a_failed_fit_leaves_no_folder_behind(data, tmp_path):
    code, _, err = cli(["fit", str(data), "--out", str(tmp_path / "run"), *QUICK, "--source", "timm:not_a_model"])
    assert code == 2
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()
    code, _, _ = cli(["fit", str(data), "--out", str(tmp_path / "empty"), *QUICK, "--source", "timm:not_a_model"])
    assert code == 2 and list((tmp_path / "empty").iterdir()) == []


# -- 2. a run directory appears whole or not at all ----------------------------------------------------

STEPS = ["save_spec", "save_weights", "write_json", "write_json", "write_json", "write_json", "write_report",
         "_write_marker", "_exchange", "_retire"]

KILLER = textwrap.dedent("""
    # For each kill point: a fresh copy of the old run, a forked child that saves the new run over it
    # and SIGKILLs itself at that write; prints {kill point: (exit status, folder)} as JSON.
    import json, os, shutil, signal, sys
    import torch
    torch.set_num_threads(1)
    import transferkit.evaluation.report as report
    import transferkit.outdir as outdir
    import transferkit.runs as runs
    from transferkit.sources.base import SourceModel

    old, new, work, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    run = runs.load_run(new)
    calls, kill_at = [0], [-1]

    def counted(fn):
        def wrapper(*args, **kwargs):
            if calls[0] == kill_at[0]:
                os.kill(os.getpid(), signal.SIGKILL)
            calls[0] += 1
            return fn(*args, **kwargs)
        return wrapper

    for module, name in [(runs, "save_weights"), (runs, "write_json"), (outdir, "_write_marker"),
                         (outdir, "_exchange"), (outdir, "_retire"), (report, "write_report")]:
        setattr(module, name, counted(getattr(module, name)))
    SourceModel.save_spec = counted(SourceModel.save_spec)
    results = {}
    for point in range(steps + 1):
        target = os.path.join(work, str(point), "run")
        shutil.copytree(old, target)
        child = os.fork()
        if child == 0:
            calls[0], kill_at[0] = 0, point
            runs.save_run(run, target, overwrite=True)
            os._exit(0 if calls[0] == steps else 3)
        results[point] = [os.waitpid(child, 0)[1], target]
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def other_run(data, tmp_path_factory):
    """A run with other classes and weights than ``finished``."""
    root = tmp_path_factory.mktemp("other")
    write_image_folder(root / "data", {"x": 8, "y": 8}, size=32)
    fit(root / "data", source=TINY_IMAGE_SOURCE, out=root / "run", verbose=False, **{**FAST, "seed": 3})
    return root / "run"


def run_files(folder: Path) -> dict[str, bytes | None]:
    """A run directory's files, less its reports (they name their folder) and the marker/lock."""
    return {k: v for k, v in snapshot(folder).items() if not k.startswith("report.") and k not in (MARKER, LOCK)}


def test_a_kill_at_any_write_of_save_run_leaves_the_old_run_or_the_new_one(finished, other_run, tmp_path):
    save_run(load_run(other_run), tmp_path / "expected")  # what the save writes when nothing stops it
    old, new = run_files(finished), run_files(tmp_path / "expected")
    proc = subprocess.run([sys.executable, "-c", KILLER, str(finished), str(other_run), str(tmp_path / "killed"),
                           str(len(STEPS))], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for kill_at, (status, target) in ((int(k), v) for k, v in results.items()):
        step = STEPS[kill_at] if kill_at < len(STEPS) else "none"
        assert (status == signal.SIGKILL) == (kill_at < len(STEPS)) and status in (0, signal.SIGKILL), (step, status)
        now = run_files(Path(target))
        assert now in (old, new), step
        assert load_run(target).classes == load_run(other_run if now == new else finished).classes, step
        assert (now == new) == (kill_at > STEPS.index("_exchange")), step  # only the swap shows the new run
        # the next run on this folder cleans what the killed one left beside it
        with OutputDir.claim(target, "run", overwrite=True):
            assert not list(Path(target).parent.glob(".run.new-*")), step


# -- 5. permissions ------------------------------------------------------------------------------------


def test_run_files_follow_the_umask(data, tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "run"
        fit(data, source=TINY_IMAGE_SOURCE, out=out, verbose=False, **FAST)
    finally:
        os.umask(previous)
    for path in [out, *out.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


# -- 6. resume on edited data --------------------------------------------------------------------------


def test_resume_refuses_data_edited_in_place(data, tmp_path, monkeypatch):
    import shutil

    from PIL import Image

    from transferkit.engine.loop import Trainer

    shutil.copytree(data, tmp_path / "data")
    out = tmp_path / "run"
    original = Trainer._save

    def save_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt  # killed after the first checkpoint

    monkeypatch.setattr(Trainer, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "data", source=TINY_IMAGE_SOURCE, strategy="full", out=out, verbose=False, **FAST)
    monkeypatch.setattr(Trainer, "_save", original)
    image = tmp_path / "data" / "a" / sorted(os.listdir(tmp_path / "data" / "a"))[0]
    Image.new("L", (32, 32), 255).save(image)  # same name, same count, other pixels
    os.utime(image, (1, 1))
    with pytest.raises(ConfigError, match=r"Cannot resume .*the data's files changed"):
        fit(tmp_path / "data", source=TINY_IMAGE_SOURCE, strategy="full", out=out, verbose=False, resume=True, **FAST)


# -- 12. choices on an empty validation split ----------------------------------------------------------


@pytest.mark.parametrize("flag", [["--wise-ft", "--strategy", "lp_ft"], ["--patience", "2"]])
def test_choices_on_validation_need_a_validation_split(flag, tmp_path):
    write_image_folder(tmp_path / "tiny", {"a": 2, "b": 2}, size=32)
    code, _, err = cli(["fit", str(tmp_path / "tiny"), "--out", str(tmp_path / "run"), *QUICK, *flag])
    assert code == 2 and "validation split, which is empty" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_auto_without_a_validation_split_probes_and_says_why_it_did_not_fine_tune(tmp_path):
    write_image_folder(tmp_path / "tiny", {"a": 2, "b": 2}, size=32)
    code, _, err = cli(["fit", str(tmp_path / "tiny"), "--out", str(tmp_path / "run"), *QUICK, "--source", "auto",
                        "--strategy", "auto", "--candidates", TINY_IMAGE_SOURCE + ",timm:test_vit@random"])
    assert code == 0, err
    selection = json.loads((tmp_path / "run" / "metrics.json").read_text())["selection"]
    assert selection["chosen_strategy"] == "linear_probe" and "validation split" in selection["why"]


# -- 11. options: type first, then range ---------------------------------------------------------------


@pytest.mark.parametrize("line, message", [
    ("baseline: 'no'", "`--baseline` must be one of classical, scratch, both, none; got 'no'."),
    ("wise_ft: 'false'", "`--wise-ft` must be true or false; got 'false'."),
    ("freeze: group0", "`--freeze` must be a list of strings"),
    ("lr: true", "`--lr` must be in (0, 10]; got True."),
    ("weight_decay: abc", "`--weight-decay` must be in [0.0, 10.0]; got 'abc'."),
    ("seed: 4294967296", "`--seed` must be a whole number <= 4294967295"),
    ("head_hidden: 100000000000", "`--head-hidden` must be a whole number <= 65536"),
    ("task_weights: [1, 2]", "`--task-weight` must be a mapping of name: number"),
    ("epochs: '5'", "`--epochs` must be a whole number >= 1; got '5'."),
])
def test_config_files_are_typed_before_ranges(line, message, data, tmp_path):
    (tmp_path / "options.yaml").write_text(line + "\n")
    code, _, err = cli(["fit", str(data), "--out", str(tmp_path / "run"), "--config", str(tmp_path / "options.yaml"),
                        "--quiet"])
    assert code == 2 and err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_run_config_with_wrong_types_does_not_load(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["fit"]["head_hidden"] = 10**11
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = cli(["predict", str(run), str(run / "config.json"), "--output", str(tmp_path / "p.csv")])
    assert code == 2 and "`--head-hidden` must be a whole number <= 65536" in err
