"""L2-SP: pull the shared layers toward their pretrained values, not toward zero.

Li, Grandvalet and Davoine (2018), "Explicit Inductive Bias for Transfer Learning with
Convolutional Networks", ICML. Plain weight decay pulls every weight toward 0, which for a
pretrained network means toward forgetting. L2-SP uses the source weights ``w0`` as the
reference point (the "starting point", SP) instead:

    penalty(w) = alpha/2 * ||w_shared - w0_shared||^2 + beta/2 * ||w_heads||^2

where the first sum runs over the shared layers (snapshot taken when training starts) and
the second is ordinary L2 on the new heads, which have no pretrained value to return to.
The penalty replaces weight decay, so AdamW's decoupled weight decay is 0 for every group
in this strategy. ``alpha = --l2sp-alpha``, ``beta = --l2sp-beta``; parameters frozen by
``--freeze`` are left out of both sums (they cannot move).

The snapshot is taken when ``train`` starts, before the engine loads any checkpoint, so a
resumed run keeps the source as its anchor. The penalty uses multi-tensor ops (one call per
op for all tensors); the differences ``w - w0`` are its only parameter-sized temporaries.
"""

import torch

from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import freeze_matching, set_trainable


class L2SPPenalty:
    """``alpha/2 ||w - w0||^2`` over ``shared`` (``w0`` = their values now) + ``beta/2 ||w||^2`` over ``heads``."""

    def __init__(self, shared: list[torch.nn.Parameter], heads: list[torch.nn.Parameter],
                 alpha: float, beta: float) -> None:
        self.shared, self.heads, self.alpha, self.beta = shared, heads, alpha, beta
        self.source = [p.detach().clone() for p in shared]

    def __call__(self, model=None) -> torch.Tensor:
        penalty = torch.zeros(())
        if self.shared and self.alpha:
            if self.source[0].device != self.shared[0].device:  # the engine moved the model after the snapshot
                self.source = [w0.to(p.device) for w0, p in zip(self.source, self.shared)]
            drift = torch._foreach_norm(torch._foreach_sub(self.shared, self.source))
            penalty = penalty.to(self.shared[0].device) + self.alpha / 2 * torch.stack(drift).square().sum()
        if self.heads and self.beta:
            norms = torch._foreach_norm(self.heads)
            penalty = penalty.to(self.heads[0].device) + self.beta / 2 * torch.stack(norms).square().sum()
        return penalty


@register("l2sp")
class L2SP(Strategy):
    summary = "all layers train; penalty alpha/2 ||w - w_source||^2 on shared layers + beta/2 ||w||^2 on heads"
    paper = "Li, Grandvalet & Davoine 2018, Explicit Inductive Bias for Transfer Learning with CNNs, ICML"

    def penalty(self, model) -> L2SPPenalty:
        """The penalty for ``model``'s currently trainable parameters, anchored at their current values."""
        heads = {id(p) for p in model.heads.parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        return L2SPPenalty([p for p in trainable if id(p) not in heads], [p for p in trainable if id(p) in heads],
                           self.config.l2sp_alpha, self.config.l2sp_beta)

    def train(self, model, trainer):
        set_trainable(model)
        freeze_matching(model, self.config.freeze)
        groups = [{**g, "weight_decay": 0.0} for g in self.param_groups(model)]
        trainer.fit(model, groups, stage="l2sp", penalty=self.penalty(model))
