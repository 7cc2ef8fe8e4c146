"""The data people have: tables of file paths, imagefolders with metadata.csv, Hugging Face datasets folders.

Each layout is built here from a few tiny images (16 px) or short WAVs, loaded (splits, classes,
counts), trained end to end once, and broken: the CLI exits 2 with every bad file or row named.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, TINY_IMAGE_SOURCE
from test_bad_images import cli, no_model  # noqa: F401  (no_model is a fixture)

from transferkit.data import detect_layout, detect_modality, load_task_data
from transferkit.data.hf import CACHE_ENV
from transferkit.data.synthetic import digit_image
from transferkit.errors import DataError
from transferkit.pipeline import fit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train faster on one thread of a busy machine

CLASSES = ("cat", "dog")
SKIP_HINT = "Fix or remove these files or rows, or pass --skip-bad (skip_bad=True) to skip them."


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    """Decoded dataset bytes go to the test's own folder."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def png_bytes(i: int, label: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    digit_image(i, size=size, digit=label).save(buf, "PNG")
    return buf.getvalue()


def wav_bytes(i: int, label: int, rate: int = 8000) -> bytes:
    import soundfile as sf

    t = np.arange(int(0.25 * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * 220 * 2**label * (1 + 0.01 * i) * t)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def kaggle(root, n: int = 6, ext: str = ".png", with_ext: bool = False):
    """``root/train.csv`` (``image_id,label``) beside ``root/images/<id>.png``; returns the table."""
    (root / "images").mkdir(parents=True)
    rows = []
    for label, name in enumerate(CLASSES):
        for i in range(n):
            image_id = f"{name[0]}{i:03d}"
            (root / "images" / f"{image_id}{ext}").write_bytes(png_bytes(i, label))
            rows.append({"image_id": image_id + (ext if with_ext else ""), "label": name})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root / "train.csv"


def imagefolder(root, counts=None, fmt: str = "csv"):
    """A Hugging Face imagefolder: ``root/{train,validation,test}/metadata.csv`` + images."""
    counts = counts or {"train": 6, "validation": 2, "test": 2}
    for split, n in counts.items():
        (root / split).mkdir(parents=True)
        rows = []
        for label, name in enumerate(CLASSES):
            for i in range(n):
                (root / split / f"{name}_{i}.png").write_bytes(png_bytes(i, label))
                rows.append({"file_name": f"{name}_{i}.png", "label": name})
        if fmt == "csv":
            pd.DataFrame(rows).to_csv(root / split / "metadata.csv", index=False)
        else:
            (root / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def hf_dict(root, counts=None, corrupt: tuple[str, int] | None = None):
    """A ``DatasetDict.save_to_disk`` folder (the real ``datasets`` library): Image + ClassLabel."""
    datasets = pytest.importorskip("datasets")
    counts = counts or {"train": 6, "validation": 2, "test": 2}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    parts = {}
    for split, n in counts.items():
        images = [{"bytes": png_bytes(i, label), "path": None} for label in range(2) for i in range(n)]
        if corrupt and corrupt[0] == split:
            images[corrupt[1]] = {"bytes": b"not a png at all", "path": "broken.png"}
        parts[split] = datasets.Dataset.from_dict({"image": images, "label": [k for k in range(2) for _ in range(n)]},
                                                  features=features)
    datasets.DatasetDict(parts).save_to_disk(str(root))
    return root


def write_arrow_dataset(folder, column: str, values: list[dict], labels: list[int], kind: str = "Audio"):
    """A one-split ``save_to_disk`` folder written with pyarrow as ``datasets`` writes it (no torchcodec needed)."""
    import pyarrow as pa

    features = {column: {"_type": kind}, "label": {"names": list(CLASSES), "_type": "ClassLabel"}}
    schema = pa.schema([(column, pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("label", pa.int64())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    folder.mkdir(parents=True)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
        w.write_table(pa.table({column: values, "label": labels}, schema=schema))
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                   "_split": None}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    return folder


def sizes(task) -> dict[str, int]:
    return {name: len(s) for name, s in task.splits().items()}


def fit_fails(data, tmp_path, *extra: str) -> str:
    out = tmp_path / "run"
    code, _, err = cli(["fit", data, "--source", TINY_IMAGE_SOURCE, "--out", out, "--quiet", *extra])
    assert code == 2, err
    assert err.startswith("error: Preflight found ") and "Traceback" not in err
    assert not out.exists()
    return err.removeprefix("error: ").rstrip("\n")


# -- 1. a table of file paths or ids -------------------------------------------------------------------


def test_kaggle_ids_without_extension_beside_an_images_folder(tmp_path):
    table = kaggle(tmp_path)
    assert detect_layout(table) == ("paths", "image") and detect_modality(table) == "image"
    task = load_task_data(table)
    assert task.modality == "image" and task.classes == ["cat", "dog"] and not task.split_given
    assert sum(sizes(task).values()) == 12 and all(len(s) >= 2 for s in task.splits().values())
    assert all(p.is_absolute() and p.parent == (tmp_path / "images").resolve() for p in task.train.examples)
    assert task.origin == str(table.resolve())


def test_relative_paths_with_a_split_column_in_jsonl_and_parquet(tmp_path):
    rows = []
    for label, name in enumerate(CLASSES):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "pics" / name / f"{i}.png").write_bytes(png_bytes(i, label))
            rows.append({"file": f"pics/{name}/{i}.png", "species": name,
                         "split": "train" if i < 3 else "validation" if i == 3 else "test"})
    pd.DataFrame(rows).to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    for table in (tmp_path / "t.jsonl", tmp_path / "t.parquet"):
        task = load_task_data(table, label_column="species")
        assert task.modality == "image" and task.split_given and task.classes == ["cat", "dog"]
        assert sizes(task) == {"train": 6, "val": 2, "test": 2}
        assert [p.name for p in task.val.examples] == ["3.png", "3.png"]


def test_audio_path_table_and_an_explicit_path_column(tmp_path):
    (tmp_path / "clips").mkdir()
    rows = []
    for label, name in enumerate(CLASSES):
        for i in range(4):
            (tmp_path / "clips" / f"{name}{i}.wav").write_bytes(wav_bytes(i, label))
            rows.append({"recording": f"{name}{i}", "label": name})
    pd.DataFrame(rows).to_csv(tmp_path / "clips.csv", index=False)
    # "recording" is neither a path-like name nor holds extensions: it must be named
    with pytest.raises(DataError, match=r"column 'text' \(`text_column`\) not found"):
        load_task_data(tmp_path / "clips.csv")
    task = load_task_data(tmp_path / "clips.csv", path_column="recording")
    assert task.modality == "audio" and sum(sizes(task).values()) == 8


def test_two_label_columns_make_two_tasks(tmp_path):
    table = kaggle(tmp_path)
    df = pd.read_csv(table)
    df["size"] = ["small", "big"] * (len(df) // 2)
    df.to_csv(table, index=False)
    task = load_task_data(table, label_column="label,size")
    assert task.tasks == {"label": ["cat", "dog"], "size": ["big", "small"]}
    for split in task.splits().values():
        sizes_given = {p.stem: s for p, s in zip(split.examples, split.extra_labels["size"])}
        assert all(task.extra_classes["size"][s] == df.set_index("image_id")["size"][stem]
                   for stem, s in sizes_given.items())


def test_a_path_table_trains_end_to_end(tmp_path):
    table = kaggle(tmp_path / "data", with_ext=True)
    run = fit(table, source=TINY_IMAGE_SOURCE, verbose=False, **{**FAST, "epochs": 1})
    assert run.classes == {"label": ["cat", "dog"]} and 0 <= run.metrics["test_accuracy"] <= 1


def test_broken_path_table_names_every_file_and_row(tmp_path, no_model):
    table = kaggle(tmp_path)
    (tmp_path / "images" / "c001.png").unlink()  # missing
    (tmp_path / "images" / "c002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # corrupt
    (tmp_path / "images" / "d003.jpg").write_bytes(png_bytes(3, 1))  # d003 now matches two files
    df = pd.read_csv(table)
    df.loc[len(df)] = ["zebra7", "dog"]  # unknown id
    df.to_csv(table, index=False)
    message = fit_fails(table, tmp_path)
    lines = message.splitlines()
    assert lines[0] == f"Preflight found 4 problems in '{table}':"
    assert lines[1].startswith("  - row 2: no image or audio file named 'c001' (with any extension) under ")
    assert lines[2].startswith("  - row 3 (images/c002.png): ") and "image" in lines[2]
    assert lines[3] == "  - row 10: 'd003' matches 2 files (images/d003.jpg, images/d003.png); name one by its path"
    assert lines[4].startswith("  - row 13: no image or audio file named 'zebra7'")
    assert lines[-1] == SKIP_HINT
    task = load_task_data(table, skip_bad=True)
    assert [w for w, _ in task.skipped] == ["row 2", "row 3 (images/c002.png)", "row 10", "row 13"]
    assert sum(sizes(task).values()) == 9


def test_cli_fit_takes_a_path_table_with_path_column_and_skip_bad(tmp_path):
    table = kaggle(tmp_path / "data")
    (tmp_path / "data" / "images" / "d002.png").write_bytes(b"")
    with open(table, "a") as f:
        f.write("nobody,cat\n")
    out = tmp_path / "run"
    code, _, err = cli(["fit", table, "--path-column", "image_id", "--skip-bad", "--source", TINY_IMAGE_SOURCE,
                        "--out", out, "--quiet", "--baseline", "none", "--epochs", "1", "--probe-epochs", "2",
                        "--image-size", "32", "--batch-size", "16"])
    assert code == 0, err
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert data["modality"] == "image" and sum(data["split_sizes"].values()) == 11
    assert [s["file"] for s in data["skipped"]] == ["row 9 (images/d002.png)", "row 13"]
    assert json.loads((out / "config.json").read_text())["fit"]["path_column"] == "image_id"


def test_path_table_files_missing_altogether_are_named_not_taken_for_text(tmp_path, no_model):
    pd.DataFrame({"image_path": ["a/1.png", "b/2.png"], "label": ["x", "y"]}).to_csv(tmp_path / "t.csv", index=False)
    message = fit_fails(tmp_path / "t.csv", tmp_path)
    assert "  - row 1: file 'a/1.png' not found" in message and "  - row 2: file 'b/2.png' not found" in message


# -- 2. Hugging Face imagefolder with metadata.csv ---------------------------------------------------------


def test_a_metadata_csv_without_file_name_beside_class_folders_is_not_this_layout(tmp_path):
    for label, name in enumerate(CLASSES):
        (tmp_path / name).mkdir()
        for i in range(3):
            (tmp_path / name / f"{i}.png").write_bytes(png_bytes(i, label))
    (tmp_path / "metadata.csv").write_text("source,licence\nscanner,cc-by\n")
    assert detect_layout(tmp_path) == ("folder", "image")
    assert load_task_data(tmp_path).classes == ["cat", "dog"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_imagefolder_with_metadata_in_split_folders(tmp_path, fmt):
    root = imagefolder(tmp_path / "data", fmt=fmt)
    assert detect_layout(root) == ("metadata", "image")
    task = load_task_data(root)
    assert task.classes == ["cat", "dog"] and task.split_given
    assert sizes(task) == {"train": 12, "val": 4, "test": 4}
    assert {p.parent.name for p in task.val.examples} == {"validation"}


def test_imagefolder_with_one_root_metadata_takes_splits_from_the_paths(tmp_path):
    rows = []
    for split, n in (("train", 4), ("test", 2)):
        (tmp_path / split).mkdir()
        for label, name in enumerate(CLASSES):
            for i in range(n):
                (tmp_path / split / f"{name}{i}.png").write_bytes(png_bytes(i, label))
                rows.append({"file_name": f"{split}/{name}{i}.png", "label": name})
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False)
    task = load_task_data(tmp_path)
    assert task.split_given and len(task.test) == 4 and len(task.train) + len(task.val) == 8


def test_an_imagefolder_trains_end_to_end(tmp_path):
    root = imagefolder(tmp_path / "data")
    run = fit(root, source=TINY_IMAGE_SOURCE, verbose=False, **{**FAST, "epochs": 1})
    assert run.classes == {"label": ["cat", "dog"]} and 0 <= run.metrics["test_accuracy"] <= 1


def test_broken_imagefolder_names_the_files(tmp_path, no_model):
    root = imagefolder(tmp_path / "data")
    (root / "train" / "cat_1.png").unlink()
    (root / "test" / "dog_0.png").write_bytes(b"")
    message = fit_fails(root, tmp_path)
    assert "  - test/metadata.csv row 3 (dog_0.png): empty file (0 bytes)" in message
    assert "  - train/metadata.csv row 2: no image or audio file named 'cat_1.png'" not in message  # has an extension
    assert "  - train/metadata.csv row 2: file 'cat_1.png' not found" in message
    code, _, err = cli(["fit", root, "--source", TINY_IMAGE_SOURCE, "--out", tmp_path / "r", "--quiet",
                        "--path-column", "image"])
    assert code == 2 and "column 'image' (`path_column`) not found in metadata.csv" in err


# -- 3. Hugging Face datasets folders ------------------------------------------------------------------------


def test_save_to_disk_dataset_dict_keeps_its_splits_and_class_names(tmp_path, data_cache):
    root = hf_dict(tmp_path / "ds")
    assert detect_layout(root) == ("hf", "image")
    task = load_task_data(root)
    assert task.classes == ["cat", "dog"] and task.split_given
    assert sizes(task) == {"train": 12, "val": 4, "test": 4}
    assert all(p.is_relative_to(data_cache.resolve()) and p.suffix == ".png" for p in task.train.examples)
    assert np.bincount(task.train.labels).tolist() == [6, 6]
    again = load_task_data(root)  # the same files, untouched: runs and caches see the same data
    assert again.fingerprint() == task.fingerprint()


def test_parquet_folder_and_a_single_parquet_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"img": datasets.Image(), "labels": datasets.ClassLabel(names=list(CLASSES))})
    (tmp_path / "data").mkdir()
    for split, n in (("train", 5), ("test", 2)):
        ds = datasets.Dataset.from_dict({"img": [{"bytes": png_bytes(i, k), "path": f"{k}_{i}.png"}
                                                 for k in range(2) for i in range(n)],
                                         "labels": [k for k in range(2) for _ in range(n)]}, features=features)
        ds.to_parquet(str(tmp_path / "data" / f"{split}-00000-of-00001.parquet"))
    assert detect_layout(tmp_path) == ("hf", "image")
    task = load_task_data(tmp_path)  # the ClassLabel column stands in for the default "label"
    assert task.classes == ["cat", "dog"] and len(task.test) == 4 and len(task.train) + len(task.val) == 10
    single = tmp_path / "data" / "train-00000-of-00001.parquet"
    assert detect_layout(single) == ("hf", "image")
    assert sum(sizes(load_task_data(single)).values()) == 10


def test_audio_dataset_decodes_its_wav_bytes(tmp_path):
    values = [{"bytes": wav_bytes(i, k), "path": None} for k in range(2) for i in range(4)]
    root = write_arrow_dataset(tmp_path / "speech", "audio", values, [k for k in range(2) for _ in range(4)])
    assert detect_layout(root) == ("hf", "audio")
    task = load_task_data(root)
    assert task.modality == "audio" and task.classes == ["cat", "dog"] and sum(sizes(task).values()) == 8
    assert all(p.suffix == ".wav" for s in task.splits().values() for p in s.examples)


def test_a_text_dataset_dict_reads_its_texts(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    parts = {split: datasets.Dataset.from_dict({"text": [f"{w} {i}" for w in ("bad", "good") for i in range(n)],
                                                "label": [k for k in range(2) for _ in range(n)]}, features=features)
             for split, n in (("train", 5), ("test", 2))}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "reviews"))
    assert detect_layout(tmp_path / "reviews") == ("hf", "text")
    task = load_task_data(tmp_path / "reviews")
    assert task.modality == "text" and task.classes == ["neg", "pos"] and sorted(task.test.examples) == [
        "bad 0", "bad 1", "good 0", "good 1"]


def test_a_datasets_folder_trains_end_to_end(tmp_path):
    root = hf_dict(tmp_path / "ds")
    run = fit(root, source=TINY_IMAGE_SOURCE, verbose=False, **{**FAST, "epochs": 1})
    assert run.classes == {"label": ["cat", "dog"]} and 0 <= run.metrics["test_accuracy"] <= 1


def test_broken_datasets_folder_names_shard_and_row(tmp_path, no_model):
    root = hf_dict(tmp_path / "ds", corrupt=("train", 2))
    message = fit_fails(root, tmp_path)
    assert message.splitlines()[1].startswith("  - train/data-00000-of-00001.arrow row 3 (broken.png): ")
    assert message.splitlines()[-1] == "Fix or remove these examples, or pass --skip-bad (skip_bad=True) to skip them."
    task = load_task_data(root, skip_bad=True)
    assert len(task.skipped) == 1 and sum(sizes(task).values()) == 19


def test_unlabelled_and_unknown_splits_are_left_out_and_listed(tmp_path):
    values = [{"bytes": png_bytes(i, k), "path": None} for k in range(2) for i in range(5)]
    root = tmp_path / "ds"
    write_arrow_dataset(root / "train", "image", values, [k for k in range(2) for _ in range(5)], kind="Image")
    write_arrow_dataset(root / "test", "image", values[:3], [-1, -1, -1], kind="Image")
    write_arrow_dataset(root / "unsupervised", "image", values[:2], [-1, -1], kind="Image")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test", "unsupervised"]}))
    task = load_task_data(root)
    assert not task.split_given and sum(sizes(task).values()) == 10
    assert task.skipped == [("split 'test'", "has no labels (every one is missing); left out (3 examples)"),
                            ("split 'unsupervised'", "is not train, validation or test; left out (2 examples)")]


def test_a_damaged_shard_and_a_bad_state_json_are_named(tmp_path, no_model):
    root = hf_dict(tmp_path / "ds")
    (root / "test" / "data-00000-of-00001.arrow").write_bytes(b"garbage")
    state = json.loads((root / "validation" / "state.json").read_text())
    state["_data_files"] = [{"filename": "../../../etc/passwd"}]
    (root / "validation" / "state.json").write_text(json.dumps(state))
    message = fit_fails(root, tmp_path)
    assert "  - validation/../../../etc/passwd: a data file named outside the dataset folder" in message
    with pytest.raises(DataError, match=r"test/data-00000-of-00001\.arrow: cannot read it"):
        (root / "validation" / "state.json").write_text(json.dumps({**state, "_data_files": []}))
        load_task_data(root)
