"""Feature extraction: batched inference-mode forward passes of the shared layers.

- :func:`extract_features` runs one backbone over an ``ExampleDataset`` (the training loop's
  linear probe uses it).
- :func:`extract_sources` runs *several* sources over the same raw examples. Each image file
  is decoded once (``transferkit.data.image.open_image``) and every source's own transform is
  applied to the decoded image, so K sources cost little more than their K forward passes; a
  source with a classifier head also gets the head's class probabilities. Launched with
  Accelerate (``accelerate launch`` / ``torchrun``), each process runs one contiguous shard of
  the examples and the shards are gathered on every process (``engine/distributed.py``).

Both decode the next inputs in a helper thread while the current batch is in the model
(:func:`prefetched`), run convolutional networks on CPU in the channels-last memory layout
(:func:`inference_layout`), which oneDNN's convolutions use natively (on MobileNetV2 at 64 px
1.3x faster, features within 1.5e-5), and feed images to the model in pieces of at most
``INFERENCE_PIXELS`` (:func:`in_pieces`), whose activations stay in the CPU's caches.

Nothing here is cached: the on-disk cache (``transferkit.features``) sits on top of this.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import nn

from transferkit.engine import distributed
from transferkit.engine.progress import Stage
from transferkit.sources.base import SourceModel
from transferkit.sources.inputs import ExampleDataset, ImageInputs, input_pipeline

#: Examples decoded at a time when feeding several sources (bounds memory for large images).
DECODE_CHUNK = 512
#: Run convolutional networks in the channels-last layout for inference on CPU (False: as they are).
CHANNELS_LAST_ON_CPU = True
#: Share of a network's weights in 2-d convolutions from which it counts as convolutional.
CONV_WEIGHT_SHARE = 0.5
#: Pixels (images x height x width) of the image inputs in one forward pass at inference: three
#: 224 px images, nine at 128 px, 36 at 64 px. Larger batches leave the caches: on 2 CPU threads,
#: 64 images at 224 px took 1.30 s in one batch and 0.35-0.42 s in pieces of 2-4 (MobileNetV2),
#: 1.75 s and 0.49-0.57 s (EfficientNet-Lite2); and the activations alive at once, not the
#: weights, set the peak memory of extraction.
INFERENCE_PIXELS = 3 * 224 * 224
_END = object()


def in_pieces(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``batch`` cut along its first dimension so that no piece holds more than
    ``INFERENCE_PIXELS`` pixels of 4-d (image-like) input; inputs without one stay whole."""
    pixels = max((v.shape[-2] * v.shape[-1] for v in batch.values() if v.dim() == 4), default=0)
    n = len(next(iter(batch.values()))) if batch else 0
    per = max(1, INFERENCE_PIXELS // pixels) if pixels else n
    if per >= n:
        return [batch]
    return [{k: v[i: i + per] for k, v in batch.items()} for i in range(0, n, per)]


def prefetched(batches: Iterable) -> Iterator:
    """The items of ``batches`` in order; the next one is loaded in a helper thread while the
    caller works on this one (image decoding and transforms release the GIL).

    For evaluation inputs only: loading must draw no random numbers, since a training loader's
    per-example seeding (``engine.data.SeededExamples``) sets the global generators that the
    model's dropout draws from.
    """
    items = iter(batches)
    with ThreadPoolExecutor(max_workers=1) as loader:
        ahead = loader.submit(next, items, _END)
        while (item := ahead.result()) is not _END:
            ahead = loader.submit(next, items, _END)
            yield item


@contextlib.contextmanager
def inference_layout(module: nn.Module, device: torch.device | str) -> Iterator[Callable[[dict], dict]]:
    """Runs ``module`` in the memory layout fastest for inference on ``device``; yields the
    function that moves a batch of inputs (a dict of tensors) there in that layout.

    A convolutional network (``CONV_WEIGHT_SHARE`` of its weights in ``nn.Conv2d``) on CPU is
    put in channels-last layout for the block and back afterwards (the values are untouched, so a
    later training stage or a saved checkpoint sees the usual contiguous tensors); its 4-d inputs
    are made channels-last too. Anything else runs as it is.
    """
    device = torch.device(device)
    if not (CHANNELS_LAST_ON_CPU and device.type == "cpu" and _is_convolutional(module)):
        yield lambda batch: {k: v.to(device) for k, v in batch.items()}
        return
    _relayout(module, torch.channels_last)
    try:
        yield lambda batch: {k: v.to(device, memory_format=torch.channels_last) if v.dim() == 4 else v.to(device)
                             for k, v in batch.items()}
    finally:
        _relayout(module, torch.contiguous_format)


def _relayout(module: nn.Module, layout: torch.memory_format) -> None:
    """``module``'s 4-d weights in ``layout``, as ordinary tensors even inside ``inference_mode``
    (whose tensors could never be trained again)."""
    with torch.inference_mode(False):
        module.to(memory_format=layout)


def _is_convolutional(module: nn.Module) -> bool:
    total = sum(p.numel() for p in module.parameters())
    conv = sum(p.numel() for m in module.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))
    return total > 0 and conv >= CONV_WEIGHT_SHARE * total


@torch.inference_mode()
def extract_features(backbone: nn.Module, dataset: ExampleDataset, batch_size: int = 64,
                     device: torch.device | str = "cpu", num_workers: int = 0, verbose: bool = False,
                     name: str = "features") -> torch.Tensor:
    """Features of every example, in order, shape (N, D), float32 on the CPU.

    The backbone runs in eval mode (BatchNorm statistics and dropout as at inference) and its
    previous training mode is restored afterwards. ``verbose`` shows progress as ``name``.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=dataset.collate, num_workers=num_workers)
    was_training = backbone.training
    backbone.eval()
    chunks = []
    try:
        with Stage(name, len(dataset), "examples", enabled=verbose) as shown, \
                inference_layout(backbone, device) as to_device:
            for inputs, _ in (loader if num_workers else prefetched(loader)):
                for piece in in_pieces(inputs):
                    chunks.append(backbone(**to_device(piece)).float().cpu())
                    shown.advance(len(chunks[-1]))
    finally:
        backbone.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def extract_sources(sources: Sequence[SourceModel], examples: list, batch_size: int, device: torch.device,
                    verbose: bool = False):
    """Every source over all ``examples``, this process computing its shard.

    Returns ``[(features, probabilities or None)]`` as CPU float32 tensors over all examples (the
    shards gathered in order on every process), and the seconds this process spent per source.
    ``verbose`` shows the main process's progress.
    """
    start, stop = distributed.shard_bounds(len(examples))
    name = f"features {sources[0].id}" if len(sources) == 1 else f"features of {len(sources)} sources"
    with Stage(name, stop - start, "examples", enabled=verbose and distributed.is_main_process()) as shown:
        computed, seconds = _compute(list(sources), examples[start:stop], batch_size, device, shown.advance)
    gathered = [(distributed.gather_rows(feats, len(examples)),
                 distributed.gather_rows(probs, len(examples)) if probs is not None else None)
                for feats, probs in computed]
    return gathered, seconds


@torch.inference_mode()
def _compute(sources: list[SourceModel], examples: list, batch_size: int, device: torch.device,
             advance=lambda n: None):
    """Runs every source over ``examples``; each image is decoded once for all of them.

    Returns ``[(features, probabilities or None)]`` as CPU float32 tensors, and the seconds
    spent per source (forward passes and any wait for its inputs, plus an equal share of the
    wait for decoding). ``advance(n)`` is told of each batch (``n``: its examples over the
    number of sources), for the progress shown.
    """
    pipelines = [input_pipeline(src, train=False) for src in sources]
    decode = _decode_chunk if all(isinstance(p, ImageInputs) for p in pipelines) else None
    outputs: list[tuple[list, list]] = [([], []) for _ in sources]
    seconds = [0.0] * len(sources)
    moved = [eval_on_device(src, device) for src in sources]
    size = _chunk_size(batch_size)
    chunks = [examples[i: i + size] for i in range(0, len(examples), size)]
    try:
        # Two helper threads keep the forward passes fed: one decodes the next chunk of images,
        # the other runs the next batch's transforms while this batch goes through the model.
        with ThreadPoolExecutor(max_workers=1) as decoder, ThreadPoolExecutor(max_workers=1) as preparer, \
                contextlib.ExitStack() as layouts:
            movers = [layouts.enter_context(inference_layout(src.backbone, device)) for src in sources]
            ahead = _submit(decoder, decode, chunks[0]) if chunks else None
            for c in range(len(chunks)):
                started = time.perf_counter()
                decoded = ahead.result()
                for s in range(len(sources)):
                    seconds[s] += (time.perf_counter() - started) / len(sources)
                if c + 1 < len(chunks):
                    ahead = _submit(decoder, decode, chunks[c + 1])
                _forward_chunk(sources, pipelines, movers, decoded, batch_size, preparer, outputs, seconds, advance)
    finally:
        for restore in moved:
            restore()
    return [_stacked(src, feats, probs) for src, (feats, probs) in zip(sources, outputs)], seconds


def _forward_chunk(sources: list[SourceModel], pipelines: list, movers: list, decoded: list, batch_size: int,
                   preparer: ThreadPoolExecutor, outputs: list, seconds: list, advance) -> None:
    """Every source's batches of one decoded chunk; the next batch's transforms run meanwhile."""

    def prepare(job: tuple[int, list]) -> dict[str, torch.Tensor]:
        pipe = pipelines[job[0]]
        return pipe.collate([pipe.load(x) for x in job[1]])

    jobs = [(s, decoded[b: b + batch_size]) for s in range(len(sources)) for b in range(0, len(decoded), batch_size)]
    pending = preparer.submit(prepare, jobs[0]) if jobs else None
    for j, (s, _) in enumerate(jobs):
        started = time.perf_counter()
        batch = pending.result()
        if j + 1 < len(jobs):
            pending = preparer.submit(prepare, jobs[j + 1])
        src = sources[s]
        feats = torch.cat([src.backbone(**movers[s](piece)).float() for piece in in_pieces(batch)])
        outputs[s][0].append(feats.cpu())
        if src.head is not None:
            outputs[s][1].append(torch.softmax(src.head(feats).float(), dim=-1).cpu())
        seconds[s] += time.perf_counter() - started
        advance(len(feats) / len(sources))


def _stacked(src: SourceModel, feats: list, probs: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    f = torch.cat(feats) if feats else torch.zeros((0, src.feature_dim))
    if src.head is None:
        return f.contiguous(), None
    p = torch.cat(probs) if probs else torch.zeros((0, _head_classes(src)))
    return f.contiguous(), p.contiguous()


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


def eval_on_device(src: SourceModel, device: torch.device):
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
