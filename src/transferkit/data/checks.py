"""Preflight: find every problem in the target data before any model is loaded.

Loaders report problems to a :class:`ProblemLog` as they scan and decode, then call
:meth:`ProblemLog.finish` once. Nothing is raised early: the user sees every problem in one
:class:`PreflightError` (a ``DataError``), each with where it is (a path relative to the data
root, or ``row N``) and why, followed by what to do.

Two kinds of problem:

* *bad items* (a corrupt image, an empty text, a row with non-UTF-8 bytes, a link outside the
  root): ``skip_bad=True`` leaves them out and records them in ``TaskData.skipped``;
* *structural* problems (one class, a missing column, an empty class folder, a class with a
  single example where a split must be made, labels in val/test never seen in train): the data
  cannot be used as a whole, so they raise even with ``skip_bad=True``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from transferkit.errors import DataError

MAX_SHOWN = 20
SKIP_HINT = "pass --skip-bad (skip_bad=True) to skip them"


@dataclass(frozen=True)
class Problem:
    """One problem found by preflight.

    Attributes:
        where: A path relative to the data root, ``row N``, or a class such as ``class 'cat'``.
        reason: What is wrong, in words.
        skippable: True for a bad item ``skip_bad`` may leave out, False for a structural problem.
    """

    where: str
    reason: str
    skippable: bool = True

    def line(self) -> str:
        tail = "" if self.skippable else " [cannot be skipped]"
        return f"  - {self.where}: {self.reason}{tail}" if self.where else f"  - {self.reason}{tail}"


class PreflightError(DataError):
    """The target data has problems; ``problems`` holds every one of them."""

    def __init__(self, message: str, problems: list[Problem]):
        super().__init__(message)
        self.problems = problems


class ProblemLog:
    """Collects problems during a scan and raises them together in :meth:`finish`.

    Args:
        origin: The data folder or table, named in the error message.
        skip_bad: Leave bad items out instead of raising for them.
        described: How the message names what was checked, instead of ``repr(origin)``
            (e.g. "the inputs of `transferkit predict`").
    """

    def __init__(self, origin: str, *, skip_bad: bool = False, described: str | None = None):
        self.origin = origin
        self.skip_bad = skip_bad
        self.described = described or repr(origin)
        self.problems: list[Problem] = []

    def bad(self, where: str, reason: str) -> None:
        """Records a bad item (file or row) that ``skip_bad`` may leave out."""
        self.problems.append(Problem(where, reason, skippable=True))

    def structural(self, where: str, reason: str) -> None:
        """Records a problem with the data as a whole; it raises even with ``skip_bad``."""
        self.problems.append(Problem(where, reason, skippable=False))

    def stop_if_structural(self, fix: str = "fix or remove these files") -> None:
        """Raises at once (with everything found so far) when a structural problem was found."""
        if any(not p.skippable for p in self.problems):
            self.finish(fix)

    def skipped_items(self) -> list[tuple[str, str]]:
        """The ``(where, reason)`` pairs of the bad items, for ``TaskData.skipped``."""
        return [(p.where, p.reason) for p in self.problems if p.skippable]

    def finish(self, fix: str = "fix or remove these files") -> list[tuple[str, str]]:
        """Raises one error listing every problem, unless ``skip_bad`` covers them all.

        Args:
            fix: What to do about the bad items, e.g. "fix or remove these rows".

        Returns:
            The skipped ``(where, reason)`` pairs (empty unless ``skip_bad``).

        Raises:
            PreflightError: When a structural problem was found, or bad items without ``skip_bad``.
        """
        self.problems.sort(key=lambda p: _natural_key(p.where))
        structural = [p for p in self.problems if not p.skippable]
        if not structural and (self.skip_bad or not self.problems):
            return self.skipped_items()
        raise PreflightError(self._message(fix), list(self.problems))

    def _message(self, fix: str) -> str:
        n = len(self.problems)
        head = f"Preflight found {n} problem{'s' if n != 1 else ''} in {self.described}:"
        lines = [head] + [p.line() for p in self.problems[:MAX_SHOWN]]
        if n > MAX_SHOWN:
            lines.append(f"  ... and {n - MAX_SHOWN} more")
        has_bad = any(p.skippable for p in self.problems)
        has_structural = any(not p.skippable for p in self.problems)
        if has_bad and not self.skip_bad:
            todo = f"{fix.capitalize()}, or {SKIP_HINT}"
            if has_structural:
                todo += "; problems marked [cannot be skipped] must be fixed in the data"
        else:
            todo = "Fix the problems marked [cannot be skipped] in the data (--skip-bad cannot skip them)"
        lines.append(todo + ".")
        return "\n".join(lines)


def _natural_key(where: str) -> tuple:
    """Sorts "row 9" before "row 10" and paths by name; "" (whole-data problems) first."""
    return tuple(int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", where)))


def check_classes(
    log: ProblemLog,
    classes: list[str],
    counts: Mapping[str, Mapping[str, int]],
    *,
    test_made: bool,
    where: Mapping[str, str] | None = None,
    unit: str = "example",
) -> None:
    """Records the structural problems of the class counts.

    Args:
        log: Where the problems go.
        classes: Every class name found.
        counts: ``counts[split][class]`` usable examples per split; splits not given hold only
            ``"train"`` (the pool the missing splits are cut from).
        test_made: True when transferkit must cut the test split from train, so every class
            needs at least 2 examples there.
        where: An optional location per class (e.g. its folder) for the messages.
        unit: What an example is called in the messages ("image", "row").
    """
    where = where or {}
    if len(classes) < 2:
        found = f"only one class ({classes[0]!r})" if classes else "no classes"
        log.structural("", f"{found} found; a classifier needs at least 2 classes")
        return
    train = counts.get("train", {})
    flagged = {p.where for p in log.problems if not p.skippable}
    for c in classes:
        loc = where.get(c, "")
        if loc and loc in flagged:  # e.g. an empty class folder, already reported
            continue
        n_train = train.get(c, 0)
        elsewhere = {s: n.get(c, 0) for s, n in counts.items() if s != "train" and n.get(c, 0)}
        if n_train == 0 and elsewhere:
            seen = ", ".join(f"{s} ({k} {unit}s)" for s, k in elsewhere.items())
            log.structural(loc, f"label {c!r} appears in {seen} but never in train; "
                                f"a model cannot learn it. Add train {unit}s or remove it there")
        elif n_train == 0:
            log.structural(loc, f"class {c!r} has no usable {unit}s")
        elif n_train == 1 and test_made:
            log.structural(loc, f"class {c!r} has only 1 usable {unit}; it cannot be split into "
                                f"train and test (stratified splitting needs at least 2 per class). "
                                f"Add {unit}s to it or remove it")


def check_files(files: list[Path], problem: Callable[[Path], str | None]) -> list[str | None]:
    """``problem(f)`` for every file, in a few threads above 64 files (decoders release the GIL)."""
    if len(files) < 64:
        return [problem(f) for f in files]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:
        return list(pool.map(problem, files, chunksize=16))
