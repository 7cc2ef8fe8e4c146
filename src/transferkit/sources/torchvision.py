"""Sources from torchvision: ``torchvision:<model name>`` (e.g. ``torchvision:resnet18``).

Pretrained weights come from torchvision's default weights (a download on a machine with a
network); ``@random`` builds the architecture only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferkit.errors import ConfigError, UnknownNameError
from transferkit.sources.base import (
    SCHEMES,
    SPEC_BUILDERS,
    SPEC_FIELDS,
    Preprocessing,
    SourceModel,
    layer_groups_from_children,
)
from transferkit.sources.schema import NAME_PATTERN, string

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier with its last Linear layer replaced by ``Identity``.

    ``forward(pixel_values)`` returns the pooled features the classifier used to see.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


def split_classifier(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """Takes the last ``nn.Linear`` (the ImageNet classifier) out of a torchvision model.

    Returns the model with that layer replaced by ``Identity``, and the layer itself.
    """
    name, last = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name, last = n, m
    if last is None:
        raise ValueError(f"{type(model).__name__} has no Linear classifier to remove")
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    return model, last


def _fit_classifier_to(model: nn.Module, state_dict: dict) -> None:
    """Resizes the last Linear layer to the checkpoint's class count (a user's own fine-tuned model)."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    weight = state_dict.get(f"{name}.weight")
    layer = model.get_submodule(name)
    if weight is not None and weight.shape != layer.weight.shape:
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None))


def build(name: str, weights: str | None, state_dict: dict | None = None, image_size: int = 224) -> SourceModel:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        import difflib

        close = difflib.get_close_matches(name, torchvision.models.list_models(module=torchvision.models), n=1)
        hint = f" Did you mean 'torchvision:{close[0]}'?" if close else ""
        raise UnknownNameError(f"Unknown torchvision model {name!r}.{hint} See `torchvision.models.list_models()`.")
    model = torchvision.models.get_model(name, weights=weights)
    if state_dict is not None:
        _fit_classifier_to(model, state_dict)
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as e:
            text = " ".join(str(e).split())
            raise ConfigError(f"The weights do not fit torchvision's {name!r}: {text[:300]}. Name the "
                              "architecture the weights were saved from.") from None
    model, head = split_classifier(model)
    backbone = TorchvisionBackbone(model)
    return SourceModel(
        id=f"torchvision:{name}",
        modality="image",
        backbone=backbone,
        feature_dim=head.in_features,
        preprocessing=Preprocessing("image", image_size=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                    interpolation="bilinear", crop_pct=0.875),
        layer_groups=layer_groups_from_children(backbone),
        spec={"loader": "torchvision", "name": name},
        head=head,
        architecture=name,
    )


@SCHEMES.register("torchvision")
def load(name: str, pretrained: bool) -> SourceModel:
    source = build(name, weights="DEFAULT" if pretrained else None)
    source.weights = "torchvision default weights (download)" if pretrained else "random init"
    return source


SPEC_FIELDS["torchvision"] = {"name": string(pattern=NAME_PATTERN, required=True)}


@SPEC_BUILDERS.register("torchvision")
def from_spec(spec: dict, base_dir: Path) -> SourceModel:
    return build(spec["name"], weights=None)
