"""Pretrained source models behind one id scheme; see ``transferkit sources``."""

from transferkit.sources.base import PACKAGED, SCHEMES, LayerGroup, Preprocessing, SourceInfo, SourceModel
from transferkit.sources.factory import build_from_spec, list_sources, load_source, source_modality
from transferkit.sources.inputs import input_pipeline

__all__ = [
    "PACKAGED",
    "SCHEMES",
    "LayerGroup",
    "Preprocessing",
    "SourceInfo",
    "SourceModel",
    "build_from_spec",
    "input_pipeline",
    "list_sources",
    "load_source",
    "source_modality",
]
