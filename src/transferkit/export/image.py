"""``--format torchvision`` / ``--format timm``: an image run as the plain architecture's ``model.safetensors``.

The run must be on a torchvision / timm architecture whose head is one Linear layer; the export loads
with ``torchvision.models.get_model(name, num_classes=C)`` / ``timm.create_model(name, num_classes=C)``
and ``load_state_dict``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferkit._io import save_weights, write_json
from transferkit.export.common import ExportError, ExportResult, id2label


def export_torchvision(run, out: Path) -> ExportResult:
    import torchvision

    name = run.config["source"]["spec"]["name"]
    num_classes = len(run.classes[run.main_task])
    plain = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    classifier = [n for n, m in plain.named_modules() if isinstance(m, nn.Linear)][-1]
    return _export_image_weights(run, out, plain, classifier, "torchvision",
                                 f"torchvision.models.get_model({name!r}, num_classes={num_classes})")


def export_timm(run, out: Path) -> ExportResult:
    import timm

    spec = run.config["source"]["spec"]
    num_classes = len(run.classes[run.main_task])
    kwargs = dict(spec.get("model_kwargs") or {})
    kwargs.pop("num_classes", None)
    plain = timm.create_model(spec["name"], pretrained=False, num_classes=num_classes, **kwargs)
    head = plain.get_classifier()
    classifier = next(n for n, m in plain.named_modules() if m is head)
    args = ", ".join([repr(spec["name"]), f"num_classes={num_classes}", *[f"{k}={v!r}" for k, v in kwargs.items()]])
    return _export_image_weights(run, out, plain, classifier, "timm", f"timm.create_model({args})")


def _single_linear(head: nn.Module, format: str) -> nn.Linear:  # noqa: A002
    layers = [m for m in head if not isinstance(m, nn.Dropout)] if isinstance(head, nn.Sequential) else [head]
    if len(layers) != 1 or not isinstance(layers[0], nn.Linear):
        raise ExportError(f"`--format {format}` needs a head that is one Linear layer; this run's head is "
                          f"{head}. Use `--format onnx`.")
    return layers[0]


def _backbone_state(run) -> dict:
    prefix = "backbone.model."
    state = run.model.state_dict()
    if any(not k.startswith(prefix) for k in state if k.startswith("backbone.")):
        raise ExportError("The run's shared layers are wrapped (e.g. by LoRA adapters) and no longer match the "
                          "plain architecture. Use `--format onnx`.")
    return {k[len(prefix):]: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith(prefix)}


def _export_image_weights(run, out: Path, plain: nn.Module, classifier: str, format: str,  # noqa: A002
                          constructor: str) -> ExportResult:
    linear = _single_linear(run.model.heads[run.main_task], format)
    state = _backbone_state(run)
    state[f"{classifier}.weight"] = linear.weight.detach().cpu().contiguous()
    if linear.bias is not None:
        state[f"{classifier}.bias"] = linear.bias.detach().cpu().contiguous()
    try:
        plain.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"`--format {format}`: the run's weights do not fit `{constructor}` "
                          f"({str(e).splitlines()[0]}). Use `--format onnx`.") from None
    classes = run.classes[run.main_task]
    notes = [f"Classifier weights written as `{classifier}`; every other tensor is the run's shared layers."]
    if format == "timm" and _save_timm_hub_layout(plain, out, run):
        notes.append("Written with timm's own `save_for_hf` layout, so `timm.create_model(\"local-dir:<this "
                     "directory>\", pretrained=True)` also loads it, classes and preprocessing included.")
    else:
        save_weights(plain.state_dict(), out / "model.safetensors", metadata={"format": "pt"})
    write_json(out / "labels.json", {"constructor": constructor, "num_classes": len(classes), "classes": classes,
                                     "id2label": id2label(classes)})
    diff = _check_image(run, plain)
    return ExportResult(format, out, [], constructor, diff, notes)


def _save_timm_hub_layout(plain: nn.Module, out: Path, run) -> bool:
    """``model.safetensors`` + timm's ``config.json`` (labels, preprocessing); False if this timm cannot."""
    try:
        from timm.models import save_for_hf

        pre = run.source.preprocessing
        size = pre.image_size or 224
        data_config = {"input_size": (3, size, size), "mean": tuple(pre.mean), "std": tuple(pre.std),
                       "crop_pct": pre.crop_pct, "interpolation": pre.interpolation}
        save_for_hf(plain, str(out), model_config={"label_names": list(run.classes[run.main_task])},
                    safe_serialization=True, data_config=data_config)
        return (out / "model.safetensors").is_file()
    except Exception:  # noqa: BLE001 - older timm: plain safetensors below
        for name in ("model.safetensors", "config.json"):
            (out / name).unlink(missing_ok=True)
        return False


@torch.inference_mode()
def _check_image(run, plain: nn.Module) -> float:
    """Max abs difference of the logits between the plain architecture and the run, on random images."""
    size = run.source.preprocessing.image_size or 224
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    run.model.eval()
    plain.eval()
    return float((plain(x).float() - run.model(pixel_values=x)[run.main_task].float()).abs().max())
