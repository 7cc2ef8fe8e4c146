"""The strategy interface: how a target model is trained, as a short readable recipe.

A strategy decides which parameters train, with which learning rates, in which stages, and
with which penalty; the engine's ``Trainer`` runs each stage. A new strategy is one file:

    @STRATEGIES.register("my_method")
    class MyMethod(Strategy):
        summary = "one line for `transferkit strategies`"

        def train(self, model, trainer):
            set_trainable(model)                       # everything trains
            trainer.fit(model, self.param_groups(model), stage="my_method")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import nn

from transferkit._registry import Registry
from transferkit.config import FitConfig
from transferkit.surgery.target import TargetModel
from transferkit.surgery.freezing import freeze_matching, set_trainable

if TYPE_CHECKING:  # the Trainer runs a strategy; a strategy never builds one
    from transferkit.engine.loop import Trainer


class Strategy:
    """Base class. Subclasses set ``summary`` (and ``paper``) and implement ``train``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    #: The shared layers' peak learning rate when ``--lr`` is not given.
    default_lr: ClassVar[float] = 1e-4
    #: Whether the heads are fitted on frozen features first (``probe_heads_first``): the next stage
    #: then trains them at the shared layers' rate, unless ``--head-lr`` is given.
    probe_first: ClassVar[bool] = False
    #: The data modalities the strategy takes (``None``: every one).
    modalities: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, config: FitConfig) -> None:
        self.config = config

    def prepare(self, model: TargetModel) -> TargetModel:
        """Changes the model's structure before training (e.g. LoRA adapters); default: none."""
        return model

    def train(self, model: TargetModel, trainer: Trainer) -> None:
        raise NotImplementedError

    @classmethod
    def takes(cls, modality: str) -> bool:
        """Whether the strategy trains on ``modality`` data."""
        return cls.modalities is None or modality in cls.modalities

    @property
    def lr(self) -> float:
        """The shared layers' peak learning rate: ``--lr``, else the strategy's ``default_lr``."""
        return self.config.lr or self.default_lr

    @property
    def head_lr(self) -> float:
        """The heads' peak learning rate: ``--head-lr``; else ``lr`` for heads that arrive probed
        (``probe_first``: one rate, as in LP-FT), and ``HEAD_LR`` or ``lr`` if higher for fresh ones."""
        return self.config.head_lr or (self.lr if self.probe_first else max(HEAD_LR, self.lr))

    def probe_heads_first(self, model: TargetModel, trainer: Trainer) -> None:
        """Stage ``linear_probe``: the heads fitted on frozen shared-layer features, before a stage trains more.

        LP-FT's first step (Kumar et al. 2022): the next stage starts from a head that agrees with
        the features. Convex, fitted on the train split (its L2 chosen on validation, or by
        cross-validation over train + val when validation is small); not refitted on validation,
        which the next stage selects its epoch on.
        Follow it with ``trainer.fit(..., keep_norm_stats=True)`` so BatchNorm keeps the statistics
        the features were computed with.
        """
        set_trainable(model, groups=[], heads=True)
        freeze_matching(model, self.config.freeze)
        trainer.fit_heads_on_features(model, stage="linear_probe", refit=False)

    def shared_layers(self, model: TargetModel) -> nn.Module:
        """The trained shared layers in the source's own structure, for reuse as a ``run:`` source."""
        return model.backbone

    def wise_ft_keys(self, backbone_state: dict) -> list[str]:
        """Backbone tensors WiSE-FT interpolates; the others keep their fine-tuned values."""
        return list(backbone_state)

    def param_groups(self, model: TargetModel, lr: float | None = None, head_lr: float | None = None) -> list[dict]:
        """AdamW groups of the trainable parameters: the shared layers at ``lr`` (default ``self.lr``),
        the new heads at ``head_lr`` (default ``self.head_lr``).

        A fresh head needs a larger step than layers that arrive trained (the discriminative rates
        of ULMFiT/fastai, and the usual plain PyTorch recipe of 1e-4 for the backbone and 1e-3
        for the head): on the demo digits, ``full`` at 5 epochs went from 0.83 / 0.78 (head at
        1e-4, seeds 0 / 1) to 0.85 / 0.86 with the head at 1e-3.
        """
        lr = lr or self.lr
        head_lr = head_lr or self.head_lr
        heads = {id(p) for p in model.heads.parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        if head_lr == lr:
            return [{"params": trainable, "lr": lr}]
        groups = [{"params": [p for p in trainable if id(p) not in heads], "lr": lr, "name": "shared"},
                  {"params": [p for p in trainable if id(p) in heads], "lr": head_lr, "name": "heads"}]
        return [g for g in groups if g["params"]]


#: The new heads' learning rate when ``--head-lr`` is not given (``lr`` when that is higher).
HEAD_LR = 1e-3

STRATEGIES: Registry[type[Strategy]] = Registry("strategy", help_command="strategies",
                                                plugins=("transferkit.strategies",))


def register(name: str):
    """Registers a ``Strategy`` subclass under ``name`` and sets its ``name``."""

    def decorator(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        return STRATEGIES.register(name)(cls)

    return decorator
