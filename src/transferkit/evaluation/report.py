"""The run report: ``report.md`` written from the run directory's JSON files."""

from __future__ import annotations

from pathlib import Path

from transferkit._io import read_json


def write_report(run_dir: Path) -> Path:
    """Writes ``report.md`` in ``run_dir`` and returns its path."""
    run_dir = Path(run_dir)
    config, metrics = read_json(run_dir / "config.json"), read_json(run_dir / "metrics.json")
    path = run_dir / "report.md"
    path.write_text("\n".join(markdown_report(config, metrics)) + "\n")
    return path


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


def markdown_report(config: dict, metrics: dict) -> list[str]:
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
        "## Data",
        "",
        f"Modality {data.get('modality')}, {len(data.get('classes', []))} classes, "
        f"splits {data.get('split_sizes')} ({'given' if data.get('split_given') else 'made by transferkit, stratified'}).",
    ]
    if data.get("skipped"):
        lines += ["", f"Skipped {len(data['skipped'])} bad example(s):"]
        lines += [f"- `{s['file']}`: {s['reason']}" for s in data["skipped"][:20]]
    transfer = metrics.get("transfer", {})
    lines += [
        "", "## Source and transfer map", "",
        f"Source `{src['id']}`: {src.get('architecture')}, weights {src.get('weights')}, licence {src.get('license')}; "
        f"{src['feature_dim']}-d features. Strategy `{fit['strategy']}`, seed {fit['seed']}.",
        "",
        "| origin | tensors | parameters |", "|---|---|---|",
        *[f"| {o} | {d['tensors']} | {d['parameters']:,} |" for o, d in transfer.get("by_origin", {}).items()],
        "",
        f"Trainable parameters: {transfer.get('trainable_parameters', 0):,} of {transfer.get('total_parameters', 0):,}.",
        "", "## Stages", "",
        "| stage | epochs | best epoch | best val acc | trainable | seconds | examples/s |", "|---|---|---|---|---|---|---|",
        *[f"| {s['stage']} | {s['epochs_run']} | {s['best_epoch']} | {s['best_val_accuracy']:.4f} | "
          f"{s['trainable_parameters']:,} | {s['seconds']:.1f} | {s['examples_per_second']:.1f} |"
          for s in metrics.get("stages", [])],
        "", "## Per class (test)", "",
        "| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
        *[f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
          for c, m in metrics.get("test_per_class", {}).items()],
        "", "## Confusion matrix (test; rows true, columns predicted)", "",
        *_confusion_lines(data.get("classes", []), metrics.get("test_confusion_matrix", [])),
        "", "## Cost", "",
        f"Training {metrics['train_seconds']:.1f} s, peak memory {metrics.get('peak_memory_mb', 0):.0f} MB.",
    ]
    return lines


def _confusion_lines(classes: list[str], matrix: list[list[int]]) -> list[str]:
    if not matrix:
        return []
    head = "| true \\ pred | " + " | ".join(classes) + " |"
    rule = "|---" * (len(classes) + 1) + "|"
    return [head, rule, *[f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(classes, matrix)]]


def _get(metrics: dict, key: str, fmt: str = ".4f") -> str:
    return format(metrics[key], fmt) if key in metrics else "-"
