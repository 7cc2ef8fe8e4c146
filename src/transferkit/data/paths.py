"""Image or audio files named by a table: path tables and Hugging Face ``imagefolder`` metadata.

Layouts:

* **Path table** -- a table file (CSV, TSV, JSON lines, JSON, Parquet) with a label column and a
  column naming one file per row, relative to the table's folder: Kaggle's ``train.csv`` with
  ``image_id,label`` beside an ``images/`` folder (ids with or without their extension), or a
  ``file`` / ``path`` / ``image`` / ``audio`` column of relative paths. The column is found by its
  name (``PATH_COLUMNS``) or by values that name files (``path_column`` picks it explicitly). An
  optional split column works as for text tables.
* **Metadata folder** -- the Hugging Face ``imagefolder`` / ``audiofolder`` layout: a
  ``metadata.csv`` (or ``metadata.jsonl``, ``metadata.parquet``) with a ``file_name`` column and a
  label column, at the root or in each of ``train/ validation/ test/`` (``validation``, ``valid``
  and ``dev`` mean val). A root metadata file takes the split from its split column, else from a
  ``file_name`` starting with a split folder (``train/0001.png``).

A name is found as the path itself (relative to the table's folder, or absolute), else as the
tail of exactly one image or audio file's path under that folder, with or without its extension
(``abc`` finds ``train_images/abc.jpg``); ``\\`` counts as ``/``. The modality is the one most
files have by extension.

Preflight names every problem at once: rows whose name matches no file or several files, empty
names, URLs, files listed twice, files of the other modality, and every file the image or audio
decoder rejects (:func:`transferkit.data.image.image_problem`,
:func:`transferkit.data.audio.audio_problem`); ``skip_bad=True`` leaves them out.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.data.audio import KNOWN_AUDIO, audio_problem
from transferkit.data.base import TaskData
from transferkit.data.checks import ProblemLog, check_classes, check_files
from transferkit.data.image import KNOWN_IMAGE, SPLIT_DIRS, folder_error, image_problem
from transferkit.data.splits import group_by_split, make_splits
from transferkit.data.tables import read_table
from transferkit.data.text import (MISSING_MARKERS, SPLIT_VALUES, _missing_columns, label_names, sort_classes,
                                   text_problem)
from transferkit.errors import DataError

#: Column names that hold file paths or ids, in the order they are preferred.
PATH_COLUMNS = ("file_name", "filename", "file", "path", "filepath", "file_path", "image", "image_path",
                "image_file", "image_name", "image_id", "img", "audio", "audio_path", "audio_file", "audio_name",
                "fname", "id")
#: Every image and audio extension transferkit recognises.
MEDIA_EXTENSIONS = KNOWN_IMAGE | KNOWN_AUDIO
#: Names of the metadata file of a Hugging Face imagefolder / audiofolder.
METADATA_NAMES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
FIX = "fix or remove these files or rows"
_SAMPLE = 20  # rows looked at to find the path column
_IGNORED = {"__MACOSX"}


def media_modality(path: str | os.PathLike) -> str | None:
    """"image" or "audio" by the file's extension, None for anything else."""
    suffix = Path(path).suffix.lower()
    return "image" if suffix in KNOWN_IMAGE else "audio" if suffix in KNOWN_AUDIO else None


def cell_name(value: object) -> str | None:
    """A table cell as a file name or id (``12`` and ``12.0`` as ``"12"``), None when empty."""
    if value is None or value is pd.NA or isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, str):
        name = value.strip()
        return name if name and name not in MISSING_MARKERS else None
    return None


# -- finding the file a cell names ---------------------------------------------------------------


class FileIndex:
    """Finds the file a table cell names under ``base`` (see the module docstring).

    The folder is walked once, on the first name that is not a path to an existing file.
    """

    def __init__(self, base: Path):
        self.base = base
        self._tails: dict[str, list[Path]] | None = None

    def find(self, name: str) -> list[Path]:
        """The files ``name`` may mean: one, several (ambiguous) or none."""
        name = name.replace("\\", "/")
        given = Path(name)
        direct = given if given.is_absolute() else self.base / given
        try:
            if direct.is_file():
                return [direct]
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte, ...
            pass
        if given.is_absolute():
            return []
        return self.tails().get(posixpath.normpath(name), [])

    def tails(self) -> dict[str, list[Path]]:
        if self._tails is None:
            self._tails = {}
            for f in _media_files(self.base):
                parts = f.relative_to(self.base).parts
                for i in range(len(parts)):
                    tail = "/".join(parts[i:])
                    self._tails.setdefault(tail, []).append(f)
                    self._tails.setdefault(tail[: len(tail) - len(f.suffix)], []).append(f)
        return self._tails

    def reason(self, name: str, found: list[Path]) -> str | None:
        """Why ``name`` cannot be used (no file, several files), or None when it names one file."""
        if len(found) == 1:
            return None
        if name.lower().startswith(("http://", "https://", "s3://", "gs://")):
            return (f"{name!r} is a URL; transferkit reads local files only. Download the files and put their "
                    "paths in the table")
        if not found:
            if Path(name).suffix.lower() in MEDIA_EXTENSIONS or "/" in name.replace("\\", "/"):
                return f"file {name!r} not found (looked in {str(self.base)!r})"
            return f"no image or audio file named {name!r} (with any extension) under {str(self.base)!r}"
        shown = ", ".join(f.relative_to(self.base).as_posix() for f in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        return f"{name!r} matches {len(found)} files ({shown}{more}); name one by its path"


def _media_files(base: Path) -> list[Path]:
    """Every image or audio file under ``base`` (links followed once, hidden names skipped), sorted."""
    found, seen = [], set()

    def unreadable(error: OSError) -> None:
        raise folder_error(error.filename, error)

    for folder, dirs, files in os.walk(base, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link loop, or a folder reached twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _IGNORED)
        found += [Path(folder) / f for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in MEDIA_EXTENSIONS]
    return sorted(found)


def find_path_column(columns: list[str], rows: list[dict], index: FileIndex, exclude: set[str]) -> str | None:
    """The column of file names among ``columns``, judged on a few ``rows`` (None: no such column).

    A column counts when its name is in ``PATH_COLUMNS``, or its values have an image or audio
    extension or a ``/``; the first of those (names in ``PATH_COLUMNS`` order first) whose values
    name one file at least half the time wins. Failing that, a column named like a path (not
    just ``id``) is taken, so the rows are reported as naming no file.
    """
    by_lower = {c.lower(): c for c in columns if c not in exclude}
    named = [by_lower[n] for n in PATH_COLUMNS if n in by_lower]

    def names(column: str) -> list[str]:
        return [n for n in (cell_name(r.get(column)) for r in rows) if n]

    def looks_like_paths(column: str) -> bool:
        return any(Path(n).suffix.lower() in MEDIA_EXTENSIONS or "/" in n.replace("\\", "/") for n in names(column))

    candidates = named + [c for c in columns if c not in exclude and c not in named and looks_like_paths(c)]
    for column in candidates:
        values = names(column)
        found = sum(bool(index.find(n)) for n in values)
        if found and 2 * found >= len(values):
            return column
    strong = [c for c in named if c.lower() != "id"]
    return strong[0] if strong else None


def head_rows(path: Path, n: int = _SAMPLE) -> tuple[list[str], list[dict]]:
    """The columns and first ``n`` records of a table file (a quick look, no preflight)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        columns = list(table.schema_arrow.names)
        batch = next(table.iter_batches(batch_size=n), None)
        return columns, [] if batch is None else batch.to_pylist()
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        head = f.read(1 << 20)
    if suffix in (".jsonl", ".json"):
        if head.lstrip().startswith("["):
            data = json.loads(path.read_text(encoding="utf-8-sig", errors="replace"))
            records = [r for r in data[:n] if isinstance(r, dict)] if isinstance(data, list) else []
        else:
            records = []
            for line in head.split("\n")[: n + 1]:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
        return list(dict.fromkeys(k for r in records for k in r)), records[:n]
    reader = csv.DictReader(io.StringIO(head, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
    records = [r for _, r in zip(range(n), reader)]
    return list(reader.fieldnames or []), records


def path_table_modality(path: Path, *, label_column: str = "label", split_column: str = "split",
                        path_column: str | None = None) -> str | None:
    """"image" or "audio" when the table at ``path`` names files in a column, else None."""
    try:
        columns, rows = head_rows(path)
    except Exception:  # an unreadable table is the text loader's to report
        return None
    columns = [str(c) for c in columns]
    index = FileIndex(path.parent)
    if path_column is not None and path_column not in columns:
        return "image"  # named outright: the loader reports the missing column
    column = path_column or find_path_column(columns, rows, index, {*_label_columns(label_column), split_column})
    if column is None:
        return None
    files = [f for n in (cell_name(r.get(column)) for r in rows) if n for f in index.find(n)[:1]]
    return _majority(files, default="audio" if "audio" in column.lower() else "image")


def _majority(files: list[Path], default: str) -> str:
    kinds = Counter(m for m in map(media_modality, files) if m)
    return kinds.most_common(1)[0][0] if kinds else default


def _label_columns(label_column: str | list[str]) -> list[str]:
    if isinstance(label_column, str):
        return [c.strip() for c in label_column.split(",") if c.strip()]
    return list(label_column)


# -- the rows every file layout ends in -------------------------------------------------------------


@dataclass
class Row:
    """One usable-looking example: where it is (for messages), its split, labels and file or text."""

    where: str
    split: str
    labels: list[str]
    example: Path | str


def finish_rows(rows: list[Row], modality: str, log: ProblemLog, *, origin: str, splits: set[str],
                tasks: list[str], val_fraction: float, test_fraction: float, seed: int,
                class_order: dict[str, list[str]] | None = None, skipped: list[tuple[str, str]] | None = None,
                fix: str = FIX, unit: str | None = None) -> TaskData:
    """Decodes every example once (the modality's preflight check), checks the classes, makes the splits.

    Args:
        rows: The examples; files are checked with the image or audio decoder, texts with
            :func:`transferkit.data.text.text_problem`.
        modality: "image", "audio" or "text".
        log: Holds the problems found so far; :meth:`ProblemLog.finish` is called here.
        origin: The data's path, for ``TaskData.origin``.
        splits: The split names given (``{"train"}`` when transferkit makes val and test).
        tasks: The label column of each task, the main one first (one entry for one task).
        val_fraction, test_fraction, seed: For the splits transferkit makes.
        class_order: Class names per task in a given order (a ClassLabel's); absent classes are
            dropped. Default: :func:`transferkit.data.text.sort_classes`.
        skipped: Entries added to ``TaskData.skipped`` as they are (splits left out, ...).
        fix: What to do about bad items, for the message.
        unit: What an example is called in messages (default "row" for texts, "file" otherwise).
    """
    if modality == "text":
        reasons = [text_problem(r.example) for r in rows]
    else:
        problem: Callable[[Path], str | None] = image_problem if modality == "image" else audio_problem
        reasons = check_files([Path(r.example) for r in rows], problem)
    usable = []
    for r, reason in zip(rows, reasons):
        if reason:
            log.bad(r.where, reason)
        else:
            usable.append(r)
    order = class_order or {}
    classes_of = []
    for k, task in enumerate(tasks):
        present = {r.labels[k] for r in usable}
        classes_of.append([c for c in order[task] if c in present] if task in order else sort_classes(present))
    classes = classes_of[0]
    counts = {s: Counter(r.labels[0] for r in usable if r.split == s) for s in splits}
    unit = unit or ("row" if modality == "text" else "file")
    if splits != {"train"} and not counts["train"]:
        log.structural("", "no usable examples in the train split")
    else:
        check_classes(log, classes, counts, test_made="test" not in splits, unit=unit)
    bad = log.finish(fix)

    given = group_by_split([(r.split, r.labels[0], i) for i, r in enumerate(usable)], classes, splits)
    made = make_splits(given, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    extra = {task: classes_of[k] for k, task in enumerate(tasks) if k}
    for split in made.values():  # examples are row positions until here
        positions = split.examples
        split.extra_labels = {task: np.array([classes_of[k].index(usable[i].labels[k]) for i in positions],
                                             dtype=np.int64) for k, task in enumerate(tasks) if k}
        split.examples = [usable[i].example if modality == "text" else Path(usable[i].example).resolve()
                          for i in positions]
    return TaskData(modality, classes, made["train"], made["val"], made["test"], origin=origin,
                    skipped=[*bad, *(skipped or [])], split_given="test" in splits,
                    task_name=tasks[0] if extra else "label", extra_classes=extra)


# -- path tables and metadata folders -----------------------------------------------------------------


@dataclass
class _Table:
    """One table of file names: the frame, rows already reported, its folder and its split if fixed."""

    df: pd.DataFrame
    flagged: set
    path: Path
    shown: str  # prefix of "row N" in messages ("" for a lone path table)
    split: str | None = None  # the split of every row (a metadata file in a split folder)
    split_from_path: bool = False  # a root metadata file: a file_name under train/ is train


def load_path_table(
    path: str | os.PathLike,
    *,
    label_column: str = "label",
    split_column: str = "split",
    path_column: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    modality: str | None = None,
) -> TaskData:
    """Loads a table whose rows name image or audio files (module docstring), after a full preflight.

    Args:
        path: A ``.csv``, ``.tsv``, ``.jsonl``, ``.json`` or ``.parquet`` file.
        label_column: Column holding the labels (``"a,b"``: one task per column).
        split_column: Column holding train/val/test; used when present. A name other than the
            default ``"split"`` must exist.
        path_column: Column holding the file paths or ids (default: found as
            :func:`find_path_column` says).
        val_fraction, test_fraction, seed: For the splits transferkit makes.
        skip_bad: Leave out bad rows and files (listed in ``TaskData.skipped``) instead of raising.
        modality: "image" or "audio"; default: what most files are.

    Returns:
        The task, with resolved ``Path`` examples.

    Raises:
        DataError: The table is unreadable or preflight found problems (all listed at once).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"`path` must be a table file; got {str(path)!r}, which does not exist.")
    log = ProblemLog(str(path), skip_bad=skip_bad)
    df, flagged = read_table(path, log)
    return _load_tables([_Table(df, flagged, path, "")], log, origin=str(path.resolve()), label_column=label_column,
                        split_column=split_column, path_column=path_column, val_fraction=val_fraction,
                        test_fraction=test_fraction, seed=seed, modality=modality)


def metadata_files(root: Path) -> dict[str | None, list[Path]]:
    """The metadata files of an imagefolder: ``{None: [root's]}`` and ``{split: [split folder's]}``."""
    found: dict[str | None, list[Path]] = {}
    if not root.is_dir():
        return found
    for folder, split in [(root, None), *((root / d, SPLIT_DIRS[d]) for d in sorted(SPLIT_DIRS))]:
        files = [folder / n for n in METADATA_NAMES if (folder / n).is_file()]
        if files:
            found.setdefault(split, []).extend(files)
    return found


def is_metadata_folder(root: Path, path_column: str | None = None) -> bool:
    """True when ``root`` has a metadata file with a ``file_name`` or ``path_column`` column.

    A ``metadata.csv`` without that column is someone's notes beside class folders, not this layout.
    """
    for files in metadata_files(root).values():
        try:
            columns = [str(c) for c in head_rows(files[0], 1)[0]]
        except Exception:  # unreadable: the metadata loader names it
            return True
        if "file_name" in columns or path_column in columns:
            return True
    return False


def metadata_modality(root: Path) -> str:
    """The modality of a metadata folder: what most of its first files are by extension."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _IGNORED)
        files += [Path(folder) / n for n in names if media_modality(n)]
        if len(files) >= _SAMPLE:
            break
    return _majority(files, default="image")


def load_metadata_folder(
    path: str | os.PathLike,
    *,
    label_column: str = "label",
    split_column: str = "split",
    path_column: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    modality: str | None = None,
) -> TaskData:
    """Loads a Hugging Face imagefolder / audiofolder with metadata files (module docstring).

    Args: as :func:`load_path_table`; ``path_column`` defaults to ``file_name``.

    Raises:
        DataError: A metadata file is unreadable or preflight found problems (all listed at once).
    """
    root = Path(path)
    log = ProblemLog(str(root), skip_bad=skip_bad)
    tables = []
    for split, files in metadata_files(root).items():
        if len(files) > 1:
            log.structural(files[1].relative_to(root).as_posix(),
                           f"a second metadata file next to {files[0].name}; keep one")
        df, flagged = read_table(files[0], log)
        shown = files[0].relative_to(root).as_posix() + " "
        tables.append(_Table(df, flagged, files[0], shown, split, split_from_path=split is None))
    if not tables:
        raise DataError(f"`path` {str(path)!r} holds no {' or '.join(METADATA_NAMES)}.")
    return _load_tables(tables, log, origin=str(root.resolve()), label_column=label_column, split_column=split_column,
                        path_column=path_column or "file_name", val_fraction=val_fraction,
                        test_fraction=test_fraction, seed=seed, modality=modality)


def _load_tables(tables: list[_Table], log: ProblemLog, *, origin: str, label_column: str | list[str],
                 split_column: str, path_column: str | None, val_fraction: float, test_fraction: float, seed: int,
                 modality: str | None) -> TaskData:
    labels = _label_columns(label_column)
    columns_of = {}
    for t in tables:
        if len(t.df.columns) == 0 and not any(not p.skippable for p in log.problems):
            log.structural(t.shown.strip(), "no usable rows (every row has a problem)" if log.problems
                           else "the table is empty")
    log.stop_if_structural(FIX)
    for t in tables:
        columns = [str(c) for c in t.df.columns]
        wanted = [("label_column", c) for c in labels]
        if split_column != "split" and t.split is None:
            wanted.append(("split_column", split_column))
        if path_column is not None:
            wanted.append(("path_column", path_column))
        _missing_columns(t.df, wanted, t.path, log)
        column = path_column
        if column is None:
            head = [{c: t.df[c][r] for c in t.df.columns} for r in t.df.index[:_SAMPLE]]
            column = find_path_column(columns, head, FileIndex(t.path.parent), {*labels, split_column})
            if column is None:
                log.structural("", f"no column of file paths or ids found in {t.path.name}; columns present: "
                                   f"{columns}. Pass --path-column (path_column=...) to name it")
        columns_of[t.path] = column
    log.stop_if_structural(FIX)

    pending = []  # (table, row, where, file name, raw labels, raw split)
    for t in tables:
        has_split = t.split is None and split_column in t.df.columns
        for row in t.df.index:
            if row in t.flagged:
                continue
            split = t.df[split_column][row] if has_split else None
            pending.append((t, row, f"{t.shown}row {row}", cell_name(t.df[columns_of[t.path]][row]),
                            [t.df[c][row] for c in labels], split, has_split))
    names = [label_names(pd.Series([p[4][k] for p in pending], dtype=object)).tolist() for k in range(len(labels))]

    rows, seen, indexes = [], {}, {}
    for i, (t, row, where, name, _, split, has_split) in enumerate(pending):
        index = indexes.setdefault(t.path.parent, FileIndex(t.path.parent))
        found = index.find(name) if name else []
        part = _split_of(t, name, split, has_split)
        reason = ("missing file name" if not name else index.reason(name, found)) \
            or next((f"missing label in column {c!r}" if len(labels) > 1 else "missing label"
                     for k, c in enumerate(labels) if names[k][i] is None), None)
        if not reason and part is None:
            reason = f"unknown split value {split!r} (expected train, val/validation/valid/dev or test)"
        if not reason:
            key = found[0].resolve()
            if key in seen:
                reason = f"{_shown(found[0], t.path.parent)} is listed again (first in {seen[key]})"
            seen.setdefault(key, where)
        if reason:
            log.bad(where, reason)
            continue
        rows.append(Row(f"{where} ({_shown(found[0], t.path.parent)})", part, [n[i] for n in names], found[0]))

    if modality is None:
        modality = _majority([Path(r.example) for r in rows], default="image")
    kept = []
    for r in rows:
        kind = media_modality(r.example)
        if kind == modality:
            kept.append(r)
        else:
            suffix = Path(r.example).suffix or "no extension"
            what = f"an {kind} file" if kind else f"not an image or audio file ({suffix})"
            log.bad(r.where, f"{what}, but this table's files are {modality}; remove the row or the file")
    splits = {"train"} | {r.split for r in kept}
    return finish_rows(kept, modality, log, origin=origin, splits=splits, tasks=labels, val_fraction=val_fraction,
                       test_fraction=test_fraction, seed=seed)


def _shown(file: Path, base: Path) -> str:
    return file.relative_to(base).as_posix() if file.is_relative_to(base) else str(file)


def _split_of(t: _Table, name: str | None, value: object, has_split: bool) -> str | None:
    """The split of one row: the table's own, its split column's, its file's split folder, or train."""
    if t.split is not None:
        return t.split
    if has_split:
        return SPLIT_VALUES.get(value.strip().lower()) if isinstance(value, str) else None
    if t.split_from_path and name:
        first = name.replace("\\", "/").split("/", 1)[0]
        if "/" in name.replace("\\", "/") and first in SPLIT_DIRS:
            return SPLIT_DIRS[first]
    return "train"

