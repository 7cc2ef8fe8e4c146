"""Weighted averages of model weights, as pure functions on state dicts.

Two ideas from Wortsman et al. (2022) live here:

* **WiSE-FT** ("Robust fine-tuning of zero-shot models", CVPR 2022). Fine-tuning a large
  pretrained model can cost robustness to distribution shift. Averaging the weights of the
  zero-shot (pretrained) model and of its fine-tuned copy, with a mixing coefficient ``alpha``
  chosen on held-out data, often keeps most of the fine-tuned accuracy and recovers much of
  the robustness, at no extra inference cost. See ``interpolate``, ``wise_ft`` and
  ``wise_ft_per_group``.
* **Model soups** ("Model soups: averaging weights of multiple fine-tuned models improves
  accuracy without increasing inference time", ICML 2022). Several models fine-tuned from the
  same starting point with different hyperparameters can be averaged into one model that is
  often better than the best single one. The *uniform* soup averages all of them; the *greedy*
  soup visits them from best to worst and keeps each one only if the averaged model does not
  get worse on held-out data. See ``uniform_soup`` and ``greedy_soup``.

``mix_init`` reuses the same arithmetic for a mixed initialisation between transferred and
freshly initialised weights.

Averaging only makes sense for models that share an architecture and (for good results) a
common pretrained ancestor; the functions check that keys, shapes and dtypes agree.

Conventions for every function here:

* Inputs are never modified; outputs are new tensors that share no memory with the inputs.
* Only floating-point tensors are averaged. Other tensors (integer buffers such as BatchNorm's
  ``num_batches_tracked``) cannot be meaningfully averaged and are copied from one input, as
  each function documents.
* The output dtype equals the input dtype. Half-precision tensors (float16, bfloat16, ...) are
  averaged in float32 and rounded back once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from transferkit.errors import ConfigError

StateDict = Mapping[str, torch.Tensor]
Alpha = float | Mapping[str, float]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(i / 10 for i in range(11))
"""0, 0.1, ..., 1.0: the alphas ``wise_ft`` tries by default."""

_SHOW = 5  # how many key names an error message lists before "and N more"
_WISE_HINT = "0 = zero-shot, 1 = fine-tuned"

__all__ = [
    "DEFAULT_ALPHAS",
    "GreedySoupResult",
    "WiseFTGroupResult",
    "WiseFTResult",
    "check_compatible",
    "greedy_soup",
    "interpolate",
    "mix_init",
    "uniform_soup",
    "wise_ft",
    "wise_ft_per_group",
]


# --------------------------------------------------------------------------- checks


def check_compatible(a: StateDict, b: StateDict, names: tuple[str, str] = ("a", "b")) -> None:
    """Checks that two state dicts can be averaged key by key.

    Args:
        a: First state dict.
        b: Second state dict.
        names: How to call ``a`` and ``b`` in error messages.

    Raises:
        TypeError: If an argument is not a mapping of names to tensors.
        ValueError: If the keys differ (lists a few missing and extra names), or a tensor's
            shape or dtype differs (names the tensor and shows both values).
    """
    _check_state_dict(a, names[0])
    _check_state_dict(b, names[1])
    na, nb = names
    missing = [k for k in a if k not in b]
    extra = [k for k in b if k not in a]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing from `{nb}` ({_few(missing)})")
        if extra:
            parts.append(f"{len(extra)} only in `{nb}` ({_few(extra)})")
        raise ValueError(
            f"State dicts `{na}` and `{nb}` have different keys: {'; '.join(parts)}. "
            "Only models with the same architecture can be merged."
        )
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise ValueError(
                f"Tensor {key!r} has shape {tuple(ta.shape)} in `{na}` but {tuple(tb.shape)} "
                f"in `{nb}`. Only models with the same architecture can be merged."
            )
        if ta.dtype != tb.dtype:
            raise ValueError(
                f"Tensor {key!r} is {ta.dtype} in `{na}` but {tb.dtype} in `{nb}`. "
                "Cast both state dicts to the same dtype before merging."
            )


def _check_state_dict(sd: object, name: str) -> None:
    if not isinstance(sd, Mapping):
        raise TypeError(f"`{name}` must be a state dict (a mapping of names to tensors), "
                        f"got {type(sd).__name__}.")
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"`{name}[{key!r}]` is {type(value).__name__}, not a torch.Tensor.")


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOW])
    return shown + (f" and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def _check_fraction(value: object, name: str, hint: str) -> float:
    """Returns ``value`` as a float in [0, 1] or raises ``ConfigError`` naming ``name``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        value = float(value)  # type: ignore[arg-type]
        ok = 0.0 <= value <= 1.0  # False for NaN
    if not ok:
        raise ConfigError(f"`{name}` must be a number in [0, 1] ({hint}), got {value!r}.")
    return value  # type: ignore[return-value]


def _check_alphas(alphas: Iterable[float]) -> tuple[float, ...]:
    """Validates a grid of alphas; returns it sorted, without duplicates."""
    if isinstance(alphas, (str, bytes, numbers.Number)) or not isinstance(alphas, Iterable):
        raise ConfigError(f"`alphas` must be a sequence of numbers in [0, 1], got {alphas!r}.")
    values = [_check_fraction(x, f"alphas[{i}]", _WISE_HINT)
              for i, x in enumerate(alphas)]
    if not values:
        raise ConfigError("`alphas` is empty; pass at least one number in [0, 1].")
    return tuple(sorted(set(values)))


def _selected_keys(sd: StateDict, keys: Iterable[str] | None) -> set[str] | None:
    if keys is None:
        return None
    if isinstance(keys, (str, bytes)):
        raise ConfigError(f"`keys` must be an iterable of tensor names, not one string ({keys!r}).")
    chosen = set(keys)
    unknown = sorted(k for k in chosen if k not in sd)
    if unknown:
        raise ConfigError(f"`keys` names tensors that are not in the state dicts: {_few(unknown)}.")
    return chosen


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision (and smaller) floats, else the dtype itself."""
    return dtype if dtype.itemsize >= 4 else torch.float32


def _rank(score: float) -> float:
    """Sort key for scores: NaN counts as worse than any number."""
    return -math.inf if math.isnan(score) else score


# --------------------------------------------------------------------------- interpolation


def interpolate(a: StateDict, b: StateDict, alpha: Alpha,
                keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Returns the weight-space interpolation ``(1 - alpha) * a + alpha * b``.

    ``alpha = 0`` gives tensors equal to ``a`` exactly and ``alpha = 1`` equal to ``b``
    exactly (bitwise; the endpoints are copied, not computed). In between, floating tensors
    are computed as ``torch.lerp(a, b, alpha)`` (float32 or wider arithmetic, rounded back to
    the input dtype), which equals the formula up to rounding and leaves tensors with
    ``a == b`` unchanged.

    Args:
        a: The state dict at ``alpha = 0`` (e.g. the zero-shot model).
        b: The state dict at ``alpha = 1`` (e.g. the fine-tuned model).
        alpha: A number in [0, 1], or a mapping from key prefix to alpha for a different
            alpha per layer group (e.g. ``{"": 0.5, "head.": 1.0}``). Each tensor uses its
            longest matching prefix (plain string prefixes, so end them with "." to avoid
            ``"layer1"`` matching ``"layer10.weight"``); ``""`` matches every key and acts as
            the default. Every interpolated tensor must match some prefix.
        keys: If given, only these tensors are interpolated; all others are copied from ``b``.

    Returns:
        A new dict with ``a``'s key order. Non-floating tensors (integer buffers such as
        BatchNorm's ``num_batches_tracked``) are not averaged: they are copied from ``b``,
        or from ``a`` where their alpha is exactly 0, so both endpoints are exact for the
        whole state dict.

    Raises:
        ConfigError: If an alpha is outside [0, 1], a tensor matches no prefix of ``alpha``,
            or ``keys`` names unknown tensors.
        ValueError: If ``a`` and ``b`` differ in keys, shapes or dtypes (see
            ``check_compatible``).
    """
    return _interpolate(a, b, alpha, keys, alpha_name="alpha", names=("a", "b"),
                        hint="0 keeps `a`, 1 keeps `b`")


def mix_init(source: StateDict, fresh: StateDict, beta: Alpha,
             keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Mixed initialisation ``(1 - beta) * source + beta * fresh``.

    ``beta = 0`` is plain transfer (``source`` exactly), ``beta = 1`` a fresh initialisation
    (``fresh`` exactly); values in between shrink the transferred weights toward a random
    init. A thin wrapper on ``interpolate`` whose errors name the ``--init-mix`` option.

    Args:
        source: Transferred (pretrained) weights.
        fresh: Freshly initialised weights of the same architecture.
        beta: A number in [0, 1], or a prefix-to-beta mapping as for ``interpolate``.
        keys: If given, only these tensors are mixed; all others are copied from ``fresh``.

    Returns:
        A new state dict. Non-floating tensors come from ``fresh``, or from ``source`` where
        beta is exactly 0.

    Raises:
        ConfigError: If beta is outside [0, 1] (message names ``--init-mix``).
        ValueError: If the state dicts differ in keys, shapes or dtypes.
    """
    return _interpolate(source, fresh, beta, keys, alpha_name="--init-mix",
                        names=("source", "fresh"), hint="0 = plain transfer, 1 = fresh init")


def _interpolate(a: StateDict, b: StateDict, alpha: Alpha, keys: Iterable[str] | None, *,
                 alpha_name: str, names: tuple[str, str], hint: str) -> dict[str, torch.Tensor]:
    check_compatible(a, b, names)
    chosen = _selected_keys(a, keys)
    targets = [k for k in a if chosen is None or k in chosen]
    weights = _resolve_alpha(alpha, targets, alpha_name, hint)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, ta in a.items():
            tb = b[key]
            w = weights.get(key, 1.0)  # tensors outside `keys` come from b
            if w == 0.0:
                out[key] = ta.clone()
            elif w == 1.0 or not ta.is_floating_point():
                out[key] = tb.clone()
            else:
                cd = _compute_dtype(ta.dtype)
                out[key] = torch.lerp(ta.to(cd), tb.to(cd), w).to(ta.dtype)
    return out


def _resolve_alpha(alpha: Alpha, keys: Sequence[str], name: str, hint: str) -> dict[str, float]:
    """Maps each key to its alpha (a number, or the longest matching prefix's value)."""
    if not isinstance(alpha, Mapping):
        value = _check_fraction(alpha, name, hint)
        return dict.fromkeys(keys, value)
    if not alpha:
        raise ConfigError(f"`{name}` is an empty mapping; give a number in [0, 1] or a "
                          "mapping from key prefix to alpha.")
    table = {}
    for prefix, value in alpha.items():
        if not isinstance(prefix, str):
            raise ConfigError(f"`{name}` keys must be key prefixes (str), got {prefix!r}.")
        table[prefix] = _check_fraction(value, f"{name}[{prefix!r}]", hint)
    prefixes = sorted(table, key=len, reverse=True)
    out, unmatched = {}, []
    for key in keys:
        match = next((p for p in prefixes if key.startswith(p)), None)
        if match is None:
            unmatched.append(key)
        else:
            out[key] = table[match]
    if unmatched:
        raise ConfigError(
            f"`{name}` has no prefix matching {len(unmatched)} tensor(s): {_few(unmatched)}. "
            "Add a '' entry for the default value, or a prefix covering them."
        )
    return out


# --------------------------------------------------------------------------- WiSE-FT


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


# --------------------------------------------------------------------------- soups


@dataclass
class GreedySoupResult:
    """Outcome of ``greedy_soup``.

    Attributes:
        state_dict: The averaged weights of the chosen ingredients.
        indices: Indices (into the input list) of the chosen ingredients, in the order they
            were added (best individual score first).
        score: The soup's score.
        ingredient_scores: Each ingredient's own score, in input order.
    """

    state_dict: dict[str, torch.Tensor] = field(repr=False)
    indices: list[int]
    score: float
    ingredient_scores: list[float]


class _RunningSum:
    """Sum of floating tensors in float32-or-wider arithmetic; the first dict's other tensors."""

    @torch.no_grad()
    def __init__(self, first: StateDict) -> None:
        self.dtypes = {k: t.dtype for k, t in first.items()}
        self.total = {k: t.to(_compute_dtype(t.dtype), copy=True)
                      for k, t in first.items() if t.is_floating_point()}
        self.fixed = {k: t.clone() for k, t in first.items() if not t.is_floating_point()}
        self.count = 1

    @torch.no_grad()
    def add(self, sd: StateDict) -> None:
        for k, total in self.total.items():
            total.add_(sd[k].to(total.dtype))
        self.count += 1

    @torch.no_grad()
    def mean(self, extra: StateDict | None = None) -> dict[str, torch.Tensor]:
        """The mean so far, or the mean with ``extra`` added (without adding it)."""
        n = self.count + (extra is not None)
        out = {}
        for k, dtype in self.dtypes.items():
            if k in self.fixed:
                out[k] = self.fixed[k].clone()
            else:
                total = self.total[k] if extra is None else self.total[k] + extra[k].to(
                    self.total[k].dtype)
                out[k] = (total / n).to(dtype)
        return out


def _check_ingredients(state_dicts: Iterable[StateDict]) -> list[StateDict]:
    if isinstance(state_dicts, Mapping):
        raise ConfigError("`state_dicts` must be a list of state dicts, not one state dict.")
    sds = list(state_dicts)
    if not sds:
        raise ConfigError("`state_dicts` is empty; pass at least one state dict.")
    for i, sd in enumerate(sds[1:], start=1):
        check_compatible(sds[0], sd, ("state_dicts[0]", f"state_dicts[{i}]"))
    if len(sds) == 1:
        _check_state_dict(sds[0], "state_dicts[0]")
    return sds


def uniform_soup(state_dicts: Iterable[StateDict]) -> dict[str, torch.Tensor]:
    """Averages several state dicts with equal weights (the uniform model soup).

    Args:
        state_dicts: Ingredients with the same keys, shapes and dtypes.

    Returns:
        A new state dict: the mean of each floating tensor, computed in float32 or wider
        and rounded back to the input dtype. Non-floating tensors are copied from the first
        ingredient.

    Raises:
        ConfigError: If ``state_dicts`` is empty.
        ValueError: If an ingredient is incompatible with the first (the message names the
            ingredient index and the tensor).
    """
    sds = _check_ingredients(state_dicts)
    acc = _RunningSum(sds[0])
    for sd in sds[1:]:
        acc.add(sd)
    return acc.mean()


def greedy_soup(state_dicts: Iterable[StateDict],
                evaluate: Callable[[dict[str, torch.Tensor]], float]) -> GreedySoupResult:
    """Builds a greedy model soup (Wortsman et al. 2022).

    Ingredients are sorted by their own score, best first (ties keep input order). The soup
    starts as the best ingredient; each next one is added if the uniform average of the soup
    plus it scores at least as well as the soup so far (``>=``, as in the paper), otherwise it
    is skipped. NaN scores count as worse than any number. The soup therefore never scores
    below the best single ingredient.

    Args:
        state_dicts: Ingredients, e.g. fine-tuned from one pretrained model with different
            hyperparameters.
        evaluate: Scores a state dict, higher is better. Use validation data, never test.

    Returns:
        The soup's state dict (equal to ``uniform_soup`` of the chosen ingredients in the
        order of ``indices``), the chosen indices, its score and every ingredient's score.
        Non-floating tensors come from the best-scoring ingredient.

    Raises:
        ConfigError: If ``state_dicts`` is empty.
        ValueError: If an ingredient is incompatible with the first.
    """
    sds = _check_ingredients(state_dicts)
    scores = [float(evaluate({k: t.detach().clone() for k, t in sd.items()})) for sd in sds]
    order = sorted(range(len(sds)), key=lambda i: (-_rank(scores[i]), i))
    acc = _RunningSum(sds[order[0]])
    indices, best, soup = [order[0]], scores[order[0]], acc.mean()
    for i in order[1:]:
        candidate = acc.mean(extra=sds[i])
        value = float(evaluate(candidate))
        if _rank(value) >= _rank(best):
            acc.add(sds[i])
            indices.append(i)
            best, soup = value, candidate
    return GreedySoupResult(soup, indices, best, scores)
