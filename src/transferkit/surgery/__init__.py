"""Model surgery: shared layers + task-specific heads, freezing, and the transfer map."""

from transferkit.surgery.freezing import count_trainable, freeze_matching, set_trainable
from transferkit.surgery.heads import make_head
from transferkit.surgery.target import DEFAULT_TASK, TargetModel, build_target_model, summarize_transfer_map, transfer_map

__all__ = [
    "DEFAULT_TASK",
    "TargetModel",
    "build_target_model",
    "count_trainable",
    "freeze_matching",
    "make_head",
    "set_trainable",
    "summarize_transfer_map",
    "transfer_map",
]
