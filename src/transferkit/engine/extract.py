"""Feature extraction: batched inference-mode forward passes of the shared layers.

- :func:`extract_features` runs one backbone over an ``ExampleDataset`` (the training loop's
  linear probe uses it).
- :func:`extract_sources` runs *several* sources over the same raw examples. Each image file
  is decoded once (``transferkit.data.image.open_image``) and every source's own transform is
  applied to the decoded image, so K sources cost little more than their K forward passes; a
  source with a classifier head also gets the head's class probabilities. Launched with
  Accelerate (``accelerate launch`` / ``torchrun``), each process runs one contiguous shard of
  the examples and the shards are gathered on every process (``engine/distributed.py``).

Nothing here is cached: the on-disk cache (``transferkit.features``) sits on top of this.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import nn

from transferkit.engine import distributed
from transferkit.engine.progress import Stage
from transferkit.sources.base import SourceModel
from transferkit.sources.inputs import ExampleDataset, ImageInputs, input_pipeline

#: Examples decoded at a time when feeding several sources (bounds memory for large images).
DECODE_CHUNK = 512


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
        with Stage(name, len(dataset), "examples", enabled=verbose) as shown:
            for inputs, _ in loader:
                inputs = {k: v.to(device) for k, v in inputs.items()}
                chunks.append(backbone(**inputs).float().cpu())
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
        with ThreadPoolExecutor(max_workers=1) as decoder, ThreadPoolExecutor(max_workers=1) as preparer:
            ahead = _submit(decoder, decode, chunks[0]) if chunks else None
            for c in range(len(chunks)):
                started = time.perf_counter()
                decoded = ahead.result()
                for s in range(len(sources)):
                    seconds[s] += (time.perf_counter() - started) / len(sources)
                if c + 1 < len(chunks):
                    ahead = _submit(decoder, decode, chunks[c + 1])
                _forward_chunk(sources, pipelines, decoded, batch_size, device, preparer, outputs, seconds, advance)
    finally:
        for restore in moved:
            restore()
    return [_stacked(src, feats, probs) for src, (feats, probs) in zip(sources, outputs)], seconds


def _forward_chunk(sources: list[SourceModel], pipelines: list, decoded: list, batch_size: int,
                   device: torch.device, preparer: ThreadPoolExecutor, outputs: list, seconds: list,
                   advance) -> None:
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
        feats = src.backbone(**{k: v.to(device) for k, v in batch.items()}).float()
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
