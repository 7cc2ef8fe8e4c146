"""Sources from the user's own files: ``file:<checkpoint.safetensors>``.

``file:`` reads a safetensors checkpoint and a JSON file beside it (same stem, ``.json``) that
names the architecture::

    {"architecture": "torchvision:resnet18"}            # a torchvision/timm state dict as saved
    {"architecture": "timm:resnet18", "preprocessing": {"image_size": 160}}
    {"architecture": "timm:resnet18", "model_kwargs": {"drop_path_rate": 0.1}}

The JSON is checked against ``FILE_JSON_FIELDS`` before the weights are read or any library
runs: unknown keys, wrong types and out-of-range values are errors, and ``model_kwargs`` take
only the harmless options in ``timm.MODEL_KWARGS`` (``checkpoint_path``, ``pretrained``, ... are
refused, since they make timm read files other than the safetensors checkpoint).

(``run:``, a transferkit run directory as a source, is registered by ``transferkit.runs``.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transferkit._io import load_weights, read_json
from transferkit.errors import ConfigError
from transferkit.sources import timm as timm_source
from transferkit.sources import torchvision as tv_source
from transferkit.sources.base import (
    IMAGE_PREPROCESSING_KEYS,
    PREPROCESSING_FIELDS,
    SCHEMES,
    SourceModel,
    check_preprocessing,
)
from transferkit.sources.schema import NAME_PATTERN, check_mapping, mapping, string

#: The JSON beside a ``file:`` checkpoint. ``model_kwargs`` are checked against timm's allow-list.
FILE_JSON_FIELDS = {
    "architecture": string(pattern=rf"(timm|torchvision):{NAME_PATTERN}", required=True),
    "model_kwargs": mapping(timm_source.MODEL_KWARGS, refused=timm_source.REFUSED_MODEL_KWARGS),
    "preprocessing": mapping({k: PREPROCESSING_FIELDS[k] for k in IMAGE_PREPROCESSING_KEYS}),
}


def check_file_json(config: object, where: str) -> dict:
    """Checks the JSON beside a ``file:`` checkpoint against ``FILE_JSON_FIELDS``.

    Raises:
        UnsafeFileError: ``model_kwargs`` that would make timm load a file (``checkpoint_path``, ...).
        ConfigError: Anything else that does not match: not an object, an unknown key, a value of
            the wrong type or out of range, ``model_kwargs`` for a torchvision architecture.
    """
    config = check_mapping(config, FILE_JSON_FIELDS, where)
    # Both schemes build image sources: check the RGB rules now (placeholders for what the model gives).
    check_preprocessing({"modality": "image", "mean": [0.0], "std": [1.0], **config.get("preprocessing", {})}, where)
    if config.get("model_kwargs") and not config["architecture"].startswith("timm:"):
        raise ConfigError(f"`model_kwargs` in {where} apply to timm architectures only; "
                          f"{config['architecture']!r} takes none (the class count is read from the weights). "
                          "Remove the key.")
    return config


@SCHEMES.register("file")
def load_file_source(name: str, pretrained: bool) -> SourceModel:
    path = Path(name).expanduser()
    config_path = path.with_suffix(".json")
    if not config_path.is_file():
        raise ConfigError(
            f"`file:{name}` needs a JSON file beside it naming the architecture, e.g. "
            f"{str(config_path)!r} containing {{\"architecture\": \"torchvision:resnet18\"}}."
        )
    where = repr(str(config_path))
    raw = read_json(config_path)
    arch = raw.get("architecture") if isinstance(raw, dict) else None
    if isinstance(arch, str) and not arch.startswith(("timm:", "torchvision:")):
        raise ConfigError(
            f"`architecture` in {where} must be 'torchvision:<name>' or 'timm:<name>'; "
            f"got {arch[:80]!r}. For a transferkit run directory use `run:<dir>`."
        )
    config = check_file_json(raw, where)
    scheme, _, arch_name = config["architecture"].partition(":")
    state = load_weights(path) if pretrained else None
    if scheme == "torchvision":
        source = tv_source.build(arch_name, weights=None, state_dict=state)
    else:
        source = timm_source.build(arch_name, pretrained=False, state_dict=state,
                                   model_kwargs=config.get("model_kwargs"), where=where)
    if config.get("preprocessing"):
        merged = check_preprocessing({**source.preprocessing.to_dict(), **config["preprocessing"]}, where)
        source.preprocessing = dataclasses.replace(
            source.preprocessing, **{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()})
    source.weights = str(path) if pretrained else "random init"
    return source
