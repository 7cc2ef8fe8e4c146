"""Resumable training checkpoints: atomic, checksummed, and never pickled.

A run's checkpoint directory holds one folder per checkpoint, named by where training stands::

    checkpoints/
      ckpt-s00-e0001-b000000/   stage 0; continue at epoch 1 (0-based), batch 0: an epoch end
      ckpt-s00-done/            the final state of stage 0 (kept for as long as the directory lives)
      ckpt-s01-e0000-b000004/   stage 1; 4 batches of epoch 0 done: a mid-epoch checkpoint
        model.safetensors       weights of the module the stage trains
        best.safetensors        the best epoch's weights so far (early stopping restores them)
        optimizer.safetensors   optimizer state tensors as "<param index>.<name>"
        processes.safetensors   per process "<rank>.<name>": RNG states (Python, NumPy, torch),
                                the DataLoader generator at the epoch start, running loss sums
        trainer_state.json      everything else: position, history, scheduler, optimizer
                                hyperparameters, early-stopping record, the run's fingerprint and
                                a manifest with the size and SHA-256 of every file above

A checkpoint is written into a hidden temporary folder, flushed to disk, and renamed into place,
so a crash (SIGKILL, power loss) leaves either the whole new checkpoint or none of it. Only the
files named in the manifest are ever opened, only as safetensors or JSON, and only after their
checksums match: nothing in a checkpoint directory can run code (``torch.load`` and ``pickle`` are
not used at all). The ``keep`` newest regular checkpoints survive pruning, and every stage's
``done`` checkpoint is kept because resuming a later stage restores the earlier ones from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from transferkit._io import default_mode
from transferkit.errors import UnsafeFileError

FORMAT, VERSION = "transferkit-checkpoint", 1
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"ckpt-s(\d{2,})-(?:e(\d{4,})-b(\d{6,})|(done))")


class CheckpointError(UnsafeFileError):
    """A checkpoint cannot be used (missing, damaged, foreign, or from a different run)."""


@dataclass(frozen=True, order=True)
class Position:
    """Where training stands: stage index, then the epoch to run and the batches of it already done.

    ``done`` marks the end of a stage (after the best weights were restored); it sorts after
    every position inside that stage.
    """

    stage: int
    done: bool = False
    epoch: int = 0
    batch: int = 0

    @property
    def name(self) -> str:
        if self.done:
            return f"ckpt-s{self.stage:02d}-done"
        return f"ckpt-s{self.stage:02d}-e{self.epoch:04d}-b{self.batch:06d}"

    @classmethod
    def parse(cls, name: str) -> Position | None:
        m = _NAME.fullmatch(name)
        if m is None:
            return None
        if m.group(4):
            return cls(int(m.group(1)), done=True)
        return cls(int(m.group(1)), epoch=int(m.group(2)), batch=int(m.group(3)))

    def describe(self) -> str:
        if self.done:
            return f"end of stage {self.stage}"
        where = "start" if self.batch == 0 else f"batch {self.batch}"
        return f"stage {self.stage}, epoch {self.epoch + 1}, {where}"


@dataclass
class Checkpoint:
    """A verified checkpoint: its folder, JSON state and tensors by file stem (``"model"``, ...)."""

    path: Path
    state: dict
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def position(self) -> Position:
        return Position(**self.state["position"])

    def process_tensors(self, rank: int) -> dict[str, torch.Tensor]:
        """The ``processes.safetensors`` entries of one process, without the rank prefix."""
        prefix = f"{rank}."
        return {k[len(prefix):]: v for k, v in self.tensors.get("processes", {}).items() if k.startswith(prefix)}


# -- writing ---------------------------------------------------------------------------------


def write_checkpoint(directory: Path, position: Position, tensors: dict[str, dict[str, torch.Tensor]],
                     state: dict) -> Path:
    """Writes a checkpoint atomically; returns its folder.

    Args:
        directory: The run's checkpoint directory (created if needed).
        position: Where training stands; it names the folder.
        tensors: Tensors by file stem, each written as ``<stem>.safetensors``.
        state: JSON-serialisable trainer state (``position``, ``files``, ``format`` are added).
    """
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{position.name}-", dir=directory))
    try:
        os.chmod(tmp, default_mode(0o777))  # mkdtemp makes 0700; a colleague may read the run
        manifest = {}
        for stem, group in tensors.items():
            data = save(_unshared(group), metadata={"format": FORMAT})
            _write_file(tmp / f"{stem}.safetensors", data)
            manifest[f"{stem}.safetensors"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        full = {**state, "format": FORMAT, "version": VERSION, "position": asdict(position), "files": manifest,
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_file(tmp / STATE_FILE, json.dumps(full, indent=1).encode())
        _fsync(tmp)
        final = directory / position.name
        if final.exists():  # a resumed run reached the same position again: same content, replace it
            _discard(final)
        os.replace(tmp, final)
        _fsync(directory)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _unshared(group: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors; ones that share memory with an earlier one (tied weights) are copied,
    since safetensors stores each tensor once."""
    out, storages = {}, set()
    for key, value in group.items():
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages and t.numel():
            t = t.clone()
        storages.add(ptr)
        out[key] = t
    return out


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Removes a checkpoint folder: renamed away first (atomic), so a crash never leaves half of it."""
    trash = path.parent / f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune(directory: Path, keep: int) -> list[str]:
    """Deletes all but the ``keep`` newest regular checkpoints (``done`` ones stay); returns the names deleted."""
    regular = [p for p in list_checkpoints(directory) if not Position.parse(p.name).done]
    old = regular[:-keep] if keep > 0 else regular
    for path in old:
        _discard(path)
    return [p.name for p in old]


def clean_interrupted(directory: Path) -> list[str]:
    """Removes leftovers of interrupted writes and deletions; returns the interrupted writes' names."""
    interrupted = []
    if not Path(directory).is_dir():
        return interrupted
    for entry in Path(directory).iterdir():
        if entry.name.startswith((".tmp-ckpt-", ".trash-ckpt-")) and entry.is_dir():
            if entry.name.startswith(".tmp-"):
                interrupted.append(entry.name)
            shutil.rmtree(entry, ignore_errors=True)
    return sorted(interrupted)


def set_aside(path: Path) -> Path:
    """Renames an unusable checkpoint to ``corrupt-<name>-<time>`` so it is kept for inspection but never used."""
    target = path.parent / f"corrupt-{path.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    os.replace(path, target)
    return target


# -- reading ---------------------------------------------------------------------------------


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint folders in ``directory``, oldest first (by position, not by time)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(Position.parse(p.name), p) for p in directory.iterdir() if p.is_dir()]
    return [p for pos, p in sorted((x for x in found if x[0] is not None), key=lambda x: x[0])]


def read_checkpoint(path: Path) -> Checkpoint:
    """Reads and verifies one checkpoint folder; any problem raises ``CheckpointError`` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path.name!r} has no {STATE_FILE}") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path.name!r}: {STATE_FILE} is not valid JSON ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path.name!r} is not a transferkit checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path.name!r} has format version {state.get('version')!r}; "
                              f"this transferkit reads version {VERSION}")
    try:
        position = Position(**state["position"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path.name!r} has no valid position ({e})") from None
    if position.name != path.name:
        raise CheckpointError(f"checkpoint {path.name!r} records position {position.name!r}")
    tensors = {}
    for name, info in dict(state.get("files", {})).items():
        if not re.fullmatch(r"[a-z_]+\.safetensors", name):
            raise CheckpointError(f"checkpoint {path.name!r} lists an unexpected file {name!r}")
        try:
            data = (path / name).read_bytes()
        except OSError as e:
            raise CheckpointError(f"checkpoint {path.name!r}: {name} cannot be read ({e.strerror})") from None
        if len(data) != info.get("bytes") or hashlib.sha256(data).hexdigest() != info.get("sha256"):
            raise CheckpointError(f"checkpoint {path.name!r}: {name} is damaged (size or checksum differs "
                                  "from the manifest)")
        try:
            tensors[name.removesuffix(".safetensors")] = load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {path.name!r}: {name} is not valid safetensors ({e})") from None
    return Checkpoint(path, state, tensors)


def find_resume_point(directory: Path, warn) -> tuple[Checkpoint | None, list[Path]]:
    """The newest checkpoint that verifies, and the newer ones that did not.

    Each unusable checkpoint is reported through ``warn(message)`` by name. Returns
    ``(None, [])`` when the directory holds no checkpoint at all.

    Raises:
        CheckpointError: There are checkpoints but none of them can be used.
    """
    paths = list_checkpoints(directory)
    skipped, reasons = [], []
    for path in reversed(paths):
        try:
            return read_checkpoint(path), skipped
        except CheckpointError as e:
            warn(f"Skipping {e}; trying the previous checkpoint.")
            skipped.append(path)
            reasons.append(str(e))
    if paths:
        raise CheckpointError(
            f"`--resume` found {len(paths)} checkpoint(s) in {str(directory)!r} and none can be used: "
            + "; ".join(reasons) + ". Start the run again without `--resume` (after removing the directory "
            "or with `--overwrite`).")
    return None, []


# -- optimizer state --------------------------------------------------------------------------


def optimizer_to_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Splits ``optimizer.state_dict()`` into tensors (``"<param>.<name>"``) and a JSON part."""
    tensors, scalars = {}, {}
    for param, values in state_dict["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param}.{name}"] = value
            else:
                scalars.setdefault(str(param), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of ``optimizer_to_tensors``: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        param, name = key.split(".", 1)
        state.setdefault(int(param), {})[name] = value
    for param, values in meta["scalars"].items():
        state.setdefault(int(param), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# -- random number generators ------------------------------------------------------------------


def rng_state() -> dict[str, torch.Tensor]:
    """This process's Python, NumPy and torch (CPU and current CUDA device) generator states, as tensors."""
    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": torch.tensor(words, dtype=torch.int64),
        "python_extra": torch.tensor([version, gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restores what ``rng_state`` captured."""
    version, has_gauss, gauss = state["python_extra"].tolist()
    random.setstate((int(version), tuple(state["python"].tolist()), gauss if has_gauss else None))
    pos, np_has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(np_has_gauss), cached))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8))
