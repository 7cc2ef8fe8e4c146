"""Built-in sequence (time-series) models: ``seq:cnn1d``, ``seq:lstm``, ``seq:gru``, ``seq:transformer``.

There is no pretrained time-series model to ship, so these small architectures start from random
weights: train one on a source task with ``transferkit fit``, then transfer its run with
``--source run:DIR`` -- the source-task -> target-task flow.

Ids and options
---------------
Options follow the architecture as a query string: ``seq:lstm?channels=6&width=128&layers=3``.
Unknown options and out-of-range values are errors. Every model has:

- ``channels`` (1): input channels. A 1-channel model also takes multichannel series: each
  channel runs through the shared layers on its own and the features are averaged over the
  channels (channel independence, as in PatchTST, Nie et al. 2023, ICLR), so a model trained on
  univariate series transfers to multivariate targets. Any other mismatch is an error.
- ``width`` (64): hidden size, which is also the feature size.
- ``layers``: blocks after the stem (cnn1d 3, lstm/gru 2, transformer 2).
- ``dropout`` (0.1).
- ``norm`` (``series``): ``series`` standardises each channel of each series over its real steps
  (mean 0, std 1) inside the model, so sources and targets with different scales meet on common
  ground; ``none`` leaves values as they are (keep amplitude when it carries the label).
- ``max_len`` (4096): longer series are cropped to this many steps (centre at evaluation, a
  random offset in training).

Architecture-specific: ``kernel`` (cnn1d, 7; block ``i`` is dilated by ``2**i``), ``heads``
(transformer, 4) and ``patch`` (transformer, 1: steps per token).

- ``cnn1d``: conv stem, residual blocks (dilated conv, LayerNorm over channels, GELU).
- ``lstm`` / ``gru``: linear stem, one-layer recurrent blocks (``layers.0``, ``layers.1``, ...).
- ``transformer``: patch-embedding stem, sinusoidal positions, pre-norm encoder layers, LayerNorm.

Features are the mean of the last block's output over the real time steps.

Padding (:class:`SequenceInputs`): a batch is right-padded with zeros to its longest series and
``attention_mask`` marks the real steps. Every layer ignores padding -- convolution outputs are
re-zeroed at padded steps after each block (as at a series' end), recurrent layers run forward in
time so padding comes after every real step, the transformer masks padded keys -- so an example's
features do not depend on the batch it is in. Unidirectional recurrences keep that true without
packing.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.errors import ConfigError, DataError, UnknownNameError
from transferkit.sources.base import (
    SCHEMES,
    SPEC_BUILDERS,
    SPEC_FIELDS,
    Preprocessing,
    SourceModel,
    layer_groups_from_children,
)
from transferkit.sources.inputs import EXTRA_INPUTS
from transferkit.sources.schema import integer, mapping, number, string

COMMON = {"channels": 1, "width": 64, "dropout": 0.1, "norm": "series", "max_len": 4096}
ARCHITECTURES = {
    "cnn1d": {**COMMON, "layers": 3, "kernel": 7},
    "lstm": {**COMMON, "layers": 2},
    "gru": {**COMMON, "layers": 2},
    "transformer": {**COMMON, "layers": 2, "heads": 4, "patch": 1},
}
NORMS = ("series", "none")
#: Bounds of the whole-number options (the upper ones keep a model file from allocating without limit).
INT_BOUNDS = {"channels": (1, 1024), "width": (4, 4096), "layers": (1, 64), "max_len": (2, 1_000_000),
              "kernel": (1, 1025), "heads": (1, 64), "patch": (1, 4096)}
#: A saved spec's options, type-checked before ``_validate`` checks ranges and combinations.
OPTION_FIELDS = {**{k: integer() for k in INT_BOUNDS}, "dropout": number(), "norm": string(choices=NORMS)}
SPEC_FIELDS["seq"] = {
    "arch": string(choices=tuple(ARCHITECTURES), required=True),
    "options": mapping(OPTION_FIELDS),
}


# -- ids ---------------------------------------------------------------------------------------


def parse_id(name: str) -> tuple[str, dict]:
    """``"lstm?channels=6"`` -> ``("lstm", {every option, defaults filled in})``, validated."""
    arch, _, query = name.partition("?")
    arch = arch.strip()
    if arch not in ARCHITECTURES:
        close = difflib.get_close_matches(arch, list(ARCHITECTURES), n=1)
        hint = f" Did you mean 'seq:{close[0]}'?" if close else ""
        raise UnknownNameError(f"Unknown sequence architecture 'seq:{arch}'.{hint} Known: "
                               f"{', '.join('seq:' + a for a in ARCHITECTURES)}; see `transferkit sources`.")
    defaults = ARCHITECTURES[arch]
    options = dict(defaults)
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown option {key!r} in `seq:{name}`.{hint} Options of seq:{arch}: "
                              f"{', '.join(f'{k}={v}' for k, v in defaults.items())}.")
        options[key] = _convert(arch, key, value, defaults[key])
    _validate(arch, options)
    return arch, options


def _convert(arch: str, key: str, value: str, default):
    try:
        return type(default)(value) if not isinstance(default, str) else value
    except ValueError:
        raise ConfigError(f"Option `{key}` of seq:{arch} must be a {type(default).__name__}; got {value!r}.") from None


def _validate(arch: str, o: dict) -> None:
    for key, (low, high) in INT_BOUNDS.items():
        if key in o and o[key] < low:
            raise ConfigError(f"Option `{key}` of seq:{arch} must be >= {low}; got {o[key]!r}.")
        if key in o and o[key] > high:
            raise ConfigError(f"Option `{key}` of seq:{arch} must be <= {high}; got {o[key]!r}.")
    if not 0 <= o["dropout"] < 1:
        raise ConfigError(f"Option `dropout` of seq:{arch} must be in [0, 1); got {o['dropout']!r}.")
    if o["norm"] not in NORMS:
        raise ConfigError(f"Option `norm` of seq:{arch} must be one of {', '.join(NORMS)}; got {o['norm']!r}.")
    if arch == "transformer" and o["width"] % o["heads"]:
        raise ConfigError(f"Option `width` of seq:transformer ({o['width']}) must be divisible by `heads` "
                          f"({o['heads']}); e.g. width={o['heads'] * max(1, o['width'] // o['heads'])}.")


def source_id(arch: str, options: dict) -> str:
    """The shortest id for ``arch`` with ``options`` (defaults left out)."""
    changed = {k: v for k, v in options.items() if ARCHITECTURES[arch].get(k) != v}
    return f"seq:{arch}" + ("?" + "&".join(f"{k}={v}" for k, v in changed.items()) if changed else "")


# -- input pipeline ----------------------------------------------------------------------------


class SequenceFrontend:
    """What the input pipeline needs to know about a sequence model: channels and length limit."""

    def __init__(self, channels: int, max_len: int) -> None:
        self.channels, self.max_len = channels, max_len


class SequenceInputs:
    """Series -> padded batch ``{"values": (B, C, T), "attention_mask": (B, T)}`` (policy above)."""

    def __init__(self, source: SourceModel, train: bool = False) -> None:
        frontend = source.tokenizer if isinstance(source.tokenizer, SequenceFrontend) else SequenceFrontend(1, 4096)
        self.channels, self.max_len, self.train = frontend.channels, frontend.max_len, train
        self.source_id = source.id

    def load(self, example) -> np.ndarray:
        from transferkit.data.sequence import as_series, read_npy

        if isinstance(example, (str, Path)) and str(example).endswith(".npy"):
            series = read_npy(example)
        else:
            series = example if isinstance(example, np.ndarray) and example.ndim == 2 else as_series(example)
        if self.channels != 1 and series.shape[0] != self.channels:
            raise DataError(
                f"`source` {self.source_id!r} takes series with {self.channels} channels, but an example has "
                f"{series.shape[0]}. Use a source trained on {series.shape[0]}-channel data, or a 1-channel "
                "source (e.g. 'seq:cnn1d'), whose shared layers then run on each channel separately.")
        length = series.shape[1]
        if length > self.max_len:
            start = int(torch.randint(0, length - self.max_len + 1, ()).item()) if self.train \
                else (length - self.max_len) // 2
            series = series[:, start:start + self.max_len]
        return np.ascontiguousarray(series, dtype=np.float32)

    def collate(self, items: list[np.ndarray]) -> dict[str, torch.Tensor]:
        channels = {x.shape[0] for x in items}
        if len(channels) > 1:
            raise DataError(f"A batch mixes series with {sorted(channels)} channels; every series of a task "
                            "must have the same number of channels.")
        longest = max(x.shape[1] for x in items)
        values = torch.zeros(len(items), items[0].shape[0], longest)
        mask = torch.zeros(len(items), longest, dtype=torch.long)
        for i, x in enumerate(items):
            values[i, :, :x.shape[1]] = torch.from_numpy(x)
            mask[i, :x.shape[1]] = 1
        return {"values": values, "attention_mask": mask}


EXTRA_INPUTS["sequence"] = SequenceInputs


# -- models ------------------------------------------------------------------------------------


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T, D) ``x`` over the steps where (B, T) ``mask`` is 1."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class SequenceBackbone(nn.Module):
    """Shared behaviour: channel independence, per-series standardisation, masked pooling."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.channels, self.norm = channels, norm

    def forward(self, values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, t = values.shape
        if attention_mask is None:
            attention_mask = torch.ones(b, t, dtype=torch.long)
        mask = attention_mask.to(values.device)
        folded = c != self.channels
        if folded:  # a 1-channel model on multichannel data: channels run one by one
            if self.channels != 1:
                raise DataError(f"`values` must have {self.channels} channels for this model; got {c}.")
            values, mask = values.reshape(b * c, 1, t), mask.repeat_interleave(c, dim=0)
        if self.norm == "series":
            m = mask[:, None, :].to(values.dtype)
            n = m.sum(-1, keepdim=True).clamp_min(1.0)
            mean = (values * m).sum(-1, keepdim=True) / n
            std = ((((values - mean) * m) ** 2).sum(-1, keepdim=True) / n).sqrt()
            values = (values - mean) / (std + 1e-5) * m
        features = self.encode(values, mask)
        return features.view(b, c, -1).mean(1) if folded else features

    def encode(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ConvBlock(nn.Module):
    def __init__(self, width: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, W, T)
        y = self.norm(self.conv(x).transpose(1, 2)).transpose(1, 2)
        return x + self.dropout(F.gelu(y))


class CNN1d(SequenceBackbone):
    def __init__(self, channels: int, width: int, layers: int, kernel: int, dropout: float, norm: str, **_) -> None:
        super().__init__(channels, norm)
        kernel = kernel if kernel % 2 else kernel + 1  # odd, so "same" padding is symmetric
        self.stem = nn.Conv1d(channels, width, kernel, padding=kernel // 2)
        self.blocks = nn.ModuleList(ConvBlock(width, kernel, 2**i, dropout) for i in range(layers))

    def encode(self, values, mask):
        m = mask[:, None, :].to(values.dtype)
        x = self.stem(values) * m
        for block in self.blocks:
            x = block(x) * m
        return _masked_mean(x.transpose(1, 2), mask)


class Recurrent(SequenceBackbone):
    def __init__(self, channels: int, width: int, layers: int, dropout: float, norm: str, cell: str = "lstm",
                 **_) -> None:
        super().__init__(channels, norm)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.stem = nn.Linear(channels, width)
        self.layers = nn.ModuleList(rnn(width, width, batch_first=True) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def encode(self, values, mask):
        x = self.stem(values.transpose(1, 2))  # (B, T, W)
        for i, layer in enumerate(self.layers):
            x, _ = layer(x if i == 0 else self.dropout(x))
        return _masked_mean(x, mask)


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine positions (Vaswani et al. 2017), any length, no parameters."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, W)
        t = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, self.width, 2, device=x.device, dtype=torch.float32)
                         * (-math.log(10000.0) / self.width))
        pe = torch.zeros(x.shape[1], self.width, device=x.device)
        pe[:, 0::2] = torch.sin(t * freq)
        pe[:, 1::2] = torch.cos(t * freq)[:, : self.width // 2]
        return x + pe.to(x.dtype)


class Transformer(SequenceBackbone):
    def __init__(self, channels: int, width: int, layers: int, heads: int, patch: int, dropout: float, norm: str,
                 **_) -> None:
        super().__init__(channels, norm)
        self.patch = patch
        self.stem = nn.Conv1d(channels, width, patch, stride=patch)
        self.positions = SinusoidalPositions(width)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(layers))
        self.norm_out = nn.LayerNorm(width)

    def encode(self, values, mask):
        t = values.shape[-1]
        if t % self.patch:  # pad to whole patches; a patch is real when its first step is
            values = F.pad(values, (0, self.patch - t % self.patch))
            mask = F.pad(mask, (0, self.patch - t % self.patch))
        mask = mask[:, :: self.patch]
        x = self.positions(self.stem(values).transpose(1, 2))
        padding = mask == 0
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        return _masked_mean(self.norm_out(x), mask)


def build_backbone(arch: str, options: dict) -> SequenceBackbone:
    if arch == "cnn1d":
        return CNN1d(**options)
    if arch in ("lstm", "gru"):
        return Recurrent(cell=arch, **options)
    return Transformer(**options)


def sequence_source(arch: str, options: dict) -> SourceModel:
    """A random-init sequence model as a source."""
    backbone = build_backbone(arch, options)
    shown = ", ".join(f"{k}={v}" for k, v in options.items())
    return SourceModel(
        id=source_id(arch, options),
        modality="sequence",
        backbone=backbone,
        feature_dim=options["width"],
        preprocessing=Preprocessing("sequence"),
        layer_groups=layer_groups_from_children(backbone),
        spec={"loader": "seq", "arch": arch, "options": dict(options)},
        tokenizer=SequenceFrontend(options["channels"], options["max_len"]),
        architecture=f"seq:{arch} ({shown})",
        weights="random init",
        license="Apache-2.0 (transferkit)",
    )


@SCHEMES.register("seq")
def load(name: str, pretrained: bool) -> SourceModel:
    arch, options = parse_id(name)
    return sequence_source(arch, options)


@SPEC_BUILDERS.register("seq")
def from_spec(spec: dict, base_dir: Path) -> SourceModel:
    arch = spec["arch"]  # checked against SPEC_FIELDS["seq"] by build_from_spec
    extra = sorted(set(spec.get("options", {})) - set(ARCHITECTURES[arch]))
    if extra:
        raise ConfigError(f"`source.spec.options` of seq:{arch} has unknown option(s) {', '.join(extra)}; "
                          f"seq:{arch} takes {', '.join(ARCHITECTURES[arch])}.")
    options = {**ARCHITECTURES[arch], **spec.get("options", {})}
    _validate(arch, options)
    return sequence_source(arch, options)
