"""Training engine on Hugging Face Accelerate (the only package that imports Accelerate)."""

from transferkit.engine.launch import is_main_process
from transferkit.engine.loop import Trainer

__all__ = ["Trainer", "is_main_process"]
