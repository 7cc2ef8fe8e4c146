"""LP-FT: linear probe first, then fine-tune everything from that head.

Kumar, Raghunathan, Jones, Ma and Liang (2022), "Fine-Tuning can Distort Pretrained Features
and Underperform Out-of-Distribution", ICLR. Their argument: a freshly initialised head sends
large, arbitrary gradients into the pretrained layers at the start of fine-tuning, and those
early updates bend the features the head was going to rely on. Fitting the head first (on
frozen features) means fine-tuning starts from a head that already agrees with the features,
so the shared layers move less and keep more of what made them transferable.

Stage 1 ``linear_probe``: shared layers frozen, heads fitted on features computed once
(``Strategy.probe_heads_first``). Stage 2 ``fine_tune``: every layer (less ``--freeze``)
trains from the probed head at ``lr`` for ``epochs``; the paper uses a small learning rate
here, so keep ``lr`` at or below the usual full fine-tuning rate. BatchNorm layers keep the
running statistics the probe's features were computed with (``keep_norm_stats``): with batch
statistics (small batches, a target unlike the source's data) the features shift under the
fitted head at the first step. On the 3-colour toy of ``tests/test_defaults_learn.py`` (a
BatchNorm EfficientNet, batch 8) the fine-tune stage's loss jumped from the probe's 0.01 to 2.3
and test accuracy ended at 0.53 with batch statistics; 0.97 with the running ones.
"""

from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import freeze_matching, set_trainable


@register("lp_ft")
class LinearProbeThenFineTune(Strategy):
    summary = "linear probe on cached features, then full fine-tuning from that head (Kumar et al. 2022)"
    paper = "Kumar et al. 2022, Fine-Tuning can Distort Pretrained Features and Underperform OOD, ICLR"
    probe_first = True

    def train(self, model, trainer):
        # 1. Linear probe: only the heads learn, on features of the frozen shared layers.
        self.probe_heads_first(model, trainer)

        # 2. Fine-tune everything, starting from the probed head.
        set_trainable(model)
        freeze_matching(model, self.config.freeze)
        trainer.fit(model, self.param_groups(model), stage="fine_tune", keep_norm_stats=True)
