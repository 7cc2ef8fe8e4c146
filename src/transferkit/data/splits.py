"""Stratified, seeded train/val/test splits that keep every class represented.

Rule, per class with ``n`` examples and ``k`` held-out splits to make (test and/or val, those
with a fraction above 0):

* each held-out split gets ``round(n * fraction)`` examples;
* when ``n > k``, each held-out split gets at least 1 and train keeps at least 1 (the larger
  held-out split gives one back until it does) -- so with train/val/test, a class with 3 or more
  examples is in all three;
* when ``n <= k``, train gets 1 and the rest go to test first, then val -- so a class with
  2 examples is 1 train + 1 test, and a class with 1 example is train only (preflight reports
  such a class as a problem when the test split must be made).

Examples within a class are shuffled with ``numpy.random.default_rng(seed)``, so the same seed
and data always give the same split. scikit-learn's ``train_test_split(stratify=...)`` is not
used because it fails on classes with fewer than 2 examples and does not promise the
per-class minimums above.
"""

from __future__ import annotations

import math

import numpy as np

from transferkit.data.base import Split
from transferkit.errors import ConfigError

HELD_OUT = ("test", "val")  # priority order when a class is too small for all splits


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raises ``ConfigError`` unless both fractions are in [0, 1) and sum to less than 1."""
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 <= f < 1:
            raise ConfigError(f"`{name}` must be a number in [0, 1); got {f!r}.")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"`val_fraction` + `test_fraction` must be below 1 so train keeps examples; "
            f"got {val_fraction!r} + {test_fraction!r}. Lower one of them."
        )


def class_allocation(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """How many of a class's ``n`` examples go to each held-out split (see module rule).

    Args:
        n: Examples in the class.
        fractions: Fraction per held-out split name ("test", "val").

    Returns:
        Count per held-out split; train gets the remaining ``n - sum(counts)``.
    """
    active = [s for s in HELD_OUT if fractions.get(s, 0) > 0]
    counts = {s: 0 for s in fractions}
    if n <= len(active):
        for s in active[: max(n - 1, 0)]:
            counts[s] = 1
        return counts
    for s in active:
        counts[s] = max(1, math.floor(n * fractions[s] + 0.5))
    while n - sum(counts.values()) < 1:
        largest = max(reversed(active), key=lambda s: counts[s])  # ties: val gives back first
        counts[largest] -= 1
    return counts


def split_indices(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Splits example indices into train and the held-out splits, stratified by label.

    Args:
        labels: Class index per example, shape (N,).
        fractions: Fraction per held-out split to make, e.g. ``{"val": 0.15, "test": 0.2}``.
        seed: Seed of the shuffle within each class.

    Returns:
        Sorted index arrays for ``"train"`` and each key of ``fractions``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in ("train", *fractions)}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for s, k in class_allocation(len(idx), fractions).items():
            parts[s].append(idx[start : start + k])
            start += k
        parts["train"].append(idx[start:])
    return {s: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for s, p in parts.items()}


def make_splits(
    given: dict[str, tuple[list, np.ndarray]],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, Split]:
    """Keeps the splits the user gave and cuts the missing ones out of train.

    Args:
        given: ``(examples, labels)`` per split name; ``"train"`` is required. A missing
            ``"test"`` is cut with ``test_fraction`` and a missing ``"val"`` with
            ``val_fraction``, both as fractions of the train examples.
        val_fraction: Fraction for a missing val split.
        test_fraction: Fraction for a missing test split.
        seed: Seed of the stratified shuffle.

    Returns:
        A ``Split`` for each of ``"train"``, ``"val"`` and ``"test"``.
    """
    examples, labels = given["train"]
    labels = np.asarray(labels, dtype=np.int64)
    wanted = {"test": test_fraction, "val": val_fraction}
    fractions = {s: f for s, f in wanted.items() if s not in given}
    out = {s: Split(list(ex), np.asarray(lab, dtype=np.int64)) for s, (ex, lab) in given.items()}
    for s, idx in split_indices(labels, fractions, seed).items():
        out[s] = Split([examples[i] for i in idx], labels[idx])
    return out


def group_by_split(
    records: list[tuple[str, str, object]], classes: list[str], splits: set[str] | dict
) -> dict[str, tuple[list, np.ndarray]]:
    """Turns ``(split, class, example)`` records into the ``given`` mapping of :func:`make_splits`.

    Args:
        records: One ``(split name, class name, example)`` per usable example.
        classes: The class names; a label is the position of its class here.
        splits: The split names to produce (each gets a possibly empty entry).
    """
    index = {c: i for i, c in enumerate(classes)}
    return {
        s: ([ex for s2, _, ex in records if s2 == s],
            np.array([index[c] for s2, c, _ in records if s2 == s], dtype=np.int64))
        for s in splits
    }
