"""``resemblyzer``: Resemblyzer's GE2E speaker encoder (3 LSTM layers of 256 + a linear layer,
16 kHz, 40 mel bands every 10 ms, with Resemblyzer's preprocessing reproduced in numpy in
:mod:`transferkit.sources.audio.dsp`).

The embedding is ReLU(linear(last hidden state)), L2-normalised, 256-d. Default clip 1.6 s, the
partial-utterance length it was trained on. The LSTM is kept as three one-layer LSTMs
(``lstm.0`` ... ``lstm.2``), numerically the same network, so each layer is its own layer
group for freezing, gradual unfreezing, layer-wise learning rates, ``--cut-at`` and ``--reinit``.
The frames past the longest clip of a batch are skipped (padding at the end of a clip cannot
reach a recurrent output before it), so short clips cost little.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.sources.audio.assets import _package_file
from transferkit.sources.audio.dsp import (
    RESEMBLYZER_RATE,
    normalize_volume,
    resemblyzer_mel,
    trim_long_silences,
)
from transferkit.sources.audio.inputs import AudioFrontend
from transferkit.sources.base import (
    PACKAGED,
    SPEC_BUILDERS,
    SPEC_FIELDS,
    Preprocessing,
    SourceInfo,
    SourceModel,
    layer_groups_from_children,
)
from transferkit.sources.schema import boolean

RESEMBLYZER_CLIP = 1.6


class ResemblyzerFrontend(AudioFrontend):
    """Resemblyzer's preprocessing: volume raised to -30 dBFS, long silences trimmed (kept whole
    when fewer than 0.25 s would remain, e.g. for music or tones), then 40-band mel frames.

    The numpy functions of :mod:`transferkit.sources.audio.dsp` reproduce ``resemblyzer.audio``
    (checked in the tests) without importing librosa and scipy.ndimage, which cost seconds per process.
    """

    def __init__(self, trim_silence: bool = True) -> None:
        self.trim_silence = trim_silence

    def prepare(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        wave = normalize_volume(wave)
        if self.trim_silence and len(wave) >= sample_rate // 4:
            trimmed = trim_long_silences(wave, sample_rate)
            if len(trimmed) >= sample_rate // 4:
                wave = trimmed
        return wave

    def item(self, wave: np.ndarray, length: int):
        mel = resemblyzer_mel(wave)  # (frames, 40), 10 ms hop, centred
        return mel, min(len(mel), 1 + length // 160)

    def collate(self, items: list) -> dict[str, torch.Tensor]:
        mels, valid = zip(*items)
        steps = torch.arange(mels[0].shape[0])
        return {"mels": torch.from_numpy(np.stack(mels)),
                "attention_mask": (steps[None, :] < torch.tensor(valid)[:, None]).long()}


class ResemblyzerBackbone(nn.Module):
    """GE2E speaker encoder: 3 LSTM layers, linear, ReLU, L2 norm (Wan et al. 2018)."""

    def __init__(self, mels: int = 40, hidden: int = 256, embedding: int = 256, layers: int = 3) -> None:
        super().__init__()
        self.lstm = nn.ModuleList(nn.LSTM(mels if i == 0 else hidden, hidden, batch_first=True) for i in range(layers))
        self.linear = nn.Linear(hidden, embedding)

    def forward(self, mels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = mels
        if attention_mask is not None:  # frames after the longest clip cannot reach any output
            x = x[:, : max(1, int(attention_mask.sum(1).max()))]
        for layer in self.lstm:
            x, _ = layer(x)
        if attention_mask is None:
            last = x[:, -1]
        else:
            idx = attention_mask.sum(1).long().clamp_min(1) - 1
            last = x[torch.arange(x.shape[0], device=x.device), idx]
        embed = F.relu(self.linear(last))
        return embed / embed.norm(dim=1, keepdim=True).clamp_min(1e-12)


def resemblyzer_state_dict() -> dict[str, torch.Tensor]:
    """Resemblyzer's ``pretrained.pt`` mapped onto :class:`ResemblyzerBackbone` (read with weights_only)."""
    path = _package_file("resemblyzer", "pretrained.pt", "pip install --no-deps resemblyzer==0.1.4")
    state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
    out = {}
    for key, value in state.items():
        if key.startswith("lstm."):  # lstm.weight_ih_l1 -> lstm.1.weight_ih_l0
            name, layer = key[len("lstm."):].rsplit("_l", 1)
            out[f"lstm.{layer}.{name}_l0"] = value
        elif key.startswith("linear."):
            out[key] = value  # similarity_weight/bias belong to the GE2E loss, not the encoder
    return out


def resemblyzer_source(pretrained: bool = True, clip_seconds: float = RESEMBLYZER_CLIP,
                       trim_silence: bool = True) -> SourceModel:
    backbone = ResemblyzerBackbone()
    if pretrained:
        backbone.load_state_dict(resemblyzer_state_dict())
    return SourceModel(
        id="resemblyzer",
        modality="audio",
        backbone=backbone,
        feature_dim=256,
        preprocessing=Preprocessing("audio", sample_rate=RESEMBLYZER_RATE, clip_seconds=clip_seconds),
        layer_groups=layer_groups_from_children(backbone),
        spec={"loader": "resemblyzer", "trim_silence": trim_silence},
        tokenizer=ResemblyzerFrontend(trim_silence),
        architecture="GE2E speaker encoder: 3-layer LSTM (256) + linear, 40 mel bands (Resemblyzer)",
        weights="GE2E speaker verification, Resemblyzer pretrained.pt" if pretrained else "random init",
        license="Apache-2.0",
    )


SPEC_FIELDS["resemblyzer"] = {"trim_silence": boolean()}


@SPEC_BUILDERS.register("resemblyzer")
def _resemblyzer_from_spec(spec: dict, base_dir: Path) -> SourceModel:
    return resemblyzer_source(pretrained=False, trim_silence=spec.get("trim_silence", True))


PACKAGED.register("resemblyzer")((
    SourceInfo("resemblyzer", "audio", "GE2E speaker encoder, 3-layer LSTM", 256,
               "speaker verification, resemblyzer 0.1.4", "Apache-2.0"),
    lambda pretrained: resemblyzer_source(pretrained)))
