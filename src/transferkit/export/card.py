"""The model card (``README.md``) of an export: what it is, how well it does next to the baseline, how to load it, limits."""

from __future__ import annotations

import math
from pathlib import Path

from transferkit.evaluation.report.context import baselines
from transferkit.export.common import ExportResult, preprocessing


def model_card(run, result: ExportResult) -> str:
    """The export's README.md: what it is, how well it does (next to the baseline), how to load it, limits."""
    data = run.metrics.get("data", {})
    n_test = data.get("split_sizes", {}).get("test", 0)
    lines = [*_header(run, result, data), *_results(run.metrics, n_test), *_data(run, data),
             *_source(run.config["source"]), *_loading(run, result), *_export_check(result),
             *_use_and_limits(run, data, n_test)]
    return "\n".join(lines)


def _header(run, result: ExportResult, data: dict) -> list[str]:
    src, fit = run.config["source"], run.config["fit"]
    return [
        "---",
        f"license: {_licence_tag(src.get('license'))}",
        f"library_name: {'transformers' if result.format == 'hf' else result.format}",
        f"tags: [transferkit, {data.get('modality', run.modality)}-classification, transfer-learning]",
        "---", "",
        f"# {src['id']} fine-tuned on {Path(data.get('origin', '')).name or 'a target task'} "
        f"({len(run.classes[run.main_task])} classes)", "",
        f"Exported by transferkit {run.config.get('transferkit_version', '')} as **{result.format}** "
        f"(`{result.architecture}`) from a run trained with strategy `{fit.get('strategy')}`, "
        f"seed {fit.get('seed')}.", "",
    ]


def _results(m: dict, n_test: int) -> list[str]:
    """The test metrics next to the no-transfer baseline, then per class."""
    lines = [
        "## Results (held-out test split)", "",
        "| | test accuracy | test macro-F1 |", "|---|---|---|",
        f"| this model | {_f(m.get('test_accuracy'))} {_interval(m.get('test_accuracy'), n_test)} | "
        f"{_f(m.get('test_macro_f1'))} |",
    ]
    if "baseline_test_accuracy" in m:
        lines += [f"| {label} ({m.get(prefix, 'same budget')}) | "
                  f"{_f(m[prefix + '_test_accuracy'])} | {_f(m.get(prefix + '_test_macro_f1'))} |"
                  for prefix, label, _ in baselines(m)]
        lines += ["", *(f"{label[0].upper()}{label[1:]}: {text}." for _, label, text in baselines(m))]
        gain = m["test_accuracy"] - m["baseline_test_accuracy"]
        lines += ["", ("Transfer helped" if gain > 0 else "Transfer LOST against" if gain < 0 else "Transfer tied with")
                  + f" the baseline: {gain * 100:+.1f} points of test accuracy."]
    else:
        lines += ["", "No no-transfer baseline was trained for this run."]
    per_class = m.get("test_per_class", {})
    if per_class:
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                  for c, v in per_class.items()]
    return lines


def _data(run, data: dict) -> list[str]:
    sizes = data.get("split_sizes", {})
    return [
        "", "## Data", "",
        f"{data.get('modality', run.modality)} examples from `{data.get('origin', 'unknown')}`; classes: "
        + ", ".join(f"`{c}`" for c in run.classes[run.main_task]) + ".",
        f"Split sizes: {sizes} "
        f"({'given by the data' if data.get('split_given') else 'made by transferkit, stratified'}).",
        f"Examples skipped as unreadable: {len(data.get('skipped', []))}.",
    ]


def _source(src: dict) -> list[str]:
    return [
        "", "## Source model and licence", "",
        f"- Source: `{src['id']}` ({src.get('architecture') or 'architecture not recorded'})",
        f"- Weights: {src.get('weights') or 'not recorded'}",
        f"- Licence of the source weights: **{src.get('license') or 'not recorded: check the source before use'}**. "
        "This fine-tuned model is a derivative of those weights; their licence terms apply.",
    ]


def _loading(run, result: ExportResult) -> list[str]:
    return [
        "", "## How to load it", "",
        _usage(run, result),
        "Preprocessing (also in `preprocessing.json`): " + "; ".join(preprocessing(run).get("steps", [])) + ".",
    ]


def _export_check(result: ExportResult) -> list[str]:
    return [
        "", "## Export check", "",
        f"Max absolute difference of the logits between this export (reloaded from disk) and the transferkit run "
        f"on sample inputs: **{'not measured' if result.max_abs_diff is None else f'{result.max_abs_diff:.2e}'}**.",
        *[f"- {n}" for n in result.notes],
    ]


def _use_and_limits(run, data: dict, n_test: int) -> list[str]:
    return [
        "", "## Intended use", "",
        f"Classifying {data.get('modality', run.modality)} inputs like the training data into the "
        f"{len(run.classes[run.main_task])} classes above, as a starting point to evaluate on your own held-out data.",
        "", "## Limits", "",
        f"- Evaluated on {n_test} held-out examples only; the interval above is a 95% Wilson interval for the "
        "accuracy, and it widens quickly on small test sets.",
        "- Only the listed classes exist for the model: every input gets one of them, however unrelated it is.",
        "- Inputs unlike the training data (other sensors, fonts, languages, domains) were not evaluated.",
        "- Inherits the biases and failure modes of the source model and of the training data.",
        "",
    ]


def _usage(run, result: ExportResult) -> str:
    """A Python snippet that loads the export with its own library and classifies an input."""
    if result.usage:  # the exporter wrote its own
        return result.usage
    labels = f"classes = {run.classes[run.main_task]!r}\n"
    if result.format == "hf":
        return ("```python\nimport torch\n"
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/directory\")\n"
                "model = AutoModelForSequenceClassification.from_pretrained(\"path/to/this/directory\").eval()\n"
                "batch = tokenizer([\"first text\", \"second text\"], padding=True, truncation=True, "
                "return_tensors=\"pt\")\n"
                "with torch.no_grad():\n    proba = model(**batch).logits.softmax(-1)\n"
                "print([model.config.id2label[i] for i in proba.argmax(-1).tolist()])\n```\n")
    if result.format == "onnx":
        if run.modality == "image":
            feed = "{\"pixel_values\": x.numpy()}"
            prep = "import torch\n" + _image_transform(run)
        else:
            feed = "{\"input_ids\": enc[\"input_ids\"], \"attention_mask\": enc[\"attention_mask\"]}"
            prep = ("from transformers import AutoTokenizer  # saved in this directory\n\n"
                    "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/directory\")\n"
                    "enc = tokenizer([\"first text\", \"second text\"], padding=True, truncation=True, "
                    "return_tensors=\"np\")\n")
        return ("```python\nimport numpy as np\nimport onnxruntime as ort\n" + prep + labels +
                "session = ort.InferenceSession(\"model.onnx\")\n"
                f"logits = session.run([\"logits\"], {feed})[0]\n"
                "proba = np.exp(logits - logits.max(-1, keepdims=True)); proba /= proba.sum(-1, keepdims=True)\n"
                "print([classes[i] for i in proba.argmax(-1)])\n```\n")
    module = "torchvision" if result.format == "torchvision" else "timm"
    return (f"```python\nimport torch\nimport {module}\nfrom safetensors.torch import load_file\n\n"
            f"model = {result.architecture}\nmodel.load_state_dict(load_file(\"model.safetensors\"))\nmodel.eval()\n"
            + _image_transform(run) + labels +
            "with torch.no_grad():\n    proba = model(x).softmax(-1)\n"
            "print([classes[i] for i in proba.argmax(-1).tolist()])\n```\n")


def _image_transform(run) -> str:
    """The snippet that turns an image file into the model's input ``x``, as the run preprocessed it."""
    pre = run.source.preprocessing
    size = pre.image_size or 224
    return (f"from PIL import Image\nfrom torchvision.transforms import v2 as T\n\n"
            f"transform = T.Compose([T.ToImage(), T.Resize({round(size / (pre.crop_pct or 1.0))}, "
            "antialias=True), "
            f"T.CenterCrop({size}),\n                       T.ToDtype(torch.float32, scale=True), "
            f"T.Normalize({list(pre.mean or ())}, {list(pre.std or ())})])\n"
            f"x = transform(Image.open(\"image.png\").convert(\"RGB\")).unsqueeze(0)\n")


def _licence_tag(licence: str | None) -> str:
    text = (licence or "").lower()
    for tag in ("apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0"):
        if tag in text:
            return tag
    return "other" if text else "unknown"


def _f(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _interval(accuracy, n: int) -> str:
    """95% Wilson score interval of an accuracy measured on ``n`` examples."""
    if not isinstance(accuracy, (int, float)) or not n:
        return ""
    z = 1.96
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"(95% CI {max(0.0, centre - half):.2f}-{min(1.0, centre + half):.2f}, n={n})"
