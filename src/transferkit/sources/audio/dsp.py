"""Resemblyzer's preprocessing in numpy: volume normalisation, webrtcvad silence trimming and
``wav_to_mel_spectrogram`` (40 Slaney mel bands every 10 ms).

These reproduce ``resemblyzer.audio`` (checked in the tests) without importing librosa and
scipy.ndimage, which cost seconds per process.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from transferkit.errors import ConfigError

RESEMBLYZER_RATE = 16000


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
