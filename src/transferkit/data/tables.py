"""Reading tables (CSV, TSV, JSON lines, JSON array, Parquet) with row-level problem reports.

transferkit decodes the bytes itself, not pandas, so a file that is not UTF-8 is reported with
the row, line and byte offset of every bad row instead of one bare ``UnicodeDecodeError``. Bad
bytes are kept as surrogates (``errors="surrogateescape"``) while parsing, so the rows around
them still parse; every frame is ``dtype=object`` so those strings survive pandas.

Rows are numbered from 1, header excluded: ``row N`` is the N-th record; for JSON lines it is
the line number.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.data.checks import ProblemLog
from transferkit.errors import DataError

TABLE_EXTENSIONS = frozenset({".csv", ".tsv", ".jsonl", ".json", ".parquet"})
_SURROGATE = re.compile("[\udc80-\udcff]")
BadByte = tuple[int, int, int]  # (byte offset, line, byte value)


def decode_utf8(raw: bytes) -> tuple[str, list[BadByte]]:
    """Decodes UTF-8 (a BOM is allowed); bad bytes become surrogates.

    Returns:
        The text and ``(byte offset, line, byte)`` for every byte that is not valid UTF-8.
    """
    start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    text = raw[start:].decode("utf-8", errors="surrogateescape")
    bad, offset, line, prev = [], start, 1, 0
    for m in _SURROGATE.finditer(text):
        chunk = text[prev : m.start()]
        offset += len(chunk.encode("utf-8", errors="surrogateescape"))
        line += chunk.count("\n")
        bad.append((offset, line, ord(m.group()) - 0xDC00))
        offset, prev = offset + 1, m.end()
    return text, bad


def encoding_reason(first: BadByte | None) -> str:
    """The problem text for a row holding non-UTF-8 bytes, with where the first one is."""
    if first is None:
        return "non-UTF-8 bytes; save the file as UTF-8"
    off, line, byte = first
    return f"non-UTF-8 byte 0x{byte:02x} at byte offset {off} (line {line}); save the file as UTF-8"


def _empty() -> pd.DataFrame:
    return pd.DataFrame(dtype=object)


def _read_csv(text: str, bad: list[BadByte], sep: str, log: ProblemLog) -> tuple[pd.DataFrame, set]:
    first_bad: dict[int, BadByte] = {}
    for b in bad:
        first_bad.setdefault(b[1], b)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    records, rows, flagged = [], [], set()
    try:
        header = next(reader, None)
        if header is None:
            log.structural("", "the table is empty")
            return _empty(), flagged
        if enc := next((first_bad[n] for n in range(1, reader.line_num + 1) if n in first_bad), None):
            log.structural("header", encoding_reason(enc))
            return _empty(), flagged
        if len(set(header)) < len(header):
            log.structural("header", f"duplicate column names in {header}")
            return _empty(), flagged
        prev, n = reader.line_num, 0
        for fields in reader:
            lines, prev = range(prev + 1, reader.line_num + 1), reader.line_num
            if not fields:
                continue  # blank line
            n += 1
            if enc := next((first_bad[k] for k in lines if k in first_bad), None):
                log.bad(f"row {n}", encoding_reason(enc))
                flagged.add(n)
            elif len(fields) > len(header):
                log.bad(f"row {n}", f"has {len(fields)} fields but the header has {len(header)} "
                                    "(an unquoted separator in the text?)")
            else:
                records.append(fields + [""] * (len(header) - len(fields)))
                rows.append(n)
    except csv.Error as e:
        log.structural("", f"cannot parse the table (line {reader.line_num}: {e})")
        return _empty(), flagged
    return pd.DataFrame(records, columns=header, index=rows, dtype=object), flagged


def _read_json_lines(text: str, bad: list[BadByte], log: ProblemLog) -> tuple[pd.DataFrame, set]:
    first_bad: dict[int, BadByte] = {}
    for b in bad:
        first_bad.setdefault(b[1], b)
    records, rows, flagged = [], [], set()
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if n in first_bad:
            log.bad(f"row {n}", encoding_reason(first_bad[n]))
            flagged.add(n)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            log.bad(f"row {n}", f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(record, dict):
            log.bad(f"row {n}", f"not a JSON object (got {type(record).__name__})")
            continue
        records.append(record)
        rows.append(n)
    return (pd.DataFrame(records, index=rows, dtype=object) if records else _empty()), flagged


def _surrogates(value: object) -> int:
    return len(_SURROGATE.findall(value)) if isinstance(value, str) else 0


def _read_json_array(text: str, bad: list[BadByte], log: ProblemLog) -> tuple[pd.DataFrame, set]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        log.structural("", f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})")
        return _empty(), set()
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        log.structural("", "a .json file must hold JSON lines or an array of objects")
        return _empty(), set()
    if any(_surrogates(k) for r in data for k in r):
        log.structural("", "non-UTF-8 bytes in a key; save the file as UTF-8")
        return _empty(), set()
    flagged, pos = set(), 0  # bad bytes meet the values in file order
    for n, record in enumerate(data, start=1):
        if k := sum(_surrogates(v) for v in record.values()):
            log.bad(f"row {n}", encoding_reason(bad[pos] if pos < len(bad) else None))
            flagged.add(n)
            pos += k
    df = pd.DataFrame(data, index=np.arange(1, len(data) + 1), dtype=object)
    return df, flagged


def read_table(path: Path, log: ProblemLog) -> tuple[pd.DataFrame, set]:
    """Reads a table file into an object-dtype frame whose index is the row number.

    Args:
        path: A ``.csv``, ``.tsv``, ``.jsonl``, ``.json`` or ``.parquet`` file.
        log: Where row problems (bad bytes, bad JSON lines, extra fields) and structural
            problems (unparseable file, bad header) go.

    Returns:
        The frame, and the row numbers already reported as bad that the frame still holds.

    Raises:
        DataError: The file cannot be read (permissions, a damaged Parquet file).
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            df = pd.read_parquet(path).astype(object)
        except Exception as e:  # pyarrow raises many types for a damaged file
            raise DataError(f"Cannot read Parquet file {str(path)!r}: {e}") from None
        df.index = np.arange(1, len(df) + 1)
        return df, set()
    try:
        raw = path.read_bytes()
    except OSError as e:
        why = "permission denied" if isinstance(e, PermissionError) else (e.strerror or str(e)).lower()
        raise DataError(f"Cannot read table {str(path)!r}: {why}. Check the file and its permissions.") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # Excel's "Unicode Text" and friends
        log.structural("", "the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8 "
                           "(in Excel: CSV UTF-8)")
        return _empty(), set()
    text, bad = decode_utf8(raw)
    if suffix == ".json" and text.lstrip().startswith("["):
        return _read_json_array(text, bad, log)
    if suffix in (".json", ".jsonl"):
        return _read_json_lines(text, bad, log)
    return _read_csv(text, bad, "\t" if suffix == ".tsv" else ",", log)
