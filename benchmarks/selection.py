"""Auto choice against the brute-force audit (issue 14, item 6).

Per target (``_selection_targets``: real labelled sets with at least four candidate sources each):

1. **audit**: ``transferkit.audit`` trains every (candidate, strategy) pair at ``--seeds`` seeds and
   scores each on the test split: the oracle's best pair (highest mean test accuracy) and its seed std;
2. **auto**: ``fit(DATA, source="auto", strategy="auto", candidates=..., strategies=...)`` at each of
   ``--auto-seeds`` seeds, with the default baseline and budget, its wall time measured end to end;
3. the **regret** (oracle best mean minus auto's mean test accuracy), the **pass rule** of the issue
   (regret <= max(1 point, the best pair's seed std)), the **time ratio** (auto's mean wall time over
   the audit's training time, each pair counted as its median seed times the seeds) and the **weighted tau** (``scipy.stats.weightedtau``, hyperbolic
   weights, the convention of the LogME paper) of every single score, of the cross-validated probe
   accuracy and of the combined ranking, all taken from auto's seed-0 report, against each source's best
   audit accuracy (best strategy, mean over seeds).

Both sides share one training configuration (``--image-size``, the strategies), so the audit is the
best that auto could have chosen. Everything is resumable: the audit keeps its finished cells in
``<work>/audit/<target>/checkpoints/cells.jsonl`` and each auto run is stored as
``<work>/auto/<target>-s<seed>.json``; a rerun computes only what is missing. ``--quick`` is a smoke
run (two small targets, one seed, the probe and full only) that checks the wiring in a few minutes.

    python benchmarks/selection.py --targets gunpoint,osuleaf
    python benchmarks/selection.py --targets all --seeds 3 --auto-seeds 3
    python benchmarks/selection.py --report          # the tables from what is stored
    python benchmarks/selection.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _selection_targets import SPECS, TARGETS, WORK, build, candidate_ids  # noqa: E402

BENCH = WORK / "bench"
IMAGE_STRATEGIES = ["linear_probe", "lp_ft", "full", "layerwise_lr"]
DEFAULT_STRATEGIES = {"image": IMAGE_STRATEGIES, "audio": IMAGE_STRATEGIES, "sequence": IMAGE_STRATEGIES,
                      "text": ["linear_probe", "lp_ft", "full", "lora"]}
QUICK_TARGETS = ["gunpoint", "osuleaf"]
#: The issue's pass rule: auto within this of the audit's best mean (or within that pair's seed std).
REGRET_TOLERANCE = 0.01
TIME_RATIO_TARGET = 0.30


def shared_options(modality: str, image_size: int) -> dict:
    """Training options the audit and auto share (the rest are transferkit's defaults)."""
    return {"image_size": image_size} if modality == "image" else {}


def run_audit(target: str, path: Path, candidates: list[str], strategies: list[str], seeds: int,
              options: dict) -> dict:
    from transferkit.audit import audit
    from transferkit.config import FitConfig

    return audit(path, candidates, strategies, seeds=seeds, out=BENCH / "audit" / target,
                 config=FitConfig.from_dict(options), verbose=True)


def run_auto(target: str, path: Path, candidates: list[str], strategies: list[str], seed: int,
             options: dict, budget: float | None) -> dict:
    """One ``--source auto --strategy auto`` run; stored, and reused when stored."""
    stored = BENCH / "auto" / f"{target}-s{seed}.json"
    if stored.is_file():
        return json.loads(stored.read_text())
    import transferkit

    extra = {} if budget is None else {"budget": budget}
    started = time.perf_counter()
    run = transferkit.fit(str(path), source="auto", strategy="auto", candidates=candidates, strategies=strategies,
                          seed=seed, verbose=False, **options, **extra)
    seconds = time.perf_counter() - started
    selection = run.metrics["selection"]
    result = {"target": target, "seed": seed, "seconds": seconds, "test_accuracy": run.metrics["test_accuracy"],
              "baseline_accuracy": run.metrics.get("baseline_accuracy"),
              "source": selection["choice"], "strategy": selection["chosen_strategy"],
              "budget_seconds": selection.get("budget_seconds"), "scores": selection["scores"],
              "uninformative_scores": selection["uninformative_scores"], "ranking": selection["ranking"],
              "rounds": selection.get("rounds", []), "fold_check": selection.get("fold_check"),
              "why": selection["why"], "final": selection.get("final")}
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(result, indent=1, default=float))
    return result


def weighted_tau(values: list[float | None], truth: list[float]) -> float | None:
    """Weighted Kendall tau of ``values`` against ``truth`` (None where a value is missing or constant)."""
    from scipy.stats import weightedtau

    pairs = [(v, t) for v, t in zip(values, truth) if v is not None and math.isfinite(v)]
    if len(pairs) < 3 or len({v for v, _ in pairs}) < 2:
        return None
    tau = weightedtau([v for v, _ in pairs], [t for _, t in pairs]).statistic
    return None if not math.isfinite(tau) else float(tau)


def _audit_seconds(cells: list[dict]) -> float:
    """The audit's training time, robust to a cell slowed by a busy machine: per pair, the median
    over its seeds times the number of seeds (one cell of a series GRU took 462 s while its other
    seeds took 19-22 s when other jobs shared the two cores)."""
    import numpy as np

    groups: dict[tuple[str, str], list[float]] = {}
    for cell in cells:
        groups.setdefault((cell["source"], cell["strategy"]), []).append(cell["seconds"])
    return float(sum(np.median(v) * len(v) for v in groups.values()))


def evaluate(target: str, audit_result: dict, autos: list[dict]) -> dict:
    """Regret, pass rule, time ratio and weighted taus for one target."""
    import numpy as np

    pairs = audit_result["pairs"]
    best = pairs[0]
    per_source: dict[str, float] = {}
    for p in pairs:
        per_source[p["source"]] = max(per_source.get(p["source"], -1.0), p["test_accuracy"])
    auto_acc = float(np.mean([a["test_accuracy"] for a in autos]))
    regret = best["test_accuracy"] - auto_acc
    audit_seconds = _audit_seconds(audit_result["cells"])
    auto_seconds = float(np.mean([a["seconds"] for a in autos]))
    rows = {r["source"]: r for r in autos[0]["ranking"]}
    sources = [s for s in per_source if s in rows]
    truth = [per_source[s] for s in sources]
    taus = {name: weighted_tau([rows[s].get(name) for s in sources], truth) for name in autos[0]["scores"]}
    taus["cv_probe"] = weighted_tau([rows[s].get("cv_accuracy") for s in sources], truth)
    taus["combined"] = weighted_tau([rows[s].get("combined") for s in sources], truth)
    chosen = [f"{a['source']} + {a['strategy']}" for a in autos]
    return {"target": target, "modality": SPECS[target].modality, "candidates": len(per_source),
            "pairs": len(pairs), "audit_seeds": audit_result["seeds"], "auto_seeds": len(autos),
            "best_pair": f"{best['source']} + {best['strategy']}", "best_accuracy": best["test_accuracy"],
            "best_std": best["test_std"], "auto_accuracy": auto_acc,
            "auto_accuracies": [a["test_accuracy"] for a in autos], "auto_choices": chosen,
            "regret": regret, "passes_accuracy": regret <= max(REGRET_TOLERANCE, best["test_std"]) + 1e-9,
            "audit_seconds": audit_seconds, "auto_seconds": auto_seconds, "time_ratio": auto_seconds / audit_seconds,
            "passes_time": auto_seconds / audit_seconds <= TIME_RATIO_TARGET, "taus": taus,
            "uninformative": sorted(autos[0]["uninformative_scores"])}


def _short(source: str) -> str:
    return "run:" + Path(source[4:]).name if source.startswith("run:") else source


def markdown(results: list[dict]) -> str:
    lines = ["| target | candidates × strategies | audit best pair (mean ± std) | auto choice(s) | auto acc | regret | "
             "passes | audit s | auto s | time ratio |", "|---|---:|---|---|---:|---:|:-:|---:|---:|---:|"]
    for r in results:
        best = r["best_pair"].split(" + ")
        choices = "; ".join(sorted({_short(c.split(' + ')[0]) + " + " + c.split(" + ")[1] for c in r["auto_choices"]}))
        ok = ("yes" if r["passes_accuracy"] else "**no**") + " / " + ("yes" if r["passes_time"] else "**no**")
        lines.append(f"| {r['target']} ({r['modality']}) | {r['candidates']} × {r['pairs'] // r['candidates']} | "
                     f"{_short(best[0])} + {best[1]} {r['best_accuracy']:.3f} ± {r['best_std']:.3f} | {choices} | "
                     f"{r['auto_accuracy']:.3f} | {100 * r['regret']:+.1f} pt | {ok} | {r['audit_seconds']:.0f} | "
                     f"{r['auto_seconds']:.0f} | {r['time_ratio']:.2f} |")
    names = sorted({n for r in results for n in r["taus"]}, key=lambda n: (n in ("cv_probe", "combined"), n))
    lines += ["", "Weighted τ against each source's best audit accuracy (— = constant or missing):", "",
              "| target | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in results:
        lines.append(f"| {r['target']} | " + " | ".join(
            "—" if r["taus"].get(n) is None else f"{r['taus'][n]:+.2f}" for n in names) + " |")
    means = {n: [r["taus"][n] for r in results if r["taus"].get(n) is not None] for n in names}
    lines.append("| **mean** | " + " | ".join(
        f"**{sum(v) / len(v):+.2f}** ({len(v)})" if v else "—" for v in means.values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="all", help=f"comma-separated, or 'all' ({', '.join(TARGETS)})")
    parser.add_argument("--seeds", type=int, default=3, help="audit seeds per pair")
    parser.add_argument("--auto-seeds", type=int, default=1, help="auto runs per target (seeds 0..N-1)")
    parser.add_argument("--strategies", default=None, help="comma-separated; default: per modality (see source)")
    parser.add_argument("--image-size", type=int, default=128, help="image side both sides train at")
    parser.add_argument("--budget", type=float, default=None, help="auto's --budget in minutes (default: fit's)")
    parser.add_argument("--report", action="store_true", help="only print the tables from stored results")
    parser.add_argument("--quick", action="store_true", help="smoke run: gunpoint and osuleaf, one seed, 2 strategies")
    args = parser.parse_args()
    targets = QUICK_TARGETS if args.quick else (TARGETS if args.targets == "all" else args.targets.split(","))
    seeds, auto_seeds = (1, 1) if args.quick else (args.seeds, args.auto_seeds)
    global BENCH
    if args.quick:
        BENCH = WORK / "bench-quick"
    results = []
    for target in targets:
        if target not in TARGETS:
            raise SystemExit(f"--targets: unknown target {target!r}; choose from {', '.join(TARGETS)}")
        modality = SPECS[target].modality
        strategies = (["linear_probe", "full"] if args.quick else
                      args.strategies.split(",") if args.strategies else DEFAULT_STRATEGIES[modality])
        options = shared_options(modality, args.image_size)
        audit_file = BENCH / "audit" / target / "audit.json"
        if args.report:
            autos = [BENCH / "auto" / f"{target}-s{s}.json" for s in range(auto_seeds)]
            if not audit_file.is_file() or not all(a.is_file() for a in autos):
                continue
            audit_result = json.loads(audit_file.read_text())
            autos = [json.loads(a.read_text()) for a in autos]
        else:
            path = build(target)
            candidates = candidate_ids(target, build_runs=True, quick=args.quick)
            print(f"== {target}: {len(candidates)} candidates x {len(strategies)} strategies", flush=True)
            audit_result = run_audit(target, path, candidates, strategies, seeds, options)
            autos = [run_auto(target, path, candidates, strategies, s, options, args.budget) for s in range(auto_seeds)]
        result = evaluate(target, audit_result, autos)
        results.append(result)
        print(json.dumps(result, default=float), flush=True)
    if results:
        (BENCH / "summary.json").write_text(json.dumps(results, indent=1, default=float))
        print(markdown(results))


if __name__ == "__main__":
    main()
