"""Target data: load a folder or table into a ``TaskData`` after a full preflight.

``load_task_data`` looks at the path (:func:`detect_layout`): a Hugging Face ``datasets`` folder
or Parquet data (:mod:`transferkit.data.hf`), an imagefolder with ``metadata.csv`` or a table of
file paths (:mod:`transferkit.data.paths`) go to their layout's loader; class folders and tables
of texts or series go to their modality's loader. To add a modality, write its loader and add it
to ``LOADERS`` (and its file extensions to :func:`detect_modality`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from transferkit.data.audio import KNOWN_AUDIO, load_audio_folder, open_audio
from transferkit.data.base import MODALITIES, Split, TaskData
from transferkit.data.hf import hf_modality, is_saved_dataset, load_hf_dataset, parquet_shards
from transferkit.data.image import IMAGE_EXTENSIONS, KNOWN_IMAGE, folder_error, load_image_folder, open_image
from transferkit.data.paths import (head_rows, is_metadata_folder, load_metadata_folder, load_path_table,
                                    metadata_modality, path_table_modality)
from transferkit.data.sequence import SEQUENCE_EXTENSIONS, VALUES_COLUMN, is_sequence_table, load_sequence_data
from transferkit.data.splits import check_fractions
from transferkit.data.text import TEXT_EXTENSIONS, load_text_table
from transferkit.errors import DataError

__all__ = ["AUDIO_EXTENSIONS", "IMAGE_EXTENSIONS", "MODALITIES", "SEQUENCE_EXTENSIONS", "TEXT_EXTENSIONS", "Split",
           "TaskData", "detect_layout", "detect_modality", "load_task_data", "open_audio", "open_image"]

AUDIO_EXTENSIONS = KNOWN_AUDIO

LOADERS: dict[str, Callable[..., TaskData]] = {"image": load_image_folder, "text": load_text_table,
                                               "audio": load_audio_folder, "sequence": load_sequence_data}
#: Loaders of the layouts that are not one modality's own (:func:`detect_layout`).
LAYOUT_LOADERS: dict[str, Callable[..., TaskData]] = {"hf": load_hf_dataset, "metadata": load_metadata_folder,
                                                      "paths": load_path_table}


def detect_modality(path: str | os.PathLike, *, text_column: str = "text", label_column: str = "label",
                    split_column: str = "split", path_column: str | None = None) -> str:
    """The modality of the data at ``path``: "image", "text", "audio" or "sequence".

    See :func:`detect_layout`, which also says which layout holds it.

    Raises:
        DataError: The path does not exist, holds nothing transferkit can read, or has a
            folder that cannot be listed.
    """
    return detect_layout(path, text_column=text_column, label_column=label_column, split_column=split_column,
                         path_column=path_column)[1]


def detect_layout(path: str | os.PathLike, *, text_column: str = "text", label_column: str = "label",
                  split_column: str = "split", path_column: str | None = None) -> tuple[str, str]:
    """The layout and modality of the data at ``path``: ``(layout, modality)``.

    Layouts: "hf" (a ``save_to_disk`` folder, or Parquet files with an Image or Audio column),
    "metadata" (a folder with ``metadata.csv`` / ``.jsonl`` / ``.parquet`` at its root or in its
    split folders), "paths" (a table whose rows name image or audio files), "table" (texts or
    series) and "folder" (class folders).

    A table file is a text table when it has the text column; else a table of file paths when a
    column names files (:func:`transferkit.data.paths.find_path_column`); else a sequence table
    when :func:`transferkit.data.sequence.is_sequence_table` says so (no text column, and a
    ``values`` column or only numbers outside the label and split columns); else a text table. A
    class folder takes the modality of the first image, audio or ``.npy`` file met (names
    starting with ``.`` are skipped; image and audio files in formats that cannot be decoded here
    count, so the loader names them with the fix).

    Raises:
        DataError: The path does not exist, holds nothing transferkit can read, or has a
            folder that cannot be listed.
    """
    p = Path(path)
    supported = (f"a folder of class subfolders holding images ({', '.join(sorted(IMAGE_EXTENSIONS))}), "
                 f"audio clips ({', '.join(sorted(AUDIO_EXTENSIONS))}) or .npy series, an imagefolder with "
                 "metadata.csv, a Hugging Face datasets folder (save_to_disk or Parquet), "
                 f"or a table file ({', '.join(sorted(TEXT_EXTENSIONS))}) of texts, series or image/audio file paths")
    columns = dict(text_column=text_column, label_column=label_column, split_column=split_column)
    if not p.exists():
        raise DataError(f"`path` {str(path)!r} does not exist; expected {supported}.")
    if p.is_file():
        if p.suffix.lower() in TEXT_EXTENSIONS:
            return _table_layout(p, path_column=path_column, **columns)
        raise DataError(f"`path` {str(path)!r} is not a supported data file; expected {supported}.")
    if is_saved_dataset(p):
        return "hf", hf_modality(p, path_column=path_column, **columns) or "image"
    if is_metadata_folder(p, path_column):
        return "metadata", metadata_modality(p)
    if parquet_shards(p) and (modality := hf_modality(p, path_column=path_column, **columns)):
        return "hf", modality

    def unreadable(error: OSError) -> None:
        raise folder_error(error.filename, error)

    for folder, dirs, files in os.walk(p, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            suffix = Path(name).suffix.lower()
            if suffix in KNOWN_IMAGE:  # undecodable formats too, so preflight names them
                return "folder", "image"
            if suffix in AUDIO_EXTENSIONS:
                return "folder", "audio"
            if suffix in SEQUENCE_EXTENSIONS:
                return "folder", "sequence"
    raise DataError(f"`path` {str(path)!r} holds no image or audio files (nor .npy series); expected {supported}.")


def _table_layout(p: Path, *, text_column: str, label_column: str, split_column: str,
                  path_column: str | None) -> tuple[str, str]:
    try:
        columns = [str(c) for c in head_rows(p, 1)[0]]
    except Exception:  # an unreadable table is the text loader's to report
        columns = []
    if text_column in columns and path_column is None:
        return "table", "text"
    if p.suffix.lower() == ".parquet" and (modality := hf_modality(
            p, text_column=text_column, label_column=label_column, split_column=split_column,
            path_column=path_column, stored_only=True)):
        return "hf", modality  # a Parquet file of image or audio bytes
    if VALUES_COLUMN not in columns and (modality := path_table_modality(
            p, label_column=label_column, split_column=split_column, path_column=path_column)):
        return "paths", modality
    sequence = is_sequence_table(p, text_column=text_column, label_column=label_column, split_column=split_column)
    return "table", "sequence" if sequence else "text"


def load_task_data(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str = "split",
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    modality: str | None = None,
    path_column: str | None = None,
) -> TaskData:
    """Loads the target data at ``path``, checking all of it before any model is loaded.

    Args:
        path: An image, audio-clip or ``.npy``-series folder (``root/<class>/<file>`` or
            ``root/{train,val,test}/<class>/...``), a table file (``.csv``, ``.tsv``, ``.jsonl``,
            ``.json``, ``.parquet``) of texts, series or image/audio file paths, an imagefolder
            with ``metadata.csv``, or a Hugging Face ``datasets`` folder (``save_to_disk`` or
            Parquet); see :func:`detect_layout`.
        text_column: Table column holding the texts.
        label_column: Table column holding the labels.
        split_column: Table column holding train/val/test, used when present.
        val_fraction: Fraction of each class for the val split when it is not given.
        test_fraction: Fraction of each class for the test split when it is not given.
        seed: Seed of the stratified split.
        skip_bad: Skip bad files or rows (listed in ``TaskData.skipped``) instead of raising.
        modality: Overrides :func:`detect_modality` (e.g. ``"sequence"`` for a table of series).
        path_column: Table column holding image or audio file paths or ids, or a ``datasets``
            column of images or audio (default: found from the data).

    Returns:
        The task with its train/val/test splits.

    Raises:
        DataError: The data is unsupported or preflight found problems (all listed at once).
        ConfigError: A fraction is out of range.
    """
    check_fractions(val_fraction, test_fraction)
    if modality is not None and modality not in LOADERS:
        raise DataError(f"`modality` must be one of {', '.join(sorted(LOADERS))}; got {modality!r}.")
    columns = dict(text_column=text_column, label_column=label_column, split_column=split_column)
    try:
        layout, found = detect_layout(path, path_column=path_column, **columns)
    except DataError:
        if modality is None:
            raise
        layout, found = ("table" if Path(path).is_file() else "folder"), modality  # its loader says what is wrong
    if layout == "table" and modality in ("image", "audio"):
        layout = "paths"  # a table of files whatever its columns look like
    if layout == "paths" and modality in ("text", "sequence"):
        layout = "table"
    kwargs = dict(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, skip_bad=skip_bad)
    if layout in LAYOUT_LOADERS:  # each finds the modality from all of its examples unless told
        kwargs.update(label_column=label_column, split_column=split_column, path_column=path_column,
                      modality=modality)
        if layout == "hf":
            kwargs.update(text_column=text_column)
        return LAYOUT_LOADERS[layout](path, **kwargs)
    modality = modality or found
    if modality not in LOADERS:
        raise DataError(f"`path` {str(path)!r} holds {modality} files, but {modality} support is "
                        "not installed yet; supported now: " + ", ".join(sorted(LOADERS)) + ".")
    if modality == "text":
        kwargs.update(text_column=text_column, label_column=label_column, split_column=split_column)
    if modality == "sequence":
        kwargs.update(label_column=label_column, split_column=split_column)
    return LOADERS[modality](path, **kwargs)
