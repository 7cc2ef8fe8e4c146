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


def per_class(per_class: dict, baseline: dict | None = None) -> bytes | None:
    """Precision, recall and F1 per class (bars); the baseline's F1 as markers when known."""
    if not per_class:
        return None
    classes = list(per_class)
    n = len(classes)
    rotate = n > 8
    bottom = 0.075 * max(len(_short(c)) for c in classes) * 0.75 + 0.4 if rotate else 0.45
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
