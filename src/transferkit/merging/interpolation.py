"""Interpolation between two state dicts: ``interpolate`` and the mixed initialisation ``mix_init``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from transferkit.errors import ConfigError
from transferkit.merging.common import _check_fraction, _compute_dtype, _few, _selected_keys, Alpha, check_compatible, StateDict


def interpolate(a: StateDict, b: StateDict, alpha: Alpha,
                keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Returns the weight-space interpolation ``(1 - alpha) * a + alpha * b``.

    ``alpha = 0`` gives tensors equal to ``a`` exactly and ``alpha = 1`` equal to ``b``
    exactly (bitwise; the endpoints are copied, not computed). In between, floating tensors
    are computed as ``torch.lerp(a, b, alpha)`` (float32 or wider arithmetic, rounded back to
    the input dtype), which equals the formula up to rounding and leaves tensors with
    ``a == b`` unchanged.

    Args:
        a: The state dict at ``alpha = 0`` (e.g. the zero-shot model).
        b: The state dict at ``alpha = 1`` (e.g. the fine-tuned model).
        alpha: A number in [0, 1], or a mapping from key prefix to alpha for a different
            alpha per layer group (e.g. ``{"": 0.5, "head.": 1.0}``). Each tensor uses its
            longest matching prefix (plain string prefixes, so end them with "." to avoid
            ``"layer1"`` matching ``"layer10.weight"``); ``""`` matches every key and acts as
            the default. Every interpolated tensor must match some prefix.
        keys: If given, only these tensors are interpolated; all others are copied from ``b``.

    Returns:
        A new dict with ``a``'s key order. Non-floating tensors (integer buffers such as
        BatchNorm's ``num_batches_tracked``) are not averaged: they are copied from ``b``,
        or from ``a`` where their alpha is exactly 0, so both endpoints are exact for the
        whole state dict.

    Raises:
        ConfigError: If an alpha is outside [0, 1], a tensor matches no prefix of ``alpha``,
            or ``keys`` names unknown tensors.
        ValueError: If ``a`` and ``b`` differ in keys, shapes or dtypes (see
            ``check_compatible``).
    """
    return _interpolate(a, b, alpha, keys, alpha_name="alpha", names=("a", "b"),
                        hint="0 keeps `a`, 1 keeps `b`")


def mix_init(source: StateDict, fresh: StateDict, beta: Alpha,
             keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Mixed initialisation ``(1 - beta) * source + beta * fresh``.

    ``beta = 0`` is plain transfer (``source`` exactly), ``beta = 1`` a fresh initialisation
    (``fresh`` exactly); values in between shrink the transferred weights toward a random
    init. A thin wrapper on ``interpolate`` whose errors name the ``--init-mix`` option.

    Args:
        source: Transferred (pretrained) weights.
        fresh: Freshly initialised weights of the same architecture.
        beta: A number in [0, 1], or a prefix-to-beta mapping as for ``interpolate``.
        keys: If given, only these tensors are mixed; all others are copied from ``fresh``.

    Returns:
        A new state dict. Non-floating tensors come from ``fresh``, or from ``source`` where
        beta is exactly 0.

    Raises:
        ConfigError: If beta is outside [0, 1] (message names ``--init-mix``).
        ValueError: If the state dicts differ in keys, shapes or dtypes.
    """
    return _interpolate(source, fresh, beta, keys, alpha_name="--init-mix",
                        names=("source", "fresh"), hint="0 = plain transfer, 1 = fresh init")


def _interpolate(a: StateDict, b: StateDict, alpha: Alpha, keys: Iterable[str] | None, *,
                 alpha_name: str, names: tuple[str, str], hint: str) -> dict[str, torch.Tensor]:
    check_compatible(a, b, names)
    chosen = _selected_keys(a, keys)
    targets = [k for k in a if chosen is None or k in chosen]
    weights = _resolve_alpha(alpha, targets, alpha_name, hint)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, ta in a.items():
            tb = b[key]
            w = weights.get(key, 1.0)  # tensors outside `keys` come from b
            if w == 0.0:
                out[key] = ta.clone()
            elif w == 1.0 or not ta.is_floating_point():
                out[key] = tb.clone()
            else:
                cd = _compute_dtype(ta.dtype)
                out[key] = torch.lerp(ta.to(cd), tb.to(cd), w).to(ta.dtype)
    return out


def _resolve_alpha(alpha: Alpha, keys: Sequence[str], name: str, hint: str) -> dict[str, float]:
    """Maps each key to its alpha (a number, or the longest matching prefix's value)."""
    if not isinstance(alpha, Mapping):
        value = _check_fraction(alpha, name, hint)
        return dict.fromkeys(keys, value)
    if not alpha:
        raise ConfigError(f"`{name}` is an empty mapping; give a number in [0, 1] or a "
                          "mapping from key prefix to alpha.")
    table = {}
    for prefix, value in alpha.items():
        if not isinstance(prefix, str):
            raise ConfigError(f"`{name}` keys must be key prefixes (str), got {prefix!r}.")
        table[prefix] = _check_fraction(value, f"{name}[{prefix!r}]", hint)
    prefixes = sorted(table, key=len, reverse=True)
    out, unmatched = {}, []
    for key in keys:
        match = next((p for p in prefixes if key.startswith(p)), None)
        if match is None:
            unmatched.append(key)
        else:
            out[key] = table[match]
    if unmatched:
        raise ConfigError(
            f"`{name}` has no prefix matching {len(unmatched)} tensor(s): {_few(unmatched)}. "
            "Add a '' entry for the default value, or a prefix covering them."
        )
    return out
