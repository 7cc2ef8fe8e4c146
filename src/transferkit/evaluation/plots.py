"""Plots for the run report, as PNG bytes ready to embed in ``report.html``.

Every function takes plain JSON-like values (what a run directory stores) and returns PNG
bytes, or ``None`` when there is nothing to draw. Matplotlib is imported inside the functions
and drawn through its Agg canvas without pyplot, so nothing here touches a user's backend or
the CLI's start-up time. Figures are ~900 px wide at 100 dpi: readable on a laptop screen.
"""

from __future__ import annotations

import io
import math

#: Colours shared by every plot (colour-blind-safe pairs from the Tableau 10 palette).
TRANSFER, BASELINE, ACCENT, GREY = "#4e79a7", "#f28e2b", "#59a14f", "#9c9c9c"
LOSS_TRAIN, LOSS_VAL, LOST = "#4e79a7", "#e15759", "#e15759"


def _figure(width: float = 9.0, height: float = 3.2, ncols: int = 1, *, left: float = 0.7, right: float = 0.25,
            top: float = 0.35, bottom: float = 0.55, wspace: float = 0.25):
    """A figure with fixed margins in inches (a layout engine would triple the drawing time)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=wspace)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=9)
        ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white", pil_kwargs={"compress_level": 3})
    return buffer.getvalue()


def _short(name: str, width: int = 14) -> str:
    name = str(name)
    return name if len(name) <= width else name[: width - 1] + "…"


def comparison(metrics: dict) -> bytes | None:
    """Transfer vs the no-transfer baseline: test accuracy and macro-F1 side by side."""
    if "test_accuracy" not in metrics:
        return None
    names = ["test accuracy", "test macro-F1"]
    ours = [metrics.get("test_accuracy", 0.0), metrics.get("test_macro_f1", 0.0)]
    base = [metrics.get("baseline_test_accuracy"), metrics.get("baseline_test_macro_f1")]
    has_base = base[0] is not None
    fig, (ax,) = _figure(9.0, 1.9 if has_base else 1.3, left=1.15, top=0.3, bottom=0.35)
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    height = 0.38 if has_base else 0.6
    ys = range(len(names))
    bars = ax.barh([y - (height / 2 if has_base else 0) for y in ys], ours, height, color=TRANSFER, label="transfer")
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=9)
    if has_base:
        bars = ax.barh([y + height / 2 for y in ys], [b or 0.0 for b in base], height, color=BASELINE,
                       label="no-transfer baseline")
        ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=9)
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.legend(loc="lower right", fontsize=8, frameon=False, ncols=2, bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def learning_curves(history: list[dict]) -> bytes | None:
    """Train/val loss and val accuracy per epoch; stages follow each other, separated by lines."""
    rows = [r for r in history if "epoch" in r]
    if not rows:
        return None
    fig, (loss_ax, acc_ax) = _figure(9.0, 3.3, ncols=2, left=0.65, top=0.35, bottom=0.55, wspace=0.22)
    x = list(range(1, len(rows) + 1))
    train = [r.get("train_loss", math.nan) for r in rows]
    val = [_finite(r.get("val_loss")) for r in rows]
    acc = [_finite(r.get("val_accuracy")) for r in rows]
    marker = "o" if len(rows) <= 30 else None
    loss_ax.plot(x, train, color=LOSS_TRAIN, marker=marker, markersize=3, label="train loss")
    loss_ax.plot(x, val, color=LOSS_VAL, marker=marker, markersize=3, label="val loss")
    loss_ax.set_title("Loss", fontsize=10, loc="left")
    loss_ax.legend(fontsize=8, frameon=False)
    acc_ax.plot(x, acc, color=ACCENT, marker=marker, markersize=3, label="val accuracy")
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.set_title("Validation accuracy", fontsize=10, loc="left")
    # stage boundaries and names
    starts = [i for i, r in enumerate(rows) if i == 0 or r.get("stage") != rows[i - 1].get("stage")]
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (all stages in order)", fontsize=9)
        for s in starts[1:]:
            ax.axvline(s + 0.5, color=GREY, linestyle="--", linewidth=0.8)
    if len(starts) > 1 or rows[0].get("stage"):
        for i, s in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else len(rows)
            acc_ax.text((s + end + 1) / 2, 0.02, _short(rows[s].get("stage", ""), 16), ha="center", va="bottom",
                        fontsize=8, color="#555555")
    if len(rows) == 1:
        for ax in (loss_ax, acc_ax):
            ax.set_xlim(0.5, 1.5)
    return _png(fig)


def confusion_matrix(classes: list[str], matrix: list[list[int]], title: str = "") -> bytes | None:
    """Heatmap of the test confusion matrix, coloured by row share, annotated with counts."""
    if not matrix or not classes:
        return None
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.clip(counts.sum(1, keepdims=True), 1, None)
    n = len(classes)
    labels = [_short(c) for c in classes]
    label_in = 0.075 * max(len(c) for c in labels) + 0.25  # inches for the widest tick label
    rotate = n > 4
    side = min(max(2.6, 0.42 * n), 7.5)  # the heatmap itself
    left, bottom = label_in + 0.35, (label_in * 0.75 if rotate else 0.25) + 0.45
    fig, (ax,) = _figure(left + side + 1.4, bottom + side + 0.35, left=left, right=1.4, top=0.35, bottom=bottom)
    ax.grid(False)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="equal")
    ax.set_xticks(range(n), labels, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8 if n > 10 else 9,
                            color="white" if shares[i, j] > 0.55 else "#222222")
    colorbar = fig.colorbar(image, cax=fig.add_axes((1 - 1.15 / fig.get_figwidth(), bottom / fig.get_figheight(),
                                                     0.15 / fig.get_figwidth(), side / fig.get_figheight())))
    colorbar.set_label("share of the true class", fontsize=8)
    colorbar.ax.tick_params(labelsize=8)
    return _png(fig)


def _class_axis(classes: list[str]) -> tuple[bool, float]:
    """Whether class names on the x axis are rotated (more than 8), and the bottom margin they need."""
    rotate = len(classes) > 8
    return rotate, (0.075 * max(len(_short(c)) for c in classes) * 0.75 + 0.4 if rotate else 0.45)


def per_class(per_class: dict, baseline: dict | None = None) -> bytes | None:
    """Precision, recall and F1 per class (bars); the baseline's F1 as markers when known."""
    if not per_class:
        return None
    classes = list(per_class)
    n = len(classes)
    rotate, bottom = _class_axis(classes)
    fig, (ax,) = _figure(9.0, 2.6 + bottom, left=0.55, top=0.4, bottom=bottom)
    width = 0.26
    xs = range(n)
    for k, (key, color) in enumerate((("precision", "#a0cbe8"), ("recall", "#8cd17d"), ("f1", TRANSFER))):
        ax.bar([x + (k - 1) * width for x in xs], [per_class[c].get(key, 0.0) for c in classes], width,
               color=color, label=key if key != "f1" else "F1")
    if baseline:
        ax.scatter([x + width for x in xs], [baseline.get(c, {}).get("f1", math.nan) for c in classes], marker="_",
                   s=260, linewidths=2.5, color=BASELINE, zorder=3, label="baseline F1")
    ax.set_xticks(list(xs), [_short(c) for c in classes], rotation=45 if rotate else 0,
                  ha="right" if rotate else "center")
    ax.set_ylim(0, 1.05)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] == "baseline F1")
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, frameon=False, ncols=4,
              loc="lower right", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def wise_ft_curve(curve: list, chosen: float | None = None) -> bytes | None:
    """Validation accuracy against the WiSE-FT mixing weight α, the chosen α marked."""
    points = sorted((float(a), float(s)) for a, s in curve or [])
    if not points:
        return None
    fig, (ax,) = _figure(9.0, 2.8, left=0.8, top=0.25, bottom=0.6)
    ax.plot([a for a, _ in points], [s for _, s in points], color=TRANSFER, marker="o", markersize=4)
    if chosen is not None:
        best = dict(points).get(float(chosen))
        ax.axvline(float(chosen), color=BASELINE, linestyle="--", linewidth=1.2)
        if best is not None:
            ax.scatter([chosen], [best], color=BASELINE, s=60, zorder=3)
        ax.annotate(f"chosen α = {float(chosen):g}", (float(chosen), 1.0), xytext=(4, -12),
                    textcoords="offset points", fontsize=9, color="#8a4a00")
    ax.set_xlabel("α   (0 = starting weights, 1 = fine-tuned weights)", fontsize=9)
    ax.set_ylabel("val accuracy", fontsize=9)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.02, 1.05)
    return _png(fig)


def ranking(rows: list[dict], score: str, chosen: str | None = None) -> bytes | None:
    """Horizontal bars of one transferability score per candidate source, the chosen one highlighted."""
    rows = [r for r in rows if _is_number(r.get(score))]
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r[score], reverse=True)
    names = [str(r.get("source", "?")) for r in rows]
    left = 0.075 * max(len(_short(n, 34)) for n in names) + 0.3
    fig, (ax,) = _figure(9.0, max(1.6, 0.34 * len(rows) + 0.9), left=left, right=0.5, top=0.2, bottom=0.55)
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    colors = [ACCENT if chosen and n == chosen else (GREY if n.endswith("@random") else TRANSFER) for n in names]
    bars = ax.barh(range(len(rows)), [r[score] for r in rows], color=colors)
    ax.bar_label(bars, fmt="%.3g", padding=3, fontsize=8)
    ax.set_yticks(range(len(rows)), [_short(n, 34) for n in names])
    ax.invert_yaxis()
    ax.set_xlabel(score, fontsize=9)
    if any(r[score] < 0 for r in rows):
        ax.axvline(0, color="#555555", linewidth=0.8)
    return _png(fig)


def parameters_by_group(transfer_map: list[dict]) -> bytes | None:
    """Parameters per layer group, input to output: trainable vs frozen, source vs fresh."""
    if not transfer_map:
        return None
    import numpy as np

    groups: dict[str, dict[str, int]] = {}
    for e in transfer_map:
        n = int(np.prod(e.get("shape") or [1])) if e.get("shape") is not None else 0
        if "running_" in e["tensor"] or e["tensor"].endswith("num_batches_tracked"):
            continue  # buffers are not parameters
        key = ("trainable" if e.get("trainable") else "frozen") + ("·fresh" if e.get("origin") == "fresh" else "")
        d = groups.setdefault(e.get("group", "other"), {})
        d[key] = d.get(key, 0) + n
    if not groups:
        return None
    names = list(groups)
    if len(names) > 40:  # keep the chart readable: merge the middle groups
        merged: dict[str, int] = {}
        for g in names[20:-19]:
            for k, v in groups[g].items():
                merged[k] = merged.get(k, 0) + v
        groups = {**{g: groups[g] for g in names[:20]}, f"{len(names) - 39} more groups": merged,
                  **{g: groups[g] for g in names[-19:]}}
        names = list(groups)
    left = 0.065 * max(len(_short(g, 28)) for g in names) + 0.3
    fig, (ax,) = _figure(9.0, max(1.8, 0.22 * len(names) + 1.0), left=left, top=0.4, bottom=0.55)
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    left = np.zeros(len(names))
    styles = {"frozen": ("#c9c9c9", "frozen (from source)"), "trainable": (TRANSFER, "trained (from source)"),
              "trainable·fresh": (ACCENT, "trained (fresh)"), "frozen·fresh": ("#b6d7a8", "frozen (fresh)")}
    for key, (color, label) in styles.items():
        values = np.array([groups[g].get(key, 0) for g in names], dtype=float)
        if values.any():
            ax.barh(range(len(names)), values, left=left, color=color, label=label, height=0.7)
            left += values
    ax.set_yticks(range(len(names)), [_short(g, 28) for g in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("parameters", fontsize=9)
    ax.xaxis.set_major_formatter(_human_formatter())
    ax.legend(fontsize=8, frameon=False, ncols=4, loc="lower right", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def reliability(calibration: dict) -> bytes | None:
    """Reliability diagram: accuracy against mean confidence per confidence bin (the diagonal is
    perfect calibration; the gap to it shaded), beside how many test examples each bin holds."""
    bins = [b for b in (calibration or {}).get("bins") or [] if b.get("count")]
    if not bins:
        return None
    fig, (ax, hist) = _figure(9.0, 3.4, ncols=2, left=0.65, top=0.35, bottom=0.6, wspace=0.3)
    width = [b["high"] - b["low"] for b in bins]
    lows = [b["low"] for b in bins]
    ax.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1, label="perfect calibration")
    ax.bar(lows, [b["accuracy"] for b in bins], width, align="edge", color=TRANSFER, edgecolor="white",
           label="accuracy")
    gaps = [b["confidence"] - b["accuracy"] for b in bins]
    ax.bar(lows, [abs(g) for g in gaps], width, bottom=[min(b["accuracy"], b["confidence"]) for b in bins],
           align="edge", color=LOST, alpha=0.35, edgecolor=LOST, linewidth=0.6, label="gap to confidence")
    ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], color="#222222", s=12, zorder=3,
               label="bin: (mean confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (probability of the predicted class)", fontsize=9)
    ax.set_ylabel("accuracy", fontsize=9)
    ece = calibration.get("ece")
    ax.set_title(f"Reliability (ECE {ece:.3f})" if _is_number(ece) else "Reliability", fontsize=10, loc="left")
    ax.legend(fontsize=7.5, frameon=False, loc="upper left")
    hist.bar(lows, [b["count"] for b in bins], width, align="edge", color="#a0cbe8", edgecolor="white")
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence", fontsize=9)
    hist.set_title("Test examples per bin", fontsize=10, loc="left")
    from matplotlib.ticker import MaxNLocator

    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(fig)


def class_gain(per_class: dict, baselines: dict[str, dict]) -> bytes | None:
    """Per class, the transfer's test recall minus each baseline's (points; green above 0, red below)."""
    classes = [c for c in per_class if any(c in b for b in baselines.values())]
    if not classes or not baselines:
        return None
    n, k = len(classes), len(baselines)
    rotate, bottom = _class_axis(classes)
    fig, (ax,) = _figure(9.0, 2.6 + bottom, left=0.7, top=0.4, bottom=bottom)
    width = 0.8 / k
    hatches = ("", "//", "..")
    for j, (label, base) in enumerate(baselines.items()):
        deltas = [(per_class[c].get("recall", 0.0) - base.get(c, {}).get("recall", math.nan)) * 100 for c in classes]
        colors = [ACCENT if d > 0 else LOST if d < 0 else GREY for d in deltas]
        ax.bar([x + (j - (k - 1) / 2) * width for x in range(n)], [0 if math.isnan(d) else d for d in deltas],
               width, color=colors, hatch=hatches[j % len(hatches)], edgecolor="white")
    ax.axhline(0, color="#555555", linewidth=0.8)
    ax.set_xticks(range(n), [_short(c) for c in classes], rotation=45 if rotate else 0,
                  ha="right" if rotate else "center")
    ax.set_ylabel("Δ recall (points)", fontsize=9)
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, -5), max(high, 5))
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=ACCENT, label="transfer better"), Patch(facecolor=LOST, label="transfer worse")]
    if k > 1:
        handles += [Patch(facecolor="#bbbbbb", edgecolor="white", hatch=hatches[j % len(hatches)], label=f"vs {label}")
                    for j, label in enumerate(baselines)]
    ax.legend(handles=handles, fontsize=8, frameon=False, ncols=len(handles), loc="lower right",
              bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


#: One colour per run on the comparison page (Tableau 10 without the report's red).
RUN_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#bab0ac")


def accuracy_intervals(rows: list[tuple[str, float, tuple[float, float] | None, bool]]) -> bytes | None:
    """Test accuracy of each run as a point with its 95% interval; rows are (name, accuracy,
    interval, kept), the kept run in green."""
    rows = [r for r in rows if _is_number(r[1])]
    if not rows:
        return None
    names = [_short(name, 34) for name, *_ in rows]
    left = 0.075 * max(len(n) for n in names) + 0.35
    fig, (ax,) = _figure(9.0, max(1.5, 0.36 * len(rows) + 0.9), left=left, right=0.4, top=0.2, bottom=0.55)
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    for y, (_, accuracy, interval, kept) in enumerate(rows):
        colour = ACCENT if kept else TRANSFER
        if interval:
            ax.plot(interval, [y, y], color=colour, linewidth=2.2, solid_capstyle="butt")
        ax.scatter([accuracy], [y], color=colour, s=40, zorder=3)
        ax.annotate(f"{accuracy:.3f}", (accuracy, y), xytext=(0, 6), textcoords="offset points", ha="center",
                    fontsize=8)
    ax.set_yticks(range(len(rows)), names)
    ax.set_ylim(len(rows) - 0.5, -0.7)
    lows = [r[2][0] if r[2] else r[1] for r in rows]
    highs = [r[2][1] if r[2] else r[1] for r in rows]
    pad = max(0.02, (max(highs) - min(lows)) * 0.08)
    ax.set_xlim(max(0.0, min(lows) - pad), min(1.0, max(highs) + pad) + 0.001)
    ax.set_xlabel("test accuracy (line: 95% Wilson interval)", fontsize=9)
    return _png(fig)


def overlaid_curves(histories: dict[str, list[dict]]) -> bytes | None:
    """Validation loss and accuracy per epoch of several runs, one colour each (epochs of all
    stages in order)."""
    runs = {name: [r for r in history if "epoch" in r] for name, history in histories.items()}
    runs = {name: rows for name, rows in runs.items() if rows}
    if not runs:
        return None
    fig, (loss_ax, acc_ax) = _figure(9.0, 3.4, ncols=2, left=0.65, top=0.35, bottom=0.55, wspace=0.22)
    from matplotlib.ticker import MaxNLocator

    for i, (name, rows) in enumerate(runs.items()):
        x = list(range(1, len(rows) + 1))
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        marker = "o" if len(rows) <= 30 else None
        loss_ax.plot(x, [_finite(r.get("val_loss")) for r in rows], color=colour, marker=marker, markersize=3,
                     label=_short(name, 24))
        acc_ax.plot(x, [_finite(r.get("val_accuracy")) for r in rows], color=colour, marker=marker, markersize=3,
                    label=_short(name, 24))
    loss_ax.set_title("Validation loss", fontsize=10, loc="left")
    acc_ax.set_title("Validation accuracy", fontsize=10, loc="left")
    acc_ax.set_ylim(-0.02, 1.02)
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (all stages in order)", fontsize=9)
    acc_ax.legend(fontsize=8, frameon=False, loc="lower right")
    if max(len(rows) for rows in runs.values()) == 1:
        for ax in (loss_ax, acc_ax):
            ax.set_xlim(0.5, 1.5)
    return _png(fig)


def per_class_runs(classes: list[str], recalls: dict[str, dict[str, float]]) -> bytes | None:
    """Test recall per class (grouped bars), one colour per run."""
    if not classes or not recalls:
        return None
    n, k = len(classes), len(recalls)
    rotate, bottom = _class_axis(classes)
    fig, (ax,) = _figure(9.0, 2.6 + bottom, left=0.55, top=0.45, bottom=bottom)
    width = 0.8 / k
    for j, (name, recall) in enumerate(recalls.items()):
        ax.bar([x + (j - (k - 1) / 2) * width for x in range(n)], [_finite(recall.get(c)) for c in classes], width,
               color=RUN_COLOURS[j % len(RUN_COLOURS)], label=_short(name, 24))
    ax.set_xticks(range(n), [_short(c) for c in classes], rotation=45 if rotate else 0,
                  ha="right" if rotate else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test recall", fontsize=9)
    ax.legend(fontsize=8, frameon=False, ncols=min(k, 4), loc="lower right", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _human_formatter():
    from matplotlib.ticker import FuncFormatter

    def fmt(value, _pos):
        for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= size:
                return f"{value / size:g}{unit}"
        return f"{value:g}"

    return FuncFormatter(fmt)


def _finite(value) -> float:
    return float(value) if _is_number(value) else math.nan


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
