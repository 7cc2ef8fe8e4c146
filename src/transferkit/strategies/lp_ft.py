"""LP-FT: linear probe first, then fine-tune everything from that head.

Kumar, Raghunathan, Jones, Ma and Liang (2022), "Fine-Tuning can Distort Pretrained Features
and Underperform Out-of-Distribution", ICLR. Their argument: a freshly initialised head sends
large, arbitrary gradients into the pretrained layers at the start of fine-tuning, and those
early updates bend the features the head was going to rely on. Fitting the head first (on
frozen features) means fine-tuning starts from a head that already agrees with the features,
so the shared layers move less and keep more of what made them transferable.

Stage 1 ``linear_probe``: shared layers frozen, heads fitted on features computed once
(``probe_epochs`` at ``probe_lr``). Stage 2 ``fine_tune``: every layer (less ``--freeze``)
trains from the probed head at ``lr`` for ``epochs``; the paper uses a small learning rate
here, so keep ``lr`` at or below the usual full fine-tuning rate.
"""

from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import freeze_matching, set_trainable


@register("lp_ft")
class LinearProbeThenFineTune(Strategy):
    summary = "linear probe on cached features, then full fine-tuning from that head (Kumar et al. 2022)"
    paper = "Kumar et al. 2022, Fine-Tuning can Distort Pretrained Features and Underperform OOD, ICLR"

    def train(self, model, trainer):
        # 1. Linear probe: only the heads learn, on features of the frozen shared layers.
        set_trainable(model, groups=[], heads=True)
        freeze_matching(model, self.config.freeze)
        trainer.fit_heads_on_features(model, stage="linear_probe")

        # 2. Fine-tune everything, starting from the probed head.
        set_trainable(model)
        freeze_matching(model, self.config.freeze)
        trainer.fit(model, self.param_groups(model, head_lr=self.config.lr), stage="fine_tune")  # one rate: the head is fitted
