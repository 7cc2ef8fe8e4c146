"""Regularized H-score: the H-score with a Ledoit-Wolf shrinkage covariance.

Reference:
    Shibal Ibrahim, Natalia Ponomareva, Rahul Mazumder (2022). "Newer is not always better:
    Rethinking transferability metrics, their peculiarities, stability and performance".
    ECML-PKDD 2022 (LNCS, 2023).

The method in our own words. The plain H-score inverts the sample covariance of the
features, which is noisy or singular when the dimension is large next to the number of
examples. The paper replaces it by the Ledoit-Wolf estimate on centred features::

    cov_a(f) = (1 - a) cov(f) + a * (tr cov(f) / D) * I

where the shrinkage ``a`` in [0, 1] is chosen in closed form (``sklearn.covariance.
ledoit_wolf``). To keep the two covariances on the same footing the between-class term is
shrunk by the same factor, giving::

    H_a = tr( cov_a(f)^-1  (1 - a) cov(E[f | y]) )

With ``a = 0`` this is the H-score. We use the ``1/N`` normalisation for both covariances
(the published code pairs sklearn's ``1/N`` covariance with ``np.cov``'s ``1/(N-1)`` for the
between-class term, so its values are ``N/(N-1)`` times ours; rankings are unchanged).

Numerics: ``cov_a(f)`` is positive definite whenever ``a > 0`` and some feature varies, so no
truncation happens in practice; the inverse still goes through the same eigen-decomposition
as ``hscore`` (``rcond``) to stay finite when ``a = 0``. Constant features are kept, as the
paper's estimator would: they carry no between-class part, but they lower the average
variance ``tr cov(f) / D`` used as the shrinkage target and so change ``a`` and the score
somewhat (still finite). All-constant features score exactly 0. When the features look
isotropic to Ledoit-Wolf (``a = 1``) the score is exactly 0 as well.
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import ledoit_wolf

from transferkit.errors import ConfigError
from transferkit.scoring.base import SCORERS, Scorer
from transferkit.scoring.hscore import trace_pinv_between


@SCORERS.register("regularized_hscore")
class RegularizedHScore(Scorer):
    """Regularized H-score (Ibrahim et al., ECML-PKDD 2022): H-score with Ledoit-Wolf shrinkage.

    Args:
        rcond: Relative eigenvalue cut-off of the inverse (only matters without shrinkage).

    Attributes:
        shrinkage_: The Ledoit-Wolf shrinkage ``a`` chosen by ``fit``.
    """

    name = "regularized_hscore"
    input_kind = "features"

    def __init__(self, rcond: float = 1e-10) -> None:
        self.rcond = rcond

    def _check_params(self) -> None:
        if not (isinstance(self.rcond, (int, float)) and 0 <= self.rcond < 1):
            raise ConfigError(f"`rcond` must be a number in [0, 1); got {self.rcond!r}.")

    def _compute(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> float:
        Xc = X - X.mean(axis=0)
        cov, shrinkage = ledoit_wolf(Xc, assume_centered=True)
        self.shrinkage_ = float(shrinkage)
        return (1.0 - shrinkage) * trace_pinv_between(cov, Xc, y, n_classes, self.rcond)
