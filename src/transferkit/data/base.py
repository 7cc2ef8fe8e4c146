"""The target task as transferkit sees it: examples, classes and train/val/test splits."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODALITIES = ("image", "text", "audio", "sequence")


@dataclass
class Split:
    """One split of the target data.

    Attributes:
        examples: Image or audio file paths (``Path``), texts (``str``) or series (``np.ndarray``).
        labels: Class indices into ``TaskData.classes``, shape (N,), dtype int64.
        extra_labels: Labels of further tasks on the same examples (``TaskData.extra_classes``).
    """

    examples: list
    labels: np.ndarray
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class TaskData:
    """A labelled target task, split into train, validation and test.

    Attributes:
        modality: One of ``MODALITIES``.
        classes: Class names; a label ``i`` means ``classes[i]``.
        train, val, test: The splits. ``test`` is never used for training or model choice.
        origin: Where the data came from (a folder or table path), for reports.
        skipped: ``(file, reason)`` pairs left out by ``skip_bad=True``.
        split_given: True when the user supplied the splits, False when transferkit made them.
        task_name: Name of the main task, whose classes are ``classes`` ("label" for one task).
        extra_classes: Further tasks on the same examples (several label columns), by name.
    """

    modality: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    origin: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    split_given: bool = False
    task_name: str = "label"
    extra_classes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def tasks(self) -> dict[str, list[str]]:
        """Classes per task, the main task first."""
        return {self.task_name: self.classes, **self.extra_classes}

    def labels_of(self, split: str) -> dict[str, np.ndarray]:
        """Labels per task for one split."""
        s = self.splits()[split]
        return {self.task_name: s.labels, **s.extra_labels}

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def fingerprint(self) -> str:
        """A hash of every example's identity and content stamp, the labels and the classes.

        Files contribute path, size and modification time, so an edited file changes the
        fingerprint without rereading every byte.
        """
        h = hashlib.sha256()
        h.update("\x1f".join(self.classes).encode())
        for name, split in self.splits().items():
            h.update(name.encode())
            for ex in split.examples:
                h.update(_example_stamp(ex))
            for labels in (split.labels, *split.extra_labels.values()):
                h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict:
        """Counts per split and class, for reports and ``metrics.json``."""
        counts = {
            name: {c: int((s.labels == i).sum()) for i, c in enumerate(self.classes)}
            for name, s in self.splits().items()
        }
        return {
            "modality": self.modality,
            "tasks": {name: list(classes) for name, classes in self.tasks.items()},
            "origin": self.origin,
            "classes": list(self.classes),
            "split_sizes": {name: len(s) for name, s in self.splits().items()},
            "class_counts": counts,
            "split_given": self.split_given,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
        }


def examples_fingerprint(examples: Sequence) -> str:
    """A hash of the examples, in order: path, size and mtime for files, content otherwise."""
    h = hashlib.sha256()
    h.update(str(len(examples)).encode())
    for ex in examples:
        h.update(_example_stamp(Path(ex) if isinstance(ex, str) and _looks_like_file(ex) else ex))
    return h.hexdigest()[:16]


def _looks_like_file(text: str) -> bool:
    return len(text) < 4096 and "\n" not in text and os.path.isfile(text)


def _example_stamp(example) -> bytes:
    if isinstance(example, Path):
        try:
            st = example.stat()
            return f"{example}|{st.st_size}|{st.st_mtime_ns}\n".encode()
        except OSError:
            return f"{example}|missing\n".encode()
    if isinstance(example, np.ndarray) or hasattr(example, "__array__") or hasattr(example, "__array_interface__"):
        # arrays, tensors and decoded PIL images: their values (str() of an image names its address)
        array = np.ascontiguousarray(np.asarray(example))
        return hashlib.sha256(f"{array.dtype}|{array.shape}|".encode() + array.tobytes()).digest()
    return hashlib.sha256(str(example).encode()).digest()
