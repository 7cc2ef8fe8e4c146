"""Transfer strategies; ``transferkit strategies`` lists them."""

import importlib
import pkgutil

from transferkit.strategies.base import STRATEGIES, Strategy, register


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name`` (did-you-mean error if unknown)."""
    _import_all()
    return STRATEGIES.get(name)


def list_strategies() -> list[tuple[str, str]]:
    """``(name, one-line summary)`` for every registered strategy."""
    _import_all()
    return [(n, STRATEGIES.get(n).summary) for n in STRATEGIES]


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["STRATEGIES", "Strategy", "get_strategy", "list_strategies", "register"]
