"""Text classification data: one table (CSV, TSV, JSON lines, JSON array or Parquet).

A text column and a label column are required (names configurable). When the split column
exists, its values ``train``, ``val`` (or ``validation``, ``valid``, ``dev``) and ``test`` are
kept, and a missing val or test split is cut from train. Reading, and the row numbering used
in problem reports, is in :mod:`transferkit.data.tables`.

Labels: when every label of a column is a number, whole numbers are written as integers, so
``1``, ``1.0`` and ``+1`` are one class ``"1"`` (a CSV exported from a float column says
``1.0``); a column holding any other text keeps every label as written. Texts that are empty,
or exactly a missing-value marker (``NA``, ``N/A``, ``None``, ``null``, ``NaN``, ...), are bad rows.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.data.base import TaskData
from transferkit.data.checks import ProblemLog, check_classes
from transferkit.data.splits import group_by_split, make_splits
from transferkit.data.tables import TABLE_EXTENSIONS, read_table
from transferkit.errors import DataError

TEXT_EXTENSIONS = TABLE_EXTENSIONS
SPLIT_VALUES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "dev": "val",
                "test": "test"}
_INT = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
#: Cells that spreadsheets and pandas write for a missing value; never a text to learn from.
MISSING_MARKERS = frozenset({"NA", "N/A", "n/a", "#N/A", "NaN", "nan", "None", "NULL", "null", "<NA>"})
_FIX = "fix or remove these rows"


def _label(value: object) -> str | None:
    """The label as a class name (ints and integral floats as ``"3"``), None when missing."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


def label_names(values: pd.Series) -> pd.Series:
    """The class name of every label in a column (None where missing), same index.

    When every present label is a number, whole numbers become integer text (``"1.0"``,
    ``"+1"``, ``1.0`` -> ``"1"``); otherwise the labels stay as written (stripped).
    """
    names = pd.Series([_label(v) for v in values], index=values.index, dtype=object)
    present = [n for n in names if n is not None]
    if present and all(_NUMBER.fullmatch(n) for n in present):
        names = pd.Series([n if n is None else _whole(n) for n in names], index=values.index, dtype=object)
    return names


def _whole(number: str) -> str:
    """``"1.0"`` -> ``"1"``; a number with a fraction stays as written."""
    d = Decimal(number)
    if d.adjusted() > 40:  # "1e999999" would make a huge integer; such a label stays as written
        return number
    return str(int(d)) if d == d.to_integral_value() else number


def text_problem(value: object) -> str | None:
    """Why a table cell cannot be a text (empty, a missing-value marker, not a string), or None."""
    if isinstance(value, str):
        if value.strip() in MISSING_MARKERS:
            return f"missing text ({value.strip()!r} marks a missing value)"
        return None if value.strip() else "empty text"
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "empty text"
    return None if isinstance(value, (int, float, np.number)) else \
        f"text is not a string (got {type(value).__name__})"


def sort_classes(names: set[str]) -> list[str]:
    """Integers in numeric order ("2" before "10") when every name is one, else by string."""
    if names and all(_INT.fullmatch(n) for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def _missing_columns(df: pd.DataFrame, wanted: list[tuple[str, str]], path: Path, log: ProblemLog) -> None:
    present = [str(c) for c in df.columns]
    for option, column in wanted:
        if column not in df.columns:
            flag = "--" + option.replace("_", "-")
            log.structural("", f"column {column!r} (`{option}`) not found in {path.name}; "
                               f"columns present: {present}. Pass {flag} ({option}=...) to name it")


def _check_rows(index, texts, labels, splits, flagged: set, log: ProblemLog,
                extra: dict[str, pd.Series] | None = None) -> list[tuple]:
    """``(split, label, row)`` for every good row; the others go to ``log``."""
    rows = []
    extra = extra or {}
    for row, text, label, split in zip(index, texts, labels, splits):
        if row in flagged:  # already reported while reading
            continue
        name = _label(label)
        part = SPLIT_VALUES.get(split.strip().lower()) if isinstance(split, str) else None
        missing_extra = next((f"missing label in column {c!r}" for c, col in extra.items() if not _label(col[row])), None)
        reason = text_problem(text) or (None if name else "missing label") or missing_extra
        if not reason and not part:
            reason = (f"unknown split value {split!r} (expected train, val/validation/valid/dev "
                      "or test)")
        if reason:
            log.bad(f"row {row}", reason)
        else:
            rows.append((part, name, row))
    return rows


def _read_columns(path: Path, log: ProblemLog, text_column: str, label_columns: list[str], split_column: str):
    """The table and its flagged rows, once every column the options name is there."""
    df, flagged = read_table(path, log)
    if len(df.columns) == 0 and not any(not p.skippable for p in log.problems):
        log.structural("", "no usable rows (every row has a problem)" if log.problems
                       else "the table is empty")
    log.stop_if_structural(_FIX)
    wanted = [("text_column", text_column), *[("label_column", c) for c in label_columns]]
    if split_column != "split":  # a name the user chose must exist
        wanted.append(("split_column", split_column))
    _missing_columns(df, wanted, path, log)
    log.stop_if_structural(_FIX)
    return df, flagged


def load_text_table(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str = "split",
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
) -> TaskData:
    """Loads a text classification table after a full preflight of every row.

    Args:
        path: A ``.csv``, ``.tsv``, ``.jsonl``, ``.json`` or ``.parquet`` file.
        text_column: Column holding the texts.
        label_column: Column holding the labels (strings or integers). Several comma-separated
            columns (``"topic,sentiment"``) make one task per column on the same texts; the
            first is the main task (used for splits and model selection).
        split_column: Column holding train/val/test; used when present. A name other than the
            default ``"split"`` must exist.
        val_fraction: Fraction of each class for a val split transferkit makes.
        test_fraction: Fraction of each class for a test split transferkit makes.
        seed: Seed of the stratified split.
        skip_bad: Leave out bad rows (recorded in ``TaskData.skipped``) instead of raising.

    Returns:
        The task, with ``str`` examples; integer labels keep their numeric order.

    Raises:
        DataError: The file is unreadable or preflight found problems.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"`path` must be a table file; got {str(path)!r}, which does not exist.")
    log = ProblemLog(str(path), skip_bad=skip_bad)
    label_columns = [c.strip() for c in label_column.split(",")] if isinstance(label_column, str) else list(label_column)
    label_column, extra_columns = label_columns[0], label_columns[1:]
    df, flagged = _read_columns(path, log, text_column, label_columns, split_column)
    for c in label_columns:
        df[c] = label_names(df[c])
    has_split = split_column in df.columns
    split_values = df[split_column] if has_split else ["train"] * len(df)
    rows = _check_rows(df.index, df[text_column], df[label_column], split_values, flagged, log,
                       {c: df[c] for c in extra_columns})
    splits_present = {"train"} | ({s for s, _, _ in rows} if has_split else set())
    classes = sort_classes({c for _, c, _ in rows})
    counts = {s: Counter(c for s2, c, _ in rows if s2 == s) for s in splits_present}
    if has_split and not counts["train"]:
        log.structural("", f"no usable rows with {split_column!r} = 'train'")
    else:
        check_classes(log, classes, counts, test_made="test" not in splits_present, unit="row")
    skipped = log.finish(_FIX)

    given = group_by_split(rows, classes, splits_present)
    splits = make_splits(given, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    extra_classes = {c: sort_classes({_label(df[c][r]) for _, _, r in rows}) for c in extra_columns}
    for split in splits.values():  # examples were row numbers until now
        split.extra_labels = {c: np.array([names.index(_label(df[c][r])) for r in split.examples], dtype=np.int64)
                              for c, names in extra_classes.items()}
        split.examples = [str(df[text_column][r]) for r in split.examples]
    return TaskData("text", classes, splits["train"], splits["val"], splits["test"],
                    origin=str(path.resolve()), skipped=skipped, split_given="test" in splits_present,
                    task_name=label_column if extra_columns else "label", extra_classes=extra_classes)
