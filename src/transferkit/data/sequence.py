"""Sequence (time-series) classification data: a table of series, or a folder of ``.npy`` files.

Every example becomes a float32 array of shape ``(channels, time)`` -- channels first, as in
aeon/sktime and ``torch.nn.Conv1d``; a univariate series has one channel. Series may differ in
length (the source's input pipeline pads each batch and masks the padding, and crops series
longer than the model's ``max_len``; see ``transferkit.sources.sequence``); every series must
have the same number of channels.

Layouts
-------
* **Folder**: ``root/<class>/<name>.npy`` (or ``root/{train,val,test}/<class>/...``), one
  series per file, shape ``(time,)`` or ``(channels, time)``. Files are read with
  ``numpy.load(allow_pickle=False)``, so object arrays are refused.
* **Wide table** (CSV, TSV, JSON lines, JSON, Parquet): one series per row; every column other
  than the label and split columns is a time step, in column order (``t0, t1, ...``). Empty
  cells at the end of a row make that series shorter; a gap inside a row is a bad row.
  Univariate only.
* **Values table**: a ``values`` column holding, per row, a list of numbers (univariate) or a
  list of per-channel lists (multivariate, channels first); in CSV as JSON text
  (``"[0.1, 0.5, 0.2]"``); in Parquet as list columns.

Telling a sequence table from a text table (:func:`is_sequence_table`)
------------------------------------------------------------------------
A table file is a *text* table when it has the text column (``text`` unless ``text_column``
says otherwise). Without it, it is a *sequence* table when it has a ``values`` column, or when
it has at least two other columns and every value of the first row outside the label and split
columns is a number (or empty). Anything else stays a text table, so the text loader's message
about the missing text column is what the user sees. ``load_task_data(..., modality=...)``
overrides the rule.

Preflight names every bad series in one error: unreadable files, object arrays, empty series,
NaN or infinite values (other than trailing empties of a wide row), more than 2 dimensions,
channels of unequal length and a channel count different from the other series' (the most
common count wins); ``skip_bad=True`` leaves them out.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.data.base import TaskData
from transferkit.data.checks import ProblemLog, check_classes
from transferkit.data.splits import group_by_split, make_splits
from transferkit.data.tables import TABLE_EXTENSIONS, read_table
from transferkit.data.text import SPLIT_VALUES, _label, label_names, sort_classes
from transferkit.errors import DataError

SEQUENCE_EXTENSIONS = frozenset({".npy"})
VALUES_COLUMN = "values"
_FIX_ROWS = "fix or remove these rows"
_FIX_FILES = "fix or remove these files"


class _SeriesError(Exception):
    """Why a value cannot be a series (the message is the reason)."""


# -- detection ---------------------------------------------------------------------------------


def is_sequence_table(path: str | os.PathLike, *, text_column: str = "text", label_column: str = "label",
                      split_column: str = "split") -> bool:
    """True when the table at ``path`` holds series rather than texts (rule in the module docstring).

    Only the header and the first row are read.
    """
    try:
        columns, first = _peek(Path(path))
    except Exception:  # an unreadable table is the text loader's to report
        return False
    if text_column in columns:
        return False
    if VALUES_COLUMN in columns:
        return True
    rest = [c for c in columns if c not in (label_column, split_column)]
    return len(rest) >= 2 and all(_is_number(first.get(c)) for c in rest)


def _peek(path: Path) -> tuple[list[str], dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        columns = list(table.schema_arrow.names)
        batch = next(table.iter_batches(batch_size=1), None)
        first = {} if batch is None else {c: batch.column(c)[0].as_py() for c in columns}
        return columns, first
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        head = f.read(1 << 20)
    if suffix in (".jsonl", ".json"):
        text = head.lstrip()
        if text.startswith("["):
            record = json.loads(Path(path).read_text(encoding="utf-8", errors="replace"))[0]
        else:
            record = json.loads(text.split("\n", 1)[0])
        return list(record), record
    reader = csv.reader(io.StringIO(head, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
    header = next(reader, [])
    row = next(reader, [])
    return header, dict(zip(header, row))


def _is_number(value: object) -> bool:
    if value is None or isinstance(value, bool):
        return value is None
    if isinstance(value, (int, float, np.number)):
        return True
    if isinstance(value, str):
        if not value.strip():
            return True
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


# -- series ------------------------------------------------------------------------------------


def as_series(value: object) -> np.ndarray:
    """A float32 ``(channels, time)`` array from a list, nested list, JSON text or array.

    Raises:
        DataError: The value cannot be a series (the message says why).
    """
    try:
        return _series(value)
    except _SeriesError as e:
        raise DataError(f"`example` cannot be used as a series: {e}.") from None


def _series(value: object) -> np.ndarray:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise _SeriesError(f"not a JSON list of numbers ({e.msg} at column {e.colno})") from None
    if isinstance(value, (list, tuple)) or isinstance(value, np.ndarray) and value.dtype == object:
        items = list(value)
        nested = [isinstance(v, (list, tuple, np.ndarray)) for v in items]
        if any(nested) and not all(nested):
            raise _SeriesError("mixes numbers and lists; give a list of numbers or one list per channel")
        if any(nested) and len({len(v) for v in items}) > 1:
            raise _SeriesError(f"channels of unequal length {sorted({len(v) for v in items})}")
        try:
            value = (np.array([np.asarray(v, dtype=np.float64) for v in items]) if any(nested)
                     else np.asarray(items, dtype=np.float64))
        except (TypeError, ValueError):
            raise _SeriesError("holds values that are not numbers") from None
    if not isinstance(value, np.ndarray):
        raise _SeriesError(f"expected a list of numbers, got {type(value).__name__}")
    if value.dtype == object or not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
        raise _SeriesError(f"array of dtype {value.dtype} is not numeric")
    if value.ndim == 1:
        value = value[None, :]
    if value.ndim != 2:
        raise _SeriesError(f"has {value.ndim} dimensions; expected (time,) or (channels, time)")
    if value.shape[1] == 0 or value.shape[0] == 0:
        raise _SeriesError("empty series (0 time steps)")
    if not np.isfinite(value).all():
        raise _SeriesError("holds NaN or infinite values")
    return np.ascontiguousarray(value, dtype=np.float32)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """Reads one series from a ``.npy`` file (``allow_pickle=False``) as ``(channels, time)`` float32.

    Raises:
        DataError: The file is unreadable, an object array or not a series.
    """
    try:
        return _read_npy(Path(path))
    except _SeriesError as e:
        raise DataError(f"Cannot read series {str(path)!r}: {e}. Fix or remove the file.") from None


def series_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as one series (see :func:`read_npy`), or None when it can."""
    try:
        _read_npy(path)
    except _SeriesError as e:
        return str(e)
    return None


def _read_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise _SeriesError(f"unreadable file ({e.strerror})") from None
    if magic != b"\x93NUMPY":  # numpy would call any other content "pickled data"
        raise _SeriesError("not a .npy array (no NumPy header); save series with numpy.save")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise _SeriesError("object array (pickled); transferkit reads numeric arrays only") from None
        raise _SeriesError(f"not a .npy array ({e})") from None
    except (OSError, EOFError) as e:
        raise _SeriesError(f"unreadable or corrupt .npy file ({type(e).__name__}: {e})") from None
    if not isinstance(array, np.ndarray):
        raise _SeriesError("not a single array (an .npz archive?)")
    return _series(array)


def _wide_row(values: list) -> np.ndarray:
    """A wide-table row: numbers, then optionally only empties (a shorter series)."""
    numbers: list[float] = []
    ended_at = None
    for i, v in enumerate(values):
        empty = v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))
        if empty:
            ended_at = i if ended_at is None else ended_at
            continue
        if ended_at is not None:
            raise _SeriesError(f"a gap at time step {ended_at} inside the series (empty cell before a value)")
        try:
            numbers.append(float(v))
        except (TypeError, ValueError):
            raise _SeriesError(f"value {v!r} at time step {i} is not a number") from None
    return _series(np.asarray(numbers, dtype=np.float64))


def _check_channels(series: dict, log: ProblemLog) -> dict:
    """Drops (as bad items) series whose channel count differs from the most common one."""
    counts = Counter(s.shape[0] for s in series.values())
    if len(counts) <= 1:
        return series
    common = counts.most_common(1)[0][0]
    kept = {}
    for where, s in series.items():
        if s.shape[0] == common:
            kept[where] = s
        else:
            log.bad(where, f"has {s.shape[0]} channels; the other series have {common}")
    return kept


# -- loaders -----------------------------------------------------------------------------------


def load_sequence_data(
    path: str | os.PathLike,
    *,
    label_column: str = "label",
    split_column: str = "split",
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    **_ignored,
) -> TaskData:
    """Loads a sequence table or ``.npy`` folder (see the module docstring) after a full preflight.

    Args:
        path: A table file or a folder of class subfolders of ``.npy`` files.
        label_column: Table column holding the labels.
        split_column: Table column holding train/val/test, used when present.
        val_fraction: Fraction of each class for a val split transferkit makes.
        test_fraction: Fraction of each class for a test split transferkit makes.
        seed: Seed of the stratified split.
        skip_bad: Leave out bad series (recorded in ``TaskData.skipped``) instead of raising.

    Returns:
        The task; examples are float32 arrays of shape ``(channels, time)``.

    Raises:
        DataError: The data is unreadable or preflight found problems (all listed at once).
    """
    p = Path(path)
    if p.is_dir():
        return _load_folder(p, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, skip_bad=skip_bad)
    if p.is_file() and p.suffix.lower() in TABLE_EXTENSIONS:
        return _load_table(p, label_column=label_column, split_column=split_column, val_fraction=val_fraction,
                           test_fraction=test_fraction, seed=seed, skip_bad=skip_bad)
    raise DataError(f"`path` {str(path)!r} is not a sequence table ({', '.join(sorted(TABLE_EXTENSIONS))}) "
                    "or a folder of class subfolders holding .npy files.")


def _load_folder(root: Path, *, val_fraction: float, test_fraction: float, seed: int, skip_bad: bool) -> TaskData:
    from transferkit.data.audio import scan_class_folders

    log = ProblemLog(str(root), skip_bad=skip_bad)
    layout, found, where = scan_class_folders(root, log, SEQUENCE_EXTENSIONS, "series file")
    series: dict[str, np.ndarray] = {}
    meta: dict[str, tuple[str, str]] = {}
    for split, cls, f in found:
        rel = f.relative_to(root).as_posix()
        try:
            series[rel] = _read_npy(f)
            meta[rel] = (split, cls)
        except _SeriesError as e:
            log.bad(rel, str(e))
    series = _check_channels(series, log)
    records = [(meta[w][0], meta[w][1], s) for w, s in series.items()]
    classes = sorted(where)
    counts = {s: Counter(c for s2, c, _ in records if s2 == s) for s in layout}
    check_classes(log, classes, counts, test_made="test" not in layout, where=where, unit="series")
    skipped = log.finish(_FIX_FILES)
    given = group_by_split(records, classes, set(layout))
    splits = make_splits(given, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return TaskData("sequence", classes, splits["train"], splits["val"], splits["test"],
                    origin=str(root.resolve()), skipped=skipped, split_given="test" in layout)


def _load_table(path: Path, *, label_column: str, split_column: str, val_fraction: float, test_fraction: float,
                seed: int, skip_bad: bool) -> TaskData:
    log = ProblemLog(str(path), skip_bad=skip_bad)
    df, flagged = read_table(path, log)
    if len(df.columns) == 0 and not any(not p.skippable for p in log.problems):
        log.structural("", "no usable rows (every row has a problem)" if log.problems else "the table is empty")
    log.stop_if_structural(_FIX_ROWS)
    present = [str(c) for c in df.columns]
    if label_column not in df.columns:
        log.structural("", f"column {label_column!r} (`label_column`) not found in {path.name}; columns "
                           f"present: {present}. Pass --label-column (label_column=...) to name it")
    if split_column != "split" and split_column not in df.columns:
        log.structural("", f"column {split_column!r} (`split_column`) not found in {path.name}; columns "
                           f"present: {present}")
    wide = [c for c in df.columns if c not in (label_column, split_column)]
    if VALUES_COLUMN not in df.columns and not wide:
        log.structural("", f"no series columns in {path.name}: expected a {VALUES_COLUMN!r} column of lists "
                           "or one column per time step")
    log.stop_if_structural(_FIX_ROWS)

    df[label_column] = label_names(df[label_column])  # "1" and "1.0" are one class
    has_split = split_column in df.columns
    series: dict[str, np.ndarray] = {}
    meta: dict[str, tuple[str, str]] = {}
    for row, record in zip(df.index, df.to_dict("records")):
        if row in flagged:
            continue
        where = f"row {row}"
        name = _label(record[label_column])
        split = record[split_column] if has_split else "train"
        part = SPLIT_VALUES.get(split.strip().lower()) if isinstance(split, str) else None
        try:
            if name is None:
                raise _SeriesError("missing label")
            if part is None:
                raise _SeriesError(f"unknown split value {split!r} (expected train, val/validation/valid/dev or test)")
            if VALUES_COLUMN in df.columns:
                series[where] = _series(record[VALUES_COLUMN])
            else:
                series[where] = _wide_row([record[c] for c in wide])
            meta[where] = (part, name)
        except _SeriesError as e:
            log.bad(where, str(e))
    series = _check_channels(series, log)
    records = [(meta[w][0], meta[w][1], s) for w, s in series.items()]
    splits_present = {"train"} | ({s for s, _, _ in records} if has_split else set())
    classes = sort_classes({c for _, c, _ in records})
    counts = {s: Counter(c for s2, c, _ in records if s2 == s) for s in splits_present}
    if has_split and not counts["train"]:
        log.structural("", f"no usable rows with {split_column!r} = 'train'")
    else:
        check_classes(log, classes, counts, test_made="test" not in splits_present, unit="row")
    skipped = log.finish(_FIX_ROWS)
    given = group_by_split(records, classes, splits_present)
    splits = make_splits(given, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return TaskData("sequence", classes, splits["train"], splits["val"], splits["test"],
                    origin=str(path.resolve()), skipped=skipped, split_given="test" in splits_present)


def write_series_table(path: str | os.PathLike, series: list[np.ndarray], labels: list, *,
                       splits: list[str] | None = None) -> Path:
    """Writes series as a values table (Parquet, or JSON lines / CSV with JSON text) for tests and benchmarks.

    Args:
        path: The file to write; its suffix picks the format.
        series: Arrays of shape ``(time,)`` or ``(channels, time)``.
        labels: One label per series.
        splits: Optional ``train`` / ``val`` / ``test`` per series.
    """
    path = Path(path)
    rows = {VALUES_COLUMN: [np.asarray(s, dtype=np.float64).tolist() for s in series], "label": list(labels)}
    if splits is not None:
        rows["split"] = list(splits)
    frame = pd.DataFrame(rows)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame[VALUES_COLUMN] = [json.dumps(v) for v in frame[VALUES_COLUMN]]
        frame.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    return path
