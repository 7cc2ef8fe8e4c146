"""Image classification data: a folder of class subfolders, and one decoder for everyone.

Layouts:

* ``root/<class>/<image>`` -- transferkit makes the splits;
* ``root/train/<class>/...``, optional ``root/val/<class>/...`` (also ``validation``, ``valid``,
  ``dev``) and ``root/test/<class>/...`` -- the given splits are kept; a missing val or test
  split is cut from train.

Images may sit in nested folders inside a class folder. Names starting with ``.`` (``.git``,
``.DS_Store``) and ``__MACOSX`` are ignored, as are files without an image extension.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from transferkit.data.base import TaskData
from transferkit.data.checks import ProblemLog, check_classes, check_files
from transferkit.data.splits import group_by_split, make_splits
from transferkit.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "dev": "val",
              "test": "test"}
_IGNORED = {"__MACOSX"}


class _DecodeError(Exception):
    """Why a file could not be decoded (the message is the reason, without the path)."""


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decodes an image file into an 8-bit RGB image.

    Transparent images (RGBA, LA, palette with transparency) are composited on white; 16-bit
    and 32-bit greyscale is scaled to 8 bits (``I;16``: 65535 -> 255; ``I``: as 16-bit when a
    value exceeds 255, else as is); float images in [0, 1] are scaled by 255; greyscale, CMYK,
    YCbCr and the rest are converted by Pillow. Multi-frame files give their first frame.

    Args:
        path: The image file.

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"``, detached from the file.

    Raises:
        DataError: The file is missing, empty, truncated, corrupt or not an image.
    """
    try:
        return _decode(Path(path))
    except _DecodeError as e:
        raise DataError(f"Cannot read image {str(path)!r}: {e}. Fix or remove the file.") from None


def image_problem(path: Path) -> str | None:
    """The reason ``path`` cannot be decoded to RGB, or None when it can."""
    try:
        _decode(path)
    except _DecodeError as e:
        return str(e)
    return None


def _decode(path: Path) -> Image.Image:
    try:
        if path.stat().st_size == 0:
            raise _DecodeError("empty file (0 bytes)")
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except _DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise _DecodeError(f"image too large to decode safely ({e})") from None
    except UnidentifiedImageError:
        raise _DecodeError(f"not an image (Pillow cannot identify a {path.suffix} file in it)") from None
    except OSError as e:
        if "truncated" in str(e).lower():
            raise _DecodeError(f"truncated image ({e})") from None
        raise _DecodeError(f"unreadable or corrupt image ({type(e).__name__}: {e})") from None
    except Exception as e:  # Pillow plugins raise SyntaxError, ValueError, struct.error, ...
        raise _DecodeError(f"corrupt image ({type(e).__name__}: {e})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.int64)
        if mode.startswith("I;16") or a.max(initial=0) > 255:
            a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        if a.size and a.min() >= 0 and a.max() <= 1:
            a = a * 255
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in im.info or mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise _DecodeError(f"unsupported colour mode {mode!r} ({e})") from None


def _visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.name not in _IGNORED


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if _visible(e)), key=lambda e: e.name)


def _link_problem(path: Path, root_real: Path) -> str | None:
    """Why a symlink may not be used (broken, or pointing outside the root), or None."""
    target = path.resolve()
    if not target.exists():
        return "broken link (its target does not exist)"
    if not target.is_relative_to(root_real):
        return f"link points outside the dataset root (to {str(target)!r}); refused"
    return None


class _Scanner:
    """Walks the folder tree, collecting image files and the problems met on the way."""

    def __init__(self, root: Path, log: ProblemLog):
        self.root, self.log = root, log
        self.root_real = root.resolve()

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def allowed(self, entry: os.DirEntry) -> bool:
        """False (and a problem recorded) for links that are broken or leave the root."""
        if not entry.is_symlink():
            return True
        reason = _link_problem(Path(entry.path), self.root_real)
        if reason:
            self.log.bad(self.rel(Path(entry.path)) + ("/" if entry.is_dir() else ""), reason)
        return reason is None

    def class_dirs(self, folder: Path) -> list[Path]:
        """The class folders in ``folder``; images lying next to them are problems."""
        dirs = []
        for e in _entries(folder):
            if not self.allowed(e):
                continue
            if e.is_dir():
                dirs.append(Path(e.path))
            elif Path(e.name).suffix.lower() in IMAGE_EXTENSIONS:
                self.log.bad(self.rel(Path(e.path)), "image outside any class folder; move it "
                                                     "into root/<class>/")
        return dirs

    def images(self, class_dir: Path) -> list[Path]:
        """Every image file under ``class_dir`` (nested folders included), sorted."""
        found, stack, seen = [], [class_dir], set()
        while stack:
            folder = stack.pop()
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            for e in _entries(folder):
                if not self.allowed(e):
                    continue
                if e.is_dir():
                    stack.append(Path(e.path))
                elif Path(e.name).suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(Path(e.path))
        return sorted(found)


def _split_layout(root: Path, log: ProblemLog) -> dict[str, Path]:
    """``{split: folder}``: the train/val/test folders when ``root`` has them, else ``root``."""
    names = [e.name for e in _entries(root) if e.is_dir()]
    if "train" not in names or not all(n in SPLIT_DIRS for n in names):
        return {"train": root}
    layout: dict[str, Path] = {}
    for n in names:
        if SPLIT_DIRS[n] in layout:
            log.structural(f"{n}/", f"a second validation folder next to {layout['val'].name}/; "
                                    "keep one")
            continue
        layout[SPLIT_DIRS[n]] = root / n
    return layout


def load_image_folder(
    path: str | os.PathLike,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
) -> TaskData:
    """Loads an image folder (see the module docstring for layouts), after a full preflight.

    Every image is decoded once; every problem is collected and raised together.

    Args:
        path: The dataset root.
        val_fraction: Fraction of each class for a val split transferkit makes.
        test_fraction: Fraction of each class for a test split transferkit makes.
        seed: Seed of the stratified split.
        skip_bad: Leave out bad files (recorded in ``TaskData.skipped``) instead of raising.

    Returns:
        The task, with resolved ``Path`` examples and classes sorted by name.

    Raises:
        DataError: The folder is missing or preflight found problems.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"`path` must be a folder of class subfolders; got {str(path)!r}.")
    log = ProblemLog(str(root), skip_bad=skip_bad)
    scan = _Scanner(root, log)
    layout = _split_layout(root, log)
    found: list[tuple[str, str, Path]] = []  # (split, class, file)
    where: dict[str, str] = {}
    for split, folder in layout.items():
        for class_dir in scan.class_dirs(folder):
            files = scan.images(class_dir)
            where.setdefault(class_dir.name, scan.rel(class_dir) + "/")
            if not files:
                log.structural(scan.rel(class_dir) + "/", "empty class folder (no image files); "
                               "add images or remove the folder")
            found += [(split, class_dir.name, f) for f in files]

    reasons = check_files([f for _, _, f in found], image_problem)
    for (_, _, f), reason in zip(found, reasons):
        if reason:
            log.bad(scan.rel(f), reason)
    usable = [(s, c, f.resolve()) for (s, c, f), r in zip(found, reasons) if r is None]

    classes = sorted(where)
    counts = {s: Counter(c for s2, c, _ in usable if s2 == s) for s in layout}
    check_classes(log, classes, counts, test_made="test" not in layout, where=where, unit="image")
    skipped = log.finish("fix or remove these files")

    given = group_by_split(usable, classes, set(layout))
    splits = make_splits(given, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return TaskData("image", classes, splits["train"], splits["val"], splits["test"],
                    origin=str(root.resolve()), skipped=skipped, split_given="test" in layout)
