"""``--format onnx``: the whole target model (every task head) as ``model.onnx``, checked under onnxruntime.

Inputs are ``pixel_values`` (image) or ``input_ids`` + ``attention_mask`` (text) with dynamic batch
(and sequence) axes; the outputs are the logits, one tensor per task head.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit._io import write_json
from transferkit.export.common import (
    ExportResult,
    id2label,
    preprocessing,
    sample_texts,
    save_tokenizer,
)


class _ImageLogits(nn.Module):
    """The target model with tensor outputs: one logits tensor per task, in the run's task order."""

    def __init__(self, model: nn.Module, tasks: list[str]) -> None:
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, pixel_values: torch.Tensor):
        return self._logits(self.model(pixel_values=pixel_values))

    def _logits(self, out: dict):
        return tuple(out[t] for t in self.tasks) if len(self.tasks) > 1 else out[self.tasks[0]]


class _TextLogits(_ImageLogits):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self._logits(self.model(input_ids=input_ids, attention_mask=attention_mask))


def export_onnx(run, out: Path) -> ExportResult:
    tasks = list(run.classes)
    outputs = ["logits"] if len(tasks) == 1 else [f"logits_{t}" for t in tasks]
    wrapper = (_ImageLogits if run.modality == "image" else _TextLogits)(run.model.eval(), tasks).eval()
    example, check = _onnx_inputs(run)
    names = list(example)
    path = out / "model.onnx"
    notes = [_write_onnx(wrapper, example, outputs, path, image=run.modality == "image")]
    _add_onnx_metadata(path, run)
    diff = _check_onnx(path, wrapper, check, outputs)
    write_json(out / "labels.json", {"inputs": names, "outputs": outputs, "tasks": run.classes,
                                     "classes": run.classes[run.main_task],
                                     "id2label": id2label(run.classes[run.main_task])})
    if len(tasks) > 1:
        notes.append(f"One output per task head: {', '.join(outputs)} (classes per task in labels.json).")
    if run.modality == "text":  # the directory is self-contained: AutoTokenizer.from_pretrained(out)
        save_tokenizer(run, out)
    return ExportResult("onnx", out, [], "ONNX (onnxruntime)", diff, notes)


def _write_onnx(wrapper: nn.Module, example: dict[str, torch.Tensor], outputs: list[str], path: Path,
                image: bool) -> str:
    """Writes ``path`` with torch.onnx's dynamo exporter, else the TorchScript one; returns a note saying which."""
    names = list(example)
    try:
        batch = torch.export.Dim("batch", min=1)
        if image:
            dims = {"pixel_values": {0: batch}}
        else:
            sequence = torch.export.Dim("sequence", min=1)
            dims = {n: {0: batch, 1: sequence} for n in names}
        with _quiet():
            program = torch.onnx.export(wrapper, tuple(example.values()), dynamo=True, input_names=names,
                                        output_names=outputs, dynamic_shapes=dims, verbose=False)
            program.save(str(path))
        return f"Exported with torch.onnx's dynamo exporter (torch {torch.__version__})."
    except Exception as e:  # noqa: BLE001 - any exporter failure falls back to the TorchScript exporter
        axes = {"pixel_values": {0: "batch"}} if image else {n: {0: "batch", 1: "sequence"} for n in names}
        with _quiet():
            torch.onnx.export(wrapper, tuple(example.values()), str(path), dynamo=False, input_names=names,
                              output_names=outputs, dynamic_axes={**axes, **{o: {0: "batch"} for o in outputs}},
                              opset_version=17)
        return f"Exported with the TorchScript exporter (the dynamo exporter failed: {type(e).__name__})."


def _onnx_inputs(run) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(example inputs for tracing, different-shaped inputs for the parity check)."""
    if run.modality == "image":
        size = run.source.preprocessing.image_size or 224
        g = torch.Generator().manual_seed(0)
        return ({"pixel_values": torch.randn(2, 3, size, size, generator=g)},
                {"pixel_values": torch.randn(3, 3, size, size, generator=g)})
    texts = sample_texts(run.source.tokenizer)
    max_length = run.source.preprocessing.max_length or 128

    def encode(items):
        enc = run.source.tokenizer(items, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return encode(texts[1:3]), encode(texts)


@contextlib.contextmanager
def _quiet():
    """No exporter warnings or printed diagnostics."""
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _add_onnx_metadata(path: Path, run) -> None:
    try:
        import onnx
    except ImportError:
        return
    model = onnx.load(str(path))
    meta = {"classes": json.dumps(run.classes[run.main_task]), "tasks": json.dumps(run.classes),
            "source": run.config["source"]["id"], "producer": "transferkit",
            "preprocessing": json.dumps(preprocessing(run))}
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))


@torch.inference_mode()
def _check_onnx(path: Path, wrapper: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str]) -> float | None:
    """Max abs difference of the logits under onnxruntime against PyTorch; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(outputs, {k: v.numpy() for k, v in inputs.items()})
    ours = wrapper(**inputs)
    ours = ours if isinstance(ours, tuple) else (ours,)
    return float(max(np.abs(t - o.float().numpy()).max() for t, o in zip(theirs, ours, strict=True)))
