"""No-transfer baselines for text: TF-IDF + logistic regression.

(Image, audio and sequence baselines train the source's architecture from random
initialisation with the same loop and budget; see ``pipeline.fit``.)
"""

from __future__ import annotations

import numpy as np

from transferkit.data.base import TaskData

C_GRID = (0.1, 1.0, 10.0, 100.0)


def tfidf_baseline(task: TaskData, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Fits TF-IDF (word 1-2 grams) + logistic regression; C is chosen on the validation split.

    Returns test-split class probabilities and a description of the chosen model.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    best = None
    for c in C_GRID:
        model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                              LogisticRegression(C=c, max_iter=2000, random_state=seed))
        model.fit(task.train.examples, task.train.labels)
        val = model.score(task.val.examples, task.val.labels) if len(task.val) else 0.0
        if best is None or val > best[0]:
            best = (val, c, model)
    val_acc, c, model = best
    proba = np.zeros((len(task.test), task.num_classes))
    proba[:, model.classes_] = model.predict_proba(task.test.examples)
    return proba, {"baseline": "tfidf_logreg", "baseline_C": c, "baseline_val_accuracy": val_acc}
