"""Classification metrics on a held-out split."""

from __future__ import annotations

import math

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Rows of the confusion matrix are true classes, columns predicted classes.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


#: Equal-width confidence bins of the reliability diagram and ECE (Guo et al., 2017, use 15; ten
#: keep each bin less noisy on the few hundred test examples transferkit usually sees).
CALIBRATION_BINS = 10


def calibration(y_true: np.ndarray, proba: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Reliability of the predicted class's probability (its *confidence*) on a held-out split.

    The confidences are put in ``bins`` equal-width bins over [0, 1]; per bin, the accuracy of its
    predictions against their mean confidence. The expected calibration error (ECE; Naeini et al.,
    2015; Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) is the mean gap,
    weighted by the share of examples in each bin.

    Returns:
        ``bins`` (one ``{"low", "high", "count", "confidence", "accuracy"}`` per bin; the last two
        ``None`` in an empty bin), ``ece``, ``examples``, and the split's mean ``confidence`` and
        ``accuracy`` (confidence above accuracy: overconfident).
    """
    y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=np.float64)
    n = len(y_true)
    if n == 0:
        return {"bins": [], "ece": None, "examples": 0, "confidence": None, "accuracy": None}
    confidence, correct = proba.max(1), proba.argmax(1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)  # 1.0 goes in the last bin
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        conf = float(confidence[inside].mean()) if count else None
        acc = float(correct[inside].mean()) if count else None
        if count:
            ece += count / n * abs(acc - conf)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count, "confidence": conf,
                     "accuracy": acc})
    return {"bins": rows, "ece": float(ece), "examples": n, "confidence": float(confidence.mean()),
            "accuracy": float(correct.mean())}


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval (95% for ``z`` = 1.96) of an accuracy measured on ``n`` examples;
    ``None`` without examples. Unlike the normal approximation it stays inside [0, 1] and does not
    collapse to a point at 0 or 1 accuracy."""
    if not n or not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool) or not math.isfinite(accuracy):
        return None
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
