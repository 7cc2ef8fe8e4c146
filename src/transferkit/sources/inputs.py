"""Turning raw examples into model batches, following a source's ``Preprocessing``.

An ``InputPipeline`` has two steps: ``load(example)`` runs per example (in DataLoader
workers: decode and transform an image, or pass a text through), and ``collate(items)``
makes the batch dict the backbone's ``forward(**batch)`` takes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from transferkit.sources.base import Preprocessing, SourceModel

if TYPE_CHECKING:
    import numpy as np


class InputPipeline(Protocol):
    def load(self, example): ...

    def collate(self, items: list) -> dict[str, torch.Tensor]: ...


class ImageInputs:
    """Images: decode to RGB, resize, (augment when training), normalise.

    Evaluation resizes the short side to ``image_size / crop_pct`` and centre-crops
    ``image_size``; training uses a mild random resized crop (scale 0.8-1) and no flips, which
    would change the meaning of digits and text in images.
    """

    def __init__(self, pre: Preprocessing, train: bool = False, augment: bool = True) -> None:
        from torchvision.transforms import v2 as T

        size = pre.image_size or 224
        interp = T.InterpolationMode(pre.interpolation)
        if train and augment:
            geometry = [T.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), interpolation=interp, antialias=True)]
        else:
            geometry = [T.Resize(round(size / pre.crop_pct), interpolation=interp, antialias=True), T.CenterCrop(size)]
        self.transform = T.Compose(
            [T.ToImage(), *geometry, T.ToDtype(torch.float32, scale=True), T.Normalize(pre.mean, pre.std)]
        )

    def load(self, example) -> torch.Tensor:
        from PIL import Image

        from transferkit.data.image import open_image

        return self.transform(example if isinstance(example, Image.Image) else open_image(example))

    def collate(self, items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack(items)}


class TextInputs:
    """Texts: tokenised per batch with dynamic padding, truncated to ``max_length``."""

    def __init__(self, tokenizer, pre: Preprocessing) -> None:
        self.tokenizer = tokenizer
        self.max_length = pre.max_length or 128

    def load(self, example) -> str:
        return str(example)

    def collate(self, items: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(items, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


#: Builders for modalities added by other modules (audio, sequence): f(source, train) -> pipeline.
EXTRA_INPUTS: dict[str, object] = {}


def input_pipeline(source: SourceModel, train: bool = False, augment: bool = True) -> InputPipeline:
    """The input pipeline for a source, for training (augmented) or evaluation."""
    modality = source.preprocessing.modality
    if modality == "image":
        return ImageInputs(source.preprocessing, train=train, augment=augment)
    if modality == "text":
        return TextInputs(source.tokenizer, source.preprocessing)
    if modality in EXTRA_INPUTS:
        return EXTRA_INPUTS[modality](source, train)
    raise ValueError(f"no input pipeline for modality {modality!r}")


class ExampleDataset(torch.utils.data.Dataset):
    """Raw examples (+ labels per task) read through an input pipeline.

    Items are ``(model input, {task: label})``; ``collate`` makes ``(batch dict, {task: labels})``.
    """

    def __init__(self, examples: list, labels: dict[str, "np.ndarray"] | None, pipeline: InputPipeline) -> None:
        self.examples = examples
        self.labels = labels or {}
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        return self.pipeline.load(self.examples[i]), {t: int(y[i]) for t, y in self.labels.items()}

    def collate(self, items: list) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        inputs = self.pipeline.collate([x for x, _ in items])
        labels = {t: torch.tensor([y[t] for _, y in items]) for t in self.labels}
        return inputs, labels
