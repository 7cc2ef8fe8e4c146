"""What a report reads from a run directory, and the verdict and reproduce line drawn from it."""

from __future__ import annotations

import shlex
from pathlib import Path

from transferkit._io import read_json
from transferkit.config import cli_args

from .ranking import ranking_rows


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


def transfer_gain(metrics: dict) -> float | None:
    """Test accuracy of transfer minus the no-transfer baseline's; ``None`` without a baseline."""
    if "baseline_test_accuracy" not in metrics:
        return None
    return metrics["test_accuracy"] - metrics["baseline_test_accuracy"]


#: The baselines a run can hold: (metrics prefix, label). ``baseline`` is the one ``transfer_gain``
#: is against (classical when it ran); ``scratch_baseline`` is the scratch one of ``--baseline both``.
BASELINE_PREFIXES = (("baseline", "no-transfer baseline"), ("scratch_baseline", "scratch baseline"))


def baselines(metrics: dict) -> list[tuple[str, str, str]]:
    """(metrics prefix, label, description) of each baseline the run trained, the main one first.

    The description names the baseline and its chosen hyper-parameters (``<prefix>_description``;
    runs from before it have only the name, ``<prefix>``)."""
    return [(prefix, label, str(metrics.get(f"{prefix}_description") or metrics.get(prefix) or "unnamed"))
            for prefix, label in BASELINE_PREFIXES if f"{prefix}_test_accuracy" in metrics]


def verdict(metrics: dict) -> str:
    """One sentence: did transfer beat the no-transfer baseline on the test split?"""
    gain = transfer_gain(metrics)
    if gain is None:
        return "No baseline was trained (`--baseline none`)."
    if gain > 0:
        return f"Transfer helped: +{gain * 100:.1f} points of test accuracy over the no-transfer baseline."
    if gain == 0:
        return "Transfer tied with the no-transfer baseline on test accuracy."
    return f"**Transfer lost**: {gain * 100:.1f} points of test accuracy against the no-transfer baseline."


def verdict_kind(metrics: dict) -> str:
    """``"helped"``, ``"tied"``, ``"lost"`` or ``"none"`` (no baseline)."""
    gain = transfer_gain(metrics)
    if gain is None:
        return "none"
    return "helped" if gain > 0 else "tied" if gain == 0 else "lost"


def reproduce_command(config: dict, data: str = "DATA") -> str:
    """The ``transferkit fit`` command that rebuilds a run's options (``config.json``'s ``fit``)."""
    return shlex.join(["transferkit", "fit", str(data), "--source", config["source"]["id"],
                       *cli_args(config["fit"])])
