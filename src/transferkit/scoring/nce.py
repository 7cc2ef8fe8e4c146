"""NCE: the negative conditional entropy of the target labels given the source's predictions.

Reference:
    Anh T. Tran, Cuong V. Nguyen, Tal Hassner (2019). "Transferability and Hardness of
    Supervised Classification Tasks". ICCV 2019.

The method in our own words. The source model labels each target example with its own hard
prediction ``z_i = argmax_z theta(x_i)_z`` (ties go to the lowest source class). From the
pairs ``(y_i, z_i)`` form the empirical joint ``P(y, z)`` (counts / N) and ``P(z)``. The
score is minus the conditional entropy of the target label given the source label::

    NCE = -H(Y | Z) = sum_{y, z} P(y, z) log( P(y, z) / P(z) )

with ``0 log 0 = 0``. It is at most 0, reached when every source label maps to a single
target class; ``-H(Y)`` means the source predictions say nothing about the target classes.
A source with many more classes than there are target examples reaches 0 trivially (almost
every example gets a source class of its own), so ``degenerate`` reports a set of candidates
that all score 0 (within ``DEGENERATE_RTOL``); all at ``-H(Y)`` is caught by the equal-values
rule.
"""

from __future__ import annotations

import numpy as np

from transferkit.scoring.base import SCORERS, Scorer, at_bound


@SCORERS.register("nce")
class NCE(Scorer):
    """NCE (Tran et al., ICCV 2019): -H(target label | source's argmax label)."""

    name = "nce"
    input_kind = "probabilities"

    def __init__(self) -> None:
        pass

    def _compute(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> float:
        z = np.argmax(X, axis=1)
        joint = np.zeros((n_classes, X.shape[1]))
        np.add.at(joint, (y, z), 1.0)
        joint /= len(X)  # P(y, z)
        marginal = joint.sum(axis=0, keepdims=True)  # P(z)
        seen = joint > 0  # 0 log 0 = 0; P(z) > 0 wherever P(y, z) > 0
        cond = joint[seen] / np.broadcast_to(marginal, joint.shape)[seen]  # P(y | z)
        return float(np.sum(joint[seen] * np.log(cond)))

    def _saturation(self, values: np.ndarray, n_classes: int) -> str | None:
        if at_bound(values, 0.0):
            return (
                f"{self.name} is 0 (its maximum) for every candidate: each source's predicted "
                "classes split the target examples into pure groups (common when a source has "
                "many more classes than there are target examples), so it cannot rank the sources."
            )
        return None
