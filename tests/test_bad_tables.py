"""Bad text tables on the command line: exit 2 before any model is loaded, every bad row named.

Loader-level checks (every table format, row numbering) live in ``test_preflight.py``; here the
tables a user really hands us go through ``transferkit fit`` and the message they see is pinned.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import WORDS
from test_bad_images import cli, no_model  # noqa: F401  (no_model is a fixture)

SKIP_ROWS = "Fix or remove these rows, or pass --skip-bad (skip_bad=True) to skip them."
NOT_SKIPPABLE = "Fix the problems marked [cannot be skipped] in the data (--skip-bad cannot skip them)."


def emails(n: int = 10, seed: int = 0) -> list[dict]:
    """``n`` spam and ``n`` ham rows, interleaved (row 1 spam, row 2 ham, ...)."""
    rng = np.random.default_rng(seed)
    return [{"text": " ".join(rng.choice(WORDS[label], 4)) + f" message {i}", "label": label}
            for i in range(n) for label in ("spam", "ham")]


def write_csv(path, rows: list[dict]):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def fit_fails(table, tmp_path, *extra: str) -> str:
    out = tmp_path / "run"
    code, _, err = cli(["fit", table, "--source", "timm:test_efficientnet@random", "--out", out, "--quiet", *extra])
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not out.exists()
    return err.removeprefix("error: ").rstrip("\n")


# -- columns ------------------------------------------------------------------------------------------


def test_missing_text_and_label_columns_name_the_columns_present(tmp_path, no_model):
    table = tmp_path / "mail.csv"
    write_csv(table, [{"Subject": r["text"], "Category": r["label"]} for r in emails()])
    assert fit_fails(table, tmp_path) == (
        f"Preflight found 2 problems in '{table}':\n"
        "  - column 'text' (`text_column`) not found in mail.csv; columns present: ['Subject', 'Category']. "
        "Pass --text-column (text_column=...) to name it [cannot be skipped]\n"
        "  - column 'label' (`label_column`) not found in mail.csv; columns present: ['Subject', 'Category']. "
        "Pass --label-column (label_column=...) to name it [cannot be skipped]\n" + NOT_SKIPPABLE)


def test_a_named_column_that_is_not_there(tmp_path, no_model):
    table = tmp_path / "mail.csv"
    write_csv(table, [{"Subject": r["text"], "Category": r["label"]} for r in emails()])
    message = fit_fails(table, tmp_path, "--text-column", "Subject", "--label-column", "category")
    assert message.splitlines()[1] == (
        "  - column 'category' (`label_column`) not found in mail.csv; columns present: ['Subject', 'Category']. "
        "Pass --label-column (label_column=...) to name it [cannot be skipped]")
    assert len(message.splitlines()) == 3


# -- rows -------------------------------------------------------------------------------------------


def test_empty_texts_and_missing_labels_are_listed_by_row(tmp_path, no_model):
    rows = emails()
    rows[1]["text"] = ""
    rows[4]["text"] = "   \t "
    rows[7]["label"] = ""
    table = write_csv(tmp_path / "mail.csv", rows)
    assert fit_fails(table, tmp_path) == (
        f"Preflight found 3 problems in '{table}':\n"
        "  - row 2: empty text\n  - row 5: empty text\n  - row 8: missing label\n" + SKIP_ROWS)


def test_json_lines_with_null_and_absent_text(tmp_path, no_model):
    rows = emails()
    rows[0]["text"] = None
    del rows[2]["text"]
    table = tmp_path / "mail.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert fit_fails(table, tmp_path).splitlines()[1:3] == ["  - row 1: empty text", "  - row 3: empty text"]


def test_a_windows_1252_file_names_each_bad_row_with_line_and_byte(tmp_path, no_model):
    rows = emails()
    rows[2]["text"] = "café offer"
    rows[5]["text"] = "naïve meeting"
    table = tmp_path / "mail.csv"
    raw = pd.DataFrame(rows).to_csv(index=False).encode("cp1252")
    table.write_bytes(raw)
    e9, ef = raw.index(b"\xe9"), raw.index(b"\xef")
    assert fit_fails(table, tmp_path) == (
        f"Preflight found 2 problems in '{table}':\n"
        f"  - row 3: non-UTF-8 byte 0xe9 at byte offset {e9} (line 4); save the file as UTF-8\n"
        f"  - row 6: non-UTF-8 byte 0xef at byte offset {ef} (line 7); save the file as UTF-8\n" + SKIP_ROWS)


def test_a_utf16_file_says_so(tmp_path, no_model):
    table = tmp_path / "mail.csv"
    pd.DataFrame(emails()).to_csv(table, index=False, encoding="utf-16")
    assert fit_fails(table, tmp_path, "--skip-bad") == (
        f"Preflight found 1 problem in '{table}':\n"
        "  - the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8 (in Excel: CSV UTF-8) "
        "[cannot be skipped]\n" + NOT_SKIPPABLE)


def test_non_utf8_bytes_in_the_header(tmp_path, no_model):
    table = tmp_path / "mail.csv"
    table.write_bytes("texte,catégorie\nhi,a\n".encode("latin-1"))
    assert fit_fails(table, tmp_path).splitlines()[1] == (
        "  - header: non-UTF-8 byte 0xe9 at byte offset 9 (line 1); save the file as UTF-8 [cannot be skipped]")


# -- labels across splits ---------------------------------------------------------------------------------


def test_labels_in_test_or_val_never_seen_in_train(tmp_path, no_model):
    rows = emails()
    for r in rows:
        r["split"] = "train"
    rows += [{"text": "quarterly numbers", "label": "finance", "split": "test"},
             {"text": "budget review", "label": "finance", "split": "test"},
             {"text": "party on friday", "label": "social", "split": "val"}]
    table = write_csv(tmp_path / "mail.csv", rows)
    assert fit_fails(table, tmp_path, "--skip-bad") == (
        f"Preflight found 2 problems in '{table}':\n"
        "  - label 'finance' appears in test (2 rows) but never in train; a model cannot learn it. "
        "Add train rows or remove it there [cannot be skipped]\n"
        "  - label 'social' appears in val (1 rows) but never in train; a model cannot learn it. "
        "Add train rows or remove it there [cannot be skipped]\n" + NOT_SKIPPABLE)


def test_a_damaged_parquet_file(tmp_path, no_model):
    table = tmp_path / "mail.parquet"
    table.write_bytes(b"PAR1" + bytes(40) + b"PAR1")
    message = fit_fails(table, tmp_path)
    assert message.startswith(f"Cannot read Parquet file '{table}': ")


# -- --skip-bad: a real run on the good rows ---------------------------------------------------------


def test_skip_bad_trains_on_the_good_rows_and_records_the_rest(tmp_path, tiny_bert_dir):
    rows = emails(12)
    rows[3]["text"] = ""
    rows[10]["label"] = None
    raw = pd.DataFrame(rows).to_csv(index=False).replace(rows[6]["text"], rows[6]["text"] + " \udce9")
    table = tmp_path / "mail.csv"
    table.write_bytes(raw.encode("utf-8", errors="surrogateescape"))
    out = tmp_path / "run"
    code, _, err = cli(["fit", table, "--source", f"hf:{tiny_bert_dir}", "--out", out, "--skip-bad", "--quiet",
                        "--baseline", "none", "--probe-epochs", "2", "--batch-size", "16"])
    assert code == 0, err
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert [s["file"] for s in data["skipped"]] == ["row 4", "row 7", "row 11"]
    assert [s["reason"] for s in data["skipped"]][::2] == ["empty text", "missing label"]
    assert data["skipped"][1]["reason"].startswith("non-UTF-8 byte 0xe9 at byte offset")
    assert sum(data["split_sizes"].values()) == 24 - 3
    assert "Skipped 3 bad example(s):\n- `row 4`: empty text\n" in (out / "report.md").read_text()
