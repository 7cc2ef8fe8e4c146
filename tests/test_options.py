"""Options are declared once: every one has a flag (or is config-only), and a report's reproduce
line, run as a command, rebuilds the same options."""

from __future__ import annotations

import dataclasses
import json
import shlex

import typer
from conftest import TINY_IMAGE_SOURCE
from test_bad_images import cli

from transferkit.cli import app
from transferkit.config import GROUPS, FitConfig, flag_name
from transferkit.evaluation.report import reproduce_command
from transferkit.pipeline import fit

#: Options deliberately without a flag (set them in a `--config` file).
CONFIG_ONLY: set[str] = set()


def test_every_option_has_a_flag_a_help_and_a_group():
    command = typer.main.get_command(app).commands["fit"]
    flags = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    for f in dataclasses.fields(FitConfig):
        assert f.metadata["help"] and f.metadata["group"] in GROUPS, f.name
        if f.name in CONFIG_ONLY:
            assert flag_name(f.name) == "", f.name
            continue
        assert f"--{flag_name(f.name)}" in flags, f"option {f.name!r} has no flag on `transferkit fit`"


def test_the_reproduce_line_rebuilds_the_same_config(image_folder, tmp_path):
    options = dict(epochs=1, probe_epochs=3, batch_size=8, image_size=32, baseline=False, lr=0.002, seed=3,
                   split_seed=2, val_fraction=0.25, head_hidden=8, head_dropout=0.1, augment=False, lora_r=4,
                   freeze=["group0"], task_weights={"label": 0.5}, warmup_ratio=0.2, keep_checkpoints=3)
    fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="full", out=tmp_path / "a", verbose=False, **options)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    command = reproduce_command(config, str(image_folder))
    assert command in (tmp_path / "a" / "report.html").read_text().replace("&#x27;", "'")
    argv = shlex.split(command)[1:] + ["--out", str(tmp_path / "b"), "--quiet"]
    code, _, err = cli(argv)
    assert code == 0, err
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert again["fit"] == config["fit"]
    assert again["source"]["id"] == config["source"]["id"]
