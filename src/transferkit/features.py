"""Feature extraction: one batched forward pass of the shared layers per example, cached on disk.

Two entry points:

- :func:`extract_features` runs one backbone over an ``ExampleDataset`` (the training loop's
  linear probe uses it; nothing is cached).
- :func:`source_features` runs *several* sources over the same raw examples, for ranking.
  Each image file is decoded once (``transferkit.data.image.open_image``) and every source's
  own transform is applied to the decoded image, so ranking K sources costs little more than
  their K forward passes. Results are cached on disk; a source with a classifier head also
  gets the head's class probabilities (softmax of ``head(features)``, for LEEP and NCE).

The cache
---------
One safetensors file per (source, examples): ``<cache dir>/<source id>/<key>.safetensors``
holding ``features`` (N x D, float32) and, with a head, ``probabilities`` (N x classes). The
key is a hash of

- the source id and a hash of every backbone and head tensor (``SourceModel.weights_hash``),
  so retrained or re-downloaded weights, and each ``@random`` draw, get their own entry;
- for a random-init source with BatchNorm, the fingerprint of the examples that estimate its
  statistics (:func:`estimate_batchnorm_statistics`) in place of the statistics themselves,
  so a cached entry is found without estimating them again;
- the preprocessing (``Preprocessing.to_dict``: image size, crop, mean/std, token limit ...);
- a fingerprint of the examples in order (path, size and modification time of each file;
  the content of texts and arrays), so an edited, added, removed or reordered file gives a
  new key. Labels are not part of it: features do not depend on them.

Files are read with ``safetensors`` only (never pickle). An entry that cannot be read, or whose
stored key, tensor names, dtypes or shapes do not match, is recomputed with a warning.
The cache directory is ``cache_dir`` when given, else ``$TRANSFERKIT_CACHE``, else
``~/.cache/transferkit/features``.

Several processes
-----------------
Launched with Accelerate (``accelerate launch`` / ``torchrun``), each process extracts one
contiguous shard of the examples and the shards are gathered on every process
(``transferkit.engine.distributed``); the main process writes the cache. One process skips
all of this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.sources.base import SourceModel
from transferkit.sources.inputs import ExampleDataset, ImageInputs, input_pipeline

#: Bumped when the cache layout or the way features are computed changes.
CACHE_FORMAT = "1"
CACHE_ENV = "TRANSFERKIT_CACHE"
#: Examples decoded at a time when feeding several sources (bounds memory for large images).
DECODE_CHUNK = 512
#: At most this many target examples estimate a random-init source's BatchNorm statistics.
STATISTICS_EXAMPLES = 1024


@torch.inference_mode()
def extract_features(backbone: nn.Module, dataset: ExampleDataset, batch_size: int = 64,
                     device: torch.device | str = "cpu", num_workers: int = 0) -> torch.Tensor:
    """Features of every example, in order, shape (N, D), float32 on the CPU.

    The backbone runs in eval mode (BatchNorm statistics and dropout as at inference) and its
    previous training mode is restored afterwards.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=dataset.collate, num_workers=num_workers)
    was_training = backbone.training
    backbone.eval()
    chunks = []
    try:
        for inputs, _ in loader:
            inputs = {k: v.to(device) for k, v in inputs.items()}
            chunks.append(backbone(**inputs).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


@dataclass
class SourceFeatures:
    """What one source produces on a list of examples.

    Attributes:
        source: The source id.
        features: Shared-layer features, (N, D) float32.
        probabilities: Softmax of the source head over its own classes, (N, Z) float32, or
            None when the source has no head.
        key: The cache key.
        cached: True when read from the cache.
        seconds: Time spent on this source: cache key and read, or decoding (its share),
            transforms and forward passes (and estimating a random-init source's statistics).
        path: The cache file (None when caching is off).
    """

    source: str
    features: np.ndarray
    probabilities: np.ndarray | None
    key: str
    cached: bool
    seconds: float
    path: Path | None = None


def default_cache_dir() -> Path:
    """``$TRANSFERKIT_CACHE``, else ``~/.cache/transferkit/features``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transferkit" / "features"


def examples_fingerprint(examples: Sequence) -> str:
    """A hash of the examples, in order: path, size and mtime for files, content otherwise."""
    from transferkit.data.base import _example_stamp

    h = hashlib.sha256()
    h.update(str(len(examples)).encode())
    for ex in examples:
        h.update(_example_stamp(Path(ex) if isinstance(ex, str) and _looks_like_file(ex) else ex))
    return h.hexdigest()[:16]


def cache_key(source: SourceModel, fingerprint: str, statistics_fingerprint: str | None = None) -> str:
    """The cache key of ``source``'s outputs on examples with ``fingerprint``.

    ``statistics_fingerprint`` is the fingerprint of the examples that estimate (or estimated) the
    source's BatchNorm statistics, for a random-init source; the key then hashes the weights
    without those statistics, so it is the same before and after they are estimated.
    """
    parts = {
        "format": CACHE_FORMAT,
        "source": source.id,
        "weights": source.weights_hash(skip_batchnorm_statistics=statistics_fingerprint is not None),
        "batchnorm_statistics_from": statistics_fingerprint,
        "preprocessing": source.preprocessing.to_dict(),
        "head": source.head is not None,
        "examples": fingerprint,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def source_features(
    sources: Sequence[SourceModel],
    examples: Sequence,
    *,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    fingerprint: str | None = None,
    device: torch.device | str | None = None,
    statistics_from: Sequence | None = None,
) -> list[SourceFeatures]:
    """Features (and head probabilities) of each source on the same raw examples, cached.

    Args:
        sources: Loaded sources; all must share the examples' modality.
        examples: Raw examples: image paths or PIL images, texts, ...
        batch_size: Examples per forward pass.
        cache_dir: Cache directory (default :func:`default_cache_dir`).
        use_cache: Read and write the cache; False always recomputes and writes nothing.
        fingerprint: Fingerprint of ``examples`` if already known (default: computed).
        device: Where the forward passes run (default: CUDA when present, else CPU).
        statistics_from: Examples that estimate the BatchNorm statistics of random-init sources
            (see :func:`estimate_batchnorm_statistics`; default: ``examples``). Only a source
            whose features are not cached pays for the estimate.

    Returns:
        One :class:`SourceFeatures` per source, in order.
    """
    from transferkit.engine import distributed

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        from transferkit.errors import ConfigError

        raise ConfigError(f"`batch_size` must be a whole number >= 1; got {batch_size!r}.")
    examples = list(examples)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    fingerprint = fingerprint or (examples_fingerprint(examples) if use_cache else "")
    results: list[SourceFeatures | None] = []
    pending: list[tuple[int, SourceModel, str, Path | None, float]] = []
    statistics_from = examples if statistics_from is None else list(statistics_from)
    needs_statistics = [src.stale_statistics for src in sources]
    estimate_from = (examples_fingerprint(statistics_subset(statistics_from)) if any(needs_statistics) else None)
    for i, src in enumerate(sources):
        started = time.perf_counter()
        stats = estimate_from if needs_statistics[i] else src.statistics_fingerprint
        key = cache_key(src, fingerprint, stats) if use_cache else ""
        path = root / _slug(src.id) / f"{key}.safetensors" if use_cache else None
        hit = _read_entry(path, key, src, len(examples)) if use_cache else None
        results.append(None if hit is None else SourceFeatures(
            src.id, hit[0], hit[1], key, True, time.perf_counter() - started, path))
        pending.append((i, src, key, path, time.perf_counter() - started))
    # Every process must agree on what to compute (their caches might differ): the main decides.
    todo = distributed.broadcast_flags([r is None for r in results])
    pending = [p for p, miss in zip(pending, todo) if miss]
    if not pending:
        return results  # type: ignore[return-value]

    start, stop = distributed.shard_bounds(len(examples))
    device = torch.device(device) if device is not None else distributed.device()
    for n, (i, src, key, path, seconds_so_far) in enumerate(pending):
        started = time.perf_counter()
        estimate_batchnorm_statistics(src, statistics_from, batch_size, device)
        pending[n] = (i, src, key, path, seconds_so_far + time.perf_counter() - started)
    computed, seconds = _compute([src for _, src, *_ in pending], examples[start:stop], batch_size, device)
    for (i, src, key, path, seconds_so_far), (feats, probs), secs in zip(pending, computed, seconds):
        feats = distributed.gather_rows(feats, len(examples)).numpy()
        probs = distributed.gather_rows(probs, len(examples)).numpy() if probs is not None else None
        if use_cache and distributed.is_main_process():
            _write_entry(path, key, src, feats, probs)
        results[i] = SourceFeatures(src.id, feats, probs, key, False, seconds_so_far + secs, path)
    distributed.wait_for_everyone()
    return results  # type: ignore[return-value]


# -- computing ---------------------------------------------------------------------------------


def statistics_subset(examples: Sequence) -> list:
    """At most ``STATISTICS_EXAMPLES`` examples, evenly spaced (class folders are often in order)."""
    examples = list(examples)
    step = math.ceil(len(examples) / STATISTICS_EXAMPLES) if examples else 1
    return examples[::step]


class _DictInputs(nn.Module):
    """Calls ``backbone(**inputs)`` on one batch dict, moved to ``device``."""

    def __init__(self, backbone: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.backbone, self.device = backbone, device

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backbone(**{k: v.to(self.device) for k, v in inputs.items()})


def estimate_batchnorm_statistics(src: SourceModel, examples: Sequence, batch_size: int = 64,
                                  device: torch.device | str | None = None) -> None:
    """Replaces stale BatchNorm statistics (random init, blended weights) with the target's.

    Initialisation leaves every BatchNorm layer with running mean 0 and variance 1, statistics
    no trained network has: in eval mode the layers become identities and the signal drifts by
    orders of magnitude with depth (torchvision's MobileNetV2 ends with features near 1e-10,
    on which a linear probe stays at chance while LogME, blind to scale, scores them first).
    A random network at the first step of training normalises with the statistics of its
    inputs instead, and that is the network a ``@random`` control stands for. So the
    statistics become the mean and variance of each layer's inputs over (at most
    ``STATISTICS_EXAMPLES``, evenly spaced) target ``examples``, in the source's evaluation
    preprocessing, as ``torch.optim.swa_utils.update_bn`` computes them. Labels are not read
    and no weight changes. The same holds for a blend of two networks' weights (``--init-mix``),
    whose statistics describe neither. A no-op unless ``src.stale_statistics``.
    """
    if not src.stale_statistics:
        return
    from torch.optim.swa_utils import update_bn

    from transferkit.engine import distributed
    from transferkit.errors import DataError

    subset = statistics_subset(examples)
    if not subset:
        raise DataError(f"Source {src.id!r} has random weights and BatchNorm layers, whose statistics come from "
                        "target examples, but `examples` is empty; give at least one example.")
    dataset = ExampleDataset(subset, None, input_pipeline(src, train=False))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate,
                                         drop_last=len(subset) > batch_size)  # no batch of one
    device = torch.device(device) if device is not None else distributed.device()
    restore = _to_device(src, device)
    try:
        update_bn(loader, _DictInputs(src.backbone, device))
    finally:
        restore()
    src.stale_statistics = False
    src.statistics_fingerprint = examples_fingerprint(subset)


@torch.inference_mode()
def _compute(sources: list[SourceModel], examples: list, batch_size: int, device: torch.device):
    """Runs every source over ``examples``; each image is decoded once for all of them.

    Returns ``[(features, probabilities or None)]`` as CPU float32 tensors, and the seconds
    spent per source (forward passes and any wait for its inputs, plus an equal share of the
    wait for decoding).
    """
    pipelines = [input_pipeline(src, train=False) for src in sources]
    shared_decode = all(isinstance(p, ImageInputs) for p in pipelines)
    outputs: list[tuple[list, list]] = [([], []) for _ in sources]
    seconds = [0.0] * len(sources)
    moved = [_to_device(src, device) for src in sources]
    size = _chunk_size(batch_size)
    chunks = [examples[i: i + size] for i in range(0, len(examples), size)]

    def prepare(job: tuple[int, list]) -> dict[str, torch.Tensor]:
        pipe = pipelines[job[0]]
        return pipe.collate([pipe.load(x) for x in job[1]])

    try:
        # Two helper threads keep the forward passes fed: one decodes the next chunk of images,
        # the other runs the next batch's transforms while this batch goes through the model.
        with ThreadPoolExecutor(max_workers=1) as decoder, ThreadPoolExecutor(max_workers=1) as preparer:
            ahead = _submit(decoder, _decode_chunk if shared_decode else None, chunks[0]) if chunks else None
            for c in range(len(chunks)):
                started = time.perf_counter()
                decoded = ahead.result()
                for s in range(len(sources)):
                    seconds[s] += (time.perf_counter() - started) / len(sources)
                if c + 1 < len(chunks):
                    ahead = _submit(decoder, _decode_chunk if shared_decode else None, chunks[c + 1])
                jobs = [(s, decoded[b: b + batch_size]) for s in range(len(sources))
                        for b in range(0, len(decoded), batch_size)]
                pending = preparer.submit(prepare, jobs[0]) if jobs else None
                for j, (s, _) in enumerate(jobs):
                    started = time.perf_counter()
                    batch = pending.result()
                    if j + 1 < len(jobs):
                        pending = preparer.submit(prepare, jobs[j + 1])
                    src = sources[s]
                    feats = src.backbone(**{k: v.to(device) for k, v in batch.items()}).float()
                    outputs[s][0].append(feats.cpu())
                    if src.head is not None:
                        outputs[s][1].append(torch.softmax(src.head(feats).float(), dim=-1).cpu())
                    seconds[s] += time.perf_counter() - started
    finally:
        for src, restore in zip(sources, moved):
            restore()
    results = []
    for src, (feats, probs) in zip(sources, outputs):
        f = torch.cat(feats) if feats else torch.zeros((0, src.feature_dim))
        p = None
        if src.head is not None:
            p = torch.cat(probs) if probs else torch.zeros((0, _head_classes(src)))
        results.append((f.contiguous(), None if p is None else p.contiguous()))
    return results, seconds


def _submit(pool: ThreadPoolExecutor, fn, arg) -> Future:
    """``pool.submit(fn, arg)``, or a finished future holding ``arg`` when ``fn`` is None."""
    if fn is not None:
        return pool.submit(fn, arg)
    done: Future = Future()
    done.set_result(arg)
    return done


def _chunk_size(batch_size: int) -> int:
    return max(1, DECODE_CHUNK // batch_size) * batch_size


def _decode_chunk(chunk: list) -> list:
    from PIL import Image

    from transferkit.data.image import open_image

    return [x if isinstance(x, Image.Image) else open_image(x) for x in chunk]


def _to_device(src: SourceModel, device: torch.device):
    """Puts the backbone and head in eval mode on ``device``; returns a function that undoes it."""
    modules = [m for m in (src.backbone, src.head) if m is not None]
    before = [(m, m.training, _module_device(m)) for m in modules]
    for m in modules:
        m.eval()
        m.to(device)

    def restore() -> None:
        for m, training, dev in before:
            m.train(training)
            if dev is not None and dev != device:
                m.to(dev)

    return restore


def _module_device(module: nn.Module) -> torch.device | None:
    p = next(module.parameters(), None)
    return p.device if p is not None else None


def _head_classes(src: SourceModel) -> int:
    linear = [m for m in src.head.modules() if isinstance(m, nn.Linear)]
    return linear[-1].out_features if linear else 0


# -- the cache ---------------------------------------------------------------------------------


def _slug(source_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", source_id).strip("._") or "source"


def _looks_like_file(text: str) -> bool:
    return len(text) < 4096 and "\n" not in text and os.path.isfile(text)


def _read_entry(path: Path, key: str, src: SourceModel, n: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The cached (features, probabilities), or None when missing or unusable (with a warning)."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # SafetensorError, OSError, malformed header ...
        return _corrupt(path, f"unreadable ({type(e).__name__}: {e})")
    problem = _entry_problem(meta, tensors, key, src, n)
    if problem:
        return _corrupt(path, problem)
    return tensors["features"], tensors.get("probabilities")


def _entry_problem(meta: dict, tensors: dict, key: str, src: SourceModel, n: int) -> str | None:
    if meta.get("key") != key:
        return f"its stored key {meta.get('key')!r} is not {key!r}"
    expected = {"features"} | ({"probabilities"} if src.head is not None else set())
    if set(tensors) != expected:
        return f"it holds tensors {sorted(tensors)}, expected {sorted(expected)}"
    for name, t in tensors.items():
        if t.dtype != np.float32 or t.ndim != 2 or t.shape[0] != n:
            return f"{name!r} is {t.dtype} {t.shape}, expected float32 ({n}, ...)"
    if tensors["features"].shape[1] != int(meta.get("feature_dim", -1)):
        return f"'features' has {tensors['features'].shape[1]} columns, its header says {meta.get('feature_dim')}"
    return None


def _corrupt(path: Path, reason: str) -> None:
    warnings.warn(f"Feature cache entry {str(path)!r} is {reason}; recomputing it.", RuntimeWarning, stacklevel=3)
    return None


def _write_entry(path: Path, key: str, src: SourceModel, feats: np.ndarray, probs: np.ndarray | None) -> None:
    """Writes one entry atomically (temporary file, then rename); a failure only warns."""
    from safetensors.numpy import save_file

    tensors = {"features": np.ascontiguousarray(feats, dtype=np.float32)}
    if probs is not None:
        tensors["probabilities"] = np.ascontiguousarray(probs, dtype=np.float32)
    meta = {"key": key, "source": src.id, "feature_dim": str(feats.shape[1]), "format": CACHE_FORMAT,
            "preprocessing": json.dumps(src.preprocessing.to_dict(), sort_keys=True)}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; others may read a shared cache
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"Could not write the feature cache entry {str(path)!r} ({e}); features are not "
                      f"cached. Set `cache_dir` or ${CACHE_ENV} to a writable folder.", RuntimeWarning, stacklevel=3)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def with_image_size(src: SourceModel, image_size: int | None) -> SourceModel:
    """``src`` with another input side for image sources (a shallow copy; ``src`` is unchanged)."""
    if image_size is None or src.preprocessing.modality != "image":
        return src
    return dataclasses.replace(src, preprocessing=dataclasses.replace(src.preprocessing, image_size=image_size))
