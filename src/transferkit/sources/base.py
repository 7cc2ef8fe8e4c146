"""The source-model abstraction shared by every library transferkit wraps.

A ``SourceModel`` is what transfer needs from a pretrained network, whatever its origin:

- ``backbone``: the shared layers, an ``nn.Module`` whose ``forward(**batch)`` returns one
  feature vector per example, shape (B, ``feature_dim``);
- ``preprocessing``: how raw examples become a batch (image size and normalisation, tokenizer);
- ``layer_groups``: the backbone's parameters in ordered groups, input to output;
- ``head``: the source's own classifier (features -> source-class logits), when it has one;
- ``spec``: a small JSON description that rebuilds the architecture without the weights,
  so run directories and ``file:`` checkpoints can be reloaded from safetensors alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from transferkit._registry import Registry
from transferkit.errors import ConfigError
from transferkit.sources.schema import (
    NAME_PATTERN,
    Field,
    check_mapping,
    integer,
    number,
    numbers,
    string,
)


@dataclass
class Preprocessing:
    """How raw examples are turned into model inputs.

    Attributes:
        modality: "image", "text", "audio" or "sequence".
        image_size: Square input side in pixels (images).
        mean, std: Per-channel normalisation (images).
        interpolation: Resize interpolation (images).
        crop_pct: Centre-crop fraction used at evaluation (images; 1.0 means no crop).
        max_length: Token limit (text).
        sample_rate: Audio sampling rate in Hz (audio).
        clip_seconds: Audio crop/pad length in seconds (audio).
    """

    modality: str
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    max_length: int | None = None
    sample_rate: int | None = None
    clip_seconds: float | None = None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict, where: str = "the run's config.json",
                  prefix: str = "source.preprocessing.") -> Preprocessing:
        """Rebuilds preprocessing saved with ``to_dict``, checked against ``PREPROCESSING_FIELDS``.

        Args:
            d: The decoded JSON object (from a file someone else may have written).
            where: The file it comes from, for messages.
            prefix: Its dotted path inside that file, for messages.

        Raises:
            ConfigError: An unknown key, a value of the wrong type or out of range.
        """
        values = check_preprocessing(d, where, prefix)
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()})


MODALITIES = ("image", "text", "audio", "sequence")
#: Resize interpolations the image pipeline supports on tensors.
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")
#: ``Preprocessing`` fields with FitConfig's ranges where it has the option (``image_size``, ``max_length``).
PREPROCESSING_FIELDS = {
    "modality": string(choices=MODALITIES, required=True),
    "image_size": integer(16, 1024, optional=True),
    "mean": numbers(min_items=1, max_items=4, optional=True),
    "std": numbers(0, low_open=True, min_items=1, max_items=4, optional=True),
    "interpolation": string(choices=INTERPOLATIONS),
    "crop_pct": number(0.5, 2.0),
    "max_length": integer(4, 8192, optional=True),
    "sample_rate": integer(1000, 384_000, optional=True),
    "clip_seconds": number(0.01, 120.0, optional=True),
}
#: The preprocessing keys a ``file:`` JSON may override (image sources).
IMAGE_PREPROCESSING_KEYS = ("image_size", "mean", "std", "interpolation", "crop_pct")


def check_preprocessing(values: object, where: str, prefix: str = "preprocessing.") -> dict:
    """Checks a preprocessing object (as ``Preprocessing.to_dict`` writes it) and returns it.

    Images are RGB, so an image source needs ``mean`` and ``std`` of 1 or 3 values each.

    Raises:
        ConfigError: An unknown key, a value of the wrong type or out of range.
    """
    checked = check_mapping(values, PREPROCESSING_FIELDS, where, prefix=prefix)
    if checked["modality"] == "image":
        for key in ("mean", "std"):
            if len(checked.get(key) or ()) not in (1, 3):
                raise ConfigError(f"`{prefix}{key}` in {where} must list 1 or 3 numbers for an image source "
                                  f"(images are RGB); got {checked.get(key)!r}.")
    return checked


@dataclass
class LayerGroup:
    """An ordered slice of the backbone: a name and the parameter names it owns."""

    name: str
    params: list[str]


@dataclass
class SourceInfo:
    """What ``transferkit sources`` shows about a source."""

    name: str
    modality: str
    architecture: str
    feature_dim: int | None
    weights: str
    license: str = "see the weights' origin"
    has_head: bool = False


@dataclass
class SourceModel:
    """A pretrained source, ready to be cut into shared layers and a new head."""

    id: str
    modality: str
    backbone: nn.Module
    feature_dim: int
    preprocessing: Preprocessing
    layer_groups: list[LayerGroup]
    spec: dict
    head: nn.Module | None = None
    tokenizer: object | None = None
    architecture: str = ""
    weights: str = ""
    license: str = ""
    write_files: Callable[[Path], None] | None = None
    #: True while the BatchNorm running statistics do not describe the weights: the placeholders
    #: (mean 0, variance 1) of a random init, or a blend after ``--init-mix``.
    #: ``features.estimate_batchnorm_statistics`` replaces them with statistics of target examples.
    stale_statistics: bool = False
    #: Fingerprint of the examples that estimated those statistics, once they have been.
    statistics_fingerprint: str | None = None

    def weights_hash(self, skip_batchnorm_statistics: bool = False) -> str:
        """A short hash of every backbone and head tensor (for cache keys).

        ``skip_batchnorm_statistics`` leaves out BatchNorm running statistics, for sources whose
        statistics are estimated from target data (the cache key names that data instead).
        """
        h = hashlib.sha256()
        for module in (self.backbone, self.head):
            if module is None:
                continue
            skipped = batchnorm_statistic_names(module) if skip_batchnorm_statistics else set()
            for name, t in sorted(module.state_dict().items()):
                if name in skipped:
                    continue
                h.update(name.encode())
                h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def save_spec(self, directory: Path) -> dict:
        """Writes the files the spec needs (configs, tokenizer) under ``directory``.

        Returns the spec, with paths relative to ``directory``.
        """
        directory.mkdir(parents=True, exist_ok=True)
        if self.write_files is not None:
            self.write_files(directory)
        return self.spec


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers (any dimension, synchronised or not) inside ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batchnorm_statistic_names(module: nn.Module) -> set[str]:
    """``state_dict`` names of the running statistics of every BatchNorm layer in ``module``."""
    return {f"{prefix}.{buffer}" if prefix else buffer
            for prefix, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for buffer in ("running_mean", "running_var", "num_batches_tracked")}


# --- registries ----------------------------------------------------------------------------

#: Loaders by id scheme: ``timm:``, ``torchvision:``, ``hf:``, ``st:``, ``file:``, ``run:``.
#: Each loader is ``f(name, pretrained: bool) -> SourceModel``.
SCHEMES: Registry[Callable[..., SourceModel]] = Registry("source scheme", help_command="sources",
                                                         plugins=("transferkit.sources", "transferkit.runs"))
#: Offline packaged sources by short name: ``(SourceInfo, loader(pretrained) -> SourceModel)``.
PACKAGED: Registry[tuple[SourceInfo, Callable[[bool], SourceModel]]] = Registry(
    "source", help_command="sources", plugins=("transferkit.sources",)
)
#: Architecture builders by spec ``loader``: ``f(spec, base_dir) -> SourceModel`` (random weights).
SPEC_BUILDERS: Registry[Callable[[dict, Path], SourceModel]] = Registry("source spec loader",
                                                                       plugins=("transferkit.sources",))
#: The schema of each loader's spec (besides ``loader``, ``cut_at`` and ``cut_feature_dim``), checked
#: by ``build_from_spec`` before the builder runs. A loader without one takes no other keys.
SPEC_FIELDS: dict[str, dict[str, Field]] = {}
#: Keys every spec may hold: the loader, and the layer surgery recorded by ``surgery.cut.cut_source``.
COMMON_SPEC_FIELDS = {
    "loader": string(required=True),
    "cut_at": string(pattern=NAME_PATTERN),
    "cut_feature_dim": integer(1, 1 << 20),
}

RANDOM_SUFFIX = "@random"


def mark_stale_statistics(source: SourceModel) -> None:
    """Records that the BatchNorm statistics of ``source`` (if it has BatchNorm layers) do not
    describe its weights (random init, blended weights) until ``features.estimate_batchnorm_statistics``
    replaces them."""
    source.stale_statistics = bool(batchnorm_layers(source.backbone))



# --- layer groups ------------------------------------------------------------------------


def layer_groups_from_children(module: nn.Module, prefix: str = "") -> list[LayerGroup]:
    """Ordered layer groups found by walking a module's children.

    A container (``nn.Sequential``, ``nn.ModuleList``) gives one group per item; a child whose
    parameters sit largely (a quarter or more) inside such containers (a BERT encoder, a ResNet) is walked into;
    a multi-layer RNN gives one group per layer (``weight_ih_l0`` ... ``_l{k}``); any other
    child is one group. Modules are taken in registration order, which is forward order for
    the libraries we wrap.
    """
    groups: list[LayerGroup] = []
    direct = [f"{prefix}{n}" for n, _ in module.named_parameters(recurse=False)]
    if direct:
        groups.append(LayerGroup(prefix.rstrip(".") or "params", direct))
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if _is_container(child):
            groups += [_leaf(item, f"{full}.{i}") for i, item in child.named_children()]
        elif isinstance(child, nn.RNNBase) and child.num_layers > 1:
            groups += _rnn_groups(child, full)
        elif _container_share(child) >= 0.25:
            groups += layer_groups_from_children(child, full + ".")
        else:
            groups.append(_leaf(child, full))
    return [g for g in groups if g.params]


def _is_container(module: nn.Module) -> bool:
    return isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) > 1


def _leaf(module: nn.Module, name: str) -> LayerGroup:
    return LayerGroup(name, [f"{name}.{n}" for n, _ in module.named_parameters()])


def _container_share(module: nn.Module) -> float:
    """Fraction of a module's parameters that live inside its outermost containers."""
    total = sum(p.numel() for p in module.parameters())
    if total == 0:
        return 0.0
    inside, seen = 0, set()
    for name, m in module.named_modules():
        if name and _is_container(m) and not any(name.startswith(s + ".") for s in seen):
            seen.add(name)
            inside += sum(p.numel() for p in m.parameters())
    return inside / total


def _rnn_groups(rnn: nn.RNNBase, name: str) -> list[LayerGroup]:
    groups = []
    for layer in range(rnn.num_layers):
        params = [f"{name}.{n}" for n, _ in rnn.named_parameters() if n.split("_l")[-1].split("_")[0] == str(layer)]
        groups.append(LayerGroup(f"{name}.l{layer}", params))
    return groups
