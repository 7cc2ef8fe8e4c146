"""The whole flow: data -> source -> target model -> strategy -> evaluation -> run directory.

``fit`` trains and evaluates a transfer run next to its no-transfer baseline; ``load_run``
reloads a run directory for ``predict`` / ``evaluate`` or as the source of another transfer.
"""

from __future__ import annotations

import dataclasses
import platform
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from transferkit import __version__
from transferkit._io import load_weights, read_json, save_weights, write_json
from transferkit.config import FitConfig
from transferkit.data import TaskData, load_task_data
from transferkit.engine import is_main_process
from transferkit.errors import ConfigError, DataError, UnsafeFileError
from transferkit.evaluation.metrics import classification_metrics
from transferkit.features import estimate_batchnorm_statistics
from transferkit.outdir import OutputDir
from transferkit.sources import SourceModel, build_from_spec, input_pipeline, load_source, source_modality
from transferkit.sources.base import Preprocessing, mark_stale_statistics
from transferkit.sources.inputs import ExampleDataset
from transferkit.strategies import get_strategy
from transferkit.surgery import DEFAULT_TASK, TargetModel, build_target_model, summarize_transfer_map, transfer_map
from transferkit.surgery.cut import cut_source, reinit_groups
from transferkit.surgery.target import entries_as_dicts


@dataclass
class Run:
    """A trained target model with everything needed to use, evaluate or transfer it again."""

    model: TargetModel
    source: SourceModel
    classes: dict[str, list[str]]
    config: dict
    metrics: dict = field(default_factory=dict)
    directory: Path | None = None

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
            data, **_data_options(FitConfig.from_dict(self.config["fit"])))
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
        fit_cfg = FitConfig.from_dict(self.config["fit"])
        backbone = get_strategy(fit_cfg.strategy)(fit_cfg).shared_layers(self.model)
        return dataclasses.replace(self.source, backbone=backbone,
                                   head=head[-1] if len(head) == 1 else head, id=f"run:{self.directory}")


# -- fit -------------------------------------------------------------------------------------


def fit(data: str | Path | TaskData, source: str = "mobilenet_v2", strategy: str = "linear_probe",
        out: str | Path | None = None, config: FitConfig | None = None, verbose: bool = True, **options) -> Run:
    """Transfers ``source`` to the target ``data`` with ``strategy`` and evaluates it.

    Args:
        data: An image folder, a text table, or a ``TaskData``.
        source: A source id (``transferkit sources``), or "auto" to choose among
            ``candidates`` by transferability score and short fine-tunes.
        strategy: A strategy name (``transferkit strategies``).
        out: Run directory to write (model, config, metrics, report); nothing is written if None.
        config: A ``FitConfig``; ``options`` override its fields (``epochs=3``, ``lr=1e-4``, ...).
        verbose: Show progress bars.

    Returns:
        The trained ``Run``; ``run.metrics`` holds test metrics next to the baseline's.
    """
    cfg = FitConfig.from_dict({**(config.to_dict() if config else {}), "strategy": strategy, **options})
    get_strategy(cfg.strategy)  # unknown names fail before any work
    outdir = None if out is None else OutputDir.claim(
        out, "run", inputs=[] if isinstance(data, TaskData) else [data], overwrite=cfg.overwrite,
        resume=cfg.resume, lock=is_main_process())
    try:
        return _fit(data, source, cfg, outdir, verbose)
    finally:
        if outdir is not None:
            outdir.release()


def _fit(data: str | Path | TaskData, source: str, cfg: FitConfig, outdir: OutputDir | None, verbose: bool) -> Run:
    task = data if isinstance(data, TaskData) else load_task_data(data, **_data_options(cfg))
    _check_validation_split(task, cfg)
    torch.manual_seed(cfg.seed)  # random-init sources (`@random`) are part of the seeded run
    unknown = sorted(set(cfg.task_weights) - set(task.tasks))
    if unknown:
        raise ConfigError(f"`--task-weight` names unknown task(s) {unknown}; the tasks are {list(task.tasks)}.")
    selection = None
    if source == "auto":  # rank the candidates, confirm the best with short fine-tunes
        from transferkit.selection import select_source

        source, selection = select_source(task, cfg.candidates or None, cfg, top_k=cfg.top_k, verbose=verbose)
    _check_modality(source, source_modality(source), task)  # before paying for the weights
    src = load_source(source)
    _check_modality(source, src.modality, task)
    src = prepare_source(src, cfg, task)

    started = time.perf_counter()
    out = outdir.path if outdir is not None else None
    checkpoints = out / "checkpoints" if out is not None else None
    model, trainer = train_target(task, src, cfg, verbose=verbose, checkpoint_dir=checkpoints, run_dir=out)
    train_seconds = time.perf_counter() - started
    proba = predict_proba(model, src, task.test.examples, task.task_name, batch_size=cfg.batch_size * 2)
    metrics = {"source": src.id, "strategy": cfg.strategy, "seed": cfg.seed, "train_seconds": train_seconds,
               **_prefixed(classification_metrics(task.test.labels, proba.argmax(1), task.classes), "test_")}
    if task.extra_classes:  # several heads: the main task above, every task here
        metrics["tasks"] = {
            name: classification_metrics(labels, predict_proba(model, src, task.test.examples, name).argmax(1),
                                         task.tasks[name])
            for name, labels in task.labels_of("test").items()}
    if cfg.baseline:
        metrics.update(run_baseline(task, src, cfg, verbose=verbose,
                                    checkpoint_dir=checkpoints / "baseline" if checkpoints else None))
        metrics["transfer_gain"] = metrics["test_accuracy"] - metrics["baseline_test_accuracy"]
    if selection is not None:
        metrics["selection"] = selection
    for stage in (s for s in trainer.stages if s["stage"] == "wise_ft"):
        metrics.update({"wise_ft_alpha": stage["alpha"], "wise_ft_curve": stage["curve"]})
    origin = "random" if src.weights == "random init" else ("mixed" if cfg.init_mix else "source")
    entries = transfer_map(model, origin, fresh_groups=cfg.reinit)
    metrics.update({
        "transfer": {**summarize_transfer_map(entries, model), "cut_at": cfg.cut_at},
        "stages": trainer.stages,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "data": task.summary(),
    })
    classes = {name: list(c) for name, c in task.tasks.items()}
    run = Run(model, src, classes, _run_config(src, cfg, classes), metrics)
    trainer.tracking.finish(metrics)
    if outdir is not None and trainer.is_main_process:  # the checkpoints go with the folder this replaces
        publish_run(run, outdir, history=trainer.history, transfer=entries_as_dicts(entries))
    return run


def _check_validation_split(task: TaskData, cfg: FitConfig) -> None:
    """Options that choose on the validation split need one."""
    if len(task.val):
        return
    for name, on in (("wise_ft", cfg.wise_ft), ("patience", cfg.patience)):
        if on:
            raise ConfigError(f"`--{name.replace('_', '-')}` chooses on the validation split, which is empty "
                              f"({len(task.train)} train examples in {len(task.classes)} classes); add examples "
                              f"(or a `val/` folder) or leave `--{name.replace('_', '-')}` out.")


def train_target(task: TaskData, src: SourceModel, cfg: FitConfig, verbose: bool = True,
                 checkpoint_dir: Path | None = None, run_dir: str | Path | None = None):
    """Builds the target model on ``src`` and trains it with ``cfg.strategy``; returns (model, trainer).

    Around the strategy: ``init_mix`` blends the shared layers with a fresh initialisation
    before training, and ``wise_ft`` chooses an interpolation between the starting and the
    fine-tuned shared layers on validation afterwards (a final ``wise_ft`` row in ``trainer.stages``).
    """
    from transferkit.engine import Trainer

    src = prepare_source(src, cfg, task)
    torch.manual_seed(cfg.seed)
    model = build_target_model(src, {name: len(c) for name, c in task.tasks.items()}, cfg.head_hidden, cfg.head_dropout)
    if cfg.init_mix:
        _mix_initialisation(model, src, cfg, task)
    if cfg.reinit:
        reinit_groups(model, cfg.reinit)
    strategy = get_strategy(cfg.strategy)(cfg)
    model = strategy.prepare(model)
    start = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()} if cfg.wise_ft else None
    trainer = Trainer(cfg, task, src, verbose=verbose, task_weights=cfg.task_weights,
                      checkpoint_dir=checkpoint_dir, resume=cfg.resume, run_dir=run_dir)
    strategy.train(model, trainer)
    if cfg.wise_ft:
        _choose_wise_ft(model, start, trainer, strategy.wise_ft_keys(start))
    model.eval()
    return model, trainer


def prepare_source(src: SourceModel, cfg: FitConfig, task: TaskData) -> SourceModel:
    """Applies the options that change the source itself: input size, tokens, pooling, ``cut_at``;
    a random-init source gets BatchNorm statistics from the train split.

    Idempotent, so ``fit`` and ``train_target`` can both call it.
    """
    if cfg.image_size and src.modality == "image":
        src.preprocessing.image_size = cfg.image_size
    estimate_batchnorm_statistics(src, task.train.examples, cfg.batch_size)
    if cfg.max_length and src.modality == "text":
        limit = _token_limit(src)
        if limit is not None and cfg.max_length > limit:
            raise ConfigError(f"`--max-length` {cfg.max_length} is more tokens than source {src.id!r} reads "
                              f"({limit} positions); pass at most `--max-length {limit}`.")
        src.preprocessing.max_length = cfg.max_length
    if cfg.pooling and src.modality == "text" and "pooling" in src.spec:
        src.backbone.pooling = cfg.pooling
        src.spec = {**src.spec, "pooling": cfg.pooling}
    if cfg.cut_at and "cut_at" not in src.spec:
        pipe = input_pipeline(src)
        src = cut_source(src, cfg.cut_at, pipe.collate([pipe.load(x) for x in task.train.examples[:2]]))
    return src


def _token_limit(src: SourceModel) -> int | None:
    """The most tokens a text source reads: its tokenizer's limit or its position embeddings, if known."""
    limits = [getattr(src.tokenizer, "model_max_length", None)]
    limits += [getattr(getattr(m, "config", None), "max_position_embeddings", None) for m in src.backbone.modules()]
    known = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]  # tokenizers say 1e30 for "none"
    return min(known) if known else None


def _mix_initialisation(model: TargetModel, src: SourceModel, cfg: FitConfig, task: TaskData) -> None:
    """Shared layers become ``(1 - init_mix) * source + init_mix * fresh`` (fresh = seeded random init).

    Blended BatchNorm statistics describe neither network (a linear probe on the blend stayed at
    chance even at init_mix 0.1), so they are estimated again on the train split.
    """
    from transferkit.merging import mix_init

    with tempfile.TemporaryDirectory(prefix="transferkit-spec-") as spec_dir:
        src.save_spec(Path(spec_dir))
        fresh = build_from_spec(src.spec, Path(spec_dir)).backbone.state_dict()
    model.backbone.load_state_dict(mix_init(model.backbone.state_dict(), fresh, cfg.init_mix))
    mark_stale_statistics(src)  # src.backbone is model.backbone
    estimate_batchnorm_statistics(src, task.train.examples, cfg.batch_size)


def _choose_wise_ft(model: TargetModel, start: dict, trainer, keys: list[str]) -> None:
    """WiSE-FT: sweeps alpha between the starting and fine-tuned shared layers, keeps the best on val."""
    from transferkit.merging import wise_ft

    started = time.perf_counter()
    finetuned = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
    loader = torch.utils.data.DataLoader(trainer.val_set, batch_size=trainer.config.batch_size * 2,
                                         collate_fn=trainer.val_set.collate)

    def val_accuracy(state: dict) -> float:
        model.backbone.load_state_dict(state)
        return trainer.evaluate(model, loader)[1]

    result = wise_ft(start, finetuned, val_accuracy, keys=keys)
    model.backbone.load_state_dict(result.state_dict)
    trainer.stages.append({"stage": "wise_ft", "epochs_run": 0, "best_epoch": 0, "best_val_accuracy": result.best_score,
                           "trainable_parameters": 0, "seconds": time.perf_counter() - started,
                           "examples_per_second": len(result.curve) * len(trainer.val_set) / (time.perf_counter() - started),
                           "alpha": result.best_alpha, "curve": [list(point) for point in result.curve]})


def run_baseline(task: TaskData, src: SourceModel, cfg: FitConfig, verbose: bool = True,
                 checkpoint_dir: Path | None = None) -> dict:
    """The no-transfer baseline with the same budget, as ``baseline_*`` metrics.

    Text: TF-IDF + logistic regression. Other modalities: the source's architecture from random
    initialisation, every layer trained for ``epochs`` epochs at ``baseline_lr``.
    """
    started = time.perf_counter()
    if task.modality == "text":
        from transferkit.evaluation.baseline import tfidf_baseline

        proba, info = tfidf_baseline(task, cfg.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="transferkit-spec-") as spec_dir:
            src.save_spec(Path(spec_dir))  # specs that need files (transformers configs) read them here
            torch.manual_seed(cfg.seed)
            scratch = build_from_spec(src.spec, Path(spec_dir))
        mark_stale_statistics(scratch)  # train_target estimates its BatchNorm statistics, as for any @random source
        scratch.preprocessing = dataclasses.replace(src.preprocessing)
        base_cfg = dataclasses.replace(cfg, strategy="full", lr=cfg.baseline_lr, freeze=[], init_mix=0.0,
                                       wise_ft=False, reinit=[], report_to=[])
        model, _ = train_target(task, scratch, base_cfg, verbose=verbose, checkpoint_dir=checkpoint_dir)
        proba = predict_proba(model, scratch, task.test.examples, batch_size=cfg.batch_size * 2)
        info = {"baseline": f"{src.architecture or src.id} from random init, strategy full, "
                            f"{cfg.epochs} epochs, lr {cfg.baseline_lr:g}"}
    m = classification_metrics(task.test.labels, proba.argmax(1), task.classes)
    return {**info, "baseline_seconds": time.perf_counter() - started, **_prefixed(m, "baseline_test_")}


@torch.inference_mode()
def predict_proba(model: TargetModel, src: SourceModel, examples: list, task: str | None = None,
                  batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities of ``task`` (default: the first head) for raw examples, in order."""
    task = task or next(iter(model.heads))
    dataset = ExampleDataset(list(examples), None, input_pipeline(src, train=False))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate)
    device = next(model.parameters()).device
    model.eval()
    out = [torch.softmax(model(**{k: v.to(device) for k, v in x.items()})[task].float(), -1).cpu() for x, _ in loader]
    return torch.cat(out).numpy() if out else np.zeros((0, model.heads[task][-1].out_features))


def soup(runs: list[str | Path], data: str | Path | TaskData, out: str | Path | None = None,
         greedy: bool = True, overwrite: bool = False) -> Run:
    """Averages the weights of several runs fine-tuned from one source (a model soup).

    Args:
        runs: Run directories with the same source, architecture and classes.
        data: The target data the runs were trained on; its validation split orders and
            filters the ingredients (greedy soup) and its test split scores the soup.
        out: Run directory for the soup; nothing is written if None.
        greedy: Greedy soup (add ingredients best-first while validation accuracy does not
            drop) rather than the uniform average of every run.
        overwrite: Replace an earlier run at ``out``.
    """
    if len(runs) < 2:
        raise ConfigError(f"A soup needs at least two runs; got {len(runs)}.")
    inputs = [*runs, *([] if isinstance(data, TaskData) else [data])]
    outdir = None if out is None else OutputDir.claim(out, "run", inputs=inputs, overwrite=overwrite,
                                                      lock=is_main_process())
    try:
        return _soup(runs, data, outdir, greedy)
    finally:
        if outdir is not None:
            outdir.release()


def _soup(runs: list[str | Path], data: str | Path | TaskData, outdir: OutputDir | None, greedy: bool) -> Run:
    from transferkit.merging import greedy_soup, uniform_soup

    loaded = [load_run(r) for r in runs]
    first = loaded[0]
    for run in loaded[1:]:
        if (run.source.spec, run.classes) != (first.source.spec, first.classes):
            raise ConfigError(f"Run {str(run.directory)!r} has a different architecture or classes than "
                              f"{str(first.directory)!r}; soups average runs of one source on one task.")
    task = data if isinstance(data, TaskData) else load_task_data(
        data, **_data_options(FitConfig.from_dict(first.config["fit"])))

    def val_accuracy(state: dict) -> float:
        first.model.load_state_dict(state)
        s = task.val
        return float((first.predict_proba(s.examples).argmax(1) == s.labels).mean()) if len(s) else 0.0

    states = [r.model.state_dict() for r in loaded]
    if greedy:
        result = greedy_soup(states, val_accuracy)
        state, used = result.state_dict, [str(loaded[i].directory) for i in result.indices]
    else:
        state, used = uniform_soup(states), [str(r.directory) for r in loaded]
    first.model.load_state_dict(state)
    proba = first.predict_proba(task.test.examples)
    ingredients = {str(r.directory): r.metrics.get("test_accuracy") for r in loaded}
    first.metrics = {**first.metrics, "soup": {"kind": "greedy" if greedy else "uniform", "used": used,
                                                "ingredient_test_accuracy": ingredients},
                     **_prefixed(classification_metrics(task.test.labels, proba.argmax(1), task.classes), "test_")}
    if outdir is not None and is_main_process():
        history = read_json(first.directory / "history.json") if (first.directory / "history.json").is_file() else []
        publish_run(first, outdir, history=history)
    return first


# -- run directories ---------------------------------------------------------------------------


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
    src.preprocessing = Preprocessing.from_dict(config["source"]["preprocessing"])
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


# -- helpers ------------------------------------------------------------------------------------


def _data_options(cfg: FitConfig) -> dict:
    return {"text_column": cfg.text_column, "label_column": cfg.label_column, "split_column": cfg.split_column,
            "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction, "seed": cfg.split_seed,
            "skip_bad": cfg.skip_bad}


def _check_modality(source_id: str, modality: str | None, task: TaskData) -> None:
    if modality is not None and modality != task.modality:
        article = "an" if task.modality[0] in "aeiou" else "a"
        raise ConfigError(f"Source {source_id!r} takes {modality} inputs but the data is {task.modality}. "
                          f"Pick {article} {task.modality} source from `transferkit sources`.")


def _prefixed(metrics: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in metrics.items()}


def _run_config(src: SourceModel, cfg: FitConfig, classes: dict[str, list[str]]) -> dict:
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
