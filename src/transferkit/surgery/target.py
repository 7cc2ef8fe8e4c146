"""The target model: the source's shared layers plus task-specific heads, and its transfer map."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from transferkit.sources.base import LayerGroup, SourceModel
from transferkit.surgery.heads import make_head

DEFAULT_TASK = "label"


class TargetModel(nn.Module):
    """Shared layers (``backbone``) feeding one or several named heads.

    ``forward(**inputs)`` returns ``{task: logits}``. BatchNorm layers whose parameters are all
    frozen stay in eval mode while training, so frozen layers keep the source's statistics.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], layer_groups: list[LayerGroup]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.layer_groups = [LayerGroup(g.name, [f"backbone.{p}" for p in g.params]) for g in layer_groups]

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_heads(self.backbone(**inputs))

    def forward_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {task: head(features) for task, head in self.heads.items()}

    def train(self, mode: bool = True) -> TargetModel:
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self

    def group_names(self) -> list[str]:
        """Layer groups, input to output, with ``heads`` last."""
        return [g.name for g in self.layer_groups] + ["heads"]

    def params_by_group(self) -> list[tuple[str, list[nn.Parameter]]]:
        """Parameters per layer group (input to output), heads last."""
        named = dict(self.named_parameters())
        groups = [(g.name, [named[p] for p in g.params if p in named]) for g in self.layer_groups]
        return groups + [("heads", list(self.heads.parameters()))]


def build_target_model(source: SourceModel, tasks: dict[str, int], hidden: int = 0, dropout: float = 0.0) -> TargetModel:
    """Keeps the source's shared layers and adds one fresh head per task (task -> class count)."""
    heads = {task: make_head(source.feature_dim, n, hidden, dropout) for task, n in tasks.items()}
    return TargetModel(source.backbone, heads, source.layer_groups)


@dataclass
class TransferEntry:
    tensor: str
    shape: list[int]
    origin: str  # "source", "fresh", "mixed" or "random" (no-transfer)
    group: str
    trainable: bool


def transfer_map(model: TargetModel, origin_of_backbone: str = "source",
                 fresh_groups: list[str] = ()) -> list[TransferEntry]:
    """What every tensor of the model is: copied from the source or fresh, its group, trainable.

    Args:
        model: The trained target model.
        origin_of_backbone: "source", "mixed" (``init_mix``) or "random" (no transfer).
        fresh_groups: Layer groups re-initialised before training (``reinit``).
    """
    group_of = {p: g.name for g in model.layer_groups for p in g.params}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    entries = []
    for name, t in model.state_dict().items():
        group = group_of.get(name, "heads" if name.startswith("heads.") else _owner(name, group_of))
        fresh = not name.startswith("backbone.") or group in fresh_groups
        origin = "fresh" if fresh else origin_of_backbone
        entries.append(TransferEntry(name, list(t.shape), origin, group, name in trainable))
    return entries


def _owner(name: str, group_of: dict[str, str]) -> str:
    # Buffers (BatchNorm running stats) belong to the group of their module's parameters.
    prefix = name.rsplit(".", 1)[0] + "."
    return next((g for p, g in group_of.items() if p.startswith(prefix)), "other")


def summarize_transfer_map(entries: list[TransferEntry], model: nn.Module) -> dict:
    """Counts for reports: tensors and parameters by origin, trainable and frozen parameters."""
    params = dict(model.named_parameters())
    by_origin: dict[str, dict[str, int]] = {}
    for e in entries:
        d = by_origin.setdefault(e.origin, {"tensors": 0, "parameters": 0})
        d["tensors"] += 1
        d["parameters"] += params[e.tensor].numel() if e.tensor in params else 0
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    total = sum(p.numel() for p in params.values())
    return {"by_origin": by_origin, "trainable_parameters": trainable, "total_parameters": total,
            "frozen_parameters": total - trainable}


def entries_as_dicts(entries: list[TransferEntry]) -> list[dict]:
    return [asdict(e) for e in entries]
