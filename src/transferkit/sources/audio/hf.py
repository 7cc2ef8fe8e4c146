"""``hf:`` speech and audio encoders from transformers, each with its own feature extractor.

- wav2vec2, HuBERT, WavLM, data2vec-audio, UniSpeech(-SAT), SEW(-D) and wav2vec2-conformer:
  the last hidden state mean-pooled over the frames of the real audio (clips of up to 8 s; a
  model whose feature extractor returns an attention mask gets batches padded to their longest
  clip, which the mask hides; the others, such as wav2vec2-base with its group norm, always see
  zero-padded 8 s clips so padding cannot depend on batch-mates);
- AST (``audio-spectrogram-transformer``): its pooled output (the mean of the CLS and
  distillation tokens), clip fixed by the extractor's ``max_length`` frames (10.24 s);
- Whisper: the encoder only, fed its log-mel extractor's features, mean-pooled over the frames
  of the real audio, clip fixed by ``chunk_length`` (30 s).

They register as ``MODEL_TYPE_BUILDERS`` hooks of the ``hf:`` scheme (``sources/transformers``)
and as the ``hf_audio`` spec loader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.errors import ConfigError, UnsafeFileError
from transferkit.sources.audio.inputs import AudioFrontend, masked_mean
from transferkit.sources.base import (
    SPEC_BUILDERS,
    SPEC_FIELDS,
    Preprocessing,
    SourceModel,
    layer_groups_from_children,
)
from transferkit.sources.schema import string
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
            return masked_mean(hidden, valid)
        hidden = self.model(input_values, attention_mask=attention_mask).last_hidden_state
        if lengths is None:
            return hidden.mean(1)
        return masked_mean(hidden, self.model._get_feat_extract_output_lengths(lengths))


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
