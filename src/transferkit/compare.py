"""``transferkit compare``: several run directories side by side, and which one to keep.

Each run is read from its JSON files alone: ``config.json`` and ``metrics.json`` (required) and
``history.json`` (the learning curves, when present); never its weights, and nothing is written
inside a run. The result is one folder claimed with ``OutputDir`` (a new or empty folder, or an
earlier comparison, which it replaces): ``compare.html``, one self-contained page in the run
report's style (plots as PNG data URIs, the CSS inline, no scripts), and ``compare.md``.

**Which run to keep**: the best *validation* accuracy (the last training stage's, the number each
run chose its own weights by), ties going to the cheaper run. Never test accuracy: picking the
best of several runs on the test split makes the kept run's test number optimistic, so the test
split stays what tells how good the choice was. Test accuracy is shown with its 95% Wilson
interval; a run whose interval overlaps the kept run's is flagged as not distinguishable from it
on this test split (a conservative reading: a paired test on the same examples could separate
some of them, but run directories keep no per-example predictions).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transferkit._io import read_json
from transferkit.errors import ConfigError, UnsafeFileError
from transferkit.evaluation.metrics import wilson_interval
from transferkit.evaluation.report.cells import count, esc, is_number, num
from transferkit.evaluation.report.facts import points
from transferkit.outdir import MARKER, OutputDir

FILES = ("compare.html", "compare.md")


@dataclass
class RunSummary:
    """What the comparison shows of one run (read from its JSON files)."""

    name: str
    path: Path
    config: dict
    metrics: dict
    history: list[dict] = field(default_factory=list)

    @property
    def source(self) -> str:
        return str(self.config.get("source", {}).get("id", "?"))

    @property
    def strategy(self) -> str:
        return str(self.metrics.get("strategy") or self.config.get("fit", {}).get("strategy") or "?")

    @property
    def seed(self):
        return self.metrics.get("seed", self.config.get("fit", {}).get("seed"))

    @property
    def val_accuracy(self) -> float | None:
        """The last training stage's best validation accuracy: what the run kept its weights by."""
        stages = [s for s in self.metrics.get("stages") or [] if isinstance(s, dict)]
        value = stages[-1].get("best_val_accuracy") if stages else None
        return float(value) if is_number(value) else None

    @property
    def test_accuracy(self) -> float:
        return float(self.metrics["test_accuracy"])

    @property
    def test_examples(self) -> int:
        sizes = self.metrics.get("data", {}).get("split_sizes", {})
        if isinstance(sizes.get("test"), int):
            return sizes["test"]
        return sum(m.get("support", 0) for m in (self.metrics.get("test_per_class") or {}).values()
                   if isinstance(m, dict) and isinstance(m.get("support"), int))

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.test_accuracy, self.test_examples)

    @property
    def recall(self) -> dict[str, float]:
        return {str(c): m["recall"] for c, m in (self.metrics.get("test_per_class") or {}).items()
                if isinstance(m, dict) and is_number(m.get("recall"))}

    @property
    def test_set(self) -> tuple:
        """What identifies the test split: data origin, classes, test size and its class counts."""
        data = self.metrics.get("data", {})
        counts = data.get("class_counts", {}).get("test")
        return (str(data.get("origin", "")), tuple(data.get("classes") or ()), self.test_examples,
                tuple(sorted(counts.items())) if isinstance(counts, dict) else None)


def compare_runs(runs: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Compares run directories; writes ``compare.html`` and ``compare.md`` into ``out``.

    Returns:
        ``{"runs": [RunSummary, ...], "keep": the kept run's index or None, "verdicts": per run
        "kept", "not distinguishable", "better on test", "worse on test" or "no validation
        accuracy", "notes": sentences for the reader}``.

    Raises:
        ConfigError: Fewer than two runs, a run given twice, a path that is not a run directory,
            or an ``out`` that may not be written (``OutputError``).
        UnsafeFileError: A run's JSON is not what ``fit`` writes.
    """
    if len(runs) < 2:
        raise ConfigError(f"`transferkit compare` needs at least two run directories; got {len(runs)}"
                          f"{' (' + str(runs[0]) + ')' if runs else ''}. Pass two or more `--out` folders of "
                          "`transferkit fit`.")
    seen: dict[Path, str] = {}
    for r in runs:
        resolved = Path(r).resolve()
        if resolved in seen:
            raise ConfigError(f"Run directory {str(r)!r} is given twice (as {seen[resolved]!r} too); pass each "
                              "run once.")
        seen[resolved] = str(r)
    loaded = [read_run(Path(r), name) for r, name in zip(runs, _names([Path(r) for r in runs]), strict=True)]
    result = summarise(loaded)
    with OutputDir.claim(out, "comparison", inputs=list(runs)) as outdir:
        outdir.publish(lambda folder: _write(folder, result))
    return result


def read_run(path: Path, name: str | None = None) -> RunSummary:
    """One run directory's JSON files, checked for what the comparison reads."""
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file"
        raise ConfigError(f"{str(path)!r} is not a run directory (it {what}). Pass the `--out` folders of "
                          "`transferkit fit`.")
    for required in ("config.json", "metrics.json"):
        if not (path / required).is_file():
            raise ConfigError(f"{str(path)!r} is not a transferkit run directory (no {required}). Pass the `--out` "
                              "folders of `transferkit fit`.")
    marker = read_json(path / MARKER) if (path / MARKER).is_file() else None
    if isinstance(marker, dict):
        kind = marker.get("kind")
        if kind not in (None, "run"):
            raise ConfigError(f"{str(path)!r} holds a transferkit {kind}, not a run; pass run directories.")
    config, metrics = read_json(path / "config.json"), read_json(path / "metrics.json")

    def bad(file: str, what: str) -> UnsafeFileError:
        return UnsafeFileError(f"{str(path / file)!r} is not what `transferkit fit` writes: {what}. Compare run "
                               "directories as `fit` wrote them.")

    if not isinstance(config, dict) or not isinstance(config.get("source"), dict):
        raise bad("config.json", "no `source` object")
    if not isinstance(config.get("fit", {}), dict):
        raise bad("config.json", "`fit` is not an object")
    if not isinstance(metrics, dict) or not is_number(metrics.get("test_accuracy")):
        raise bad("metrics.json", "no numeric `test_accuracy`")
    for key in ("data", "test_per_class", "transfer"):
        if key in metrics and not isinstance(metrics[key], dict):
            raise bad("metrics.json", f"`{key}` is not an object")
    history = read_json(path / "history.json") if (path / "history.json").is_file() else []
    history = [row for row in history if isinstance(row, dict)] if isinstance(history, list) else []
    return RunSummary(name or path.name, path, config, metrics, history)


def _names(paths: list[Path]) -> list[str]:
    """Short unique names: the folder names, or the paths as given where two folders share a name."""
    names = [p.name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def _overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def summarise(runs: list[RunSummary]) -> dict:
    """The kept run (best validation accuracy, ties to the cheaper run), a verdict per run and notes."""
    with_val = [i for i, r in enumerate(runs) if r.val_accuracy is not None]
    keep = (min(with_val, key=lambda i: (-runs[i].val_accuracy, runs[i].metrics.get("train_seconds") or 0.0, i))
            if with_val else None)
    notes, verdicts = [], []
    for i, r in enumerate(runs):
        if i == keep:
            verdicts.append("kept")
        elif keep is None:
            verdicts.append("no validation accuracy" if r.val_accuracy is None else "not kept")
        elif _overlap(r.interval, runs[keep].interval):
            verdicts.append("not distinguishable")
        else:
            verdicts.append("better on test" if r.test_accuracy > runs[keep].test_accuracy else "worse on test")
    if keep is None:
        notes.append("No run recorded a validation accuracy, so none is recommended: choosing on the test split "
                     "would make the chosen run's test accuracy optimistic.")
    else:
        kept = runs[keep]
        tied = [runs[i].name for i in with_val if i != keep and runs[i].val_accuracy == kept.val_accuracy]
        if tied:
            notes.append(f"Validation accuracy ties with {', '.join(tied)}; the cheaper run (less training time) "
                         "is kept.")
        missing = [r.name for r in runs if r.val_accuracy is None]
        if missing:
            notes.append(f"No validation accuracy recorded for {', '.join(missing)}: left out of the choice.")
        better = [runs[i].name for i, v in enumerate(verdicts) if v == "better on test"]
        if better:
            notes.append(f"{', '.join(better)} scored clearly higher on test than the kept run (intervals apart): "
                         "validation and test disagree. The validation split may be too small to choose on; "
                         "more validation data (`--val-fraction`) makes the choice more reliable.")
        if len(runs) > 1 and all(v in ("kept", "not distinguishable") for v in verdicts):
            notes.append("Every run's test interval overlaps the kept run's: on this test split they are not "
                         "distinguishable; the kept one is a choice by validation, not a proven winner.")
    if len({r.test_set for r in runs}) > 1:
        notes.append("These runs were not tested on the same examples (the data, its classes or the test split "
                     "differ): their test numbers are not comparable.")
    return {"runs": runs, "keep": keep, "verdicts": verdicts, "notes": notes}


# -- the cells both files show ---------------------------------------------------------------------

METRIC_COLUMNS = ["run", "source", "strategy", "val accuracy", "test accuracy", "95% interval", "test macro-F1",
                  "ECE", "gain vs baseline", "vs kept run (test)"]
COST_COLUMNS = ["run", "training seconds", "baseline seconds", "peak memory (MB)", "trainable parameters",
                "total parameters"]


def _interval_text(interval: tuple[float, float] | None) -> str:
    return f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "-"


def metric_rows(result: dict) -> list[list[str]]:
    rows = []
    for r, verdict in zip(result["runs"], result["verdicts"], strict=True):
        ece = (r.metrics.get("test_calibration") or {}).get("ece") if isinstance(r.metrics.get("test_calibration"),
                                                                                  dict) else None
        gain = r.metrics.get("transfer_gain")
        rows.append([r.name, r.source, r.strategy, num(r.val_accuracy), num(r.test_accuracy),
                     _interval_text(r.interval), num(r.metrics.get("test_macro_f1")), num(ece, 3),
                     points(gain) + (f" ({r.metrics.get('baseline')})" if is_number(gain) and
                                     isinstance(r.metrics.get("baseline"), str) else ""), verdict])
    return rows


def cost_rows(result: dict) -> list[list[str]]:
    rows = []
    for r in result["runs"]:
        m, transfer = r.metrics, r.metrics.get("transfer") or {}
        rows.append([r.name, num(m.get("train_seconds"), 1), num(m.get("baseline_seconds"), 1),
                     num(m.get("peak_memory_mb"), 0), count(transfer.get("trainable_parameters")),
                     count(transfer.get("total_parameters"))])
    return rows


def class_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Per class in every run: test recall per run, with its difference to the kept run in points."""
    runs, keep = result["runs"], result["keep"]
    classes = [c for c in runs[0].recall if all(c in r.recall for r in runs[1:])]
    rows = []
    for c in classes:
        support = (runs[0].metrics.get("test_per_class") or {}).get(c, {}).get("support", "-")
        cells = [c, str(support)]
        for i, r in enumerate(runs):
            delta = "" if keep is None or i == keep else f" ({points(r.recall[c] - runs[keep].recall[c])})"
            cells.append(f"{r.recall[c]:.3f}{delta}")
        rows.append(cells)
    return classes, rows


def differing_options(result: dict) -> list[list[str]]:
    """The ``fit`` options whose values differ between the runs: option, then its value per run."""
    fits = [r.config.get("fit", {}) for r in result["runs"]]
    keys = sorted({k for f in fits for k in f})
    return [[k, *(_value(f.get(k)) for f in fits)] for k in keys if len({repr(f.get(k)) for f in fits}) > 1]


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "[]"
    return str(value)


def keep_sentence(result: dict) -> str:
    keep = result["keep"]
    if keep is None:
        return "No run to keep: none recorded a validation accuracy."
    r = result["runs"][keep]
    n = r.test_examples
    return (f"Keep {r.name} ({r.source}, {r.strategy}): the best validation accuracy, {r.val_accuracy:.4f}. "
            f"Chosen on validation, not on test. Its test accuracy is {r.test_accuracy:.4f} "
            f"(95% interval {_interval_text(r.interval)}, {n} test examples).")


# -- compare.md ----------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(map(_md_cell, columns)) + " |", "|---" * len(columns) + "|",
            *("| " + " | ".join(map(_md_cell, r)) + " |" for r in rows)]


def markdown(result: dict) -> str:
    """``compare.md``: the kept run, the metrics table, per-class recall, cost, the options that differ."""
    runs = result["runs"]
    lines = [f"# transferkit comparison of {len(runs)} runs", "", keep_sentence(result), "",
             *(f"- {note}" for note in result["notes"]), *([""] if result["notes"] else []),
             *_md_table(METRIC_COLUMNS, metric_rows(result)), "",
             "Test accuracy with its 95% Wilson interval; runs whose interval overlaps the kept run's are "
             "marked *not distinguishable*. ECE: expected calibration error on test (lower is better)."]
    classes, rows = class_rows(result)
    if rows:
        lines += ["", "## Per class (test recall; in brackets: points against the kept run)", "",
                  *_md_table(["class", "support", *(r.name for r in runs)], rows)]
    lines += ["", "## Cost", "", *_md_table(COST_COLUMNS, cost_rows(result))]
    options = differing_options(result)
    if options:
        lines += ["", "## Options that differ", "", *_md_table(["option", *(r.name for r in runs)], options)]
    lines += ["", "## Runs", "", *(f"- {r.name}: `{r.path.resolve()}`" for r in runs), "",
              "Plots (test accuracy intervals, learning curves overlaid, recall per class): `compare.html`."]
    return "\n".join(lines) + "\n"


# -- compare.html --------------------------------------------------------------------------------

VERDICT_CLASS = {"kept": "pos", "better on test": "neg", "worse on test": "", "not distinguishable": ""}


def html(result: dict) -> str:
    """``compare.html``: one self-contained page in the run report's style."""
    from transferkit.evaluation import plots
    from transferkit.evaluation.report.html import page
    from transferkit.evaluation.report.sections import figure, key_values, table

    runs, keep = result["runs"], result["keep"]
    marked = [i == keep for i in range(len(runs))]
    notes = "".join(f'<p class="{"warn" if "not comparable" in n or "disagree" in n else "note"}">{esc(n)}</p>'
                    for n in result["notes"])
    if keep is None:
        keep_html = f'<p class="headline"><span class="flag">No choice</span>{esc(keep_sentence(result))}</p>'
    else:
        kept = runs[keep]
        keep_html = (f'<p class="headline"><span class="flag">Keep</span>{esc(kept.name)}: the best validation '
                     f"accuracy, {kept.val_accuracy:.4f}</p><p>{esc(kept.source)} · {esc(kept.strategy)} · seed "
                     f"{esc(kept.seed)}. Chosen on validation, not on test. Its test accuracy: "
                     f"<b>{kept.test_accuracy:.4f}</b> (95% interval {_interval_text(kept.interval)}, "
                     f"{kept.test_examples} test examples).</p>")
    keep_html += notes + ('<p class="note">Picking the best of several runs by their test accuracy would make that '
                          "number optimistic: validation chooses, test reports.</p>")
    cells = []
    for r, md in zip(runs, metric_rows(result), strict=True):
        name, _, _, val, test, interval, f1, ece, gain, verdict = md
        baseline = r.metrics.get("baseline") if is_number(r.metrics.get("transfer_gain")) else None
        cells.append([f'<b>{esc(name)}</b><br><span class="note">{esc(r.source)} · {esc(r.strategy)}</span>',
                      val, test, f'<span class="nowrap">{esc(interval)}</span>', f1, ece,
                      esc(points(r.metrics.get("transfer_gain")))
                      + (f'<br><span class="note">{esc(baseline)}</span>' if isinstance(baseline, str) else ""),
                      f'<span class="{VERDICT_CLASS.get(verdict, "")}">{esc(verdict)}</span>'])
    head = ["run (source · strategy)", *METRIC_COLUMNS[3:8], "gain vs baseline (points)", "vs kept run (test)"]
    chart = figure(plots.accuracy_intervals([(r.name, r.test_accuracy, r.interval, i == keep)
                                             for i, r in enumerate(runs)]),
                   "Test accuracy per run with its 95% Wilson interval (green: the kept run)")
    metrics_html = (table(head, cells, range(1, 7), marked=marked) + chart
                    + '<p class="note">Validation accuracy: the last training stage\'s best, what each run kept '
                      "its weights by. ECE: expected calibration error on test (lower is better). Gain: test "
                      "accuracy minus the run's no-transfer baseline's, in points.</p>")
    curves = figure(plots.overlaid_curves({r.name: r.history for r in runs}),
                    "Per epoch, every run: validation loss and validation accuracy (stages in order)")
    curves_html = curves or '<p class="note">No run directory holds a history.json with epochs.</p>'
    classes, class_cells = class_rows(result)
    if class_cells:
        recalls = table(["class", "support", *map(esc, (r.name for r in runs))],
                        [list(map(esc, r)) for r in class_cells], range(1, len(runs) + 2))
        if len(class_cells) > 15:
            recalls = f"<details><summary>Every class ({len(class_cells)})</summary>{recalls}</details>"
        per_class_html = (figure(plots.per_class_runs(classes, {r.name: r.recall for r in runs}),
                                 "Test recall per class, one colour per run") + recalls
                          + '<p class="note">In brackets: the difference to the kept run, in points.</p>')
    else:
        per_class_html = '<p class="note">The runs share no class with per-class test metrics.</p>'
    cost_html = table(COST_COLUMNS, [list(map(esc, r)) for r in cost_rows(result)], range(1, 6), marked=marked)
    options = differing_options(result)
    runs_html = key_values([(r.name, f"<code>{esc(r.path.resolve())}</code>") for r in runs], "25%")
    runs_html += ("<h3>Options that differ</h3>"
                  + table(["option", *map(esc, (r.name for r in runs))], [list(map(esc, o)) for o in options])
                  if options else '<p class="note">Every <code>fit</code> option is the same in all runs.</p>')
    sections = [("keep", "Which run to keep", keep_html), ("metrics", "Metrics (test, with intervals)", metrics_html),
                ("curves", "Learning curves", curves_html), ("classes", "Per class (test recall)", per_class_html),
                ("cost", "Cost", cost_html), ("runs", "Runs", runs_html)]
    title = f"{len(runs)} runs: " + ", ".join(r.name for r in runs)
    sub = f'<div class="sub">{esc(", ".join(sorted({r.source for r in runs})))}</div>'
    return page(title, "transferkit comparison", sub, sections,
                {"keep": "verdict " + ("helped" if keep is not None else "none")})


def _write(folder: Path, result: dict) -> None:
    (folder / "compare.md").write_text(markdown(result))
    (folder / "compare.html").write_text(html(result))
