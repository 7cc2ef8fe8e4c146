"""Features of sources on raw examples, cached on disk; BatchNorm statistics of random-init sources.

:func:`source_features` runs *several* sources over the same raw examples, for ranking, through
the engine's extraction (``transferkit.engine.extract``: each image file is decoded once for all
sources, so ranking K sources costs little more than their K forward passes). Results are cached
on disk; a source with a classifier head also gets the head's class probabilities (softmax of
``head(features)``, for LEEP and NCE). :func:`estimate_batchnorm_statistics` gives a random-init
(or blended) source the BatchNorm statistics of the target's examples first.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.engine import distributed
from transferkit.data.base import examples_fingerprint
from transferkit.engine.extract import DECODE_CHUNK, eval_on_device, extract_sources, inference_layout, prefetched
from transferkit.errors import ConfigError, DataError
from transferkit.sources.base import SourceModel
from transferkit.sources.inputs import ExampleDataset, input_pipeline

__all__ = ["CACHE_ENV", "CACHE_FORMAT", "DECODE_CHUNK", "STATISTICS_EXAMPLES", "SourceFeatures", "cache_key",
           "default_cache_dir", "estimate_batchnorm_statistics", "examples_fingerprint", "source_features",
           "statistics_subset", "with_image_size"]

#: Bumped when the cache layout or the way features are computed changes.
CACHE_FORMAT = "1"
CACHE_ENV = "TRANSFERKIT_CACHE"
#: At most this many target examples estimate a random-init source's BatchNorm statistics. Each
#: statistic averages examples x positions, so 64 images pin it down: on 380 Fashion-MNIST images,
#: 64 instead of all of them moved LogME of ``mobilenet_v2@random`` by 0.002 (its gap to the
#: pretrained source is 0.35), and scoring the control costs ~1.2x the pretrained source instead of 2x.
STATISTICS_EXAMPLES = 64


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
    verbose: bool = False,
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
        verbose: Show the progress of the features computed (not those read from the cache).

    Returns:
        One :class:`SourceFeatures` per source, in order.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"`batch_size` must be a whole number >= 1; got {batch_size!r}.")
    examples = list(examples)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    fingerprint = fingerprint or (examples_fingerprint(examples) if use_cache else "")
    statistics_from = examples if statistics_from is None else list(statistics_from)
    results, pending = _look_up(sources, len(examples), root if use_cache else None, fingerprint, statistics_from)
    # Every process must agree on what to compute (their caches might differ): the main decides.
    todo = distributed.broadcast_flags([r is None for r in results])
    pending = [p for p, miss in zip(pending, todo) if miss]
    if pending:
        device = torch.device(device) if device is not None else distributed.device()
        computed = _compute_missing(pending, examples, statistics_from, batch_size, device, verbose)
        for p, result in zip(pending, computed):
            results[p.index] = result
        distributed.wait_for_everyone()
    return results  # type: ignore[return-value]


@dataclass
class _Pending:
    """A source whose features may have to be computed, and the seconds spent on it so far."""

    index: int
    src: SourceModel
    key: str
    path: Path | None
    seconds: float


def _look_up(sources: Sequence[SourceModel], n: int, root: Path | None, fingerprint: str,
             statistics_from: list) -> tuple[list[SourceFeatures | None], list[_Pending]]:
    """The cached entry of each source (None where missing, or with ``root`` None: no cache)."""
    results: list[SourceFeatures | None] = []
    pending: list[_Pending] = []
    needs_statistics = [src.stale_statistics for src in sources]
    estimate_from = (examples_fingerprint(statistics_subset(statistics_from)) if any(needs_statistics) else None)
    for i, src in enumerate(sources):
        started = time.perf_counter()
        stats = estimate_from if needs_statistics[i] else src.statistics_fingerprint
        key = cache_key(src, fingerprint, stats) if root is not None else ""
        path = root / _slug(src.id) / f"{key}.safetensors" if root is not None else None
        hit = _read_entry(path, key, src, n) if root is not None else None
        results.append(None if hit is None else SourceFeatures(
            src.id, hit[0], hit[1], key, True, time.perf_counter() - started, path))
        pending.append(_Pending(i, src, key, path, time.perf_counter() - started))
    return results, pending


def _compute_missing(pending: list[_Pending], examples: list, statistics_from: list, batch_size: int,
                     device: torch.device, verbose: bool = False) -> list[SourceFeatures]:
    """Computes the pending sources (every process its shard); the main process writes the cache."""
    for p in pending:
        started = time.perf_counter()
        estimate_batchnorm_statistics(p.src, statistics_from, batch_size, device)
        p.seconds += time.perf_counter() - started
    computed, seconds = extract_sources([p.src for p in pending], examples, batch_size, device, verbose=verbose)
    out = []
    for p, (feats, probs), secs in zip(pending, computed, seconds):
        feats, probs = feats.numpy(), probs.numpy() if probs is not None else None
        if p.path is not None and distributed.is_main_process():
            _write_entry(p.path, p.key, p.src, feats, probs)
        out.append(SourceFeatures(p.src.id, feats, probs, p.key, False, p.seconds + secs, p.path))
    return out


# -- computing ---------------------------------------------------------------------------------


def statistics_subset(examples: Sequence) -> list:
    """At most ``STATISTICS_EXAMPLES`` examples, evenly spaced (class folders are often in order)."""
    examples = list(examples)
    step = math.ceil(len(examples) / STATISTICS_EXAMPLES) if examples else 1
    return examples[::step]


class _DictInputs(nn.Module):
    """Calls ``backbone(**inputs)`` on one batch dict, moved by ``to_device``."""

    def __init__(self, backbone: nn.Module, to_device) -> None:
        super().__init__()
        self.backbone, self.to_device = backbone, to_device

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backbone(**self.to_device(inputs))


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

    subset = statistics_subset(examples)
    if not subset:
        raise DataError(f"Source {src.id!r} has random weights and BatchNorm layers, whose statistics come from "
                        "target examples, but `examples` is empty; give at least one example.")
    dataset = ExampleDataset(subset, None, input_pipeline(src, train=False))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate,
                                         drop_last=len(subset) > batch_size)  # no batch of one
    device = torch.device(device) if device is not None else distributed.device()
    restore = eval_on_device(src, device)
    try:
        with inference_layout(src.backbone, device) as to_device:
            update_bn(prefetched(loader), _DictInputs(src.backbone, to_device))
    finally:
        restore()
    src.stale_statistics = False
    src.statistics_fingerprint = examples_fingerprint(subset)


# -- the cache ---------------------------------------------------------------------------------


def _slug(source_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", source_id).strip("._") or "source"


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


#: The smallest input side chosen from the data: below it ImageNet CNNs keep too few positions.
MIN_IMAGE_SIZE = 64


def data_image_size(src: SourceModel, examples: Sequence) -> int:
    """The input side a run on ``examples`` uses for image source ``src`` when none is given.

    The data's own short side (``typical_side``), at least ``MIN_IMAGE_SIZE`` and at most the
    source's own size: no upsampling of the data past its resolution (160 px photos through a
    224 px source at 224 px tested 0.759 against 0.813 at 160 px), no larger input than the
    source was trained on. A source that takes only its own size (a ViT with fixed position
    embeddings) keeps it.
    """
    from transferkit.data.image import typical_side

    own = src.preprocessing.image_size or 224
    side = typical_side(examples)
    size = own if side is None else min(own, max(MIN_IMAGE_SIZE, side))
    return size if size == own or _accepts_size(src.backbone, size) else own


def _accepts_size(backbone: nn.Module, size: int) -> bool:
    """Whether ``backbone`` runs on a ``size`` x ``size`` input (one blank image, no gradients)."""
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            backbone(torch.zeros(1, 3, size, size, device=device))
        return True
    except (AssertionError, RuntimeError, ValueError):  # timm/torchvision ViTs assert their own size
        return False
    finally:
        backbone.train(was_training)


def with_image_size(src: SourceModel, image_size: int | None) -> SourceModel:
    """``src`` with another input side for image sources (a shallow copy; ``src`` is unchanged)."""
    if image_size is None or src.preprocessing.modality != "image":
        return src
    return dataclasses.replace(src, preprocessing=dataclasses.replace(src.preprocessing, image_size=image_size))
