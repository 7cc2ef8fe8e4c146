"""The source factory: a source id or a saved spec -> a ``SourceModel``.

It sits above the plugins (``timm.py``, ``transformers.py``, ...), which register into the
registries of ``base.py`` as they are imported; the registries import them on first use, so
loading one source imports each library's plugin once and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from transferkit.errors import ConfigError, UnknownNameError
from transferkit.sources.base import (
    COMMON_SPEC_FIELDS,
    PACKAGED,
    RANDOM_SUFFIX,
    SCHEMES,
    SPEC_BUILDERS,
    SPEC_FIELDS,
    SourceInfo,
    SourceModel,
    mark_stale_statistics,
)
from transferkit.sources.schema import check_mapping


def load_source(source_id: str) -> SourceModel:
    """Loads a source by id: a short name (``mobilenet_v2``) or ``scheme:name``.

    Appending ``@random`` (``mobilenet_v2@random``) gives the same architecture with random
    weights, a negative control for source ranking and the no-transfer baseline.
    """
    if not isinstance(source_id, str) or not source_id.strip():
        raise ConfigError(f"`source` must be a source id such as 'mobilenet_v2'; got {source_id!r}.")
    name = source_id.strip()
    pretrained = True
    if name.endswith(RANDOM_SUFFIX):
        name, pretrained = name[: -len(RANDOM_SUFFIX)], False
    if name in PACKAGED:
        source = PACKAGED.get(name)[1](pretrained)
    elif ":" in name:
        scheme, rest = name.split(":", 1)
        if scheme not in SCHEMES:
            raise UnknownNameError(
                f"Unknown source scheme {scheme + ':'!r} in {source_id!r}. "
                f"Use one of {', '.join(s + ':' for s in SCHEMES)} or a short name; "
                "see `transferkit sources`."
            )
        source = SCHEMES.get(scheme)(rest, pretrained)
    else:
        raise UnknownNameError(PACKAGED.unknown_message(name).replace(
            "See", "Hub models need a scheme, e.g. 'timm:resnet18' or 'hf:bert-base-uncased'. See"
        ))
    source.id = source_id.strip()
    if source.weights == "random init":
        mark_stale_statistics(source)
    return source


def source_modality(source_id: str) -> str | None:
    """The modality of a packaged source id without loading it; None when only loading can tell."""
    name = source_id.strip().removesuffix(RANDOM_SUFFIX)
    return PACKAGED.get(name)[0].modality if name in PACKAGED else None


def build_from_spec(spec: dict, base_dir: Path, where: str | None = None) -> SourceModel:
    """Rebuilds a source architecture (random weights) from a saved spec.

    The spec comes from a run's ``config.json``, which anyone may have written: it is checked
    against ``COMMON_SPEC_FIELDS`` and the loader's ``SPEC_FIELDS`` (types, then ranges) before
    any library builds anything.

    Args:
        spec: The decoded ``source.spec`` object.
        base_dir: The folder holding the files the spec names (a run's ``source/``).
        where: The file the spec comes from, for messages (default: the run's ``config.json``
            when ``base_dir`` is a run's ``source/`` folder).

    Raises:
        ConfigError: The spec is not an object, names an unknown loader, or a key is unknown,
            of the wrong type or out of range.
        UnsafeFileError: A key that would make a library load files or run code.
    """
    base_dir = Path(base_dir)
    prefix = "source.spec."
    if where is None:
        run_config = base_dir.parent / "config.json"
        if base_dir.name == "source" and run_config.is_file():
            where = repr(str(run_config))
        else:
            where, prefix = f"the model config in {str(base_dir)!r}", "spec."
    if not isinstance(spec, dict):
        raise ConfigError(f"`{prefix.rstrip('.')}` in {where} must be a JSON object naming the architecture; "
                          f"got {type(spec).__name__}. Use the run directory as written by `transferkit fit`.")
    loader = spec.get("loader")
    if not isinstance(loader, str) or loader not in SPEC_BUILDERS:
        raise ConfigError(
            f"`{prefix}loader` in {where} names an unknown architecture loader "
            f"{str(loader)[:80]!r}; known: {', '.join(SPEC_BUILDERS)}. Was it written by a newer transferkit?"
        )
    spec = check_mapping(spec, {**COMMON_SPEC_FIELDS, **SPEC_FIELDS.get(loader, {})}, where, prefix=prefix)
    if ("cut_at" in spec) != ("cut_feature_dim" in spec):
        raise ConfigError(f"`{prefix}cut_at` and `{prefix}cut_feature_dim` in {where} go together (a cut "
                          "records both); write the run again with `transferkit fit --cut-at`.")
    source = SPEC_BUILDERS.get(loader)(spec, base_dir)
    if "cut_at" in spec:  # layer surgery is part of the architecture
        from transferkit.surgery.cut import cut_source

        source = cut_source(source, spec["cut_at"], feature_dim=spec["cut_feature_dim"])
    return source


def list_sources() -> list[SourceInfo]:
    """Every packaged source, plus one line per id scheme."""
    return [info for info, _ in (PACKAGED.get(n) for n in PACKAGED)]
