"""The run report: ``report.md`` (terminals, diffs) and ``report.html`` (one self-contained page).

Both are written from the run directory's files alone, so a report can be rebuilt at any time
with ``write_report(run_dir)``:

- ``config.json``, ``metrics.json`` (required);
- ``history.json`` (per-epoch rows), ``transfer_map.json`` (one row per tensor) and
  ``ranking.json`` (one row per candidate source, from ``transferkit rank``) when present;
  ``metrics["selection"]`` (``--source auto``) and ``metrics["wise_ft_curve"]`` when present.

``report.html`` embeds its plots as PNG data URIs and its CSS inline: no scripts, no external
assets, so it opens offline and can be mailed as one file. Plotting (matplotlib) happens only
inside ``write_report``; importing this module stays light for the CLI.
"""

from __future__ import annotations

import base64
import html
import json
import math
import struct
from pathlib import Path

from transferkit._io import read_json

#: Score columns of a ranking, in the order one is picked for the chart.
SCORE_NAMES = ("logme", "leep", "nce", "regularized_hscore", "hscore", "knn", "linear", "score")


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


def load_context(run_dir: Path) -> dict:
    """Everything a report reads from a run directory; optional files become empty values."""
    run_dir = Path(run_dir)

    def optional(name: str, default):
        p = run_dir / name
        return read_json(p) if p.is_file() else default

    metrics = read_json(run_dir / "metrics.json")
    return {
        "config": read_json(run_dir / "config.json"),
        "metrics": metrics,
        "history": optional("history.json", []),
        "transfer_map": optional("transfer_map.json", []),
        "ranking": ranking_rows(optional("ranking.json", None), metrics.get("selection")),
        "run_dir": run_dir,
    }


# -- shared summaries ------------------------------------------------------------------------


def verdict(metrics: dict) -> str:
    """One sentence: did transfer beat the no-transfer baseline on the test split?"""
    if "baseline_test_accuracy" not in metrics:
        return "No baseline was trained (`--no-baseline`)."
    gain = metrics["test_accuracy"] - metrics["baseline_test_accuracy"]
    if gain > 0:
        return f"Transfer helped: +{gain * 100:.1f} points of test accuracy over the no-transfer baseline."
    if gain == 0:
        return "Transfer tied with the no-transfer baseline on test accuracy."
    return f"**Transfer lost**: {gain * 100:.1f} points of test accuracy against the no-transfer baseline."


def verdict_kind(metrics: dict) -> str:
    """``"helped"``, ``"tied"``, ``"lost"`` or ``"none"`` (no baseline)."""
    if "baseline_test_accuracy" not in metrics:
        return "none"
    gain = metrics["test_accuracy"] - metrics["baseline_test_accuracy"]
    return "helped" if gain > 0 else "tied" if gain == 0 else "lost"


#: Ranking columns that are bookkeeping, not evidence: left out of the report's table.
RANKING_HIDDEN = ("random_control", "examples", "feature_dim", "head_classes", "cached", "load_seconds",
                  "feature_seconds", "score_seconds")
#: Readable names for the facts of a selection report.
FACT_NAMES = {"score": "score used", "choice": "chosen source", "chosen": "chosen source",
              "kendall_tau": "Kendall τ (score vs short-run val accuracy)", "kendall_p": "Kendall p-value",
              "kendall_note": "τ computed on", "seconds": "selection seconds", "candidates": "candidates",
              "top_k": "short-listed for short fine-tunes"}
SHORT_RUN = "short-run val accuracy"


def ranking_rows(ranking, selection) -> dict:
    """Normalises ``ranking.json`` / ``metrics["selection"]`` to ``{"rows", "score", "facts"}``.

    Accepts a list of rows (``{"source": ..., "<score>": ..., "seconds": ...}``, as ``transferkit
    rank`` writes) or a dict holding one under ``ranking`` / ``rows`` / ``scores`` (a
    ``--source auto`` selection report); other scalar entries of a dict become facts (chosen
    source, score used, Kendall τ ...), and ``short_run_val_accuracy`` becomes a column.
    """
    rows, facts, score, short = [], {}, None, {}
    for item in (ranking, selection):
        if isinstance(item, dict):
            for key, value in item.items():
                if key in ("rows", "ranking", "scores") and isinstance(value, list):
                    rows = rows or [dict(r) for r in value if isinstance(r, dict)]
                elif key == "short_run_val_accuracy" and isinstance(value, dict):
                    short = value
                elif isinstance(value, (str, int, float, bool)) or value is None:
                    facts[key] = value
                elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
                    facts[key] = ", ".join(str(v) for v in value)
        elif isinstance(item, list):
            rows = rows or [dict(r) for r in item if isinstance(r, dict)]
    for row in rows:
        if row.get("source") in short:
            row[SHORT_RUN] = short[row["source"]]
    facts = {k: v for k, v in facts.items() if v is not None}
    if rows:
        numeric = [c for c in _ranking_columns(rows) if c not in ("rank", "seconds", SHORT_RUN)
                   and any(_is_number(r.get(c)) for r in rows)]
        named = facts.get("score") if isinstance(facts.get("score"), str) else None
        score = named if named in numeric else next((s for s in SCORE_NAMES if s in numeric), None)
        score = score or (numeric[0] if numeric else None)
    return {"rows": rows, "score": score, "facts": facts}


def group_summary(transfer_map: list[dict]) -> list[dict]:
    """Per layer group, input to output: tensors, parameters, origins, trainable parameters."""
    groups: dict[str, dict] = {}
    for e in transfer_map:
        g = groups.setdefault(e.get("group", "other"), {"group": e.get("group", "other"), "tensors": 0,
                                                         "parameters": 0, "trainable": 0, "origins": []})
        n = math.prod(e.get("shape") or [1])
        g["tensors"] += 1
        is_buffer = "running_" in e["tensor"] or e["tensor"].endswith("num_batches_tracked")
        if not is_buffer:
            g["parameters"] += n
            g["trainable"] += n if e.get("trainable") else 0
        if e.get("origin") not in g["origins"]:
            g["origins"].append(e.get("origin"))
    return list(groups.values())


def stage_learning_rates(metrics: dict, history: list[dict]) -> dict[str, str]:
    """Learning rate(s) per stage: per layer group when the stage recorded them, else from history."""
    out: dict[str, str] = {}
    for s in metrics.get("stages", []):
        lrs = s.get("group_lrs") or s.get("lrs")
        if isinstance(lrs, dict) and lrs:
            out[s["stage"]] = ", ".join(f"{k} {v:.2g}" for k, v in lrs.items())
        elif isinstance(lrs, list) and lrs:
            out[s["stage"]] = ", ".join(f"{v:.2g}" for v in lrs)
        elif _is_number(s.get("lr")):
            out[s["stage"]] = f"{s['lr']:.2g}"
    for row in history:
        if row.get("stage") not in out and _is_number(row.get("lr")):
            seen = [r["lr"] for r in history if r.get("stage") == row["stage"] and _is_number(r.get("lr"))]
            out[row["stage"]] = (f"{seen[0]:.2g} → {seen[-1]:.2g} at epoch ends" if len(seen) > 1
                                 else f"{seen[0]:.2g} at the epoch end")
    return out


# -- markdown ----------------------------------------------------------------------------------


def markdown_report(config: dict, metrics: dict, ctx: dict | None = None) -> list[str]:
    """The report as Markdown lines (``ctx`` adds history, transfer map and ranking sections)."""
    ctx = ctx or {}
    fit, src, data = config["fit"], config["source"], metrics.get("data", {})
    lines = [
        f"# transferkit run: {src['id']} -> {Path(data.get('origin', '')).name or 'target'}",
        "",
        verdict(metrics),
        "",
        "| | transfer | no-transfer baseline |",
        "|---|---|---|",
        f"| test accuracy | {metrics['test_accuracy']:.4f} | {_get(metrics, 'baseline_test_accuracy')} |",
        f"| test macro-F1 | {metrics['test_macro_f1']:.4f} | {_get(metrics, 'baseline_test_macro_f1')} |",
        f"| seconds | {metrics['train_seconds']:.1f} | {_get(metrics, 'baseline_seconds', '.1f')} |",
        "",
        f"Baseline: {metrics.get('baseline', 'none')}.",
        "",
        "Plots (learning curves, confusion matrix, per-class metrics): `report.html` in this directory.",
        "",
        "## Data",
        "",
        f"Modality {data.get('modality')}, {len(data.get('classes', []))} classes, "
        f"splits {data.get('split_sizes')} "
        f"({'given' if data.get('split_given') else 'made by transferkit, stratified'}).",
    ]
    counts = data.get("class_counts", {})
    if counts:
        splits = list(counts)
        lines += ["", "| class | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(str(counts[s].get(c, 0)) for s in splits) + " |"
                  for c in data.get("classes", [])]
    if data.get("skipped"):
        lines += ["", f"Skipped {len(data['skipped'])} bad example(s):"]
        lines += [f"- `{s['file']}`: {s['reason']}" for s in data["skipped"][:20]]
    ranking = ctx.get("ranking") or {"rows": []}
    if ranking["rows"]:
        cols = _ranking_columns(ranking["rows"])
        lines += ["", "## Source selection", ""]
        lines += [f"- {FACT_NAMES.get(k, k)}: {_cell(v)}" for k, v in ranking["facts"].items()]
        lines += [""] if ranking["facts"] else []
        lines += ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in ranking["rows"]]
    transfer = metrics.get("transfer", {})
    lines += [
        "", "## Source and transfer map", "",
        f"Source `{src['id']}`: {src.get('architecture')}, weights {src.get('weights')}, licence {src.get('license')}; "
        f"{src['feature_dim']}-d features. Strategy `{fit['strategy']}`, seed {fit['seed']}.",
        "",
        "| origin | tensors | parameters |", "|---|---|---|",
        *[f"| {o} | {d['tensors']} | {d['parameters']:,} |" for o, d in transfer.get("by_origin", {}).items()],
        "",
        f"Trainable parameters: {transfer.get('trainable_parameters', 0):,} "
        f"of {transfer.get('total_parameters', 0):,}.",
    ]
    groups = group_summary(ctx.get("transfer_map", []))
    if groups:
        lines += ["", "| layer group | tensors | parameters | trainable | origin |", "|---|---|---|---|---|"]
        lines += [f"| {g['group']} | {g['tensors']} | {g['parameters']:,} | {g['trainable']:,} | "
                  f"{', '.join(map(str, g['origins']))} |" for g in groups]
    lrs = stage_learning_rates(metrics, ctx.get("history", []))
    lines += [
        "", "## Stages", "",
        "| stage | epochs | best epoch | best val acc | trainable | learning rate | seconds | examples/s |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {s['stage']} | {s['epochs_run']} | {s['best_epoch']} | {s['best_val_accuracy']:.4f} | "
          f"{s['trainable_parameters']:,} | {lrs.get(s['stage'], '-')} | {s['seconds']:.1f} | "
          f"{s['examples_per_second']:.1f} |"
          for s in metrics.get("stages", [])],
    ]
    if metrics.get("wise_ft_curve"):
        lines += ["", "## WiSE-FT", "", f"Chosen α = {metrics.get('wise_ft_alpha')} (0 = starting weights, "
                  "1 = fine-tuned).", "", "| α | val accuracy |", "|---|---|"]
        lines += [f"| {a:g} | {s:.4f} |" for a, s in metrics["wise_ft_curve"]]
    lines += [
        *(["", "## Task heads (test)", "", "| task | accuracy | macro-F1 |", "|---|---|---|",
           *[f"| {name} | {_num(m.get('accuracy'))} | {_num(m.get('macro_f1'))} |"
             for name, m in metrics["tasks"].items()]] if len(metrics.get("tasks") or {}) > 1 else []),
        "", "## Per class (test)", "",
        "| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
        *[f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
          for c, m in metrics.get("test_per_class", {}).items()],
        "", "## Confusion matrix (test; rows true, columns predicted)", "",
        *_confusion_lines(data.get("classes", []), metrics.get("test_confusion_matrix", [])),
        "", "## Cost", "",
        f"Training {metrics['train_seconds']:.1f} s"
        + (f", baseline {metrics['baseline_seconds']:.1f} s" if "baseline_seconds" in metrics else "")
        + f", peak memory {metrics.get('peak_memory_mb', 0):.0f} MB.",
    ]
    return lines


def _confusion_lines(classes: list[str], matrix: list[list[int]]) -> list[str]:
    if not matrix:
        return []
    head = "| true \\ pred | " + " | ".join(classes) + " |"
    rule = "|---" * (len(classes) + 1) + "|"
    return [head, rule, *[f"| {c} | " + " | ".join(str(v) for v in row) + " |"
                          for c, row in zip(classes, matrix, strict=False)]]


def _get(metrics: dict, key: str, fmt: str = ".4f") -> str:
    return format(metrics[key], fmt) if key in metrics else "-"


# -- html ----------------------------------------------------------------------------------------

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d8dee4;--soft:#f6f8fa;--good:#1a7f37;--bad:#cf222e;--warn:#9a6700;
--blue:#4e79a7;--orange:#f28e2b}
*{box-sizing:border-box}
body{margin:0;background:var(--soft);color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1000px;margin:0 auto;padding:20px 20px 48px}
header h1{font-size:23px;margin:4px 0 2px;word-break:break-word}
.sub{color:var(--muted);font-size:14px}
nav{margin:10px 0 0;font-size:13px}
nav a{color:var(--blue);text-decoration:none;margin-right:12px;white-space:nowrap}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 20px 16px;margin:14px 0}
h2{font-size:17px;margin:0 0 10px}
h3{font-size:15px;margin:14px 0 6px}
p{margin:6px 0}
.verdict{border-left:8px solid var(--muted)}
.verdict.helped{border-left-color:var(--good)}
.verdict.lost{border-left-color:var(--bad);background:#fff5f5}
.verdict.tied{border-left-color:var(--warn)}
.flag{display:inline-block;font-weight:700;font-size:13px;letter-spacing:.04em;text-transform:uppercase;
padding:2px 10px;border-radius:12px;color:#fff;background:var(--muted);margin-right:8px;vertical-align:2px}
.helped .flag{background:var(--good)}.lost .flag{background:var(--bad)}.tied .flag{background:var(--warn)}
.headline{font-size:18px;font-weight:600}
.kpis{display:grid;grid-template-columns:repeat(4,1fr);gap:10px;margin:12px 0 4px}
.kpi{border:1px solid var(--line);border-radius:6px;padding:8px 12px}
.kpi .k{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.kpi .v{font-size:24px;font-weight:600;font-variant-numeric:tabular-nums}
.kpi .v small{font-size:13px;color:var(--muted);font-weight:400}
.pos{color:var(--good)}.neg{color:var(--bad)}
table{border-collapse:collapse;width:100%;font-size:13.5px;font-variant-numeric:tabular-nums;margin:6px 0}
th,td{padding:4px 8px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}
td.n,th.n{text-align:right}
tr.chosen td{background:#eef7ee;font-weight:600}
.two{display:grid;grid-template-columns:1fr 1fr;gap:16px;align-items:start}
figure{margin:8px 0}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{font-size:12.5px;color:var(--muted);text-align:center}
.note{font-size:13px;color:var(--muted)}
.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 10px;font-size:13.5px}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--soft);padding:1px 4px;
border-radius:4px;word-break:break-all}
details summary{cursor:pointer;color:var(--blue);font-size:14px}
@media (max-width:720px){.kpis{grid-template-columns:repeat(2,1fr)}.two{grid-template-columns:1fr}}
"""


def html_report(ctx: dict) -> str:
    """The whole report as one HTML page (plots as PNG data URIs, CSS inline, no scripts)."""
    from transferkit.evaluation import plots

    config, metrics = ctx["config"], ctx["metrics"]
    src, fit, data = config["source"], config["fit"], metrics.get("data", {})
    target = Path(data.get("origin", "")).name or "target"
    sections = [
        ("verdict", "Verdict", _verdict_html(metrics, plots)),
        ("data", "Data", _data_html(data)),
        ("source", "Source and why", _source_html(config, metrics, ctx["ranking"], plots)),
        ("transfer", "Transfer map", _transfer_html(metrics, ctx["transfer_map"], ctx["history"], plots, fit)),
        ("curves", "Learning curves", _curves_html(metrics, ctx["history"], plots)),
        ("errors", "Where the model fails (test split)", _errors_html(metrics, data, plots)),
    ]
    if metrics.get("wise_ft_curve"):
        sections.append(("wiseft", "WiSE-FT α", _wise_ft_html(metrics, plots)))
    sections += [("cost", "Cost", _cost_html(metrics)), ("reproduce", "Reproduce", _reproduce_html(config, metrics))]
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in sections)
    body = "\n".join(f'<section id="{sid}" class="{"verdict " + verdict_kind(metrics) if sid == "verdict" else ""}">'
                     f"<h2>{_e(title)}</h2>\n{content}</section>" for sid, title, content in sections)
    title = f"{src['id']} → {target} · {fit['strategy']}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>transferkit · {_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header>
<div class="sub">transferkit {_e(config.get("transferkit_version", ""))} run report</div>
<h1>{_e(title)}</h1>
<div class="sub">{_e(data.get("modality", ""))} · {len(data.get("classes", []))} classes · seed {_e(fit.get("seed"))}
 · run directory <code>{_e(Path(ctx.get("run_dir", ".")).resolve())}</code></div>
<nav>{nav}</nav>
</header>
{body}
</main>
</body>
</html>
"""


def _verdict_html(metrics: dict, plots) -> str:
    kind = verdict_kind(metrics)
    flag = {"helped": "Transfer helped", "tied": "Tie", "lost": "Transfer lost", "none": "No baseline"}[kind]
    sentence = verdict(metrics).replace("**Transfer lost**:", "Transfer lost:")
    acc, f1 = metrics.get("test_accuracy", 0.0), metrics.get("test_macro_f1", 0.0)
    tiles = [("test accuracy", f"{acc:.3f}"), ("test macro-F1", f"{f1:.3f}")]
    if kind != "none":
        gain = metrics["test_accuracy"] - metrics["baseline_test_accuracy"]
        tiles += [("baseline accuracy", f"{metrics['baseline_test_accuracy']:.3f}"),
                  ("gain", f'<span class="{"pos" if gain > 0 else "neg" if gain < 0 else ""}">'
                           f"{gain * 100:+.1f}</span> <small>points</small>")]
    else:
        tiles += [("train time", f"{metrics.get('train_seconds', 0):.1f} <small>s</small>"),
                  ("test examples", str(metrics.get("data", {}).get("split_sizes", {}).get("test", "-")))]
    kpis = "".join(f'<div class="kpi"><div class="k">{_e(k)}</div><div class="v">{v}</div></div>' for k, v in tiles)
    baseline = (f'<p class="note">Baseline: {_e(metrics["baseline"])}.</p>' if metrics.get("baseline") else
                '<p class="note">Train the no-transfer baseline (<code>--baseline</code>) to know whether transfer '
                "was worth it.</p>")
    advice = ""
    if kind == "lost":
        advice = ('<p class="warn">The model trained from scratch beat the transferred one on held-out data. '
                  "Try another source (<code>transferkit rank</code>), fine-tune more layers, or more epochs; "
                  "check the learning curves below for under- or over-fitting.</p>")
    return (f'<p class="headline"><span class="flag">{flag}</span>{_e(sentence)}</p>'
            f'<div class="kpis">{kpis}</div>{advice}{baseline}'
            + _figure(plots.comparison(metrics), "Test accuracy and macro-F1, transfer vs no-transfer baseline"))


def _data_html(data: dict) -> str:
    if not data:
        return '<p class="note">No data summary in metrics.json.</p>'
    classes, counts = data.get("classes", []), data.get("class_counts", {})
    splits = list(counts) or list(data.get("split_sizes", {}))
    made = "given by the data" if data.get("split_given") else "made by transferkit (stratified, seeded)"
    rows = "".join(f"<tr><td>{_e(c)}</td>" + "".join(f'<td class="n">{counts.get(s, {}).get(c, 0)}</td>'
                                                     for s in splits)
                   + f'<td class="n">{sum(counts.get(s, {}).get(c, 0) for s in splits)}</td></tr>' for c in classes)
    sizes = data.get("split_sizes", {})
    total = "<tr><th>all classes</th>" + "".join(f'<th class="n">{sizes.get(s, 0)}</th>' for s in splits) + \
        f'<th class="n">{sum(sizes.get(s, 0) for s in splits)}</th></tr>'
    table = ("<table><tr><th>class</th>" + "".join(f'<th class="n">{_e(s)}</th>' for s in splits)
             + '<th class="n">total</th></tr>' + rows + total + "</table>")
    out = (f"<p>{_e(data.get('modality', ''))} data from <code>{_e(data.get('origin', ''))}</code>: "
           f"{len(classes)} classes, splits {made}.</p>")
    body = table if len(classes) <= 15 else f"<details><summary>{len(classes)} classes</summary>{table}</details>"
    skipped = data.get("skipped") or []
    if skipped:
        items = "".join(f"<tr><td><code>{_e(s.get('file'))}</code></td><td>{_e(s.get('reason'))}</td></tr>"
                        for s in skipped[:50])
        more = f"<p class='note'>… and {len(skipped) - 50} more (see metrics.json).</p>" if len(skipped) > 50 else ""
        body += (f'<p class="warn">Preflight skipped {len(skipped)} example(s) that could not be read '
                 f"(<code>--skip-bad</code>).</p><table><tr><th>file</th><th>reason</th></tr>{items}</table>{more}")
    else:
        body += '<p class="note">Preflight skipped nothing.</p>'
    return out + body


def _source_html(config: dict, metrics: dict, ranking: dict, plots) -> str:
    src = config["source"]
    facts = [("source", f"<code>{_e(src['id'])}</code>"), ("architecture", _e(src.get("architecture") or "-")),
             ("weights", _e(src.get("weights") or "-")), ("licence", _e(src.get("license") or "not recorded")),
             ("features", f"{src.get('feature_dim', '-')}-d"),
             ("layer groups", str(len(src.get("layer_groups", []))))]
    out = "<table>" + "".join(f"<tr><th style='width:22%'>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>"
    if not ranking["rows"]:
        return out + ('<p class="note">Chosen by the user (no ranking in this run directory; '
                      "<code>transferkit rank</code> or <code>--source auto</code> records why a source was chosen)."
                      "</p>")
    chosen = ranking["facts"].get("choice") or ranking["facts"].get("chosen") or metrics.get("source")
    cols = _ranking_columns(ranking["rows"])
    facts_html = "".join(f"<li>{_e(FACT_NAMES.get(k, k))}: <b>{_e(_cell(v))}</b></li>"
                         for k, v in ranking["facts"].items())
    align = {c: "n" if any(_is_number(r.get(c)) for r in ranking["rows"]) else "" for c in cols}
    rows = "".join(f"<tr class=\"{'chosen' if r.get('source') == chosen else ''}\">"
                   + "".join(f'<td class="{align[c]}">{_e(_cell(r.get(c)))}</td>' for c in cols)
                   + "</tr>" for r in ranking["rows"])
    table = ("<table><tr>" + "".join(f'<th class="{align[c]}">{_e(c)}</th>' for c in cols)
             + f"</tr>{rows}</table>")
    chart = _figure(plots.ranking(ranking["rows"], ranking["score"], chosen) if ranking["score"] else None,
                    f"Candidate sources by {ranking['score']} (higher = better predicted transfer; "
                    "green = chosen, grey = random-init controls)")
    return out + "<h3>Why this source: ranking of the candidates</h3>" + \
        (f"<ul>{facts_html}</ul>" if facts_html else "") + table + chart


def _transfer_html(metrics: dict, transfer_map: list[dict], history: list[dict], plots, fit: dict | None = None) -> str:
    transfer = metrics.get("transfer", {})
    total = transfer.get("total_parameters", 0) or 0
    trainable = transfer.get("trainable_parameters", 0) or 0
    by_origin = transfer.get("by_origin", {})
    meaning = {"source": "copied from the source", "fresh": "freshly initialised",
               "random": "random init (no transfer)", "mixed": "source and fresh init mixed"}
    origin_rows = "".join(f"<tr><td>{_e(o)}</td><td>{_e(meaning.get(o, ''))}</td><td class='n'>{d['tensors']}</td>"
                          f"<td class='n'>{d['parameters']:,}</td></tr>" for o, d in by_origin.items())
    out = (f"<p><b>{trainable:,}</b> of {total:,} parameters trained "
           f"({trainable / total * 100 if total else 0:.1f}%); "
           f"{transfer.get('frozen_parameters', total - trainable):,} kept frozen.</p>")
    if origin_rows:
        out += ("<table><tr><th>origin</th><th>meaning</th><th class='n'>tensors</th><th class='n'>parameters</th></tr>"
                f"{origin_rows}</table>")
    groups = group_summary(transfer_map)
    if groups:
        out += _figure(plots.parameters_by_group(transfer_map),
                       "Parameters per layer group, input (top) to output (bottom)")
        rows = "".join(f"<tr><td><code>{_e(g['group'])}</code></td><td class='n'>{g['tensors']}</td>"
                       f"<td class='n'>{g['parameters']:,}</td><td class='n'>{g['trainable']:,}</td>"
                       f"<td>{_e(', '.join(map(str, g['origins'])))}</td></tr>" for g in groups)
        table = ("<table><tr><th>layer group</th><th class='n'>tensors</th><th class='n'>parameters</th>"
                 f"<th class='n'>trainable</th><th>origin</th></tr>{rows}</table>")
        out += f"<details><summary>Every layer group ({len(groups)})</summary>{table}</details>"
    lrs = stage_learning_rates(metrics, history)
    if lrs:
        rows = "".join(f"<tr><td>{_e(stage)}</td><td>{_e(lr)}</td></tr>" for stage, lr in lrs.items())
        out += ("<h3>Learning rates</h3>" + (f'<p class="note">{_e(_lr_settings(fit))}</p>' if fit else "")
                + f"<table><tr><th>stage</th><th>learning rate (per layer group when recorded)</th></tr>{rows}</table>")
    return out


def _lr_settings(fit: dict) -> str:
    parts = [f"peak lr {fit.get('lr'):g} for fine-tuning stages" if _is_number(fit.get("lr")) else "",
             f"probe_lr {fit.get('probe_lr'):g} for heads on cached features"
             if _is_number(fit.get("probe_lr")) else "",
             f"lr_decay {fit.get('lr_decay'):g} per group toward the input (layerwise_lr)"
             if fit.get("strategy") == "layerwise_lr" else ""]
    warmup = fit.get("warmup_ratio")
    tail = f"; linear warm-up over {warmup:.0%} of the steps, then cosine decay" if _is_number(warmup) else ""
    return "Set: " + ", ".join(p for p in parts if p) + tail + "."



def _curves_html(metrics: dict, history: list[dict], plots) -> str:
    stages = metrics.get("stages", [])
    out = _figure(plots.learning_curves(history),
                  "Per epoch: training loss, validation loss and validation accuracy; dashed lines separate stages")
    if stages:
        rows = "".join(f"<tr><td>{_e(s['stage'])}</td><td class='n'>{s.get('epochs_run', '-')}</td>"
                       f"<td class='n'>{s.get('best_epoch', '-')}</td>"
                       f"<td class='n'>{_num(s.get('best_val_accuracy'))}</td>"
                       f"<td class='n'>{_int(s.get('trainable_parameters'))}</td></tr>" for s in stages)
        out += ("<table><tr><th>stage</th><th class='n'>epochs run</th><th class='n'>best epoch</th>"
                f"<th class='n'>best val accuracy</th><th class='n'>trainable parameters</th></tr>{rows}</table>"
                '<p class="note">Each stage keeps the weights of its best validation epoch.</p>')
    return out


def _errors_html(metrics: dict, data: dict, plots) -> str:
    classes = data.get("classes") or list(metrics.get("test_per_class", {}))
    per_class = metrics.get("test_per_class", {})
    base = metrics.get("baseline_test_per_class")
    cm = _figure(plots.confusion_matrix(classes, metrics.get("test_confusion_matrix", [])),
                 "Confusion matrix: rows true class, columns predicted; colour = share of the row")
    bars = _figure(plots.per_class(per_class, base), "Precision, recall and F1 per class"
                   + (" (orange marks: the baseline's F1)" if base else ""))
    head = "<tr><th>class</th><th class='n'>precision</th><th class='n'>recall</th><th class='n'>F1</th>" + \
        ("<th class='n'>baseline F1</th>" if base else "") + "<th class='n'>support</th></tr>"
    worst = min(per_class, key=lambda c: per_class[c].get("f1", 0.0)) if per_class else None
    rows = "".join(
        f"<tr><td>{_e(c)}{' <span class=note>(weakest)</span>' if c == worst and len(per_class) > 1 else ''}</td>"
        f"<td class='n'>{m['precision']:.3f}</td><td class='n'>{m['recall']:.3f}</td><td class='n'>{m['f1']:.3f}</td>"
        + (f"<td class='n'>{_num(base.get(c, {}).get('f1'), 3)}</td>" if base else "")
        + f"<td class='n'>{m['support']}</td></tr>" for c, m in per_class.items())
    tasks = _tasks_html(metrics)
    return f'<div class="two">{cm}<div>{"<table>" + head + rows + "</table>" if rows else ""}</div></div>{bars}{tasks}'


def _tasks_html(metrics: dict) -> str:
    """Every task head's test metrics, for runs with several label columns."""
    tasks = metrics.get("tasks") or {}
    if len(tasks) < 2:
        return ""
    rows = "".join(f"<tr><td>{_e(name)}</td><td class='n'>{len(m.get('per_class', {}))}</td>"
                   f"<td class='n'>{_num(m.get('accuracy'))}</td><td class='n'>{_num(m.get('macro_f1'))}</td></tr>"
                   for name, m in tasks.items())
    return ("<h3>Every task head</h3><p class='note'>The plots and the verdict are for the first task; "
            "each head's test metrics:</p><table><tr><th>task</th><th class='n'>classes</th>"
            f"<th class='n'>test accuracy</th><th class='n'>test macro-F1</th></tr>{rows}</table>")


def _wise_ft_html(metrics: dict, plots) -> str:
    alpha = metrics.get("wise_ft_alpha")
    return (f"<p>Weights = (1 − α)·starting + α·fine-tuned for the shared layers; α chosen on validation: "
            f"<b>{_e(alpha)}</b>.</p>"
            + _figure(plots.wise_ft_curve(metrics["wise_ft_curve"], alpha), "Validation accuracy against α"))


def _cost_html(metrics: dict) -> str:
    rows = [("transfer training (wall time)", f"{metrics.get('train_seconds', 0):.1f} s")]
    if "baseline_seconds" in metrics:
        rows.append(("no-transfer baseline (wall time)", f"{metrics['baseline_seconds']:.1f} s"))
    if "peak_memory_mb" in metrics:
        rows.append(("peak memory (process RSS)", f"{metrics['peak_memory_mb']:,.0f} MB"))
    if "peak_gpu_memory_mb" in metrics:
        rows.append(("peak accelerator memory", f"{metrics['peak_gpu_memory_mb']:,.0f} MB"))
    out = "<table>" + "".join(f"<tr><th style='width:40%'>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + \
        "</table>"
    stages = metrics.get("stages", [])
    if stages:
        body = "".join(f"<tr><td>{_e(s['stage'])}</td><td class='n'>{_num(s.get('seconds'), 1)}</td>"
                       f"<td class='n'>{_num(s.get('examples_per_second'), 1)}</td></tr>" for s in stages)
        out += ("<table><tr><th>stage</th><th class='n'>seconds</th><th class='n'>examples/s</th></tr>"
                f"{body}</table>")
    return out


def _reproduce_html(config: dict, metrics: dict) -> str:
    fit, data = config["fit"], metrics.get("data", {})
    command = reproduce_command(config, data.get("origin", "DATA"))
    versions = ", ".join(f"{k} {v}" for k, v in config.get("versions", {}).items())
    options = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_e(json.dumps(v))}</td></tr>" for k, v in fit.items())
    return (f"<p><code>{_e(command.strip())}</code></p><p class='note'>{_e(versions)}</p>"
            f"<details><summary>Every option</summary><table>{options}</table></details>")


def reproduce_command(config: dict, data: str = "DATA") -> str:
    """The ``transferkit fit`` command that rebuilds a run's options (``config.json``'s ``fit``)."""
    import shlex

    from transferkit.config import cli_args

    return shlex.join(["transferkit", "fit", str(data), "--source", config["source"]["id"],
                       *cli_args(config["fit"])])


def _figure(png: bytes | None, caption: str) -> str:
    if not png:
        return ""
    width, height = struct.unpack(">II", png[16:24])
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
            f'alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>')


def _ranking_columns(rows: list[dict]) -> list[str]:
    """rank, source, the scores, short-run accuracy, seconds, notes (bookkeeping columns left out)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols and k not in RANKING_HIDDEN]
    head = [c for c in ("rank", "source") if c in cols]
    tail = [c for c in (SHORT_RUN, "seconds", "notes") if c in cols]
    return head + [c for c in cols if c not in head and c not in tail] + tail


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "; ".join(map(str, value))
    return "-" if value is None else str(value)


def _num(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _is_number(value) else "-"


def _int(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _e(value) -> str:
    return html.escape(str(value), quote=True)
