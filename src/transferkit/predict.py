"""Turning ``transferkit predict`` arguments into examples, and predictions into a CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from transferkit.errors import DataError


def expand_inputs(inputs: list[str], run) -> list:
    """Image, audio and sequence runs: files and folders (searched recursively for the run's
    file types). Text runs: tables or literal texts."""
    from transferkit.data import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, SEQUENCE_EXTENSIONS, TEXT_EXTENSIONS

    extensions = {"image": IMAGE_EXTENSIONS, "audio": AUDIO_EXTENSIONS, "sequence": SEQUENCE_EXTENSIONS}.get(
        run.modality, IMAGE_EXTENSIONS)

    examples: list = []
    for item in inputs:
        path = Path(item)
        if run.modality == "text":
            if path.suffix.lower() in TEXT_EXTENSIONS and path.is_file():
                examples += _table_texts(path, run.config["fit"]["text_column"])
            else:
                examples.append(item)
        elif path.is_dir():
            examples += sorted(p for p in path.rglob("*") if p.suffix.lower() in extensions
                               and not any(part.startswith(".") for part in p.parts))
        elif path.is_file():
            examples.append(path)
        else:
            raise DataError(f"Input {item!r} is neither a file nor a folder.")
    if not examples:
        raise DataError(f"No examples found in {inputs!r}.")
    return examples


def _table_texts(path: Path, column: str) -> list[str]:
    import pandas as pd

    readers = {".csv": pd.read_csv, ".tsv": lambda p: pd.read_csv(p, sep="\t"), ".parquet": pd.read_parquet,
               ".jsonl": lambda p: pd.read_json(p, lines=True), ".json": lambda p: pd.read_json(p, lines=True)}
    frame = readers[path.suffix.lower()](path)
    if column not in frame.columns:
        raise DataError(f"Table {str(path)!r} has no text column {column!r}; columns: {list(frame.columns)}.")
    return frame[column].astype(str).tolist()


def write_predictions(path: Path, examples: list, probabilities: dict[str, np.ndarray],
                      classes: dict[str, list[str]]) -> None:
    """One row per example: the input, then per task the predicted label and every class probability.

    With one task the columns are ``prediction, p_<class>...``; with several, each is prefixed by
    the task name (``topic_prediction, topic_p_<class>...``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = {t: ("" if len(classes) == 1 else f"{t}_") for t in classes}
    header = ["input"]
    for t, names in classes.items():
        header += [f"{prefix[t]}prediction", *[f"{prefix[t]}p_{c}" for c in names]]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, ex in enumerate(examples):
            row = [str(ex)]
            for t, names in classes.items():
                p = probabilities[t][i]
                row += [names[int(p.argmax())], *[f"{v:.6f}" for v in p]]
            writer.writerow(row)
