"""Bad options and mismatched models: did-you-mean names, ranges that name the option, no partial loads.

Unknown names of every registry (sources, schemes, strategies, scorers, options) get a
did-you-mean; every range-checked option names its flag and its allowed range; and a run whose
head has 3 classes never meets a 2-class task silently: ``evaluate`` refuses and points at
``fit --source run:DIR``, which is the explicit way to re-initialise the head.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
from conftest import TINY_IMAGE_SOURCE
from test_bad_images import cli

from transferkit.config import FitConfig
from transferkit.data.synthetic import write_image_folder
from transferkit.errors import ConfigError, DataError, UnknownNameError

# -- unknown names ------------------------------------------------------------------------------------

UNKNOWN_NAMES = [
    (["fit", "{data}", "--source", "efficientnet-lite0"],
     "Unknown source 'efficientnet-lite0'. Did you mean 'efficientnet_lite0'? Hub models need a scheme, e.g. "
     "'timm:resnet18' or 'hf:bert-base-uncased'. See `transferkit sources`."),
    (["fit", "{data}", "--source", "resnet18"], "Unknown source 'resnet18'. Hub models need a scheme"),
    (["fit", "{data}", "--source", "tim:resnet18"], "Unknown source scheme 'tim:' in 'tim:resnet18'. Use one of "),
    (["fit", "{data}", "--source", "timm:test_efficientnet_x@random"],
     "Unknown timm model 'test_efficientnet_x'. Did you mean"),
    (["fit", "{data}", "--strategy", "lpft"], "Unknown strategy 'lpft'. Did you mean 'lp_ft'? See `transferkit strategies`."),
    (["fit", "{data}", "--strategy", "finetune"], "Unknown strategy 'finetune'."),
    (["rank", "{data}", "--scores", "logme,hscor"],
     "Unknown scorer 'hscor'. Did you mean 'hscore'? See `transferkit scorers`."),
    (["rank", "{data}", "--sources", "mobilenetv2", "--no-cache"], "Unknown source 'mobilenetv2'. Did you mean 'mobilenet_v2'?"),
    (["evaluate", "{run}", "{data}", "--split", "tests"], "`--split` must be train, val or test; got 'tests'."),
]


@pytest.mark.parametrize("args, message", UNKNOWN_NAMES, ids=[" ".join(a[:1] + a[2:4]) for a, _ in UNKNOWN_NAMES])
def test_unknown_names_get_did_you_mean_on_the_command_line(args, message, image_folder, three_class_run, tmp_path):
    args = [a.replace("{data}", str(image_folder)).replace("{run}", str(three_class_run)) for a in args]
    if args[0] in ("fit", "rank"):
        args += ["--out", str(tmp_path / "out"), "--quiet"]
    code, _, err = cli(args)
    assert code == 2, err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_scorer_names_and_options_in_python():
    from transferkit.scoring import get_scorer

    with pytest.raises(UnknownNameError, match=r"^Unknown scorer 'leeep'\. Did you mean 'leep'\? "
                                               r"See `transferkit scorers`\.$"):
        get_scorer("leeep")
    with pytest.raises(ConfigError, match=r"^Scorer 'logme' got unknown option\(s\) alpha; its options are: "
                                          r"max_iter, tol\.$"):
        get_scorer("logme", alpha=1.0)


@pytest.mark.parametrize("key, hint", [("learning_rate", "lr"), ("num_epochs", "epochs"), ("batch-size", "batch_size"),
                                       ("image_sise", "image_size")])
def test_unknown_option_keys_get_did_you_mean(key, hint, image_folder):
    from transferkit.pipeline import fit

    with pytest.raises(ConfigError, match=rf"^Unknown option '{key}' in options\. Did you mean '{hint}'\? "
                                          r"See `transferkit fit --help`\.$"):
        fit(image_folder, source=TINY_IMAGE_SOURCE, **{key: 1})


# -- ranges -------------------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf
RANGES = [
    ("epochs", 0, "`--epochs` must be a whole number >= 1; got 0."),
    ("epochs", 2.5, "`--epochs` must be a whole number >= 1; got 2.5."),
    ("batch_size", -8, "`--batch-size` must be a whole number >= 1; got -8."),
    ("grad_accum", 0, "`--grad-accum` must be a whole number >= 1; got 0."),
    ("lora_r", 0, "`--lora-r` must be a whole number >= 1; got 0."),
    ("lr", 0.0, "`--lr` must be in (0, 10]; got 0.0. Typical values are 1e-5 to 1e-2."),
    ("lr", 50.0, "`--lr` must be in (0, 10]; got 50.0."),
    ("lr", NAN, "`--lr` must be in (0, 10]; got nan."),
    ("lr", INF, "`--lr` must be in (0, 10]; got inf."),
    ("probe_lr", -1e-3, "`--probe-lr` must be in (0, 10]; got -0.001."),
    ("baseline_lr", "fast", "`--baseline-lr` must be in (0, 10]; got 'fast'."),
    ("weight_decay", 11.0, "`--weight-decay` must be in [0.0, 10.0]; got 11.0."),
    ("weight_decay", NAN, "`--weight-decay` must be in [0.0, 10.0]; got nan."),
    ("warmup_ratio", 0.95, "`--warmup-ratio` must be in [0.0, 0.9]; got 0.95."),
    ("val_fraction", 0.0, "`--val-fraction` must be in (0.0, 0.5); got 0.0."),
    ("test_fraction", 0.5, "`--test-fraction` must be in (0.0, 0.5); got 0.5."),
    ("head_dropout", 1.0, "`--head-dropout` must be in [0.0, 0.95]; got 1.0."),
    ("lora_dropout", -0.1, "`--lora-dropout` must be in [0.0, 0.95]; got -0.1."),
    ("lr_decay", 0.0, "`--lr-decay` must be in (0.0, 1.0]; got 0.0."),
    ("init_mix", 1.5, "`--init-mix` must be in [0.0, 1.0]; got 1.5."),
    ("patience", -1, "`--patience` must be a whole number >= 0; got -1."),
    ("head_hidden", 1.5, "`--head-hidden` must be a whole number >= 0; got 1.5."),
    ("num_workers", -2, "`--num-workers` must be a whole number >= 0; got -2."),
    ("checkpoint_every", -1, "`--checkpoint-every` must be a whole number >= 0; got -1."),
    ("seed", -1, "`--seed` must be a whole number >= 0; got -1."),
    ("split_seed", 0.5, "`--split-seed` must be a whole number >= 0; got 0.5."),
    ("l2sp_alpha", NAN, "`--l2sp-alpha` must be a finite number >= 0; got nan."),
    ("l2sp_beta", INF, "`--l2sp-beta` must be a finite number >= 0; got inf."),
    ("l2sp_alpha", -0.1, "`--l2sp-alpha` must be a finite number >= 0; got -0.1."),
    ("task_weights", {"topic": NAN}, "`--task-weight` for 'topic' must be a finite number >= 0; got nan."),
    ("task_weights", {"topic": -1}, "`--task-weight` for 'topic' must be a finite number >= 0; got -1."),
    ("precision", "fp8", "`--precision` must be one of no, bf16, fp16; got 'fp8'."),
    ("baseline", "bogus", "`--baseline` must be one of classical, scratch, both, none; got 'bogus'."),
    ("baseline", 1, "`--baseline` must be one of classical, scratch, both, none; got 1."),
    ("image_size", 8, "`--image-size` must be between 16 and 1024 pixels; got 8."),
    ("max_length", 2, "`--max-length` must be between 4 and 8192 tokens; got 2."),
    ("report_to", ["wandb"], "`--report-to` takes 'tensorboard' or 'mlflow'; got 'wandb'."),
]


@pytest.mark.parametrize("name, value, message", RANGES, ids=[f"{n}={v!r}" for n, v, _ in RANGES])
def test_out_of_range_options_name_the_option_and_the_range(name, value, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        FitConfig(**{name: value})


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "`--lr` must be in (0, 10]; got nan."),
    (["--seed", "-3"], "`--seed` must be a whole number >= 0; got -3."),
    (["--l2sp-alpha", "inf"], "`--l2sp-alpha` must be a finite number >= 0; got inf."),
    (["--task-weight", "label=nan"], "`--task-weight` for 'label' must be a finite number >= 0; got nan."),
    (["--task-weight", "label"], "`--task-weight` takes NAME=WEIGHT, e.g. topic=0.5; got 'label'."),
    (["--head-dropout", "0.99"], "`--head-dropout` must be in [0.0, 0.95]; got 0.99."),
])
def test_out_of_range_flags_exit_2_before_any_work(flags, message, image_folder, tmp_path):
    code, _, err = cli(["fit", image_folder, "--source", TINY_IMAGE_SOURCE, "--out", tmp_path / "run", "--quiet", *flags])
    assert code == 2 and err.startswith(f"error: {message}") and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags", [["--epochs", "abc"], ["--learning-rate", "0.1"]])
def test_usage_errors_exit_2_without_a_traceback(flags, image_folder, tmp_path):
    code, _, err = cli(["fit", image_folder, "--out", tmp_path / "run", *flags])
    assert code == 2 and flags[0] in err and "Traceback" not in err


def test_config_files_bad_syntax_and_yaml_scientific_notation(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 2\nlr: 1e-3\nbaseline_lr: 2E-4\n")  # YAML 1.1 reads these as text
    cfg = FitConfig.from_file(tmp_path / "c.yaml")
    assert (cfg.lr, cfg.baseline_lr, cfg.epochs) == (1e-3, 2e-4, 2)
    (tmp_path / "bad.yaml").write_text("epochs: 2\n  lr: [\n")
    with pytest.raises(ConfigError, match=r"^`--config` file '.*bad\.yaml' is not valid YAML \(mapping values are "
                                          r"not allowed here at line 2, column 5\)\.$"):
        FitConfig.from_file(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text('{"epochs": 2,}')
    with pytest.raises(ConfigError, match=r"^`--config` file '.*bad\.json' is not valid JSON \(Expecting property "
                                          r"name enclosed in double quotes: line 1 column 14 \(char 13\)\); use "
                                          r"\.yaml/\.yml for a YAML file\.$"):
        FitConfig.from_file(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- epochs\n- 2\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping of option: value"):
        FitConfig.from_file(tmp_path / "list.yaml")


# -- a 3-class run meets a 2-class task ---------------------------------------------------------------

FAST = ["--quiet", "--baseline", "none", "--epochs", "1", "--probe-epochs", "2", "--image-size", "32", "--batch-size", "16"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    write_image_folder(root / "three", {"cat": 6, "dog": 6, "fox": 6}, size=32)
    write_image_folder(root / "two", {"cat": 6, "dog": 6}, size=32, start=20)
    return root


@pytest.fixture(scope="module")
def three_class_run(folders):
    out = folders / "run-three"
    code, _, err = cli(["fit", folders / "three", "--source", TINY_IMAGE_SOURCE, "--out", out, *FAST])
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def transferred_run(folders, three_class_run):
    """``fit --source run:<3-class run>`` on the 2-class data: the explicit way to a new head."""
    out = folders / "run-two"
    code, _, err = cli(["fit", folders / "two", "--source", f"run:{three_class_run}", "--out", out, *FAST])
    assert code == 0, err
    return out


def test_evaluating_a_3_class_run_on_2_classes_says_so_and_offers_a_new_head(folders, three_class_run):
    code, _, err = cli(["evaluate", three_class_run, folders / "two"])
    assert code == 2
    assert err == (f"error: The data's classes ['cat', 'dog'] differ from the run's ['cat', 'dog', 'fox'] (its head "
                   f"`label` predicts 3 classes, the data has 2), so the run cannot be evaluated on it. To train a new "
                   f"head for these classes on this run's shared layers, run `transferkit fit DATA --source "
                   f"run:{three_class_run}` (the head is re-initialised; nothing is loaded into it).\n")


def test_same_count_other_names_is_refused_too(folders, three_class_run, tmp_path):
    from transferkit.runs import load_run

    write_image_folder(tmp_path / "other", {"ant": 4, "bee": 4, "cow": 4}, size=32)
    with pytest.raises(DataError, match=r"differ from the run's \['cat', 'dog', 'fox'\] \(its head `label` predicts "
                                        r"other classes\)"):
        load_run(three_class_run).evaluate(tmp_path / "other")


def test_a_run_as_source_gets_a_fresh_head_sized_for_the_target(three_class_run, transferred_run):
    from transferkit.sources import load_source

    assert load_source(f"run:{three_class_run}").head.out_features == 3  # kept as the source head (LEEP, NCE)
    entries = {e["tensor"]: e for e in json.loads((transferred_run / "transfer_map.json").read_text())}
    heads = {k: e for k, e in entries.items() if k.startswith("heads.")}
    assert heads and all(e["origin"] == "fresh" for e in heads.values())
    assert heads["heads.label.0.weight"]["shape"][0] == 2
    assert all(e["origin"] == "source" for k, e in entries.items() if k.startswith("backbone."))
    config = json.loads((transferred_run / "config.json").read_text())
    assert config["classes"] == {"label": ["cat", "dog"]} and config["source"]["id"] == f"run:{three_class_run}"


def test_weights_of_a_3_class_run_in_a_2_class_run_directory_are_never_partly_loaded(three_class_run, transferred_run,
                                                                                     tmp_path):
    from transferkit.runs import load_run

    mixed = tmp_path / "mixed"
    shutil.copytree(transferred_run, mixed)
    shutil.copy(three_class_run / "model.safetensors", mixed / "model.safetensors")
    with pytest.raises(ConfigError, match=(
            r"^'.*mixed/model\.safetensors' does not match the model described by its config\.json \(wrong shape: "
            r"heads\.label\.0\.weight, heads\.label\.0\.bias\); nothing was loaded\. The head `label` has 3 classes in "
            r"the weights but 2 in config\.json: the files come from different runs\. Use the run directory as written "
            r"by `fit`; to reuse shared layers for other classes pass `--source run:DIR` to `fit`, which "
            r"re-initialises the head\.$")):
        load_run(mixed)
    code, _, err = cli(["predict", mixed, tmp_path / "mixed" / "report.md"])
    assert code == 2 and "nothing was loaded. The head `label` has 3 classes in the weights" in err
