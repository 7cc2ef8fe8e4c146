"""Writes the embedded demo dataset: scikit-learn's digits as PNG files, one folder per class.

Run from the repository root: ``python tools/make_demo_dataset.py``. Deterministic: the
first ``PER_CLASS`` examples of each digit, upscaled from 8x8 to 32x32 (bilinear).
"""

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

PER_CLASS = 50
ROOT = Path("src/transferkit/datasets/digits")

digits = load_digits()
images = (digits.images * (255 / 16)).round().astype(np.uint8)
for d in range(10):
    folder = ROOT / str(d)
    folder.mkdir(parents=True, exist_ok=True)
    for i, index in enumerate(np.flatnonzero(digits.target == d)[:PER_CLASS]):
        Image.fromarray(images[index], "L").resize((32, 32), Image.BILINEAR).save(folder / f"{d}_{i:03d}.png", optimize=True)
print(f"wrote {10 * PER_CLASS} images under {ROOT}")
