"""Tiny offline datasets for tests, examples and benchmarks.

Images come from scikit-learn's bundled 8x8 digits (no download), upscaled; texts are short
made-up sentences. Nothing here touches the network.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).round().astype(np.uint8), d.target


def digit_image(index: int, size: int = 32, digit: int | None = None) -> Image.Image:
    """An upscaled greyscale (mode ``"L"``) digit from scikit-learn's digits.

    Args:
        index: Which example (of that digit, when ``digit`` is given), modulo how many exist.
        size: Output width and height in pixels.
        digit: Restrict to images of this digit (0-9).
    """
    images, target = _digits()
    pool = np.flatnonzero(target == digit) if digit is not None else np.arange(len(images))
    return Image.fromarray(images[pool[index % len(pool)]], "L").resize((size, size), Image.NEAREST)


def write_image_folder(
    root: str | Path,
    counts: dict[str, int] | None = None,
    *,
    split: str | None = None,
    size: int = 32,
    ext: str = ".png",
    start: int = 0,
) -> list[Path]:
    """Writes ``root[/split]/<class>/<class>_<i><ext>`` digit images; class ``"3"`` draws 3s.

    Args:
        root: The dataset root (created).
        counts: Images per class; default three classes of 10.
        split: Write under ``root/split/`` (e.g. "train", "test").
        size: Image side in pixels.
        ext: File extension, which picks the format.
        start: First example index, so two calls can write different images.

    Returns:
        The files written, in order.
    """
    counts = counts if counts is not None else {"0": 10, "1": 10, "2": 10}
    base = Path(root) / split if split else Path(root)
    written = []
    for k, (name, n) in enumerate(counts.items()):
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        digit = int(name) % 10 if name.isdigit() else k % 10
        for i in range(start, start + n):
            path = folder / f"{name}_{i:04d}{ext}"
            digit_image(i, size, digit).save(path)
            written.append(path)
    return written


def text_rows(counts: Sequence[tuple[str, int]], seed: int = 0) -> list[dict]:
    """Rows ``{"text": ..., "label": ...}`` with a few distinct words per label.

    Args:
        counts: ``(label, rows)`` pairs.
        seed: Seed of the word choice.
    """
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "fine", "great", "awful", "okay", "nice", "poor"]
    rows = []
    for label, n in counts:
        for i in range(n):
            picked = rng.choice(words, size=3)
            rows.append({"text": f"{label} example {i}: " + " ".join(picked), "label": label})
    return rows
