"""BitFit: fine-tune only the bias terms of the shared layers (plus the new heads).

Ben Zaken, Ravfogel and Goldberg (2022), "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL. Training only the biases of a pretrained
BERT (about 0.1% of its weights) plus the classifier comes close to full fine-tuning on GLUE:
fine-tuning mostly exposes knowledge the model already has rather than learning new features.

What counts as a bias: every shared-layer parameter whose own name (the last dotted part)
contains ``bias`` -- ``bias`` of linear, convolution and normalisation layers (LayerNorm and
BatchNorm shifts, as in the paper's LayerNorm terms), ``in_proj_bias`` of attention and
``bias_ih_l0`` / ``bias_hh_l0`` of recurrent layers. Networks built from bias-free
convolutions followed by BatchNorm thus train their BatchNorm shifts (their running statistics
stay as the probe saw them, see below, unless ``--bn-stats update``). The heads train in full;
``--freeze`` keeps matching parameters frozen. A model without any bias is an error.

Two stages. The paper trains the biases and a fresh classifier together for thousands of steps
at up to 1e-3; in the few hundred a small target gives, the fresh head is what lags: on the
embedded digits (MobileNetV2, 320 train images, 100 steps) that recipe ended at 0.80 test
accuracy (0.73 with the head at 1e-2) against 0.90 for a linear probe. So, as in LP-FT (Kumar
et al. 2022), the heads are first fitted on frozen features (``Strategy.probe_heads_first``),
then ``bitfit`` trains the biases and heads from there at one rate (``--head-lr`` overrides
the heads'), BatchNorm layers keeping the running statistics the probe's features were
computed with (their shifts still train). Demo digits, seed 0: 0.94.
"""

from transferkit.errors import ConfigError
from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import freeze_matching


def is_bias(name: str) -> bool:
    """True for parameter names whose last part contains ``bias``."""
    return "bias" in name.rsplit(".", 1)[-1]


@register("bitfit")
class BitFit(Strategy):
    summary = "only the shared layers' bias terms and the heads train (Ben Zaken et al. 2022)"
    paper = "Ben Zaken, Ravfogel & Goldberg 2022, BitFit: Simple Parameter-efficient Fine-tuning, ACL"
    default_lr = 1e-3  # the top of the paper's grid {1e-4, 4e-4, 7e-4, 1e-3}: few parameters move, in few steps
    probe_first = True

    def train(self, model, trainer):
        self.probe_heads_first(model, trainer)
        biases = [p for name, p in model.backbone.named_parameters() if is_bias(name)]
        if not biases:
            raise ConfigError("Strategy 'bitfit' trains bias terms, but the shared layers of this model have none. "
                              "Use 'lora', 'layerwise_lr' or 'full' instead.")
        for p in biases:
            p.requires_grad_(True)
        freeze_matching(model, self.config.freeze)
        trainer.fit(model, self.param_groups(model), stage="bitfit", keep_norm_stats=True)
