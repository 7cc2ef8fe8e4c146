"""Output folders: where transferkit may write, and how a result appears there whole or not at all.

Every command that writes a folder (``fit --out``, ``soup --out``, ``export --out``,
``rank --out``) goes through ``OutputDir``:

- ``OutputDir.claim`` runs before any model loads. It accepts a new folder, an empty one, or one
  that transferkit wrote before (a hidden ``.transferkit.json`` marker says which kind), and refuses
  anything else: a user's folder is never written into, a data or run folder never receives output
  files. A finished run is replaced only with ``overwrite``; checkpoints of an unfinished one are
  discarded only with ``overwrite`` and continued with ``resume``. An exclusive lock
  (``.transferkit.lock``, ``flock``) keeps a second process off a folder that one is writing.
- ``OutputDir.publish(write)`` lets ``write`` fill a hidden folder beside the target, then swaps
  the two in one ``renameat2(RENAME_EXCHANGE)``: readers see the old result or the new one, never a
  mix, whenever the process dies. Files transferkit did not write that sit in the old folder (a
  tracker's logs, a note a user added) move into the new one; what transferkit wrote there is
  removed, and nothing else.

Folders and files get the permissions the umask gives (not ``mkdtemp``'s 0700), so colleagues
who may read the parent folder may read the result.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from transferkit._io import default_mode
from transferkit._version import __version__
from transferkit.errors import OutputError

MARKER = ".transferkit.json"
LOCK = ".transferkit.lock"
CHECKPOINTS = "checkpoints"
#: What each kind of folder holds that transferkit wrote (besides the marker, the lock and checkpoints).
WRITTEN = {
    "run": frozenset({"model.safetensors", "config.json", "metrics.json", "history.json", "transfer_map.json",
                      "report.html", "report.md", "source"}),
    "ranking": frozenset({"ranking.json", "ranking.md", "ranking.png"}),
    "audit": frozenset({"audit.json", "audit.md", "audit.csv"}),
    "comparison": frozenset({"compare.html", "compare.md"}),
    "export": frozenset(),  # every export's marker lists its files
}
_CHECKPOINT_PREFIXES = ("ckpt-s", ".tmp-ckpt-", ".trash-ckpt-", "corrupt-ckpt-")
_RENAME_EXCHANGE = 2


@dataclass
class OutputDir:
    """A claimed output folder (see the module docstring); release it with ``release`` or ``with``."""

    path: Path
    kind: str
    _lock: IO | None = field(default=None, repr=False)
    _created: bool = field(default=False, repr=False)

    @classmethod
    def claim(cls, path: str | os.PathLike, kind: str, *, inputs: Iterable[str | os.PathLike] = (),
              overwrite: bool = False, resume: bool = False, lock: bool = True) -> OutputDir:
        """Checks that ``path`` may receive a ``kind`` folder, creates it and takes its lock.

        Args:
            path: The ``--out`` folder.
            kind: "run", "ranking", "audit", "comparison" or "export".
            inputs: Folders the command reads (data, run directories); ``path`` may be none of
                them and lie inside none of them.
            overwrite: Replace a finished run and discard an unfinished run's checkpoints.
            resume: Continue an unfinished run from its checkpoints.
            lock: Take the folder's lock (only the main process of a distributed run does).

        Raises:
            OutputError: The folder may not be written, with what to do instead.
        """
        path = Path(path)
        _check_not_input(path, inputs)
        if path.exists() and not path.is_dir():
            raise OutputError(f"`--out` {str(path)!r} is a file, not a folder; pass a folder to write into "
                              "(a new one, e.g. `runs/NAME`).")
        found = folder_kind(path) if path.is_dir() else None
        entries = sorted(p.name for p in path.iterdir() if p.name != LOCK) if path.is_dir() else []
        if entries and found is None:
            shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
            raise OutputError(f"`--out` {str(path)!r} already holds files that transferkit did not write "
                              f"({shown}); transferkit writes only into a new or empty folder or over its own "
                              f"earlier {kind}. Pick another `--out`, e.g. `runs/NAME`.")
        if found is not None and found != kind:
            raise OutputError(f"`--out` {str(path)!r} holds a transferkit {found}, not a {kind}; pick another `--out`.")
        if kind == "run" and entries:
            _check_run_reuse(path, overwrite=overwrite, resume=resume)
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            handle = _take_lock(path) if lock else None
            if lock and not (path / MARKER).is_file():
                _write_marker(path, kind, complete=False)
            if lock:
                _remove_stale_staging(path)
        except OSError as e:
            raise OutputError(f"`--out` {str(path)!r} cannot be written: {e.strerror or e}. Pick a folder you "
                              "can write to.") from None
        return cls(path, kind, handle, created)

    @property
    def locked(self) -> bool:
        """True in the process that holds the folder's lock: the one that writes into it."""
        return self._lock is not None

    def publish(self, write: Callable[[Path], None]) -> None:
        """Writes the result with ``write(folder)`` beside the target, then swaps it into place.

        ``write`` fills an empty hidden folder; if it raises, nothing at ``path`` changes.
        """
        staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(self.path)}{os.getpid()}-", dir=self.path.parent))
        swapped = False
        try:
            write(staging)
            _write_marker(staging, self.kind, complete=True, files=sorted(p.name for p in staging.iterdir()))
            _set_modes(staging)
            swapped = _exchange(staging, self.path)
        finally:
            if not swapped:
                shutil.rmtree(staging, ignore_errors=True)
        _retire(old=staging, new=self.path, kind=self.kind)

    def release(self) -> None:
        """Releases the lock. A folder that received nothing loses the marker and lock it got
        from ``claim`` (and goes, if ``claim`` created it); anything else stays."""
        if self._lock is None:
            return
        names = {p.name for p in self.path.iterdir()} if self.path.is_dir() else set()
        if names <= {MARKER, LOCK} and not is_finished_run(self.path):
            for name in names:
                (self.path / name).unlink(missing_ok=True)
            if self._created:
                self.path.rmdir()
        self._lock.close()
        self._lock = None

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def folder_kind(path: Path) -> str | None:
    """The kind of transferkit folder ``path`` is ("run", "ranking", "export"), or None.

    An empty folder, or one holding only transferkit's lock, is None too (it holds nothing).
    Folders written before the marker existed are recognised by their files.
    """
    try:
        marker = json.loads((path / MARKER).read_text())
        if isinstance(marker, dict) and marker.get("kind") in WRITTEN:
            return marker["kind"]
    except (OSError, ValueError):
        pass
    names = {p.name for p in path.iterdir()} - {LOCK}
    if {"config.json", "model.safetensors"} <= names:
        try:
            if "transferkit_version" in json.loads((path / "config.json").read_text()):
                return "run"
        except (OSError, ValueError, TypeError):
            return None
    if names and names <= WRITTEN["ranking"]:
        return "ranking"
    return None


def is_finished_run(path: Path) -> bool:
    """True when ``path`` holds a complete run (``fit`` published it)."""
    try:
        marker = json.loads((path / MARKER).read_text())
        return bool(marker.get("complete")) if isinstance(marker, dict) else False
    except (OSError, ValueError):
        return folder_kind(path) == "run" and (path / "config.json").is_file()  # written before markers


def _check_not_input(path: Path, inputs: Iterable[str | os.PathLike]) -> None:
    target = path.resolve()
    for item in inputs:
        folder = Path(item).resolve()
        if target == folder or folder in target.parents:
            what = "is" if target == folder else "lies inside"
            raise OutputError(f"`--out` {str(path)!r} {what} {str(item)!r}, which this command reads; its files "
                              "would mix with the output. Pick an `--out` outside it, e.g. `runs/NAME`.")


def _check_run_reuse(path: Path, *, overwrite: bool, resume: bool) -> None:
    checkpoints = path / CHECKPOINTS
    unfinished = checkpoints.is_dir() and any(p.name.startswith("ckpt-s") for p in checkpoints.iterdir())
    if overwrite or (resume and unfinished):
        return
    if unfinished:
        raise OutputError(f"`--out` {str(path)!r} holds checkpoints of a run that did not finish; pass `--resume` "
                          "to continue it, or `--overwrite` to discard them and start again.")
    if is_finished_run(path):
        hint = "there is nothing to resume; " if resume else ""
        raise OutputError(f"`--out` {str(path)!r} already holds a finished run; {hint}pass `--overwrite` to "
                          "replace it, or pick another `--out`.")


def _staging_prefix(path: Path) -> str:
    return f".{path.name}.new-"


def _remove_stale_staging(path: Path) -> None:
    """Removes what a killed ``publish`` left beside ``path`` (its pid is gone; the lock is ours now)."""
    prefix = _staging_prefix(path)
    for entry in path.parent.glob(f"{prefix}*"):
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if entry.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_lock(path: Path) -> IO:
    handle = open(path / LOCK, "a+")  # noqa: SIM115 - held until release()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise OutputError(f"`--out` {str(path)!r} is being written by another transferkit process (pid {holder}); "
                          "wait for it to finish, or pick another `--out`.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _write_marker(folder: Path, kind: str, *, complete: bool, files: list[str] | None = None) -> None:
    text = json.dumps({"format": "transferkit-folder", "kind": kind, "complete": complete, "files": files or [],
                       "transferkit_version": __version__}, indent=1) + "\n"
    tmp = folder / f"{MARKER}.tmp"
    tmp.write_text(text)
    os.replace(tmp, folder / MARKER)


def _set_modes(folder: Path) -> None:
    """Gives ``folder`` (a ``mkdtemp``, 0700) the mode a plain ``mkdir`` would."""
    os.chmod(folder, default_mode(0o777))


def _exchange(new: Path, target: Path) -> bool:
    """Swaps two folders atomically (Linux ``renameat2``); elsewhere renames in two steps. Returns True."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None and target.exists():
        at_cwd = -100
        if renameat2(at_cwd, os.fsencode(new), at_cwd, os.fsencode(target), _RENAME_EXCHANGE) == 0:
            return True
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(target))
    if not target.exists():
        os.replace(new, target)
        new.mkdir()  # _retire expects the old folder here: an empty one
        return True
    aside = target.parent / f".{target.name}.old-{os.getpid()}"
    os.replace(target, aside)  # no atomic swap on this system: a very short gap without the folder
    os.replace(new, target)
    os.replace(aside, new)
    return True


def _retire(old: Path, new: Path, kind: str) -> None:
    """Empties the swapped-out folder: transferkit's files go, anything else moves to ``new``."""
    ours = _written_files(old, kind) | {MARKER, LOCK}
    for entry in list(old.iterdir()):
        if entry.name in ours:
            _remove(entry)
        elif entry.name == CHECKPOINTS and entry.is_dir():
            remove_checkpoints(entry)
            if entry.exists():
                _move_aside(entry, new)
        else:
            _move_aside(entry, new)
    try:
        old.rmdir()
    except OSError:
        pass


def _written_files(folder: Path, kind: str) -> frozenset[str]:
    """The names transferkit wrote in ``folder``: its marker's list, else those a ``kind`` holds."""
    try:
        files = json.loads((folder / MARKER).read_text()).get("files")
        if isinstance(files, list) and files:
            return frozenset(str(f) for f in files)
    except (OSError, ValueError, AttributeError):
        pass
    return WRITTEN[kind]


def remove_checkpoints(folder: Path) -> None:
    """Removes transferkit's checkpoints (and the baseline's) from ``folder``; removes the folder only if then empty."""
    for entry in list(folder.iterdir()):
        if entry.name.startswith(_CHECKPOINT_PREFIXES):
            _remove(entry)
        elif entry.name == "baseline" and entry.is_dir():
            remove_checkpoints(entry)
    try:
        folder.rmdir()
    except OSError:
        pass


def _move_aside(entry: Path, new: Path) -> None:
    destination = new / entry.name
    if not destination.exists():
        os.replace(entry, destination)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
