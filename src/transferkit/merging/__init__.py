"""Weighted averages of model weights, as pure functions on state dicts.

Two ideas from Wortsman et al. (2022) live here:

* **WiSE-FT** ("Robust fine-tuning of zero-shot models", CVPR 2022). Fine-tuning a large
  pretrained model can cost robustness to distribution shift. Averaging the weights of the
  zero-shot (pretrained) model and of its fine-tuned copy, with a mixing coefficient ``alpha``
  chosen on held-out data, often keeps most of the fine-tuned accuracy and recovers much of
  the robustness, at no extra inference cost. See ``interpolate``, ``wise_ft`` and
  ``wise_ft_per_group`` (``wise_ft.py``).
* **Model soups** ("Model soups: averaging weights of multiple fine-tuned models improves
  accuracy without increasing inference time", ICML 2022). Several models fine-tuned from the
  same starting point with different hyperparameters can be averaged into one model that is
  often better than the best single one. The *uniform* soup averages all of them; the *greedy*
  soup visits them from best to worst and keeps each one only if the averaged model does not
  get worse on held-out data. See ``uniform_soup`` and ``greedy_soup``.

``mix_init`` reuses the same arithmetic for a mixed initialisation between transferred and
freshly initialised weights.

Averaging only makes sense for models that share an architecture and (for good results) a
common pretrained ancestor; the functions check that keys, shapes and dtypes agree.

Conventions for every function here:

* Inputs are never modified; outputs are new tensors that share no memory with the inputs.
* Only floating-point tensors are averaged. Other tensors (integer buffers such as BatchNorm's
  ``num_batches_tracked``) cannot be meaningfully averaged and are copied from one input, as
  each function documents.
* The output dtype equals the input dtype. Half-precision tensors (float16, bfloat16, ...) are
  averaged in float32 and rounded back once.
"""

from transferkit.merging.common import DEFAULT_ALPHAS, check_compatible
from transferkit.merging.interpolation import interpolate, mix_init
from transferkit.merging.soups import GreedySoupResult, greedy_soup, uniform_soup
from transferkit.merging.wise_ft import WiseFTGroupResult, WiseFTResult, wise_ft, wise_ft_per_group

__all__ = [
    "DEFAULT_ALPHAS",
    "GreedySoupResult",
    "WiseFTGroupResult",
    "WiseFTResult",
    "check_compatible",
    "greedy_soup",
    "interpolate",
    "mix_init",
    "uniform_soup",
    "wise_ft",
    "wise_ft_per_group",
]
