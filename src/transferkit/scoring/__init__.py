"""Transferability scorers: rank pretrained sources for a target task before fine-tuning.

Each scorer is a small scikit-learn-style estimator: construct it with hyperparameters, call
``fit(X, y)`` with what the source produces on the target examples and the target labels,
then read ``score_`` (higher = better expected transfer)::

    from transferkit.scoring import get_scorer
    score = get_scorer("logme").fit(features, labels).score_

``input_kind`` says what ``X`` must be: ``"features"`` (N x D embeddings) or
``"probabilities"`` (N x source classes, the source head's softmax output).
"""

from __future__ import annotations

from typing import Any

from transferkit.errors import ConfigError
from transferkit.scoring.base import SCORERS, Scorer

__all__ = ["SCORERS", "Scorer", "get_scorer", "list_scorers"]


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
