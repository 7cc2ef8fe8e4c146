"""The whole flow: data -> source -> target model -> strategy -> evaluation -> run directory.

``fit`` trains and evaluates a transfer run next to its no-transfer baseline and writes its run
directory; ``soup`` averages runs of one source. The parts live below: ``runs`` (run
directories), ``training`` (one target), ``selection`` (``--source auto``).
"""

from __future__ import annotations

import dataclasses
import resource
import time
from pathlib import Path

import torch

from transferkit.config import FitConfig
from transferkit.data import TaskData, load_task_data
from transferkit.engine import is_main_process
from transferkit.errors import ConfigError
from transferkit.evaluation.examples import test_predictions
from transferkit.evaluation.metrics import classification_metrics
from transferkit.outdir import OutputDir
from transferkit._io import read_json
from transferkit.runs import Run, data_options, load_run, predict_proba, publish_run, run_config
from transferkit.sources import load_source, source_modality
from transferkit.strategies import get_strategy
from transferkit.surgery import summarize_transfer_map, transfer_map
from transferkit.surgery.target import entries_as_dicts
from transferkit.training import (check_validation_split, describe_recipe, prefixed, prepare_source,
                                  resolve_options, run_baseline, train_prepared)


def fit(data: str | Path | TaskData, source: str = "mobilenet_v2", strategy: str = "linear_probe",
        out: str | Path | None = None, config: FitConfig | None = None, verbose: bool = True, **options) -> Run:
    """Transfers ``source`` to the target ``data`` with ``strategy`` and evaluates it.

    Args:
        data: An image folder, a text table, or a ``TaskData``.
        source: A source id (``transferkit sources``), or "auto" to choose among
            ``candidates`` (``transferkit.selection``: scores, cross-validated probes, short
            fine-tunes within ``budget`` minutes).
        strategy: A strategy name (``transferkit strategies``), or "auto" to choose among
            ``strategies`` the same way.
        out: Run directory to write (model, config, metrics, report); nothing is written if None.
        config: A ``FitConfig``; ``options`` override its fields (``epochs=3``, ``lr=1e-4``, ...).
        verbose: Show progress bars.

    Returns:
        The trained ``Run``; ``run.metrics`` holds test metrics next to the baseline's.
    """
    started = time.perf_counter()  # an auto run's budget counts from here
    cfg = FitConfig.from_dict({**(config.to_dict() if config else {}), "strategy": strategy, **options})
    if cfg.strategy != "auto":
        get_strategy(cfg.strategy)  # unknown names fail before any work
    outdir = None if out is None else OutputDir.claim(
        out, "run", inputs=[] if isinstance(data, TaskData) else [data], overwrite=cfg.overwrite,
        resume=cfg.resume, lock=is_main_process())
    try:
        return _fit(data, source, cfg, outdir, verbose, started)
    finally:
        if outdir is not None:
            outdir.release()


def _fit(data: str | Path | TaskData, source: str, given: FitConfig, outdir: OutputDir | None, verbose: bool,
         started: float) -> Run:
    task = data if isinstance(data, TaskData) else load_task_data(data, **data_options(given))
    cfg = resolve_options(given, task)  # what ran; `given` (the user's options) is what config.json keeps
    check_validation_split(task, cfg)
    if cfg.strategy != "auto":
        _check_strategy_modality(cfg.strategy, task)  # before any weights load
    torch.manual_seed(cfg.seed)  # random-init sources (`@random`) are part of the seeded run
    unknown = sorted(set(cfg.task_weights) - set(task.tasks))
    if unknown:
        raise ConfigError(f"`--task-weight` names unknown task(s) {unknown}; the tasks are {list(task.tasks)}.")
    selection, floor, deadline = None, None, None
    if source == "auto" or cfg.strategy == "auto":  # evidence, pruning, short fine-tunes within the budget
        from transferkit.selection import Clock, choose

        clock = Clock(cfg.budget * 60, started)
        choice = choose(task, cfg, source=source, clock=clock, verbose=verbose)
        source, selection, floor = choice.source, choice.report, choice.floor
        given, cfg = (dataclasses.replace(c, strategy=choice.strategy) for c in (given, cfg))
        deadline = started + clock.budget - choice.report.get("plan", {}).get("after_final_seconds", 0.0)
    out = outdir.path if outdir is not None else None
    checkpoints = out / "checkpoints" if out is not None else None
    train_started = time.perf_counter()
    src, model, trainer = _train(task, source, cfg, verbose, checkpoints, out, deadline)
    if floor is not None and trainer.stages[-1]["best_val_accuracy"] <= floor["val_accuracy"] + floor["margin"]:
        # the full fine-tune did not beat the probe on validation beyond the noise: the probe is the run
        selection["final"] = {"strategy": cfg.strategy, "val_accuracy": trainer.stages[-1]["best_val_accuracy"],
                              "kept": "linear_probe", "why": f"not above the probe's val {floor['val_accuracy']:.3f} "
                                                             f"+ one standard error {floor['margin']:.3f}"}
        source = floor["source"]
        given, cfg = (dataclasses.replace(c, strategy="linear_probe") for c in (given, cfg))
        selection["choice"], selection["chosen_strategy"] = source, "linear_probe"
        src, model, trainer = _train(task, source, cfg, verbose, checkpoints / "probe" if checkpoints else None,
                                     out, None)
    train_seconds = time.perf_counter() - train_started
    proba = predict_proba(model, src, task.test.examples, task.task_name, batch_size=cfg.batch_size * 2)
    metrics = {"source": src.id, "strategy": cfg.strategy, "seed": cfg.seed, "train_seconds": train_seconds,
               **prefixed(classification_metrics(task.test.labels, proba.argmax(1), task.classes), "test_"),
               **test_predictions(task.test.examples, task.test.labels, proba, task.classes, task.modality)}
    if task.extra_classes:  # several heads: the main task above, every task here
        metrics["tasks"] = {
            name: classification_metrics(labels, predict_proba(model, src, task.test.examples, name).argmax(1),
                                         task.tasks[name])
            for name, labels in task.labels_of("test").items()}
    if cfg.baseline != "none":  # scratch gets the transfer's training time as its budget
        metrics.update(run_baseline(task, src, cfg, verbose=verbose, seconds=train_seconds,
                                    checkpoint_dir=checkpoints / "baseline" if checkpoints else None))
        metrics["transfer_gain"] = metrics["test_accuracy"] - metrics["baseline_test_accuracy"]
    if selection is not None:
        metrics["selection"] = selection
    for stage in (s for s in trainer.stages if s["stage"] == "wise_ft"):
        metrics.update({"wise_ft_alpha": stage["alpha"], "wise_ft_curve": stage["curve"]})
        if "group_alphas" in stage:
            metrics["wise_ft_group_alphas"] = stage["group_alphas"]
    origin = "random" if src.weights == "random init" else ("mixed" if cfg.init_mix else "source")
    entries = transfer_map(model, origin, fresh_groups=cfg.reinit)
    metrics.update({
        "transfer": {**summarize_transfer_map(entries, model), "cut_at": cfg.cut_at},
        "stages": trainer.stages,
        "recipe": describe_recipe(given, trainer, src),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "data": task.summary(),
    })
    classes = {name: list(c) for name, c in task.tasks.items()}
    run = Run(model, src, classes, run_config(src, given, classes), metrics)
    trainer.tracking.finish(metrics)
    if outdir is not None and trainer.is_main_process:  # the checkpoints go with the folder this replaces
        publish_run(run, outdir, history=trainer.history, transfer=entries_as_dicts(entries))
    return run


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
        data, **data_options(first.fit_config))

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
                     **prefixed(classification_metrics(task.test.labels, proba.argmax(1), task.classes), "test_"),
                     **test_predictions(task.test.examples, task.test.labels, proba, task.classes, task.modality)}
    if outdir is not None and is_main_process():
        history = read_json(first.directory / "history.json") if (first.directory / "history.json").is_file() else []
        publish_run(first, outdir, history=history)
    return first


def _train(task: TaskData, source: str, cfg: FitConfig, verbose: bool, checkpoints: Path | None,
           out: Path | None, deadline: float | None):
    """Loads and prepares ``source`` and trains the target model; returns (src, model, trainer)."""
    _check_modality(source, source_modality(source), task)  # before paying for the weights
    src = load_source(source)
    _check_modality(source, src.modality, task)
    src = prepare_source(src, cfg, task)
    model, trainer = train_prepared(task, src, cfg, verbose=verbose, checkpoint_dir=checkpoints, run_dir=out,
                                    deadline=deadline)
    return src, model, trainer


def _check_strategy_modality(name: str, task: TaskData) -> None:
    strategy = get_strategy(name)
    if not strategy.takes(task.modality):
        takes = ", ".join(strategy.modalities)
        raise ConfigError(f"`--strategy {name}` trains on {takes} data, and this data is {task.modality}. "
                          f"Use a strategy for {task.modality} data, e.g. `--strategy linear_probe` or `full` "
                          "(`transferkit strategies` lists them).")


def _check_modality(source_id: str, modality: str | None, task: TaskData) -> None:
    if modality is not None and modality != task.modality:
        article = "an" if task.modality[0] in "aeiou" else "a"
        raise ConfigError(f"Source {source_id!r} takes {modality} inputs but the data is {task.modality}. "
                          f"Pick {article} {task.modality} source from `transferkit sources`.")
