"""H-score: how much of the feature variance lies between the target classes.

Reference:
    Yajie Bao, Yang Li, Shao-Lun Huang, Lin Zhang, Lizhong Zheng, Amir Zamir, Leonidas Guibas
    (2019). "An Information-theoretic Approach to Transferability in Task Transfer Learning".
    IEEE ICIP 2019.

The method in our own words. With ``f`` the features of an example and ``y`` its target
label, the H-score is::

    H = tr( cov(f)^+  cov(E[f | y]) )

``cov(E[f | y])`` is the covariance of the class-mean vectors (each example replaced by the
mean of its class), i.e. the between-class scatter ``sum_c p_c (mu_c - mu)(mu_c - mu)^T``.
The score is an information-theoretic measure of how well the best linear (whitened) read-out
of ``f`` separates the classes; it lies in ``[0, C - 1]``. Both covariances use the same
``1/N`` normalisation (the ``N/(N-1)`` factor of the sample covariance would cancel).

Numerics: ``cov(f)^+`` is a pseudo-inverse through the eigen-decomposition of ``cov(f)``;
eigenvalues below ``rcond * largest`` are treated as zero. Constant features (zero variance)
therefore carry no weight, and all-constant features score exactly 0. With few examples per
dimension (D close to or above N) the covariance is poorly estimated and H drifts towards its
maximum ``C - 1`` whatever the features; prefer ``regularized_hscore`` there.

Saturation. Once the centred features span all ``N - 1`` directions the examples allow
(``D >= N - 1``), the within-class and between-class scatter fill complementary subspaces, every
canonical correlation between features and labels is 1 and H is exactly ``C - 1`` (to ~1e-13 in
float64) for random and informative features alike. Measured with 7 classes x 10 examples
(N = 70): D = 10 gives 0.74 on noise and 3.64 on class-shifted features, D = 68 gives 5.932 and
5.937, and D >= 69 gives 6.000000000000 for both. ``degenerate`` reports a set of candidates that
all sit at ``C - 1`` (relative tolerance ``DEGENERATE_RTOL``); a score that ties every source
cannot rank them.
"""

from __future__ import annotations

import numpy as np

from transferkit.errors import ConfigError
from transferkit.scoring.base import SCORERS, Scorer, at_bound


@SCORERS.register("hscore")
class HScore(Scorer):
    """H-score (Bao et al., ICIP 2019): tr(cov(f)^+ cov(E[f|y])).

    Args:
        rcond: Eigenvalues of ``cov(f)`` below ``rcond`` times the largest are dropped by the
            pseudo-inverse (1e-10 keeps every direction resolvable in float64 while
            discarding round-off in rank-deficient covariances).
    """

    name = "hscore"
    input_kind = "features"

    def __init__(self, rcond: float = 1e-10) -> None:
        self.rcond = rcond

    def _check_params(self) -> None:
        if not (isinstance(self.rcond, (int, float)) and 0 <= self.rcond < 1):
            raise ConfigError(f"`rcond` must be a number in [0, 1); got {self.rcond!r}.")

    def _compute(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> float:
        Xc = X - X.mean(axis=0)
        cov = Xc.T @ Xc / len(X)
        return trace_pinv_between(cov, Xc, y, n_classes, self.rcond)

    def _saturation(self, values: np.ndarray, n_classes: int) -> str | None:
        if at_bound(values, n_classes - 1):
            return (
                f"{self.name} saturates at C-1 = {n_classes - 1} for every candidate; its "
                "feature covariance is rank-deficient at this many examples (feature dimension "
                "close to or above the number of examples), so it cannot rank the sources. "
                "Use regularized_hscore or logme, or score on more examples."
            )
        return None


def class_mean_offsets(
    Xc: np.ndarray, y: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class means of centred features (C, D) and class frequencies ``p_c`` (C,)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, Xc.shape[1]))
    np.add.at(sums, y, Xc)
    return sums / counts[:, None], counts / len(y)


def trace_pinv_between(
    cov: np.ndarray, Xc: np.ndarray, y: np.ndarray, n_classes: int, rcond: float
) -> float:
    """``tr(cov^+ B)`` with ``B = sum_c p_c m_c m_c^T`` the between-class covariance of the
    centred features ``Xc``; ``cov^+`` drops eigenvalues below ``rcond`` times the largest."""
    means, weights = class_mean_offsets(Xc, y, n_classes)
    w, V = np.linalg.eigh(cov)
    keep = w > rcond * max(w.max(), 0.0)
    if not keep.any():  # every feature constant: no class information
        return 0.0
    proj = means @ V[:, keep]  # (C, r) class means in the eigenbasis
    return float(np.sum(weights[:, None] * proj**2 / w[keep]))
