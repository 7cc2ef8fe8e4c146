"""``--format hf``: a text run as a stock transformers sequence classifier, exactly.

transferkit's text model is a BERT encoder (no pooler), a pooling step and its own head. Stock BERT
classifiers read ``tanh(dense(first token))`` and cannot reproduce that, so the same computation is
re-expressed in another stock class: first-token pooling + one Linear head -> XLM
(``_bert_to_xlm``); first-token pooling + Linear -> GELU -> Linear -> ELECTRA (``_bert_to_electra``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferkit._io import read_json, write_json
from transferkit.export.common import (
    ExportError,
    ExportResult,
    run_logits,
    sample_texts,
    save_tokenizer,
)
from transferkit.sources.transformers import HFTextBackbone, quiet_transformers


def export_hf(run, out: Path) -> ExportResult:
    encoder = _bert_encoder(run)
    cfg, head = encoder.config, run.model.heads[run.main_task]
    classes = run.classes[run.main_task]
    layers = [m for m in head if not isinstance(m, nn.Dropout)]
    if len(layers) == 1 and isinstance(layers[0], nn.Linear):
        model, notes = _bert_to_xlm(encoder, layers[0], classes)
    elif (len(layers) == 3 and isinstance(layers[0], nn.Linear) and isinstance(layers[1], nn.GELU)
          and getattr(layers[1], "approximate", "none") == "none" and isinstance(layers[2], nn.Linear)
          and layers[0].out_features <= cfg.hidden_size):
        model, notes = _bert_to_electra(encoder, layers[0], layers[2], classes)
    else:
        raise ExportError(f"`--format hf` maps a head that is one Linear layer, or Linear -> GELU -> Linear with at "
                          f"most {cfg.hidden_size} hidden units; this run's head is {head}. Use `--format onnx`.")
    model.eval()
    quiet_transformers()
    model.save_pretrained(out)
    save_tokenizer(run, out)
    if model.config.model_type == "xlm":  # XLM reads token_type_ids as word ids: the tokenizer must not send them
        config_path = out / "tokenizer_config.json"
        tok_config = read_json(config_path)
        tok_config["model_input_names"] = ["input_ids", "attention_mask"]
        write_json(config_path, tok_config)
    diff = _check_hf(run, out)
    notes.append("Transferkit's pooling and head are reproduced exactly by the stock class above; the check "
                 "reloads the export from disk and compares its logits with the run's.")
    return ExportResult("hf", out, [], type(model).__name__, diff, notes)


def _bert_encoder(run) -> nn.Module:
    """The run's transformers encoder, if it is a BERT encoder with absolute positions."""
    backbone = run.model.backbone
    if not isinstance(backbone, HFTextBackbone):
        raise ExportError(f"`--format hf`: the run's shared layers are {type(backbone).__name__}, not a transformers "
                          "encoder (a strategy may have wrapped them, e.g. LoRA adapters). Use `--format onnx`.")
    encoder = backbone.model
    cfg = encoder.config
    if cfg.model_type != "bert":
        raise ExportError(f"`--format hf` maps BERT encoders (model_type 'bert') exactly; this run's encoder is "
                          f"{cfg.model_type!r}. Use `--format onnx`.")
    if getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute"):
        raise ExportError(f"`--format hf` needs absolute position embeddings; this encoder uses "
                          f"{cfg.position_embedding_type!r}. Use `--format onnx`.")
    return encoder


def _id_labels(classes: list[str]) -> dict:
    return {"id2label": {i: c for i, c in enumerate(classes)}, "label2id": {c: i for i, c in enumerate(classes)},
            "num_labels": len(classes)}


def _bert_to_xlm(encoder: nn.Module, linear: nn.Linear, classes: list[str]):
    from transformers import XLMConfig, XLMForSequenceClassification

    cfg = encoder.config
    hidden, inner = cfg.hidden_size, cfg.intermediate_size
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    if inner > 4 * hidden:
        raise ExportError(f"`--format hf`: XLM's feed-forward is 4 x hidden = {4 * hidden} wide; this encoder's is "
                          f"{inner}. Use `--format onnx`.")
    if cfg.hidden_act not in ("gelu", "relu"):
        raise ExportError(f"`--format hf`: XLM supports GELU or ReLU feed-forwards; this encoder uses "
                          f"{cfg.hidden_act!r}. Use `--format onnx`.")
    xcfg = XLMConfig(
        vocab_size=cfg.vocab_size, emb_dim=hidden, n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings, layer_norm_eps=cfg.layer_norm_eps,
        gelu_activation=cfg.hidden_act == "gelu", dropout=cfg.hidden_dropout_prob,
        attention_dropout=cfg.attention_probs_dropout_prob, causal=False, is_encoder=True, n_langs=1,
        use_lang_emb=False, sinusoidal_embeddings=False, pad_token_id=pad,
        summary_type="first", summary_use_proj=True, summary_activation=None, summary_proj_to_labels=True,
        summary_first_dropout=0.0, summary_last_dropout=0.0, **_id_labels(classes))
    sd = {k: v.detach().float().cpu() for k, v in encoder.state_dict().items()}
    words = sd["embeddings.word_embeddings.weight"].clone()
    # XLM adds word_embedding[token_type_id] when token_type_ids are passed: a zero [PAD] row makes
    # zeros there a no-op. The [PAD] row itself only feeds padded positions, which attention masks out.
    words[pad] = 0.0
    new = {
        "transformer.embeddings.weight": words,
        # BERT adds token-type embedding 0 to every position of a single text: fold it into positions.
        "transformer.position_embeddings.weight": sd["embeddings.position_embeddings.weight"]
        + sd["embeddings.token_type_embeddings.weight"][0],
        "transformer.layer_norm_emb.weight": sd["embeddings.LayerNorm.weight"],
        "transformer.layer_norm_emb.bias": sd["embeddings.LayerNorm.bias"],
        "sequence_summary.summary.weight": linear.weight.detach().float().cpu(),
        "sequence_summary.summary.bias": _bias(linear),
    }
    for i in range(cfg.num_hidden_layers):
        new.update(_xlm_layer(sd, i, hidden, inner))
    model = XLMForSequenceClassification(xcfg)
    _load_exact(model, new)
    notes = ["BERT encoder + first-token pooling + Linear head, written as XLMForSequenceClassification "
             "(identical computation): token-type embedding 0 folded into the position embeddings, the "
             "tokenizer returns no token_type_ids, and the [PAD] word embedding (seen only at masked positions) "
             "is zero"
             + (f"; feed-forward zero-padded from {inner} to {4 * hidden} units" if inner < 4 * hidden else "") + "."]
    return model, notes


def _xlm_layer(sd: dict, i: int, hidden: int, inner: int) -> dict:
    """BERT layer ``i`` as XLM's tensors; the feed-forward is zero-padded to XLM's ``4 x hidden`` (GELU(0) = 0)."""
    p, q = f"encoder.layer.{i}.", "transformer."
    new = {}
    for xlm, bert in (("q_lin", "attention.self.query"), ("k_lin", "attention.self.key"),
                      ("v_lin", "attention.self.value"), ("out_lin", "attention.output.dense")):
        for w in ("weight", "bias"):
            new[f"{q}attentions.{i}.{xlm}.{w}"] = sd[f"{p}{bert}.{w}"]
    for w in ("weight", "bias"):
        new[f"{q}layer_norm1.{i}.{w}"] = sd[f"{p}attention.output.LayerNorm.{w}"]
        new[f"{q}layer_norm2.{i}.{w}"] = sd[f"{p}output.LayerNorm.{w}"]
    w1, b1 = torch.zeros(4 * hidden, hidden), torch.zeros(4 * hidden)
    w2 = torch.zeros(hidden, 4 * hidden)
    w1[:inner], b1[:inner] = sd[f"{p}intermediate.dense.weight"], sd[f"{p}intermediate.dense.bias"]
    w2[:, :inner] = sd[f"{p}output.dense.weight"]
    new.update({f"{q}ffns.{i}.lin1.weight": w1, f"{q}ffns.{i}.lin1.bias": b1,
                f"{q}ffns.{i}.lin2.weight": w2, f"{q}ffns.{i}.lin2.bias": sd[f"{p}output.dense.bias"]})
    return new


def _bert_to_electra(encoder: nn.Module, dense: nn.Linear, out_proj: nn.Linear, classes: list[str]):
    from transformers import ElectraConfig, ElectraForSequenceClassification

    cfg = encoder.config
    hidden = cfg.hidden_size
    ecfg = ElectraConfig(
        vocab_size=cfg.vocab_size, embedding_size=hidden, hidden_size=hidden, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size, hidden_act=cfg.hidden_act,
        hidden_dropout_prob=cfg.hidden_dropout_prob, attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, pad_token_id=cfg.pad_token_id or 0, classifier_dropout=0.0,
        **_id_labels(classes))
    new = {f"electra.{k}": v.detach().float().cpu() for k, v in encoder.state_dict().items()
           if not k.startswith("pooler.")}
    width = dense.out_features
    w1, b1 = torch.zeros(hidden, hidden), torch.zeros(hidden)
    w2 = torch.zeros(out_proj.out_features, hidden)
    w1[:width] = dense.weight.detach().float().cpu()
    if dense.bias is not None:
        b1[:width] = dense.bias.detach().float().cpu()
    w2[:, :width] = out_proj.weight.detach().float().cpu()
    new.update({"classifier.dense.weight": w1, "classifier.dense.bias": b1,
                "classifier.out_proj.weight": w2, "classifier.out_proj.bias": _bias(out_proj)})
    model = ElectraForSequenceClassification(ecfg)
    _load_exact(model, new)
    notes = ["BERT encoder + first-token pooling + Linear-GELU-Linear head, written as "
             "ElectraForSequenceClassification (identical computation)"
             + (f"; head's hidden layer zero-padded from {width} to {hidden} units" if width < hidden else "") + "."]
    return model, notes


def _bias(linear: nn.Linear) -> torch.Tensor:
    """The layer's bias as a float CPU tensor, zeros when it has none."""
    return linear.bias.detach().float().cpu() if linear.bias is not None else torch.zeros(linear.out_features)


def _load_exact(model: nn.Module, state: dict) -> None:
    expected = {k for k in model.state_dict() if not k.endswith("position_ids")}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ExportError(f"Internal mapping error for {type(model).__name__}: missing {missing[:3]}, "
                          f"unexpected {extra[:3]}. Please report this; use `--format onnx` meanwhile.")
    model.load_state_dict(state, strict=False)


@torch.inference_mode()
def _check_hf(run, out: Path) -> float:
    """Max abs difference of the logits: the export, reloaded from disk by stock transformers, against the run."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = sample_texts(run.source.tokenizer)
    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=False).eval()
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    theirs = model(**enc).logits.float()
    return float((theirs - run_logits(run, texts)).abs().max())
