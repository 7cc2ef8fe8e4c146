"""BitFit: fine-tune only the bias terms of the shared layers (plus the new heads).

Ben Zaken, Ravfogel and Goldberg (2022), "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL. Training only the biases of a pretrained
BERT (about 0.1% of its weights) plus the classifier comes close to full fine-tuning on GLUE:
fine-tuning mostly exposes knowledge the model already has rather than learning new features.

What counts as a bias: every shared-layer parameter whose own name (the last dotted part)
contains ``bias`` -- ``bias`` of linear, convolution and normalisation layers (LayerNorm and
BatchNorm shifts, as in the paper's LayerNorm terms), ``in_proj_bias`` of attention and
``bias_ih_l0`` / ``bias_hh_l0`` of recurrent layers. Networks built from bias-free
convolutions followed by BatchNorm thus train their BatchNorm shifts (and those BatchNorm
layers, no longer fully frozen, update their running statistics). The heads train in full;
``--freeze`` keeps matching parameters frozen. A model without any bias is an error.
"""

from transferkit.errors import ConfigError
from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import freeze_matching, set_trainable


def is_bias(name: str) -> bool:
    """True for parameter names whose last part contains ``bias``."""
    return "bias" in name.rsplit(".", 1)[-1]


@register("bitfit")
class BitFit(Strategy):
    summary = "only the shared layers' bias terms and the heads train (Ben Zaken et al. 2022)"
    paper = "Ben Zaken, Ravfogel & Goldberg 2022, BitFit: Simple Parameter-efficient Fine-tuning, ACL"

    def train(self, model, trainer):
        set_trainable(model, groups=[], heads=True)
        biases = [p for name, p in model.backbone.named_parameters() if is_bias(name)]
        if not biases:
            raise ConfigError("Strategy 'bitfit' trains bias terms, but the shared layers of this model have none. "
                              "Use 'lora', 'layerwise_lr' or 'full' instead.")
        for p in biases:
            p.requires_grad_(True)
        freeze_matching(model, self.config.freeze)
        trainer.fit(model, self.param_groups(model), stage="bitfit")
