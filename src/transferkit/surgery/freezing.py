"""Choosing which parameters train: by layer group, by name wildcard, or all."""

from __future__ import annotations

import fnmatch

from transferkit.errors import ConfigError
from transferkit.surgery.target import TargetModel


def set_trainable(model: TargetModel, groups: list[str] | None = None, heads: bool = True) -> None:
    """Makes exactly the named layer groups (all when ``None``) and, optionally, the heads trainable."""
    if groups is not None:
        unknown = set(groups) - set(model.group_names())
        if unknown:
            raise ConfigError(f"Unknown layer group(s) {sorted(unknown)}; this model has {model.group_names()}.")
    for name, params in model.params_by_group():
        on = heads if name == "heads" else (groups is None or name in groups)
        for p in params:
            p.requires_grad_(on)


def freeze_matching(model: TargetModel, patterns: list[str]) -> int:
    """Freezes groups or parameters matching ``--freeze`` patterns; returns how many tensors froze.

    A pattern is a layer-group name or a wildcard on parameter names (``backbone.model.features.*``).
    A pattern that matches nothing is an error, so a typo never leaves layers training.
    """
    frozen = 0
    groups = dict(model.params_by_group())
    named = dict(model.named_parameters())
    for pattern in patterns:
        if pattern in groups:
            targets = groups[pattern]
        else:
            targets = [p for n, p in named.items() if fnmatch.fnmatch(n, pattern)]
        if not targets:
            raise ConfigError(
                f"`--freeze` pattern {pattern!r} matches no layer group or parameter. "
                f"Layer groups: {', '.join(model.group_names())}."
            )
        for p in targets:
            p.requires_grad_(False)
            frozen += 1
    return frozen


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
