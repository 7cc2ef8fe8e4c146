"""Layer surgery on the shared layers: cut them at a layer group, or re-initialise groups.

Cutting keeps the layers up to and including a named group and uses that group's output,
average-pooled over space (conv maps) or tokens (sequences), as the feature vector. Layers
after the cut are removed from the model, so they cost neither compute nor parameters.
Intermediate features often transfer better to targets far from the source domain
(Yosinski, Clune, Bengio, Lipson 2014, "How transferable are features in deep neural
networks?", NeurIPS).

Re-initialising the top groups replaces source weights with fresh ones, a known remedy when
the last pretrained layers are too specialised to the source task (Zhang et al. 2021,
"Revisiting Few-sample BERT Fine-tuning", ICLR).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.sources.base import SourceModel


class _Stop(Exception):
    def __init__(self, output) -> None:
        self.output = output


class CutBackbone(nn.Module):
    """Runs a backbone until the module ``cut_module`` returns, then pools its output."""

    def __init__(self, backbone: nn.Module, cut_module: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.cut_module = cut_module
        backbone.get_submodule(cut_module).register_forward_hook(_raise_output)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        try:
            self.backbone(**inputs)
        except _Stop as stop:
            return pool(stop.output, inputs.get("attention_mask"))
        raise RuntimeError(f"the cut module {self.cut_module!r} did not run in forward")


def _raise_output(module, args, output):
    raise _Stop(output)


def pool(output, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per example: mean over space for (B, C, H, W), over tokens for (B, T, D)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if hasattr(output, "last_hidden_state"):
        output = output.last_hidden_state
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 3:
        if attention_mask is not None and attention_mask.shape[:2] == output.shape[:2]:
            mask = attention_mask.unsqueeze(-1).to(output.dtype)
            return (output * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return output.mean(dim=1)
    if output.dim() == 2:
        return output
    raise ConfigError(f"Cannot pool a {output.dim()}-d output of shape {tuple(output.shape)} into features.")


def cut_source(source: SourceModel, group: str, example_batch: dict[str, torch.Tensor] | None = None,
               feature_dim: int | None = None) -> SourceModel:
    """The source with its shared layers cut after layer group ``group``.

    Args:
        source: The source to cut (its backbone is changed in place and wrapped).
        group: A layer-group name (see ``source.layer_groups``); the last group kept.
        example_batch: One small batch, used to measure the new feature size...
        feature_dim: ... unless the size is known (rebuilding a saved run).

    Returns:
        A new ``SourceModel`` without a source head (the old head read the removed layers),
        whose ``spec`` records the cut so saved runs rebuild the same architecture.
    """
    names = [g.name for g in source.layer_groups]
    if group not in names:
        raise ConfigError(f"`--cut-at` {group!r} is not a layer group of {source.id!r}; groups: {', '.join(names)}.")
    keep = names.index(group) + 1
    cut_module = _output_module(source.layer_groups, keep - 1)
    for removed in source.layer_groups[keep:]:
        for owner in _owners(removed.params):
            _replace_with_identity(source.backbone, owner)
    backbone = CutBackbone(source.backbone, cut_module)
    if feature_dim is None:
        backbone.eval()
        with torch.no_grad():
            feature_dim = backbone(**example_batch).shape[-1]
    groups = [dataclasses.replace(g, params=[f"backbone.{p}" for p in g.params]) for g in source.layer_groups[:keep]]
    spec = {**source.spec, "cut_at": group, "cut_feature_dim": feature_dim}
    return dataclasses.replace(source, backbone=backbone, feature_dim=feature_dim, layer_groups=groups, head=None,
                               spec=spec)


def _owners(params: list[str]) -> list[str]:
    """Names of the modules that directly own these parameters, in order, without repeats."""
    return list(dict.fromkeys(p.rsplit(".", 1)[0] for p in params))


def _output_module(groups, index: int) -> str:
    """The module whose output is a group's output.

    The module holding all of the group's parameters when it holds no other group's (a
    MobileNet block, a BERT layer); otherwise the owner of the group's last parameter (timm
    groups such as ``conv_stem`` + ``bn1``).
    """
    params = groups[index].params
    others = [p for i, g in enumerate(groups) if i != index for p in g.params]
    prefix = params[0].rsplit(".", 1)[0]
    while "." in prefix and not all(p.startswith(prefix + ".") for p in params):
        prefix = prefix.rsplit(".", 1)[0]
    if all(p.startswith(prefix + ".") for p in params) and not any(p.startswith(prefix + ".") for p in others):
        return prefix
    return _owners(params)[-1]


def _replace_with_identity(root: nn.Module, name: str) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, nn.Identity())


def reinit_groups(model: nn.Module, groups: list[str]) -> list[str]:
    """Freshly initialises the modules owning the named groups' parameters.

    Returns the names of the parameters reset; a group with a parameter whose module has no
    ``reset_parameters`` (e.g. a bare position embedding) is an error naming it.
    """
    by_name = {g.name: g for g in model.layer_groups}
    unknown = [g for g in groups if g not in by_name]
    if unknown:
        raise ConfigError(f"`--reinit` names unknown layer group(s) {unknown}; groups: {', '.join(by_name)}.")
    reset = []
    for name in groups:
        for owner in _owners(by_name[name].params):
            module = model.get_submodule(owner)
            if not hasattr(module, "reset_parameters"):
                raise ConfigError(f"`--reinit` {name!r}: module {owner!r} ({type(module).__name__}) cannot be "
                                  "re-initialised; choose a later group.")
            module.reset_parameters()
        reset += by_name[name].params
    return reset
