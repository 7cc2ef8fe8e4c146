"""Sources from Hugging Face transformers: ``hf:<hub id or local directory>``.

Text encoders (BERT, RoBERTa, MiniLM, ...) become a backbone that mean-pools the last hidden
state over real tokens (or takes the first token, ``pooling="cls"``). Hub ids are downloaded
on machines with a network; a local directory works offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferkit.errors import ConfigError, UnsafeFileError
from transferkit.sources.base import SCHEMES, SPEC_BUILDERS, Preprocessing, SourceModel, layer_groups_from_children

#: Modalities by ``config.model_type`` for non-text encoders; others register here (audio).
MODEL_TYPE_BUILDERS: dict[str, object] = {}


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
    """``auto_class.from_pretrained(name)`` with errors a user can act on.

    transformers reads ``.bin`` checkpoints with ``weights_only=True``, so a pickle that would
    run code is refused; the refusal becomes an ``UnsafeFileError`` instead of a traceback.
    """
    import pickle

    try:
        return auto_class.from_pretrained(name)
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(
            f"`hf:{name}` holds a pickled checkpoint that does not contain only tensors ({e}); transferkit "
            "never runs code from model files. Use a model saved with safetensors (`save_pretrained`).") from None
    except OSError as e:
        reason = " ".join(str(e).split()).rstrip(".")
        raise ConfigError(f"`hf:{name}` could not be loaded: {reason}. Offline, pass a local directory "
                          "(`hf:/path/to/model`) written by `save_pretrained`.") from None


@SCHEMES.register("hf")
def load(name: str, pretrained: bool) -> SourceModel:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    quiet_transformers()

    config = load_pretrained(AutoConfig, name)
    if config.model_type in MODEL_TYPE_BUILDERS:
        return MODEL_TYPE_BUILDERS[config.model_type](name, config, pretrained)
    model = load_pretrained(AutoModel, name) if pretrained else AutoModel.from_config(config)
    tokenizer = load_pretrained(AutoTokenizer, name)
    max_length = min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
    source = text_source(model, tokenizer, pooling="mean", max_length=max_length, name=name)
    source.weights = f"transformers from_pretrained({name!r})" if pretrained else "random init"
    return source


@SPEC_BUILDERS.register("hf_text")
def from_spec(spec: dict, base_dir: Path) -> SourceModel:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = base_dir / spec["dir"]
    model = AutoModel.from_config(AutoConfig.from_pretrained(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    return text_source(model, tokenizer, pooling=spec["pooling"], max_length=spec["max_length"], name=str(path))
