"""Linear probe: freeze the shared layers, fit only the new head on their features.

The shared layers run once per example (features cached for the whole stage); the head is
trained on those features. The baseline every transfer method should beat cheaply (see e.g.
Kornblith, Shlens, Le 2019, "Do Better ImageNet Models Transfer Better?", CVPR).
"""

from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import set_trainable


@register("linear_probe")
class LinearProbe(Strategy):
    summary = "shared layers frozen; head trained on features computed once"

    def train(self, model, trainer):
        set_trainable(model, groups=[], heads=True)
        trainer.fit_heads_on_features(model, stage="linear_probe")
