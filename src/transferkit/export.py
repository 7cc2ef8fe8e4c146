"""Exports a run directory to formats the ecosystem loads without transferkit.

``export_run(run_dir, format, out)`` (CLI: ``transferkit export RUN --format F --out DIR``):

- ``hf``: text runs -> a directory for ``AutoTokenizer`` / ``AutoModelForSequenceClassification``
  (stock transformers classes only, no ``trust_remote_code``), ``id2label`` / ``label2id`` set.
  transferkit's text model is a BERT encoder (no pooler), a pooling step and its own head.
  Stock BERT classifiers read ``tanh(dense(first token))`` and cannot reproduce that, so the
  export re-expresses the same computation in another stock class, exactly:

  * first-token pooling + one Linear head -> ``XLMForSequenceClassification``: XLM's encoder is
    BERT's computation (post-LN attention + GELU feed-forward, learned absolute positions) and
    its ``sequence_summary`` with ``summary_type="first"``, one projection to the labels and no
    activation is exactly "first token -> Linear". BERT's token-type-0 embedding is folded into
    the position embeddings (the exported tokenizer returns no ``token_type_ids``) and the
    feed-forward is zero-padded to XLM's fixed ``4 x hidden`` width (GELU(0) = 0);
  * first-token pooling + a hidden-layer GELU head (``--head-hidden N``, N <= hidden size) ->
    ``ElectraForSequenceClassification`` (ELECTRA's encoder is BERT's; its head is
    ``dense -> GELU -> out_proj`` on the first token; the dense layer is zero-padded to the hidden size);
  * mean pooling (transferkit's default for ``hf:`` sources) has no exact stock equivalent for a
    BERT encoder and raises ``ExportError`` naming the alternatives (``--format onnx``, or
    first-token pooling).

  Each export reloads what it wrote and checks it against the run (max abs difference of the
  logits, reported in the model card).
- ``torchvision`` / ``timm``: image runs on a torchvision / timm architecture whose head is one
  Linear layer -> ``model.safetensors`` that ``torchvision.models.get_model(name, num_classes=C)``
  / ``timm.create_model(name, num_classes=C)`` load with ``load_state_dict``.
- ``onnx``: the whole target model (image: ``pixel_values``; text: ``input_ids`` +
  ``attention_mask``) -> ``model.onnx`` with dynamic batch (and sequence) axes, logits out; the
  parity against PyTorch under onnxruntime is measured and reported.

Every export carries a model card (``README.md``: data, metrics next to the baseline, source and
licence, intended use, limits, how to load it) and ``preprocessing.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.errors import TransferKitError

FORMATS = ("hf", "torchvision", "timm", "onnx")


class ExportError(TransferKitError, ValueError):
    """A run cannot be exported to the requested format exactly."""


@dataclass
class ExportResult:
    """What ``export_run`` wrote.

    Attributes:
        format: The export format.
        out: The output directory.
        files: File names written in ``out``.
        architecture: The class or constructor that loads the export.
        max_abs_diff: Largest absolute difference of the logits between the export (reloaded from
            disk) and the run, on sample inputs; None when it could not be measured.
        notes: Anything a user should know (exporter used, mappings applied).
    """

    format: str
    out: Path
    files: list[str] = field(default_factory=list)
    architecture: str = ""
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        diff = "not measured" if self.max_abs_diff is None else f"{self.max_abs_diff:.2e}"
        return (f"Exported {self.format} ({self.architecture}) to {self.out}: {', '.join(self.files)}. "
                f"Max abs difference of the logits against the run: {diff}.")


def export_run(run_dir: str | Path, format: str, out: str | Path) -> ExportResult:  # noqa: A002 (CLI name)
    """Exports the run in ``run_dir`` as ``format`` (``hf``, ``torchvision``, ``timm``, ``onnx``) into ``out``."""
    from transferkit.outdir import OutputDir
    from transferkit.runs import load_run, read_run_config

    if format not in FORMATS:
        import difflib

        close = difflib.get_close_matches(str(format), FORMATS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ExportError(f"`--format` must be one of {', '.join(FORMATS)}; got {format!r}.{hint}")
    run_dir, out = Path(run_dir), Path(out)
    config = read_run_config(run_dir)
    _check_compatible(config, format)  # fails fast, before any model is built
    with OutputDir.claim(out, "export", inputs=[run_dir]) as outdir:
        run = load_run(run_dir)
        exporters = {"hf": _export_hf, "torchvision": _export_torchvision, "timm": _export_timm, "onnx": _export_onnx}
        results = []

        def write(folder: Path) -> None:
            result = exporters[format](run, folder)
            _write_json(folder / "preprocessing.json", _preprocessing(run))
            (folder / "README.md").write_text(model_card(run, result))
            result.files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
            results.append(result)

        outdir.publish(write)
    results[0].out = out
    return results[0]


# -- compatibility checks (config only) ------------------------------------------------------------


def _check_compatible(config: dict, format: str) -> None:  # noqa: A002
    modality = config["source"]["preprocessing"].get("modality")
    spec = config["source"].get("spec", {})
    fit = config.get("fit", {})
    if len(config.get("classes", {})) != 1 and format != "onnx":
        raise ExportError(f"`--format {format}` exports runs with one task head; this run has "
                          f"{list(config['classes'])}. `--format onnx` exports every head.")
    if format == "onnx":
        if modality not in ("image", "text"):
            raise ExportError(f"`--format onnx` exports image and text runs; this run is {modality!r}.")
        return
    if format == "hf":
        if modality != "text":
            raise ExportError(f"`--format hf` is for text runs; this run is {modality!r}. Use "
                              f"`--format {spec.get('loader') if spec.get('loader') in FORMATS else 'onnx'}`"
                              " or `--format onnx`.")
        if spec.get("pooling") == "mean":
            raise ExportError(
                "`--format hf`: this run mean-pools the token states (`pooling='mean'`, transferkit's default for "
                "text sources), and no stock transformers sequence-classification model computes a masked mean "
                "over a BERT encoder (BertForSequenceClassification classifies tanh(dense(first token)), which "
                "cannot reproduce it exactly). Export it with `--format onnx` (exact, any runtime), or train with "
                "first-token pooling (`pooling='cls'`, e.g. an `st:` source whose pooling is CLS) for an exact "
                "transformers export.")
        return
    if modality != "image":
        raise ExportError(f"`--format {format}` is for image runs; this run is {modality!r}. "
                          f"Use `--format {'hf' if modality == 'text' else 'onnx'}`.")
    if spec.get("loader") != format:
        raise ExportError(f"`--format {format}` needs a run on a {format} architecture; this run's source "
                          f"{config['source']['id']!r} is built by {spec.get('loader')!r}. Use "
                          f"`--format {spec.get('loader') if spec.get('loader') in FORMATS else 'onnx'}` or "
                          "`--format onnx`.")
    if fit.get("head_hidden"):
        raise ExportError(f"`--format {format}`: this run's head has a hidden layer (`--head-hidden "
                          f"{fit['head_hidden']}`), but {format} classifiers end in one Linear layer. Use "
                          "`--format onnx`, or train with `--head-hidden 0`.")


def _single_linear(head: nn.Module, format: str) -> nn.Linear:  # noqa: A002
    layers = [m for m in head if not isinstance(m, nn.Dropout)] if isinstance(head, nn.Sequential) else [head]
    if len(layers) != 1 or not isinstance(layers[0], nn.Linear):
        raise ExportError(f"`--format {format}` needs a head that is one Linear layer; this run's head is "
                          f"{head}. Use `--format onnx`.")
    return layers[0]


# -- hf ---------------------------------------------------------------------------------------------


def _export_hf(run, out: Path) -> ExportResult:
    from transferkit.sources.transformers import HFTextBackbone

    backbone, head = run.model.backbone, run.model.heads[run.main_task]
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
    with _hf_quiet():
        model.save_pretrained(out)
    _save_tokenizer(run, out)
    if model.config.model_type == "xlm":  # XLM reads token_type_ids as word ids: the tokenizer must not send them
        config_path = out / "tokenizer_config.json"
        tok_config = json.loads(config_path.read_text())
        tok_config["model_input_names"] = ["input_ids", "attention_mask"]
        config_path.write_text(json.dumps(tok_config, indent=2) + "\n")
    diff = _check_hf(run, out)
    notes.append("Transferkit's pooling and head are reproduced exactly by the stock class above; the check "
                 "reloads the export from disk and compares its logits with the run's.")
    return ExportResult("hf", out, [], type(model).__name__, diff, notes)


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
        "sequence_summary.summary.bias": linear.bias.detach().float().cpu() if linear.bias is not None
        else torch.zeros(linear.out_features),
    }
    for i in range(cfg.num_hidden_layers):
        p, q = f"encoder.layer.{i}.", "transformer."
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
    model = XLMForSequenceClassification(xcfg)
    _load_exact(model, new)
    notes = ["BERT encoder + first-token pooling + Linear head, written as XLMForSequenceClassification "
             "(identical computation): token-type embedding 0 folded into the position embeddings, the "
             "tokenizer returns no token_type_ids, and the [PAD] word embedding (seen only at masked positions) "
             "is zero"
             + (f"; feed-forward zero-padded from {inner} to {4 * hidden} units" if inner < 4 * hidden else "") + "."]
    return model, notes


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
    b2 = out_proj.bias.detach().float().cpu() if out_proj.bias is not None else torch.zeros(out_proj.out_features)
    new.update({"classifier.dense.weight": w1, "classifier.dense.bias": b1,
                "classifier.out_proj.weight": w2, "classifier.out_proj.bias": b2})
    model = ElectraForSequenceClassification(ecfg)
    _load_exact(model, new)
    notes = ["BERT encoder + first-token pooling + Linear-GELU-Linear head, written as "
             "ElectraForSequenceClassification (identical computation)"
             + (f"; head's hidden layer zero-padded from {width} to {hidden} units" if width < hidden else "") + "."]
    return model, notes


def _load_exact(model: nn.Module, state: dict) -> None:
    expected = {k for k in model.state_dict() if not k.endswith("position_ids")}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ExportError(f"Internal mapping error for {type(model).__name__}: missing {missing[:3]}, "
                          f"unexpected {extra[:3]}. Please report this; use `--format onnx` meanwhile.")
    model.load_state_dict(state, strict=False)


def sample_texts(tokenizer, n: int = 6) -> list[str]:
    """Texts of varied length from the tokenizer's own vocabulary (padding and truncation exercised)."""
    special = set(getattr(tokenizer, "all_special_tokens", []))
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and w not in special and not w.startswith("##")][:200]
    words = words or ["example"]
    rng = np.random.default_rng(0)
    lengths = [1, 3, 7, 12, 25, 60][:n]
    return [" ".join(rng.choice(words, k)) for k in lengths]


@torch.inference_mode()
def _check_hf(run, out: Path) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = sample_texts(run.source.tokenizer)
    with _hf_quiet():
        tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=False).eval()
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    theirs = model(**enc).logits.float()
    ours = _run_logits(run, texts)
    return float((theirs - ours).abs().max())


@torch.inference_mode()
def _run_logits(run, examples: list) -> torch.Tensor:
    from transferkit.sources.inputs import ExampleDataset, input_pipeline

    dataset = ExampleDataset(list(examples), None, input_pipeline(run.source, train=False))
    batch, _ = dataset.collate([dataset[i] for i in range(len(dataset))])
    run.model.eval()
    return run.model(**batch)[run.main_task].float()


# -- torchvision / timm -----------------------------------------------------------------------------


def _backbone_state(run) -> dict:
    prefix = "backbone.model."
    state = run.model.state_dict()
    if any(not k.startswith(prefix) for k in state if k.startswith("backbone.")):
        raise ExportError("The run's shared layers are wrapped (e.g. by LoRA adapters) and no longer match the "
                          "plain architecture. Use `--format onnx`.")
    return {k[len(prefix):]: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith(prefix)}


def _export_image_weights(run, out: Path, plain: nn.Module, classifier: str, format: str,  # noqa: A002
                          constructor: str) -> ExportResult:
    from transferkit._io import save_weights

    linear = _single_linear(run.model.heads[run.main_task], format)
    state = _backbone_state(run)
    state[f"{classifier}.weight"] = linear.weight.detach().cpu().contiguous()
    if linear.bias is not None:
        state[f"{classifier}.bias"] = linear.bias.detach().cpu().contiguous()
    try:
        plain.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"`--format {format}`: the run's weights do not fit `{constructor}` "
                          f"({str(e).splitlines()[0]}). Use `--format onnx`.") from None
    classes = run.classes[run.main_task]
    notes = [f"Classifier weights written as `{classifier}`; every other tensor is the run's shared layers."]
    if format == "timm" and _save_timm_hub_layout(plain, out, run):
        notes.append("Written with timm's own `save_for_hf` layout, so `timm.create_model(\"local-dir:<this "
                     "directory>\", pretrained=True)` also loads it, classes and preprocessing included.")
    else:
        save_weights(plain.state_dict(), out / "model.safetensors", metadata={"format": "pt"})
    _write_json(out / "labels.json", {"constructor": constructor, "num_classes": len(classes), "classes": classes,
                                      "id2label": {str(i): c for i, c in enumerate(classes)}})
    diff = _check_image(run, plain)
    return ExportResult(format, out, [], constructor, diff, notes)


def _save_timm_hub_layout(plain: nn.Module, out: Path, run) -> bool:
    """``model.safetensors`` + timm's ``config.json`` (labels, preprocessing); False if this timm cannot."""
    try:
        from timm.models import save_for_hf

        pre = run.source.preprocessing
        size = pre.image_size or 224
        data_config = {"input_size": (3, size, size), "mean": tuple(pre.mean), "std": tuple(pre.std),
                       "crop_pct": pre.crop_pct, "interpolation": pre.interpolation}
        save_for_hf(plain, str(out), model_config={"label_names": list(run.classes[run.main_task])},
                    safe_serialization=True, data_config=data_config)
        return (out / "model.safetensors").is_file()
    except Exception:  # noqa: BLE001 - older timm: plain safetensors below
        for name in ("model.safetensors", "config.json"):
            (out / name).unlink(missing_ok=True)
        return False


def _export_torchvision(run, out: Path) -> ExportResult:
    import torchvision

    name = run.config["source"]["spec"]["name"]
    num_classes = len(run.classes[run.main_task])
    plain = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    classifier = [n for n, m in plain.named_modules() if isinstance(m, nn.Linear)][-1]
    return _export_image_weights(run, out, plain, classifier, "torchvision",
                                 f"torchvision.models.get_model({name!r}, num_classes={num_classes})")


def _export_timm(run, out: Path) -> ExportResult:
    import timm

    spec = run.config["source"]["spec"]
    num_classes = len(run.classes[run.main_task])
    kwargs = dict(spec.get("model_kwargs") or {})
    kwargs.pop("num_classes", None)
    plain = timm.create_model(spec["name"], pretrained=False, num_classes=num_classes, **kwargs)
    head = plain.get_classifier()
    classifier = next(n for n, m in plain.named_modules() if m is head)
    args = ", ".join([repr(spec["name"]), f"num_classes={num_classes}", *[f"{k}={v!r}" for k, v in kwargs.items()]])
    return _export_image_weights(run, out, plain, classifier, "timm", f"timm.create_model({args})")


@torch.inference_mode()
def _check_image(run, plain: nn.Module) -> float:
    size = run.source.preprocessing.image_size or 224
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    run.model.eval()
    plain.eval()
    return float((plain(x).float() - run.model(pixel_values=x)[run.main_task].float()).abs().max())


# -- onnx -------------------------------------------------------------------------------------------


class _ImageLogits(nn.Module):
    """The target model with tensor outputs: one logits tensor per task, in the run's task order."""

    def __init__(self, model: nn.Module, tasks: list[str]) -> None:
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values=pixel_values)
        return tuple(out[t] for t in self.tasks) if len(self.tasks) > 1 else out[self.tasks[0]]


class _TextLogits(_ImageLogits):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return tuple(out[t] for t in self.tasks) if len(self.tasks) > 1 else out[self.tasks[0]]


def _onnx_inputs(run) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(example inputs for tracing, different-shaped inputs for the parity check)."""
    if run.modality == "image":
        size = run.source.preprocessing.image_size or 224
        g = torch.Generator().manual_seed(0)
        return ({"pixel_values": torch.randn(2, 3, size, size, generator=g)},
                {"pixel_values": torch.randn(3, 3, size, size, generator=g)})
    texts = sample_texts(run.source.tokenizer)
    max_length = run.source.preprocessing.max_length or 128

    def encode(items):
        enc = run.source.tokenizer(items, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return encode(texts[1:3]), encode(texts)


def _export_onnx(run, out: Path) -> ExportResult:
    tasks = list(run.classes)
    outputs = ["logits"] if len(tasks) == 1 else [f"logits_{t}" for t in tasks]
    wrapper = (_ImageLogits if run.modality == "image" else _TextLogits)(run.model.eval(), tasks).eval()
    example, check = _onnx_inputs(run)
    names = list(example)
    path = out / "model.onnx"
    notes = []
    try:
        batch = torch.export.Dim("batch", min=1)
        if run.modality == "image":
            dims = {"pixel_values": {0: batch}}
        else:
            sequence = torch.export.Dim("sequence", min=1)
            dims = {n: {0: batch, 1: sequence} for n in names}
        with _quiet():
            program = torch.onnx.export(wrapper, tuple(example.values()), dynamo=True, input_names=names,
                                        output_names=outputs, dynamic_shapes=dims, verbose=False)
            program.save(str(path))
        notes.append(f"Exported with torch.onnx's dynamo exporter (torch {torch.__version__}).")
    except Exception as e:  # noqa: BLE001 - any exporter failure falls back to the TorchScript exporter
        axes = {"pixel_values": {0: "batch"}} if run.modality == "image" else \
            {n: {0: "batch", 1: "sequence"} for n in names}
        with _quiet():
            torch.onnx.export(wrapper, tuple(example.values()), str(path), dynamo=False, input_names=names,
                              output_names=outputs, dynamic_axes={**axes, **{o: {0: "batch"} for o in outputs}},
                              opset_version=17)
        notes.append(f"Exported with the TorchScript exporter (the dynamo exporter failed: {type(e).__name__}).")
    _add_onnx_metadata(path, run)
    diff = _check_onnx(path, wrapper, check, outputs)
    _write_json(out / "labels.json", {"inputs": names, "outputs": outputs, "tasks": run.classes,
                                      "classes": run.classes[run.main_task],
                                      "id2label": {str(i): c for i, c in enumerate(run.classes[run.main_task])}})
    if len(tasks) > 1:
        notes.append(f"One output per task head: {', '.join(outputs)} (classes per task in labels.json).")
    if run.modality == "text":  # the directory is self-contained: AutoTokenizer.from_pretrained(out)
        _save_tokenizer(run, out)
    return ExportResult("onnx", out, [], "ONNX (onnxruntime)", diff, notes)


@contextlib.contextmanager
def _hf_quiet():
    """No transformers progress bars while exporting (restored after)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _add_onnx_metadata(path: Path, run) -> None:
    try:
        import onnx
    except ImportError:
        return
    model = onnx.load(str(path))
    meta = {"classes": json.dumps(run.classes[run.main_task]), "tasks": json.dumps(run.classes),
            "source": run.config["source"]["id"], "producer": "transferkit",
            "preprocessing": json.dumps(_preprocessing(run))}
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))


@torch.inference_mode()
def _check_onnx(path: Path, wrapper: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str]) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(outputs, {k: v.numpy() for k, v in inputs.items()})
    ours = wrapper(**inputs)
    ours = ours if isinstance(ours, tuple) else (ours,)
    return float(max(np.abs(t - o.float().numpy()).max() for t, o in zip(theirs, ours, strict=True)))


# -- model card -------------------------------------------------------------------------------------


def _preprocessing(run) -> dict:
    pre = run.source.preprocessing.to_dict()
    if run.modality == "image":
        size = pre.get("image_size") or 224
        pre["steps"] = ["convert to RGB", f"resize the short side to {round(size / (pre.get('crop_pct') or 1.0))} px "
                        f"({pre.get('interpolation')})", f"centre-crop {size}x{size}", "scale to [0, 1]",
                        f"normalise with mean {pre.get('mean')} and std {pre.get('std')}"]
    else:
        pre["steps"] = [f"tokenise with the exported tokenizer, truncation to {pre.get('max_length')} tokens, "
                        "padding per batch"]
    return {k: v for k, v in pre.items() if v is not None}


def _usage(run, result: ExportResult) -> str:
    classes = run.classes[run.main_task]
    size = run.source.preprocessing.image_size or 224
    pre = run.source.preprocessing
    image_pre = (f"from PIL import Image\nfrom torchvision.transforms import v2 as T\n\n"
                 f"transform = T.Compose([T.ToImage(), T.Resize({round(size / (pre.crop_pct or 1.0))}, "
                 "antialias=True), "
                 f"T.CenterCrop({size}),\n                       T.ToDtype(torch.float32, scale=True), "
                 f"T.Normalize({list(pre.mean or ())}, {list(pre.std or ())})])\n"
                 f"x = transform(Image.open(\"image.png\").convert(\"RGB\")).unsqueeze(0)\n")
    labels = f"classes = {classes!r}\n"
    if result.format == "hf":
        return ("```python\nimport torch\n"
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/directory\")\n"
                "model = AutoModelForSequenceClassification.from_pretrained(\"path/to/this/directory\").eval()\n"
                "batch = tokenizer([\"first text\", \"second text\"], padding=True, truncation=True, "
                "return_tensors=\"pt\")\n"
                "with torch.no_grad():\n    proba = model(**batch).logits.softmax(-1)\n"
                "print([model.config.id2label[i] for i in proba.argmax(-1).tolist()])\n```\n")
    if result.format == "onnx":
        if run.modality == "image":
            feed = "{\"pixel_values\": x.numpy()}"
            prep = "import torch\n" + image_pre
        else:
            feed = "{\"input_ids\": enc[\"input_ids\"], \"attention_mask\": enc[\"attention_mask\"]}"
            prep = ("from transformers import AutoTokenizer  # saved in this directory\n\n"
                    "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/directory\")\n"
                    "enc = tokenizer([\"first text\", \"second text\"], padding=True, truncation=True, "
                    "return_tensors=\"np\")\n")
        return ("```python\nimport numpy as np\nimport onnxruntime as ort\n" + prep + labels +
                "session = ort.InferenceSession(\"model.onnx\")\n"
                f"logits = session.run([\"logits\"], {feed})[0]\n"
                "proba = np.exp(logits - logits.max(-1, keepdims=True)); proba /= proba.sum(-1, keepdims=True)\n"
                "print([classes[i] for i in proba.argmax(-1)])\n```\n")
    constructor = result.architecture
    module = "torchvision" if result.format == "torchvision" else "timm"
    return (f"```python\nimport torch\nimport {module}\nfrom safetensors.torch import load_file\n\n"
            f"model = {constructor}\nmodel.load_state_dict(load_file(\"model.safetensors\"))\nmodel.eval()\n"
            + image_pre + labels +
            "with torch.no_grad():\n    proba = model(x).softmax(-1)\n"
            "print([classes[i] for i in proba.argmax(-1).tolist()])\n```\n")


def model_card(run, result: ExportResult) -> str:
    """The export's README.md: what it is, how well it does (next to the baseline), how to load it, limits."""
    m, config = run.metrics, run.config
    src, fit, data = config["source"], config["fit"], m.get("data", {})
    classes = run.classes[run.main_task]
    sizes = data.get("split_sizes", {})
    n_test = sizes.get("test", 0)
    lines = [
        "---",
        f"license: {_licence_tag(src.get('license'))}",
        f"library_name: {'transformers' if result.format == 'hf' else result.format}",
        f"tags: [transferkit, {data.get('modality', run.modality)}-classification, transfer-learning]",
        "---", "",
        f"# {src['id']} fine-tuned on {Path(data.get('origin', '')).name or 'a target task'} "
        f"({len(classes)} classes)", "",
        f"Exported by transferkit {config.get('transferkit_version', '')} as **{result.format}** "
        f"(`{result.architecture}`) from a run trained with strategy `{fit.get('strategy')}`, "
        f"seed {fit.get('seed')}.", "",
        "## Results (held-out test split)", "",
        "| | test accuracy | test macro-F1 |", "|---|---|---|",
        f"| this model | {_f(m.get('test_accuracy'))} {_interval(m.get('test_accuracy'), n_test)} | "
        f"{_f(m.get('test_macro_f1'))} |",
    ]
    if "baseline_test_accuracy" in m:
        lines.append(f"| no-transfer baseline ({m.get('baseline', 'same budget')}) | "
                     f"{_f(m['baseline_test_accuracy'])} | {_f(m.get('baseline_test_macro_f1'))} |")
        gain = m["test_accuracy"] - m["baseline_test_accuracy"]
        lines += ["", ("Transfer helped" if gain > 0 else "Transfer LOST against" if gain < 0 else "Transfer tied with")
                  + f" the baseline: {gain * 100:+.1f} points of test accuracy."]
    else:
        lines += ["", "No no-transfer baseline was trained for this run."]
    per_class = m.get("test_per_class", {})
    if per_class:
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                  for c, v in per_class.items()]
    lines += [
        "", "## Data", "",
        f"{data.get('modality', run.modality)} examples from `{data.get('origin', 'unknown')}`; classes: "
        + ", ".join(f"`{c}`" for c in classes) + ".",
        f"Split sizes: {sizes} "
        f"({'given by the data' if data.get('split_given') else 'made by transferkit, stratified'}).",
        f"Examples skipped as unreadable: {len(data.get('skipped', []))}.",
        "", "## Source model and licence", "",
        f"- Source: `{src['id']}` ({src.get('architecture') or 'architecture not recorded'})",
        f"- Weights: {src.get('weights') or 'not recorded'}",
        f"- Licence of the source weights: **{src.get('license') or 'not recorded: check the source before use'}**. "
        "This fine-tuned model is a derivative of those weights; their licence terms apply.",
        "", "## How to load it", "",
        _usage(run, result),
        "Preprocessing (also in `preprocessing.json`): " + "; ".join(_preprocessing(run).get("steps", [])) + ".",
        "", "## Export check", "",
        f"Max absolute difference of the logits between this export (reloaded from disk) and the transferkit run "
        f"on sample inputs: **{'not measured' if result.max_abs_diff is None else f'{result.max_abs_diff:.2e}'}**.",
        *[f"- {n}" for n in result.notes],
        "", "## Intended use", "",
        f"Classifying {data.get('modality', run.modality)} inputs like the training data into the {len(classes)} "
        "classes above, as a starting point to evaluate on your own held-out data.",
        "", "## Limits", "",
        f"- Evaluated on {n_test} held-out examples only; the interval above is a 95% Wilson interval for the "
        "accuracy, and it widens quickly on small test sets.",
        "- Only the listed classes exist for the model: every input gets one of them, however unrelated it is.",
        "- Inputs unlike the training data (other sensors, fonts, languages, domains) were not evaluated.",
        "- Inherits the biases and failure modes of the source model and of the training data.",
        "",
    ]
    return "\n".join(lines)


def _licence_tag(licence: str | None) -> str:
    text = (licence or "").lower()
    for tag in ("apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0"):
        if tag in text:
            return tag
    return "other" if text else "unknown"


def _f(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _interval(accuracy, n: int) -> str:
    """95% Wilson score interval of an accuracy measured on ``n`` examples."""
    if not isinstance(accuracy, (int, float)) or not n:
        return ""
    z = 1.96
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"(95% CI {max(0.0, centre - half):.2f}-{min(1.0, centre + half):.2f}, n={n})"


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _save_tokenizer(run, out: Path) -> None:
    """Saves the run's tokenizer with the run's token limit as its ``model_max_length``."""
    tokenizer = run.source.tokenizer
    saved = tokenizer.model_max_length
    try:
        tokenizer.model_max_length = run.source.preprocessing.max_length or saved
        tokenizer.save_pretrained(out)
    finally:
        tokenizer.model_max_length = saved
