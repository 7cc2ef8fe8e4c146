"""The sections of ``report.html``: each a function of the run's context that returns HTML.

The facts come from ``facts.py`` (the ones ``report.md`` shows too); the plots from
``evaluation.plots``, embedded as PNG data URIs. Every name and value is escaped here.
"""

from __future__ import annotations

import base64
import json
import struct

from transferkit.evaluation import plots

from .cells import esc, is_number, num
from .context import baselines, reproduce_command, transfer_gain, verdict, verdict_kind
from .facts import (
    calibration_rows,
    calibration_summary,
    class_count_table,
    class_gain_rows,
    example_name,
    gain_baselines,
    gain_summary,
    group_rows,
    headline_rows,
    most_confused,
    per_class_rows,
    recipe_rows,
    stage_learning_rates,
    stage_rows,
    task_rows,
    top_loss_rows,
    transfer_summary,
)
from .ranking import ROUND_COLUMNS, ranking_table

FLAGS = {"helped": "Transfer helped", "tied": "Tie", "lost": "Transfer lost", "none": "No baseline"}
#: Side of the box a worst-example thumbnail is drawn in on the page, in CSS pixels (small images are
#: drawn at a whole multiple of their size, with sharp pixels).
THUMB_BOX = 96
ORIGINS = {"source": "copied from the source", "fresh": "freshly initialised",
           "random": "random init (no transfer)", "mixed": "source and fresh init mixed"}


def page_sections(ctx: dict) -> list[tuple[str, str, str]]:
    """(id, title, HTML) per section, in page order; WiSE-FT only where the run chose an α; the
    per-class gain, worst examples and calibration only where ``metrics.json`` holds what they show."""
    config, metrics, history = ctx["config"], ctx["metrics"], ctx["history"]
    data = metrics.get("data", {})
    sections = [
        ("verdict", "Verdict", verdict_section(metrics)),
        ("data", "Data", data_section(data)),
        ("source", "Source and why", source_section(config, metrics, ctx["ranking"])),
        ("transfer", "Transfer map", transfer_section(metrics, ctx["transfer_map"], history, config["fit"])),
        ("curves", "Learning curves", curves_section(metrics, history)),
        ("errors", "Where the model fails (test split)", errors_section(metrics, data)),
    ]
    if class_gain_rows(metrics)[1]:
        sections.append(("gain", "Per-class gain over the baseline", gain_section(metrics)))
    if metrics.get("test_top_losses"):
        sections.append(("examples", "Test examples it gets most wrong", examples_section(metrics, data)))
    if calibration_summary(metrics):
        sections.append(("calibration", "Calibration", calibration_section(metrics)))
    if metrics.get("wise_ft_curve"):
        sections.append(("wiseft", "WiSE-FT α", wise_ft_section(metrics)))
    return sections + [("cost", "Cost", cost_section(metrics)),
                       ("reproduce", "Reproduce", reproduce_section(config, metrics))]


# -- building blocks ---------------------------------------------------------------------------


def figure(png: bytes | None, caption: str) -> str:
    """A PNG as an inline ``<figure>`` at its own size; nothing when there is no plot."""
    if not png:
        return ""
    width, height = struct.unpack(">II", png[16:24])
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
            f'alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>')


def _cells(tag: str, cells: list[str], numeric) -> str:
    return "".join(f'<{tag} class="n">{c}</{tag}>' if i in numeric else f"<{tag}>{c}</{tag}>"
                   for i, c in enumerate(cells))


def table(head: list[str], rows: list[list[str]], numeric=(), foot: list[str] | None = None,
          marked: list[bool] | None = None) -> str:
    """A table of HTML cells: columns whose index is in ``numeric`` align right; ``foot`` is a
    closing row of header cells; rows where ``marked`` is true are highlighted (``tr.chosen``)."""
    marked = marked or [False] * len(rows)
    body = "".join(('<tr class="chosen">' if m else "<tr>") + _cells("td", r, numeric) + "</tr>"
                   for r, m in zip(rows, marked, strict=True))
    closing = f"<tr>{_cells('th', foot, numeric)}</tr>" if foot else ""
    return f"<table><tr>{_cells('th', head, numeric)}</tr>{body}{closing}</table>"


def key_values(pairs: list[tuple[str, str]], width: str) -> str:
    """A two-column table of names (escaped here) and HTML values."""
    return "<table>" + "".join(f"<tr><th style='width:{width}'>{esc(k)}</th><td>{v}</td></tr>"
                               for k, v in pairs) + "</table>"


# -- the sections ------------------------------------------------------------------------------


def verdict_section(metrics: dict) -> str:
    kind = verdict_kind(metrics)
    sentence = verdict(metrics).replace("**Transfer lost**:", "Transfer lost:")
    kpis = "".join(f'<div class="kpi"><div class="k">{esc(k)}</div><div class="v">{v}</div></div>'
                   for k, v in _verdict_tiles(metrics))
    trained = baselines(metrics)
    baseline = ("".join(f'<p class="note">{esc(label[0].upper() + label[1:])}: {esc(text)}.</p>'
                        for _, label, text in trained) if trained else
                '<p class="note">Train a no-transfer baseline (<code>--baseline classical</code>, <code>scratch</code> '
                "or <code>both</code>) to know whether transfer was worth it.</p>")
    if "scratch_baseline_test_accuracy" in metrics:
        scratch = metrics["test_accuracy"] - metrics["scratch_baseline_test_accuracy"]
        baseline += (f'<p class="note">Against the scratch baseline: {scratch * 100:+.1f} points of test '
                     "accuracy.</p>")
    advice = ""
    if kind == "lost":
        advice = ('<p class="warn">The no-transfer baseline beat the transferred model on held-out data. '
                  "Try another source (<code>transferkit rank</code>), fine-tune more layers, or more epochs; "
                  "check the learning curves below for under- or over-fitting.</p>")
    return (f'<p class="headline"><span class="flag">{FLAGS[kind]}</span>{esc(sentence)}</p>'
            f'<div class="kpis">{kpis}</div>{advice}{baseline}'
            + figure(plots.comparison(metrics), "Test accuracy and macro-F1, transfer vs no-transfer baseline"))


def _verdict_tiles(metrics: dict) -> list[tuple[str, str]]:
    rows, gain = headline_rows(metrics), transfer_gain(metrics)
    accuracy = rows["test_accuracy"]
    tiles = [("test accuracy", f"{accuracy.transfer:.3f}"), ("test macro-F1", f"{rows['test_macro_f1'].transfer:.3f}")]
    if gain is None:
        test = metrics.get("data", {}).get("split_sizes", {}).get("test", "-")
        return tiles + [("train time", f"{rows['train_seconds'].transfer:.1f} <small>s</small>"),
                        ("test examples", str(test))]
    sign = "pos" if gain > 0 else "neg" if gain < 0 else ""
    return tiles + [("baseline accuracy", f"{accuracy.baseline:.3f}"),
                    ("gain", f'<span class="{sign}">{gain * 100:+.1f}</span> <small>points</small>')]


def data_section(data: dict) -> str:
    if not data:
        return '<p class="note">No data summary in metrics.json.</p>'
    classes, sizes = data.get("classes", []), data.get("split_sizes", {})
    splits, counts = class_count_table(data)
    made = "given by the data" if data.get("split_given") else "made by transferkit (stratified, seeded)"
    numeric = range(1, len(splits) + 2)
    rows = [[esc(c), *map(str, n), str(sum(n))] for c, n in counts]
    foot = ["all classes", *(str(sizes.get(s, 0)) for s in splits), str(sum(sizes.get(s, 0) for s in splits))]
    counts_table = table(["class", *map(esc, splits), "total"], rows, numeric, foot=foot)
    out = (f"<p>{esc(data.get('modality', ''))} data from <code>{esc(data.get('origin', ''))}</code>: "
           f"{len(classes)} classes, splits {made}.</p>")
    if len(classes) > 15:
        counts_table = f"<details><summary>{len(classes)} classes</summary>{counts_table}</details>"
    return out + counts_table + _skipped(data.get("skipped") or [])


def _skipped(skipped: list[dict]) -> str:
    if not skipped:
        return '<p class="note">Preflight skipped nothing.</p>'
    rows = [[f"<code>{esc(s.get('file'))}</code>", esc(s.get("reason"))] for s in skipped[:50]]
    more = f"<p class='note'>… and {len(skipped) - 50} more (see metrics.json).</p>" if len(skipped) > 50 else ""
    return (f'<p class="warn">Preflight skipped {len(skipped)} example(s) that could not be read '
            f"(<code>--skip-bad</code>).</p>" + table(["file", "reason"], rows) + more)


def source_section(config: dict, metrics: dict, ranking: dict) -> str:
    src = config["source"]
    out = key_values([("source", f"<code>{esc(src['id'])}</code>"),
                      ("architecture", esc(src.get("architecture") or "-")),
                      ("weights", esc(src.get("weights") or "-")),
                      ("licence", esc(src.get("license") or "not recorded")),
                      ("features", f"{src.get('feature_dim', '-')}-d"),
                      ("layer groups", str(len(src.get("layer_groups", []))))], "22%")
    if not ranking["rows"]:
        return out + ('<p class="note">Chosen by the user (no ranking in this run directory; '
                      "<code>transferkit rank</code> or <code>--source auto</code> records why a source was chosen)."
                      "</p>")
    return out + _ranking(metrics, ranking)


def _ranking(metrics: dict, ranking: dict) -> str:
    chosen = ranking["facts"].get("choice") or ranking["facts"].get("chosen") or metrics.get("source")
    found = ranking_table(ranking)
    facts = "".join(f"<li>{esc(name)}: <b>{esc(value)}</b></li>" for name, value in found.facts)
    numeric = {i for i, n in enumerate(found.numeric) if n}
    rows = table(list(map(esc, found.columns)), [list(map(esc, r)) for r in found.rows], numeric,
                 marked=[r.get("source") == chosen for r in ranking["rows"]])
    chart = figure(plots.ranking(ranking["rows"], ranking["score"], chosen) if ranking["score"] else None,
                   f"Candidate sources by {ranking['score']} (higher = better predicted transfer; "
                   "green = chosen, grey = random-init controls)")
    rounds = ("<h3>Short fine-tunes (successive halving on validation)</h3>"
              + table(ROUND_COLUMNS, [list(map(esc, r)) for r in ranking["rounds"]], {2, 3, 4})
              if ranking.get("rounds") else "")
    return ("<h3>Why this source: ranking of the candidates</h3>" + (f"<ul>{facts}</ul>" if facts else "")
            + rows + chart + rounds)


def transfer_section(metrics: dict, transfer_map: list[dict], history: list[dict], fit: dict | None = None) -> str:
    transfer = transfer_summary(metrics)
    share = transfer.trainable / transfer.total * 100 if transfer.total else 0
    out = (f"<p><b>{transfer.trainable:,}</b> of {transfer.total:,} parameters trained ({share:.1f}%); "
           f"{transfer.frozen:,} kept frozen.</p>")
    if transfer.origins:
        out += table(["origin", "meaning", "tensors", "parameters"],
                     [[esc(o), esc(ORIGINS.get(o, "")), str(t), f"{p:,}"] for o, t, p in transfer.origins], {2, 3})
    groups = group_rows(transfer_map)
    if groups:
        out += figure(plots.parameters_by_group(transfer_map),
                      "Parameters per layer group, input (top) to output (bottom)")
        rows = [[f"<code>{esc(group)}</code>", tensors, parameters, trainable, esc(origins)]
                for group, tensors, parameters, trainable, origins in groups]
        out += (f"<details><summary>Every layer group ({len(groups)})</summary>"
                + table(["layer group", "tensors", "parameters", "trainable", "origin"], rows, {1, 2, 3})
                + "</details>")
    recipe = recipe_rows(metrics)
    if recipe:
        out += "<h3>Schedule</h3>" + key_values([(k, esc(v)) for k, v in recipe], "35%")
    lrs = stage_learning_rates(metrics, history)
    if lrs:
        out += ("<h3>Learning rates</h3>" + (f'<p class="note">{esc(_lr_settings(fit))}</p>' if fit else "")
                + table(["stage", "learning rate (per layer group when recorded)"],
                        [[esc(stage), esc(lr)] for stage, lr in lrs.items()]))
    return out


def _lr_settings(fit: dict) -> str:
    parts = [f"peak lr {fit.get('lr'):g} for fine-tuning stages" if is_number(fit.get("lr")) else "",
             f"probe_lr {fit.get('probe_lr'):g} for heads with a hidden layer on cached features"
             if is_number(fit.get("probe_lr")) else "",
             f"lr_decay {fit.get('lr_decay'):g} per group toward the input (layerwise_lr)"
             if fit.get("strategy") == "layerwise_lr" else ""]
    warmup = fit.get("warmup_ratio")
    tail = f"; linear warm-up over {warmup:.0%} of the steps, then cosine decay" if is_number(warmup) else ""
    return "Set: " + ", ".join(p for p in parts if p) + tail + "."


def curves_section(metrics: dict, history: list[dict]) -> str:
    out = figure(plots.learning_curves(history),
                 "Per epoch: training loss, validation loss and validation accuracy; dashed lines separate stages")
    stages = stage_rows(metrics, history)
    if stages:
        rows = [[esc(s["stage"]), s["epochs"], s["best_epoch"], s["best_val"], s["trainable"]] for s in stages]
        out += (table(["stage", "epochs run", "best epoch", "best val accuracy", "trainable parameters"], rows,
                      {1, 2, 3, 4})
                + '<p class="note">Each stage keeps the weights of its best validation epoch.</p>')
    return out


def errors_section(metrics: dict, data: dict) -> str:
    per_class = metrics.get("test_per_class", {})
    classes = data.get("classes") or list(per_class)
    base = metrics.get("baseline_test_per_class")
    cm = figure(plots.confusion_matrix(classes, metrics.get("test_confusion_matrix", [])),
                "Confusion matrix: rows true class, columns predicted; colour = share of the row")
    bars = figure(plots.per_class(per_class, base), "Precision, recall and F1 per class"
                  + (" (orange marks: the baseline's F1)" if base else ""))
    worst = min(per_class, key=lambda c: per_class[c].get("f1", 0.0)) if len(per_class) > 1 else None
    rows = []
    for name, precision, recall, f1, support in per_class_rows(metrics):
        weakest = " <span class=note>(weakest)</span>" if name == worst else ""
        baseline = [num(base.get(name, {}).get("f1"), 3)] if base else []
        rows.append([esc(name) + weakest, precision, recall, f1, *baseline, support])
    head = ["class", "precision", "recall", "F1", *(["baseline F1"] if base else []), "support"]
    scores = table(head, rows, range(1, len(head))) if rows else ""
    return f'<div class="two">{cm}<div>{scores}</div></div>{bars}{tasks_section(metrics)}'


def gain_section(metrics: dict) -> str:
    columns, rows, _ = class_gain_rows(metrics)
    found = gain_baselines(metrics)
    chart = figure(plots.class_gain(metrics.get("test_per_class") or {}, {short: pc for short, _, pc in found}),
                   "Per class: transfer's test recall minus the baseline's, in points"
                   + (" (plain bars: " + found[0][0] + "; hatched: " + ", ".join(f[0] for f in found[1:]) + ")"
                      if len(found) > 1 else ""))
    cells = []
    for row in rows:
        marked = [esc(row[0]), *row[1:]]
        for i, column in enumerate(columns):
            if column.startswith("Δ") and row[i] != "-" and abs(float(row[i])) >= 0.05:
                marked[i] = f'<span class="{"pos" if float(row[i]) > 0 else "neg"}">{row[i]}</span>'
        cells.append(marked)
    scores = table(list(map(esc, columns)), cells, range(1, len(columns)))
    if len(rows) > 15:
        scores = f"<details><summary>Every class ({len(rows)})</summary>{scores}</details>"
    return (f"<p>{esc(gain_summary(metrics))}</p>" + chart + scores
            + '<p class="note">Recall is the accuracy on a class\'s test examples; Δ is transfer minus baseline, '
              "in points. Few test examples per class make these differences noisy: read the support column.</p>")


def examples_section(metrics: dict, data: dict) -> str:
    """The worst test examples (highest loss), as thumbnails for images and a table otherwise."""
    worst = [r for r in metrics.get("test_top_losses") or [] if isinstance(r, dict)]
    origin = str(data.get("origin", "") or "")
    intro = (f"<p>The {len(worst)} test examples with the highest loss (the lowest probability of their true class), "
             "worst first, as fastai's plot_top_losses shows them.</p>")
    if data.get("modality") == "image":
        thumbs = _thumbnails(worst)
        cards = "".join(_card(r, example_name(r, origin), thumbs.get(i)) for i, r in enumerate(worst))
        body = f'<div class="worst">{cards}</div>'
        if len(thumbs) < len(worst):
            body += (f'<p class="note">{len(worst) - len(thumbs)} image(s) could not be read when this report was '
                     "written (moved or deleted data): their names are shown alone.</p>")
    else:
        rows = [[r[0], f"<code>{esc(r[1])}</code>" if worst[i].get("file") else esc(r[1]), esc(r[2]), esc(r[3]),
                 *r[4:]] for i, r in enumerate(top_loss_rows(metrics))]
        body = table(["#", "example", "true", "predicted", "p(predicted)", "p(true)", "loss"], rows, {0, 4, 5, 6})
    confused = most_confused(data.get("classes", []), metrics.get("test_confusion_matrix", []))
    if confused:
        pairs = "".join(f"<li>{esc(t)} → {esc(p)}: <b>{n}</b></li>" for t, p, n in confused)
        body += f"<h3>Most confused (true → predicted, test examples)</h3><ul>{pairs}</ul>"
    return intro + body


def _thumbnails(worst: list[dict]) -> dict[int, bytes]:
    from .thumbnails import thumbnail

    found = {i: thumbnail(str(r["file"])) for i, r in enumerate(worst) if r.get("file")}
    return {i: png for i, png in found.items() if png}


def _card(row: dict, name: str, png: bytes | None) -> str:
    image = ""
    if png:
        width, height = struct.unpack(">II", png[16:24])
        scale = max(1, THUMB_BOX // max(width, height, 1))  # small images drawn 2x, 3x ... with sharp pixels
        data = base64.b64encode(png).decode("ascii")
        pixelated = ' style="image-rendering:pixelated"' if scale > 1 else ""
        image = (f'<img class="thumb" src="data:image/png;base64,{data}" width="{round(width * scale)}" '
                 f'height="{round(height * scale)}" alt="{esc(name)}"{pixelated}>')
    verdict = "right" if row.get("correct") else "wrong"
    return (f'<div class="case {verdict}">{image}<div class="what">predicted <b>{esc(row.get("predicted"))}</b> '
            f'{num(row.get("p_predicted"), 2)}<br>true <b>{esc(row.get("true"))}</b> {num(row.get("p_true"), 2)}'
            f'<br><span class="note">loss {num(row.get("loss"), 2)}</span></div>'
            f'<div class="name">{esc(name)}</div></div>')


def calibration_section(metrics: dict) -> str:
    rows = calibration_rows(metrics)
    return (f"<p>{esc(calibration_summary(metrics))}</p>"
            + figure(plots.reliability(metrics.get("test_calibration") or {}),
                     "Reliability diagram (test): bars at the diagonal mean the predicted probabilities can be taken "
                     "at face value; red: the gap between confidence and accuracy")
            + f"<details><summary>Every bin ({len(rows)} not empty)</summary>"
            + table(["confidence", "examples", "mean confidence", "accuracy", "accuracy − confidence (points)"],
                    rows, {1, 2, 3, 4}) + "</details>")


def tasks_section(metrics: dict) -> str:
    """Every task head's test metrics, for runs with several label columns."""
    rows = task_rows(metrics)
    if not rows:
        return ""
    return ("<h3>Every task head</h3><p class='note'>The plots and the verdict are for the first task; "
            "each head's test metrics:</p>"
            + table(["task", "classes", "test accuracy", "test macro-F1"],
                    [[esc(name), *cells] for name, *cells in rows], {1, 2, 3}))


def wise_ft_section(metrics: dict) -> str:
    alpha = metrics.get("wise_ft_alpha")
    return (f"<p>Weights = (1 − α)·starting + α·fine-tuned for the shared layers; α chosen on validation: "
            f"<b>{esc(alpha)}</b>.</p>"
            + figure(plots.wise_ft_curve(metrics["wise_ft_curve"], alpha), "Validation accuracy against α"))


def cost_section(metrics: dict) -> str:
    rows = [("transfer training (wall time)", f"{metrics.get('train_seconds', 0):.1f} s")]
    for prefix, label, _ in baselines(metrics):
        if f"{prefix}_seconds" in metrics:
            rows.append((f"{label} (wall time)", f"{metrics[prefix + '_seconds']:.1f} s"))
    if "peak_memory_mb" in metrics:
        rows.append(("peak memory (process RSS)", f"{metrics['peak_memory_mb']:,.0f} MB"))
    if "peak_gpu_memory_mb" in metrics:
        rows.append(("peak accelerator memory", f"{metrics['peak_gpu_memory_mb']:,.0f} MB"))
    out = key_values([(k, esc(v)) for k, v in rows], "40%")
    stages = stage_rows(metrics, [])
    if stages:
        out += table(["stage", "seconds", "examples/s"], [[esc(s["stage"]), s["seconds"], s["rate"]] for s in stages],
                     {1, 2})
    return out


def reproduce_section(config: dict, metrics: dict) -> str:
    command = reproduce_command(config, metrics.get("data", {}).get("origin", "DATA"))
    versions = ", ".join(f"{k} {v}" for k, v in config.get("versions", {}).items())
    options = "".join(f"<tr><td><code>{esc(k)}</code></td><td>{esc(json.dumps(v))}</td></tr>"
                      for k, v in config["fit"].items())
    return (f"<p><code>{esc(command.strip())}</code></p><p class='note'>{esc(versions)}</p>"
            f"<details><summary>Every option</summary><table>{options}</table></details>")
