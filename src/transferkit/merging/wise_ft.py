"""WiSE-FT (Wortsman et al., CVPR 2022): the interpolation coefficient chosen on held-out data, globally or per layer group."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from transferkit.errors import ConfigError
from transferkit.merging.common import _check_alphas, _few, _rank, _WISE_HINT, check_compatible, DEFAULT_ALPHAS, StateDict
from transferkit.merging.interpolation import _interpolate


@dataclass
class WiseFTResult:
    """Outcome of ``wise_ft``.

    Attributes:
        best_alpha: The alpha with the highest score (ties go to the larger alpha).
        best_score: Its score.
        curve: ``(alpha, score)`` for every alpha tried, in increasing alpha order.
        state_dict: The interpolated weights at ``best_alpha``.
    """

    best_alpha: float
    best_score: float
    curve: list[tuple[float, float]]
    state_dict: dict[str, torch.Tensor] = field(repr=False)


@dataclass
class WiseFTGroupResult:
    """Outcome of ``wise_ft_per_group``.

    Attributes:
        alphas: The chosen alpha for each group.
        default_alpha: The alpha of tensors in no group (the best global alpha).
        best_score: The score of the final per-group interpolation.
        curve: ``(group alphas, score)`` for every evaluation, in the order they ran.
        state_dict: The interpolated weights with the chosen alphas.
    """

    alphas: dict[str, float]
    default_alpha: float
    best_score: float
    curve: list[tuple[dict[str, float], float]]
    state_dict: dict[str, torch.Tensor] = field(repr=False)


def wise_ft(zero_shot: StateDict, finetuned: StateDict,
            evaluate: Callable[[dict[str, torch.Tensor]], float],
            alphas: Iterable[float] = DEFAULT_ALPHAS,
            keys: Iterable[str] | None = None) -> WiseFTResult:
    """Chooses the WiSE-FT mixing coefficient by evaluating each alpha on held-out data.

    Args:
        zero_shot: Weights before fine-tuning (``alpha = 0``).
        finetuned: Weights after fine-tuning (``alpha = 1``).
        evaluate: Scores a state dict, higher is better (e.g. validation accuracy). Use
            validation data, never the test split.
        alphas: The alphas to try, each in [0, 1]; defaults to 0, 0.1, ..., 1.0.
        keys: If given, only these tensors are interpolated (see ``interpolate``).

    Returns:
        The best alpha, its score, the whole curve and the merged state dict. Ties go to
        the larger alpha (closer to the fine-tuned model); NaN scores rank below all others.

    Raises:
        ConfigError: If ``alphas`` is empty or has values outside [0, 1].
        ValueError: If the state dicts are incompatible.
    """
    grid = _check_alphas(alphas)
    names = ("zero_shot", "finetuned")
    check_compatible(zero_shot, finetuned, names)
    curve = []
    for alpha in grid:
        merged = _interpolate(zero_shot, finetuned, alpha, keys, alpha_name="alpha",
                              names=names, hint=_WISE_HINT)
        curve.append((alpha, float(evaluate(merged))))
        del merged
    best_alpha, best_score = max(curve, key=lambda c: (_rank(c[1]), c[0]))
    state_dict = _interpolate(zero_shot, finetuned, best_alpha, keys, alpha_name="alpha",
                              names=names, hint=_WISE_HINT)
    return WiseFTResult(best_alpha, best_score, curve, state_dict)


def wise_ft_per_group(zero_shot: StateDict, finetuned: StateDict,
                      evaluate: Callable[[dict[str, torch.Tensor]], float],
                      groups: Mapping[str, str | Sequence[str]],
                      alphas: Iterable[float] = DEFAULT_ALPHAS,
                      keys: Iterable[str] | None = None) -> WiseFTGroupResult:
    """WiSE-FT with one alpha per layer group, found by greedy coordinate search.

    First every tensor shares one alpha and the best global alpha is found as in
    ``wise_ft``. Then, one group at a time (in the order of ``groups``), the group's alpha is
    set to the best value on the grid while the other groups stay fixed. One pass is made.
    Tensors in no group keep the best global alpha. Ties go to the larger alpha.

    Args:
        zero_shot: Weights before fine-tuning (``alpha = 0``).
        finetuned: Weights after fine-tuning (``alpha = 1``).
        evaluate: Scores a state dict, higher is better.
        groups: Group name -> one key prefix or a list of them (exact key names work too).
            A tensor matched by prefixes of several groups follows the longest prefix.
        alphas: The grid tried for the global alpha and for each group.
        keys: If given, only these tensors are interpolated (see ``interpolate``).

    Returns:
        The per-group alphas, the default alpha, the final score, every evaluation and the
        merged state dict.

    Raises:
        ConfigError: If ``alphas`` or ``groups`` is invalid (empty, a prefix matching no
            tensor, a prefix used twice).
        ValueError: If the state dicts are incompatible.
    """
    grid = _check_alphas(alphas)
    names = ("zero_shot", "finetuned")
    check_compatible(zero_shot, finetuned, names)
    prefixes = _check_groups(groups, zero_shot)
    curve: list[tuple[dict[str, float], float]] = []

    def mapping(assign: dict[str, float], default: float) -> dict[str, float]:
        table = {"": default}
        for group, group_prefixes in prefixes.items():
            table.update(dict.fromkeys(group_prefixes, assign[group]))
        return table

    def score(assign: dict[str, float], default: float) -> float:
        merged = _interpolate(zero_shot, finetuned, mapping(assign, default), keys,
                              alpha_name="alpha", names=names, hint=_WISE_HINT)
        value = float(evaluate(merged))
        curve.append((dict(assign), value))
        return value

    global_scores = [(a, score(dict.fromkeys(prefixes, a), a)) for a in grid]
    default, best = max(global_scores, key=lambda c: (_rank(c[1]), c[0]))
    assign = dict.fromkeys(prefixes, default)
    for group in prefixes:
        tried = [(assign[group], best)]
        for a in grid:
            if a != assign[group]:
                tried.append((a, score({**assign, group: a}, default)))
        assign[group], best = max(tried, key=lambda c: (_rank(c[1]), c[0]))
    state_dict = _interpolate(zero_shot, finetuned, mapping(assign, default), keys,
                              alpha_name="alpha", names=names, hint=_WISE_HINT)
    return WiseFTGroupResult(assign, default, best, curve, state_dict)


def _check_groups(groups: Mapping[str, str | Sequence[str]],
                  sd: StateDict) -> dict[str, list[str]]:
    if not isinstance(groups, Mapping) or not groups:
        raise ConfigError(f"`groups` must be a non-empty mapping from group name to key "
                          f"prefixes, got {groups!r}.")
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for group, value in groups.items():
        plist = [value] if isinstance(value, str) else list(value)
        if not plist or not all(isinstance(p, str) for p in plist):
            raise ConfigError(f"`groups[{group!r}]` must be a key prefix or a non-empty list "
                              f"of them, got {value!r}.")
        for p in plist:
            if p == "":
                raise ConfigError(f"`groups[{group!r}]` contains the empty prefix; tensors in "
                                  "no group already share the global alpha.")
            if p in owner:
                raise ConfigError(f"Prefix {p!r} is in both `groups[{owner[p]!r}]` and "
                                  f"`groups[{group!r}]`; give each prefix to one group.")
            if not any(k.startswith(p) for k in sd):
                raise ConfigError(f"`groups[{group!r}]` prefix {p!r} matches no tensor in the "
                                  f"state dicts (first keys: {_few(list(sd))}).")
            owner[p] = group
        out[group] = plist
    return out
