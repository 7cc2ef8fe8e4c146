"""One small registry used for sources, strategies, scorers and metrics."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from transferkit.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects, with did-you-mean errors for unknown names.

    Args:
        kind: What is registered, used in messages ("source", "strategy", ...).
        help_command: The CLI command that lists the registered names.
    """

    def __init__(self, kind: str, help_command: str | None = None) -> None:
        self.kind = kind
        self.help_command = help_command
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers an object under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Returns the object registered as ``name`` or raises ``UnknownNameError``."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._items), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listing = f" See `transferkit {self.help_command}`." if self.help_command else (
            f" Known: {', '.join(sorted(self._items))}."
        )
        return f"Unknown {self.kind} {name!r}.{hint}{listing}"

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, in registration order."""
        return [n for n in self._items if fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
