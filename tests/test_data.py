"""Loading target data: image folders, text tables, splits, fingerprints, image decoding."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from transferkit.data import (
    IMAGE_EXTENSIONS,
    TEXT_EXTENSIONS,
    Split,
    TaskData,
    load_task_data,
    open_image,
)
from transferkit.data.splits import class_allocation, split_indices
from transferkit.data.synthetic import digit_image, text_rows, write_image_folder
from transferkit.errors import ConfigError, DataError

SEEDS = [0, 1, 7, 2024]


def _write_table(path: Path, rows: list[dict]) -> Path:
    df = pd.DataFrame(rows)
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        df.to_parquet(path)
    return path


def _all_examples(task: TaskData) -> list:
    return [ex for s in task.splits().values() for ex in s.examples]


# ---------------------------------------------------------------- image folders


def test_image_folder_loads_with_sorted_classes_and_resolved_paths(tmp_path):
    write_image_folder(tmp_path, {"zebra": 10, "ant": 10, "moth": 10})
    task = load_task_data(tmp_path)
    assert task.modality == "image"
    assert task.classes == ["ant", "moth", "zebra"]
    assert not task.split_given and task.skipped == []
    examples = _all_examples(task)
    assert len(examples) == 30 and len(set(examples)) == 30
    assert all(isinstance(p, Path) and p.is_absolute() and p == p.resolve() for p in examples)
    for split in task.splits().values():
        assert isinstance(split, Split) and split.labels.dtype == np.int64
        for path, label in zip(split.examples, split.labels):
            assert path.parent.name == task.classes[label]
    assert task.summary()["split_sizes"] == {"train": 18, "val": 6, "test": 6}


def test_hidden_files_and_folders_are_ignored(tmp_path):
    write_image_folder(tmp_path, {"a": 4, "b": 4})
    (tmp_path / ".git").mkdir()
    digit_image(0).save(tmp_path / ".git" / "x.png")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"not an image")
    (tmp_path / "b" / "notes.txt").write_text("ignored")
    (tmp_path / "README.md").write_text("ignored")
    task = load_task_data(tmp_path)
    assert task.classes == ["a", "b"]
    assert len(_all_examples(task)) == 8


def test_every_image_extension_loads(tmp_path):
    for i, ext in enumerate(sorted(IMAGE_EXTENSIONS)):
        write_image_folder(tmp_path, {"a": 1, "b": 1}, ext=ext, start=i)
    task = load_task_data(tmp_path)
    assert {p.suffix for p in _all_examples(task)} == set(IMAGE_EXTENSIONS)


def test_nested_folders_and_links_inside_root_are_followed(tmp_path):
    write_image_folder(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "deeper").mkdir()
    digit_image(9).save(tmp_path / "a" / "deeper" / "x.png")
    os.symlink(tmp_path / "b" / "b_0000.png", tmp_path / "b" / "alias.png")
    task = load_task_data(tmp_path)
    counts = Counter(task.classes[i] for s in task.splits().values() for i in s.labels)
    assert counts == {"a": 4, "b": 4}


def test_given_splits_are_honoured(tmp_path):
    train = write_image_folder(tmp_path, {"cat": 6, "dog": 6}, split="train")
    val = write_image_folder(tmp_path, {"cat": 2, "dog": 2}, split="val", start=10)
    test = write_image_folder(tmp_path, {"cat": 3, "dog": 3}, split="test", start=20)
    task = load_task_data(tmp_path, seed=5)
    assert task.split_given
    assert task.classes == ["cat", "dog"]
    for split, files in (("train", train), ("val", val), ("test", test)):
        assert sorted(task.splits()[split].examples) == sorted(p.resolve() for p in files)


def test_missing_val_is_carved_from_train_and_test_is_kept(tmp_path):
    train = write_image_folder(tmp_path, {"cat": 10, "dog": 10}, split="train")
    test = write_image_folder(tmp_path, {"cat": 3, "dog": 3}, split="test", start=20)
    task = load_task_data(tmp_path, val_fraction=0.2)
    assert task.split_given
    assert sorted(task.test.examples) == sorted(p.resolve() for p in test)
    assert set(task.train.examples) | set(task.val.examples) == {p.resolve() for p in train}
    assert Counter(task.val.labels.tolist()) == {0: 2, 1: 2}


@pytest.mark.parametrize("alias", ["validation", "valid", "dev"])
def test_validation_folder_aliases(tmp_path, alias):
    write_image_folder(tmp_path, {"a": 4, "b": 4}, split="train")
    val = write_image_folder(tmp_path, {"a": 2, "b": 2}, split=alias, start=10)
    write_image_folder(tmp_path, {"a": 2, "b": 2}, split="test", start=20)
    task = load_task_data(tmp_path)
    assert sorted(task.val.examples) == sorted(p.resolve() for p in val)


def test_fingerprint_is_stable_and_changes_when_a_file_changes(tmp_path):
    files = write_image_folder(tmp_path, {"a": 5, "b": 5})
    first = load_task_data(tmp_path).fingerprint()
    assert load_task_data(tmp_path).fingerprint() == first
    digit_image(3, size=40).save(files[0])  # same name, new content and size
    assert load_task_data(tmp_path).fingerprint() != first


def test_fingerprint_depends_on_seed(tmp_path):
    write_image_folder(tmp_path, {"a": 10, "b": 10})
    assert load_task_data(tmp_path, seed=0).fingerprint() != load_task_data(tmp_path, seed=1).fingerprint()


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("seed", SEEDS)
def test_split_is_stratified_deterministic_and_complete(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(5), rng.integers(1, 40, size=5))
    fractions = {"val": 0.15, "test": 0.2}
    parts = split_indices(labels, fractions, seed)
    again = split_indices(labels, fractions, seed)
    assert all(np.array_equal(parts[s], again[s]) for s in parts)
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(len(labels)))  # disjoint and complete
    for c in range(5):
        n = int((labels == c).sum())
        got = {s: int((labels[idx] == c).sum()) for s, idx in parts.items()}
        assert got["train"] >= 1
        if n >= 3:
            assert got["val"] >= 1 and got["test"] >= 1
            assert abs(got["test"] - n * 0.2) <= 1 and abs(got["val"] - n * 0.15) <= 1


@pytest.mark.parametrize("seed", SEEDS)
def test_loader_split_depends_only_on_seed(tmp_path, seed):
    write_image_folder(tmp_path, {"a": 12, "b": 9, "c": 3})
    one, two = load_task_data(tmp_path, seed=seed), load_task_data(tmp_path, seed=seed)
    for s in ("train", "val", "test"):
        assert one.splits()[s].examples == two.splits()[s].examples
        assert set(one.splits()[s].labels.tolist()) == {0, 1, 2}


def test_different_seeds_give_different_splits():
    labels = np.repeat(np.arange(3), 30)
    tests = {tuple(split_indices(labels, {"val": 0.15, "test": 0.2}, s)["test"]) for s in SEEDS}
    assert len(tests) == len(SEEDS)


@pytest.mark.parametrize(
    "n, expected",
    [(1, {"test": 0, "val": 0}), (2, {"test": 1, "val": 0}), (3, {"test": 1, "val": 1}),
     (4, {"test": 1, "val": 1}), (10, {"test": 2, "val": 2}), (100, {"test": 20, "val": 15})],
)
def test_tiny_class_rule(n, expected):
    assert class_allocation(n, {"test": 0.2, "val": 0.15}) == expected


def test_carving_val_only_keeps_one_in_train():
    assert class_allocation(1, {"val": 0.15}) == {"val": 0}
    assert class_allocation(2, {"val": 0.15}) == {"val": 1}
    assert class_allocation(20, {"val": 0.15}) == {"val": 3}


@pytest.mark.parametrize(
    "kwargs, match",
    [({"val_fraction": 1.0}, r"`val_fraction` must be a number in \[0, 1\); got 1.0"),
     ({"test_fraction": -0.1}, r"`test_fraction` must be a number in \[0, 1\); got -0.1"),
     ({"val_fraction": 0.5, "test_fraction": 0.5}, r"must be below 1 so train keeps examples")],
)
def test_bad_fractions_are_config_errors(tmp_path, kwargs, match):
    write_image_folder(tmp_path, {"a": 3, "b": 3})
    with pytest.raises(ConfigError, match=match):
        load_task_data(tmp_path, **kwargs)


# ---------------------------------------------------------------- text tables


@pytest.mark.parametrize("ext", sorted(TEXT_EXTENSIONS))
def test_text_table_loads_in_every_format(tmp_path, ext):
    rows = text_rows([("neg", 10), ("pos", 10)])
    task = load_task_data(_write_table(tmp_path / f"data{ext}", rows))
    assert task.modality == "text" and task.classes == ["neg", "pos"]
    assert not task.split_given
    assert sorted(_all_examples(task)) == sorted(r["text"] for r in rows)
    for split in task.splits().values():
        for text, label in zip(split.examples, split.labels):
            assert text.startswith(task.classes[label])


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_integer_labels_keep_numeric_order(tmp_path, ext):
    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate([10, 2, 1] * 4)]
    task = load_task_data(_write_table(tmp_path / f"d{ext}", rows))
    assert task.classes == ["1", "2", "10"]


def test_split_column_is_honoured_with_aliases(tmp_path):
    rows = text_rows([("a", 8), ("b", 8)])
    for i, r in enumerate(rows):
        r["split"] = ["train", "Train", "train", "dev", "test", "validation", "TEST", "train"][i % 8]
    task = load_task_data(_write_table(tmp_path / "d.csv", rows))
    assert task.split_given
    assert task.summary()["split_sizes"] == {"train": 8, "val": 4, "test": 4}
    assert set(task.test.examples) == {r["text"] for r in rows if r["split"].lower() == "test"}


def test_split_column_without_val_carves_val_from_train(tmp_path):
    rows = text_rows([("a", 10), ("b", 10)])
    for i, r in enumerate(rows):
        r["split"] = "test" if i % 5 == 0 else "train"
    task = load_task_data(_write_table(tmp_path / "d.jsonl", rows))
    assert set(task.test.examples) == {r["text"] for r in rows if r["split"] == "test"}
    assert len(task.val) >= 2 and set(task.val.labels.tolist()) == {0, 1}


def test_custom_column_names(tmp_path):
    rows = [{"sentence": r["text"], "y": r["label"], "fold": "train"} for r in text_rows([("a", 5), ("b", 5)])]
    rows[0]["fold"] = rows[5]["fold"] = "test"
    path = _write_table(tmp_path / "d.tsv", rows)
    task = load_task_data(path, text_column="sentence", label_column="y", split_column="fold")
    assert task.split_given and len(task.test) == 2


def test_non_ascii_utf8_and_bom_are_fine(tmp_path):
    path = tmp_path / "d.csv"
    body = "text,label\nçà va,fr\n日本語です,ja\nhéhé,fr\nすごい,ja\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    task = load_task_data(path, val_fraction=0, test_fraction=0.3)
    assert "日本語です" in _all_examples(task) and task.classes == ["fr", "ja"]


# ---------------------------------------------------------------- dispatch


def test_unsupported_file_says_what_is_supported(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DataError, match=r"not a supported data file; expected a folder of class "
                                        r"subfolders .* or a table file \(.csv, .json, .jsonl"):
        load_task_data(path)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match=r"`path` '.*nowhere' does not exist"):
        load_task_data(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"holds no image or audio files"):
        load_task_data(tmp_path)


def test_audio_folder_with_a_broken_clip_is_named(tmp_path):
    (tmp_path / "yes").mkdir()
    (tmp_path / "yes" / "a.wav").write_bytes(b"RIFF")
    with pytest.raises(DataError, match=r"yes/a\.wav: unreadable or corrupt audio"):
        load_task_data(tmp_path)


# ---------------------------------------------------------------- open_image


def _pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


def test_open_image_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255  # red
    a[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    a[2, 0, 3] = 128  # half transparent red over white -> pink
    Image.fromarray(a, "RGBA").save(tmp_path / "x.png")
    px = _pixels(open_image(tmp_path / "x.png"))
    assert px[0, 0].tolist() == [255, 0, 0]
    assert px[3, 3].tolist() == [255, 255, 255]
    assert px[2, 0, 0] == 255 and 120 <= px[2, 0, 1] <= 135


def test_open_image_palette_with_and_without_transparency(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.save(tmp_path / "p.png")
    assert _pixels(open_image(tmp_path / "p.png"))[0, 0].tolist() == [0, 0, 255]
    img.info["transparency"] = 1
    img.save(tmp_path / "pt.png", transparency=1)
    assert _pixels(open_image(tmp_path / "pt.png"))[0, 0].tolist() == [255, 255, 255]
    img.save(tmp_path / "p.gif")
    assert open_image(tmp_path / "p.gif").mode == "RGB"


def test_open_image_16_bit_is_scaled_to_8_bit(tmp_path):
    a = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "x.png")
    Image.fromarray(a).save(tmp_path / "x.tif")
    for name in ("x.png", "x.tif"):
        assert _pixels(open_image(tmp_path / name))[0, :, 0].tolist() == [0, 1, 128, 255]


def test_open_image_32_bit_int_and_float_modes(tmp_path):
    Image.fromarray(np.array([[0, 1000, 65535]], np.int32), "I").save(tmp_path / "i.tif")
    assert _pixels(open_image(tmp_path / "i.tif"))[0, :, 0].tolist() == [0, 4, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F").save(tmp_path / "f.tif")
    assert _pixels(open_image(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 128, 255]


def test_open_image_greyscale_bilevel_and_cmyk(tmp_path):
    digit_image(0).save(tmp_path / "l.png")
    grey = _pixels(open_image(tmp_path / "l.png"))
    for channel in range(3):
        assert np.array_equal(grey[..., channel], np.asarray(digit_image(0)))
    Image.new("1", (3, 3), 1).save(tmp_path / "b.bmp")
    assert _pixels(open_image(tmp_path / "b.bmp")).min() == 255
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    r, g, b = _pixels(open_image(tmp_path / "c.jpg"))[1, 1].tolist()
    assert r > 200 and g < 60 and b < 60


def test_open_image_names_the_file_when_it_cannot_decode(tmp_path):
    path = tmp_path / "broken.png"
    digit_image(1).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=r"Cannot read image '.*broken.png': truncated image"):
        open_image(path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.jpg': empty file \(0 bytes\)"):
        open_image(tmp_path / "empty.jpg")
