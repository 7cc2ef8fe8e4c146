"""Data folders and tables that used to mislead or crash the loaders (issue 15, items 12 and the traceback list).

* numeric labels: ``1`` and ``1.0`` in a table are one class; text labels stay as written;
* image formats Pillow cannot read here (HEIC, SVG, ...) are named with the fix, never ignored;
* EXIF orientation is applied wherever an image is decoded (fit, features, predict);
* symlink loops and unreadable folders are one-line ``DataError``s naming the path, not tracebacks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from transferkit.data import load_task_data, open_image
from transferkit.data.checks import PreflightError
from transferkit.data.synthetic import write_image_folder
from transferkit.errors import DataError

# -- numeric labels ------------------------------------------------------------------------------------


def _texts(labels: list) -> list[str]:
    return [f"text number {i}" for i in range(len(labels))]


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl"])
def test_whole_number_labels_are_one_class_however_they_are_written(tmp_path, name):
    labels = ["1", "1.0", " 2 ", "2.00", "+3", "3.0", "1e0", "10"] * 2
    frame = pd.DataFrame({"text": _texts(labels), "label": labels})
    path = tmp_path / name
    if name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    task = load_task_data(path)
    assert task.classes == ["1", "2", "3", "10"]
    counts = np.bincount(np.concatenate([s.labels for s in task.splits().values()]))
    assert counts.tolist() == [6, 4, 4, 2]


def test_numbers_in_json_and_strings_in_the_same_column_are_one_class(tmp_path):
    labels = [1, "1", 1.0, "1.0", 2, "2"] * 2
    lines = [json.dumps({"text": t, "label": y}) for t, y in zip(_texts(labels), labels)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    assert load_task_data(tmp_path / "d.jsonl").classes == ["1", "2"]


def test_text_labels_and_real_numbers_keep_their_spelling(tmp_path):
    labels = ["1", "1.0", "cat"] * 4  # a column with real text stays text: three classes
    pd.DataFrame({"text": _texts(labels), "label": labels}).to_csv(tmp_path / "mixed.csv", index=False)
    assert load_task_data(tmp_path / "mixed.csv").classes == ["1", "1.0", "cat"]
    labels = ["0.5", "1.0", "1"] * 4  # all numbers: whole ones become "1", 0.5 stays
    pd.DataFrame({"text": _texts(labels), "label": labels}).to_csv(tmp_path / "real.csv", index=False)
    assert load_task_data(tmp_path / "real.csv").classes == ["0.5", "1"]


def test_extra_label_columns_and_sequence_tables_normalise_too(tmp_path):
    from transferkit.data.sequence import write_series_table

    labels = ["1", "1.0", "2", "2.0"] * 3
    frame = pd.DataFrame({"text": _texts(labels), "topic": ["a", "b"] * 6, "level": labels})
    frame.to_csv(tmp_path / "two.csv", index=False)
    task = load_task_data(tmp_path / "two.csv", label_column="topic,level")
    assert task.extra_classes == {"level": ["1", "2"]}
    series = [np.sin(np.linspace(0, 3, 20) * (1 + i % 2)) for i in range(12)]
    path = write_series_table(tmp_path / "s.csv", series, labels)
    assert load_task_data(path, modality="sequence").classes == ["1", "2"]


# -- image formats Pillow cannot read here ---------------------------------------------------------------


def test_heic_svg_only_class_is_named_file_by_file_with_the_fix(tmp_path):
    write_image_folder(tmp_path, {"a": 4, "b": 4}, size=16)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (tmp_path / "c" / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    with pytest.raises(PreflightError) as info:
        load_task_data(tmp_path)
    message = str(info.value)
    assert "empty class folder" not in message
    assert "  - c/: class 'c' has no usable images [cannot be skipped]" in message
    assert ("  - c/IMG_0001.HEIC: .heic files cannot be decoded here (Pillow reads "
            in message and "convert it to PNG or JPEG" in message)
    assert "  - c/logo.svg: .svg files cannot be decoded here" in message
    assert {p.where for p in info.value.problems if p.skippable} == {"c/IMG_0001.HEIC", "c/logo.svg"}


def test_unsupported_images_next_to_good_ones_are_skippable(tmp_path):
    write_image_folder(tmp_path, {"a": 4, "b": 4}, size=16)
    (tmp_path / "a" / "phone.heif").write_bytes(b"not decodable here")
    with pytest.raises(DataError, match=r"  - a/phone\.heif: \.heif files cannot be decoded here"):
        load_task_data(tmp_path)
    task = load_task_data(tmp_path, skip_bad=True)
    assert [w for w, _ in task.skipped] == ["a/phone.heif"]
    assert sum(len(s) for s in task.splits().values()) == 8


def test_a_folder_of_only_heic_images_is_an_image_folder_with_named_files(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            (tmp_path / c / f"{c}{i}.heic").write_bytes(b"heic")
    with pytest.raises(PreflightError) as info:
        load_task_data(tmp_path)
    assert {p.where for p in info.value.problems if p.skippable} == {"a/a0.heic", "a/a1.heic", "b/b0.heic", "b/b1.heic"}


def test_open_image_names_the_fix_for_unsupported_formats(tmp_path):
    (tmp_path / "x.svg").write_text("<svg/>")
    with pytest.raises(DataError, match=r"^Cannot read image '.*x\.svg': \.svg files cannot be decoded here .*"
                                        r"convert it to PNG or JPEG"):
        open_image(tmp_path / "x.svg")


def test_formats_pillow_reads_here_are_loaded_not_refused():
    from PIL import features

    from transferkit.data.image import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE

    assert not IMAGE_EXTENSIONS & UNSUPPORTED_IMAGE
    assert {".heic", ".heif", ".svg"} <= UNSUPPORTED_IMAGE
    assert (".avif" in IMAGE_EXTENSIONS) == bool(features.check("avif"))


# -- EXIF orientation ----------------------------------------------------------------------------------


def _rotated_photo(path: Path) -> None:
    """A 32x16 JPEG whose top half is white, tagged "rotate 90 clockwise to display" (orientation 6)."""
    a = np.zeros((16, 32, 3), dtype=np.uint8)
    a[:8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied_when_decoding(tmp_path):
    _rotated_photo(tmp_path / "phone.jpg")
    im = np.asarray(open_image(tmp_path / "phone.jpg"))
    assert im.shape == (32, 16, 3)  # portrait, as a photo viewer shows it
    assert im[:, 12].mean() > 200 and im[:, 3].mean() < 50  # the white half is on the right


def test_training_features_and_predict_inputs_see_the_upright_image(tmp_path):
    from transferkit.engine.extract import _decode_chunk
    from transferkit.sources.base import Preprocessing
    from transferkit.sources.inputs import ImageInputs

    _rotated_photo(tmp_path / "phone.jpg")
    pre = Preprocessing("image", image_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0)
    x = ImageInputs(pre).load(tmp_path / "phone.jpg")  # predict, evaluation and training all decode here
    assert x.shape == (3, 16, 16)
    assert x[:, :, 12:].mean() > 0.8 and x[:, :, :4].mean() < 0.2
    assert _decode_chunk([tmp_path / "phone.jpg"])[0].size == (16, 32)


# -- symlink loops and unreadable folders --------------------------------------------------------------


def _loop_data(tmp_path: Path, kind: str) -> tuple[Path, str]:
    root = tmp_path / "data"
    write_image_folder(root, {"a": 4, "b": 4}, size=16)
    if kind == "file links to itself":
        os.symlink("x.png", root / "a" / "x.png")
        return root, "a/x.png"
    if kind == "two links to each other":
        os.symlink("l2", root / "a" / "l1")
        os.symlink("l1", root / "a" / "l2")
        return root, "a/l1"
    if kind == "class folder links to itself":
        os.symlink("c", root / "c")
        return root, "c"
    os.symlink("..", root / "a" / "up")  # a folder link to an ancestor
    return root, "a/up/"


LOOPS = ["file links to itself", "two links to each other", "class folder links to itself", "folder links to its parent"]


@pytest.mark.parametrize("kind", LOOPS)
def test_symlink_loops_are_named_not_a_traceback(tmp_path, kind):
    root, where = _loop_data(tmp_path, kind)
    with pytest.raises(PreflightError) as info:
        load_task_data(root)
    assert f"  - {where}: symlink loop" in str(info.value)
    task = load_task_data(root, skip_bad=True)  # --skip-bad skips the link and trains on the rest
    assert where in [w for w, _ in task.skipped]
    assert sorted(p.name for s in task.splits().values() for p in s.examples) == sorted(
        f"{c}_{i:04d}.png" for c, n in (("a", 4), ("b", 4)) for i in range(n))


@pytest.mark.parametrize("kind", LOOPS)
def test_symlink_loops_on_the_command_line_exit_2_naming_the_link(tmp_path, kind, monkeypatch):
    from test_bad_images import cli

    import transferkit.pipeline

    def refuse(source_id):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transferkit.pipeline, "load_source", refuse)
    root, where = _loop_data(tmp_path, kind)
    code, _, err = cli(["fit", root, "--source", "timm:test_efficientnet@random", "--out", tmp_path / "run", "--quiet"])
    assert code == 2 and "Traceback" not in err and f"  - {where}: symlink loop" in err


def _deny(monkeypatch, denied: Path) -> None:
    """Makes listing ``denied`` fail as ``chmod 000`` would for a non-root user."""
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).resolve() == denied.resolve():
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_an_unreadable_class_folder_is_one_line_naming_it(tmp_path, monkeypatch, kind):
    if kind == "image":
        write_image_folder(tmp_path, {"a": 4, "b": 4}, size=16)
    else:
        from transferkit.data.audio import write_tone_folder

        write_tone_folder(tmp_path, {"a": 3, "b": 3})
    _deny(monkeypatch, tmp_path / "b")
    with pytest.raises(DataError) as info:
        load_task_data(tmp_path, skip_bad=True)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"Cannot read folder {str(tmp_path / 'b')!r}: permission denied")
    assert "chmod" in message


def test_an_unreadable_class_folder_on_the_command_line(tmp_path, monkeypatch):
    from test_bad_images import cli

    write_image_folder(tmp_path / "data", {"a": 4, "b": 4}, size=16)
    _deny(monkeypatch, tmp_path / "data" / "a")
    code, _, err = cli(["fit", tmp_path / "data", "--source", "timm:test_efficientnet@random",
                        "--out", tmp_path / "run", "--quiet"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Cannot read folder" in err
    assert str(tmp_path / "data" / "a") in err


# -- texts and tables fit reads the same way predict does ------------------------------------------------


def test_missing_value_markers_are_bad_rows_in_fit_too(tmp_path):
    rows = [{"text": f"text number {i}", "label": "ab"[i % 2]} for i in range(8)]
    rows[1]["text"], rows[4]["text"] = "NA", "None"
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match=r"  - row 2: missing text \('NA' marks a missing value\)\n"
                                        r"  - row 5: missing text \('None' marks a missing value\)\n"):
        load_task_data(tmp_path / "d.csv")
    task = load_task_data(tmp_path / "d.csv", skip_bad=True)
    assert [w for w, _ in task.skipped] == ["row 2", "row 5"]
    assert not {"NA", "None", "nan"} & {t for s in task.splits().values() for t in s.examples}


def test_an_unreadable_table_is_one_line_naming_it(tmp_path, monkeypatch):
    pd.DataFrame({"text": ["a b", "c d"] * 4, "label": ["x", "y"] * 4}).to_csv(tmp_path / "d.csv", index=False)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError) as info:
        load_task_data(tmp_path / "d.csv", modality="text")
    assert str(info.value) == (f"Cannot read table {str(tmp_path / 'd.csv')!r}: permission denied. "
                               "Check the file and its permissions.")
