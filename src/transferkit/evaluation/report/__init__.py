"""The run report: ``report.md`` (terminals, diffs) and ``report.html`` (one self-contained page).

Both are written from the run directory's files alone, so a report can be rebuilt at any time
with ``write_report(run_dir)``:

- ``config.json``, ``metrics.json`` (required);
- ``history.json`` (per-epoch rows), ``transfer_map.json`` (one row per tensor) and
  ``ranking.json`` (one row per candidate source, from ``transferkit rank``) when present;
  ``metrics["selection"]`` (``--source auto``) and ``metrics["wise_ft_curve"]`` when present;
- ``metrics["test_top_losses"]`` and ``metrics["test_calibration"]`` (``evaluation/examples.py``),
  the per-class metrics of the baselines (the per-class gain) when present. The thumbnails of the
  worst test images are read from the files those rows name when the report is written
  (``thumbnails.py``): a report rebuilt after the data moved shows their names alone.

``report.html`` embeds its plots as PNG data URIs and its CSS (``report.css``) inline: no scripts,
no external assets, so it opens offline and can be mailed as one file. Plotting (matplotlib)
happens only inside ``write_report``; importing this package stays light for the CLI.

The pieces, bottom to top: ``cells`` (one value as a table cell), ``ranking`` (candidate sources,
normalised), ``context`` (what is read from the run directory; the verdict; the reproduce line),
``facts`` (what both reports show, derived once), ``markdown``, ``thumbnails``, ``sections`` (the
HTML sections) and ``html`` (the page; ``page`` lays out ``transferkit compare``'s too).
"""

from __future__ import annotations

from pathlib import Path

from .context import (
    baselines,
    load_context,
    reproduce_command,
    transfer_gain,
    verdict,
    verdict_kind,
)
from .facts import group_summary, stage_learning_rates
from .html import html_report, stylesheet
from .markdown import markdown_report
from .ranking import (
    FACT_NAMES,
    RANKING_HIDDEN,
    SCORE_NAMES,
    SHORT_RUN,
    ranking_columns,
    ranking_rows,
)

__all__ = ["FACT_NAMES", "RANKING_HIDDEN", "SCORE_NAMES", "SHORT_RUN", "baselines", "group_summary", "html_report",
           "load_context", "markdown_report", "ranking_columns", "ranking_rows", "reproduce_command",
           "stage_learning_rates", "stylesheet", "transfer_gain", "verdict", "verdict_kind", "write_report"]


def write_report(run_dir: Path, shown_as: Path | None = None) -> Path:
    """Writes ``report.md`` and ``report.html`` in ``run_dir``; returns the path of ``report.md``.

    ``shown_as`` is the run directory's name in the report when ``run_dir`` is where it is being
    written before it moves there.
    """
    run_dir = Path(run_dir)
    ctx = load_context(run_dir)
    if shown_as is not None:
        ctx["run_dir"] = Path(shown_as)
    path = run_dir / "report.md"
    path.write_text("\n".join(markdown_report(ctx["config"], ctx["metrics"], ctx)) + "\n")
    (run_dir / "report.html").write_text(html_report(ctx))
    return path
