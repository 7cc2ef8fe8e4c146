"""Run configuration: every option declared once, validated on creation, round-tripped through JSON/YAML.

Each ``FitConfig`` field is declared with ``option`` (default, help, group, range, owning
strategy); the CLI flags of ``transferkit fit``, the config-file loader, the validation (type
first, then range, for flags, config files and a run's ``config.json`` alike) and a report's
"reproduce" command are all derived from that declaration. Unknown keys are an error that names
the key (a typo must never be silently ignored).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from transferkit.errors import ConfigError

PRECISIONS = ("no", "bf16", "fp16")
TRACKERS = ("tensorboard", "mlflow")
#: What `--baseline` trains (``training.run_baseline``); old configs' true/false read as classical/none.
BASELINES = ("classical", "scratch", "both", "none")
#: Names other tools use for our options, for the did-you-mean of unknown keys.
_SYNONYMS = {"learning_rate": "lr", "num_epochs": "epochs", "max_epochs": "epochs", "n_epochs": "epochs"}
#: The groups of ``transferkit fit --help``, in order: the common path (the data, ``--source``,
#: ``--strategy``, ``--out``) first, each leading its group; then training, resume and scale.
GROUPS = ("Data", "Source", "Strategy", "Output", "Training", "Resume and scale")


def option(default=None, *, help: str, group: str, low: float | None = None, high: float | None = None,  # noqa: A002
           open_low: bool = False, open_high: bool = False, unit: str = "", choices: tuple[str, ...] = (),
           hint: str = "", strategy: str | None = None, flag: str | None = None, factory=None):
    """Declares one option of ``FitConfig``: its default, help, help group, allowed values and owner.

    Args:
        default: The default value (``factory`` for lists and dicts).
        help: One line for ``transferkit fit --help`` and the docs.
        group: The help group (one of ``GROUPS``).
        low, high: Bounds of a number (and of each value of a dict of numbers).
        open_low, open_high: Exclude the bound itself.
        unit: Shown in the message for a whole number with both bounds ("pixels").
        choices: The allowed strings (of a string option or of each item of a list).
        hint: A sentence appended to a range error ("Typical values are ...").
        strategy: The strategy this option belongs to (None: every strategy).
        flag: The CLI flag's name without dashes if it is not the field's name; "" for a
            config-file-only option.
        factory: Builds the default (lists, dicts).
    """
    meta = {"help": help, "group": group, "low": low, "high": high, "open_low": open_low, "open_high": open_high,
            "unit": unit, "choices": choices, "hint": hint, "strategy": strategy, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FitConfig:
    """Every option of ``transferkit fit``, each declared once with ``option``.

    The declaration is the single source of the CLI flag (the field name with dashes), its help
    and group, the config-file keys, the validation (type first, then range) and the
    "reproduce" command of a report (``cli_args``). See ``transferkit fit --help`` for each one.
    """

    strategy: str = option("linear_probe", group="Strategy",
                           help="Transfer strategy (see `transferkit strategies`).")
    epochs: int | None = option(None, low=1, high=100000, group="Training",
                                help="Fine-tuning epochs over the train split (default: enough for --min-steps, at least 3).")
    min_steps: int = option(100, low=1, high=10**7, group="Training",
                            help="Fewest optimiser steps of a fine-tuning stage when --epochs is not given.")
    probe_epochs: int = option(60, low=1, group="Training", help="Epochs for heads with a hidden layer on cached features.")
    lr: float | None = option(None, low=0, high=10, open_low=True, group="Training",
                              hint="Typical values are 1e-5 to 1e-2.",
                              help="Peak learning rate of the shared layers (default: the strategy's, `transferkit strategies`).")
    probe_lr: float = option(3e-3, low=0, high=10, open_low=True, group="Training",
                             hint="Typical values are 1e-5 to 1e-2.",
                             help="Learning rate for heads with a hidden layer on cached features.")
    head_lr: float | None = option(None, low=0, high=10, open_low=True, group="Training",
                                   hint="Typical values are 1e-4 to 1e-2.",
                                   help="Learning rate of the new heads while shared layers train (default: 1e-3, or --lr if higher).")
    batch_size: int | None = option(None, low=1, high=65536, group="Training",
                                    help="Examples per step and process (default: train examples / 8, a power of two in 8-32).")
    grad_accum: int = option(1, low=1, high=4096, group="Training", help="Gradient accumulation steps.")
    weight_decay: float = option(0.01, low=0.0, high=10.0, group="Training", help="AdamW weight decay.")
    warmup_ratio: float = option(0.1, low=0.0, high=0.9, group="Training",
                                 help="Fraction of steps with linear warm-up before the cosine decay.")
    bn_stats: str = option("auto", choices=("auto", "keep", "update"), group="Training",
                           help="BatchNorm while shared layers train: keep the running statistics, or update them "
                                "from each batch; auto keeps the source's trained ones (and those a probed head was "
                                "fitted on) and updates a random init, --init-mix or --reinit.")
    patience: int = option(0, low=0, high=100000, group="Training",
                           help="Early-stopping patience in epochs on validation accuracy (0 = off).")
    precision: str = option("no", choices=PRECISIONS, group="Resume and scale",
                            help="Mixed precision: no, bf16 or fp16.")
    seed: int = option(0, low=0, high=2**32 - 1, group="Training",
                       help="Seed for initialisation, data order and augmentation.")
    split_seed: int = option(0, low=0, high=2**32 - 1, group="Data",
                             help="Seed of the train/val/test split made when the data has none.")
    image_size: int | None = option(None, low=16, high=1024, unit="pixels", group="Source",
                                    help="Image side in pixels (default: the data's, at least 64 and at most the source's).")
    max_length: int | None = option(None, low=4, high=8192, unit="tokens", group="Source",
                                    help="Token limit for text sources (default: the source's own).")
    pooling: str | None = option(None, choices=("mean", "cls"), group="Source",
                                 help="Text sources: mean or cls (first-token) pooling; cls exports to plain "
                                      "transformers (default: the source's own).")
    val_fraction: float = option(0.15, low=0.0, high=0.5, open_low=True, open_high=True, group="Data",
                                 help="Validation share when the data has no given splits.")
    test_fraction: float = option(0.2, low=0.0, high=0.5, open_low=True, open_high=True, group="Data",
                                  help="Test share when the data has no given splits.")
    head_hidden: int = option(0, low=0, high=65536, group="Source", help="Hidden width of the head (0 = linear).")
    head_dropout: float = option(0.0, low=0.0, high=0.95, group="Source", help="Dropout before the head's last layer.")
    freeze: list[str] = option(factory=list, group="Source",
                               help="Layer group or parameter wildcard kept frozen in every stage (repeatable).")
    cut_at: str | None = option(None, group="Source",
                                help="Cut the shared layers after this layer group (intermediate features; "
                                     "default: keep every layer).")
    reinit: list[str] = option(factory=list, group="Source",
                               help="Layer group re-initialised instead of transferred (repeatable).")
    augment: bool = option(True, group="Training", help="Light augmentation while fine-tuning (images).")
    baseline: str = option("classical", choices=BASELINES, group="Output",
                           help="No-transfer baseline next to the transfer run: classical (logistic regression on "
                                "small pixels, TF-IDF n-grams, log-mel or series statistics), scratch (the source's "
                                "architecture from random init, given the transfer's training time), both, or none.")
    baseline_lr: float = option(1e-3, low=0, high=10, open_low=True, group="Training",
                                hint="Typical values are 1e-5 to 1e-2.",
                                help="Learning rate of the baseline trained from random initialisation.")
    lr_decay: float = option(0.7, low=0.0, high=1.0, open_low=True, group="Strategy", strategy="layerwise_lr",
                             help="Per-group learning-rate factor toward the input (layerwise_lr).")
    l2sp_alpha: float = option(0.01, low=0, group="Strategy", strategy="l2sp",
                               help="L2-SP weight pulling shared layers to the source (l2sp).")
    l2sp_beta: float = option(0.01, low=0, group="Strategy", strategy="l2sp", help="L2 weight of the new layers (l2sp).")
    lora_r: int = option(8, low=1, high=4096, group="Strategy", strategy="lora", help="LoRA rank (lora).")
    lora_alpha: int = option(16, low=1, high=65536, group="Strategy", strategy="lora", help="LoRA scaling alpha (lora).")
    lora_dropout: float = option(0.0, low=0.0, high=0.95, group="Strategy", strategy="lora",
                                 help="Dropout on the LoRA path (lora).")
    task_weights: dict[str, float] = option(factory=dict, low=0, group="Training", flag="task-weight",
                                            help="Loss weight of a task, as NAME=WEIGHT (repeatable).")
    init_mix: float = option(0.0, low=0.0, high=1.0, group="Strategy",
                             help="Mixed init: (1-β)·source + β·fresh for the shared layers.")
    wise_ft: bool = option(False, group="Strategy", help="Choose a WiSE-FT interpolation α on validation.")
    wise_ft_per_group: bool = option(False, group="Strategy",
                                     help="With --wise-ft: one α per layer group (greedy search on validation).")
    num_workers: int = option(0, low=0, high=256, group="Resume and scale", help="DataLoader worker processes.")
    text_column: str = option("text", group="Data", help="Text column of a table.")
    label_column: str = option("label", group="Data", help="Label column of a table; 'a,b' trains one head per column.")
    split_column: str = option("split", group="Data", help="Split column of a table (train/val/test).")
    path_column: str | None = option(None, group="Data",
                                     help="Column of image or audio files in a table (paths or ids) or a Hugging Face "
                                          "dataset (default: found from the data).")
    skip_bad: bool = option(False, group="Data", help="Skip unreadable examples (reported) instead of failing.")
    checkpoint_every: int = option(0, low=0, group="Resume and scale",
                                   help="Also checkpoint every N optimiser steps (always at epoch ends).")
    keep_checkpoints: int = option(2, low=1, high=1000, group="Resume and scale",
                                   help="Recent checkpoints to keep (each stage's last is kept).")
    resume: bool = option(False, group="Resume and scale", help="Continue from the newest valid checkpoint in --out.")
    overwrite: bool = option(False, group="Output",
                             help="Replace a finished run in --out, or discard an unfinished run's checkpoints.")
    candidates: list[str] = option(factory=list, group="Source",
                                   help="With --source auto: source ids to choose from (comma-separated).")
    top_k: int | None = option(None, low=1, high=1000, group="Source",
                               help="With --source auto: at most this many sources get fine-tunes (default: every "
                                    "source whose probe is not clearly worse).")
    strategies: list[str] = option(factory=list, group="Strategy",
                                   help="With --strategy auto: strategies to choose from (comma-separated; default: "
                                        "linear_probe, lp_ft, full, layerwise_lr, and lora, bitfit for transformers).")
    budget: float = option(10.0, low=0, high=100000, open_low=True, unit="minutes", group="Source",
                           help="With --source auto or --strategy auto: minutes the whole run may take, baseline "
                                "included; the search plans its fine-tunes to fit.")
    report_to: list[str] = option(factory=list, choices=TRACKERS, group="Output",
                                  help="Experiment tracker: tensorboard or mlflow (repeatable); logs inside --out.")

    def __post_init__(self) -> None:
        for f in fields(self):
            check_value(f.name, getattr(self, f.name), _hints()[f.name], f.metadata)
        if self.wise_ft_per_group and not self.wise_ft:
            raise ConfigError("`--wise-ft-per-group` chooses WiSE-FT's α per layer group; add `--wise-ft`.")

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
        return cls(**_legacy_values(values))

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
                floats = {name for name, hint in _hints().items() if hint in (float, float | None)}
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


def _legacy_values(values: dict) -> dict:
    """``values`` with the options of older runs and config files read as today's: ``baseline``
    true/false (before ``--baseline KIND``) is classical/none."""
    if isinstance(values.get("baseline"), bool):
        values = {**values, "baseline": "classical" if values["baseline"] else "none"}
    return values


def _float_or_text(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


@functools.cache
def _hints() -> dict[str, object]:
    return typing.get_type_hints(FitConfig)


def flag_name(name: str) -> str:
    """The CLI flag of option ``name``, without dashes ("" for config-file-only options)."""
    declared = FitConfig.__dataclass_fields__[name].metadata.get("flag")
    return name.replace("_", "-") if declared is None else declared


def check_value(name: str, value, hint, meta) -> None:
    """Type first, then range: raises ``ConfigError`` naming the flag, the allowed values and ``value``."""
    flag = f"`--{flag_name(name)}`"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # X | None
        if value is None:
            return
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag} must be true or false; got {value!r}.")
    elif hint is int:
        _check_whole(flag, value, meta)
    elif hint is float:
        _check_number(flag, value, meta)
    elif hint is str:
        if not isinstance(value, str) and not meta.get("choices"):
            raise ConfigError(f"{flag} must be a string; got {value!r}.")
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{flag} must be one of {', '.join(meta['choices'])}; got {value!r}.")
    elif origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{flag} must be a list of strings, e.g. ['a', 'b']; got {value!r}.")
        for item in value:
            if meta.get("choices") and item not in meta["choices"]:
                raise ConfigError(f"{flag} takes {' or '.join(map(repr, meta['choices']))}; got {item!r}.")
    elif origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{flag} must be a mapping of name: number; got {value!r}.")
        for key, item in value.items():
            _check_number(f"{flag} for {key!r}", item, meta)
    else:  # pragma: no cover - a declaration this checker does not know
        raise TypeError(f"no check for option {name!r} of type {hint!r}")


def _check_whole(flag: str, value, meta) -> None:
    low, high, unit = meta.get("low"), meta.get("high"), meta.get("unit")
    whole = isinstance(value, int) and not isinstance(value, bool)
    if unit and (not whole or not low <= value <= high):
        raise ConfigError(f"{flag} must be between {low} and {high} {unit}; got {value!r}.")
    if not whole or (low is not None and value < low):
        raise ConfigError(f"{flag} must be a whole number >= {low}; got {value!r}.")
    if high is not None and value > high:
        raise ConfigError(f"{flag} must be a whole number <= {high}; got {value!r}.")


def _check_number(flag: str, value, meta) -> None:
    low, high = meta.get("low"), meta.get("high")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if high is None:  # a weight: finite, at least `low`
        if not number or not math.isfinite(value) or value < low:
            raise ConfigError(f"{flag} must be a finite number >= {low}; got {value!r}.")
        return
    above = number and (value > low if meta.get("open_low") else value >= low)
    below = number and (value < high if meta.get("open_high") else value <= high)
    if not (above and below):
        interval = f"{'(' if meta.get('open_low') else '['}{low}, {high}{')' if meta.get('open_high') else ']'}"
        hint = f" {meta['hint']}" if meta.get("hint") else ""
        raise ConfigError(f"{flag} must be in {interval}; got {value!r}.{hint}")


def cli_args(fit: dict) -> list[str]:
    """The ``transferkit fit`` flags that rebuild the options in ``fit`` (those off their defaults).

    Options without a flag (config-file only) are left out; ``overwrite`` and ``resume`` say how
    a run was started, not what it is, and are left out too.
    """
    defaults = FitConfig().to_dict()
    args: list[str] = []
    for name, value in _legacy_values(fit).items():
        if name not in defaults or defaults[name] == value or name in ("overwrite", "resume") or not flag_name(name):
            continue
        flag = f"--{flag_name(name)}"
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag_name(name)}")
        elif name in ("candidates", "strategies"):
            args += [flag, ",".join(value)]
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        elif isinstance(value, dict):
            for key, item in value.items():
                args += [flag, f"{key}={item!r}"]
        elif value is not None:
            args += [flag, repr(value) if isinstance(value, float) else str(value)]
    return args
