"""Training one target: prepare a source once, build the target model, train it with a strategy.

Around the strategy: ``init_mix`` blends the shared layers with a fresh initialisation before
training, ``wise_ft`` chooses an interpolation between the starting and the fine-tuned shared
layers on validation afterwards, and ``run_baseline`` trains the no-transfer baseline(s).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path

import torch

from transferkit.config import FitConfig
from transferkit.data import TaskData
from transferkit.errors import ConfigError
from transferkit.evaluation.metrics import classification_metrics
from transferkit.engine.distributed import num_processes
from transferkit.engine.progress import labelled
from transferkit.engine.schedule import resolve_schedule, steps_per_epoch
from transferkit.features import data_image_size, estimate_batchnorm_statistics
from transferkit.runs import predict_proba
from transferkit.sources import SourceModel, build_from_spec, input_pipeline
from transferkit.sources.base import mark_stale_statistics
from transferkit.strategies import get_strategy
from transferkit.surgery import TargetModel, build_target_model
from transferkit.surgery.cut import cut_source, reinit_groups


def check_validation_split(task: TaskData, cfg: FitConfig) -> None:
    """Options that choose on the validation split need one. (An auto search without one
    cross-validates its probes on train and skips the fine-tunes, saying so.)"""
    if len(task.val):
        return
    for name, on in (("wise_ft", cfg.wise_ft), ("patience", cfg.patience)):
        if on:
            raise ConfigError(f"`--{name.replace('_', '-')}` chooses on the validation split, which is empty "
                              f"({len(task.train)} train examples in {len(task.classes)} classes); add examples "
                              f"(or a `val/` folder) or leave `--{name.replace('_', '-')}` out.")


def resolve_options(cfg: FitConfig, task: TaskData) -> FitConfig:
    """``cfg`` with the options left to transferkit filled for ``task`` (batch size, epochs:
    ``engine/schedule.py``). Idempotent; every entry point that trains calls it first."""
    return resolve_schedule(cfg, len(task.train), num_processes())


def prepare_source(src: SourceModel, cfg: FitConfig, task: TaskData) -> SourceModel:
    """Applies the options that change the source itself: input size (``--image-size``, else the
    data's: ``data_image_size``), tokens, pooling, ``cut_at``; a random-init source gets BatchNorm
    statistics from the train split.

    Call it once per source and run (``train_target`` does; ``fit`` calls it, then ``train_prepared``).
    """
    cfg = resolve_options(cfg, task)
    if src.modality == "image":
        src.preprocessing.image_size = cfg.image_size or data_image_size(src, task.train.examples)
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


def train_target(task: TaskData, src: SourceModel, cfg: FitConfig, verbose: bool = True,
                 checkpoint_dir: Path | None = None, run_dir: str | Path | None = None, deadline: float | None = None):
    """Prepares ``src`` for ``cfg`` (``prepare_source``) and trains a target model on it; returns (model, trainer)."""
    return train_prepared(task, prepare_source(src, cfg, task), cfg, verbose=verbose, checkpoint_dir=checkpoint_dir,
                          run_dir=run_dir, deadline=deadline)


def train_prepared(task: TaskData, src: SourceModel, cfg: FitConfig, verbose: bool = True,
                   checkpoint_dir: Path | None = None, run_dir: str | Path | None = None, deadline: float | None = None):
    """Builds the target model on a prepared ``src`` and trains it with ``cfg.strategy``; returns (model, trainer).

    ``deadline`` (a ``time.perf_counter()`` value; ``time.perf_counter() + seconds`` for a budget)
    ends the loop's stages on time: a stage still running then stops at the first optimiser step
    past it, its schedule re-planned to the steps that fit, and says ``stopped_on_time`` in its
    ``trainer.stages`` row (``engine.Trainer``). Convex stages and WiSE-FT's sweep are not cut.

    Around the strategy: ``init_mix`` blends the shared layers with a fresh initialisation
    before training, and ``wise_ft`` chooses an interpolation between the starting and the
    fine-tuned shared layers on validation afterwards (a final ``wise_ft`` row in ``trainer.stages``).
    """
    from transferkit.engine import Trainer

    cfg = resolve_options(cfg, task)
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
                      checkpoint_dir=checkpoint_dir, resume=cfg.resume, run_dir=run_dir, deadline=deadline)
    strategy.train(model, trainer)
    if cfg.wise_ft:
        _choose_wise_ft(model, start, trainer, strategy.wise_ft_keys(start),
                        _wise_ft_groups(src, start) if cfg.wise_ft_per_group else None)
    model.eval()
    return model, trainer


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

    fresh = fresh_network(src).backbone.state_dict()
    model.backbone.load_state_dict(mix_init(model.backbone.state_dict(), fresh, cfg.init_mix))
    mark_stale_statistics(src)  # src.backbone is model.backbone
    estimate_batchnorm_statistics(src, task.train.examples, cfg.batch_size)


def _wise_ft_groups(src: SourceModel, state: dict) -> dict[str, list[str]]:
    """The source's layer groups as key prefixes of its modules (their buffers follow their weights)."""
    groups, taken = {}, set()
    for group in src.layer_groups:
        prefixes = sorted({name.rsplit(".", 1)[0] + "." if "." in name else name for name in group.params} - taken)
        prefixes = [p for p in prefixes if any(k.startswith(p) for k in state)]
        if prefixes:
            groups[group.name] = prefixes
            taken.update(prefixes)
    return groups


def _choose_wise_ft(model: TargetModel, start: dict, trainer, keys: list[str],
                    groups: dict[str, list[str]] | None = None) -> None:
    """WiSE-FT: sweeps alpha between the starting and fine-tuned shared layers, keeps the best on val
    (one alpha for all, or with ``groups`` one per layer group)."""
    from transferkit.merging import DEFAULT_ALPHAS, wise_ft, wise_ft_per_group

    started = time.perf_counter()
    finetuned = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
    loader = torch.utils.data.DataLoader(trainer.val_set, batch_size=trainer.config.batch_size * 2,
                                         collate_fn=trainer.val_set.collate)

    def val_accuracy(state: dict) -> float:
        model.backbone.load_state_dict(state)
        return trainer.evaluate(model, loader)[1]

    if groups:
        result = wise_ft_per_group(start, finetuned, val_accuracy, groups, keys=keys)
        alpha, evaluations = result.default_alpha, len(result.curve)
        sweep = result.curve[:len(DEFAULT_ALPHAS)]  # the global sweep comes first, then the per-group search
        curve = [[next(iter(a.values())), score] for a, score in sweep]
        chosen = {"group_alphas": result.alphas}
    else:
        result = wise_ft(start, finetuned, val_accuracy, keys=keys)
        alpha, evaluations, curve, chosen = result.best_alpha, len(result.curve), [list(p) for p in result.curve], {}
    model.backbone.load_state_dict(result.state_dict)
    seconds = time.perf_counter() - started
    trainer.stages.append({"stage": "wise_ft", "epochs_run": 0, "best_epoch": 0, "best_val_accuracy": result.best_score,
                           "trainable_parameters": 0, "seconds": seconds,
                           "examples_per_second": evaluations * len(trainer.val_set) / seconds,
                           "alpha": alpha, "curve": curve, **chosen})


#: Epochs planned for the scratch baseline given a time budget (``--epochs`` when more): the budget,
#: not the epochs, ends it, its schedule re-planned to the steps that fit (``engine.Trainer``).
SCRATCH_MAX_EPOCHS = 100


def run_baseline(task: TaskData, src: SourceModel, cfg: FitConfig, verbose: bool = True,
                 checkpoint_dir: Path | None = None, seconds: float | None = None) -> dict:
    """The no-transfer baseline(s) ``cfg.baseline`` names, as metrics ({} for "none").

    - ``classical``: ``evaluation/baseline.py``'s linear model for the modality (pixels, TF-IDF,
      log-mel or series features; hyper-parameters chosen on val or by k-fold CV, refitted on
      train + val). Seconds on a few hundred examples.
    - ``scratch``: the source's architecture from random initialisation, every layer trained at
      ``baseline_lr``, given the transfer run's compute rather than its epochs: ``seconds`` (the
      transfer's training time) is its wall-clock budget (a ``deadline`` for ``train_target``)
      and it is planned for up to ``SCRATCH_MAX_EPOCHS`` epochs; without ``seconds``, ``epochs``
      epochs and no limit.
    - ``both``: the classical one under ``baseline_*`` (the one ``transfer_gain`` is against),
      the scratch one under ``scratch_baseline_*``.

    A baseline's keys: ``baseline`` (its name), ``baseline_kind`` (classical or scratch),
    ``baseline_params`` (the chosen hyper-parameters; for scratch the budget and what it
    allowed), ``baseline_chosen_by``, ``baseline_val_accuracy``, ``baseline_description`` (one
    line for reports), ``baseline_seconds`` and ``baseline_test_*`` (``classification_metrics``).
    """
    out: dict = {}
    if cfg.baseline in ("classical", "both"):
        out |= _classical_baseline(task, cfg)
    if cfg.baseline in ("scratch", "both"):
        scratch = _scratch_baseline(task, src, cfg, verbose, checkpoint_dir, seconds)
        out |= scratch if cfg.baseline == "scratch" else {f"scratch_{k}": v for k, v in scratch.items()}
    return out


def _classical_baseline(task: TaskData, cfg: FitConfig) -> dict:
    from transferkit.evaluation.baseline import classical_baseline

    started = time.perf_counter()
    proba, info = classical_baseline(task, cfg.seed)
    return _baseline_metrics(task, "classical", info, proba, time.perf_counter() - started)


def _scratch_baseline(task: TaskData, src: SourceModel, cfg: FitConfig, verbose: bool,
                      checkpoint_dir: Path | None, seconds: float | None) -> dict:
    started = time.perf_counter()
    cfg = resolve_options(cfg, task)
    torch.manual_seed(cfg.seed)
    scratch = fresh_network(src)  # train_target estimates its BatchNorm statistics, as for any @random source
    epochs = cfg.epochs if seconds is None else max(cfg.epochs, SCRATCH_MAX_EPOCHS)
    base_cfg = dataclasses.replace(cfg, strategy="full", lr=cfg.baseline_lr, head_lr=cfg.baseline_lr, freeze=[],
                                   init_mix=0.0, bn_stats="update",  # a network trained from scratch
                                   wise_ft=False, reinit=[], report_to=[], epochs=epochs)
    with labelled("scratch baseline"):  # its bars and lines say what trains
        model, trainer = train_target(task, scratch, base_cfg, verbose=verbose, checkpoint_dir=checkpoint_dir,
                                      deadline=None if seconds is None else started + seconds)
    trained = time.perf_counter() - started
    proba = predict_proba(model, scratch, task.test.examples, batch_size=cfg.batch_size * 2)
    loop = [s for s in trainer.stages if "optimizer_steps" in s]
    architecture = src.architecture or src.id
    params = {"architecture": architecture, "strategy": "full", "lr": cfg.baseline_lr,
              "epochs_run": sum(s["epochs_run"] for s in loop),
              "optimizer_steps": sum(s["optimizer_steps"] for s in loop), "train_seconds": trained}
    if seconds is None:
        what = f"{cfg.epochs} epochs"
    else:
        stopped = any(s.get("stopped_on_time") for s in loop)
        params |= {"seconds_limit": seconds, "planned_epochs": epochs, "stopped_on_time": stopped}
        what = (f"{params['epochs_run']} of up to {epochs} epochs ({params['optimizer_steps']} steps) in the "
                f"transfer's {seconds:.1f} s" + (", stopped on time" if stopped else ""))
    info = {"baseline": "scratch", "baseline_params": params,
            "baseline_chosen_by": "the transfer run's epochs" if seconds is None else "the transfer run's training time",
            "baseline_val_accuracy": max((s["best_val_accuracy"] for s in loop), default=None),
            "baseline_description": f"scratch: {architecture} from random init, strategy full, "
                                    f"lr {cfg.baseline_lr:g}, {what}"}
    return _baseline_metrics(task, "scratch", info, proba, time.perf_counter() - started)


def _baseline_metrics(task: TaskData, kind: str, info: dict, proba, seconds: float) -> dict:
    m = classification_metrics(task.test.labels, proba.argmax(1), task.classes)
    return {**info, "baseline_kind": kind, "baseline_seconds": seconds, **prefixed(m, "baseline_test_")}


def describe_recipe(given: FitConfig, trainer, src: SourceModel) -> dict:
    """What ran, for metrics.json and the report: the loop's schedule and rates (when a stage ran
    the loop), the convex head fit (when one ran), the input size; ``left_to_transferkit`` names
    the options ``given`` (the user's options) left unset, which transferkit sized."""
    cfg, task, stages = trainer.config, trainer.task, trainer.stages
    strategy = get_strategy(cfg.strategy)(cfg)
    recipe: dict = {"train_examples": len(task.train)}
    if any("optimizer_steps" in s and "pairs" not in s for s in stages):  # the loop trained a stage
        val = len(task.val)
        kept = (f"best epoch on {val} validation examples" if trainer.choose_on_val else
                f"last epoch ({val} validation examples are too few to choose an epoch on"
                + ("; --patience not applied)" if cfg.patience else ")"))
        recipe |= {"batch_size": cfg.batch_size, "epochs": cfg.epochs,
                   "min_steps": cfg.min_steps if given.epochs is None else None,
                   "steps_per_epoch": steps_per_epoch(math.ceil(len(task.train) / num_processes()), cfg.batch_size,
                                                      cfg.grad_accum),
                   "warmup_ratio": cfg.warmup_ratio, "lr": strategy.lr, "head_lr": strategy.head_lr,
                   "batchnorm": sorted({s["batchnorm"] for s in stages if "batchnorm" in s}),
                   "weights_kept": kept}
    convex = next((s for s in stages if "solver" in s), None)
    if convex is not None:
        recipe["head_fit"] = (f"{convex['solver']}, L2 C = {convex['l2_c']:g} ({convex['c_chosen_by']}), "
                              f"fitted on {convex['fitted_on']} examples")
    if src.modality == "image":
        recipe["image_size"] = src.preprocessing.image_size
    recipe["left_to_transferkit"] = [name for name in ("batch_size", "epochs", "lr", "head_lr", "image_size")
                                     if getattr(given, name) is None and name in recipe]
    return recipe


def fresh_network(src: SourceModel) -> SourceModel:
    """``src``'s architecture with a fresh random initialisation (the current torch seed), same preprocessing.

    Its BatchNorm statistics are marked stale: whoever uses it estimates them on the target.
    """
    with tempfile.TemporaryDirectory(prefix="transferkit-spec-") as spec_dir:
        src.save_spec(Path(spec_dir))  # specs that need files (transformers configs) read them here
        fresh = build_from_spec(src.spec, Path(spec_dir))
    mark_stale_statistics(fresh)
    fresh.preprocessing = dataclasses.replace(src.preprocessing)
    return fresh


def prefixed(metrics: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in metrics.items()}
