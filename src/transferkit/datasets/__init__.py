"""Datasets embedded in the package (licences beside them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent


@dataclass(frozen=True)
class EmbeddedDataset:
    path: Path
    description: str
    source: str
    options: dict = field(default_factory=dict)


#: What `transferkit demo` runs: ImageNet MobileNetV2 features + a linear head on digits.
DEMO = EmbeddedDataset(
    path=HERE / "digits",
    description="scikit-learn digits, 500 PNGs (50 per class, 10 classes), BSD-3 (see LICENSE-digits.txt)",
    source="mobilenet_v2",
    options={"strategy": "linear_probe", "seed": 0},  # every training option at its default
)
