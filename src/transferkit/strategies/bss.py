"""BSS: fine-tune everything while shrinking the batch features' smallest singular values.

Chen, Wang, Fu, Long and Wang (2019), "Catastrophic Forgetting Meets Negative Transfer:
Batch Spectral Shrinkage for Safe Transfer Learning", NeurIPS. Looking at the singular
values of a batch's feature matrix (batch x feature_dim), the spectral components with small
singular values are the ones that transfer badly: fine-tuning on a small target set keeps
them and they carry source-specific noise (negative transfer). BSS adds

    eta * sum_{i=1..k} sigma_{-i}^2        (the k smallest singular values of the batch features)

to the loss of ordinary full fine-tuning. The paper's defaults, used here, are ``k = 1`` and
``eta = 0.001`` (class attributes; they are not yet ``FitConfig`` options).

The engine's ``penalty(model)`` hook is called right after the training forward pass of each
batch, so the features are captured with a forward hook on the shared layers and the penalty
reads the latest ones (validation passes never reach the penalty).
"""

import torch

from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import freeze_matching, set_trainable


class BatchSpectralShrinkage:
    """Keeps the shared layers' latest output; calling it gives ``eta * sum of k smallest sigma^2``."""

    def __init__(self, eta: float = 1e-3, k: int = 1) -> None:
        self.eta, self.k, self.features = eta, k, None

    def capture(self, module, inputs, output) -> None:
        self.features = output

    def __call__(self, model=None) -> torch.Tensor:
        sigma = torch.linalg.svdvals(self.features.float())  # descending
        return self.eta * sigma[-self.k:].square().sum()


@register("bss")
class BSS(Strategy):
    summary = "full fine-tuning + penalty on the smallest singular values of batch features (Chen et al. 2019)"
    paper = "Chen et al. 2019, Catastrophic Forgetting Meets Negative Transfer: Batch Spectral Shrinkage, NeurIPS"
    eta, k = 1e-3, 1

    def train(self, model, trainer):
        set_trainable(model)
        freeze_matching(model, self.config.freeze)
        bss = BatchSpectralShrinkage(self.eta, self.k)
        hook = model.backbone.register_forward_hook(bss.capture)
        try:
            trainer.fit(model, self.param_groups(model), stage="bss", penalty=bss)
        finally:
            hook.remove()
