"""Transferability scorers: rank pretrained sources for a target task before fine-tuning.

Each scorer is a small scikit-learn-style estimator: construct it with hyperparameters, call
``fit(X, y)`` with what the source produces on the target examples and the target labels,
then read ``score_`` (higher = better expected transfer)::

    from transferkit.scoring import get_scorer
    score = get_scorer("logme").fit(features, labels).score_

``input_kind`` says what ``X`` must be: ``"features"`` (N x D embeddings) or
``"probabilities"`` (N x source classes, the source head's softmax output).

Whether a set of scores can rank at all. A score can tie every candidate for reasons that have
nothing to do with transfer: the H-score is exactly ``C - 1`` for any features once the
feature dimension reaches the number of examples, NCE is 0 for a source with more classes than
there are examples, a probe is 1.0 on an easy task. ``Scorer.degenerate(values, num_classes)``
takes one scorer's values across the candidates (``None`` for a candidate it could not score)
and returns a sentence saying why they cannot rank them, or None; ``informative`` does it for
several scorers at once (e.g. one list per score column of ``ranking.rank_sources``'s rows)::

    from transferkit.scoring import informative
    reasons = informative({"hscore": [6.0, 6.0, 6.0]}, num_classes=7)
    # {"hscore": "hscore saturates at C-1 = 6 for every candidate; its feature covariance ..."}

Every scorer reports values that are all the same (within ``DEGENERATE_RTOL``, relative);
the bounds each scorer adds:

- ``hscore``: every value at ``C - 1`` (its feature covariance is rank-deficient);
- ``leep``, ``nce``: every value at 0, their maximum;
- ``knn``, ``linear``: every accuracy at 1.0, or every one at or below chance ``1 / C``;
- ``logme``, ``regularized_hscore``: none (the latter reaches its bound only without
  shrinkage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transferkit.errors import ConfigError
from transferkit.scoring.base import DEGENERATE_RTOL, SCORERS, Scorer

__all__ = ["DEGENERATE_RTOL", "SCORERS", "Scorer", "get_scorer", "informative", "list_scorers"]


def get_scorer(name: str, **params: Any) -> Scorer:
    """A new, unfitted scorer registered as ``name``, built with ``params``.

    Raises:
        UnknownNameError: ``name`` is not registered (with a did-you-mean hint).
        ConfigError: ``params`` holds an option the scorer does not have.
    """
    cls = SCORERS.get(name)
    try:
        return cls(**params)
    except TypeError:
        known = ", ".join(cls().get_params()) or "none"
        unknown = ", ".join(sorted(set(params) - set(cls().get_params())))
        raise ConfigError(
            f"Scorer {name!r} got unknown option(s) {unknown}; its options are: {known}."
        ) from None


def list_scorers() -> list[tuple[str, str, str]]:
    """``(name, one-line summary, input_kind)`` for every registered scorer."""
    return [
        (name, (cls.__doc__ or "").strip().splitlines()[0], cls.input_kind)
        for name, cls in ((n, SCORERS.get(n)) for n in SCORERS.names())
    ]


def informative(
    scores: Mapping[str, Sequence[float | None]], num_classes: int
) -> dict[str, str | None]:
    """For each scorer name, why its values across the candidates cannot rank them, or None.

    Args:
        scores: Scorer name -> one value per candidate source on the same target task
            (``None`` where the candidate could not be scored).
        num_classes: The number of target classes ``C``.

    Returns:
        ``{name: reason or None}`` in the order of ``scores``; see ``Scorer.degenerate``.

    Raises:
        UnknownNameError: A name is not a registered scorer (with a did-you-mean hint).
        ConfigError: ``num_classes`` is not an integer >= 2.
    """
    return {
        name: get_scorer(name).degenerate(values, num_classes) for name, values in scores.items()
    }
