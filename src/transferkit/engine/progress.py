"""Progress of the long steps, with an ETA: a bar on a terminal, plain lines in a log.

Training stages, feature extraction, the scratch baseline and the rounds of the auto selection
report to a :class:`Stage`. On a terminal (or in Jupyter) it is a rich bar: what runs, the bar,
done/total, elapsed time, ETA and a status. When stdout is not a terminal (a log file, a pipe,
CI), it prints plain lines instead, without escapes or carriage returns: one at most every
``LINE_SECONDS`` while the stage runs, and one when it ends (when it ran ``QUIET_SECONDS`` or
more, or printed a line before)::

    full 120/400 batches [0:42 elapsed, ETA 1:38] epoch 3/10 loss 0.4123
    full 400/400 batches [2:20 elapsed, done] epoch 10/10 loss 0.2011 val_acc 0.912

The ETA is the rest of the work at the rate of this stage so far (work restored from a
checkpoint does not count), and never later than the stage's deadline when it has one. Stages
nest (the features of a probe inside a fit): on a terminal they share one live display, and a
nested bar goes away when its stage ends. ``labelled("scratch baseline")`` prefixes the names of
the stages inside it. Imports rich only when a stage is shown.
"""

from __future__ import annotations

import contextlib
import sys
import time

#: Seconds between two plain lines of one stage (the first comes this long after its start).
LINE_SECONDS = 15.0
#: A stage that ends sooner than this without having printed a plain line prints none.
QUIET_SECONDS = 5.0

_labels: list[str] = []
_live: dict = {"progress": None, "stages": 0}


def interactive() -> bool:
    """True when stdout is a terminal that draws a live bar (or a Jupyter notebook)."""
    from rich.console import Console

    console = Console()
    return (console.is_terminal and not console.is_dumb_terminal) or console.is_jupyter


def clock(seconds: float) -> str:
    """``seconds`` as m:ss, or h:mm:ss from an hour."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@contextlib.contextmanager
def labelled(label: str):
    """Prefixes ``label: `` to the names of the stages started inside (e.g. the scratch baseline's)."""
    _labels.append(label)
    try:
        yield
    finally:
        _labels.pop()


class Stage:
    """One long step's progress (a context manager); ``update`` reports work done.

    Args:
        name: What runs ("full", "features train").
        total: Work of the whole stage, in ``unit``.
        unit: What ``total`` counts ("batches", "examples").
        enabled: False shows nothing (``--quiet``, processes other than the main one).
        completed: Work already done before this start (a resumed stage).
        status: Text after the numbers ("epoch 3/10 loss 0.41").
        deadline: ``time.perf_counter()`` by which the stage stops, which caps the ETA.
    """

    def __init__(self, name: str, total: float, unit: str = "", *, enabled: bool = True, completed: float = 0,
                 status: str = "", deadline: float | None = None) -> None:
        self.name = ": ".join([*_labels, name])
        self.total, self.unit, self.enabled = total, unit, enabled
        self.completed, self.status, self.deadline = completed, status, deadline
        self._done_at_start = completed
        self._started = self._last_line = 0.0
        self._printed = False
        self._bar = None

    def __enter__(self) -> Stage:
        if not self.enabled:
            return self
        self._started = self._last_line = time.perf_counter()
        if _live["progress"] is not None or interactive():
            self._start_bar()
        return self

    def update(self, *, advance: float = 0, completed: float | None = None, total: float | None = None,
               status: str | None = None) -> None:
        """Records work done (``advance`` more, or ``completed`` in all), a new ``total`` or ``status``."""
        if not self.enabled:
            return
        self.completed = self.completed + advance if completed is None else completed
        self.total = self.total if total is None else total
        self.status = self.status if status is None else status
        now = time.perf_counter()
        if self._bar is not None:
            self._bar[0].update(self._bar[1], completed=self.completed, total=self.total, status=self.status,
                                eta=self.eta(now))
        elif now - self._last_line >= LINE_SECONDS:
            self._line(f"ETA {self.eta(now)}", now)

    def advance(self, n: float = 1, status: str | None = None) -> None:
        self.update(advance=n, status=status)

    def eta(self, now: float | None = None) -> str:
        """The time left as m:ss ("?" before any work is done)."""
        now = time.perf_counter() if now is None else now
        done, left = self.completed - self._done_at_start, max(0.0, self.total - self.completed)
        if done <= 0 and left > 0:
            return "?" if self.deadline is None else clock(self.deadline - now)
        seconds = left * (now - self._started) / done if done > 0 else 0.0
        if self.deadline is not None:
            seconds = min(seconds, max(0.0, self.deadline - now))
        return clock(seconds)

    def __exit__(self, kind, error, traceback) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._bar is not None:
            progress, task = self._bar
            progress.update(task, completed=self.completed, total=self.total, status=self.status, eta="done")
            _live["stages"] -= 1
            if _live["stages"] == 0:
                progress.stop()
                _live["progress"] = None
            else:  # a nested bar: its stage is over, the outer one goes on
                progress.remove_task(task)
        elif kind is None and (self._printed or now - self._started >= QUIET_SECONDS):
            self._line("done", now)

    def _line(self, eta: str, now: float) -> None:
        done = f"{self.completed:.0f}/{self.total:.0f}" + (f" {self.unit}" if self.unit else "")
        status = f" {self.status}" if self.status else ""
        print(f"{self.name} {done} [{clock(now - self._started)} elapsed, {eta}]{status}", file=sys.stdout,
              flush=True)
        self._printed, self._last_line = True, now

    def _start_bar(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Column

        if _live["progress"] is None:  # in a narrow terminal the status wraps; the name and numbers stay whole
            whole = Column(no_wrap=True)
            _live["progress"] = Progress(
                TextColumn("{task.description}", style="bold", markup=False, table_column=whole),
                BarColumn(bar_width=20), MofNCompleteColumn(table_column=Column(no_wrap=True)),
                TimeElapsedColumn(table_column=Column(no_wrap=True)),
                TextColumn("ETA {task.fields[eta]}", markup=False, table_column=Column(no_wrap=True)),
                TextColumn("{task.fields[status]}", markup=False, table_column=Column(overflow="fold")),
                transient=False)
            _live["progress"].start()
        _live["stages"] += 1
        progress = _live["progress"]
        task = progress.add_task(self.name, total=self.total, completed=self.completed, status=self.status,
                                 eta=self.eta(self._started))
        self._bar = (progress, task)
