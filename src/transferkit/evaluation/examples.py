"""What a run keeps of its test predictions for the report: the examples it gets most wrong and
its calibration, the way fastai's ``ClassificationInterpretation.plot_top_losses`` shows them.

A run directory holds no per-example predictions, so ``test_predictions`` is called where the
test split's probabilities exist (``pipeline.fit`` and ``soup``) and its result goes into
``metrics.json``:

- ``test_top_losses``: the ``TOP_LOSSES`` test examples with the highest cross-entropy (the
  lowest probability of their true class), worst first; each with its position in the test
  split, what it is (``file`` for images and audio, a ``text`` snippet of at most ``SNIPPET``
  characters, ``series`` as its shape), the true and predicted class and both probabilities;
- ``test_calibration``: ``metrics.calibration`` (reliability bins and ECE).

Nothing here reads the example files; the report makes image thumbnails from ``file`` when it is
written (``report/thumbnails.py``).
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import calibration

#: How many of the worst test examples a run keeps.
TOP_LOSSES = 12
#: Longest text snippet kept, in characters (whitespace collapsed).
SNIPPET = 200


def test_predictions(examples: list, labels: np.ndarray, proba: np.ndarray, classes: list[str],
                     modality: str) -> dict:
    """``test_top_losses`` and ``test_calibration`` of a test split's class probabilities."""
    return {"test_top_losses": top_losses(examples, labels, proba, classes, modality),
            "test_calibration": calibration(labels, proba)}


def top_losses(examples: list, labels: np.ndarray, proba: np.ndarray, classes: list[str], modality: str,
               k: int = TOP_LOSSES) -> list[dict]:
    """The ``k`` examples with the highest cross-entropy ``-log p(true class)``, worst first (ties in
    split order). Keys: ``index``, ``true``, ``predicted``, ``p_predicted``, ``p_true``, ``loss``,
    ``correct`` and one of ``file``, ``text``, ``series`` (nothing for an in-memory image)."""
    labels, proba = np.asarray(labels), np.asarray(proba, dtype=np.float64)
    if not len(labels):
        return []
    p_true = proba[np.arange(len(labels)), labels]
    loss = -np.log(np.clip(p_true, 1e-12, None))
    order = np.lexsort((np.arange(len(labels)), -loss))[:k]
    rows = []
    for i in order.tolist():
        predicted = int(proba[i].argmax())
        rows.append({"index": i, **describe(examples[i], modality), "true": classes[int(labels[i])],
                     "predicted": classes[predicted], "p_predicted": float(proba[i, predicted]),
                     "p_true": float(p_true[i]), "loss": float(loss[i]) if math.isfinite(loss[i]) else None,
                     "correct": predicted == int(labels[i])})
    return rows


def describe(example, modality: str) -> dict:
    """What an example is, in JSON: ``{"file": path}``, ``{"text": snippet}`` or ``{"series": shape}``."""
    import os

    if modality in ("image", "audio") and isinstance(example, (str, os.PathLike)):
        return {"file": os.path.abspath(os.fspath(example))}
    if isinstance(example, str):
        text = " ".join(example.split())
        return {"text": text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"}
    if isinstance(example, np.ndarray):
        return {"series": " x ".join(map(str, example.shape)) + " values"}
    return {}
