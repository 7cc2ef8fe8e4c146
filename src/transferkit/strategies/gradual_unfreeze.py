"""Gradual unfreezing: train the head first, then open one more layer group per epoch.

Howard and Ruder (2018), "Universal Language Model Fine-tuning for Text Classification"
(ULMFiT), ACL. Unfreezing everything at once lets the noisy gradients of a fresh head wash
over the pretrained layers (catastrophic forgetting). ULMFiT instead trains only the last
layer for one epoch, then unfreezes the next lower layer group and trains all unfrozen
groups for another epoch, and so on down to the input.

The schedule, for ``n`` layer groups and ``epochs`` epochs (epoch ``e`` counts from 0):

- epoch 0 trains the heads only; epoch ``e`` trains the heads and the top ``k(e)`` groups;
- enough epochs (``n <= epochs - 1``), the paper's rule: ``k(e) = min(e, n)``, one more
  group per epoch, and the epochs left once everything is open train everything;
- more groups than epochs: ``k(e) = ceil(e * n / (epochs - 1))``, groups open in evenly
  sized chunks (sizes differ by at most one) so the whole network trains in the last epoch;
- ``epochs == 1``: everything trains in that one epoch (same as ``full``).

Groups matched by ``--freeze`` stay frozen throughout. One optimizer serves the whole stage:
frozen parameters have no gradient, and AdamW skips those entirely (no update, no weight
decay, no moment state) until they are unfrozen.
"""

from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import freeze_matching, set_trainable


def groups_unfrozen(epoch: int, num_groups: int, epochs: int) -> int:
    """How many layer groups, counted from the top, train in ``epoch`` (0-based)."""
    if epochs <= 1:
        return num_groups
    if num_groups <= epochs - 1:
        return min(epoch, num_groups)
    return -(-epoch * num_groups // (epochs - 1))  # ceil, in integers


@register("gradual_unfreeze")
class GradualUnfreeze(Strategy):
    summary = "heads first, then one more layer group per epoch from the top (ULMFiT)"
    paper = "Howard & Ruder 2018, Universal Language Model Fine-tuning for Text Classification, ACL"

    def schedule(self, model, epochs: int) -> list[list[str]]:
        """The layer groups trained in each of ``epochs`` epochs (heads always train)."""
        groups = model.group_names()[:-1]  # input to output, without "heads"
        return [groups[len(groups) - groups_unfrozen(e, len(groups), epochs):] for e in range(epochs)]

    def train(self, model, trainer):
        schedule = self.schedule(model, trainer.config.epochs)  # the run's epochs, as its schedule sized them

        def unfreeze(epoch, _model):
            set_trainable(model, groups=schedule[epoch], heads=True)
            freeze_matching(model, self.config.freeze)

        unfreeze(0, model)
        # Every parameter is in a group from the start, frozen or not: the groups are fixed when the
        # stage starts, and the shared layers are frozen in epoch 0.
        heads = {id(p) for p in model.heads.parameters()}
        params = [{"params": [p for p in model.parameters() if id(p) not in heads], "lr": self.lr, "name": "shared"},
                  {"params": list(model.heads.parameters()), "lr": self.head_lr, "name": "heads"}]
        trainer.fit(model, params, stage="gradual_unfreeze", on_epoch_start=unfreeze)
