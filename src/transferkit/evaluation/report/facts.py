"""The facts both reports show, derived once: ``markdown.py`` and ``sections.py`` only lay them out.

Each function takes what a run directory stores (``metrics``, ``history``, ``transfer_map``) and
returns plain values or the text of table cells.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .cells import count, is_number, num
from .context import baselines

#: The headline numbers: (label, metric, the baseline's metric, decimals).
HEADLINE = (("test accuracy", "test_accuracy", "baseline_test_accuracy", 4),
            ("test macro-F1", "test_macro_f1", "baseline_test_macro_f1", 4),
            ("seconds", "train_seconds", "baseline_seconds", 1))


class HeadlineRow(NamedTuple):
    label: str
    transfer: float
    baseline: float | None  # None: no baseline was trained
    digits: int
    scratch: float | None = None  # the scratch baseline's, next to the classical one (``--baseline both``)


def headline_rows(metrics: dict) -> dict[str, HeadlineRow]:
    """Transfer against its no-transfer baseline(s), by metric name (``test_accuracy``, ...)."""
    return {ours: HeadlineRow(label, metrics[ours], metrics.get(theirs), digits, metrics.get("scratch_" + theirs))
            for label, ours, theirs, digits in HEADLINE}


def class_count_table(data: dict) -> tuple[list[str], list[tuple[str, list[int]]]]:
    """The splits, and per class its number of examples in each split."""
    counts = data.get("class_counts", {})
    splits = list(counts) or list(data.get("split_sizes", {}))
    return splits, [(c, [counts.get(s, {}).get(c, 0) for s in splits]) for c in data.get("classes", [])]


class TransferSummary(NamedTuple):
    trainable: int
    total: int
    frozen: int
    origins: list[tuple[str, int, int]]  # (origin, tensors, parameters)


def transfer_summary(metrics: dict) -> TransferSummary:
    """Parameters trained, in all and kept frozen; tensors and parameters per origin."""
    transfer = metrics.get("transfer", {})
    total = transfer.get("total_parameters", 0) or 0
    trainable = transfer.get("trainable_parameters", 0) or 0
    origins = [(o, d["tensors"], d["parameters"]) for o, d in transfer.get("by_origin", {}).items()]
    return TransferSummary(trainable, total, transfer.get("frozen_parameters", total - trainable), origins)


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


def group_rows(transfer_map: list[dict]) -> list[list[str]]:
    """``group_summary`` as cells: layer group, tensors, parameters, trainable, origins."""
    return [[str(g["group"]), str(g["tensors"]), f"{g['parameters']:,}", f"{g['trainable']:,}",
             ", ".join(map(str, g["origins"]))] for g in group_summary(transfer_map)]


def stage_learning_rates(metrics: dict, history: list[dict]) -> dict[str, str]:
    """Learning rate(s) per stage: per layer group when the stage recorded them, else from history."""
    out: dict[str, str] = {}
    for s in metrics.get("stages", []):
        lrs = s.get("group_lrs") or s.get("lrs")
        if isinstance(lrs, dict) and lrs:
            out[s["stage"]] = ", ".join(f"{k} {v:.2g}" for k, v in lrs.items())
        elif isinstance(lrs, list) and lrs:
            out[s["stage"]] = ", ".join(f"{v:.2g}" for v in lrs)
        elif is_number(s.get("lr")):
            out[s["stage"]] = f"{s['lr']:.2g}"
    for row in history:
        if row.get("stage") not in out and is_number(row.get("lr")):
            seen = [r["lr"] for r in history if r.get("stage") == row["stage"] and is_number(r.get("lr"))]
            out[row["stage"]] = (f"{seen[0]:.2g} → {seen[-1]:.2g} at epoch ends" if len(seen) > 1
                                 else f"{seen[0]:.2g} at the epoch end")
    return out


def recipe_rows(metrics: dict) -> list[tuple[str, str]]:
    """What ran (``metrics["recipe"]``) as (name, value) cells; ``(auto)`` marks what transferkit
    sized because the user left it unset. Empty for runs that recorded no recipe."""
    recipe = metrics.get("recipe")
    if not recipe:
        return []
    auto = set(recipe.get("left_to_transferkit", []))

    def mark(name: str, text: str, why: str = "") -> str:
        if name not in auto:
            return text + (f" ({why})" if why else "")
        return f"{text} (auto{': ' + why if why else ''})"

    rows = [("train examples", count(recipe.get("train_examples")))]
    if "epochs" in recipe:  # the loop trained a stage
        steps = recipe.get("steps_per_epoch")
        why_epochs = (f"at least {recipe['min_steps']} optimizer steps, {steps} per epoch" if recipe.get("min_steps")
                      else f"{steps} optimizer steps per epoch" if steps else "")
        rows += [("batch size", mark("batch_size", str(recipe["batch_size"]))),
                 ("epochs", mark("epochs", str(recipe["epochs"]), why_epochs)),
                 ("warm-up", f"{recipe.get('warmup_ratio', 0):.0%} of the steps, then cosine decay"),
                 ("learning rate, shared layers", mark("lr", f"{recipe['lr']:.2g}")),
                 ("learning rate, heads", mark("head_lr", f"{recipe['head_lr']:.2g}")),
                 ("BatchNorm statistics", " and ".join(recipe.get("batchnorm", [])) or "-"),
                 ("weights kept", str(recipe.get("weights_kept", "-")))]
    if recipe.get("head_fit"):
        rows.append(("convex head fit", recipe["head_fit"]))
    if recipe.get("image_size"):
        rows.append(("input size", mark("image_size", f"{recipe['image_size']} px")))
    return rows


def stage_rows(metrics: dict, history: list[dict]) -> list[dict[str, str]]:
    """Per training stage, as cells: ``stage``, ``epochs``, ``best_epoch``, ``best_val``,
    ``trainable``, ``lr``, ``seconds``, ``rate`` (examples per second); ``-`` where not recorded."""
    lrs = stage_learning_rates(metrics, history)
    return [{"stage": str(s["stage"]), "epochs": str(s.get("epochs_run", "-")),
             "best_epoch": str(s.get("best_epoch", "-")), "best_val": num(s.get("best_val_accuracy")),
             "trainable": count(s.get("trainable_parameters")), "lr": lrs.get(s["stage"], "-"),
             "seconds": num(s.get("seconds"), 1), "rate": num(s.get("examples_per_second"), 1)}
            for s in metrics.get("stages", [])]


def task_rows(metrics: dict) -> list[list[str]]:
    """Per task head, as cells: task, classes, test accuracy, test macro-F1 (none for one task)."""
    tasks = metrics.get("tasks") or {}
    if len(tasks) < 2:
        return []
    return [[str(name), str(len(m.get("per_class", {}))), num(m.get("accuracy")), num(m.get("macro_f1"))]
            for name, m in tasks.items()]


def per_class_rows(metrics: dict) -> list[list[str]]:
    """Per class on the test split, as cells: class, precision, recall, F1, support."""
    return [[str(c), f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"])]
            for c, m in metrics.get("test_per_class", {}).items()]


def gain_baselines(metrics: dict) -> list[tuple[str, str, dict]]:
    """(short label, label, per-class test metrics) of each baseline that recorded them, the main one first."""
    return [(label.removeprefix("no-transfer "), label, metrics[f"{prefix}_test_per_class"])
            for prefix, label, _ in baselines(metrics) if isinstance(metrics.get(f"{prefix}_test_per_class"), dict)]


def points(delta: float | None) -> str:
    """A difference of two shares in points, signed (``+12.5``), or ``-``."""
    return f"{delta * 100:+.1f}" if is_number(delta) else "-"


def class_gain_rows(metrics: dict) -> tuple[list[str], list[list[str]], list[float | None]]:
    """Per class: the transfer's test recall (accuracy on that class) and F1 against each baseline's.

    Returns the column names, the rows of cells (class, support, recall, then per baseline its
    recall, Δ recall and Δ F1 in points) and the Δ recall against the main baseline per row, for
    marking gains and losses. No rows without a baseline's per-class metrics."""
    ours, found = metrics.get("test_per_class") or {}, gain_baselines(metrics)
    if not ours or not found:
        return [], [], []
    columns = ["class", "support", "recall"]
    for short, _, _ in found:
        columns += [f"{short} recall", f"Δ recall vs {short}", f"Δ F1 vs {short}"]
    rows, main = [], []
    for c, m in ours.items():
        row = [str(c), str(m.get("support", "-")), num(m.get("recall"), 3)]
        for j, (_, _, theirs) in enumerate(found):
            t = theirs.get(c, {})
            recall, f1 = (m[k] - t[k] if is_number(m.get(k)) and is_number(t.get(k)) else None for k in ("recall", "f1"))
            row += [num(t.get("recall"), 3), points(recall), points(f1)]
            if j == 0:
                main.append(recall)
        rows.append(row)
    return columns, rows, main


def gain_summary(metrics: dict) -> str:
    """One sentence: on how many classes the transfer's recall beat, tied or lost to the main baseline."""
    _, rows, deltas = class_gain_rows(metrics)
    known = [d for d in deltas if d is not None]
    if not known:
        return ""
    short = gain_baselines(metrics)[0][0]
    named = f" ({metrics['baseline']})" if isinstance(metrics.get("baseline"), str) else ""
    better, worse = sum(d > 1e-12 for d in known), sum(d < -1e-12 for d in known)
    text = (f"Against the {short}{named}, transfer's test recall is higher on {better} of {len(known)} classes, "
            f"lower on {worse}, equal on {len(known) - better - worse}.")
    if worse:
        delta, name = min((d, r[0]) for d, r in zip(deltas, rows) if d is not None)
        text += f" Largest loss: {name} ({points(delta)} points)."
    return text


def example_name(row: dict, origin: str = "") -> str:
    """A worst example as text: its file (relative to the data folder when inside it), its text
    snippet, its series' shape, or its position in the test split."""
    from pathlib import Path

    if row.get("file"):
        path = Path(str(row["file"]))
        for base in (Path(origin), Path(origin).resolve()) if origin else ():
            try:
                return path.relative_to(base).as_posix()
            except ValueError:
                continue
        return path.name
    if row.get("text") is not None:
        return str(row["text"])
    if row.get("series"):
        return f"series {row['series']}"
    return f"test example #{row.get('index', '?')}"


def top_loss_rows(metrics: dict) -> list[list[str]]:
    """The worst test examples as cells: rank, example, true, predicted, p(predicted), p(true), loss."""
    origin = str(metrics.get("data", {}).get("origin", "") or "")
    return [[str(i), example_name(r, origin), str(r.get("true")), str(r.get("predicted")) + ("" if not r.get("correct")
             else " (right)"), num(r.get("p_predicted"), 3), num(r.get("p_true"), 3), num(r.get("loss"), 2)]
            for i, r in enumerate(metrics.get("test_top_losses") or [], 1) if isinstance(r, dict)]


def most_confused(classes: list[str], matrix: list[list[int]], k: int = 5) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells of the confusion matrix: (true, predicted, count), as
    fastai's ``most_confused``."""
    cells = [(count, -i, -j) for i, row in enumerate(matrix or []) for j, count in enumerate(row)
             if i != j and isinstance(count, int) and count > 0 and i < len(classes) and j < len(classes)]
    return [(classes[-i], classes[-j], count) for count, i, j in sorted(cells, reverse=True)[:k]]


def calibration_summary(metrics: dict) -> str:
    """One sentence on the test calibration (ECE, mean confidence against accuracy), or ``""``."""
    cal = metrics.get("test_calibration") or {}
    if not is_number(cal.get("ece")) or not cal.get("examples"):
        return ""
    confidence, accuracy = cal.get("confidence"), cal.get("accuracy")
    gap = confidence - accuracy if is_number(confidence) and is_number(accuracy) else None
    how = ("" if gap is None else
           f": mean confidence {confidence:.3f} against accuracy {accuracy:.3f}, "
           + ("overconfident" if gap > 0.005 else "underconfident" if gap < -0.005 else "well matched")
           + (f" by {abs(gap) * 100:.1f} points" if abs(gap) > 0.005 else ""))
    text = (f"Expected calibration error (ECE) {cal['ece']:.3f} over {len(cal.get('bins') or [])} equal-width "
            f"confidence bins and {cal['examples']} test examples{how}.")
    if cal["examples"] < 100:
        text += " With under 100 examples the bins are noisy; read the diagram as a rough picture."
    return text


def calibration_rows(metrics: dict) -> list[list[str]]:
    """The non-empty reliability bins as cells: confidence range, examples, mean confidence, accuracy, gap."""
    rows = []
    for b in (metrics.get("test_calibration") or {}).get("bins") or []:
        if isinstance(b, dict) and b.get("count"):
            gap = b["accuracy"] - b["confidence"] if is_number(b.get("accuracy")) and is_number(b.get("confidence")) \
                else None
            rows.append([f"{b['low']:.1f}-{b['high']:.1f}", str(b["count"]), num(b.get("confidence"), 3),
                         num(b.get("accuracy"), 3), points(gap)])
    return rows
