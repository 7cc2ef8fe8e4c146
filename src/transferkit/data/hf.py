"""Hugging Face ``datasets`` directories, read with pyarrow alone: nothing in them is executed or unpickled.

Layouts:

* ``save_to_disk`` output: a ``Dataset`` (``state.json``, ``dataset_info.json`` and the
  ``data-*.arrow`` shards it lists) or a ``DatasetDict`` (``dataset_dict.json`` naming split
  folders that each hold a ``Dataset``); shards are Arrow IPC streams.
* Parquet: one ``.parquet`` file, or a folder of them (``data/train-00000-of-00001.parquet``,
  ``train/0000.parquet``): the split is the file name's first word or a folder's name.

Split names ``train``, ``validation`` (also ``valid``, ``dev``, ``val``) and ``test`` are kept;
other splits (``unsupervised``), and splits whose every label is missing (``-1``), are left out
and listed in ``TaskData.skipped``. A single ``Dataset`` or Parquet file honours a split column.

Columns: the example column is the one whose feature is ``Image`` or ``Audio`` (from
``dataset_info.json``, else the ``huggingface`` schema metadata), else a struct column with
``bytes`` (and ``path``) fields, else the text column; ``path_column`` names it outright. The
label column is ``label_column``; when the default ``label`` is absent and exactly one column is a
``ClassLabel``, that one. A ``ClassLabel``'s names are the classes, in its order.

Images and audio stored as bytes are written once, unchanged, to a content-addressed folder
(``$TRANSFERKIT_DATA_CACHE``, else ``~/.cache/transferkit/datasets``) and from then on are files
like any other: the image and audio preflight decodes them with Pillow and soundfile, and runs
that reuse the data see the same paths. A value with no bytes uses its ``path`` (absolute, or
relative to its shard's folder or the dataset root). Problems are named by shard and row
(``train/data-00000-of-00001.arrow row 3 (cat.png)``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from transferkit.data.base import TaskData
from transferkit.data.checks import ProblemLog
from transferkit.data.paths import MEDIA_EXTENSIONS, Row, _label_columns, finish_rows
from transferkit.data.text import SPLIT_VALUES, label_names
from transferkit.errors import DataError

CACHE_ENV = "TRANSFERKIT_DATA_CACHE"
FIX = "fix or remove these examples"
_SPLIT_WORD = re.compile(r"^(train|validation|valid|val|dev|test)(?=$|[-_.])", re.IGNORECASE)
_IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp",
                  "TIFF": ".tif"}
_AUDIO_FORMATS = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3", "AIFF": ".aiff"}
_MAX_JSON = 64 * 2**20


def data_cache_dir() -> Path:
    """``$TRANSFERKIT_DATA_CACHE``, else ``~/.cache/transferkit/datasets``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transferkit" / "datasets"


@dataclass
class _Shard:
    path: Path
    shown: str  # relative to the dataset root
    split: str | None  # the split's name as the dataset has it; None: not given
    kind: str  # "arrow" or "parquet"


# -- finding the shards ---------------------------------------------------------------------------------


def is_saved_dataset(root: Path) -> bool:
    """True for a ``save_to_disk`` folder (a ``Dataset`` or a ``DatasetDict``)."""
    return root.is_dir() and ((root / "dataset_dict.json").is_file() or (root / "state.json").is_file())


def parquet_shards(root: Path) -> list[Path]:
    """The ``.parquet`` files of a folder (3 levels deep at most, hidden names skipped), or the file itself."""
    if root.is_file():
        return [root] if root.suffix.lower() == ".parquet" else []
    found = []
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < 3 else []
        found += [Path(folder) / f for f in sorted(files) if f.lower().endswith(".parquet") and not f.startswith(".")]
    return found


def _json(path: Path, log: ProblemLog, root: Path) -> dict:
    shown = path.relative_to(root).as_posix() if path != root else path.name
    try:
        if path.stat().st_size > _MAX_JSON:
            raise ValueError(f"larger than {_MAX_JSON // 2**20} MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.structural(shown, f"cannot read it ({type(e).__name__}: {e}); re-save the dataset with save_to_disk")
        return {}
    if not isinstance(data, dict):
        log.structural(shown, f"expected a JSON object, got {type(data).__name__}")
        return {}
    return data


def _saved_shards(root: Path, log: ProblemLog) -> tuple[list[_Shard], dict]:
    """The shards of a ``save_to_disk`` folder and the features of its first split."""
    if (root / "dataset_dict.json").is_file():
        names = _json(root / "dataset_dict.json", log, root).get("splits", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            log.structural("dataset_dict.json", f"`splits` must be a list of names; got {names!r}")
            names = []
        parts = [(n, root / n) for n in names]
    else:
        parts = [(None, root)]
    shards, features = [], {}
    for split, folder in parts:
        if split is not None and (not _plain_name(split) or not folder.is_dir()):
            log.structural(f"{split}/", "a split named in dataset_dict.json with no folder; re-save the dataset")
            continue
        where = f"{split}/state.json" if split else "state.json"
        if not (folder / "state.json").is_file():
            log.structural(where, "missing; re-save the dataset")
            continue
        files = _json(folder / "state.json", log, root).get("_data_files", [])
        if not isinstance(files, list):
            log.structural(where, f"`_data_files` must be a list; got {type(files).__name__}")
            continue
        info = folder / "dataset_info.json"
        if not features and info.is_file():
            features = _json(info, log, root).get("features") or {}
        for entry in files:
            name = entry.get("filename") if isinstance(entry, dict) else None
            shown = f"{split}/{name}" if split else str(name)
            if not isinstance(name, str) or not _plain_name(name):
                log.structural(shown, "a data file named outside the dataset folder in state.json; refused")
            elif not (folder / name).is_file():
                log.structural(shown, "listed in state.json but missing; re-save the dataset")
            else:
                shards.append(_Shard(folder / name, shown, split, "arrow"))
    if not shards and not any(not p.skippable for p in log.problems):
        log.structural("state.json", "lists no data files; re-save the dataset")
    return shards, features if isinstance(features, dict) else {}


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _parquet_split(path: Path, root: Path) -> str | None:
    if path == root:
        return None
    for part in reversed(path.relative_to(root).parts[:-1]):
        if part.lower() in SPLIT_VALUES:
            return part.lower()
    m = _SPLIT_WORD.match(path.name)
    return m.group(1).lower() if m else None


def _shards(root: Path, log: ProblemLog) -> tuple[list[_Shard], dict]:
    if is_saved_dataset(root):
        return _saved_shards(root, log)
    files = parquet_shards(root)
    shards = [_Shard(p, p.relative_to(root).as_posix() if p != root else p.name, _parquet_split(p, root), "parquet")
              for p in files]
    if any(s.split for s in shards):
        for s in shards:
            if s.split is None:
                log.structural(s.shown, "cannot tell its split; start its name with train-, validation- or test-, "
                                        "or move it into a train/, validation/ or test/ folder")
    return shards, {}


# -- reading ----------------------------------------------------------------------------------------------


def _open(shard: _Shard):
    """``(schema, batches)`` of one shard (raises pyarrow's errors for a damaged file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if shard.kind == "parquet":
        f = pq.ParquetFile(shard.path)
        return f.schema_arrow, lambda columns: f.iter_batches(batch_size=64, columns=columns)
    source = pa.memory_map(str(shard.path))
    try:
        reader = pa.ipc.open_stream(source)
        schema = reader.schema

        def batches(columns, reader=reader):
            for b in reader:
                yield b
    except pa.ArrowInvalid:  # the random-access file format
        source.seek(0)
        reader = pa.ipc.open_file(source)
        schema = reader.schema

        def batches(columns, reader=reader):
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
    return schema, batches


def _schema_features(schema) -> dict:
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(raw)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def _kind(feature: object) -> str | None:
    return feature.get("_type") if isinstance(feature, dict) else None


@dataclass
class _Columns:
    example: str
    modality: str
    labels: list[str]
    names: dict[str, list[str]]  # ClassLabel names per label column
    stored: bool  # the examples are an Image or Audio feature, or bytes


def _choose_columns(schema, features: dict, *, text_column: str, label_column: str, split_column: str,
                    path_column: str | None, modality: str | None, shown: str, log: ProblemLog) -> _Columns | None:
    import pyarrow as pa

    columns = list(schema.names)
    kinds = {c: _kind(features.get(c)) for c in columns}

    def bytes_like(c: str) -> bool:
        t = schema.field(c).type
        return (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0) or (
            pa.types.is_binary(t) or pa.types.is_large_binary(t))

    def media_of(c: str) -> str:
        kind = kinds.get(c)
        if kind in ("Image", "Audio"):
            return kind.lower()
        return "audio" if "audio" in c.lower() else "image"

    if modality == "text":
        example = text_column if text_column in columns else None
    elif path_column is not None:
        example = path_column if path_column in columns else None
    else:
        typed = [c for c in columns if kinds[c] in ("Image", "Audio")] or [c for c in columns if bytes_like(c)]
        if len(typed) > 1:
            log.structural(shown, f"several image or audio columns ({', '.join(typed)}); name one with --path-column "
                                  "(path_column=...)")
            return None
        example = typed[0] if typed else text_column if text_column in columns else None
    if example is None:
        wanted = path_column or (text_column if modality == "text" else None)
        what = f"column {wanted!r}" if wanted else "an Image or Audio column (or a text column)"
        flag = "--path-column" if path_column else "--text-column"
        log.structural(shown, f"no {what} found; columns present: {columns}. Pass {flag} to name it")
        return None
    t = schema.field(example).type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or _kind(features.get(example)) in ("Sequence", "List"):
        log.structural(shown, f"column {example!r} holds a list per row; transferkit needs one example per row")
        return None
    is_text = (pa.types.is_string(t) or pa.types.is_large_string(t)) and kinds.get(example) not in ("Image", "Audio")
    found = modality or ("text" if is_text and example == text_column else media_of(example))

    labels = _label_columns(label_column)
    if labels == ["label"] and "label" not in columns:
        class_labels = [c for c in columns if kinds[c] == "ClassLabel"]
        labels = class_labels if len(class_labels) == 1 else labels
    missing = [c for c in labels if c not in columns]
    for c in missing:
        log.structural(shown, f"column {c!r} (`label_column`) not found; columns present: {columns}. "
                              "Pass --label-column (label_column=...) to name it")
    if split_column != "split" and split_column not in columns:
        log.structural(shown, f"column {split_column!r} (`split_column`) not found; columns present: {columns}. "
                              "Pass --split-column (split_column=...) to name it")
    if missing:
        return None
    names = {}
    for c in labels:
        f = features.get(c)
        if _kind(f) == "ClassLabel" and isinstance(f.get("names"), list):
            names[c] = [str(n) for n in f["names"]]
    stored = kinds.get(example) in ("Image", "Audio") or bytes_like(example)
    return _Columns(example, found, labels, names, stored)


class _Store:
    """Writes example bytes once to the content-addressed cache folder; returns their path."""

    def __init__(self, modality: str):
        self.modality = modality
        self.root = data_cache_dir() / "hf"

    def put(self, data: bytes, name: str | None) -> Path:
        digest = hashlib.sha256(data).hexdigest()[:32]
        suffix = Path(name).suffix.lower() if name and Path(name).suffix.lower() in MEDIA_EXTENSIONS else None
        path = self.root / digest[:2] / (digest + (suffix or self._sniff(data)))
        if path.is_file():
            return path
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # whole or not at all, also with another process writing the same bytes
        except OSError as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise DataError(f"Cannot write the dataset's {self.modality} files to {str(self.root)!r}: "
                            f"{e.strerror or e}. Set {CACHE_ENV} to a writable folder.") from None
        return path

    def _sniff(self, data: bytes) -> str:
        """The file extension of the bytes' format (headers only), ``.bin`` when not recognised."""
        if self.modality == "image":
            from PIL import Image

            try:
                with Image.open(io.BytesIO(data)) as im:
                    return _IMAGE_FORMATS.get(im.format or "", ".bin")
            except Exception:  # the preflight names what is wrong with these bytes
                return ".bin"
        import soundfile as sf

        try:
            return _AUDIO_FORMATS.get(sf.info(io.BytesIO(data)).format, ".bin")
        except Exception:
            return ".bin"


def _example(value: object, shard: _Shard, root: Path, store: _Store) -> tuple[Path | None, str | None, str | None]:
    """``(file, reason it cannot be used, name to show)`` for one image or audio cell."""
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, name = value, None
    elif isinstance(value, str):
        data, name = None, value
    elif value is None:
        return None, f"no {store.modality}", None
    else:
        return None, f"unexpected {type(value).__name__} value", None
    name = name if isinstance(name, str) and name else None
    if data is not None:
        return store.put(bytes(data), name), None, name
    if name is None:
        return None, f"no {store.modality} (neither bytes nor a path)", None
    given = Path(name)
    base = root if root.is_dir() else root.parent
    for candidate in ([given] if given.is_absolute() else [shard.path.parent / given, base / given]):
        if candidate.is_file():
            return candidate, None, name
    return None, (f"no bytes stored, and its path {name!r} is not a file here; re-save the dataset with the "
                  "files embedded"), name


def hf_modality(path: Path, *, text_column: str = "text", label_column: str = "label", split_column: str = "split",
                path_column: str | None = None, stored_only: bool = False) -> str | None:
    """The modality of a ``datasets`` folder or Parquet data, None when it holds no example column.

    ``stored_only``: None unless the examples are stored images or audio (an Image or Audio
    feature, or bytes), so a Parquet table of file paths or texts is left to the table loaders.
    """
    log = ProblemLog(str(path))
    shards, features = _shards(path, log)
    for shard in shards[:1]:
        try:
            schema, _ = _open(shard)
        except Exception:
            return "image" if is_saved_dataset(path) else None  # the loader names the damaged file
        chosen = _choose_columns(schema, features or _schema_features(schema), text_column=text_column,
                                 label_column=label_column, split_column=split_column, path_column=path_column,
                                 modality=None, shown=shard.shown, log=ProblemLog(str(path)))
        if chosen is not None and (chosen.stored or not stored_only):
            return chosen.modality
    return "image" if is_saved_dataset(path) else None


def load_hf_dataset(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str = "split",
    path_column: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    modality: str | None = None,
) -> TaskData:
    """Loads a ``datasets`` folder or Parquet data (module docstring), after a full preflight.

    Args:
        path: A ``save_to_disk`` folder, a folder of Parquet shards, or one ``.parquet`` file.
        text_column: Column of the texts, for a text dataset.
        label_column: Column of the labels (``"a,b"``: one task per column).
        split_column: Column holding train/val/test in a single dataset; used when present.
        path_column: The image or audio column (default: the Image or Audio feature).
        val_fraction, test_fraction, seed: For the splits transferkit makes.
        skip_bad: Leave out bad examples (listed in ``TaskData.skipped``) instead of raising.
        modality: "image", "audio" or "text"; default: the example column's.

    Returns:
        The task, with ``Path`` examples (stored bytes become files in :func:`data_cache_dir`)
        or ``str`` texts.

    Raises:
        DataError: A shard is unreadable or preflight found problems (all listed at once).
    """
    root = Path(path)
    log = ProblemLog(str(root), skip_bad=skip_bad)
    shards, features = _shards(root, log)
    if not shards and not log.problems:
        raise DataError(f"`path` {str(path)!r} holds no Hugging Face dataset (no state.json, dataset_dict.json "
                        "or .parquet files).")
    log.stop_if_structural(FIX)
    opened, chosen = [], None
    for shard in shards:
        try:
            schema, batches = _open(shard)
        except Exception as e:  # pyarrow raises many types for a damaged file
            log.structural(shard.shown, f"cannot read it ({type(e).__name__}: {e}); re-save the dataset")
            continue
        cols = _choose_columns(schema, features or _schema_features(schema), text_column=text_column,
                               label_column=label_column, split_column=split_column, path_column=path_column,
                               modality=modality, shown=shard.shown, log=log)
        if cols is not None and chosen is not None and (cols.example, cols.labels) != (chosen.example, chosen.labels):
            log.structural(shard.shown, f"columns differ from {opened[0][0].shown}'s; re-save the dataset")
        chosen = chosen or cols
        opened.append((shard, schema, batches))
    log.stop_if_structural(FIX)
    if chosen is None:  # every shard unreadable or without the columns, each already reported above
        raise DataError(f"`path` {str(path)!r}: no shard has an example column and a `label_column` "
                        f"{label_column!r}; pass `--label-column` / `--path-column`, or re-save the dataset.")
    store = _Store(chosen.modality)

    pending: list[_Pending] = []
    for shard, schema, batches in opened:
        wanted = [chosen.example, *chosen.labels]
        has_split = shard.split is None and split_column in schema.names
        if has_split:
            wanted.append(split_column)
        row = 0
        try:
            for batch in batches(wanted):
                cells = {c: batch.column(c).to_pylist() for c in wanted}
                for i in range(batch.num_rows):
                    row += 1
                    where, value = f"{shard.shown} row {row}", cells[chosen.example][i]
                    if chosen.modality == "text":
                        example, reason = value, None
                    else:
                        example, reason, name = _example(value, shard, root, store)
                        where += f" ({name})" if name else ""
                    split = shard.split if shard.split is not None else cells[split_column][i] if has_split else "train"
                    pending.append(_Pending(where, split, shard.split is not None, example,
                                            [cells[c][i] for c in chosen.labels], reason))
        except DataError:
            raise
        except Exception as e:  # a shard damaged past its header
            log.structural(shard.shown, f"cannot read it past row {row} ({type(e).__name__}: {e}); re-save the dataset")
    log.stop_if_structural(FIX)
    return _rows_to_task(pending, chosen, log, origin=str(root.resolve()), val_fraction=val_fraction,
                         test_fraction=test_fraction, seed=seed)


@dataclass
class _Pending:
    where: str
    split: object  # a split name, or the split column's value
    split_given: bool  # the split is a DatasetDict's or a Parquet shard's
    example: Path | str | None
    labels: list
    reason: str | None  # why the example cannot be used


class _OutOfRange(str):
    """A ClassLabel index with no name (a bad row, not a class)."""


def _label_of(value: object, classes: list[str]) -> str | None:
    if value is None or value == -1:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return classes[value]
    return _OutOfRange(repr(value))


def _rows_to_task(pending: list[_Pending], chosen: _Columns, log: ProblemLog, *, origin: str, val_fraction: float,
                  test_fraction: float, seed: int) -> TaskData:
    names = []  # class name per label column and row (None: missing)
    for k, c in enumerate(chosen.labels):
        raw = [p.labels[k] for p in pending]
        names.append([_label_of(v, chosen.names[c]) for v in raw] if c in chosen.names
                     else label_names(pd.Series(raw, dtype=object)).tolist())

    skipped, left_out = [], set()  # splits that are not train/val/test, or hold no label at all
    for split in sorted({p.split for p in pending if p.split_given}):
        rows_of = [i for i, p in enumerate(pending) if p.split_given and p.split == split]
        part = SPLIT_VALUES.get(split.lower())
        if part is None:
            why = "is not train, validation or test"
        elif part != "train" and all(names[0][i] is None for i in rows_of):
            why = "has no labels (every one is missing)"
        else:
            continue
        left_out.add(split)
        skipped.append((f"split {split!r}", f"{why}; left out ({len(rows_of)} examples)"))

    rows = []
    for i, p in enumerate(pending):
        if p.split_given and p.split in left_out:
            continue
        part = SPLIT_VALUES.get(p.split.strip().lower()) if isinstance(p.split, str) else None
        labels = [names[k][i] for k in range(len(chosen.labels))]
        out_of_range = next((v for v in labels if isinstance(v, _OutOfRange)), None)
        if p.reason:
            log.bad(p.where, p.reason)
        elif out_of_range is not None:
            log.bad(p.where, f"label {out_of_range} is not an index of the ClassLabel's names")
        elif any(v is None for v in labels):
            log.bad(p.where, "missing label")
        elif part is None:
            log.bad(p.where, f"unknown split value {p.split!r} (expected train, val/validation/valid/dev or test)")
        else:
            rows.append(Row(p.where, part, [str(v) for v in labels], p.example))
    splits = {"train"} | {r.split for r in rows}
    return finish_rows(rows, chosen.modality, log, origin=origin, splits=splits, tasks=chosen.labels,
                       val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, class_order=chosen.names,
                       skipped=skipped, fix=FIX, unit="example")
