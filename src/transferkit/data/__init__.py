"""Target data: load a folder or table into a ``TaskData`` after a full preflight.

``load_task_data`` looks at the path, picks the modality in :func:`detect_modality` and hands
over to that modality's loader. To add a modality, write its loader and add it to ``LOADERS``
(and its file extensions to :func:`detect_modality`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from transferkit.data.audio import KNOWN_AUDIO, load_audio_folder, open_audio
from transferkit.data.base import MODALITIES, Split, TaskData
from transferkit.data.image import IMAGE_EXTENSIONS, KNOWN_IMAGE, folder_error, load_image_folder, open_image
from transferkit.data.sequence import SEQUENCE_EXTENSIONS, is_sequence_table, load_sequence_data
from transferkit.data.splits import check_fractions
from transferkit.data.text import TEXT_EXTENSIONS, load_text_table
from transferkit.errors import DataError

__all__ = ["AUDIO_EXTENSIONS", "IMAGE_EXTENSIONS", "MODALITIES", "SEQUENCE_EXTENSIONS", "TEXT_EXTENSIONS", "Split", "TaskData",
           "detect_modality", "load_task_data", "open_audio", "open_image"]

AUDIO_EXTENSIONS = KNOWN_AUDIO

LOADERS: dict[str, Callable[..., TaskData]] = {"image": load_image_folder, "text": load_text_table,
                                               "audio": load_audio_folder, "sequence": load_sequence_data}


def detect_modality(path: str | os.PathLike, *, text_column: str = "text", label_column: str = "label",
                    split_column: str = "split") -> str:
    """The modality of the data at ``path``: "image", "text", "audio" or "sequence".

    A table file is a sequence table when :func:`transferkit.data.sequence.is_sequence_table`
    says so (no text column, and a ``values`` column or only numbers outside the label and
    split columns), else a text table; a folder takes the modality of the first image, audio or
    ``.npy`` file met (names starting with ``.`` are skipped; image and audio files in formats
    that cannot be decoded here count, so the loader names them with the fix).

    Raises:
        DataError: The path does not exist, holds nothing transferkit can read, or has a
            folder that cannot be listed.
    """
    p = Path(path)
    supported = (f"a folder of class subfolders holding images ({', '.join(sorted(IMAGE_EXTENSIONS))}), "
                 f"audio clips ({', '.join(sorted(AUDIO_EXTENSIONS))}) or .npy series, "
                 f"or a table file ({', '.join(sorted(TEXT_EXTENSIONS))})")
    if not p.exists():
        raise DataError(f"`path` {str(path)!r} does not exist; expected {supported}.")
    if p.is_file():
        if p.suffix.lower() in TEXT_EXTENSIONS:
            sequence = is_sequence_table(p, text_column=text_column, label_column=label_column,
                                         split_column=split_column)
            return "sequence" if sequence else "text"
        raise DataError(f"`path` {str(path)!r} is not a supported data file; expected {supported}.")
    def unreadable(error: OSError) -> None:
        raise folder_error(error.filename, error)

    for folder, dirs, files in os.walk(p, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            suffix = Path(name).suffix.lower()
            if suffix in KNOWN_IMAGE:  # undecodable formats too, so preflight names them
                return "image"
            if suffix in AUDIO_EXTENSIONS:
                return "audio"
            if suffix in SEQUENCE_EXTENSIONS:
                return "sequence"
    raise DataError(f"`path` {str(path)!r} holds no image or audio files (nor .npy series); expected {supported}.")


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
) -> TaskData:
    """Loads the target data at ``path``, checking all of it before any model is loaded.

    Args:
        path: An image, audio-clip or ``.npy``-series folder (``root/<class>/<file>`` or
            ``root/{train,val,test}/<class>/...``) or a table file (``.csv``, ``.tsv``, ``.jsonl``,
            ``.json``, ``.parquet``) of texts or series (see :func:`detect_modality`).
        text_column: Table column holding the texts.
        label_column: Table column holding the labels.
        split_column: Table column holding train/val/test, used when present.
        val_fraction: Fraction of each class for the val split when it is not given.
        test_fraction: Fraction of each class for the test split when it is not given.
        seed: Seed of the stratified split.
        skip_bad: Skip bad files or rows (listed in ``TaskData.skipped``) instead of raising.
        modality: Overrides :func:`detect_modality` (e.g. ``"sequence"`` for a table of series).

    Returns:
        The task with its train/val/test splits.

    Raises:
        DataError: The data is unsupported or preflight found problems (all listed at once).
        ConfigError: A fraction is out of range.
    """
    check_fractions(val_fraction, test_fraction)
    if modality is not None and modality not in LOADERS:
        raise DataError(f"`modality` must be one of {', '.join(sorted(LOADERS))}; got {modality!r}.")
    modality = modality or detect_modality(path, text_column=text_column, label_column=label_column,
                                           split_column=split_column)
    if modality not in LOADERS:
        raise DataError(f"`path` {str(path)!r} holds {modality} files, but {modality} support is "
                        "not installed yet; supported now: " + ", ".join(sorted(LOADERS)) + ".")
    kwargs = dict(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, skip_bad=skip_bad)
    if modality == "text":
        kwargs.update(text_column=text_column, label_column=label_column, split_column=split_column)
    if modality == "sequence":
        kwargs.update(label_column=label_column, split_column=split_column)
    return LOADERS[modality](path, **kwargs)
