"""Sources from timm: ``timm:<model name>`` (e.g. ``timm:resnet18.a1_in1k``).

timm's own protocol does the work: ``num_classes=0`` gives pooled features, ``get_classifier``
the source head, ``group_matcher`` the layer groups, ``pretrained_cfg`` the preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferkit.errors import ConfigError, UnknownNameError
from transferkit.sources.base import SCHEMES, SPEC_BUILDERS, SPEC_FIELDS, LayerGroup, Preprocessing, SourceModel
from transferkit.sources.schema import NAME_PATTERN, check_mapping, integer, mapping, number, string

#: The ``timm.create_model`` options a ``file:`` JSON or a run's spec may set: shape and
#: regularisation only. Anything else is refused, since other options can make timm read files.
MODEL_KWARGS = {
    "num_classes": integer(0, 100_000),
    "drop_rate": number(0.0, 1.0, high_open=True),
    "drop_path_rate": number(0.0, 1.0, high_open=True),
    "global_pool": string(choices=("avg", "max", "avgmax")),  # the pools every timm family takes
    "img_size": integer(16, 1024),
}
_FROM_SAFETENSORS = ("transferkit reads weights only from the safetensors file beside the JSON "
                     "(or the run's model.safetensors)")
#: ``timm.create_model`` options that load weights or change what the model returns, and why each is refused.
REFUSED_MODEL_KWARGS = {
    "checkpoint_path": f"timm would torch.load (unpickle) that file, which can run code; {_FROM_SAFETENSORS}",
    "pretrained": f"it makes timm download or read weights; {_FROM_SAFETENSORS}",
    "pretrained_cfg": f"it tells timm where to read weights from; {_FROM_SAFETENSORS}",
    "pretrained_cfg_overlay": f"it tells timm where to read weights from; {_FROM_SAFETENSORS}",
    "pretrained_strict": f"it changes how timm reads weights; {_FROM_SAFETENSORS}",
    "cache_dir": f"it tells timm where to read weights from; {_FROM_SAFETENSORS}",
    "features_only": "it turns the model into a feature-map extractor; transferkit needs the pooled features "
                     "(use `--cut-at` for intermediate features)",
}
SPEC_FIELDS["timm"] = {
    "name": string(pattern=NAME_PATTERN, required=True),
    "model_kwargs": mapping(MODEL_KWARGS, refused=REFUSED_MODEL_KWARGS),
}


def check_model_kwargs(values: object, where: str, prefix: str = "model_kwargs.") -> dict:
    """Checks ``timm.create_model`` options from a file against ``MODEL_KWARGS``.

    Raises:
        UnsafeFileError: An option that would make timm load a file (``checkpoint_path``, ...).
        ConfigError: Not an object, an unknown option, or a value of the wrong type or range.
    """
    return check_mapping({} if values is None else values, MODEL_KWARGS, where, prefix=prefix,
                         refused=REFUSED_MODEL_KWARGS)


class TimmBackbone(nn.Module):
    """A timm model without its classifier: ``forward(pixel_values)`` -> pooled features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


def build(name: str, pretrained: bool, state_dict: dict | None = None, model_kwargs: dict | None = None,
          where: str = "the timm model options") -> SourceModel:
    """Builds ``timm:<name>`` as a source.

    Args:
        name: A timm model name (``resnet18``, ``resnet18.a1_in1k``).
        pretrained: Download timm's pretrained weights.
        state_dict: Weights to load instead (read from safetensors).
        model_kwargs: Options for ``timm.create_model``, checked against ``MODEL_KWARGS``.
        where: Where ``model_kwargs`` and ``state_dict`` come from, for messages.

    Raises:
        UnknownNameError: timm has no such model.
        UnsafeFileError: ``model_kwargs`` hold an option that would make timm load a file.
        ConfigError: ``model_kwargs`` are not allowed or do not fit the model, or the weights do not fit it.
    """
    model_kwargs = check_model_kwargs(model_kwargs, where)
    _check_known(name)
    model = _create_model(name, pretrained, state_dict, model_kwargs, where)
    head = None
    if getattr(model, "num_classes", 0):
        classifier = model.get_classifier()
        head = classifier if isinstance(classifier, nn.Linear) else None
    model.reset_classifier(0)
    return SourceModel(
        id=f"timm:{name}",
        modality="image",
        backbone=TimmBackbone(model),
        feature_dim=model.num_features,
        preprocessing=_preprocessing(model),
        layer_groups=_layer_groups(model),
        spec={"loader": "timm", "name": name, "model_kwargs": model_kwargs or {}},
        head=head,
        architecture=name,
        license=str(model.pretrained_cfg.get("license", "")),
    )


def _check_known(name: str) -> None:
    """Raises ``UnknownNameError`` (with the closest timm name) when timm has no model ``name``."""
    import timm

    if not timm.is_model(name.split(".")[0]):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" Did you mean 'timm:{close[0]}'?" if close else ""
        raise UnknownNameError(f"Unknown timm model {name!r}.{hint} See `timm.list_models()`.")


def _create_model(name: str, pretrained: bool, state_dict: dict | None, model_kwargs: dict, where: str) -> nn.Module:
    """``timm.create_model`` with the checked options, then ``state_dict`` loaded when given.

    Without an explicit ``num_classes``, weights to load set it from their classifier's shape.
    """
    import timm

    kwargs = dict(model_kwargs or {})
    if state_dict is not None and "num_classes" not in kwargs:
        pretrained_cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
        key = f"{getattr(pretrained_cfg, 'classifier', 'head')}.weight"
        if key in state_dict:
            kwargs["num_classes"] = state_dict[key].shape[0]
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError) as e:  # e.g. `img_size` for a CNN
        if not model_kwargs:
            raise
        raise ConfigError(f"timm cannot build {name!r} with `model_kwargs` {model_kwargs!r} from {where}: "
                          f"{_first_line(e)}. Remove the options this model does not take.") from None
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as e:
            raise ConfigError(f"The weights from {where} do not fit timm's {name!r}: {_first_line(e)}. "
                              "Name the architecture the weights were saved from.") from None
    return model


def _preprocessing(model: nn.Module) -> Preprocessing:
    """The image preprocessing of timm's ``pretrained_cfg`` (``resolve_data_config``)."""
    import timm

    cfg = timm.data.resolve_data_config({}, model=model)
    return Preprocessing(
        "image", image_size=cfg["input_size"][-1], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bilinear"), crop_pct=cfg.get("crop_pct", 1.0),
    )


def _layer_groups(model: nn.Module) -> list[LayerGroup]:
    """timm's own fine-grained ``group_matcher`` groups, as layer groups of the backbone (``model.``)."""
    from timm.models import group_parameters

    matcher = model.group_matcher(coarse=False)
    groups = [
        LayerGroup(f"group{gid}", [f"model.{p}" for p in params])
        for gid, params in group_parameters(model, matcher).items()
    ]
    return [g for g in groups if g.params]


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + " ...") if len(text) > 300 else text or type(error).__name__


@SCHEMES.register("timm")
def load(name: str, pretrained: bool) -> SourceModel:
    source = build(name, pretrained=pretrained)
    source.weights = "timm pretrained weights (hub download)" if pretrained else "random init"
    return source


@SPEC_BUILDERS.register("timm")
def from_spec(spec: dict, base_dir: Path) -> SourceModel:
    return build(spec["name"], pretrained=False, model_kwargs=spec.get("model_kwargs"))
