"""k-nearest-neighbour probe: cross-validated kNN accuracy on L2-normalised features.

Not a paper's metric but the standard cheap probe of feature quality, e.g. the weighted kNN
evaluation of Wu, Xiong, Yu, Lin (2018), "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", CVPR 2018, and of DINO (Caron et al., ICCV 2021).

Each example's features are scaled to unit length, so the Euclidean distance ranks
neighbours as cosine similarity does. Examples are split into shuffled stratified folds
(``folds``, capped at the smallest class count so every class appears in every fold); each
held-out example is classified by a majority vote of its ``k`` nearest training examples and
the score is the mean held-out accuracy, in [0, 1]. ``k`` is capped at the smallest training
fold. Results are deterministic for a fixed ``random_state``.

An all-zero feature row stays zero (it cannot be normalised); constant columns add the same
value to every vector and are harmless. All-constant features give a chance-level score.
``degenerate`` reports a set of candidates that all reach 1.0, or that are all at or below
chance ``1 / C``.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from transferkit.scoring.base import (
    SCORERS,
    Scorer,
    accuracy_saturation,
    check_positive_int,
    cv_accuracy,
    stratified_splits,
)


@SCORERS.register("knn")
class KNNProbe(Scorer):
    """Cross-validated k-nearest-neighbour accuracy on L2-normalised features.

    Args:
        k: Number of neighbours that vote.
        folds: Number of stratified folds (at most the smallest class count is used).
        random_state: Seed of the fold shuffling.
    """

    name = "knn"
    input_kind = "features"

    def __init__(self, k: int = 10, folds: int = 5, random_state: int = 0) -> None:
        self.k = k
        self.folds = folds
        self.random_state = random_state

    def _check_params(self) -> None:
        check_positive_int(self.k, "k")
        check_positive_int(self.folds, "folds", minimum=2)
        check_positive_int(self.random_state, "random_state", minimum=0)

    def _compute(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> float:
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.where(norms > 0, norms, 1.0)
        splits = stratified_splits(y, self.folds, self.random_state)
        k = min(self.k, min(len(train) for train, _ in splits))
        return cv_accuracy(KNeighborsClassifier(n_neighbors=k), X, y, splits)

    def _saturation(self, values: np.ndarray, n_classes: int) -> str | None:
        return accuracy_saturation(self.name, values, n_classes)
