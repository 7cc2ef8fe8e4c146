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
    if format == "sentence-transformers":
        _check_st(config, modality, spec)
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
            "cannot reproduce it exactly). Export it with `--format sentence-transformers` (exact: "
            "`SentenceTransformer(dir).encode(texts)` returns the logits, stock modules, safetensors) or "
            "`--format onnx` (exact, any runtime), or train with `--pooling cls` for an exact "
            "transformers export.")


def _check_st(config: dict, modality: str | None, spec: dict) -> None:
    if modality != "text":
        raise ExportError(f"`--format sentence-transformers` is for text runs; this run is {modality!r}. Use "
                          f"`--format {_native_format(spec)}` or `--format onnx`.")
    if spec.get("loader") != "hf_text" or spec.get("pooling") not in ("mean", "cls"):
        raise ExportError(f"`--format sentence-transformers` needs a run on a transformers text encoder (an `hf:`, "
                          f"`st:` or packaged text source such as `minilm`); this run's source "
                          f"{config['source']['id']!r} is built by {spec.get('loader')!r}. Use `--format onnx`.")
    if config.get("fit", {}).get("cut_at"):
        raise ExportError(f"`--format sentence-transformers`: this run cuts the encoder (`--cut-at "
                          f"{config['fit']['cut_at']}`), which no sentence-transformers module does. "
                          "Use `--format onnx`.")


def _check_image(config: dict, format: str, modality: str | None, spec: dict) -> None:  # noqa: A002
    fit = config.get("fit", {})
    if modality != "image":
        raise ExportError(f"`--format {format}` is for image runs; this run is {modality!r}. "
                          f"Use `--format {'sentence-transformers' if modality == 'text' else 'onnx'}`.")
    if spec.get("loader") != format:
        raise ExportError(f"`--format {format}` needs a run on a {format} architecture; this run's source "
                          f"{config['source']['id']!r} is built by {spec.get('loader')!r}. Use "
                          f"`--format {_native_format(spec)}` or `--format onnx`.")
    if fit.get("head_hidden"):
        raise ExportError(f"`--format {format}`: this run's head has a hidden layer (`--head-hidden "
                          f"{fit['head_hidden']}`), but {format} classifiers end in one Linear layer. Use "
                          "`--format onnx`, or train with `--head-hidden 0`.")
