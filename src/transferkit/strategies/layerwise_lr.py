"""Layer-wise learning rates: the closer to the input, the smaller the step.

Discriminative fine-tuning from Howard and Ruder (2018), "Universal Language Model
Fine-tuning for Text Classification" (ULMFiT), ACL: lower layers hold general features
that need little change, higher layers hold task-specific ones that need more, so each layer
group gets its own learning rate, shrinking by a constant factor per group going down. The
same rule, as "layer-wise learning-rate decay", is standard when fine-tuning ELECTRA (Clark
et al. 2020, ICLR) and BEiT (Bao et al. 2022, ICLR).

Rule: the new heads train at ``head_lr`` (they arrive untrained); the k-th layer group counted
from the top (k = 1 for the group just below the heads, k = n for the input group) trains at
``lr * lr_decay**(k - 1)``.
Trainable parameters outside every layer group, if a source leaves any, get the input
group's (smallest) rate. ``--freeze`` is applied first; frozen parameters are left out.
"""

from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import freeze_matching, set_trainable


@register("layerwise_lr")
class LayerwiseLR(Strategy):
    summary = "all layers train, lr * lr_decay**(k-1) for the k-th group below the heads (heads at head_lr)"
    paper = "Howard & Ruder 2018, ULMFiT (discriminative fine-tuning), ACL; Clark et al. 2020, ELECTRA, ICLR"

    def param_groups(self, model, lr=None, head_lr=None):
        lr, head_lr, decay = lr or self.lr, head_lr or self.head_lr, self.config.lr_decay
        by_group = model.params_by_group()  # input to output, heads last
        n = len(by_group) - 1
        groups, seen = [], set()
        for depth, (name, params) in enumerate(reversed(by_group)):  # depth 0 = heads
            seen.update(map(id, params))
            trainable = [p for p in params if p.requires_grad]
            if trainable:
                groups.append({"params": trainable, "lr": head_lr if depth == 0 else lr * decay**(depth - 1),
                               "name": name})
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
        if others:
            groups.append({"params": others, "lr": lr * decay**(n - 1), "name": "other"})
        return groups

    def train(self, model, trainer):
        set_trainable(model)
        freeze_matching(model, self.config.freeze)
        trainer.fit(model, self.param_groups(model), stage="layerwise_lr")
