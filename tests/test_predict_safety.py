"""`transferkit predict` as a careful tool (issue 15, items 9 and 10, and `--output` errors).

* predictions.csv never holds a spreadsheet formula: text cells starting with ``= + - @``, tab or
  carriage return get a leading ``'`` (OWASP CSV injection); probabilities are untouched;
* it is written atomically: a full disk or a permission error leaves the old file as it was and
  is one line (exit 2), as is an ``--output`` that is a folder;
* inputs get the same preflight as ``fit``: every bad input listed at once, ``--skip-bad`` skips
  and reports them; a text run never classifies a path, an empty cell or "nan" as a text.
"""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST, TINY_IMAGE_SOURCE
from test_bad_images import cli

from transferkit.data.synthetic import write_image_folder
from transferkit.errors import DataError, TransferKitError

CLASSES = {"=SUM(1+1)": 8, "-b": 8}  # class names a spreadsheet would run as formulas


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from transferkit.pipeline import fit

    data = tmp_path_factory.mktemp("predict-data")
    write_image_folder(data, CLASSES, size=32)
    out = tmp_path_factory.mktemp("predict-run") / "run"
    fit(data, source=TINY_IMAGE_SOURCE, out=out, verbose=False, **FAST)
    return out, data


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert_dir, text_table):
    from transferkit.pipeline import fit

    out = tmp_path_factory.mktemp("predict-text-run") / "run"
    fit(text_table, source="hf:" + str(tiny_bert_dir), out=out, verbose=False, **FAST)
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _fails(args: list) -> str:
    """Runs the CLI; asserts exit 2 and no traceback; returns stderr without the ``error: `` prefix."""
    code, _, err = cli(args)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    return err.removeprefix("error: ").rstrip("\n")


# -- formula escaping ------------------------------------------------------------------------------------


def test_class_names_that_look_like_formulas_are_escaped_and_probabilities_are_not(image_run, tmp_path):
    run, data = image_run
    out = tmp_path / "p.csv"
    code, _, err = cli(["predict", run, data / "-b", "--output", out])
    assert code == 0, err
    header, *_ = out.read_text().splitlines()
    assert header == "input,prediction,p_-b,p_=SUM(1+1)"  # "p_..." is no formula
    rows = _rows(out)
    assert len(rows) == 8
    for row in rows:
        assert row["prediction"] in ("'=SUM(1+1)", "'-b")
        probs = [row[k] for k in row if k.startswith("p_")]
        assert all(not p.startswith("'") for p in probs) and abs(sum(map(float, probs)) - 1) < 1e-4


@pytest.mark.parametrize("text, shown", [
    ("=HYPERLINK(\"http://x\",\"click\")", "'=HYPERLINK(\"http://x\",\"click\")"),
    ("+1 win cash", "'+1 win cash"), ("-2 lunch", "'-2 lunch"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\tprize", "'\tprize"), ("\rfree", "'\rfree"), ("win cash prize", "win cash prize"), ("a=b", "a=b"),
])
def test_input_texts_that_look_like_formulas_are_escaped(text, shown, tmp_path):
    import numpy as np

    from transferkit.predict import write_predictions

    out = tmp_path / "p.csv"
    write_predictions(out, [text], {"label": np.array([[0.25, 0.75]])}, {"label": ["ham", "@spam"]})
    (row,) = _rows(out)
    assert row == {"input": shown, "prediction": "'@spam", "p_ham": "0.250000", "p_@spam": "0.750000"}


# -- atomic writes and --output errors -------------------------------------------------------------------


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")])
def test_a_failed_write_keeps_the_old_csv_and_is_one_line(image_run, tmp_path, monkeypatch, code, words):
    run, data = image_run
    out = tmp_path / "p.csv"
    out.write_text("earlier predictions\n")
    real_writer = csv.writer

    class FailingWriter:
        """Writes the header, then fails as a full disk or a revoked permission would."""

        def __init__(self, f, *args, **kwargs):
            self.inner, self.rows = real_writer(f, *args, **kwargs), 0

        def writerow(self, row):
            self.rows += 1
            if self.rows > 2:
                raise OSError(code, os.strerror(code))
            return self.inner.writerow(row)

        def writerows(self, rows):
            for row in rows:
                self.writerow(row)

    monkeypatch.setattr(csv, "writer", FailingWriter)
    message = _fails(["predict", run, data / "-b", "--output", out])
    assert len(message.splitlines()) == 1
    assert f"Cannot write `--output` {str(out)!r}" in message and words in message
    assert out.read_text() == "earlier predictions\n"  # the old file, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]  # no temporary file left


def test_output_that_is_a_folder_is_refused_before_the_model_loads(image_run, tmp_path, monkeypatch):
    import transferkit.runs

    run, data = image_run
    monkeypatch.setattr(transferkit.runs, "load_run", lambda *a, **k: pytest.fail("the run was loaded"))
    (tmp_path / "folder").mkdir()
    message = _fails(["predict", run, data / "-b", "--output", tmp_path / "folder"])
    assert message == (f"`--output` {str(tmp_path / 'folder')!r} is a folder; name a CSV file to write, "
                       f"e.g. {str(tmp_path / 'folder' / 'predictions.csv')!r}.")


def test_output_inside_a_file_is_refused(image_run, tmp_path):
    run, data = image_run
    (tmp_path / "notes.txt").write_text("x")
    message = _fails(["predict", run, data / "-b", "--output", tmp_path / "notes.txt" / "p.csv"])
    assert len(message.splitlines()) == 1 and "is a file, not a folder" in message
    assert (tmp_path / "notes.txt").read_text() == "x"


def test_write_predictions_errors_are_transferkit_errors(tmp_path):
    import numpy as np

    from transferkit.predict import write_predictions

    with pytest.raises(TransferKitError, match="is a folder"):
        write_predictions(tmp_path, ["x"], {"label": np.array([[0.5, 0.5]])}, {"label": ["a", "b"]})


# -- preflight of image inputs ---------------------------------------------------------------------------


def test_every_bad_image_input_is_listed_at_once_then_skip_bad_skips_them(image_run, tmp_path):
    run, data = image_run
    folder = tmp_path / "new"
    files = write_image_folder(folder, {"x": 4}, size=32)
    files[1].write_bytes(b"")
    files[2].write_text("<html>404</html>")
    (folder / "x" / "phone.heic").write_bytes(b"heic")
    os.symlink("loop.png", folder / "x" / "loop.png")
    missing = tmp_path / "typo.png"
    out = tmp_path / "p.csv"
    message = _fails(["predict", run, folder, missing, "--output", out])
    assert message.startswith("Preflight found 5 problems in the inputs of `transferkit predict`:\n")
    for line in (f"  - {folder}/x/loop.png: symlink loop", f"  - {folder}/x/phone.heic: .heic files cannot be decoded",
                 f"  - {folder}/x/x_0001.png: empty file (0 bytes)", f"  - {folder}/x/x_0002.png: not an image",
                 f"  - {missing}: no such file or folder"):
        assert line in message, message
    assert message.endswith("Fix or remove these files, or pass --skip-bad (skip_bad=True) to skip them.")
    assert not out.exists()

    code, stdout, err = cli(["predict", run, folder, missing, "--output", out, "--skip-bad"])
    assert code == 0, err
    assert [Path(r["input"]).name for r in _rows(out)] == ["x_0000.png", "x_0003.png"]
    assert "Skipped 5 bad input(s) (--skip-bad):" in stdout and "typo.png (no such file or folder)" in stdout


def test_nothing_left_to_predict_is_one_line(image_run, tmp_path):
    run, _ = image_run
    (tmp_path / "x.png").write_bytes(b"")
    message = _fails(["predict", run, tmp_path / "x.png", "--output", tmp_path / "p.csv", "--skip-bad"])
    assert message.startswith("No examples left to predict: every input was skipped")
    assert len(message.splitlines()) == 1


# -- preflight of text inputs ----------------------------------------------------------------------------


def test_a_folder_or_a_mistyped_table_is_an_error_not_a_text(text_run, text_table, tmp_path):
    out = tmp_path / "p.csv"
    typo = str(text_table.parent / "emailss.csv")
    message = _fails(["predict", text_run, tmp_path, typo, "notes.txt", "--output", out])
    assert message.startswith("Preflight found 3 problems in the inputs of `transferkit predict`:")
    assert f"  - {tmp_path}: a folder; a text run takes texts or table files" in message
    assert (f"  - {typo}: looks like a path to a table (.csv) but no such file exists; check the name, "
            "or put a text that ends like a file name in a table's 'text' column") in message
    assert "  - notes.txt: looks like a path to a table (.txt) but no such file exists" in message
    assert not out.exists()


def test_existing_non_table_file_is_not_classified_as_its_name(text_run, tmp_path):
    (tmp_path / "reviews.txt").write_text("win cash\nlunch meeting\n")
    message = _fails(["predict", text_run, tmp_path / "reviews.txt", "--output", tmp_path / "p.csv"])
    assert f"  - {tmp_path / 'reviews.txt'}: a file but not a table" in message


def test_empty_and_missing_cells_are_bad_rows_never_nan(text_run, tmp_path):
    (tmp_path / "t.csv").write_text("id,text\n1,win cash prize\n2,\n3,NA\n4,None\n5,lunch meeting\n6,   \n")
    out = tmp_path / "p.csv"
    message = _fails(["predict", text_run, tmp_path / "t.csv", "--output", out])
    t = tmp_path / "t.csv"
    assert f"  - {t} row 2: empty text" in message and f"  - {t} row 6: empty text" in message
    assert f"  - {t} row 3: missing text ('NA' marks a missing value)" in message
    assert f"  - {t} row 4: missing text ('None' marks a missing value)" in message
    code, stdout, err = cli(["predict", text_run, t, "--output", out, "--skip-bad"])
    assert code == 0, err
    assert [r["input"] for r in _rows(out)] == ["win cash prize", "lunch meeting"]
    assert "Skipped 4 bad input(s)" in stdout


def test_null_json_cells_are_bad_rows(text_run, tmp_path):
    lines = [{"text": "win cash"}, {"text": None}, {"text": float("nan")}, {"text": "team notes"}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    message = _fails(["predict", text_run, tmp_path / "t.jsonl", "--output", tmp_path / "p.csv"])
    assert "t.jsonl row 2: empty text" in message and "t.jsonl row 3: empty text" in message


def test_non_utf8_and_ragged_csvs_are_listed_with_rows_not_a_pandas_traceback(text_run, tmp_path):
    (tmp_path / "latin.csv").write_bytes(b"text\nwin cash\ncaf\xe9 lunch\nteam notes\n")
    (tmp_path / "ragged.csv").write_text("text,label\nwin,spam\nlunch,ham,extra\n")
    (tmp_path / "utf16.csv").write_bytes("text\nwin\n".encode("utf-16"))
    (tmp_path / "other.csv").write_text("sentence\nwin cash\n")
    inputs = [tmp_path / n for n in ("latin.csv", "ragged.csv", "utf16.csv", "other.csv")]
    message = _fails(["predict", text_run, *inputs, "--output", tmp_path / "p.csv"])
    assert message.startswith("Preflight found 4 problems")
    assert f"  - {inputs[0]} row 2: non-UTF-8 byte 0xe9 at byte offset 17 (line 3); save the file as UTF-8" in message
    assert f"  - {inputs[1]} row 2: has 3 fields but the header has 2" in message
    assert f"  - {inputs[2]}: the file is UTF-16" in message
    assert (f"  - {inputs[3]}: no text column 'text' (the run's `text_column`); columns present: ['sentence']. "
            "Rename the column to 'text'") in message
    code, stdout, err = cli(["predict", text_run, *inputs, "--output", tmp_path / "p.csv", "--skip-bad"])
    assert code == 0, err
    assert [r["input"] for r in _rows(tmp_path / "p.csv")] == ["win cash", "team notes", "win"]


def test_plain_texts_and_tables_still_predict(text_run, text_table, tmp_path):
    out = tmp_path / "p.csv"
    code, stdout, err = cli(["predict", text_run, "win cash prize", text_table, "Check out data", "--output", out])
    assert code == 0, err
    rows = _rows(out)
    assert len(rows) == 2 + len(pd.read_csv(text_table))
    assert rows[0]["input"] == "win cash prize" and rows[-1]["input"] == "Check out data"


def test_an_empty_literal_text_is_a_bad_input(text_run, tmp_path):
    message = _fails(["predict", text_run, "win cash", "  ", "--output", tmp_path / "p.csv"])
    assert "  - input 2: empty text" in message


def test_expand_inputs_in_python_returns_what_it_skipped(text_run, tmp_path):
    from transferkit.runs import load_run
    from transferkit.predict import expand_inputs

    run = load_run(text_run)
    (tmp_path / "t.csv").write_text("text\nwin\n\"\"\n")
    with pytest.raises(DataError, match=r"row 2: empty text"):
        expand_inputs([str(tmp_path / "t.csv")], run)
    examples, skipped = expand_inputs([str(tmp_path / "t.csv")], run, skip_bad=True)
    assert examples == ["win"] and skipped == [(f"{tmp_path / 't.csv'} row 2", "empty text")]
