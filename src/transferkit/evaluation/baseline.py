"""Classical no-transfer baselines: a linear model on features that need no network.

``--baseline classical`` (the default) judges a transfer run against one of these, each a few
seconds on ~500 examples (``--baseline scratch``, the source's architecture from random init,
is ``training.run_baseline``'s):

- **image** (``pixels_logreg``): L2 logistic regression on the pixels of each image centre-cropped
  to a square and downscaled to ``PIXEL_SIDES`` (one side chosen), grey when every image is grey,
  RGB otherwise;
- **text** (``tfidf_logreg``): TF-IDF of word 1-2 grams and ``char_wb`` 2-5 grams (a
  ``FeatureUnion``) + logistic regression;
- **audio** (``logmel_logreg``): 40-band log-mel frames (25 ms every 10 ms at 16 kHz), their mean
  and standard deviation over time and those of their deltas, + logistic regression;
- **sequence** (``series_logreg``): each channel resampled to a fixed length (``SERIES_LENGTHS``,
  one chosen; bin means, linear interpolation for shorter series) plus its mean, standard
  deviation, minimum, maximum, slope and mean absolute step, and the series' log length, +
  logistic regression.

Hyper-parameters are chosen as the convex probe chooses its L2 (``engine/probe.py``): on the
validation split when it is large enough to choose on (``validation_is_meaningful``), else by
stratified k-fold cross-validation over train + val (``stratified_folds``), scoring held-out
log-loss; the chosen model is then refitted on train + val. Image, audio and sequence features
go through ``fit_linear_head`` itself (standardised features, ``C`` from its grid); the image
side and the series length are chosen by the same held-out log-loss (the lowest point of each
one's ``C`` curve). TF-IDF features stay sparse and unstandardised, so text chooses its ``C``
from ``TEXT_C_GRID`` here, with the same rule and folds (the vectoriser fitted on each fold's
fitting part only).

Each baseline returns the test split's class probabilities and an ``info`` dict: ``baseline``
(the name above), ``baseline_params`` (the chosen hyper-parameters), ``baseline_chosen_by``
("validation", "5-fold cross-validation" or a default), ``baseline_val_accuracy`` (the model
fitted on train alone, on val; None without val) and ``baseline_description`` (one line for
reports). Deterministic for a seed (the folds are seeded; the solvers are deterministic).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from transferkit.data.base import TaskData
from transferkit.engine.probe import fit_linear_head, one_blas_thread, stratified_folds, validation_is_meaningful

#: Image sides tried (pixels, square); ``DEFAULT_SIDE`` when there are too few examples to choose.
PIXEL_SIDES = (8, 16, 32)
DEFAULT_SIDE = 16
#: ``C`` values tried for text (sklearn's inverse L2 strength on TF-IDF features); ``TEXT_DEFAULT_C``
#: when there are too few examples per class to cross-validate.
TEXT_C_GRID = (0.1, 1.0, 10.0, 100.0)
TEXT_DEFAULT_C = 10.0
#: Audio front end: rate, window and hop (samples), mel bands, and the longest stretch read (centre).
AUDIO_RATE, AUDIO_WINDOW, AUDIO_HOP, AUDIO_MELS, AUDIO_MAX_SECONDS = 16000, 400, 160, 40, 60.0
#: Series lengths tried; ``DEFAULT_LENGTH`` when there are too few examples to choose.
SERIES_LENGTHS = (16, 32, 64)
DEFAULT_LENGTH = 32


def classical_baseline(task: TaskData, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The classical baseline of ``task``'s modality; returns (test probabilities, info)."""
    return CLASSICAL[task.modality](task, seed)


# -- image ---------------------------------------------------------------------------------------


@one_blas_thread
def pixels_baseline(task: TaskData, seed: int = 0) -> tuple[np.ndarray, dict]:
    """L2 logistic regression on downscaled pixels; the side (``PIXEL_SIDES``) and ``C`` chosen as
    the module describes. Images are decoded once, at the largest side."""
    largest = max(PIXEL_SIDES)
    pixels = {name: _pixels(split.examples, largest) for name, split in task.splits().items()}
    grey = all(bool((p[..., :1] == p).all()) for p in pixels.values())
    if grey:
        pixels = {name: p[..., :1] for name, p in pixels.items()}
    features = {side: {name: _flat(_shrink(p, largest // side)) for name, p in pixels.items()}
                for side in PIXEL_SIDES}
    side, fit, curve = _best_of(features, task, seed, DEFAULT_SIDE)
    channels = 1 if grey else 3
    params = {"side": side, "channels": channels, "C": fit.c, "side_curve": curve}
    what = f"logistic regression on {side}x{side} {'grey' if grey else 'RGB'} pixels"
    return _linear_result(task, "pixels_logreg", what, params, fit, features[side]["test"])


def _pixels(examples, side: int) -> np.ndarray:
    """(N, side, side, 3) uint8: each image centre-cropped to a square and resized (antialiased)."""
    from PIL import Image, ImageOps

    from transferkit.data.image import open_image

    out = np.zeros((len(examples), side, side, 3), dtype=np.uint8)
    for i, example in enumerate(examples):
        im = example.convert("RGB") if isinstance(example, Image.Image) else open_image(example, max_side=side)
        out[i] = np.asarray(ImageOps.fit(im, (side, side), Image.BILINEAR))
    return out


def _shrink(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Block means of ``factor`` x ``factor`` pixels, as float32 in [0, 1]."""
    n, h, w, c = pixels.shape
    x = pixels.astype(np.float32) / 255.0
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean((2, 4)) if factor > 1 else x


# -- text ----------------------------------------------------------------------------------------


@one_blas_thread
def tfidf_baseline(task: TaskData, seed: int = 0) -> tuple[np.ndarray, dict]:
    """TF-IDF word 1-2 grams + char_wb 2-5 grams, logistic regression; ``C`` chosen as the module describes.

    Returns test-split class probabilities and a description of the chosen model.
    """
    x_train, y_train = [str(t) for t in task.train.examples], task.train.labels
    x_val, y_val = [str(t) for t in task.val.examples], task.val.labels
    k = task.num_classes
    if len(y_val) and validation_is_meaningful(y_val, k):
        losses, chosen_by = _text_losses(x_train, y_train, x_val, y_val, k), "validation"
    else:
        x_all, y_all = x_train + x_val, np.concatenate([y_train, y_val])
        folds = stratified_folds(y_all, seed)
        if folds:
            losses = np.mean([_text_losses([x_all[i] for i in a], y_all[a], [x_all[i] for i in b], y_all[b], k)
                              for a, b in folds], axis=0).tolist()
            chosen_by = f"{len(folds)}-fold cross-validation"
        else:
            losses, chosen_by = [], "default (too few examples per class to cross-validate)"
    c = TEXT_C_GRID[int(np.argmin(losses))] if losses else TEXT_DEFAULT_C
    val_accuracy = None
    if len(y_val):
        vectorizer, model = _text_fit(x_train, y_train, c)
        val_accuracy = float((_text_proba(vectorizer, model, x_val, k).argmax(1) == y_val).mean())
    x_fit, y_fit = x_train + x_val, np.concatenate([y_train, y_val])
    vectorizer, model = _text_fit(x_fit, y_fit, c)
    proba = _text_proba(vectorizer, model, [str(t) for t in task.test.examples], k)
    params = {"C": c, "word_ngrams": [1, 2], "char_wb_ngrams": [2, 5],
              "c_curve": [[g, loss] for g, loss in zip(TEXT_C_GRID, losses)]}
    what = "TF-IDF word 1-2 + char_wb 2-5 grams, logistic regression"
    return proba, _info("tfidf_logreg", what, params, chosen_by, val_accuracy, len(y_fit))


def _vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
                         ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))])


def _logreg(c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000)


def _text_losses(x_fit: list[str], y_fit: np.ndarray, x_held: list[str], y_held: np.ndarray, k: int) -> list[float]:
    """Held-out log-loss of each ``C`` in ``TEXT_C_GRID``, the vectoriser fitted on ``x_fit`` alone."""
    vectorizer = _vectorizer()
    fit, held = vectorizer.fit_transform(x_fit), vectorizer.transform(x_held)
    losses = []
    for c in TEXT_C_GRID:
        model = _quiet_fit(_logreg(c), fit, y_fit)
        proba = _full_proba(model, held, k)
        losses.append(float(-np.log(np.maximum(proba[np.arange(len(y_held)), y_held], 1e-15)).mean()))
    return losses


def _text_fit(x: list[str], y: np.ndarray, c: float):
    vectorizer = _vectorizer()
    return vectorizer, _quiet_fit(_logreg(c), vectorizer.fit_transform(x), y)


def _text_proba(vectorizer, model, texts: list[str], k: int) -> np.ndarray:
    if not texts:
        return np.zeros((0, k))
    return _full_proba(model, vectorizer.transform(texts), k)


def _quiet_fit(model, x, y):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def _full_proba(model, x, k: int) -> np.ndarray:
    """Probabilities over all ``k`` classes (0 for a class the model never saw)."""
    proba = np.zeros((x.shape[0], k))
    proba[:, model.classes_] = model.predict_proba(x)
    return proba


# -- audio ---------------------------------------------------------------------------------------


@one_blas_thread
def logmel_baseline(task: TaskData, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Log-mel statistics (mean and std over time of 40 bands and of their deltas) + L2 logistic
    regression; ``C`` chosen as the module describes. Clips are decoded with ``open_audio`` at 16 kHz."""
    features = {name: _stack([_logmel_stats(p) for p in split.examples], 4 * AUDIO_MELS)
                for name, split in task.splits().items()}
    fit = _fit(features, task, seed)
    params = {"C": fit.c, "sample_rate": AUDIO_RATE, "mel_bands": AUDIO_MELS, "window_ms": 25, "hop_ms": 10}
    what = "logistic regression on log-mel statistics (mean, std; deltas' mean, std)"
    return _linear_result(task, "logmel_logreg", what, params, fit, features["test"])


def _logmel_stats(path) -> np.ndarray:
    from transferkit.data.audio import open_audio
    from transferkit.sources.audio.dsp import mel_filterbank

    wave = open_audio(path, AUDIO_RATE)
    longest = int(AUDIO_MAX_SECONDS * AUDIO_RATE)
    if len(wave) > longest:
        start = (len(wave) - longest) // 2
        wave = wave[start:start + longest]
    if len(wave) < AUDIO_WINDOW:
        wave = np.pad(wave, (0, AUDIO_WINDOW - len(wave)))
    frames = np.lib.stride_tricks.sliding_window_view(wave.astype(np.float32), AUDIO_WINDOW)[::AUDIO_HOP]
    window = np.hanning(AUDIO_WINDOW + 1)[:-1].astype(np.float32)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    logmel = np.log(power @ mel_filterbank(AUDIO_RATE, AUDIO_WINDOW, AUDIO_MELS).T + 1e-10)
    delta = np.diff(logmel, axis=0) if len(logmel) > 1 else np.zeros_like(logmel)
    return np.concatenate([logmel.mean(0), logmel.std(0), delta.mean(0), delta.std(0)])


# -- sequence ------------------------------------------------------------------------------------


@one_blas_thread
def series_baseline(task: TaskData, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Series resampled to a fixed length (``SERIES_LENGTHS``, one chosen) plus summary statistics,
    + L2 logistic regression; the length and ``C`` chosen as the module describes."""
    first = np.asarray(task.train.examples[0])
    channels = 1 if first.ndim == 1 else int(first.shape[0])
    width = {length: channels * (length + 6) + 1 for length in SERIES_LENGTHS}
    features = {length: {name: _stack([_series_features(x, length) for x in split.examples], width[length])
                         for name, split in task.splits().items()}
                for length in SERIES_LENGTHS}
    length, fit, curve = _best_of(features, task, seed, DEFAULT_LENGTH)
    params = {"length": length, "channels": channels, "C": fit.c, "length_curve": curve}
    what = f"logistic regression on series resampled to {length} steps + summary statistics"
    return _linear_result(task, "series_logreg", what, params, fit, features[length]["test"])


def _series_features(series, length: int) -> np.ndarray:
    """Per channel: the series at ``length`` steps, then mean, std, min, max, slope, mean |step|; then log length."""
    x = np.asarray(series, dtype=np.float64)
    x = x.reshape(1, -1) if x.ndim == 1 else x
    steps = x.shape[1]
    if steps >= length:  # bin means: no aliasing of a long, noisy series
        edges = np.linspace(0, steps, length + 1).astype(int)
        resampled = np.add.reduceat(x, edges[:-1], axis=1) / np.diff(edges)
    else:
        grid, at = np.linspace(0.0, 1.0, length), np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)
        resampled = np.stack([np.interp(grid, at, row) if steps > 1 else np.full(length, row[0]) for row in x])
    t = np.linspace(0.0, 1.0, steps) - 0.5 if steps > 1 else np.zeros(1)
    slope = (x - x.mean(1, keepdims=True)) @ t / max(float(t @ t), 1e-12)
    step = np.abs(np.diff(x, axis=1)).mean(1) if steps > 1 else np.zeros(len(x))
    stats = np.stack([x.mean(1), x.std(1), x.min(1), x.max(1), slope, step], axis=1)
    return np.concatenate([np.concatenate([resampled, stats], axis=1).ravel(), [np.log(steps)]])


# -- shared --------------------------------------------------------------------------------------


def _stack(rows: list[np.ndarray], width: int) -> np.ndarray:
    return np.stack(rows) if rows else np.zeros((0, width))


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def _fit(features: dict[str, np.ndarray], task: TaskData, seed: int):
    """``fit_linear_head`` on train (and val) features: ``C`` chosen on val or by k-fold CV, refitted on train + val."""
    return fit_linear_head(torch.from_numpy(np.ascontiguousarray(features["train"], dtype=np.float64)),
                           task.train.labels,
                           torch.from_numpy(np.ascontiguousarray(features["val"], dtype=np.float64)),
                           task.val.labels, task.num_classes, refit=True, seed=seed)


def _best_of(candidates: dict, task: TaskData, seed: int, default):
    """The candidate feature set (by key) whose fit has the lowest held-out log-loss; ``default``
    when none could be scored (too few examples to cross-validate). Returns (key, fit, curve)."""
    fits = {key: _fit(features, task, seed) for key, features in candidates.items()}
    curve = [[key, min(loss for _, loss in fit.curve)] for key, fit in fits.items() if fit.curve]
    best = min(curve, key=lambda point: point[1])[0] if len(curve) == len(fits) else default
    return best, fits[best], curve


def _linear_result(task: TaskData, name: str, what: str, params: dict, fit, x_test: np.ndarray):
    logits = np.asarray(x_test, dtype=np.float64) @ fit.weight.double().numpy().T + fit.bias.double().numpy()
    logits -= logits.max(1, keepdims=True) if len(logits) else 0.0
    proba = np.exp(logits)
    proba /= proba.sum(1, keepdims=True) if len(proba) else 1.0
    return proba, _info(name, what, params, fit.chosen_by, fit.val_accuracy, fit.fitted_on)


def _info(name: str, what: str, params: dict, chosen_by: str, val_accuracy: float | None, fitted_on: int) -> dict:
    c = params["C"]
    description = f"{name}: {what}, L2 C = {c:g} ({chosen_by}), fitted on {fitted_on} examples"
    return {"baseline": name, "baseline_params": params, "baseline_chosen_by": chosen_by,
            "baseline_val_accuracy": val_accuracy, "baseline_description": description}


#: The classical baseline of each modality.
CLASSICAL = {"image": pixels_baseline, "text": tfidf_baseline, "audio": logmel_baseline, "sequence": series_baseline}
