"""LEEP: the Log Expected Empirical Prediction of the source head on the target labels.

Reference:
    Cuong V. Nguyen, Tal Hassner, Matthias Seeger, Cedric Archambeau (2020). "LEEP: A New
    Measure to Evaluate Transferability of Learned Representations". ICML 2020 (PMLR 119).

The method in our own words. Let ``theta(x)`` be the source model's predicted distribution
over its own ``Z`` classes. Treating ``theta(x_i)`` as a soft "dummy label" ``z``, build the
empirical joint distribution of target label and dummy label::

    P(y, z) = 1/N * sum_{i : y_i = y} theta(x_i)_z,       P(z) = sum_y P(y, z)

and the conditional ``P(y | z) = P(y, z) / P(z)``. This defines a classifier for the target
task that needs no training: predict ``sum_z P(y | z) theta(x)_z``. LEEP is its average
log-likelihood on the target data::

    LEEP = 1/N * sum_i log( sum_z P(y_i | z) theta(x_i)_z )

It is at most 0; values near 0 mean the source's predictions already sort the target classes.
``degenerate`` reports a set of candidates that all score 0 (within ``DEGENERATE_RTOL``): the
bound is reached when the source classes that receive probability are each pure in one target
class (one-hot source outputs over more source classes than examples, say), which ties them.
Every term is finite: example ``i`` itself contributes to ``P(y_i, z)`` for each ``z`` with
``theta(x_i)_z > 0``. Source classes that never receive probability (``P(z) = 0``) are
ignored, since ``theta(x)_z = 0`` for every example.
"""

from __future__ import annotations

import numpy as np

from transferkit.scoring.base import SCORERS, Scorer, at_bound


@SCORERS.register("leep")
class LEEP(Scorer):
    """LEEP (Nguyen et al., ICML 2020): log-likelihood of the source head's soft labels."""

    name = "leep"
    input_kind = "probabilities"

    def __init__(self) -> None:
        pass

    def _compute(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> float:
        n = len(X)
        joint = np.zeros((n_classes, X.shape[1]))
        np.add.at(joint, y, X)
        joint /= n  # P(y, z)
        marginal = joint.sum(axis=0)  # P(z)
        cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
        eep = np.einsum("iz,iz->i", cond[y], X)  # sum_z P(y_i | z) theta(x_i)_z
        return float(np.mean(np.log(eep)))

    def _saturation(self, values: np.ndarray, n_classes: int) -> str | None:
        if at_bound(values, 0.0):
            return (
                f"{self.name} is 0 (its maximum) for every candidate: each source's probable "
                "classes are each pure in one target class, so it cannot rank the sources."
            )
        return None
