"""The audio input pipeline (:class:`AudioInputs`, registered for the "audio" modality).

Per example: decode and resample to the source's ``sample_rate``
(:func:`transferkit.data.audio.open_audio`), the source's own clean-up (Resemblyzer: volume
normalisation and silence trimming), then make the clip exactly ``clip_seconds`` long: a longer
clip is centre-cropped at evaluation and cropped at a random offset in training; a shorter one
is zero-padded at the end and its true length travels with it, so pooling ignores the padding
(:func:`masked_mean`). Examples may be file paths, 1-d float arrays already at the source's
rate, or ``(array, sample_rate)`` pairs. Per batch, the source's frontend (kept in
``SourceModel.tokenizer``, the slot the text sources use for their tokenizer) turns the clips
into the tensors its backbone takes.
"""

from __future__ import annotations

import numpy as np
import torch

from transferkit.errors import ConfigError, DataError
from transferkit.sources.base import SourceModel
from transferkit.sources.inputs import EXTRA_INPUTS


def crop_or_pad(wave: np.ndarray, n: int, random: bool = False) -> tuple[np.ndarray, int]:
    """``wave`` made exactly ``n`` samples long, and how many of them are real audio.

    Longer clips are cropped (centre, or a random offset when ``random``); shorter ones are
    zero-padded at the end.
    """
    if len(wave) > n:
        start = int(torch.randint(0, len(wave) - n + 1, ()).item()) if random else (len(wave) - n) // 2
        return np.ascontiguousarray(wave[start:start + n], dtype=np.float32), n
    out = np.zeros(n, dtype=np.float32)
    out[:len(wave)] = wave
    return out, len(wave)


class AudioFrontend:
    """Turns clips of a fixed length into a backbone's batch; subclasses fit one backbone."""

    def prepare(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """Clean-up before cropping (default: none)."""
        return wave

    def item(self, wave: np.ndarray, length: int):
        """Per-example work on a clip of fixed length holding ``length`` real samples."""
        return wave, length

    def collate(self, items: list) -> dict[str, torch.Tensor]:
        waves, lengths = zip(*items)
        return {"input_values": torch.from_numpy(np.stack(waves)), "lengths": torch.tensor(lengths)}


class AudioInputs:
    """Audio examples -> fixed-length clips -> the source's batch (policy in the module docstring)."""

    def __init__(self, source: SourceModel, train: bool = False) -> None:
        pre = source.preprocessing
        if not pre.sample_rate or not pre.clip_seconds or pre.clip_seconds <= 0:
            raise ConfigError(f"Source {source.id!r} has no usable audio preprocessing "
                              f"(sample_rate={pre.sample_rate!r}, clip_seconds={pre.clip_seconds!r}).")
        self.sample_rate = int(pre.sample_rate)
        self.samples = max(1, round(pre.clip_seconds * self.sample_rate))
        frontend = source.tokenizer
        self.frontend: AudioFrontend = frontend if isinstance(frontend, AudioFrontend) else AudioFrontend()
        self.train = train

    def load(self, example):
        wave = self.decode(example)
        wave = self.frontend.prepare(wave, self.sample_rate)
        return self.frontend.item(*crop_or_pad(wave, self.samples, random=self.train))

    def decode(self, example) -> np.ndarray:
        from transferkit.data.audio import open_audio, resample

        if isinstance(example, tuple) and len(example) == 2 and isinstance(example[0], np.ndarray):
            wave, rate = example
            wave = resample(np.asarray(wave, dtype=np.float32), int(rate), self.sample_rate)
        elif isinstance(example, np.ndarray):
            wave = example
        else:
            wave = open_audio(example, self.sample_rate)
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1 or wave.size == 0:
            raise DataError(f"`example` must be an audio file, a non-empty 1-d array of samples at "
                            f"{self.sample_rate} Hz or an (array, sample_rate) pair; got an array of "
                            f"shape {wave.shape}.")
        return wave

    def collate(self, items: list) -> dict[str, torch.Tensor]:
        return self.frontend.collate(items)


EXTRA_INPUTS["audio"] = AudioInputs


def masked_mean(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over time of (B, T, D) ``hidden`` using the first ``valid[b]`` steps of each row."""
    steps = torch.arange(hidden.shape[1], device=hidden.device)
    mask = (steps[None, :] < valid.to(hidden.device)[:, None].clamp_min(1)).unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
