"""One small registry used for sources, strategies, scorers and metrics.

Plugins register themselves when their module is imported. A registry that names its
``plugins`` imports them the first time it is read, so every package discovers its plugins the
same way and ``import transferkit`` stays light: each name in ``plugins`` is a package, whose
modules are all imported, or a module.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from transferkit.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects, with did-you-mean errors for unknown names.

    Args:
        kind: What is registered, used in messages ("source", "strategy", ...).
        help_command: The CLI command that lists the registered names.
        plugins: Packages (every module in them) and modules that register into this registry,
            imported on first read. A plugin that sits above the registry's package in the
            layering (the ``run:`` scheme, registered by ``transferkit.runs``) is named here
            instead of being imported by it.
    """

    def __init__(self, kind: str, help_command: str | None = None, plugins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.help_command = help_command
        self._items: dict[str, T] = {}
        self._plugins = plugins
        self._discovered = not plugins

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers an object under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def discover(self) -> None:
        """Imports the plugins once; they register as they load."""
        if self._discovered:
            return
        self._discovered = True  # first: a plugin that reads the registry while loading sees what is there
        for name in self._plugins:
            module = importlib.import_module(name)
            for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
                importlib.import_module(f"{name}.{info.name}")

    def get(self, name: str) -> T:
        """Returns the object registered as ``name`` or raises ``UnknownNameError``."""
        self.discover()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        self.discover()
        close = difflib.get_close_matches(name, list(self._items), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listing = f" See `transferkit {self.help_command}`." if self.help_command else (
            f" Known: {', '.join(sorted(self._items))}."
        )
        return f"Unknown {self.kind} {name!r}.{hint}{listing}"

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, in registration order."""
        self.discover()
        return [n for n in self._items if fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return iter(list(self._items))

    def __len__(self) -> int:
        self.discover()
        return len(self._items)
