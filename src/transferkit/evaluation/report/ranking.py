"""The candidate sources of a run: ``ranking.json`` or ``metrics["selection"]``, normalised."""

from __future__ import annotations

from typing import NamedTuple

from .cells import cell, is_number

#: Score columns of a ranking, in the order one is picked for the chart.
SCORE_NAMES = ("logme", "leep", "nce", "regularized_hscore", "hscore", "knn", "linear", "score")
#: Ranking columns that are bookkeeping, not evidence: left out of the report's table.
RANKING_HIDDEN = ("random_control", "examples", "feature_dim", "head_classes", "cached", "load_seconds",
                  "feature_seconds", "score_seconds")
#: Readable names for the facts of a selection report.
FACT_NAMES = {"score": "score used", "choice": "chosen source", "chosen": "chosen source",
              "kendall_tau": "Kendall τ (score vs short-run val accuracy)", "kendall_p": "Kendall p-value",
              "kendall_note": "τ computed on", "seconds": "selection seconds", "candidates": "candidates",
              "top_k": "short-listed for short fine-tunes", "chosen_strategy": "chosen strategy",
              "why": "why", "confidence": "confidence", "prune_rule": "pruning rule",
              "budget_seconds": "budget (seconds)", "strategies": "strategies searched",
              "scores": "scores used"}
SHORT_RUN = "short-run val accuracy"


def ranking_rows(ranking, selection) -> dict:
    """Normalises ``ranking.json`` / ``metrics["selection"]`` to ``{"rows", "score", "facts"}``.

    Accepts a list of rows (``{"source": ..., "<score>": ..., "seconds": ...}``, as ``transferkit
    rank`` writes) or a dict holding one under ``ranking`` / ``rows`` / ``scores`` (a
    ``--source auto`` selection report); other scalar entries of a dict become facts (chosen
    source, score used, Kendall τ ...), and ``short_run_val_accuracy`` becomes a column.
    """
    rows, facts, score, short, rounds = [], {}, None, {}, []
    for item in (ranking, selection):
        if isinstance(item, dict):
            for key, value in item.items():
                if key in ("rows", "ranking", "scores") and isinstance(value, list):
                    rows = rows or [dict(r) for r in value if isinstance(r, dict)]
                elif key == "short_run_val_accuracy" and isinstance(value, dict):
                    short = value
                elif key == "rounds" and isinstance(value, list):
                    rounds = round_rows(value)
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
        numeric = [c for c in ranking_columns(rows) if c not in ("rank", "seconds", SHORT_RUN)
                   and any(is_number(r.get(c)) for r in rows)]
        named = facts.get("score") if isinstance(facts.get("score"), str) else None
        score = named if named in numeric else next((s for s in SCORE_NAMES if s in numeric), None)
        score = score or (numeric[0] if numeric else None)
    return {"rows": rows, "score": score, "facts": facts, "rounds": rounds}


ROUND_COLUMNS = ["round", "source + strategy", "epochs", "val accuracy", "seconds"]


def round_rows(rounds: list) -> list[list[str]]:
    """The short fine-tunes of ``--strategy auto`` / ``--source auto``, one row per run (``ROUND_COLUMNS``)."""
    rows = []
    for r in rounds:
        if not isinstance(r, dict):
            continue
        for res in r.get("results") or []:
            if isinstance(res, dict):
                rows.append([cell(r.get("round")), f"{res.get('source')} + {res.get('strategy')}",
                             cell(r.get("epochs")), cell(res.get("val_accuracy")), cell(res.get("seconds"))])
    return rows


def ranking_columns(rows: list[dict]) -> list[str]:
    """rank, source, the scores, short-run accuracy, seconds, notes (bookkeeping columns left out)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols and k not in RANKING_HIDDEN]
    head = [c for c in ("rank", "source") if c in cols]
    tail = [c for c in (SHORT_RUN, "seconds", "notes") if c in cols]
    return head + [c for c in cols if c not in head and c not in tail] + tail


class RankingTable(NamedTuple):
    """A ranking as both reports show it: its facts, then one row of cells per candidate."""

    facts: list[tuple[str, str]]  # (readable name, cell)
    columns: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # per column: does any row hold a number there?


def ranking_table(ranking: dict) -> RankingTable:
    """The cells of a normalised ranking (``ranking_rows``'s result)."""
    columns = ranking_columns(ranking["rows"])
    return RankingTable(
        facts=[(FACT_NAMES.get(k, k), cell(v)) for k, v in ranking["facts"].items()],
        columns=columns,
        rows=[[cell(r.get(c)) for c in columns] for r in ranking["rows"]],
        numeric=[any(is_number(r.get(c)) for r in ranking["rows"]) for c in columns],
    )
