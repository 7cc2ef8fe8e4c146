"""Task-specific layers placed on top of the shared layers."""

from __future__ import annotations

from torch import nn


def make_head(in_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> nn.Sequential:
    """A classification head: optional hidden layer (GELU), dropout, then a linear layer.

    The last linear layer is always ``head[-1]``, so callers can reach the class weights.
    """
    layers: list[nn.Module] = []
    width = in_features
    if hidden:
        layers += [nn.Linear(in_features, hidden), nn.GELU()]
        width = hidden
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
