"""transferkit: choose a pretrained source, adapt it to your task, train, and evaluate honestly."""

from transferkit._version import __version__

__all__ = ["FitConfig", "Run", "TaskData", "fit", "load_run", "load_source", "load_task_data", "__version__"]


def __getattr__(name: str):
    # Lazy: `import transferkit` (and the CLI's start) must not pay for torch and friends.
    if name in ("fit", "load_run", "Run"):
        from transferkit import pipeline

        return getattr(pipeline, name)
    if name == "load_source":
        from transferkit.sources import load_source

        return load_source
    if name in ("load_task_data", "TaskData"):
        from transferkit import data

        return getattr(data, name)
    if name == "FitConfig":
        from transferkit.config import FitConfig

        return FitConfig
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
