"""``report.md``: the run report as Markdown, for terminals and diffs (the plots are in the HTML)."""

from __future__ import annotations

from pathlib import Path

from .context import baselines, verdict
from .facts import (
    calibration_rows,
    calibration_summary,
    class_count_table,
    class_gain_rows,
    gain_summary,
    group_rows,
    headline_rows,
    most_confused,
    per_class_rows,
    recipe_rows,
    stage_rows,
    task_rows,
    top_loss_rows,
    transfer_summary,
)
from .ranking import ROUND_COLUMNS, ranking_table


def markdown_report(config: dict, metrics: dict, ctx: dict | None = None) -> list[str]:
    """The report as Markdown lines (``ctx`` adds history, transfer map and ranking sections)."""
    ctx = ctx or {}
    data = metrics.get("data", {})
    return [*_headline(config, metrics), *_data(data), *_selection(ctx.get("ranking") or {"rows": []}),
            *_transfer(config, metrics, ctx.get("transfer_map", [])), *_recipe(metrics), *_stages(metrics, ctx.get("history", [])),
            *_wise_ft(metrics), *_tasks(metrics), *_per_class(metrics), *_confusion(data, metrics),
            *_gain(metrics), *_worst_examples(data, metrics), *_calibration(metrics), *_cost(metrics)]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """A header (a blank column name leaves its cell empty: ``| |``), the rule, then ``rows``."""
    head = "|" + "".join(f" {c} |" if c else " |" for c in columns) if columns else _row([])
    return [head, "|---" * len(columns) + "|", *map(_row, rows)]


def _headline(config: dict, metrics: dict) -> list[str]:
    target = Path(metrics.get("data", {}).get("origin", "")).name or "target"
    both = "scratch_baseline_test_accuracy" in metrics
    rows = [[r.label, f"{r.transfer:.{r.digits}f}", "-" if r.baseline is None else f"{r.baseline:.{r.digits}f}",
             *(["-" if r.scratch is None else f"{r.scratch:.{r.digits}f}"] if both else [])]
            for r in headline_rows(metrics).values()]
    named = [f"{label[0].upper()}{label[1:]}: {text}." for _, label, text in baselines(metrics)] or ["Baseline: none."]
    return [f"# transferkit run: {config['source']['id']} -> {target}", "", verdict(metrics), "",
            *_table(["", "transfer", "no-transfer baseline", *(["scratch baseline"] if both else [])], rows), "",
            *named, "",
            "Plots (learning curves, confusion matrix, per-class metrics, reliability diagram): `report.html` in "
            "this directory."]


def _data(data: dict) -> list[str]:
    lines = ["", "## Data", "",
             (f"Modality {data.get('modality')}, {len(data.get('classes', []))} classes, "
             f"splits {data.get('split_sizes')} "
             f"({'given' if data.get('split_given') else 'made by transferkit, stratified'}).")]
    if data.get("class_counts"):
        splits, counts = class_count_table(data)
        lines += ["", *_table(["class", *splits], [[c, *map(str, n)] for c, n in counts])]
    if data.get("skipped"):
        lines += ["", f"Skipped {len(data['skipped'])} bad example(s):"]
        lines += [f"- `{s['file']}`: {s['reason']}" for s in data["skipped"][:20]]
    return lines


def _selection(ranking: dict) -> list[str]:
    if not ranking["rows"]:
        return []
    table = ranking_table(ranking)
    lines = ["", "## Source selection", "", *[f"- {name}: {value}" for name, value in table.facts]]
    lines += ([""] if table.facts else []) + _table(table.columns, table.rows)
    if ranking.get("rounds"):
        lines += ["", "Short fine-tunes (successive halving on validation):", "",
                  *_table(ROUND_COLUMNS, ranking["rounds"])]
    return lines


def _transfer(config: dict, metrics: dict, transfer_map: list[dict]) -> list[str]:
    src, fit = config["source"], config["fit"]
    transfer = transfer_summary(metrics)
    lines = ["", "## Source and transfer map", "",
             (f"Source `{src['id']}`: {src.get('architecture')}, weights {src.get('weights')}, "
             f"licence {src.get('license')}; {src['feature_dim']}-d features. "
             f"Strategy `{fit['strategy']}`, seed {fit['seed']}."), "",
             *_table(["origin", "tensors", "parameters"], [[o, str(t), f"{p:,}"] for o, t, p in transfer.origins]),
             "", f"Trainable parameters: {transfer.trainable:,} of {transfer.total:,}."]
    groups = group_rows(transfer_map)
    if groups:
        lines += ["", *_table(["layer group", "tensors", "parameters", "trainable", "origin"], groups)]
    return lines


def _recipe(metrics: dict) -> list[str]:
    rows = recipe_rows(metrics)
    return ["", "## Schedule", "", *_table(["", "value"], [list(r) for r in rows])] if rows else []


def _stages(metrics: dict, history: list[dict]) -> list[str]:
    keys = ("stage", "epochs", "best_epoch", "best_val", "trainable", "lr", "seconds", "rate")
    columns = ["stage", "epochs", "best epoch", "best val acc", "trainable", "learning rate", "seconds",
               "examples/s"]
    return ["", "## Stages", "", *_table(columns, [[s[k] for k in keys] for s in stage_rows(metrics, history)])]


def _wise_ft(metrics: dict) -> list[str]:
    if not metrics.get("wise_ft_curve"):
        return []
    curve = [[f"{a:g}", f"{s:.4f}"] for a, s in metrics["wise_ft_curve"]]
    chosen = f"Chosen α = {metrics.get('wise_ft_alpha')} (0 = starting weights, 1 = fine-tuned)."
    return ["", "## WiSE-FT", "", chosen, "", *_table(["α", "val accuracy"], curve)]


def _tasks(metrics: dict) -> list[str]:
    rows = [[name, accuracy, f1] for name, _, accuracy, f1 in task_rows(metrics)]
    return ["", "## Task heads (test)", "", *_table(["task", "accuracy", "macro-F1"], rows)] if rows else []


def _per_class(metrics: dict) -> list[str]:
    return ["", "## Per class (test)", "",
            *_table(["class", "precision", "recall", "F1", "support"], per_class_rows(metrics))]


def _confusion(data: dict, metrics: dict) -> list[str]:
    classes, matrix = data.get("classes", []), metrics.get("test_confusion_matrix", [])
    lines = ["", "## Confusion matrix (test; rows true, columns predicted)", ""]
    if not matrix:
        return lines
    return lines + [f"| true \\ pred | {' | '.join(classes)} |", "|---" * (len(classes) + 1) + "|",
                    *[f"| {c} | {' | '.join(map(str, row))} |" for c, row in zip(classes, matrix, strict=False)]]


def _gain(metrics: dict) -> list[str]:
    columns, rows, _ = class_gain_rows(metrics)
    if not rows:
        return []
    return ["", "## Per-class gain over the baseline (test recall)", "", gain_summary(metrics), "",
            *_table(columns, rows), "", "Δ in points: transfer minus baseline (recall is the accuracy on that class)."]


def _worst_examples(data: dict, metrics: dict) -> list[str]:
    rows = top_loss_rows(metrics)
    if not rows:
        return []
    lines = ["", "## Test examples it gets most wrong", "",
             f"The {len(rows)} test examples with the highest loss (lowest probability of their true class), "
             "worst first:",
             "", *_table(["#", "example", "true", "predicted", "p(predicted)", "p(true)", "loss"],
                         [[_md_text(c) for c in r] for r in rows])]
    confused = most_confused(data.get("classes", []), metrics.get("test_confusion_matrix", []))
    if confused:
        lines += ["", "Most confused (true → predicted, test examples): "
                  + "; ".join(f"{_md_text(t)} → {_md_text(p)} ({n})" for t, p, n in confused) + "."]
    return lines


def _md_text(text: str) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, one line)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _calibration(metrics: dict) -> list[str]:
    summary = calibration_summary(metrics)
    if not summary:
        return []
    return ["", "## Calibration (test)", "", summary, "",
            *_table(["confidence", "examples", "mean confidence", "accuracy", "accuracy − confidence (points)"],
                    calibration_rows(metrics))]


def _cost(metrics: dict) -> list[str]:
    baseline = "".join(f", {label.removeprefix('no-transfer ')} {metrics[prefix + '_seconds']:.1f} s"
                       for prefix, label, _ in baselines(metrics) if prefix + "_seconds" in metrics)
    return ["", "## Cost", "", (f"Training {metrics['train_seconds']:.1f} s{baseline}, "
            f"peak memory {metrics.get('peak_memory_mb', 0):.0f} MB.")]
