"""Training engine on Hugging Face Accelerate (the only package that imports Accelerate).

``Trainer`` (``engine/loop.py``) loads on first use, so importing a light part of the engine
(``distributed``, ``extract``, ``checkpoint``) does not load the training loop.
"""

from transferkit.engine.launch import is_main_process

__all__ = ["Trainer", "is_main_process"]


def __getattr__(name: str):
    if name == "Trainer":
        from transferkit.engine.loop import Trainer

        return Trainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
