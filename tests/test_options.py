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
    options = dict(epochs=1, probe_epochs=3, batch_size=8, image_size=32, baseline="none", lr=0.002, seed=3,
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


# -- hostile option values: type first, then range, and nothing else ever comes out -------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from transferkit.errors import TransferKitError  # noqa: E402

ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                      max_size=3), max_leaves=6)
NAMES = [f.name for f in dataclasses.fields(FitConfig)]


@settings(max_examples=400, deadline=None)
@given(values=st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=10), ANY_JSON, max_size=4))
def test_any_json_for_the_options_is_accepted_or_a_transferkit_error(values):
    try:
        cfg = FitConfig.from_dict(values)
    except TransferKitError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert cfg.to_dict() == FitConfig.from_dict(cfg.to_dict()).to_dict()  # what is accepted round-trips


@settings(max_examples=150, deadline=None)
@given(config=st.dictionaries(st.sampled_from(["source", "classes", "fit", "main_task", "x"]), ANY_JSON, max_size=5))
def test_a_hostile_run_config_never_gets_past_its_check(config, tmp_path_factory):
    from transferkit.runs import read_run_config

    folder = tmp_path_factory.mktemp("hostile-run")
    (folder / "config.json").write_text(json.dumps(config))
    try:
        read_run_config(folder)
    except TransferKitError:
        return
    # what passes has the shape load_run relies on
    loaded = read_run_config(folder)
    assert isinstance(loaded["source"]["spec"], dict) and loaded["main_task"] in loaded["classes"]
