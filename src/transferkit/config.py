"""Run configuration: one dataclass, validated on creation, round-tripped through JSON/YAML.

Unknown keys are an error that names the key (a typo must never be silently ignored).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from transferkit.errors import ConfigError

PRECISIONS = ("no", "bf16", "fp16")
#: Names other tools use for our options, for the did-you-mean of unknown keys.
_SYNONYMS = {"learning_rate": "lr", "num_epochs": "epochs", "max_epochs": "epochs", "n_epochs": "epochs"}


@dataclass
class FitConfig:
    """Every option of ``transferkit fit``; the CLI flag is the field name with dashes.

    Attributes:
        strategy: Transfer strategy name (see ``transferkit strategies``).
        epochs: Training epochs over the train split (fine-tuning stages).
        probe_epochs: Epochs for heads fitted on cached features (``linear_probe``, LP stage of ``lp_ft``).
        lr: Peak learning rate of the fine-tuning stages.
        probe_lr: Learning rate for heads fitted on cached features.
        batch_size: Examples per optimiser step and process (before accumulation).
        grad_accum: Gradient accumulation steps.
        weight_decay: AdamW weight decay.
        warmup_ratio: Fraction of steps with linear warm-up before the cosine decay.
        patience: Early-stopping patience in epochs on validation accuracy (0 disables).
        precision: "no", "bf16" or "fp16" (Accelerate mixed precision).
        seed: Seed for initialisation, data order and augmentation.
        split_seed: Seed of the train/val/test split made when the data has none; kept apart from
            ``seed`` so runs with different seeds (soups, mean ± std) share one test split.
        image_size: Input side in pixels for image sources (default: the source's own).
        max_length: Token limit for text sources (default: the source's own).
        pooling: Text sources: "mean" over tokens or "cls" (first token); default: the source's own.
            First-token runs export exactly to plain transformers (``transferkit export --format hf``).
        val_fraction, test_fraction: Split sizes when the data has no given splits.
        head_hidden: Width of a hidden layer in the head (0 = a single linear layer).
        head_dropout: Dropout before the head's last layer.
        freeze: Layer-group names or parameter-name wildcards kept frozen in every stage.
        cut_at: Cut the shared layers after this layer group and use its pooled output as features.
        reinit: Layer groups whose source weights are replaced by a fresh initialisation.
        augment: Light data augmentation during fine-tuning (images).
        baseline: Train the no-transfer baseline next to the transfer run.
        baseline_lr: Learning rate for the baseline trained from random initialisation.
        lr_decay: Per-group learning-rate factor toward the input (``layerwise_lr``).
        l2sp_alpha, l2sp_beta: L2-SP weights for shared and new layers (``l2sp``).
        lora_r, lora_alpha, lora_dropout: LoRA rank, scaling and dropout (``lora``).
        task_weights: Loss weight per task when a table has several label columns (default 1 each).
        init_mix: Mixed initialisation, shared layers = (1-β)·source + β·fresh; BatchNorm
            statistics of the blend are estimated again on the train split.
        wise_ft: Choose a WiSE-FT interpolation between source and fine-tuned weights on validation.
        num_workers: DataLoader worker processes.
        text_column, label_column, split_column: Column names for tables.
        skip_bad: Skip unreadable examples (reported) instead of failing.
        checkpoint_every: Save a resumable checkpoint every N optimiser steps (0 = epoch ends only).
        keep_checkpoints: How many checkpoints to keep.
        resume: Continue from the newest valid checkpoint in the run directory's ``checkpoints/``.
        candidates: Sources that ``--source auto`` chooses from (default: every packaged source of
            the data's modality).
        top_k: How many top-scored candidates ``--source auto`` confirms with short fine-tunes.
        report_to: Experiment trackers through Accelerate ("tensorboard", "mlflow").
    """

    strategy: str = "linear_probe"
    epochs: int = 5
    probe_epochs: int = 60
    lr: float = 1e-4
    probe_lr: float = 3e-3
    batch_size: int = 32
    grad_accum: int = 1
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    patience: int = 0
    precision: str = "no"
    seed: int = 0
    split_seed: int = 0
    image_size: int | None = None
    max_length: int | None = None
    pooling: str | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    head_hidden: int = 0
    head_dropout: float = 0.0
    freeze: list[str] = field(default_factory=list)
    cut_at: str | None = None
    reinit: list[str] = field(default_factory=list)
    augment: bool = True
    baseline: bool = True
    baseline_lr: float = 1e-3
    lr_decay: float = 0.7
    l2sp_alpha: float = 0.01
    l2sp_beta: float = 0.01
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    task_weights: dict[str, float] = field(default_factory=dict)
    init_mix: float = 0.0
    wise_ft: bool = False
    num_workers: int = 0
    text_column: str = "text"
    label_column: str = "label"
    split_column: str = "split"
    skip_bad: bool = False
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = False
    candidates: list[str] = field(default_factory=list)
    top_k: int = 3
    report_to: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _positive(self, "epochs", "probe_epochs", "batch_size", "grad_accum", "lora_r", "lora_alpha", "keep_checkpoints",
                  "top_k")
        _positive_float(self, "lr", "probe_lr", "baseline_lr")
        _in_range(self, "weight_decay", 0.0, 10.0)
        _in_range(self, "warmup_ratio", 0.0, 0.9)
        _in_range(self, "val_fraction", 0.0, 0.5, closed=False)
        _in_range(self, "test_fraction", 0.0, 0.5, closed=False)
        _in_range(self, "head_dropout", 0.0, 0.95)
        _in_range(self, "lora_dropout", 0.0, 0.95)
        _in_range(self, "lr_decay", 0.0, 1.0, closed=False, upper_closed=True)
        _in_range(self, "init_mix", 0.0, 1.0)
        for name in ("patience", "head_hidden", "num_workers", "checkpoint_every", "seed", "split_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"`--{_flag(name)}` must be a whole number >= 0; got {value!r}.")
        for name in ("l2sp_alpha", "l2sp_beta"):
            if not _finite_non_negative(getattr(self, name)):
                raise ConfigError(f"`--{_flag(name)}` must be a finite number >= 0; got {getattr(self, name)!r}.")
        for name, weight in self.task_weights.items():
            if not _finite_non_negative(weight):
                raise ConfigError(f"`--task-weight` for {name!r} must be a finite number >= 0; got {weight!r}.")
        if self.pooling not in (None, "mean", "cls"):
            raise ConfigError(f"`--pooling` must be 'mean' or 'cls' (first token); got {self.pooling!r}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"`--precision` must be one of {', '.join(PRECISIONS)}; got {self.precision!r}.")
        if self.image_size is not None and not 16 <= self.image_size <= 1024:
            raise ConfigError(f"`--image-size` must be between 16 and 1024 pixels; got {self.image_size!r}.")
        if self.max_length is not None and not 4 <= self.max_length <= 8192:
            raise ConfigError(f"`--max-length` must be between 4 and 8192 tokens; got {self.max_length!r}.")
        for tracker in self.report_to:
            if tracker not in ("tensorboard", "mlflow"):
                raise ConfigError(f"`--report-to` takes 'tensorboard' or 'mlflow'; got {tracker!r}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, origin: str = "options") -> FitConfig:
        """Builds a config; an unknown key raises ``ConfigError`` naming it."""
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                close = ([_SYNONYMS[key]] if key in _SYNONYMS else
                         difflib.get_close_matches(str(key).replace("-", "_"), known, n=1))
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"Unknown option {key!r} in {origin}.{hint} See `transferkit fit --help`.")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> FitConfig:
        """Reads a YAML or JSON config file; ``overrides`` (e.g. from CLI flags) win."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"`--config` file {str(path)!r} cannot be read: {e.strerror}.") from None
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                values = yaml.safe_load(text) or {}
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
                raise ConfigError(f"`--config` file {str(path)!r} is not valid YAML "
                                  f"({getattr(e, 'problem', None) or 'cannot parse'}{where}).") from None
            if isinstance(values, dict):  # YAML 1.1 reads 1e-3 (no dot) as text: take it as the number meant
                floats = {f.name for f in fields(cls) if f.type in ("float", "float | None")}
                values = {k: _float_or_text(v) if k in floats else v for k, v in values.items()}
        else:
            try:
                values = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"`--config` file {str(path)!r} is not valid JSON ({e}); "
                                  "use .yaml/.yml for a YAML file.") from None
        if not isinstance(values, dict):
            raise ConfigError(f"`--config` file {str(path)!r} must hold a mapping of option: value.")
        return cls.from_dict({**values, **overrides}, origin=f"config file {str(path)!r}")


def _float_or_text(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _finite_non_negative(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _positive(cfg: FitConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"`--{_flag(name)}` must be a whole number >= 1; got {value!r}.")


def _positive_float(cfg: FitConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or not 0 < value <= 10:
            raise ConfigError(f"`--{_flag(name)}` must be in (0, 10]; got {value!r}. Typical values are 1e-5 to 1e-2.")


def _in_range(cfg: FitConfig, name: str, low: float, high: float, closed: bool = True, upper_closed: bool | None = None) -> None:
    value = getattr(cfg, name)
    upper_closed = closed if upper_closed is None else upper_closed
    ok_low = value >= low if closed else value > low
    ok_high = value <= high if upper_closed else value < high
    if not isinstance(value, (int, float)) or not (ok_low and ok_high):
        lo, hi = ("[" if closed else "("), ("]" if upper_closed else ")")
        raise ConfigError(f"`--{_flag(name)}` must be in {lo}{low}, {high}{hi}; got {value!r}.")
