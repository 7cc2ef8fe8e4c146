"""Shared types and checks of the weight-averaging functions (keys, shapes, dtypes, alphas)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import torch

from transferkit.errors import ConfigError

StateDict = Mapping[str, torch.Tensor]
Alpha = float | Mapping[str, float]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(i / 10 for i in range(11))
"""0, 0.1, ..., 1.0: the alphas ``wise_ft`` tries by default."""

_SHOW = 5  # how many key names an error message lists before "and N more"
_WISE_HINT = "0 = zero-shot, 1 = fine-tuned"


def check_compatible(a: StateDict, b: StateDict, names: tuple[str, str] = ("a", "b")) -> None:
    """Checks that two state dicts can be averaged key by key.

    Args:
        a: First state dict.
        b: Second state dict.
        names: How to call ``a`` and ``b`` in error messages.

    Raises:
        TypeError: If an argument is not a mapping of names to tensors.
        ValueError: If the keys differ (lists a few missing and extra names), or a tensor's
            shape or dtype differs (names the tensor and shows both values).
    """
    _check_state_dict(a, names[0])
    _check_state_dict(b, names[1])
    na, nb = names
    missing = [k for k in a if k not in b]
    extra = [k for k in b if k not in a]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing from `{nb}` ({_few(missing)})")
        if extra:
            parts.append(f"{len(extra)} only in `{nb}` ({_few(extra)})")
        raise ValueError(
            f"State dicts `{na}` and `{nb}` have different keys: {'; '.join(parts)}. "
            "Only models with the same architecture can be merged."
        )
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise ValueError(
                f"Tensor {key!r} has shape {tuple(ta.shape)} in `{na}` but {tuple(tb.shape)} "
                f"in `{nb}`. Only models with the same architecture can be merged."
            )
        if ta.dtype != tb.dtype:
            raise ValueError(
                f"Tensor {key!r} is {ta.dtype} in `{na}` but {tb.dtype} in `{nb}`. "
                "Cast both state dicts to the same dtype before merging."
            )


def _check_state_dict(sd: object, name: str) -> None:
    if not isinstance(sd, Mapping):
        raise TypeError(f"`{name}` must be a state dict (a mapping of names to tensors), "
                        f"got {type(sd).__name__}.")
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"`{name}[{key!r}]` is {type(value).__name__}, not a torch.Tensor.")


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOW])
    return shown + (f" and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def _check_fraction(value: object, name: str, hint: str) -> float:
    """Returns ``value`` as a float in [0, 1] or raises ``ConfigError`` naming ``name``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        value = float(value)  # type: ignore[arg-type]
        ok = 0.0 <= value <= 1.0  # False for NaN
    if not ok:
        raise ConfigError(f"`{name}` must be a number in [0, 1] ({hint}), got {value!r}.")
    return value  # type: ignore[return-value]


def _check_alphas(alphas: Iterable[float]) -> tuple[float, ...]:
    """Validates a grid of alphas; returns it sorted, without duplicates."""
    if isinstance(alphas, (str, bytes, numbers.Number)) or not isinstance(alphas, Iterable):
        raise ConfigError(f"`alphas` must be a sequence of numbers in [0, 1], got {alphas!r}.")
    values = [_check_fraction(x, f"alphas[{i}]", _WISE_HINT)
              for i, x in enumerate(alphas)]
    if not values:
        raise ConfigError("`alphas` is empty; pass at least one number in [0, 1].")
    return tuple(sorted(set(values)))


def _selected_keys(sd: StateDict, keys: Iterable[str] | None) -> set[str] | None:
    if keys is None:
        return None
    if isinstance(keys, (str, bytes)):
        raise ConfigError(f"`keys` must be an iterable of tensor names, not one string ({keys!r}).")
    chosen = set(keys)
    unknown = sorted(k for k in chosen if k not in sd)
    if unknown:
        raise ConfigError(f"`keys` names tensors that are not in the state dicts: {_few(unknown)}.")
    return chosen


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision (and smaller) floats, else the dtype itself."""
    return dtype if dtype.itemsize >= 4 else torch.float32


def _rank(score: float) -> float:
    """Sort key for scores: NaN counts as worse than any number."""
    return -math.inf if math.isnan(score) else score
