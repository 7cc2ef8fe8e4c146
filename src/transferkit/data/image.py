"""Image classification data: a folder of class subfolders, and one decoder for everyone.

Layouts:

* ``root/<class>/<image>`` -- transferkit makes the splits;
* ``root/train/<class>/...``, optional ``root/val/<class>/...`` (also ``validation``, ``valid``,
  ``dev``) and ``root/test/<class>/...`` -- the given splits are kept; a missing val or test
  split is cut from train.

Images may sit in nested folders inside a class folder. Names starting with ``.`` (``.git``,
``.DS_Store``) and ``__MACOSX`` are ignored, as are files without an image extension. Common
image formats Pillow cannot decode here (``UNSUPPORTED_IMAGE``: HEIC/HEIF, SVG, JPEG XL, camera
RAW, ...) are bad items named with the fix (convert them), never silently ignored.

Decoding (:func:`open_image`, used by preflight, training, features and ``predict``) applies the
EXIF orientation tag, so a phone photo is seen upright, as a viewer shows it.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferkit.data.base import TaskData
from transferkit.data.checks import ProblemLog, check_classes, check_files
from transferkit.data.splits import group_by_split, make_splits
from transferkit.errors import DataError

#: Common image formats that Pillow reads only with plugins or not at all.
_OTHER_IMAGE_FORMATS = frozenset({".heic", ".heif", ".avif", ".svg", ".svgz", ".jxl", ".jp2", ".j2k", ".dng",
                                  ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf"})


def _readable_here(suffixes: frozenset[str]) -> frozenset[str]:
    """The suffixes whose format this Pillow build can open (e.g. ``.avif`` with libavif)."""
    Image.init()
    registered = Image.registered_extensions()
    return frozenset(s for s in suffixes if registered.get(s) in Image.OPEN)


#: Extensions of the image files transferkit decodes.
IMAGE_EXTENSIONS = (frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
                    | _readable_here(_OTHER_IMAGE_FORMATS))
#: Image extensions recognised but not decodable here: reported with the fix (convert to PNG/JPEG).
UNSUPPORTED_IMAGE = _OTHER_IMAGE_FORMATS - IMAGE_EXTENSIONS
#: Every image extension, for scanning folders and modality detection.
KNOWN_IMAGE = IMAGE_EXTENSIONS | UNSUPPORTED_IMAGE
SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "dev": "val",
              "test": "test"}
_IGNORED = {"__MACOSX"}


class _DecodeError(Exception):
    """Why a file could not be decoded (the message is the reason, without the path)."""


def open_image(path: str | os.PathLike, max_side: int | None = None) -> Image.Image:
    """Decodes an image file into an 8-bit RGB image.

    Transparent images (RGBA, LA, palette with transparency) are composited on white; 16-bit
    and 32-bit greyscale is scaled to 8 bits (``I;16``: 65535 -> 255; ``I``: as 16-bit when a
    value exceeds 255, else as is); float images in [0, 1] are scaled by 255; greyscale, CMYK,
    YCbCr and the rest are converted by Pillow. Multi-frame files give their first frame. The
    EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``), so the image is upright.

    Args:
        path: The image file.
        max_side: Only this many pixels are needed on the short side: a format that can
            decode at a reduced scale (JPEG: 1/2, 1/4 or 1/8) does, keeping both sides at
            least ``max_side`` (``PIL.Image.Image.draft``). None: full size.

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"``, detached from the file.

    Raises:
        DataError: The file is missing, empty, truncated, corrupt, not an image, or in a format
            Pillow cannot decode here (``UNSUPPORTED_IMAGE``).
    """
    try:
        return _decode(Path(path), max_side)
    except _DecodeError as e:
        raise DataError(f"Cannot read image {str(path)!r}: {e}. Fix or remove the file.") from None


def typical_side(examples, sample: int = 64) -> int | None:
    """The median short side in pixels of up to ``sample`` evenly spaced images (paths or PIL images).

    Reads file headers only (no decoding); None when no example could be measured.
    """
    step = max(1, len(examples) // sample)
    sides = []
    for example in list(examples)[::step][:sample]:
        try:
            if isinstance(example, Image.Image):
                width, height = example.size
            else:
                with Image.open(example) as im:
                    width, height = im.size
        except (OSError, ValueError, UnidentifiedImageError):
            continue  # preflight reports unreadable files; they do not decide the size
        sides.append(min(width, height))
    return int(np.median(sides)) if sides else None


def image_problem(path: Path) -> str | None:
    """The reason ``path`` cannot be decoded to RGB, or None when it can."""
    try:
        _decode(path)
    except _DecodeError as e:
        return str(e)
    return None


def _decode(path: Path, max_side: int | None = None) -> Image.Image:
    suffix = path.suffix.lower()
    if suffix in UNSUPPORTED_IMAGE:
        raise _DecodeError(f"{suffix} files cannot be decoded here (Pillow reads "
                           f"{', '.join(sorted(IMAGE_EXTENSIONS))}); convert it to PNG or JPEG, e.g. "
                           f"`magick {path.name} {path.stem}.png`")
    try:
        if path.stat().st_size == 0:
            raise _DecodeError("empty file (0 bytes)")
        with Image.open(path) as im:
            if max_side:
                im.draft(None, (max_side, max_side))
            im.load()
            return _to_rgb(_upright(im))
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


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation tag says (itself when there is no tag, or a broken one)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block does not make the pixels unusable
        return im
    return ImageOps.exif_transpose(im) if orientation not in (1, None) else im


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


def _is_dir(entry: os.DirEntry) -> bool:
    """``entry.is_dir()``, False for a link that loops (which would raise ``OSError``)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _entries(folder: Path) -> list[os.DirEntry]:
    """The visible entries of ``folder``, sorted by name.

    Raises:
        DataError: The folder cannot be listed (no read permission, ...); one line naming it.
    """
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if _visible(e)), key=lambda e: e.name)
    except OSError as e:
        raise folder_error(folder, e) from None


def folder_error(folder: str | os.PathLike, error: OSError) -> DataError:
    """The one-line error for a folder that cannot be listed."""
    why = "permission denied" if isinstance(error, PermissionError) else (error.strerror or str(error)).lower()
    return DataError(f"Cannot read folder {str(folder)!r}: {why}. Give yourself read access "
                     f"(`chmod -R u+rX {folder}`) or move it out of the data.")


def _link_problem(path: Path, root_real: Path) -> str | None:
    """Why a symlink may not be used (a loop, broken, or pointing outside the root), or None."""
    loop = "symlink loop (the link leads back to itself or a folder holding it); remove the link"
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        return "broken link (its target does not exist)"
    except RuntimeError:  # a loop, before Python 3.13
        return loop
    except OSError as e:
        return loop if e.errno == errno.ELOOP else f"unreadable link ({e.strerror or e})"
    if not target.is_relative_to(root_real):
        return f"link points outside the dataset root (to {str(target)!r}); refused"
    if target.is_dir() and path.parent.resolve().is_relative_to(target):
        return loop
    return None


class _Scanner:
    """Walks the folder tree, collecting image files and the problems met on the way.

    Args:
        root: The folder walked; links may not leave it.
        log: Where problems go.
        extensions: Suffixes of the files collected (decodable or not: the decoder names the
            ones it cannot read).
        shown: How ``root`` is written in problem reports (default: paths relative to it).
    """

    def __init__(self, root: Path, log: ProblemLog, extensions: frozenset[str] = KNOWN_IMAGE,
                 shown: str | None = None):
        self.root, self.log, self.extensions, self.shown = root, log, extensions, shown
        self.root_real = root.resolve()

    def rel(self, path: Path) -> str:
        rel = path.relative_to(self.root).as_posix()
        return f"{self.shown.rstrip('/')}/{rel}" if self.shown else rel

    def allowed(self, entry: os.DirEntry) -> bool:
        """False (and a problem recorded) for links that loop, are broken or leave the root."""
        if not entry.is_symlink():
            return True
        reason = _link_problem(Path(entry.path), self.root_real)
        if reason:
            self.log.bad(self.rel(Path(entry.path)) + ("/" if _is_dir(entry) else ""), reason)
        return reason is None

    def class_dirs(self, folder: Path) -> list[Path]:
        """The class folders in ``folder``; images lying next to them are problems."""
        dirs = []
        for e in _entries(folder):
            if not self.allowed(e):
                continue
            if _is_dir(e):
                dirs.append(Path(e.path))
            elif Path(e.name).suffix.lower() in self.extensions:
                self.log.bad(self.rel(Path(e.path)), "image outside any class folder; move it "
                                                     "into root/<class>/")
        return dirs

    def images(self, class_dir: Path) -> list[Path]:
        """Every file with one of ``extensions`` under ``class_dir`` (nested folders included), sorted."""
        found, stack, seen = [], [class_dir], set()
        while stack:
            folder = stack.pop()
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            for e in _entries(folder):
                if not self.allowed(e):
                    continue
                if _is_dir(e):
                    stack.append(Path(e.path))
                elif Path(e.name).suffix.lower() in self.extensions:
                    found.append(Path(e.path))
        return sorted(found)


def find_files(folder: Path, log: ProblemLog, extensions: frozenset[str] = KNOWN_IMAGE,
               shown: str | None = None) -> list[Path]:
    """Every file with one of ``extensions`` under ``folder``, sorted, as the folder loaders scan.

    Hidden names are skipped; links that loop, are broken or leave ``folder`` are recorded in
    ``log`` (as ``shown/relative/path``) instead of followed.

    Raises:
        DataError: A folder cannot be listed (one line naming it).
    """
    return _Scanner(folder, log, extensions, shown).images(folder)


def _split_layout(root: Path, log: ProblemLog) -> dict[str, Path]:
    """``{split: folder}``: the train/val/test folders when ``root`` has them, else ``root``."""
    names = [e.name for e in _entries(root) if _is_dir(e)]
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
