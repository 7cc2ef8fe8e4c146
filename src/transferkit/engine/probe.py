"""Linear heads fitted as convex problems: L2-regularised multinomial logistic regression.

A linear head on frozen features has one optimum, and scikit-learn's L-BFGS reaches it in well
under a second; mini-batch AdamW needs tens of epochs and a learning rate to get near it. The
one hyper-parameter is the L2 strength (``C``, the inverse). It is chosen on the validation
split when that split is large enough to choose on (``validation_is_meaningful``), otherwise by
stratified k-fold cross-validation over train + val, scoring the held-out log-loss. The final
head is then fitted on train + val (``refit``) or on train alone (when a later stage selects
on val and must not have seen it).

Features are standardised with the moments of train + val and, when there are more features
than examples, fitted in coordinates of the examples' span (``_SpanSpace``); both maps are
folded back into the weights, so the result is an exact ``nn.Linear`` on the raw features.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch

#: ``C`` values tried (sklearn's inverse L2 strength, on standardised features), strongest first.
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: The ``C`` used when there are too few examples per class to cross-validate.
DEFAULT_C = 0.1
#: Fewest validation examples, and examples per class, that the validation split needs to be
#: trusted with a choice (of a ``C``, or of the best epoch). Below, one example is >2 points of
#: accuracy and the "best" of several fits is mostly the luckiest.
MIN_VAL_EXAMPLES, MIN_VAL_PER_CLASS = 50, 5
MAX_FOLDS = 5
#: Folds of ``cross_validate_head``: every example is still predicted once; 3 fits of 2/3 of the
#: data cost half of 5 fits of 4/5, and a candidate's accuracy is compared on the same folds.
CV_FOLDS = 3


def one_blas_thread(fit):
    """Runs ``fit`` with one BLAS thread. Heads and baselines are small problems (hundreds to a few
    thousand examples), where threads gain nothing and spinning ones cost a lot: after the torch
    forward passes of a selection, the cross-validated probe of 401 examples (19 L-BFGS fits)
    took 6.5 s with OpenBLAS's 2 threads on 2 cores and 0.4 s with one; on a busy machine a
    320 x 1024 logistic regression was 40x slower with threads."""

    @functools.wraps(fit)
    def run(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return fit(*args, **kwargs)

    return run


def validation_is_meaningful(val_labels: np.ndarray, num_classes: int) -> bool:
    """True when the validation split has at least ``MIN_VAL_EXAMPLES`` examples and
    ``MIN_VAL_PER_CLASS`` per class on average: enough to choose between fits on it."""
    n = len(val_labels)
    return n >= max(MIN_VAL_EXAMPLES, MIN_VAL_PER_CLASS * num_classes)


@dataclass
class LinearFit:
    """A fitted head and how it was chosen (recorded in the run's stages)."""

    weight: torch.Tensor  # (num_classes, features)
    bias: torch.Tensor  # (num_classes,)
    c: float
    chosen_by: str  # "validation", "k-fold cross-validation" or "default (...)"
    curve: list[list[float]]  # [[C, held-out log-loss], ...]
    fitted_on: int  # examples in the final fit
    train_loss: float  # log-loss of the final head on the examples it was fitted on
    val_accuracy: float | None  # of the head fitted on train alone (held out); None without val
    val_loss: float | None

    def record(self) -> dict:
        return {"solver": "lbfgs logistic regression", "l2_c": self.c, "c_chosen_by": self.chosen_by,
                "c_curve": self.curve, "fitted_on": self.fitted_on, "train_loss": self.train_loss}


@one_blas_thread
def fit_linear_head(x_train: torch.Tensor, y_train: np.ndarray, x_val: torch.Tensor, y_val: np.ndarray,
                    num_classes: int, *, refit: bool = True, seed: int = 0) -> LinearFit:
    """Fits a ``num_classes``-way linear head on features; ``C`` chosen as the module describes.

    ``val_accuracy`` is always that of the head fitted on train alone, so it stays a held-out
    figure when the returned head was refitted on train + val.
    """
    xt, xv = _as_float64(x_train), _as_float64(x_val)
    yt, yv = np.asarray(y_train, dtype=np.int64), np.asarray(y_val, dtype=np.int64)
    space = _SpanSpace(np.concatenate([xt, xv]))
    z, y_all = space.coordinates, np.concatenate([yt, yv])
    zt, zv = z[:len(yt)], z[len(yt):]
    if len(yv) and validation_is_meaningful(yv, num_classes):
        curve = [[c, loss] for c, loss in zip(C_GRID, _path_losses(zt, yt, zv, yv, num_classes))]
        chosen_by = "validation"
    else:
        folds = _folds(y_all, seed)
        if folds:
            losses = np.mean([_path_losses(z[a], y_all[a], z[b], y_all[b], num_classes) for a, b in folds], axis=0)
            curve, chosen_by = [[c, float(loss)] for c, loss in zip(C_GRID, losses)], f"{len(folds)}-fold cross-validation"
        else:
            curve, chosen_by = [], "default (too few examples per class to cross-validate)"
    c = min(curve, key=lambda point: point[1])[0] if curve else DEFAULT_C
    w, b = _full_rows(_fit(None, zt, yt, c), num_classes, z.shape[1])
    val_logits = zv @ w.T + b
    val_accuracy, val_loss = (float((val_logits.argmax(1) == yv).mean()), _log_loss(val_logits, yv)) if len(yv) \
        else (None, None)
    z_fit, y_fit = (z, y_all) if refit and len(yv) else (zt, yt)
    if z_fit is z:
        w, b = _full_rows(_fit(None, z, y_all, c), num_classes, z.shape[1])
    weight, bias = space.raw_head(w, b)
    return LinearFit(torch.from_numpy(weight).float(), torch.from_numpy(bias).float(), float(c), chosen_by, curve,
                     len(y_fit), _log_loss(z_fit @ w.T + b, y_fit), val_accuracy, val_loss)


@dataclass
class CrossValidatedHead:
    """How well a linear head on these features generalises: out-of-fold over train + val.

    Every example is predicted by a head fitted on the folds that do not hold it, with the ``C``
    whose mean held-out log-loss is lowest; two feature sets cross-validated with the same labels
    and seed get the same folds, so their ``correct`` vectors pair example by example.
    """

    accuracy: float  # out-of-fold accuracy over every example
    fold_accuracies: list[float]
    correct: np.ndarray  # (N,) bool, out of fold, in the order of train then val
    c: float
    val_accuracy: float | None  # the head fitted on train alone at ``c``, on val (None without val)

    def record(self) -> dict:
        return {"cv_accuracy": self.accuracy, "cv_fold_accuracies": self.fold_accuracies, "cv_l2_c": self.c,
                "probe_val_accuracy": self.val_accuracy}


@one_blas_thread
def cross_validate_head(x_train: torch.Tensor | np.ndarray, y_train: np.ndarray, x_val: torch.Tensor | np.ndarray,
                        y_val: np.ndarray, num_classes: int, *, seed: int = 0,
                        folds: int = CV_FOLDS) -> CrossValidatedHead | None:
    """Stratified k-fold cross-validation (up to ``folds``) of the convex head over train + val
    (``C`` from ``C_GRID`` by held-out log-loss); None when a class has a single example."""
    xt, xv = _as_float64(torch.as_tensor(x_train)), _as_float64(torch.as_tensor(x_val))
    yt, yv = np.asarray(y_train, dtype=np.int64), np.asarray(y_val, dtype=np.int64)
    x, y = _SpanSpace(np.concatenate([xt, xv])).coordinates, np.concatenate([yt, yv])
    folds = _folds(y, seed, folds)
    if not folds:
        return None
    predictions = np.zeros((len(C_GRID), len(y)), dtype=np.int64)
    losses = np.zeros((len(folds), len(C_GRID)))
    for k, (a, b) in enumerate(folds):
        model = None
        for j, c in enumerate(C_GRID):
            model = _fit(model, x[a], y[a], c)
            w, bias = _full_rows(model, num_classes, x.shape[1])
            logits = x[b] @ w.T + bias
            losses[k, j] = _log_loss(logits, y[b])
            predictions[j, b] = logits.argmax(1)
    best = int(losses.mean(0).argmin())
    correct = predictions[best] == y
    val_accuracy = None
    if len(yv):
        w, bias = _full_rows(_fit(None, x[:len(yt)], yt, C_GRID[best]), num_classes, x.shape[1])
        val_accuracy = float(((x[len(yt):] @ w.T + bias).argmax(1) == yv).mean())
    return CrossValidatedHead(float(correct.mean()), [float(correct[b].mean()) for _, b in folds], correct,
                              float(C_GRID[best]), val_accuracy)


class _SpanSpace:
    """Standardised features in coordinates of the examples' span, and the way back to raw features.

    The moments are those of every example given (train and val: they use no label). An
    L2-regularised linear model's weights lie in the span of the examples it is fitted on (the
    representer theorem), so with more features than examples, fits in these coordinates give the
    same predictions with N instead of D weights per class: 200 examples of 1,280-d features are
    fitted 6x faster, and any subset of the examples (a fold, train alone) is covered too.

    A feature whose spread is below float32's resolution at its magnitude is treated as constant
    (weight 0, ``_moments``): dividing by it would give float32 logits a huge weight times its mean.
    """

    def __init__(self, x: np.ndarray) -> None:
        self.mean, self.std = _moments(x)
        z = (x - self.mean) / self.std
        self.basis = None  # (rank, D): the span's orthonormal rows in standardised feature space
        if z.shape[1] > z.shape[0]:
            u, singular, self.basis = np.linalg.svd(z, full_matrices=False)
            z = u * singular
        self.coordinates = z

    def raw_head(self, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) on the raw features of a head fitted on ``coordinates``."""
        w = (w @ self.basis if self.basis is not None else w) / self.std
        return w, b - w @ self.mean


def _path_losses(x_fit: np.ndarray, y_fit: np.ndarray, x_held: np.ndarray, y_held: np.ndarray,
                 num_classes: int) -> list[float]:
    """Held-out log-loss of each ``C`` in ``C_GRID``, fitted along the path with warm starts."""
    losses, model = [], None
    for c in C_GRID:
        model = _fit(model, x_fit, y_fit, c)
        w, b = _full_rows(model, num_classes, x_fit.shape[1])
        losses.append(_log_loss(x_held @ w.T + b, y_held))
    return losses


def _fit(model, x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:  # one class seen: a constant head that predicts it
        return _Constant(int(y[0]))
    if model is None or isinstance(model, _Constant):
        model = LogisticRegression(C=c, max_iter=500, warm_start=True)
    model.set_params(C=c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a near-optimum after max_iter is fine for a head
        return model.fit(x, y)


@dataclass
class _Constant:
    label: int


def _full_rows(model, num_classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) with one row per class; classes missing from the fit never win."""
    if isinstance(model, _Constant):
        w = np.zeros((num_classes, dim))
        b = np.full(num_classes, -30.0)
        b[model.label] = 0.0
        return w, b
    coef, intercept, classes = model.coef_, model.intercept_, model.classes_
    if len(classes) == 2:  # sklearn's binary form: one row for classes_[1]; split it symmetrically
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    w = np.zeros((num_classes, coef.shape[1]))
    b = np.full(num_classes, intercept.min() - 30.0)
    w[classes], b[classes] = coef, intercept
    return w, b


def _log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(1, keepdims=True)
    log_proba = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_proba[np.arange(len(y)), y].mean())


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and spread; ``inf`` spread (the feature standardises to 0) where it is
    below float32's resolution at the feature's magnitude."""
    mean, std = x.mean(0), x.std(0)
    return mean, np.where(std > 1e-6 * np.maximum(1.0, np.abs(mean)), std, np.inf)


def _folds(y: np.ndarray, seed: int, most: int = MAX_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds over the classes present (up to ``most``); [] when a class has one example."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k = min(most, int(counts[counts > 0].min()) if len(y) else 0)
    if k < 2 or len(np.unique(y)) < 2:
        return []
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def stratified_folds(y: np.ndarray, seed: int = 0, most: int = MAX_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (fit, held-out) index pairs ``fit_linear_head`` cross-validates on when the validation split
    is not meaningful (``cross_validate_head`` with ``most=CV_FOLDS``): stratified, up to ``most``,
    seeded; [] when a class has a single example. For other models evaluated on the same folds
    (``evaluation/baseline.py``, ``selection``'s fold check)."""
    return _folds(np.asarray(y, dtype=np.int64), seed, most)


def _as_float64(x: torch.Tensor) -> np.ndarray:
    x = x.detach().to("cpu", torch.float64).numpy()
    return x.reshape(len(x), -1) if x.ndim != 2 else x

