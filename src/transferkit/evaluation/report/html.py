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
    sections = page_sections(ctx)
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in sections)
    body = "\n".join(f'<section id="{sid}" class="{"verdict " + verdict_kind(metrics) if sid == "verdict" else ""}">'
                     f"<h2>{esc(title)}</h2>\n{content}</section>" for sid, title, content in sections)
    title = f"{src['id']} → {target} · {fit['strategy']}"
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
<div class="sub">transferkit {esc(config.get("transferkit_version", ""))} run report</div>
<h1>{esc(title)}</h1>
<div class="sub">{esc(data.get("modality", ""))} · {len(data.get("classes", []))} classes · seed {esc(fit.get("seed"))}
 · run directory <code>{esc(Path(ctx.get("run_dir", ".")).resolve())}</code></div>
<nav>{nav}</nav>
</header>
{body}
</main>
</body>
</html>
"""
