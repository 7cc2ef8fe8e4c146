"""``report.html``: one self-contained page (plots as PNG data URIs, the CSS inline, no scripts)."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from .cells import esc
from .context import verdict_kind
from .sections import page_sections


@functools.cache
def stylesheet() -> str:
    """The page's CSS: ``report.css``, shipped beside this module as package data."""
    return resources.files(__package__).joinpath("report.css").read_text(encoding="utf-8")


def html_report(ctx: dict) -> str:
    """The whole report as one HTML page (plots as PNG data URIs, CSS inline, no scripts)."""
    config, metrics = ctx["config"], ctx["metrics"]
    src, fit, data = config["source"], config["fit"], metrics.get("data", {})
    target = Path(data.get("origin", "")).name or "target"
    title = f"{src['id']} → {target} · {fit['strategy']}"
    run_dir = Path(ctx.get("run_dir", ".")).resolve()
    sub = (f'<div class="sub">{esc(data.get("modality", ""))} · {len(data.get("classes", []))} classes · seed '
           f'{esc(fit.get("seed"))}\n · run directory <code>{esc(run_dir)}</code></div>')
    return page(title, f"transferkit {config.get('transferkit_version', '')} run report", sub, page_sections(ctx),
                {"verdict": "verdict " + verdict_kind(metrics)})


def page(title: str, kicker: str, sub: str, sections: list[tuple[str, str, str]],
         classes: dict[str, str] | None = None) -> str:
    """A self-contained page in the report's style: a header (``kicker`` above the ``title``, then
    ``sub``, HTML), a link per section, and the sections ((id, title, HTML) each; ``classes``
    gives some of them a CSS class). Used by the run report and ``transferkit compare``."""
    classes = classes or {}
    nav = " ".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name, _ in sections)
    body = "\n".join(f'<section id="{sid}" class="{esc(classes.get(sid, ""))}">'
                     f"<h2>{esc(name)}</h2>\n{content}</section>" for sid, name, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>transferkit · {esc(title)}</title>
<style>
{stylesheet()}</style>
</head>
<body>
<main>
<header>
<div class="sub">{esc(kicker)}</div>
<h1>{esc(title)}</h1>
{sub}
<nav>{nav}</nav>
</header>
{body}
</main>
</body>
</html>
"""
