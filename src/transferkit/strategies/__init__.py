"""Transfer strategies; ``transferkit strategies`` lists them."""

from transferkit.strategies.base import STRATEGIES, Strategy, register


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name`` (did-you-mean error if unknown)."""
    return STRATEGIES.get(name)


def list_strategies() -> list[tuple[str, str]]:
    """``(name, one-line summary)`` for every registered strategy."""
    return [(n, STRATEGIES.get(n).summary) for n in STRATEGIES]


__all__ = ["STRATEGIES", "Strategy", "get_strategy", "list_strategies", "register"]
