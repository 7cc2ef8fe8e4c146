"""Preflight: every problem found in one pass, reported in one DataError, or skipped."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from transferkit.data import load_task_data
from transferkit.data.checks import MAX_SHOWN, PreflightError
from transferkit.data.synthetic import digit_image, text_rows, write_image_folder
from transferkit.errors import DataError

SKIP_HINT = r"Fix or remove these files, or pass --skip-bad \(skip_bad=True\) to skip them\.$"


def _truncate(path: Path, rng: np.random.Generator) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * rng.uniform(0.1, 0.7))])


def _zero(path: Path, rng: np.random.Generator) -> None:
    path.write_bytes(b"")


def _garbage(path: Path, rng: np.random.Generator) -> None:
    path.write_bytes(rng.bytes(int(rng.integers(1, 400))))


CORRUPTIONS = {"truncate": _truncate, "zero": _zero, "garbage": _garbage}


def _named_files(message: str) -> set[str]:
    return set(re.findall(r"^  - ([^:\n]+\.\w+): ", message, flags=re.M))


# ---------------------------------------------------------------- bad image files


@pytest.mark.parametrize(
    "corrupt, reason",
    [(_truncate, r"truncated image"), (_zero, r"empty file \(0 bytes\)"),
     (lambda p, rng: p.write_text("hello, I am text"), r"not an image \(Pillow cannot identify")],
    ids=["truncated", "zero-bytes", "text-with-png-extension"],
)
def test_bad_image_is_named_with_its_reason(tmp_path, corrupt, reason):
    files = write_image_folder(tmp_path, {"a": 4, "b": 4})
    corrupt(files[5], np.random.default_rng(0))
    pattern = rf"Preflight found 1 problem in '.*':\n  - b/b_0001\.png: {reason}.*\n{SKIP_HINT}"
    with pytest.raises(DataError, match=pattern):
        load_task_data(tmp_path)


def test_every_problem_is_listed_in_one_error(tmp_path):
    files = write_image_folder(tmp_path, {"a": 5, "b": 5, "c": 1})
    files[0].write_bytes(b"")
    files[6].write_bytes(b"junk")
    (tmp_path / "d").mkdir()
    with pytest.raises(PreflightError) as info:
        load_task_data(tmp_path)
    message = str(info.value)
    assert message.startswith("Preflight found 4 problems in")
    assert "  - a/a_0000.png: empty file (0 bytes)\n" in message
    assert "  - b/b_0001.png: not an image" in message
    assert "  - d/: empty class folder (no image files); add images or remove the folder" in message
    assert ("  - c/: class 'c' has only 1 usable image; it cannot be split into train and test "
            "(stratified splitting needs at least 2 per class)") in message
    assert message.endswith("problems marked [cannot be skipped] must be fixed in the data.")
    assert [p.skippable for p in info.value.problems] == [True, True, False, False]


def test_long_lists_are_cut_with_and_n_more(tmp_path):
    files = write_image_folder(tmp_path, {"a": 12, "b": 12, "c": 12})
    for i, f in enumerate(files):
        if i % 12 < 9:
            f.write_bytes(b"")
    with pytest.raises(DataError, match=rf"found 27 problems in '.*':\n(  - .*\n){{{MAX_SHOWN}}}"
                                        rf"  \.\.\. and {27 - MAX_SHOWN} more\n"):
        load_task_data(tmp_path)


def test_images_needing_conversion_are_not_problems(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        rgba = np.zeros((8, 8, 4), np.uint8)
        Image.fromarray(rgba, "RGBA").save(tmp_path / name / "rgba.png")
        digit_image(1).convert("P").save(tmp_path / name / "p.gif")
        Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / name / "i16.png")
        digit_image(2).save(tmp_path / name / "l.jpg")
        Image.new("CMYK", (8, 8)).save(tmp_path / name / "cmyk.tiff")
    task = load_task_data(tmp_path, val_fraction=0.2, test_fraction=0.2)
    assert task.skipped == [] and task.summary()["split_sizes"]["train"] == 6


def test_link_outside_root_is_refused(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, {"a": 4, "b": 4})
    digit_image(0).save(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", root / "a" / "sneaky.png")
    os.symlink(tmp_path, root / "b" / "escape")
    os.symlink(root / "a" / "missing.png", root / "a" / "dangling.png")
    with pytest.raises(DataError) as info:
        load_task_data(root)
    message = str(info.value)
    assert "  - a/sneaky.png: link points outside the dataset root (to " in message
    assert "  - b/escape/: link points outside the dataset root" in message
    assert "  - a/dangling.png: broken link (its target does not exist)" in message
    task = load_task_data(root, skip_bad=True)
    assert sorted(w for w, _ in task.skipped) == ["a/dangling.png", "a/sneaky.png", "b/escape/"]
    assert all(p.is_relative_to(root.resolve()) for s in task.splits().values() for p in s.examples)


def test_image_outside_class_folder_is_a_problem(tmp_path):
    write_image_folder(tmp_path, {"a": 3, "b": 3})
    digit_image(0).save(tmp_path / "stray.png")
    with pytest.raises(DataError, match=r"  - stray.png: image outside any class folder"):
        load_task_data(tmp_path)


# ---------------------------------------------------------------- structural problems


def test_only_one_class(tmp_path):
    write_image_folder(tmp_path, {"cat": 5})
    with pytest.raises(DataError, match=r"only one class \('cat'\) found; a classifier needs at "
                                        r"least 2 classes \[cannot be skipped\]"):
        load_task_data(tmp_path, skip_bad=True)


def test_label_in_test_never_seen_in_train(tmp_path):
    write_image_folder(tmp_path, {"cat": 4, "dog": 4}, split="train")
    write_image_folder(tmp_path, {"cat": 2, "dog": 2, "fox": 2}, split="test", start=10)
    with pytest.raises(DataError, match=r"  - test/fox/: label 'fox' appears in test \(2 images\) "
                                        r"but never in train; a model cannot learn it"):
        load_task_data(tmp_path)


def test_single_example_class_is_fine_when_test_is_given(tmp_path):
    write_image_folder(tmp_path, {"cat": 1, "dog": 4}, split="train")
    write_image_folder(tmp_path, {"cat": 1, "dog": 1}, split="test", start=10)
    task = load_task_data(tmp_path)
    assert task.train.labels.tolist().count(0) == 1 and len(task.val) == 1


def test_skip_bad_skips_files_and_records_them(tmp_path):
    files = write_image_folder(tmp_path, {"a": 5, "b": 5})
    files[1].write_bytes(b"")
    files[7].write_bytes(files[7].read_bytes()[:40])
    task = load_task_data(tmp_path, skip_bad=True)
    assert [w for w, _ in task.skipped] == ["a/a_0001.png", "b/b_0002.png"]
    assert task.skipped[0][1] == "empty file (0 bytes)"
    assert task.summary()["skipped"][1]["file"] == "b/b_0002.png"
    kept = {p for s in task.splits().values() for p in s.examples}
    assert len(kept) == 8 and files[1].resolve() not in kept


def test_skip_bad_does_not_hide_a_class_left_empty(tmp_path):
    files = write_image_folder(tmp_path, {"a": 2, "b": 4, "c": 4})
    for f in files[:2]:
        f.write_bytes(b"")
    with pytest.raises(DataError, match=r"  - a/: class 'a' has no usable images \[cannot be skipped\]\n"
                                        r"  - a/a_0000.png: empty file \(0 bytes\)\n.*\n"
                                        r"Fix the problems marked \[cannot be skipped\] in the data "
                                        r"\(--skip-bad cannot skip them\)\.$"):
        load_task_data(tmp_path, skip_bad=True)


# ---------------------------------------------------------------- property: random corruption


@pytest.mark.parametrize("seed", range(6))
def test_error_names_exactly_the_corrupted_files(tmp_path, seed):
    rng = np.random.default_rng(seed)
    files = write_image_folder(tmp_path, {"a": 10, "b": 10, "c": 10, "d": 10}, size=24)
    picked = rng.choice(len(files), size=int(rng.integers(1, 12)), replace=False)
    for i in picked:
        CORRUPTIONS[rng.choice(sorted(CORRUPTIONS))](files[i], rng)
    expected = {files[i].relative_to(tmp_path).as_posix() for i in picked}
    with pytest.raises(PreflightError) as info:
        load_task_data(tmp_path, seed=seed)
    assert _named_files(str(info.value)) == expected
    assert {p.where for p in info.value.problems if p.skippable} == expected
    task = load_task_data(tmp_path, seed=seed, skip_bad=True)
    assert {w for w, _ in task.skipped} == expected
    assert sum(len(s) for s in task.splits().values()) == len(files) - len(picked)


def test_preflight_of_1000_small_pngs_is_fast(tmp_path):
    write_image_folder(tmp_path, {str(d): 100 for d in range(10)}, size=16)
    start = time.perf_counter()
    task = load_task_data(tmp_path)
    elapsed = time.perf_counter() - start
    assert sum(len(s) for s in task.splits().values()) == 1000
    assert elapsed < 5, f"preflight of 1000 PNGs took {elapsed:.1f}s"


# ---------------------------------------------------------------- text tables


def _csv(tmp_path: Path, rows: list[dict], name: str = "d.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_missing_columns_name_the_column_the_columns_present_and_the_option(tmp_path):
    path = _csv(tmp_path, [{"sentence": "hi", "y": "a"}, {"sentence": "yo", "y": "b"}])
    with pytest.raises(DataError) as info:
        load_task_data(path)
    message = str(info.value)
    assert ("column 'text' (`text_column`) not found in d.csv; columns present: ['sentence', 'y']. "
            "Pass --text-column (text_column=...) to name it") in message
    assert "column 'label' (`label_column`) not found" in message and "--label-column" in message
    with pytest.raises(DataError, match=r"column 'fold' \(`split_column`\) not found"):
        load_task_data(path, text_column="sentence", label_column="y", split_column="fold")


def test_empty_texts_and_labels_are_problems(tmp_path):
    rows = text_rows([("a", 4), ("b", 4)])
    rows[1]["text"] = "   "
    rows[2]["text"] = ""
    rows[6]["label"] = ""
    with pytest.raises(DataError, match=r"found 3 problems .*\n  - row 2: empty text\n  - row 3: empty "
                                        r"text\n  - row 7: missing label\nFix or remove these rows, or pass --skip-bad"):
        load_task_data(_csv(tmp_path, rows))
    task = load_task_data(tmp_path / "d.csv", skip_bad=True)
    assert task.skipped == [("row 2", "empty text"), ("row 3", "empty text"), ("row 7", "missing label")]
    assert sum(len(s) for s in task.splits().values()) == 5


def test_null_text_in_jsonl_and_bad_json_lines(tmp_path):
    rows = text_rows([("a", 4), ("b", 4)])
    lines = [json.dumps(r) for r in rows]
    lines[0] = json.dumps({"text": None, "label": "a"})
    lines[3] = "{not json"
    lines[4] = "[1, 2]"
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"  - row 1: empty text\n  - row 4: not valid JSON .*\n"
                                        r"  - row 5: not a JSON object \(got list\)"):
        load_task_data(tmp_path / "d.jsonl")


@pytest.mark.parametrize("name", ["d.csv", "d.jsonl", "d.json"])
def test_non_utf8_bytes_report_row_line_and_offset(tmp_path, name):
    rows = text_rows([("a", 4), ("b", 4)])
    rows[2]["text"] = "caf\udce9 latin-1"  # becomes the single byte 0xe9
    rows[5]["text"] = "na\udcefve"
    if name.endswith(".csv"):
        text = "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)
    elif name.endswith(".jsonl"):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:  # a JSON array, one object per line after the opening bracket
        text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n"
    raw = text.encode("utf-8", errors="surrogateescape")
    (tmp_path / name).write_bytes(raw)
    off1, off2 = raw.index(b"\xe9"), raw.index(b"\xef")
    line = 3 if name.endswith(".jsonl") else 4  # line 1 is the CSV header or the "["
    row = 3
    with pytest.raises(DataError) as info:
        load_task_data(tmp_path / name)
    message = str(info.value)
    assert (f"  - row {row}: non-UTF-8 byte 0xe9 at byte offset {off1} (line {line}); "
            "save the file as UTF-8\n") in message
    assert f"  - row {row + 3}: non-UTF-8 byte 0xef at byte offset {off2} (line {line + 3})" in message
    task = load_task_data(tmp_path / name, skip_bad=True)
    assert [w for w, _ in task.skipped] == [f"row {row}", f"row {row + 3}"]


def test_text_label_in_test_never_seen_in_train(tmp_path):
    rows = text_rows([("a", 4), ("b", 4), ("c", 2)])
    for r in rows:
        r["split"] = "test" if r["label"] == "c" else "train"
    with pytest.raises(DataError, match=r"  - label 'c' appears in test \(2 rows\) but never in "
                                        r"train; a model cannot learn it"):
        load_task_data(_csv(tmp_path, rows))


def test_unknown_split_values_and_one_label(tmp_path):
    rows = text_rows([("a", 4), ("b", 4)])
    for r in rows:
        r["split"] = "train"
    rows[0]["split"] = "holdout"
    with pytest.raises(DataError, match=r"  - row 1: unknown split value 'holdout' \(expected train, "
                                        r"val/validation/valid/dev or test\)"):
        load_task_data(_csv(tmp_path, rows))
    with pytest.raises(DataError, match=r"only one class \('a'\) found"):
        load_task_data(_csv(tmp_path, text_rows([("a", 6)]), "one.csv"))


def test_single_row_label_cannot_be_split(tmp_path):
    path = _csv(tmp_path, text_rows([("a", 5), ("b", 1)]))
    with pytest.raises(DataError, match=r"  - class 'b' has only 1 usable row; it cannot be "
                                        r"split into train and test"):
        load_task_data(path, skip_bad=True)


def test_empty_table(tmp_path):
    (tmp_path / "d.csv").write_text("")
    with pytest.raises(DataError, match=r"found 1 problem in .*\n  - the table is empty \[cannot"):
        load_task_data(tmp_path / "d.csv")
