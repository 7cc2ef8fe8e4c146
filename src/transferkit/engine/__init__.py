"""Training engine on Hugging Face Accelerate (the only package that imports Accelerate)."""

from transferkit.engine.loop import Trainer

__all__ = ["Trainer"]
