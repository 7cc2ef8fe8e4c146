"""The ``Scorer`` base class: input checks, label mapping and fitted attributes.

A scorer estimates, before any fine-tuning, how well a pretrained source will transfer to a
labelled target task. It looks at what the source produces on the target examples (features,
or class probabilities of the source head) together with the target labels, and returns one
number: higher means better expected transfer. Scores are comparable between sources on the
same target data, not between different scorers or different target tasks.

``Scorer.degenerate`` looks at one scorer's values across the candidate sources and says when
they cannot rank them: every finite value the same, or (per scorer, through
``_saturation``) every value at a bound the score reaches for reasons unrelated to transfer.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from transferkit._registry import Registry
from transferkit.errors import ConfigError, DataError, NotFittedError

#: Every scorer class, by name (``transferkit scorers`` lists them).
SCORERS: Registry[type[Scorer]] = Registry("scorer", help_command="scorers", plugins=("transferkit.scoring",))

#: How far a probability row's sum may be from 1 (float16/float32 softmax outputs drift).
PROB_SUM_ATOL = 1e-3

#: ``Scorer.degenerate``: candidates' scores this close (relative to the largest magnitude,
#: plus ``1e-12`` absolute) count as "the same value", and a score this close to a bound
#: (relative to ``max(1, |bound|)``) counts as "at the bound". Saturation is an algebraic
#: identity computed in float64 (the H-score at ``C - 1`` lands within ~1e-13), while real
#: differences between sources are orders of magnitude larger.
DEGENERATE_RTOL = 1e-6


class Scorer:
    """Base class of transferability scorers, in scikit-learn style.

    ``__init__`` only stores hyperparameters; ``fit(X, y)`` checks the data, maps the labels
    to ``0..C-1`` and computes the score. Subclasses set ``name``, ``input_kind`` and
    implement ``_compute``; they may override ``_check_params`` to validate hyperparameters.

    Attributes:
        score_: The transferability score (float, higher is better).
        classes_: The distinct target labels, sorted; label ``classes_[i]`` is class ``i``.
        n_features_in_: Number of columns of ``X`` seen by ``fit``.
    """

    name: ClassVar[str] = ""
    #: "features" (N x D embeddings) or "probabilities" (N x source classes, rows sum to 1).
    input_kind: ClassVar[str] = "features"
    #: The score does not change when ``X`` is multiplied by a positive constant, so ``fit``
    #: divides ``X`` by ``max |X|`` first; this keeps squares and Gram matrices of very large
    #: or very small features inside float64 range.
    scale_invariant: ClassVar[bool] = True

    def fit(self, X: Any, y: Any) -> Scorer:
        """Checks ``X`` and ``y``, computes the score and stores it in ``score_``.

        Args:
            X: Array of shape (n_examples, n_features), or (n_examples, n_source_classes)
                holding probabilities when ``input_kind == "probabilities"``.
            y: Target labels, shape (n_examples,); any hashable, sortable values.

        Returns:
            self, with ``score_``, ``classes_`` and ``n_features_in_`` set.

        Raises:
            DataError: The data cannot be scored (shape, NaN, too few classes or examples,
                probabilities that do not sum to 1, or a non-finite result).
            ConfigError: A hyperparameter is out of range.
        """
        self._check_params()
        X = _check_X(X, self.input_kind)
        classes, y_idx = _check_y(y, len(X))
        if self.input_kind == "features" and self.scale_invariant:
            top = np.abs(X).max()
            X = X / top if top > 0 else X
        try:
            score = float(self._compute(X, y_idx, len(classes)))
        except np.linalg.LinAlgError as e:
            raise DataError(
                f"{self.name} failed on `X` of shape {X.shape}: {e}. The features are "
                "numerically degenerate; check them for extreme values."
            ) from None
        if not np.isfinite(score):
            raise DataError(
                f"{self.name} gave a non-finite score ({score}) for `X` of shape {X.shape}; "
                "the features are numerically degenerate (e.g. huge values). Rescale `X` "
                "or use another scorer."
            )
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self.score_ = score
        return self

    def _compute(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> float:
        """Returns the score for float64 ``X`` (N, D) and int labels ``y`` in ``0..C-1``."""
        raise NotImplementedError

    def degenerate(self, values: Sequence[float | None], num_classes: int) -> str | None:
        """Why this scorer's values across candidate sources cannot rank them, or None.

        ``values`` holds one score per candidate on the same target task (``None``, NaN and
        infinities, i.e. candidates that could not be scored, are ignored); ``num_classes``
        is the number of target classes ``C``. Checked in order:

        1. the scorer's own bound (``_saturation``): every finite value sits at a bound the
           score reaches whatever the source, e.g. the H-score at ``C - 1`` when its feature
           covariance is rank-deficient (see each scorer's module docstring);
        2. every finite value is the same, within ``DEGENERATE_RTOL`` (two or more values).

        Returns:
            A human-readable sentence that starts with the scorer's name (e.g. "hscore
            saturates at C-1 = 6 for every candidate; ..."), or None when the values carry
            information (or fewer than two candidates have a finite value and none is at a
            bound). With no finite value at all the sentence says so.

        Raises:
            ConfigError: ``num_classes`` is not an integer >= 2.
        """
        check_positive_int(num_classes, "num_classes", minimum=2)
        finite = np.array(
            [float(v) for v in values if v is not None and np.isfinite(float(v))], dtype=np.float64
        )
        if finite.size == 0:
            return f"{self.name} scored no candidate (every value is missing or non-finite)."
        reason = self._saturation(finite, int(num_classes))
        if reason is not None:
            return reason
        if finite.size >= 2:
            spread = finite.max() - finite.min()
            if spread <= DEGENERATE_RTOL * np.abs(finite).max() + 1e-12:
                return (
                    f"{self.name} gives the same value ({finite[0]:.6g}) for every candidate "
                    f"({finite.size} scored), so it cannot rank them."
                )
        return None

    def _saturation(self, values: np.ndarray, n_classes: int) -> str | None:
        """Why the finite ``values`` (one or more) all sit at a bound of the score that says
        nothing about transfer, or None; scorers with such a bound override this."""
        return None

    def _check_params(self) -> None:
        """Raises ``ConfigError`` for out-of-range hyperparameters (called by ``fit``)."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyperparameters given to ``__init__``, by name."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: fitted attributes before ``fit``.
        if name.endswith("_") and not name.startswith("_"):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet; call `fit(X, y)` first, then "
                f"read `{name}`."
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def stratified_splits(
    y: np.ndarray, folds: int, random_state: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled stratified folds for labels ``0..C-1``; ``folds`` is capped at the smallest
    class count so every class appears in every fold."""
    from sklearn.model_selection import StratifiedKFold

    n_splits = int(min(folds, np.bincount(y).min()))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    return list(cv.split(np.zeros((len(y), 1)), y))


def cv_accuracy(model: Any, X: np.ndarray, y: np.ndarray, splits: list) -> float:
    """Mean held-out accuracy of the scikit-learn classifier ``model`` over ``splits``."""
    from sklearn.model_selection import cross_val_score

    return float(np.mean(cross_val_score(model, X, y, cv=splits, scoring="accuracy")))


def at_bound(values: np.ndarray, bound: float) -> bool:
    """Whether every value is within ``DEGENERATE_RTOL * max(1, |bound|)`` of ``bound``."""
    return bool(np.all(np.abs(values - bound) <= DEGENERATE_RTOL * max(1.0, abs(bound))))


def accuracy_saturation(name: str, values: np.ndarray, n_classes: int) -> str | None:
    """The bounds of a held-out accuracy in [0, 1] (``knn``, ``linear``): every candidate at
    1.0, or none above the chance level ``1 / C`` of balanced classes (with unbalanced classes
    the majority-class rate is higher, so this flags fewer sets than it could)."""
    if at_bound(values, 1.0):
        return (
            f"{name} reaches accuracy 1.0 (its maximum) for every candidate: the target task is "
            "too easy at this many examples to tell the sources apart."
        )
    chance = 1.0 / n_classes
    if np.all(values <= chance + DEGENERATE_RTOL):
        return (
            f"{name} is at or below chance (1/C = {chance:.4g}) for every candidate: no "
            "source's features separate the target classes at this many examples."
        )
    return None


def check_positive_int(value: Any, name: str, minimum: int = 1) -> None:
    """Raises ``ConfigError`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")


def _check_X(X: Any, input_kind: str) -> np.ndarray:
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(
            f"`X` must be a numeric array of shape (n_examples, n_features); "
            f"could not convert it to float ({e})."
        ) from None
    if X.ndim != 2:
        hint = " Use `X.reshape(-1, 1)` for a single feature." if X.ndim == 1 else ""
        raise DataError(
            f"`X` must be a 2-D array of shape (n_examples, n_features); got shape "
            f"{X.shape}.{hint}"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"`X` is empty (shape {X.shape}); it needs examples and features.")
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"`X` contains {int(bad.sum())} NaN or infinite value(s), the first at row {row}, "
            f"column {col} ({X[row, col]}); remove or impute them before scoring."
        )
    if input_kind == "probabilities":
        X = _check_probabilities(X)
    return X


def _check_probabilities(P: np.ndarray) -> np.ndarray:
    if (P < 0).any():
        row = int(np.argwhere(P < 0)[0, 0])
        raise DataError(
            f"`X` must hold the source head's class probabilities (non-negative rows summing "
            f"to 1), but row {row} has a negative value ({P[row].min():.4g}). Pass "
            "softmax(logits), not the logits."
        )
    sums = P.sum(axis=1)
    off = np.abs(sums - 1.0) > PROB_SUM_ATOL
    if off.any():
        row = int(np.argmax(off))
        raise DataError(
            f"`X` must hold the source head's class probabilities (rows summing to 1), but "
            f"row {row} sums to {sums[row]:.4g}. Apply a softmax over the source classes first."
        )
    return P / sums[:, None]


def _check_y(y: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    if y.ndim != 1:
        hint = (
            " Use `y.ravel()`." if y.ndim == 2 and y.shape[1] == 1
            else " Pass class labels, e.g. `y.argmax(axis=1)` for one-hot rows."
        )
        raise DataError(f"`y` must be a 1-D array of labels; got shape {y.shape}.{hint}")
    if len(y) != n_rows:
        raise DataError(
            f"`y` must have one label per row of `X`: got {len(y)} labels for {n_rows} rows."
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError("`y` contains NaN or infinite labels; drop those examples first.")
    try:
        classes, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    except TypeError:
        raise DataError(
            "`y` mixes label types that cannot be sorted (e.g. str and int); use one type."
        ) from None
    if len(classes) < 2:
        raise DataError(
            f"`y` has only 1 class ({classes[0].item()!r}); a transferability score needs at least "
            "2 classes."
        )
    if counts.min() < 2:
        rare = [c.item() for c in classes[counts < 2]]
        raise DataError(
            f"`y` has classes with fewer than 2 examples: {rare[:5]}; every class needs at "
            "least 2. Add examples or drop those classes."
        )
    return classes, y_idx.astype(np.intp)
