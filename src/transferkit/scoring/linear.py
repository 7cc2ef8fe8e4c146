"""Linear probe: cross-validated logistic-regression accuracy on standardised features.

Not a paper's metric but the standard "linear evaluation" of a representation, e.g. in
Kornblith, Shlens, Le (2019), "Do Better ImageNet Models Transfer Better?", CVPR 2019.

Each feature is standardised (zero mean, unit variance, fitted on the training folds only)
and an L2-regularised multinomial logistic regression (inverse strength ``C``) is trained on
shuffled stratified folds (``folds``, capped at the smallest class count). The score is the
mean held-out accuracy, in [0, 1], and is deterministic for a fixed ``random_state``.
Constant features are left at zero by the scaler and ignored by the model. It is the slowest
scorer (one optimisation per fold) but the closest to what a frozen-backbone fine-tune does.
``degenerate`` reports a set of candidates that all reach 1.0, or that are all at or below
chance ``1 / C``.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transferkit.errors import ConfigError
from transferkit.scoring.base import (
    SCORERS,
    Scorer,
    accuracy_saturation,
    check_positive_int,
    cv_accuracy,
    stratified_splits,
)


@SCORERS.register("linear")
class LinearProbe(Scorer):
    """Cross-validated logistic-regression probe accuracy on standardised features.

    Args:
        C: Inverse L2 regularisation strength of the logistic regression.
        folds: Number of stratified folds (at most the smallest class count is used).
        max_iter: Most L-BFGS iterations per fold.
        random_state: Seed of the fold shuffling.
    """

    name = "linear"
    input_kind = "features"

    def __init__(
        self, C: float = 1.0, folds: int = 5, max_iter: int = 1000, random_state: int = 0
    ) -> None:
        self.C = C
        self.folds = folds
        self.max_iter = max_iter
        self.random_state = random_state

    def _check_params(self) -> None:
        if not (isinstance(self.C, (int, float)) and self.C > 0):
            raise ConfigError(f"`C` must be a positive number; got {self.C!r}.")
        check_positive_int(self.folds, "folds", minimum=2)
        check_positive_int(self.max_iter, "max_iter")
        check_positive_int(self.random_state, "random_state", minimum=0)

    def _compute(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> float:
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter)
        )
        splits = stratified_splits(y, self.folds, self.random_state)
        return cv_accuracy(model, X, y, splits)

    def _saturation(self, values: np.ndarray, n_classes: int) -> str | None:
        return accuracy_saturation(self.name, values, n_classes)
