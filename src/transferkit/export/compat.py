"""Whether a run can be exported to a format, decided from its ``config.json`` alone (before any model is built)."""

from __future__ import annotations

from transferkit.export.common import FORMATS, ExportError


def check_compatible(config: dict, format: str) -> None:  # noqa: A002
    """Raises ``ExportError`` (naming the format that works) when ``format`` cannot export this run exactly."""
    modality = config["source"]["preprocessing"].get("modality")
    spec = config["source"].get("spec", {})
    if len(config.get("classes", {})) != 1 and format != "onnx":
        raise ExportError(f"`--format {format}` exports runs with one task head; this run has "
                          f"{list(config['classes'])}. `--format onnx` exports every head.")
    if format == "onnx":
        if modality not in ("image", "text"):
            raise ExportError(f"`--format onnx` exports image and text runs; this run is {modality!r}.")
        return
    if format == "hf":
        _check_hf(modality, spec)
        return
    _check_image(config, format, modality, spec)


def _native_format(spec: dict) -> str:
    """The format named after the run's loader, or ``onnx`` when no exporter is named after it."""
    return spec.get("loader") if spec.get("loader") in FORMATS else "onnx"


def _check_hf(modality: str | None, spec: dict) -> None:
    if modality != "text":
        raise ExportError(f"`--format hf` is for text runs; this run is {modality!r}. Use "
                          f"`--format {_native_format(spec)}` or `--format onnx`.")
    if spec.get("pooling") == "mean":
        raise ExportError(
            "`--format hf`: this run mean-pools the token states (`pooling='mean'`, transferkit's default for "
            "text sources), and no stock transformers sequence-classification model computes a masked mean "
            "over a BERT encoder (BertForSequenceClassification classifies tanh(dense(first token)), which "
            "cannot reproduce it exactly). Export it with `--format onnx` (exact, any runtime), or train with "
            "first-token pooling (`pooling='cls'`, e.g. an `st:` source whose pooling is CLS) for an exact "
            "transformers export.")


def _check_image(config: dict, format: str, modality: str | None, spec: dict) -> None:  # noqa: A002
    fit = config.get("fit", {})
    if modality != "image":
        raise ExportError(f"`--format {format}` is for image runs; this run is {modality!r}. "
                          f"Use `--format {'hf' if modality == 'text' else 'onnx'}`.")
    if spec.get("loader") != format:
        raise ExportError(f"`--format {format}` needs a run on a {format} architecture; this run's source "
                          f"{config['source']['id']!r} is built by {spec.get('loader')!r}. Use "
                          f"`--format {_native_format(spec)}` or `--format onnx`.")
    if fit.get("head_hidden"):
        raise ExportError(f"`--format {format}`: this run's head has a hidden layer (`--head-hidden "
                          f"{fit['head_hidden']}`), but {format} classifiers end in one Linear layer. Use "
                          "`--format onnx`, or train with `--head-hidden 0`.")
