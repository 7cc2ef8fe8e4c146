"""Sources from timm: ``timm:<model name>`` (e.g. ``timm:resnet18.a1_in1k``).

timm's own protocol does the work: ``num_classes=0`` gives pooled features, ``get_classifier``
the source head, ``group_matcher`` the layer groups, ``pretrained_cfg`` the preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferkit.errors import UnknownNameError
from transferkit.sources.base import SCHEMES, SPEC_BUILDERS, LayerGroup, Preprocessing, SourceModel


class TimmBackbone(nn.Module):
    """A timm model without its classifier: ``forward(pixel_values)`` -> pooled features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


def build(name: str, pretrained: bool, state_dict: dict | None = None, model_kwargs: dict | None = None) -> SourceModel:
    import timm
    from timm.models import group_parameters

    if not timm.is_model(name.split(".")[0]):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" Did you mean 'timm:{close[0]}'?" if close else ""
        raise UnknownNameError(f"Unknown timm model {name!r}.{hint} See `timm.list_models()`.")
    kwargs = dict(model_kwargs or {})
    if state_dict is not None and "num_classes" not in kwargs:
        pretrained_cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
        key = f"{getattr(pretrained_cfg, 'classifier', 'head')}.weight"
        if key in state_dict:
            kwargs["num_classes"] = state_dict[key].shape[0]
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    head = None
    if getattr(model, "num_classes", 0):
        classifier = model.get_classifier()
        head = classifier if isinstance(classifier, nn.Linear) else None
    model.reset_classifier(0)
    cfg = timm.data.resolve_data_config({}, model=model)
    backbone = TimmBackbone(model)
    matcher = model.group_matcher(coarse=False)
    groups = [
        LayerGroup(f"group{gid}", [f"model.{p}" for p in params])
        for gid, params in group_parameters(model, matcher).items()
    ]
    return SourceModel(
        id=f"timm:{name}",
        modality="image",
        backbone=backbone,
        feature_dim=model.num_features,
        preprocessing=Preprocessing(
            "image", image_size=cfg["input_size"][-1], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
            interpolation=cfg.get("interpolation", "bilinear"), crop_pct=cfg.get("crop_pct", 1.0),
        ),
        layer_groups=[g for g in groups if g.params],
        spec={"loader": "timm", "name": name, "model_kwargs": model_kwargs or {}},
        head=head,
        architecture=name,
        license=str(model.pretrained_cfg.get("license", "")),
    )


@SCHEMES.register("timm")
def load(name: str, pretrained: bool) -> SourceModel:
    source = build(name, pretrained=pretrained)
    source.weights = "timm pretrained weights (hub download)" if pretrained else "random init"
    return source


@SPEC_BUILDERS.register("timm")
def from_spec(spec: dict, base_dir: Path) -> SourceModel:
    return build(spec["name"], pretrained=False, model_kwargs=spec.get("model_kwargs"))
