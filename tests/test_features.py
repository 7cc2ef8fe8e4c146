"""Feature extraction and its disk cache: hits, every invalidation rule, corrupt entries, safety."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from transferkit.data.synthetic import digit_image, write_image_folder
from transferkit.engine import distributed
from transferkit.engine.extract import extract_features
from transferkit.features import (
    CACHE_ENV,
    estimate_batchnorm_statistics,
    examples_fingerprint,
    source_features,
    with_image_size,
)
from transferkit.sources import input_pipeline, load_source
from transferkit.sources.base import batchnorm_layers
from transferkit.sources.inputs import ExampleDataset

TINY = "timm:test_efficientnet@random"
OTHER = "timm:test_vit@random"


@pytest.fixture
def files(tmp_path):
    """A fresh (writable) folder of 12 digit PNGs, 32 px."""
    return write_image_folder(tmp_path / "imgs", {"0": 6, "1": 6}, size=32)


def random_tiny(source_id: str = TINY, size: int = 32):
    """The tiny source as ``@random`` gives it: BatchNorm statistics still placeholders."""
    torch.manual_seed(0)
    return with_image_size(load_source(source_id), size)


def tiny(source_id: str = TINY, size: int = 32):
    """The tiny source standing in for a pretrained one: its BatchNorm statistics stay as they
    are (the estimate from target examples has its own tests below)."""
    src = random_tiny(source_id, size)
    src.stale_statistics = False
    return src


def count_forwards(src) -> list[int]:
    """Counts the backbone's forward calls (instance attribute shadows the class method)."""
    calls = [0]
    original = src.backbone.forward

    def counted(**batch):
        calls[0] += 1
        return original(**batch)

    src.backbone.forward = counted
    return calls


def test_cache_hit_returns_identical_arrays_without_running_the_model(files, tmp_path):
    src = tiny()
    calls = count_forwards(src)
    first = source_features([src], files, batch_size=5, cache_dir=tmp_path / "c")[0]
    assert calls[0] == 3 and not first.cached  # ceil(12 / 5) batches
    assert first.features.shape == (12, src.feature_dim) and first.features.dtype == np.float32
    assert first.probabilities.shape == (12, 1000)
    np.testing.assert_allclose(first.probabilities.sum(1), 1.0, atol=1e-5)
    again = source_features([src], files, batch_size=5, cache_dir=tmp_path / "c")[0]
    assert calls[0] == 3 and again.cached and again.key == first.key
    assert np.array_equal(again.features, first.features)
    assert np.array_equal(again.probabilities, first.probabilities)


def test_cache_is_safetensors_and_never_unpickled(files, tmp_path, monkeypatch):
    src = tiny()
    out = source_features([src], files, cache_dir=tmp_path / "c")[0]
    written = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert written == [out.path] and out.path.suffix == ".safetensors"
    from safetensors.numpy import load_file

    assert set(load_file(out.path)) == {"features", "probabilities"}

    def refuse(*args, **kwargs):
        raise AssertionError("the feature cache must not unpickle anything")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    real_np_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: real_np_load(*a, **{**k, "allow_pickle": False}))
    hit = source_features([src], files, cache_dir=tmp_path / "c")[0]
    assert hit.cached and np.array_equal(hit.features, out.features)


def test_changed_file_recomputes(files, tmp_path):
    src = tiny()
    calls = count_forwards(src)
    before = source_features([src], files, cache_dir=tmp_path / "c")[0]
    digit_image(3, 32, digit=7).save(files[0])  # other content; make the stamp differ even on coarse clocks
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    n = calls[0]
    after = source_features([src], files, cache_dir=tmp_path / "c")[0]
    assert calls[0] > n and not after.cached and after.key != before.key
    assert not np.array_equal(after.features[0], before.features[0])
    np.testing.assert_allclose(after.features[1:], before.features[1:], atol=1e-5)


def test_changed_examples_recompute(files, tmp_path):
    src = tiny()
    a = source_features([src], files, cache_dir=tmp_path / "c")[0]
    for other in (files[:-1], files[::-1], [*files, files[0]]):  # removed, reordered, added
        b = source_features([src], other, cache_dir=tmp_path / "c")[0]
        assert not b.cached and b.key != a.key and len(b.features) == len(other)


def test_changed_weights_recompute(files, tmp_path):
    src = tiny()
    a = source_features([src], files, cache_dir=tmp_path / "c")[0]
    with torch.no_grad():
        next(src.backbone.parameters()).add_(0.5)
    b = source_features([src], files, cache_dir=tmp_path / "c")[0]
    assert not b.cached and b.key != a.key
    torch.manual_seed(1)  # another @random draw is another source
    c = source_features([with_image_size(load_source(TINY), 32)], files, cache_dir=tmp_path / "c")[0]
    assert not c.cached and c.key not in (a.key, b.key)


def test_changed_preprocessing_recomputes(files, tmp_path):
    src = tiny()
    a = source_features([src], files, cache_dir=tmp_path / "c")[0]
    for changed in (with_image_size(src, 40),
                    dataclasses.replace(src, preprocessing=dataclasses.replace(src.preprocessing, mean=(0.5,) * 3))):
        b = source_features([changed], files, cache_dir=tmp_path / "c")[0]
        assert not b.cached and b.key != a.key
    assert src.preprocessing.image_size == 32  # with_image_size copies


def test_head_and_headless_sources_have_separate_entries(files, tmp_path):
    src = tiny()
    headless = dataclasses.replace(src, head=None)
    a = source_features([src], files, cache_dir=tmp_path / "c")[0]
    b = source_features([headless], files, cache_dir=tmp_path / "c")[0]
    assert b.probabilities is None and not b.cached and b.key != a.key
    np.testing.assert_array_equal(a.features, b.features)
    assert source_features([headless], files, cache_dir=tmp_path / "c")[0].cached


def test_random_init_batchnorm_statistics_come_from_the_examples(files):
    src = random_tiny()
    assert src.stale_statistics and src.statistics_fingerprint is None
    bns = batchnorm_layers(src.backbone)
    assert bns and all(bool((bn.running_mean == 0).all() and (bn.running_var == 1).all()) for bn in bns)
    params = {k: v.clone() for k, v in src.backbone.named_parameters()}
    seen = []  # what the first BatchNorm layer receives, over all the examples at once
    hook = bns[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    dataset = ExampleDataset(files, None, input_pipeline(src))
    inputs, _ = dataset.collate([dataset[i] for i in range(len(files))])
    with torch.no_grad():
        src.backbone.eval()(**inputs)
    hook.remove()

    estimate_batchnorm_statistics(src, files, batch_size=len(files))  # one batch: exact statistics
    assert not src.stale_statistics and src.statistics_fingerprint == examples_fingerprint(files)
    x = seen[0].transpose(0, 1).flatten(1)  # channels x (examples * positions)
    torch.testing.assert_close(bns[0].running_mean, x.mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bns[0].running_var, x.var(1), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(params[k], v) for k, v in src.backbone.named_parameters())  # weights untouched
    assert not src.backbone.training  # the caller's mode comes back

    stats = {k: v.clone() for k, v in src.backbone.state_dict().items()}
    estimate_batchnorm_statistics(src, files[:3])  # estimated once; later calls change nothing
    assert all(torch.equal(stats[k], v) for k, v in src.backbone.state_dict().items())


def test_only_random_init_sources_with_batchnorm_get_statistics(files):
    torch.manual_seed(0)
    no_batchnorm = load_source(OTHER)  # a ViT: LayerNorm keeps no running statistics
    assert not batchnorm_layers(no_batchnorm.backbone) and not no_batchnorm.stale_statistics
    state = {k: v.clone() for k, v in no_batchnorm.backbone.state_dict().items()}
    estimate_batchnorm_statistics(no_batchnorm, files)
    assert all(torch.equal(state[k], v) for k, v in no_batchnorm.backbone.state_dict().items())


def test_stale_statistics_make_features_vanish():
    """Why random copies get statistics: in eval mode, torchvision's randomly initialised MobileNetV2
    shrinks the signal to ~1e-10 (a linear probe stays at chance on that; LogME, blind to scale, does not)."""
    images = [digit_image(i, 64, digit=i % 10) for i in range(16)]
    torch.manual_seed(0)
    src = with_image_size(load_source("mobilenet_v2@random"), 64)
    dataset = ExampleDataset(images, None, input_pipeline(src))
    placeholder = extract_features(src.backbone, dataset)
    estimate_batchnorm_statistics(src, images, batch_size=8)
    estimated = extract_features(src.backbone, dataset)
    assert placeholder.abs().max() < 1e-6
    assert 1e-2 < estimated.abs().mean() < 10 and estimated.std(0).mean() > 1e-3


def test_cached_random_source_skips_the_statistics_and_reuses_the_entry(files, tmp_path):
    src = random_tiny()
    first = source_features([src], files, batch_size=5, cache_dir=tmp_path / "c")[0]
    assert not first.cached and not src.stale_statistics  # estimated on `files`, then extracted
    again_src = random_tiny()  # the same draw, statistics not yet estimated
    calls = count_forwards(again_src)
    again = source_features([again_src], files, batch_size=5, cache_dir=tmp_path / "c")[0]
    assert again.cached and again.key == first.key and calls[0] == 0 and again_src.stale_statistics
    assert np.array_equal(again.features, first.features)
    also = source_features([src], files, batch_size=5, cache_dir=tmp_path / "c")[0]  # after the estimate
    assert also.cached and also.key == first.key
    other = source_features([random_tiny()], files, cache_dir=tmp_path / "c", statistics_from=files[:6])[0]
    assert not other.cached and other.key != first.key  # other statistics, other features
    assert not np.allclose(other.features, first.features)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_rows", "wrong_dtype", "wrong_key"])
def test_corrupt_entry_is_recomputed_with_a_warning(files, tmp_path, damage):
    from safetensors.numpy import save_file

    src = tiny()
    good = source_features([src], files, cache_dir=tmp_path / "c")[0]
    path = good.path
    if damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        meta = {"key": good.key if damage != "wrong_key" else "0" * 24, "feature_dim": str(src.feature_dim)}
        feats = good.features[:-1] if damage == "wrong_rows" else good.features
        feats = feats.astype(np.float64) if damage == "wrong_dtype" else feats
        save_file({"features": feats, "probabilities": good.probabilities[: len(feats)]}, path, metadata=meta)
    calls = count_forwards(src)
    with pytest.warns(RuntimeWarning, match="recomputing"):
        again = source_features([src], files, cache_dir=tmp_path / "c")[0]
    assert calls[0] > 0 and not again.cached
    np.testing.assert_allclose(again.features, good.features, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry is good again
        assert source_features([src], files, cache_dir=tmp_path / "c")[0].cached


def test_each_image_is_decoded_once_for_all_sources(files, tmp_path, monkeypatch):
    import transferkit.data.image as image_module

    opened = []
    real = image_module.open_image
    monkeypatch.setattr(image_module, "open_image", lambda p: opened.append(p) or real(p))
    a, b = tiny(TINY), tiny(OTHER)
    out = source_features([a, b], files, batch_size=4, cache_dir=tmp_path / "c")
    assert sorted(opened) == sorted(files)
    assert out[0].features.shape[1] == a.feature_dim and out[1].features.shape[1] == b.feature_dim
    # each source's own preprocessing: the same features as running it alone
    alone = source_features([b], files, batch_size=4, use_cache=False)[0]
    np.testing.assert_allclose(out[1].features, alone.features, atol=1e-5)


def test_cache_dir_from_env_and_override(files, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    src = tiny()
    assert source_features([src], files)[0].path.is_relative_to(tmp_path / "env")
    assert source_features([src], files, cache_dir=tmp_path / "mine")[0].path.is_relative_to(tmp_path / "mine")
    off = source_features([src], files, use_cache=False)[0]
    assert off.path is None and not off.cached
    assert len(list((tmp_path / "env").rglob("*.safetensors"))) == 1


def test_unwritable_cache_warns_and_still_returns_features(files, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="not cached"):
        out = source_features([tiny()], files, cache_dir=blocker / "sub")[0]
    assert out.features.shape[0] == len(files)


def test_pil_images_and_texts_are_examples_too(tiny_bert_dir, tmp_path):
    images = [digit_image(i, 32).convert("RGB") for i in range(5)]
    out = source_features([tiny()], images, cache_dir=tmp_path / "c")[0]
    assert out.features.shape[0] == 5
    assert source_features([tiny()], images, cache_dir=tmp_path / "c")[0].cached
    text_src = load_source(f"hf:{tiny_bert_dir}")
    texts = ["win cash now", "team meeting notes", "free prize"]
    t = source_features([text_src], texts, cache_dir=tmp_path / "c")[0]
    assert t.features.shape == (3, text_src.feature_dim)
    changed = source_features([text_src], [*texts[:2], "free offer"], cache_dir=tmp_path / "c")[0]
    assert not changed.cached
    assert examples_fingerprint(texts) != examples_fingerprint([*texts[:2], "free offer"])


def test_extract_features_keeps_its_signature(files):
    src = tiny()
    dataset = ExampleDataset(files, None, input_pipeline(src, train=False))
    src.backbone.train()
    feats = extract_features(src.backbone, dataset, batch_size=5, device="cpu", num_workers=0)
    assert isinstance(feats, torch.Tensor) and feats.shape == (len(files), src.feature_dim)
    assert src.backbone.training  # mode restored
    cached = source_features([src], files, use_cache=False)[0]
    np.testing.assert_allclose(feats.numpy(), cached.features, atol=1e-5)


def test_bad_batch_size():
    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match="`batch_size` must be a whole number >= 1; got 0"):
        source_features([], [], batch_size=0)


def test_single_process_sharding_is_the_identity():
    assert distributed.num_processes() == 1 and not distributed.is_distributed()
    assert distributed.shard_bounds(7) == (0, 7)
    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather_rows(t, 3) is t
    assert distributed.broadcast_flags([True, False]) == [True, False]
    for n in range(0, 11):
        for p in range(1, 5):
            bounds = [distributed.shard_bounds(n, p, i) for i in range(p)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


@pytest.mark.slow
def test_two_processes_shard_and_gather(tmp_path):
    """`torchrun --nproc_per_node 2`: each process extracts half; every process gets all rows."""
    files = write_image_folder(tmp_path / "imgs", {"0": 5, "1": 6}, size=32)
    script = tmp_path / "shard.py"
    script.write_text(textwrap.dedent(f"""
        import sys, numpy as np, torch
        from pathlib import Path
        from transferkit.engine import distributed
        from transferkit.features import source_features, with_image_size
        from transferkit.sources import load_source
        torch.set_num_threads(1)
        torch.manual_seed(0)
        src = with_image_size(load_source({TINY!r}), 32)
        files = sorted(Path({str(tmp_path / 'imgs')!r}).rglob("*.png"))
        src.stale_statistics = False  # as tiny(): it stands in for a pretrained source (no statistics pass)
        calls = [0]
        fwd = src.backbone.forward
        src.backbone.forward = lambda **b: calls.__setitem__(0, calls[0] + len(b["pixel_values"])) or fwd(**b)
        out = source_features([src], files, batch_size=4, cache_dir={str(tmp_path / 'c')!r})[0]
        rank = distributed.process_index()
        np.save({str(tmp_path)!r} + f"/rank{{rank}}.npy", out.features)
        sys.stdout.write(f"rank {{rank}} of {{distributed.num_processes()}} forwarded {{calls[0]}}\\n")  # one write
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 0 of 2 forwarded 6" in run.stdout and "rank 1 of 2 forwarded 5" in run.stdout
    r0, r1 = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert r0.shape == (11, 256) and np.array_equal(r0, r1)
    single = source_features([tiny()], files, use_cache=False)[0]
    np.testing.assert_allclose(r0, single.features, atol=1e-5)
    # the main process wrote the cache: a single process now reads it
    assert source_features([tiny()], files, cache_dir=tmp_path / "c")[0].cached
