"""Turning ``transferkit predict`` arguments into examples, and predictions into a CSV.

Inputs get the preflight ``fit`` gives its data (:mod:`transferkit.data.checks`), with the same
readers and checks: every bad input is listed in one ``PreflightError``, or left out with
``skip_bad=True`` and returned with its reason.

* Image, audio and sequence runs take files and folders (searched recursively, as the data
  loaders scan class folders); every file is decoded once before the model sees any.
* Text runs take table files (read by :func:`transferkit.data.tables.read_table`, the run's
  ``text_column``) and literal texts. An existing folder or non-table file, or a name that looks
  like a table path (``.csv``, ``.tsv``, ``.jsonl``, ``.json``, ``.parquet``, ``.txt``) but does
  not exist, is a problem, never a text; so are empty cells and missing-value markers.

``predictions.csv`` is written atomically (a temporary file beside it, then one rename), so a
full disk leaves the old file or none, never a truncated one. Text cells that a spreadsheet would
run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return; OWASP's
CSV-injection list) get a leading ``'``; the probability columns are numbers and are not touched.
"""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import numpy as np

from transferkit.data.checks import ProblemLog, check_files
from transferkit.errors import DataError, OutputError

#: How preflight messages name what ``predict`` checked.
PREDICT_INPUTS = "the inputs of `transferkit predict`"
#: First characters that make a spreadsheet read a cell as a formula (OWASP CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# -- inputs ------------------------------------------------------------------------------------------


def expand_inputs(inputs: list[str], run, *, skip_bad: bool = False) -> tuple[list, list[tuple[str, str]]]:
    """The examples to predict, after a preflight of every input.

    Args:
        inputs: What the user passed: files and folders, or (text runs) tables and texts.
        run: The loaded ``Run`` (its modality and, for text runs, its ``text_column``).
        skip_bad: Leave bad inputs out (returned) instead of raising.

    Returns:
        ``(examples, skipped)``: image/audio/series ``Path`` objects or texts, in input order, and
        the ``(input, reason)`` pairs left out.

    Raises:
        PreflightError: Bad inputs, every one listed (without ``skip_bad``).
        DataError: No example is left to predict.
    """
    log = ProblemLog(PREDICT_INPUTS, skip_bad=skip_bad, described=PREDICT_INPUTS)
    if run.modality == "text":
        examples = _texts(inputs, run.config["fit"]["text_column"], log)
        skipped = log.finish("fix these inputs and rows")
    else:
        examples = _files(inputs, run.modality, log)
        skipped = log.finish("fix or remove these files")
    if not examples:
        if skipped:
            raise DataError(f"No examples left to predict: every input was skipped ({len(skipped)} bad, e.g. "
                            f"{skipped[0][0]!r}: {skipped[0][1]}); run without --skip-bad to list them all.")
        raise DataError(f"No examples found in {inputs!r}; pass {run.modality} files or folders holding them.")
    return examples, skipped


def _kind(path: Path) -> str | None:
    """ "dir", "file", or None when nothing is there (or the name cannot be a path at all)."""
    try:
        return "dir" if path.is_dir() else "file" if path.is_file() else None
    except (OSError, ValueError):  # a name too long for a path, a NUL byte in it, ...
        return None


def _missing(path: Path) -> str:
    try:
        dangling = os.path.lexists(path)
    except (OSError, ValueError):
        dangling = False
    return "a link to nothing (broken link or symlink loop)" if dangling else "no such file or folder"


def _file_kind(modality: str):
    """``(extensions scanned in folders, problem(path) -> reason or None)`` for a file modality."""
    if modality == "audio":
        from transferkit.data.audio import KNOWN_AUDIO, audio_problem

        return KNOWN_AUDIO, audio_problem
    if modality == "sequence":
        from transferkit.data.sequence import SEQUENCE_EXTENSIONS, series_problem

        return SEQUENCE_EXTENSIONS, series_problem
    from transferkit.data.image import KNOWN_IMAGE, image_problem

    return KNOWN_IMAGE, image_problem


def _files(inputs: list[str], modality: str, log: ProblemLog) -> list[Path]:
    from transferkit.data.image import find_files

    extensions, problem = _file_kind(modality)
    files: list[tuple[Path, str]] = []  # (file, how it is named in problems)
    for item in inputs:
        path = Path(item)
        kind = _kind(path)
        if kind == "dir":
            found = find_files(path, log, extensions, shown=item)
            if not found:
                log.bad(item, f"folder holds no {modality} files ({', '.join(sorted(extensions))})")
            files += [(f, f"{item.rstrip('/')}/{f.relative_to(path).as_posix()}") for f in found]
        elif kind == "file":
            files.append((path, item))
        else:
            log.bad(item, _missing(path))
    reasons = check_files([f for f, _ in files], problem)
    for (_, shown), reason in zip(files, reasons):
        if reason:
            log.bad(shown, reason)
    return [f for (f, _), reason in zip(files, reasons) if reason is None]


def _texts(inputs: list[str], column: str, log: ProblemLog) -> list[str]:
    from transferkit.data.tables import TABLE_EXTENSIONS

    tables = ", ".join(sorted(TABLE_EXTENSIONS))
    texts: list[str] = []
    for i, item in enumerate(inputs, start=1):
        path = Path(item)
        suffix = path.suffix.lower()
        kind = _kind(path)
        if kind == "dir":
            log.bad(item, f"a folder; a text run takes texts or table files ({tables})")
        elif kind == "file" and suffix in TABLE_EXTENSIONS:
            texts += _table_texts(path, item, column, log)
        elif kind == "file":
            log.bad(item, f"a file but not a table ({tables}); put its texts in a table with a {column!r} "
                          "column, or pass the text itself")
        elif suffix in TABLE_EXTENSIONS | {".txt"}:
            log.bad(item, f"looks like a path to a table ({suffix}) but no such file exists; check the name, "
                          f"or put a text that ends like a file name in a table's {column!r} column")
        elif not item.strip():
            log.bad(f"input {i}", "empty text")
        else:
            texts.append(item)
    return texts


def _table_texts(path: Path, item: str, column: str, log: ProblemLog) -> list[str]:
    """The texts of one table; its problems go to ``log``, named ``<item> row N`` (or ``<item>``)."""
    from transferkit.data.tables import read_table
    from transferkit.data.text import text_problem

    table_log = ProblemLog(item)
    try:
        df, flagged = read_table(path, table_log)
    except DataError as e:
        log.bad(item, str(e))
        return []
    for p in table_log.problems:  # in predict, one table is one input: its problems can be skipped
        log.bad(f"{item} {p.where}" if p.where else item, p.reason)
    if any(not p.skippable for p in table_log.problems):
        return []
    if column not in df.columns:
        if not table_log.problems:
            log.bad(item, f"no text column {column!r} (the run's `text_column`); columns present: "
                          f"{[str(c) for c in df.columns]}. Rename the column to {column!r}")
        return []
    if not len(df) and not table_log.problems:
        log.bad(item, "the table has no rows")
    texts = []
    for row, value in df[column].items():
        if row in flagged:  # already reported while reading
            continue
        reason = text_problem(value)
        if reason:
            log.bad(f"{item} row {row}", reason)
        else:
            texts.append(str(value))
    return texts


# -- predictions.csv ---------------------------------------------------------------------------------


def escape_cell(value: str) -> str:
    """``value`` with a leading ``'`` when a spreadsheet would read it as a formula (OWASP)."""
    return "'" + value if value.startswith(FORMULA_START) else value


def check_output(path: Path) -> None:
    """Raises ``OutputError`` when ``path`` is a folder or lies under a file (before any work is done)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"`--output` {str(path)!r} is a folder; name a CSV file to write, "
                          f"e.g. {str(path / 'predictions.csv')!r}.")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"`--output` {str(path)!r} cannot be written: {str(parent)!r} is a file, not a folder. "
                          "Choose another `--output`.")


_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another `--output`",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another `--output`",
    errno.EACCES: "choose a folder you may write to as `--output`",
    errno.EPERM: "choose a folder you may write to as `--output`",
    errno.EROFS: "the file system is read-only; choose another `--output`",
}


def write_predictions(path: Path, examples: list, probabilities: dict[str, np.ndarray],
                      classes: dict[str, list[str]]) -> None:
    """One row per example: the input, then per task the predicted label and every class probability.

    With one task the columns are ``prediction, p_<class>...``; with several, each is prefixed by
    the task name (``topic_prediction, topic_p_<class>...``). Text cells are escaped with
    :func:`escape_cell`; the file is replaced atomically.

    Raises:
        OutputError: ``path`` is a folder, or the file cannot be written (full disk, no
            permission); an earlier file at ``path`` is then unchanged.
    """
    from transferkit._io import atomic_write

    path = Path(path)
    check_output(path)
    prefix = {t: ("" if len(classes) == 1 else f"{t}_") for t in classes}
    header = ["input"]
    for t, names in classes.items():
        header += [f"{prefix[t]}prediction", *[f"{prefix[t]}p_{c}" for c in names]]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8", errors="replace") as f:
            writer = csv.writer(f)
            writer.writerow([escape_cell(h) for h in header])
            for i, ex in enumerate(examples):
                row = [escape_cell(str(ex))]
                for t, names in classes.items():
                    p = probabilities[t][i]
                    row += [escape_cell(names[int(p.argmax())]), *[f"{v:.6f}" for v in p]]
                writer.writerow(row)

    try:
        atomic_write(path, write)
    except OSError as e:
        hint = _WRITE_HINTS.get(e.errno, "check the path and choose another `--output` if needed")
        raise OutputError(f"Cannot write `--output` {str(path)!r}: {e.strerror or e}; {hint}. "
                          "Nothing was written; a file already there is unchanged.") from None
