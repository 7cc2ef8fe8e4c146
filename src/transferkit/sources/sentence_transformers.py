"""Sources from sentence-transformers: ``st:<hub id or local directory>``.

The library reads the model's module list (transformer, pooling, optional normalisation);
transferkit keeps the transformer and its pooling mode as a backbone that fine-tunes like any
``hf:`` encoder. The final normalisation layer, if any, is dropped: a trainable head
works better on unnormalised pooled features.
"""

from __future__ import annotations

from transferkit.sources.base import SCHEMES, SourceModel
from transferkit.sources.transformers import quiet_transformers, text_source


def load_st(name: str, pretrained: bool) -> SourceModel:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    quiet_transformers()
    st = SentenceTransformer(name, device="cpu")
    transformer, pooling = st[0], st[1]
    # sentence-transformers >= 6 names the mode; older releases set one flag per mode.
    cls_token = getattr(pooling, "pooling_mode", None) == "cls" or getattr(pooling, "pooling_mode_cls_token", False)
    mode = "cls" if cls_token else "mean"
    model = transformer.auto_model
    if not pretrained:
        model = AutoModel.from_config(model.config)
    source = text_source(model, transformer.tokenizer, pooling=mode, max_length=st.max_seq_length, name=name)
    source.id = f"st:{name}"
    source.weights = f"sentence-transformers {name!r}" if pretrained else "random init"
    return source


SCHEMES.register("st")(load_st)
