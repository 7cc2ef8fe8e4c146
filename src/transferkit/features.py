"""Feature extraction: one batched forward pass of the shared layers per example."""

from __future__ import annotations

import torch
from torch import nn

from transferkit.sources.inputs import ExampleDataset


@torch.inference_mode()
def extract_features(backbone: nn.Module, dataset: ExampleDataset, batch_size: int = 64,
                     device: torch.device | str = "cpu", num_workers: int = 0) -> torch.Tensor:
    """Features of every example, in order, shape (N, D), float32 on the CPU.

    The backbone runs in eval mode (BatchNorm statistics and dropout as at inference) and its
    previous training mode is restored afterwards.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=dataset.collate, num_workers=num_workers)
    was_training = backbone.training
    backbone.eval()
    chunks = []
    try:
        for inputs, _ in loader:
            inputs = {k: v.to(device) for k, v in inputs.items()}
            chunks.append(backbone(**inputs).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, 0)
