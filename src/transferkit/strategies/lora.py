"""LoRA: freeze the shared layers and learn a low-rank update for chosen weight matrices.

Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang and Chen (2022), "LoRA: Low-Rank Adaptation of
Large Language Models", ICLR. The change a task needs in a pretrained weight matrix has low
intrinsic rank, so instead of updating ``W`` (out x in) LoRA learns ``W + (alpha/r) B A`` with
``A`` (r x in, random init) and ``B`` (out x r, zero init, so training starts exactly at the
source model). Only ``A``, ``B`` and the new heads train.

Implemented with PEFT (``inject_adapter_in_model`` on the backbone, in place, so the model
stays a plain ``TargetModel`` and its state dict holds base weights, adapters and heads).
Which layers get an adapter:

- transformers sources: PEFT's default targets for the model type, as in the paper (BERT:
  the attention ``query`` and ``value`` projections); unknown model types fall back to:
- any other source: every ``nn.Linear`` and every ``nn.Conv2d`` with ``groups == 1`` and
  ``dilation == 1`` (PEFT's conv adapter ignores dilation and needs the rank divisible by
  the groups, so depthwise/grouped convolutions are skipped; they hold few weights anyway).

Trainable parameters: ``r * (in + out)`` per adapted linear layer, ``r * (in * kh * kw + out)``
per adapted convolution, plus the heads. ``--lora-r``, ``--lora-alpha``, ``--lora-dropout``.
``merged_backbone`` folds the adapters into the weights (``W + (alpha/r) B A``), giving back
the source's plain architecture, e.g. to use a LoRA run as the source of another transfer.
"""

import copy

from torch import nn

from transferkit.errors import ConfigError
from transferkit.sources.base import LayerGroup
from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import freeze_matching, set_trainable


def lora_targets(backbone: nn.Module) -> list[str]:
    """Names (inside ``backbone``) of the modules that get a LoRA adapter."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = next((m.config.model_type for m in backbone.modules()
                       if hasattr(getattr(m, "config", None), "model_type")), None)
    if model_type in DEFAULTS:
        suffixes = set(DEFAULTS[model_type])
        names = [n for n, m in backbone.named_modules() if n.rsplit(".", 1)[-1] in suffixes and hasattr(m, "weight")]
        if names:
            return names
    return [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear) or (
        isinstance(m, nn.Conv2d) and m.groups == 1 and m.dilation == (1, 1))]


def lora_parameter_count(module: nn.Module, r: int) -> int:
    """Parameters of one rank-``r`` adapter on ``module`` (``A`` and ``B``)."""
    if isinstance(module, nn.Conv2d):
        return r * (module.in_channels * module.kernel_size[0] * module.kernel_size[1] + module.out_channels)
    return r * sum(module.weight.shape[:2])  # nn.Linear (out, in) and transformers' Conv1D (in, out)


@register("lora")
class LoRA(Strategy):
    summary = "shared layers frozen; low-rank adapters on linear/conv weights + heads train (Hu et al. 2022)"
    paper = "Hu et al. 2022, LoRA: Low-Rank Adaptation of Large Language Models, ICLR"
    # The paper's 4e-4-5e-4 (RoBERTa, GLUE) ran for 30-80 epochs; in a few hundred steps the
    # adapters need a larger step, as in PEFT's own examples (3e-4 to 5e-3).
    default_lr = 1e-3
    probe_first = True

    def prepare(self, model):
        """Adds the adapters (idempotent: a model that has them already is returned as is)."""
        from peft import LoraConfig, inject_adapter_in_model

        if any("lora_A" in name for name, _ in model.backbone.named_parameters()):
            return model
        targets = lora_targets(model.backbone)
        if not targets:
            kinds = sorted({type(m).__name__ for m in model.backbone.modules()
                            if any(True for _ in m.parameters(recurse=False))})
            raise ConfigError(
                f"Strategy 'lora' found no layer to adapt in the shared layers: it adds low-rank updates to "
                f"nn.Linear and nn.Conv2d (groups=1) layers, and this model's layers are {', '.join(kinds)}. "
                "Use 'bitfit', 'layerwise_lr' or 'full' instead.")
        modules = dict(model.backbone.named_modules())
        self.adapter_parameters_ = sum(lora_parameter_count(modules[t], self.config.lora_r) for t in targets)
        cfg = LoraConfig(r=self.config.lora_r, lora_alpha=self.config.lora_alpha,
                         lora_dropout=self.config.lora_dropout, target_modules=targets, bias="none")
        before = {n for n, _ in model.named_parameters()}
        inject_adapter_in_model(cfg, model.backbone)
        model.layer_groups = _renamed_groups(model.layer_groups, before, [n for n, _ in model.named_parameters()])
        return model

    def shared_layers(self, model):
        return merged_backbone(model.backbone)

    def wise_ft_keys(self, backbone_state):
        # B starts at zero, so scaling B by alpha (A kept fine-tuned) gives exactly
        # (1 - alpha) * W_source + alpha * W_finetuned for every adapted weight.
        return [k for k in backbone_state if "lora_A" not in k]

    def train(self, model, trainer):
        self.probe_heads_first(model, trainer)  # the adapters start at zero: these are the source's features
        set_trainable(model, groups=[], heads=True)
        for name, p in model.backbone.named_parameters():
            p.requires_grad_("lora_" in name)
        freeze_matching(model, self.config.freeze)
        trainer.fit(model, self.param_groups(model), stage="lora", keep_norm_stats=True)


def merged_backbone(backbone: nn.Module) -> nn.Module:
    """A copy of ``backbone`` with every adapter merged into its base layer (original structure and names)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(backbone)
    for name, module in list(merged.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent), child, module.get_base_layer())
    if hasattr(merged, "peft_config"):
        del merged.peft_config
    return merged


def _renamed_groups(groups: list[LayerGroup], before: set[str], after: list[str]) -> list[LayerGroup]:
    """Layer groups after injection: ``x.weight`` became ``x.base_layer.weight``, plus ``x.lora_*``."""
    group_of = {p: g.name for g in groups for p in g.params}
    params: dict[str, list[str]] = {g.name: [] for g in groups}
    for name in after:
        if name in before:
            original = name
        elif ".lora_" in name:
            original = name.split(".lora_")[0] + ".weight"
        else:
            original = name.replace(".base_layer.", ".")
        if original in group_of:
            params[group_of[original]].append(name)
    return [LayerGroup(g.name, params[g.name]) for g in groups]
