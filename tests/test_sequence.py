"""Sequence data (tables and .npy folders) and the built-in seq: models, through fit and run: transfer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from transferkit import fit, load_run
from transferkit.data import detect_modality, load_task_data
from transferkit.data.sequence import write_series_table
from transferkit.errors import ConfigError, DataError, UnknownNameError
from transferkit.sources import input_pipeline, load_source

FAST = {"epochs": 3, "probe_epochs": 10, "batch_size": 16, "baseline": "none", "lr": 3e-3, "probe_lr": 1e-2}
ARCHS = ["seq:cnn1d?width=16&layers=2", "seq:lstm?width=16", "seq:gru?width=16&layers=1",
         "seq:transformer?width=16&heads=2&layers=1&patch=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def waves(n: int, seed: int, channels: int = 1, lengths=(24, 40)) -> tuple[list[np.ndarray], list[str]]:
    """Noisy sines (slow vs fast) of random length and phase; channel k is a scaled, shifted copy."""
    rng = np.random.default_rng(seed)
    series, labels = [], []
    for i in range(n):
        label = ("slow", "fast")[i % 2]
        t = np.arange(rng.integers(*lengths))
        base = np.sin(t * (0.25 if label == "slow" else 0.9) + rng.uniform(0, 6.3))
        x = np.stack([(k + 1) * base + 0.2 * rng.standard_normal(len(t)) + k for k in range(channels)])
        series.append(x.astype(np.float32) if channels > 1 else x[0].astype(np.float32))
        labels.append(label)
    return series, labels


# -- data ----------------------------------------------------------------------------------------


def test_wide_csv_with_variable_lengths(tmp_path):
    series, labels = waves(20, 0, lengths=(5, 9))
    width = max(len(s) for s in series)
    rows = [{**{f"t{j}": (s[j] if j < len(s) else None) for j in range(width)}, "label": y}
            for s, y in zip(series, labels)]
    path = tmp_path / "wide.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert detect_modality(path) == "sequence"
    task = load_task_data(path)
    assert task.modality == "sequence" and task.classes == ["fast", "slow"]
    got = sorted(x.shape[1] for s in task.splits().values() for x in s.examples)
    assert got == sorted(len(s) for s in series)  # trailing empty cells shorten a series
    assert all(x.shape[0] == 1 and x.dtype == np.float32 for x in task.train.examples)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_values_tables_multivariate(tmp_path, suffix):
    series, labels = waves(20, 1, channels=3)
    path = write_series_table(tmp_path / f"series{suffix}", series, labels)
    assert detect_modality(path) == "sequence"
    task = load_task_data(path)
    assert {x.shape[0] for x in task.train.examples} == {3}
    first = next(x for s in task.splits().values() for x in s.examples if x.shape[1] == series[0].shape[1]
                 and np.allclose(x, series[0]))
    assert first.dtype == np.float32


def test_text_tables_stay_text(tmp_path, text_table):
    assert detect_modality(text_table) == "text"
    numbers = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "label": ["x", "y"]})
    numbers.to_csv(tmp_path / "numbers.csv", index=False)
    assert detect_modality(tmp_path / "numbers.csv") == "sequence"
    assert detect_modality(tmp_path / "numbers.csv", text_column="a") == "text"  # the text column wins
    words = pd.DataFrame({"body": ["hi there", "bye"], "label": ["x", "y"]})
    words.to_csv(tmp_path / "words.csv", index=False)
    assert detect_modality(tmp_path / "words.csv") == "text"  # so the missing `text` column is reported
    with pytest.raises(DataError, match=r"`modality` must be one of audio, image, sequence, text; got 'video'"):
        load_task_data(tmp_path / "numbers.csv", modality="video")


def test_npy_folder_and_its_preflight(tmp_path):
    series, labels = waves(16, 2, channels=2)
    for i, (x, y) in enumerate(zip(series, labels)):
        (tmp_path / y).mkdir(exist_ok=True)
        np.save(tmp_path / y / f"{i:02d}.npy", x)
    assert detect_modality(tmp_path) == "sequence"
    assert {x.shape[0] for x in load_task_data(tmp_path).train.examples} == {2}
    np.save(tmp_path / "slow" / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "slow" / "nan.npy", np.array([[0.0, np.nan, 1.0], [1.0, 2.0, 3.0]]))
    np.save(tmp_path / "fast" / "three_channels.npy", np.zeros((3, 10)))
    np.save(tmp_path / "fast" / "empty.npy", np.zeros((2, 0)))
    (tmp_path / "fast" / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError) as err:
        load_task_data(tmp_path)
    message = str(err.value)
    assert "Preflight found 5 problems" in message
    for line in ("fast/broken.npy: not a .npy array", "fast/empty.npy: empty series (0 time steps)",
                 "fast/three_channels.npy: has 3 channels; the other series have 2",
                 "slow/nan.npy: holds NaN or infinite values",
                 "slow/pickled.npy: object array (pickled); transferkit reads numeric arrays only"):
        assert f"  - {line}" in message, line
    assert len(load_task_data(tmp_path, skip_bad=True).skipped) == 5


def test_table_rows_are_checked(tmp_path):
    rows = [{"t0": 1, "t1": 2, "t2": 3, "label": "a"}, {"t0": 1, "t1": None, "t2": 3, "label": "b"},
            {"t0": 1, "t1": "x", "t2": 3, "label": "a"}, {"t0": 2, "t1": 2, "t2": 3, "label": None}]
    rows += [{"t0": i, "t1": i, "t2": i, "label": "ab"[i % 2]} for i in range(8)]
    path = tmp_path / "rows.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        load_task_data(path)
    message = str(err.value)
    assert "  - row 2: a gap at time step 1 inside the series" in message
    assert "  - row 3: value 'x' at time step 1 is not a number" in message
    assert "  - row 4: missing label" in message


# -- models ----------------------------------------------------------------------------------------


def test_seq_ids_are_checked():
    with pytest.raises(UnknownNameError, match=r"Unknown sequence architecture 'seq:lstn'\. Did you mean 'seq:lstm'\?"):
        load_source("seq:lstn")
    with pytest.raises(ConfigError, match=r"Unknown option 'widht' in `seq:lstm\?widht=3`\. Did you mean 'width'\?"):
        load_source("seq:lstm?widht=3")
    with pytest.raises(ConfigError, match=r"Option `width` of seq:cnn1d must be a int; got 'wide'"):
        load_source("seq:cnn1d?width=wide")
    with pytest.raises(ConfigError, match=r"`width` of seq:transformer \(30\) must be divisible by `heads` \(4\)"):
        load_source("seq:transformer?width=30")
    source = load_source("seq:gru?channels=3&width=8")
    assert source.feature_dim == 8 and source.spec["options"]["channels"] == 3
    json.dumps(source.spec)


@pytest.mark.parametrize("source_id", ARCHS)
def test_features_ignore_padding_and_batch_mates(source_id):
    source = load_source(source_id)
    pipe = input_pipeline(source)
    series, _ = waves(3, 3, channels=2, lengths=(10, 30))
    source.backbone.eval()
    with torch.inference_mode():
        together = source.backbone(**pipe.collate([pipe.load(x) for x in series]))
        alone = source.backbone(**pipe.collate([pipe.load(series[2])]))
    assert together.shape == (3, 16) and torch.isfinite(together).all()
    torch.testing.assert_close(together[2], alone[0], rtol=1e-4, atol=1e-5)  # a 1-channel model on 2 channels
    groups = [p for g in source.layer_groups for p in g.params]
    assert sorted(groups) == sorted(n for n, _ in source.backbone.named_parameters())


def test_channel_mismatch_is_explained():
    source = load_source("seq:cnn1d?channels=3")
    pipe = input_pipeline(source)
    with pytest.raises(DataError, match=r"takes series with 3 channels, but an example has 2\. .* 1-channel source"):
        pipe.load(np.zeros((2, 10), dtype=np.float32))


def test_long_series_are_cropped():
    source = load_source("seq:lstm?max_len=8")
    assert input_pipeline(source).load(np.arange(20, dtype=np.float32)).tolist() == [list(range(6, 14))]
    assert input_pipeline(source, train=True).load(np.arange(20, dtype=np.float32)).shape == (1, 8)


# -- the source-task -> target-task flow --------------------------------------------------------


@pytest.fixture(scope="module")
def source_task(tmp_path_factory):
    series, labels = waves(64, 4)
    return write_series_table(tmp_path_factory.mktemp("seq-src") / "source.parquet", series, labels)


@pytest.mark.parametrize("arch, options", [("seq:cnn1d?width=16&layers=2", {}),
                                           ("seq:lstm?width=16", {"epochs": 10, "lr": 1e-2})])
def test_train_on_a_source_task_then_transfer_with_run(arch, options, source_task, tmp_path):
    out = tmp_path / "source-run"
    first = fit(source_task, source=arch, strategy="full", out=out, verbose=False,
                **{**FAST, **options, "baseline": "scratch"})
    assert first.metrics["test_accuracy"] >= 0.75  # slow vs fast sines
    assert first.metrics["baseline"] == "scratch" and "from random init" in first.metrics["baseline_description"]
    again = load_run(out)
    probe = waves(4, 9)[0]
    np.testing.assert_allclose(first.predict_proba(probe), again.predict_proba(probe), atol=1e-5)
    # target task: 3-channel series, shorter and fewer; the 1-channel source runs per channel
    series, labels = waves(40, 5, channels=3, lengths=(16, 30))
    target = write_series_table(tmp_path / "target.jsonl", series, labels)
    second = fit(target, source=f"run:{out}", strategy="linear_probe", verbose=False,
                 **{**FAST, "probe_epochs": 60, "probe_lr": 3e-2})
    for k, v in second.model.backbone.state_dict().items():
        assert torch.equal(v, first.model.backbone.state_dict()[k]), k
    assert second.source.head is not None and second.metrics["test_accuracy"] >= 0.6
    strategies = ["layerwise_lr", "gradual_unfreeze"] if "lstm" in arch else ["lp_ft"]
    for strategy in strategies:
        run = fit(target, source=f"run:{out}", strategy=strategy, verbose=False, **FAST)
        assert run.metrics["transfer"]["trainable_parameters"] > 0


def test_cli_fits_a_sequence_table(source_task, tmp_path, capsys):
    from transferkit.cli import main

    main(["fit", str(source_task), "--source", "seq:gru?width=8&layers=1", "--strategy", "full", "--epochs", "2",
          "--lr", "0.003", "--baseline", "none", "--batch-size", "16", "--out", str(tmp_path / "cli"), "--quiet"])
    assert "seq:gru" in capsys.readouterr().out
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["source"]["spec"] == {"loader": "seq", "arch": "gru", "options": {
        "channels": 1, "width": 8, "dropout": 0.1, "norm": "series", "max_len": 4096, "layers": 1}}
