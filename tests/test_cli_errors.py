"""Every failure a user can cause is one line naming the problem and exit code 2, never a traceback
(a preflight's list of bad files is the one message that has a line per file).

One table: each case builds what it needs (a broken folder, a hostile config, a full disk) and
runs the command; the assertions are the same for all.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import FAST, TINY_IMAGE_SOURCE
from test_bad_images import cli

from transferkit.data.synthetic import write_image_folder
from transferkit.pipeline import fit

QUICK = [*(f"--{k.replace('_', '-')}={v}" for k, v in FAST.items() if k != "baseline"), "--baseline", "none", "--quiet",
         "--source", TINY_IMAGE_SOURCE]


@pytest.fixture(scope="module")
def world(tmp_path_factory, text_table, tiny_bert_dir):
    """Data and runs the cases break copies of: an image folder, an image run, a text run."""
    root = tmp_path_factory.mktemp("world")
    write_image_folder(root / "data", {"a": 8, "b": 8, "c": 8}, size=32)
    write_image_folder(root / "tiny", {"a": 2, "b": 2}, size=32)
    fit(root / "data", source=TINY_IMAGE_SOURCE, out=root / "run", verbose=False, **FAST)
    fit(text_table, source=f"hf:{tiny_bert_dir}", out=root / "text-run", verbose=False, **FAST)
    return root


def copy(world: Path, name: str, tmp_path: Path) -> Path:
    shutil.copytree(world / name, tmp_path / name)
    return tmp_path / name


def edit_config(run: Path, change) -> Path:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(change(config)))
    return run


def full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "model.safetensors")


def case_symlink_loop(world, tmp_path, monkeypatch):
    data = copy(world, "data", tmp_path)
    os.symlink(data / "a", data / "a" / "loop")
    os.symlink("nowhere", data / "b" / "dangling.png")
    return ["fit", str(data), "--out", str(tmp_path / "out"), *QUICK], "loop"


def case_out_is_a_file(world, tmp_path, monkeypatch):
    (tmp_path / "out").write_text("mine")
    return ["fit", str(world / "data"), "--out", str(tmp_path / "out"), *QUICK], "is a file"


def case_out_under_a_file(world, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("mine")
    return ["fit", str(world / "data"), "--out", str(tmp_path / "file" / "run"), *QUICK], "cannot be written"


def case_out_read_only(world, tmp_path, monkeypatch):
    return ["fit", str(world / "data"), "--out", "/proc/transferkit-run", *QUICK], "cannot be written"


def case_disk_full_in_a_checkpoint(world, tmp_path, monkeypatch):
    import transferkit.engine.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "_write_file", full_disk)
    return ["fit", str(world / "data"), "--out", str(tmp_path / "out"), *QUICK, "--strategy", "full"], \
        "No space left on device"


def case_disk_full_at_the_final_save(world, tmp_path, monkeypatch):
    import transferkit.runs as runs

    monkeypatch.setattr(runs, "save_weights", full_disk)
    return ["fit", str(world / "data"), "--out", str(tmp_path / "out"), *QUICK], "No space left on device"


def case_seed_too_large(world, tmp_path, monkeypatch):
    return ["fit", str(world / "data"), "--out", str(tmp_path / "out"), *QUICK, "--seed", str(2**32)], "`--seed`"


def case_max_length_above_the_positions(world, tmp_path, monkeypatch):
    from conftest import WORDS  # noqa: F401 - the text table's words

    table = tmp_path / "t.csv"
    table.write_text("text,label\n" + "".join(f"win cash {i},spam\nteam lunch {i},ham\n" for i in range(12)))
    bert = json.loads((world / "text-run" / "config.json").read_text())["source"]["id"]
    return ["fit", str(table), "--source", bert, "--out", str(tmp_path / "out"), "--quiet", "--baseline", "none",
            "--max-length", "4096"], "`--max-length` 4096 is more tokens than"


def case_head_hidden_huge_in_a_config(world, tmp_path, monkeypatch):
    (tmp_path / "o.yaml").write_text("head_hidden: 100000000000\n")
    return ["fit", str(world / "data"), "--out", str(tmp_path / "out"), "--config", str(tmp_path / "o.yaml")], \
        "`--head-hidden`"


def case_config_wrong_types(world, tmp_path, monkeypatch):
    (tmp_path / "o.json").write_text('{"epochs": "five"}')
    return ["fit", str(world / "data"), "--out", str(tmp_path / "out"), "--config", str(tmp_path / "o.json")], \
        "`--epochs`"


def case_config_not_a_mapping(world, tmp_path, monkeypatch):
    (tmp_path / "o.yaml").write_text("- epochs\n- 3\n")
    return ["fit", str(world / "data"), "--out", str(tmp_path / "out"), "--config", str(tmp_path / "o.yaml")], \
        "must hold a mapping"


def case_run_config_is_a_list(world, tmp_path, monkeypatch):
    run = edit_config(copy(world, "run", tmp_path), lambda c: [c])
    return ["predict", str(run), str(world / "data" / "a"), "--output", str(tmp_path / "p.csv")], "not an object"


def case_run_config_without_source(world, tmp_path, monkeypatch):
    run = edit_config(copy(world, "run", tmp_path), lambda c: {k: v for k, v in c.items() if k != "source"})
    return ["predict", str(run), str(world / "data" / "a"), "--output", str(tmp_path / "p.csv")], "`source`"


def case_run_config_unknown_main_task(world, tmp_path, monkeypatch):
    run = edit_config(copy(world, "run", tmp_path), lambda c: {**c, "main_task": "colour"})
    return ["predict", str(run), str(world / "data" / "a"), "--output", str(tmp_path / "p.csv")], "'colour'"


def case_run_config_option_out_of_range(world, tmp_path, monkeypatch):
    run = edit_config(copy(world, "run", tmp_path), lambda c: {**c, "fit": {**c["fit"], "lr": "fast"}})
    return ["evaluate", str(run), str(world / "data")], "`--lr`"


def case_text_run_without_its_model_folder(world, tmp_path, monkeypatch):
    run = copy(world, "text-run", tmp_path)
    shutil.rmtree(run / "source" / "hf")
    return ["predict", str(run), "win cash", "--output", str(tmp_path / "p.csv")], ""


def case_run_weights_with_wrong_keys(world, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    run = copy(world, "run", tmp_path)
    state = load_file(run / "model.safetensors")
    save_file({f"x.{k}": v for k, v in state.items()}, run / "model.safetensors")
    return ["predict", str(run), str(world / "data" / "a"), "--output", str(tmp_path / "p.csv")], "does not match"


def case_evaluate_an_empty_split(world, tmp_path, monkeypatch):
    write_image_folder(tmp_path / "few", {"a": 2, "b": 2, "c": 2}, size=32)  # too few for a validation split
    return ["evaluate", str(world / "run"), str(tmp_path / "few"), "--split", "val"], "val split"


def case_rank_out_is_a_file(world, tmp_path, monkeypatch):
    (tmp_path / "r").write_text("mine")
    return ["rank", str(world / "data"), "--sources", TINY_IMAGE_SOURCE, "--out", str(tmp_path / "r"), "--no-cache",
            "--quiet"], "is a file"


def case_predict_output_is_a_folder(world, tmp_path, monkeypatch):
    (tmp_path / "preds").mkdir()
    return ["predict", str(world / "run"), str(world / "data" / "a"), "--output", str(tmp_path / "preds")], ""


def case_predict_on_a_full_disk(world, tmp_path, monkeypatch):
    import transferkit._io as io_

    monkeypatch.setattr(io_.os, "replace", full_disk)
    return ["predict", str(world / "run"), str(world / "data" / "a"), "--output", str(tmp_path / "p.csv")], \
        "No space left on device"


def case_wise_ft_with_no_validation(world, tmp_path, monkeypatch):
    return ["fit", str(world / "tiny"), "--out", str(tmp_path / "out"), *QUICK, "--wise-ft"], "validation split"


def case_file_json_not_an_object(world, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    import torch

    save_file({"w": torch.zeros(1)}, tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text("[1, 2]")
    return ["fit", str(world / "data"), "--source", f"file:{tmp_path / 'm.safetensors'}", "--out",
            str(tmp_path / "out"), "--quiet", "--baseline", "none"], ""


CASES = [value for name, value in sorted(globals().items()) if name.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.removeprefix("case_") for c in CASES])
def test_user_errors_are_one_line_and_exit_2(case, world, tmp_path, monkeypatch):
    args, expected = case(world, tmp_path, monkeypatch)
    code, _, err = cli(args)
    assert code == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert "Traceback" not in err and err.startswith("error: "), err[-3000:]
    assert len(lines) == 1 or lines[0].startswith("error: Preflight found"), err  # a preflight lists every file
    assert expected in err
