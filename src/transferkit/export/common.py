"""What every exporter shares: the result type, the error, labels, preprocessing and the tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferkit.errors import TransferKitError

FORMATS = ("hf", "sentence-transformers", "torchvision", "timm", "onnx")
#: Other spellings of a format (``st`` as in the ``st:`` source scheme).
FORMAT_ALIASES = {"st": "sentence-transformers", "sentence_transformers": "sentence-transformers"}


class ExportError(TransferKitError, ValueError):
    """A run cannot be exported to the requested format exactly."""


@dataclass
class ExportResult:
    """What ``export_run`` wrote.

    Attributes:
        format: The export format.
        out: The output directory.
        files: File names written in ``out``.
        architecture: The class or constructor that loads the export.
        max_abs_diff: Largest absolute difference of the logits between the export (reloaded from
            disk) and the run, on sample inputs; None when it could not be measured.
        notes: Anything a user should know (exporter used, mappings applied).
        usage: The model card's "how to load it" text, when the exporter writes its own (else ``card.py``'s).
    """

    format: str
    out: Path
    files: list[str] = field(default_factory=list)
    architecture: str = ""
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)
    usage: str = ""

    def summary(self) -> str:
        diff = "not measured" if self.max_abs_diff is None else f"{self.max_abs_diff:.2e}"
        return (f"Exported {self.format} ({self.architecture}) to {self.out}: {', '.join(self.files)}. "
                f"Max abs difference of the logits against the run: {diff}.")


def id2label(classes: list[str]) -> dict[str, str]:
    """``{"0": first class, ...}``, as ``labels.json`` files write it."""
    return {str(i): c for i, c in enumerate(classes)}


def preprocessing(run) -> dict:
    """The run's preprocessing as ``preprocessing.json`` writes it, with the steps in words."""
    pre = run.source.preprocessing.to_dict()
    if run.modality == "image":
        size = pre.get("image_size") or 224
        pre["steps"] = ["convert to RGB", f"resize the short side to {round(size / (pre.get('crop_pct') or 1.0))} px "
                        f"({pre.get('interpolation')})", f"centre-crop {size}x{size}", "scale to [0, 1]",
                        f"normalise with mean {pre.get('mean')} and std {pre.get('std')}"]
    else:
        pre["steps"] = [f"tokenise with the exported tokenizer, truncation to {pre.get('max_length')} tokens, "
                        "padding per batch"]
    return {k: v for k, v in pre.items() if v is not None}


def run_logits(run, examples: list):
    """The run's raw logits (not ``Run.predict_proba``'s softmax) for a few examples, in one batch."""
    import torch

    from transferkit.sources.inputs import ExampleDataset, input_pipeline

    dataset = ExampleDataset(list(examples), None, input_pipeline(run.source, train=False))
    batch, _ = dataset.collate([dataset[i] for i in range(len(dataset))])
    run.model.eval()
    with torch.inference_mode():
        return run.model(**batch)[run.main_task].float()


def sample_texts(tokenizer, n: int = 6) -> list[str]:
    """Texts of varied length from the tokenizer's own vocabulary (padding and truncation exercised)."""
    special = set(getattr(tokenizer, "all_special_tokens", []))
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and w not in special and not w.startswith("##")][:200]
    words = words or ["example"]
    rng = np.random.default_rng(0)
    lengths = [1, 3, 7, 12, 25, 60][:n]
    return [" ".join(rng.choice(words, k)) for k in lengths]


def save_tokenizer(run, out: Path) -> None:
    """Saves the run's tokenizer with the run's token limit as its ``model_max_length``."""
    tokenizer = run.source.tokenizer
    saved = tokenizer.model_max_length
    try:
        tokenizer.model_max_length = run.source.preprocessing.max_length or saved
        tokenizer.save_pretrained(out)
    finally:
        tokenizer.model_max_length = saved
