"""Safe reading and atomic writing of weights (safetensors) and JSON."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from transferkit.errors import NonFiniteLossError, UnsafeFileError


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Reads a safetensors file; anything else or a malformed file raises ``UnsafeFileError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UnsafeFileError(f"Weights file {str(path)!r} does not exist.")
    if path.suffix != ".safetensors":
        raise UnsafeFileError(
            f"Weights file {str(path)!r} is not a .safetensors file. transferkit loads weights "
            "only from safetensors (pickled checkpoints can run code when loaded); convert it with "
            "`safetensors.torch.save_file(torch.load(p, weights_only=True), 'model.safetensors')`."
        )
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        with open(path, "rb") as f:
            head = f.read(8)
        hint = " The file is damaged or was not written by safetensors; write it again (e.g. re-run the `fit` that made it)."
        pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
        if (pickled or head[:4] == b"PK\x03\x04") and int.from_bytes(head.ljust(8, b"\0"), "little") > path.stat().st_size:
            hint = (" It looks like a pickled (torch.save) checkpoint renamed to .safetensors; transferkit "
                    "never unpickles files. Convert it where you trust it with `safetensors.torch.save_file("
                    "torch.load(p, weights_only=True), 'model.safetensors')`.")
        raise UnsafeFileError(f"Weights file {str(path)!r} is not a valid safetensors file: {e}.{hint}") from None


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Writes tensors as safetensors atomically (temporary file, then rename).

    Raises:
        NonFiniteLossError: A floating-point tensor holds NaN or infinity (training diverged);
            nothing is written, so a diverged model never replaces a file.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteLossError(
            f"Not writing {str(path)!r}: {len(bad)} weight tensor(s) hold NaN or infinite values "
            f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); training diverged. "
            "Try a lower `--lr` or `--precision no`, or check the inputs for NaN.")
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_json(path: Path, obj) -> None:
    """Writes JSON atomically, keys sorted, one trailing newline."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UnsafeFileError(f"Expected JSON file {str(path)!r} is missing.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnsafeFileError(f"{str(path)!r} is not valid JSON: {e}") from None
    except RecursionError:
        raise UnsafeFileError(f"{str(path)!r} nests too deeply to be a transferkit or model JSON file.") from None


def atomic_write(path: Path, write) -> None:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, then renames it onto ``path``.

    A crash or a full disk leaves the old file (or none), never a truncated one. The file gets
    the permissions a plain ``open`` would give (``0o666`` less the umask), not ``mkstemp``'s 0600,
    so colleagues who may read the folder may read the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_mode(0o666))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_mode(mode: int) -> int:
    """``mode`` less the process umask (what ``open``/``mkdir`` would give a new file or folder)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask
