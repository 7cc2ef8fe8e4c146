"""Full fine-tuning: every parameter trains from the source initialisation at one learning rate."""

from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import freeze_matching, set_trainable


@register("full")
class Full(Strategy):
    summary = "all layers fine-tuned at one learning rate (--freeze keeps chosen groups fixed)"

    def train(self, model, trainer):
        set_trainable(model)
        freeze_matching(model, self.config.freeze)
        trainer.fit(model, self.param_groups(model), stage="full")
