"""The package version (one place; the package facade and run configs read it)."""

__version__ = "0.1.0"
