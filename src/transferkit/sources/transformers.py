"""Sources from Hugging Face transformers: ``hf:<hub id or local directory>``.

Text encoders (BERT, RoBERTa, MiniLM, ...) become a backbone that mean-pools the last hidden
state over real tokens (or takes the first token, ``pooling="cls"``). Hub ids are downloaded
on machines with a network; a local directory works offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferkit._io import read_json
from transferkit.errors import ConfigError, UnsafeFileError
from transferkit.sources.base import (
    SCHEMES,
    SPEC_BUILDERS,
    SPEC_FIELDS,
    Preprocessing,
    SourceModel,
    layer_groups_from_children,
)
from transferkit.sources.schema import integer, string

#: Modalities by ``config.model_type`` for non-text encoders; others register here (audio).
MODEL_TYPE_BUILDERS: dict[str, object] = {}
#: The files in which transformers looks for ``auto_map`` (classes whose code ships with the model).
CODE_MAP_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                  "video_preprocessor_config.json")
#: What to do instead of running a model's code, for messages.
PLAIN_CLASSES_HINT = ("transferkit never runs code shipped with a model. Use a model that works with plain "
                      "transformers classes (no `auto_map`, no custom modeling_*.py), e.g. one saved by "
                      "`save_pretrained` from a class built into transformers")

SPEC_FIELDS["hf_text"] = {
    "dir": string(choices=("hf",), required=True),
    "pooling": string(choices=("mean", "cls"), required=True),
    "max_length": integer(4, 8192, required=True),
}


def refuse_remote_code(directory: str | Path, label: str) -> None:
    """Refuses a local model folder that ships Python code for transformers to run.

    Called before any transformers call on the folder: a config, tokenizer or processor JSON
    with an ``auto_map`` key names classes whose code lives in the folder (or on the Hub).
    Folders that do not exist locally (hub ids) are left to transformers, which is always
    called with ``trust_remote_code=False``.

    Args:
        directory: The model folder.
        label: How the user named it (``hf:DIR``), for messages.

    Raises:
        UnsafeFileError: A JSON file of the folder has an ``auto_map`` key, or is not a JSON object.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    for name in CODE_MAP_FILES:
        path = directory / name
        if not path.is_file():
            continue
        config = read_json(path)
        if not isinstance(config, dict):
            raise UnsafeFileError(f"{str(path)!r} of `{label}` must hold a JSON object; got "
                                  f"{type(config).__name__}. Save the model again with `save_pretrained`.")
        if "auto_map" in config:
            raise UnsafeFileError(f"{str(path)!r} of `{label}` has an `auto_map` key: the model names classes "
                                  f"whose Python code ships with it, and {PLAIN_CLASSES_HINT}.")
        if name == "config.json":
            _check_sizes(config, path, label)


#: Sizes in a model's ``config.json`` and the most transferkit builds (far above any released model's),
#: so a stranger's config cannot make ``from_config`` allocate without bound.
SIZE_LIMITS = {"hidden_size": 2**16, "intermediate_size": 2**18, "num_hidden_layers": 1024,
               "num_attention_heads": 1024, "vocab_size": 2**22, "max_position_embeddings": 2**20}


def _check_sizes(config: dict, path: Path, label: str) -> None:
    for key, high in SIZE_LIMITS.items():
        value = config.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high):
            raise UnsafeFileError(f"{str(path)!r} of `{label}` has `{key}` {value!r}; transferkit builds models "
                                  f"with 1 to {high} there. Check the file (was it edited by hand?).")


def from_pretrained(auto_class, source: str | Path, label: str, **kwargs):
    """``auto_class.from_pretrained(source, trust_remote_code=False)`` with errors a user can act on.

    transformers reads ``.bin`` checkpoints with ``weights_only=True``, so a pickle that would
    run code is refused; the refusal becomes an ``UnsafeFileError`` instead of a traceback, as
    does transformers' refusal of a model that needs its own code.

    Args:
        auto_class: A transformers class with ``from_pretrained`` (``AutoModel``, ``AutoConfig``, ...).
        source: A hub id or a local folder.
        label: How the user named the model (``hf:DIR``), for messages.
        **kwargs: More ``from_pretrained`` options.
    """
    import pickle

    try:
        return auto_class.from_pretrained(str(source), trust_remote_code=False, **kwargs)
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(
            f"`{label}` holds a pickled checkpoint that does not contain only tensors ({e}); transferkit "
            "never runs code from model files. Use a model saved with safetensors (`save_pretrained`).") from None
    except OSError as e:
        reason = " ".join(str(e).split()).rstrip(".")
        raise ConfigError(f"`{label}` could not be loaded: {reason}. Offline, pass a local directory "
                          "(`hf:/path/to/model`) written by `save_pretrained`.") from None
    except ValueError as e:
        raise load_error(e, label, "Use a folder written by `save_pretrained`.") from None


def from_config(config, label: str):
    """``AutoModel.from_config(config, trust_remote_code=False)`` (random weights), errors as ``from_pretrained``."""
    from transformers import AutoModel

    try:
        return AutoModel.from_config(config, trust_remote_code=False)
    except ValueError as e:
        raise load_error(e, label, "Use a folder written by `save_pretrained`.") from None


def load_error(error: ValueError, label: str, hint: str) -> UnsafeFileError | ConfigError:
    """The error for a transformers ``ValueError``: its refusal to run a model's code, or another problem."""
    reason = " ".join(str(error).split()).rstrip(".")
    if "trust_remote_code" in reason:
        return UnsafeFileError(f"`{label}` needs its own Python code to load, and {PLAIN_CLASSES_HINT}.")
    return ConfigError(f"`{label}` could not be loaded: {reason[:400]}. {hint}")


class HFTextBackbone(nn.Module):
    """A transformers encoder pooled to one vector per text."""

    def __init__(self, model: nn.Module, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"`pooling` must be 'mean' or 'cls'; got {pooling!r}.")
        self.model = model
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def text_source(model, tokenizer, *, pooling: str, max_length: int, name: str) -> SourceModel:
    """Wraps a transformers encoder and its tokenizer as a text ``SourceModel``."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # unused by mean/first-token pooling; would sit idle in DDP
    backbone = HFTextBackbone(model, pooling)

    def write_files(directory: Path) -> None:
        model.config.save_pretrained(directory / "hf")
        tokenizer.save_pretrained(directory / "hf")

    return SourceModel(
        id=f"hf:{name}",
        modality="text",
        backbone=backbone,
        feature_dim=model.config.hidden_size,
        preprocessing=Preprocessing("text", max_length=max_length),
        layer_groups=layer_groups_from_children(backbone),
        spec={"loader": "hf_text", "dir": "hf", "pooling": pooling, "max_length": max_length},
        tokenizer=tokenizer,
        architecture=f"{model.config.model_type} ({model.config.num_hidden_layers} layers)",
        write_files=write_files,
    )


def quiet_transformers() -> None:
    """Silences transformers' per-load progress bars and info logs (our CLI prints its own)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def load_pretrained(auto_class, name: str):
    """``auto_class.from_pretrained(name, trust_remote_code=False)`` for an ``hf:`` id (see ``from_pretrained``)."""
    return from_pretrained(auto_class, name, f"hf:{name}")


@SCHEMES.register("hf")
def load(name: str, pretrained: bool) -> SourceModel:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    refuse_remote_code(name, f"hf:{name}")  # before transformers reads anything
    quiet_transformers()

    config = load_pretrained(AutoConfig, name)
    if config.model_type in MODEL_TYPE_BUILDERS:
        return MODEL_TYPE_BUILDERS[config.model_type](name, config, pretrained)
    model = load_pretrained(AutoModel, name) if pretrained else from_config(config, f"hf:{name}")
    tokenizer = load_pretrained(AutoTokenizer, name)
    max_length = min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
    source = text_source(model, tokenizer, pooling="mean", max_length=max_length, name=name)
    source.weights = f"transformers from_pretrained({name!r})" if pretrained else "random init"
    return source


def spec_folder(base_dir: Path, spec: dict) -> Path:
    """The folder of a run's transformers files (``source/hf``), checked before transformers reads it.

    Raises:
        ConfigError: The folder is missing.
        UnsafeFileError: Its files name code shipped with the model (``auto_map``).
    """
    path = Path(base_dir) / spec["dir"]
    if not path.is_dir():
        raise ConfigError(f"{str(path)!r} is missing: a run of a transformers model keeps its config and "
                          "tokenizer there. Copy the whole run directory, as written by `transferkit fit`.")
    refuse_remote_code(path, str(path))
    return path


@SPEC_BUILDERS.register("hf_text")
def from_spec(spec: dict, base_dir: Path) -> SourceModel:
    from transformers import AutoConfig, AutoTokenizer

    path = spec_folder(base_dir, spec)
    quiet_transformers()
    model = from_config(from_pretrained(AutoConfig, path, str(path)), str(path))
    tokenizer = from_pretrained(AutoTokenizer, path, str(path))
    return text_source(model, tokenizer, pooling=spec["pooling"], max_length=spec["max_length"], name=str(path))
