"""LogME: the log of the maximum Bayesian evidence of a linear model on the features.

Reference:
    Kaichao You, Yong Liu, Jianmin Wang, Mingsheng Long (2021). "LogME: Practical Assessment
    of Pre-trained Models for Transfer Learning". ICML 2021 (PMLR 139).

The method in our own words. For each target class ``k`` the one-vs-rest indicator vector
``y`` (N,) is modelled as ``y = F w + noise`` with a Gaussian prior ``w ~ N(0, I/alpha)`` and
Gaussian noise of precision ``beta``. Integrating ``w`` out gives the evidence
``p(y | F, alpha, beta)``, whose log is, with ``A = alpha I + beta F^T F`` and the posterior
mean ``m = beta A^-1 F^T y``::

    L = N/2 log beta + D/2 log alpha - N/2 log 2pi
        - beta/2 ||F m - y||^2 - alpha/2 ||m||^2 - 1/2 log det A

``alpha`` and ``beta`` are chosen to maximise ``L`` by the fixed-point iteration of the
paper's Algorithm 1: with ``gamma = sum_i beta s_i / (alpha + beta s_i)`` over the
eigenvalues ``s_i`` of ``F^T F``, set ``alpha = gamma / ||m||^2`` and
``beta = (N - gamma) / ||F m - y||^2`` until they settle. The score is ``L / N`` averaged over
the classes. Higher means the labels are explained by a simpler linear model on the features.

Rank-deficient features (D > N, duplicated or constant columns) are handled exactly: with the
thin decomposition ``F = U S V^T`` over the ``r`` nonzero singular values, the null-space
directions of ``F^T F`` add ``(D - r) log alpha`` to ``log det A``, which cancels against
``D/2 log alpha``, leaving ``-1/2 sum_{i<=r} log(1 + beta s_i / alpha)``; the residual
``||F m - y||^2`` splits into the ``r`` in-span components, shrunk by
``alpha / (alpha + beta s_i)``, plus the part of ``y`` outside the column space of ``F``
(zero when ``r == N``). The published reference code instead keeps ``D/2 log alpha`` while
summing ``log det A`` over only ``min(N, D)`` values, and can return NaN when D > N. Constant
(or all-zero) columns therefore need no special treatment; the features are not centred,
as in the paper, so a constant column acts as a bias term.

The maximum can lie on a boundary: ``beta -> inf`` when a class's labels are (almost) exactly
linear in F (common for D >= N), ``alpha -> inf`` when F says nothing about the class. The
iteration then moves ``alpha / beta`` geometrically towards 0 or infinity; we clip it where
the evidence has reached its limit to ~1e-10 and evaluate ``L`` there, so the score is the
supremum rather than NaN or an overflow.

``degenerate`` applies only the default rule (the same value for every candidate): the
supremum above has no fixed bound that does not depend on the features.

Cost: one Gram matrix on the smaller side (``F^T F`` if D <= N, else ``F F^T``) and its
eigen-decomposition; the iteration runs on all classes at once in the eigenbasis.
"""

from __future__ import annotations

import numpy as np

from transferkit.errors import ConfigError
from transferkit.scoring.base import SCORERS, Scorer, check_positive_int


@SCORERS.register("logme")
class LogME(Scorer):
    """LogME (You et al., ICML 2021): per-example log maximum evidence of a linear model.

    Args:
        max_iter: Most fixed-point iterations for ``alpha`` and ``beta``. Most classes settle
            in 10-70; when the optimum is on a boundary (e.g. ``beta -> inf`` for D > N) the
            iteration approaches it geometrically, and 1000 steps put the evidence within
            ~1e-8 of its supremum.
        tol: A class stops once the relative change of ``alpha / beta`` is below ``tol``.
    """

    name = "logme"
    input_kind = "features"

    def __init__(self, max_iter: int = 1000, tol: float = 1e-8) -> None:
        self.max_iter = max_iter
        self.tol = tol

    def _check_params(self) -> None:
        check_positive_int(self.max_iter, "max_iter")
        if not (isinstance(self.tol, (int, float)) and 0 < self.tol < 1):
            raise ConfigError(f"`tol` must be a number in (0, 1); got {self.tol!r}.")

    def _compute(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> float:
        n, d = X.shape
        Y = np.eye(n_classes)[y]  # (N, C) one-hot targets
        s, z, out = _spectrum(X, Y)
        if len(s) == 0:  # all-zero features: no signal part, only the noise precision
            beta = n / out
            evidence = 0.5 * n * (np.log(beta) - np.log(2 * np.pi) - 1.0)
            return float(np.mean(evidence) / n)
        # The state is lam = alpha / beta. It is kept inside a range where every term stays
        # accurate; the optimum can lie on the boundary (beta -> inf: labels exactly in the
        # span of F; alpha -> inf: F useless for that class), where the evidence has reached
        # its limit to ~1e-10 long before lam leaves the range.
        lam_min, lam_max = s.min() * 1e-10, s.max() * 1e10
        lam = np.clip(np.ones(n_classes), lam_min, lam_max)  # alpha = beta = 1 as in the paper
        active = np.arange(n_classes)  # classes still moving
        for _ in range(self.max_iter):
            alpha, beta = _update(n, s, z[:, active], out[active], lam[active])
            new_lam = np.clip(alpha / beta, lam_min, lam_max)
            moving = np.abs(new_lam - lam[active]) > self.tol * lam[active]
            lam[active] = new_lam
            active = active[moving]
            if active.size == 0:
                break
        # At a fixed point alpha / beta == lam. On a boundary only one of the two is
        # determined, so evaluate both consistent pairs and keep the larger evidence.
        alpha, beta = _update(n, s, z, out, lam)
        evidence = np.maximum(
            _log_evidence(n, s, z, out, alpha, alpha / lam),
            _log_evidence(n, s, z, out, lam * beta, beta),
        )
        return float(np.mean(evidence) / n)


def _spectrum(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nonzero eigenvalues ``s`` (r,) of ``X^T X``, targets in the left singular basis
    ``z = U^T Y`` (r, C) and the squared norm of ``Y`` outside the column space (C,)."""
    n, d = X.shape
    if d <= n:
        s, V = np.linalg.eigh(X.T @ X)
        keep = s > s.max() * max(n, d) * np.finfo(float).eps
        s, V = s[keep], V[:, keep]
        z = (V.T @ (X.T @ Y)) / np.sqrt(s)[:, None]
        out = np.maximum((Y**2).sum(axis=0) - (z**2).sum(axis=0), 0.0)
    else:
        s, U = np.linalg.eigh(X @ X.T)
        keep = s > s.max() * max(n, d) * np.finfo(float).eps
        proj = U.T @ Y
        s, z = s[keep], proj[keep]
        out = (proj[~keep] ** 2).sum(axis=0)
    return s, z, out


def _stats(
    s: np.ndarray, z: np.ndarray, out: np.ndarray, lam: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``gamma``, ``||m||^2`` and ``||F m - y||^2`` per class for ``lam = alpha / beta``."""
    denom = s[:, None] + lam  # (r, C)
    gamma = (s[:, None] / denom).sum(axis=0)
    mm = (s[:, None] * z**2 / denom**2).sum(axis=0)
    res2 = ((lam / denom) ** 2 * z**2).sum(axis=0) + out
    return gamma, mm, res2


def _update(
    n: int, s: np.ndarray, z: np.ndarray, out: np.ndarray, lam: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One fixed-point step: new ``alpha`` and ``beta`` per class."""
    gamma, mm, res2 = _stats(s, z, out, lam)
    tiny = np.finfo(float).tiny
    return gamma / np.maximum(mm, tiny), (n - gamma) / np.maximum(res2, tiny)


def _log_evidence(
    n: int, s: np.ndarray, z: np.ndarray, out: np.ndarray, alpha: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """``L(alpha, beta)`` per class, with the null-space terms of ``log det A`` cancelled."""
    lam = alpha / beta
    _, mm, res2 = _stats(s, z, out, lam)
    return (
        0.5 * n * (np.log(beta) - np.log(2 * np.pi))
        - 0.5 * np.log1p(s[:, None] / lam).sum(axis=0)
        - 0.5 * beta * res2
        - 0.5 * alpha * mm
    )
