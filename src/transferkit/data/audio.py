"""Audio classification data: a folder of clips per class, and one decoder for every source.

Layouts (the same as image folders):

* ``root/<class>/<clip>`` -- transferkit makes the splits;
* ``root/train/<class>/...``, optional ``root/val/<class>/...`` (also ``validation``, ``valid``,
  ``dev``) and ``root/test/<class>/...`` -- the given splits are kept; a missing val or test
  split is cut from train.

Clips may sit in nested folders inside a class folder; names starting with ``.`` are ignored.
Examples are resolved ``Path`` objects; nothing is decoded into memory by the loader.

Formats: what libsndfile reads through ``soundfile`` -- ``.wav``, ``.flac``, ``.ogg`` / ``.oga``
/ ``.opus`` (Vorbis, Opus), ``.mp3``, ``.aif`` / ``.aiff``. Files with another audio extension
(``.m4a``, ``.aac``, ``.wma``) are reported as bad items with the fix (convert them).

Decoding (:func:`open_audio`): float32 samples, channels averaged to mono, resampled to the
rate the source asks for (its ``Preprocessing.sample_rate``) with ``soxr`` at high quality --
what ``librosa.resample`` uses by default, without librosa's import cost -- or ``resampy``
(Kaiser-windowed sinc) where soxr is missing.

Length policy: the loader keeps every clip whole. The source's input pipeline
(``transferkit.sources.audio.AudioInputs``) makes every clip exactly ``clip_seconds`` long:
at evaluation a longer clip is centre-cropped and a shorter one zero-padded at the end (its true
length travels with it, so pooling ignores the padding); in training a longer clip is cropped
at a random offset. Each example therefore gives the same features whatever batch it is in.

Preflight decodes every clip once at its own rate and names, in one error, clips that are
*unreadable* (not audio, corrupt), *empty* (0 samples), *silent* (peak amplitude below
``SILENCE_PEAK`` = 1e-4, i.e. under -80 dBFS) or hold non-finite samples;
``skip_bad=True`` leaves them out (listed in ``TaskData.skipped``).
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

from transferkit.data.base import TaskData
from transferkit.data.checks import ProblemLog, check_classes, check_files
from transferkit.data.image import _entries, _is_dir, _link_problem, _split_layout
from transferkit.data.splits import group_by_split, make_splits
from transferkit.errors import DataError

#: Extensions soundfile (libsndfile >= 1.1) decodes.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})
#: Audio extensions transferkit recognises but cannot decode without ffmpeg.
UNSUPPORTED_AUDIO = frozenset({".m4a", ".aac", ".wma", ".mp4", ".webm"})
#: Every audio extension, for modality detection.
KNOWN_AUDIO = AUDIO_EXTENSIONS | UNSUPPORTED_AUDIO
#: A clip whose peak absolute amplitude is below this (-80 dBFS) is silent.
SILENCE_PEAK = 1e-4
#: Decoded, resampled clips kept in memory (bytes), so epochs after the first skip decoding.
CACHE_BYTES = 256 * 2**20


class _DecodeError(Exception):
    """Why a file could not be decoded (the message is the reason, without the path)."""


# -- decoding ----------------------------------------------------------------------------------


def open_audio(path: str | os.PathLike, sample_rate: int | None = None) -> np.ndarray:
    """Decodes an audio file to mono float32 samples at ``sample_rate``.

    Channels are averaged; the clip is resampled (:func:`resample`) when its own rate differs
    from ``sample_rate`` (None keeps the file's rate). Recently decoded clips are served from a
    small in-memory cache keyed by path, size, modification time and rate.

    Args:
        path: The audio file.
        sample_rate: The rate in Hz the source expects.

    Returns:
        A 1-d float32 array.

    Raises:
        DataError: The file is missing, not audio, corrupt or holds no samples.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise DataError(f"Cannot read audio {str(path)!r}: the file does not exist. Fix the path.") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, sample_rate)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    try:
        wave, rate = _decode(path)
    except _DecodeError as e:
        raise DataError(f"Cannot read audio {str(path)!r}: {e}. Fix or remove the file.") from None
    if wave.size == 0:
        raise DataError(f"Cannot use audio {str(path)!r}: it holds no samples. Remove the file.")
    if sample_rate is not None and rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
    _CACHE.put(key, wave)
    return wave


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``wave`` resampled from ``rate`` to ``target`` Hz, float32 (soxr "HQ", else resampy "kaiser_best")."""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if rate == target or wave.size == 0:
        return wave
    try:
        import soxr
    except ImportError:
        import resampy

        out = resampy.resample(wave, rate, target, filter="kaiser_best")
    else:
        out = soxr.resample(wave, rate, target, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


def audio_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as a clip (unreadable, empty, silent, non-finite), or None."""
    try:
        wave, rate = _decode(path)
    except _DecodeError as e:
        return str(e)
    if wave.size == 0:
        return "empty clip (0 samples)"
    if not np.isfinite(wave).all():
        return "holds NaN or infinite samples"
    peak = float(np.abs(wave).max())
    if peak < SILENCE_PEAK:
        return (f"silent clip (peak amplitude {peak:.1e} < {SILENCE_PEAK:g}, "
                f"{wave.size / rate:.2f} s of near-zero samples)")
    return None


def _decode(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    suffix = path.suffix.lower()
    if suffix in UNSUPPORTED_AUDIO:
        raise _DecodeError(f"{suffix} files cannot be decoded (soundfile reads "
                           f"{', '.join(sorted(AUDIO_EXTENSIONS))}); convert it, e.g. "
                           f"`ffmpeg -i {path.name} {path.stem}.flac`")
    try:
        if path.stat().st_size == 0:
            raise _DecodeError("empty file (0 bytes)")
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except _DecodeError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as e:
        message = str(e).split(": ", 1)[-1] if ": " in str(e) else str(e)
        raise _DecodeError(f"unreadable or corrupt audio ({message.strip() or type(e).__name__})") from None
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


class _ClipCache:
    """A byte-bounded LRU of decoded clips (per process)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0
        self.items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        with self.lock:
            wave = self.items.get(key)
            if wave is not None:
                self.items.move_to_end(key)
            return wave

    def put(self, key: tuple, wave: np.ndarray) -> None:
        if wave.nbytes > self.limit // 8:
            return
        wave.setflags(write=False)  # shared between callers
        with self.lock:
            if key in self.items:
                return
            self.items[key] = wave
            self.size += wave.nbytes
            while self.size > self.limit:
                _, old = self.items.popitem(last=False)
                self.size -= old.nbytes


_CACHE = _ClipCache(CACHE_BYTES)


# -- scanning class folders (shared with .npy sequence folders) --------------------------------


def scan_class_folders(root: Path, log: ProblemLog, extensions: frozenset[str], unit: str,
                       recognised: frozenset[str] | None = None):
    """Finds the example files of a class-folder dataset, recording layout problems.

    Args:
        root: The dataset root.
        log: Where problems go (links out of the root, files outside class folders, empty classes).
        extensions: Suffixes of the example files.
        unit: What a file is called in messages ("clip", "series file").
        recognised: Suffixes that count as examples for the layout checks (default ``extensions``).

    Returns:
        ``(layout, found, where)``: the split folders, ``(split, class, file)`` for every file
        and the folder of each class (relative, for messages).
    """
    recognised = recognised or extensions
    root_real = root.resolve()

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    def allowed(entry: os.DirEntry) -> bool:
        if not entry.is_symlink():
            return True
        reason = _link_problem(Path(entry.path), root_real)
        if reason:
            log.bad(rel(Path(entry.path)) + ("/" if _is_dir(entry) else ""), reason)
        return reason is None

    def files_under(class_dir: Path) -> list[Path]:
        found, stack, seen = [], [class_dir], set()
        while stack:
            folder = stack.pop()
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            for e in _entries(folder):
                if not allowed(e):
                    continue
                if _is_dir(e):
                    stack.append(Path(e.path))
                elif Path(e.name).suffix.lower() in recognised:
                    found.append(Path(e.path))
        return sorted(found)

    layout = _split_layout(root, log)
    found: list[tuple[str, str, Path]] = []
    where: dict[str, str] = {}
    for split, folder in layout.items():
        for e in _entries(folder):
            if not allowed(e):
                continue
            if not _is_dir(e):
                if Path(e.name).suffix.lower() in recognised:
                    log.bad(rel(Path(e.path)), f"{unit} outside any class folder; move it into root/<class>/")
                continue
            class_dir = Path(e.path)
            files = files_under(class_dir)
            where.setdefault(class_dir.name, rel(class_dir) + "/")
            if not files:
                log.structural(rel(class_dir) + "/", f"empty class folder (no {unit}s: "
                               f"{', '.join(sorted(extensions))}); add some or remove the folder")
            found += [(split, class_dir.name, f) for f in files]
    return layout, found, where


def load_audio_folder(
    path: str | os.PathLike,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
) -> TaskData:
    """Loads a folder of audio clips per class (see the module docstring), after a full preflight.

    Args:
        path: The dataset root.
        val_fraction: Fraction of each class for a val split transferkit makes.
        test_fraction: Fraction of each class for a test split transferkit makes.
        seed: Seed of the stratified split.
        skip_bad: Leave out bad clips (recorded in ``TaskData.skipped``) instead of raising.

    Returns:
        The task, with resolved ``Path`` examples and classes sorted by name.

    Raises:
        DataError: The folder is missing or preflight found problems (all listed at once).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"`path` must be a folder of class subfolders holding audio clips; got {str(path)!r}.")
    log = ProblemLog(str(root), skip_bad=skip_bad)
    layout, found, where = scan_class_folders(root, log, AUDIO_EXTENSIONS, "clip", recognised=KNOWN_AUDIO)
    reasons = check_files([f for _, _, f in found], audio_problem)
    for (_, _, f), reason in zip(found, reasons):
        if reason:
            log.bad(f.relative_to(root).as_posix(), reason)
    usable = [(s, c, f.resolve()) for (s, c, f), r in zip(found, reasons) if r is None]

    classes = sorted(where)
    counts = {s: Counter(c for s2, c, _ in usable if s2 == s) for s in layout}
    check_classes(log, classes, counts, test_made="test" not in layout, where=where, unit="clip")
    skipped = log.finish("fix or remove these files")

    given = group_by_split(usable, classes, set(layout))
    splits = make_splits(given, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return TaskData("audio", classes, splits["train"], splits["val"], splits["test"],
                    origin=str(root.resolve()), skipped=skipped, split_given="test" in layout)


def write_tone_folder(root: str | os.PathLike, counts: dict[str, int] | None = None, *, sample_rate: int = 8000,
                      seconds: float = 0.5, ext: str = ".wav", seed: int = 0) -> list[Path]:
    """Writes synthetic clips, one tone family per class, for tests and examples (no download).

    Class ``k`` (in ``counts`` order) holds sine tones around ``220 * 2**k`` Hz with a little
    noise and a random phase, amplitude and length (0.6-1.0 x ``seconds``).

    Args:
        root: The dataset root (created).
        counts: Clips per class; default two classes of 8.
        sample_rate: Rate of the written files.
        seconds: Longest clip length.
        ext: ``.wav``, ``.flac`` or ``.ogg``.
        seed: Seed of the noise, phases and lengths.

    Returns:
        The files written, in order.
    """
    import soundfile as sf

    counts = counts if counts is not None else {"low": 8, "high": 8}
    rng = np.random.default_rng(seed)
    written = []
    for k, (name, n) in enumerate(counts.items()):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            length = int(sample_rate * seconds * rng.uniform(0.6, 1.0))
            t = np.arange(length) / sample_rate
            freq = 220.0 * 2**k * rng.uniform(0.95, 1.05)
            wave = rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
            wave = wave + 0.01 * rng.standard_normal(length)
            path = folder / f"{name}_{i:03d}{ext}"
            sf.write(str(path), wave.astype(np.float32), sample_rate)
            written.append(path)
    return written
