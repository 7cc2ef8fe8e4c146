"""Model soups (Wortsman et al., ICML 2022): uniform and greedy averages of runs fine-tuned from one start."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from transferkit.errors import ConfigError
from transferkit.merging.common import _check_state_dict, _compute_dtype, _rank, check_compatible, StateDict


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
