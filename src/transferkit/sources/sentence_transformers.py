"""Sources from sentence-transformers: ``st:<hub id or local directory>``.

The library reads the model's module list (transformer, pooling, optional normalisation);
transferkit keeps the transformer and its pooling mode as a backbone that fine-tunes like any
``hf:`` encoder. The final normalisation layer, if any, is dropped: a trainable head
works better on unnormalised pooled features.
"""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

from transferkit._io import read_json
from transferkit.errors import ConfigError, UnsafeFileError
from transferkit.sources.base import SCHEMES, SourceModel
from transferkit.sources.transformers import (
    from_config,
    load_error,
    quiet_transformers,
    refuse_remote_code,
    text_source,
)

#: A module class of sentence-transformers itself: ``sentence_transformers.<module path>.<Class>``.
ST_CLASS = re.compile(r"sentence_transformers(\.[A-Za-z_][A-Za-z0-9_]*)+")


def refuse_custom_modules(directory: str | Path, label: str) -> None:
    """Refuses a local sentence-transformers folder whose ``modules.json`` names code of its own.

    Every module ``type`` must be a class of the installed sentence-transformers package (an
    ``nn.Module`` under ``sentence_transformers.``), and every module folder passes
    ``refuse_remote_code``. Folders that do not exist locally (hub ids) are left to
    sentence-transformers, which is always called with ``trust_remote_code=False``.

    Raises:
        UnsafeFileError: A module class outside sentence-transformers, an ``auto_map``, or a
            malformed ``modules.json``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    refuse_remote_code(directory, label)
    path = directory / "modules.json"
    if not path.is_file():
        return
    modules = read_json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise UnsafeFileError(f"{str(path)!r} of `{label}` must be a list of module objects, as "
                              "sentence-transformers writes it; save the model again with `model.save(dir)`.")
    for i, module in enumerate(modules):
        kind, sub = module.get("type"), module.get("path", "")
        if not isinstance(kind, str) or not ST_CLASS.fullmatch(kind) or not _is_st_module(kind):
            raise UnsafeFileError(
                f"{str(path)!r} of `{label}` names the module class {str(kind)[:120]!r} (entry {i}, key `type`), "
                "which is not part of sentence-transformers: its code ships with the model, and transferkit never "
                "runs code shipped with a model. Use a model built from sentence-transformers' own modules "
                "(Transformer, Pooling, Normalize) over a plain transformers encoder.")
        if not isinstance(sub, str) or Path(sub).is_absolute() or ".." in Path(sub).parts:
            raise UnsafeFileError(f"{str(path)!r} of `{label}` gives module {i} the folder {str(sub)[:120]!r} "
                                  "(key `path`); it must be a folder inside the model. Save the model again.")
        if sub:
            refuse_remote_code(directory / sub, label)


def _is_st_module(class_path: str) -> bool:
    """Whether ``class_path`` names an ``nn.Module`` class of the installed sentence-transformers."""
    import torch

    module_name, _, class_name = class_path.rpartition(".")
    try:
        with warnings.catch_warnings():  # old module paths (sentence_transformers.models) are deprecated
            warnings.simplefilter("ignore")
            obj = getattr(importlib.import_module(module_name), class_name, None)
    except Exception:  # no such module, or one that cannot be imported here: not a module class we know
        return False
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def load_st(name: str, pretrained: bool) -> SourceModel:
    from sentence_transformers import SentenceTransformer

    refuse_custom_modules(name, f"st:{name}")  # before sentence-transformers reads anything
    quiet_transformers()
    try:
        st = SentenceTransformer(name, device="cpu", trust_remote_code=False)
    except ValueError as e:
        raise load_error(e, f"st:{name}", "Use a folder written by `model.save(dir)`.") from None
    except OSError as e:
        raise ConfigError(f"`st:{name}` could not be loaded: {' '.join(str(e).split())[:400]}. Offline, pass "
                          "a local directory (`st:/path/to/model`) written by `model.save(dir)`.") from None
    if len(st) < 2 or not hasattr(st[0], "auto_model") or not hasattr(st[0], "tokenizer"):
        raise ConfigError(f"`st:{name}` must be a transformer followed by a pooling layer (as most "
                          "sentence-transformers models are); its modules are "
                          f"{', '.join(type(m).__name__ for m in st)}.")
    transformer, pooling = st[0], st[1]
    # sentence-transformers >= 6 names the mode; older releases set one flag per mode.
    cls_token = getattr(pooling, "pooling_mode", None) == "cls" or getattr(pooling, "pooling_mode_cls_token", False)
    mode = "cls" if cls_token else "mean"
    model = transformer.auto_model
    if not pretrained:
        model = from_config(model.config, f"st:{name}")
    # Within FitConfig's `max_length` range, so the run's spec passes the schema when it is reloaded.
    max_length = min(max(st.max_seq_length or 128, 4), 8192)
    source = text_source(model, transformer.tokenizer, pooling=mode, max_length=max_length, name=name)
    source.id = f"st:{name}"
    source.weights = f"sentence-transformers {name!r}" if pretrained else "random init"
    return source


SCHEMES.register("st")(load_st)
