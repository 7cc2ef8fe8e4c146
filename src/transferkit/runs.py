"""Run directories: the ``Run`` a ``fit`` returns, saved and loaded whole.

A run directory holds ``model.safetensors``, ``config.json`` (checked by ``read_run_config``
before any of it reaches a model library), ``metrics.json``, ``history.json``,
``transfer_map.json``, the report and the source's spec files under ``source/``. It is written
through ``transferkit.outdir`` (one atomic swap) and read from safetensors and JSON only.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from transferkit._io import load_weights, read_json, save_weights, write_json
from transferkit._version import __version__
from transferkit.config import FitConfig
from transferkit.data import TaskData, load_task_data
from transferkit.engine.extract import in_pieces, inference_layout, prefetched
from transferkit.errors import ConfigError, DataError, UnsafeFileError
from transferkit.evaluation.metrics import classification_metrics
from transferkit.outdir import OutputDir
from transferkit.sources import SourceModel, build_from_spec, input_pipeline
from transferkit.sources.base import SCHEMES, Preprocessing
from transferkit.sources.inputs import ExampleDataset
from transferkit.strategies import get_strategy
from transferkit.surgery import DEFAULT_TASK, TargetModel, build_target_model


@dataclass
class Run:
    """A trained target model with everything needed to use, evaluate or transfer it again."""

    model: TargetModel
    source: SourceModel
    classes: dict[str, list[str]]
    config: dict
    metrics: dict = field(default_factory=dict)
    directory: Path | None = None

    @functools.cached_property
    def fit_config(self) -> FitConfig:
        """The options the run was trained with."""
        return FitConfig.from_dict(self.config["fit"])

    @property
    def modality(self) -> str:
        return self.source.preprocessing.modality

    @property
    def main_task(self) -> str:
        """The task used for model selection and the headline metrics (the first label column)."""
        return next(iter(self.classes))

    def predict_proba(self, examples: list, task: str | None = None, batch_size: int = 64) -> np.ndarray:
        """Class probabilities of ``task`` (default: the main task) for raw examples, shape (N, C)."""
        return predict_proba(self.model, self.source, examples, task or self.main_task, batch_size)

    def predict(self, examples: list, task: str | None = None) -> list[str]:
        """Predicted class names of ``task`` (default: the main task) for raw examples."""
        names = self.classes[task or self.main_task]
        return [names[i] for i in self.predict_proba(examples, task).argmax(1)]

    def evaluate(self, data: str | Path | TaskData, split: str = "test") -> dict:
        """Metrics of this model on a split of ``data`` (a path or ``TaskData``)."""
        task = data if isinstance(data, TaskData) else load_task_data(
            data, **data_options(self.fit_config))
        if task.classes != self.classes[self.main_task]:
            ours = self.classes[self.main_task]
            where = f"run:{self.directory}" if self.directory is not None else "run:<run dir>"
            counts = (f"{len(ours)} classes, the data has {len(task.classes)}" if len(ours) != len(task.classes)
                      else "other classes")
            raise DataError(
                f"The data's classes {task.classes} differ from the run's {ours} (its head `{self.main_task}` "
                f"predicts {counts}), so the run cannot be evaluated on it. "
                f"To train a new head for these classes on this run's shared layers, run "
                f"`transferkit fit DATA --source {where}` (the head is re-initialised; nothing is loaded into it).")
        s = task.splits()[split]
        if not len(s):
            raise DataError(f"The {split} split of {str(data) if not isinstance(data, TaskData) else 'the data'!r} "
                            f"is empty, so there is nothing to evaluate; pass `--split` with a split that has "
                            f"examples ({', '.join(f'{n}: {len(x)}' for n, x in task.splits().items())}).")
        return classification_metrics(s.labels, self.predict_proba(s.examples).argmax(1), task.classes)

    def as_source(self) -> SourceModel:
        """This run's shared layers as a source; its trained head becomes the source head."""
        head = self.model.heads[self.main_task]
        fit_cfg = self.fit_config
        backbone = get_strategy(fit_cfg.strategy)(fit_cfg).shared_layers(self.model)
        return dataclasses.replace(self.source, backbone=backbone,
                                   head=head[-1] if len(head) == 1 else head, id=f"run:{self.directory}")


def save_run(run: Run, out: Path, history: list[dict] | None = None, transfer: list[dict] | None = None,
             overwrite: bool = False) -> None:
    """Writes ``run`` as a run directory at ``out``, whole or not at all (see ``transferkit.outdir``).

    ``out`` may be new, empty or an earlier run (replaced only with ``overwrite``).
    """
    with OutputDir.claim(out, "run", overwrite=overwrite) as outdir:
        publish_run(run, outdir, history, transfer)


def publish_run(run: Run, outdir: OutputDir, history: list[dict] | None = None,
                transfer: list[dict] | None = None) -> None:
    """Writes ``model.safetensors``, ``config.json``, ``metrics.json``, history, transfer map and report
    into a claimed folder, in one swap."""
    from transferkit.evaluation.report import write_report

    def write(folder: Path) -> None:
        run.source.save_spec(folder / "source")
        save_weights(run.model.state_dict(), folder / "model.safetensors", metadata={"format": "transferkit-run"})
        write_json(folder / "config.json", run.config)
        write_json(folder / "metrics.json", run.metrics)
        write_json(folder / "history.json", history or [])
        write_json(folder / "transfer_map.json", transfer or [])
        write_report(folder, shown_as=outdir.path)

    outdir.publish(write)
    run.directory = outdir.path


def load_run(directory: str | Path, load_weights: bool = True) -> Run:
    """Reloads a run directory written by ``fit`` (weights from safetensors only)."""
    directory = Path(directory)
    config = read_run_config(directory)
    src = build_from_spec(config["source"]["spec"], directory / "source")
    src.preprocessing = Preprocessing.from_dict(config["source"]["preprocessing"],
                                                where=repr(str(directory / "config.json")))
    src.id = config["source"]["id"]
    for key in ("weights", "license", "architecture"):
        setattr(src, key, config["source"].get(key, ""))
    fit_cfg = FitConfig.from_dict(config["fit"])
    main = config["main_task"]
    classes = {main: config["classes"][main], **config["classes"]}  # JSON keys are sorted: main first again
    tasks = {t: len(c) for t, c in classes.items()}
    model = build_target_model(src, tasks, fit_cfg.head_hidden, fit_cfg.head_dropout)
    model = get_strategy(fit_cfg.strategy)(fit_cfg).prepare(model)
    if load_weights:
        _load_state(model, directory / "model.safetensors")
    model.eval()
    metrics = read_json(directory / "metrics.json") if (directory / "metrics.json").is_file() else {}
    return Run(model, src, classes, config, metrics, directory)


@SCHEMES.register("run")
def load_run_source(name: str, pretrained: bool) -> SourceModel:
    """``run:<dir>``: a run's shared layers as a source, its trained head as the source head (for
    LEEP/NCE), so a model trained on a source task transfers to a target task."""
    run = load_run(Path(name).expanduser(), load_weights=pretrained)
    source = run.as_source()
    source.weights = f"transferkit run {name}" if pretrained else "random init"
    return source


def read_run_config(directory: Path) -> dict:
    """A run directory's ``config.json``, checked before any of it reaches a model library.

    The ``fit`` options get the same type and range checks as ``transferkit fit``; ``source``
    (its ``spec`` and ``preprocessing`` are checked where they are used), ``classes`` and
    ``main_task`` are checked here. A run written before ``main_task`` existed gets the default task.

    Raises:
        ConfigError: Not a run directory, or an option out of range.
        UnsafeFileError: The file is not what ``fit`` writes.
    """
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{str(directory)!r} is not a transferkit run directory (no config.json). "
                          "Pass the `--out` directory of `transferkit fit`.")
    config = read_json(path)

    def bad(what: str) -> UnsafeFileError:
        return UnsafeFileError(f"{str(path)!r} is not a transferkit run config: {what}. Use a run directory as "
                               "`transferkit fit` wrote it (or run `fit` again).")

    if not isinstance(config, dict):
        raise bad(f"it holds a {type(config).__name__}, not an object")
    for key in ("source", "classes", "fit"):
        if not isinstance(config.get(key), dict):
            raise bad(f"`{key}` is missing or not an object")
    source = config["source"]
    if not isinstance(source.get("id"), str) or not isinstance(source.get("spec"), dict) or \
            not isinstance(source.get("preprocessing"), dict):
        raise bad("`source` needs `id` (text), `spec` and `preprocessing` (objects)")
    for task, names in config["classes"].items():
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
                and len(set(names)) == len(names)):
            raise bad(f"`classes.{task}` must be a non-empty list of distinct class names")
    config.setdefault("main_task", DEFAULT_TASK)
    if config["main_task"] not in config["classes"]:
        raise bad(f"`main_task` {config['main_task']!r} is none of its tasks {sorted(config['classes'])}")
    FitConfig.from_dict(config["fit"], origin=repr(str(path)))
    return config


def _load_state(model: TargetModel, path: Path) -> None:
    state = load_weights(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or wrong:
        details = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                            for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
                            if keys)
        last_bias = {k.split(".")[1]: k for k in expected if k.startswith("heads.") and k.endswith(".bias")}
        heads = [f"head `{task}` has {state[k].shape[0]} classes in the weights but {expected[k].shape[0]} in "
                 "config.json" for task, k in last_bias.items() if k in wrong]
        hint = (f" The {'; '.join(heads)}: the files come from different runs. Use the run directory as "
                "written by `fit`; to reuse shared layers for other classes pass `--source run:DIR` to "
                "`fit`, which re-initialises the head.") if heads else ""
        raise ConfigError(f"{str(path)!r} does not match the model described by its config.json ({details}); "
                          f"nothing was loaded.{hint}")
    model.load_state_dict(state)


@torch.inference_mode()
def predict_proba(model: TargetModel, src: SourceModel, examples: list, task: str | None = None,
                  batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities of ``task`` (default: the first head) for raw examples, in order."""
    task = task or next(iter(model.heads))
    dataset = ExampleDataset(list(examples), None, input_pipeline(src, train=False))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate)
    device = next(model.parameters()).device
    model.eval()
    with inference_layout(model, device) as to_device:
        out = [torch.softmax(model(**to_device(piece))[task].float(), -1).cpu()
               for x, _ in prefetched(loader) for piece in in_pieces(x)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.heads[task][-1].out_features))


def data_options(cfg: FitConfig) -> dict:
    return {"text_column": cfg.text_column, "label_column": cfg.label_column, "split_column": cfg.split_column,
            "path_column": cfg.path_column,
            "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction, "seed": cfg.split_seed,
            "skip_bad": cfg.skip_bad}


def run_config(src: SourceModel, cfg: FitConfig, classes: dict[str, list[str]]) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "torchvision", "timm", "transformers", "accelerate", "peft", "safetensors", "scikit-learn"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {
        "transferkit_version": __version__,
        "source": {"id": src.id, "spec": src.spec, "preprocessing": src.preprocessing.to_dict(),
                   "feature_dim": src.feature_dim, "weights": src.weights, "license": src.license,
                   "architecture": src.architecture,
                   "layer_groups": [g.name for g in src.layer_groups]},
        "classes": classes,
        "main_task": next(iter(classes)),
        "fit": cfg.to_dict(),
        "versions": {"python": platform.python_version(), **versions},
    }
