"""``--format sentence-transformers``: a text run as a sentence-transformers directory whose output is the logits.

transferkit's text model is a transformers encoder, a pooling step (mean over real tokens, the
default, or the first token) and its own head. sentence-transformers has a stock module for each
step, so the run is written as a directory that ``SentenceTransformer(dir)`` loads with its own
classes only (no ``trust_remote_code``, no pickle):

- ``Transformer`` (the directory's root): the encoder, ``save_pretrained`` (safetensors), the
  tokenizer, and ``sentence_bert_config.json`` with the run's token limit;
- ``Pooling`` (``1_Pooling/``): ``mean`` or ``cls``, as the run pooled;
- one ``Dense`` per Linear layer of the head (``2_Dense/``, ``3_Dense/``, ...), with the
  activation that follows it (GELU for ``--head-hidden``, else identity), weights in
  ``model.safetensors``. No ``Normalize`` module: ``encode`` returns the logits themselves.

So ``model.encode(texts)`` returns the run's logits, and ``.softmax(-1)`` its probabilities.
The files use the classic layout (module types under ``sentence_transformers.models``, the one
all-MiniLM-L6-v2 ships in), and the root is also a plain ``AutoModel`` directory: with
transformers alone, the masked mean and the head are a few lines (the model card shows them).
No stock transformers sequence classifier computes a masked mean over a BERT encoder, which is
why ``--format hf`` needs first-token pooling and this format does not: BERT-like classifiers read
the first token, XLM's and XLNet's ``summary_type="mean"`` averages over padding too, and
ModernBERT's masked mean sits on another encoder and a LayerNorm head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferkit._io import write_json
from transferkit.export.common import (
    ExportError,
    ExportResult,
    id2label,
    run_logits,
    sample_texts,
    save_tokenizer,
)
from transferkit.sources.transformers import HFTextBackbone, quiet_transformers

#: Activations a ``Dense`` module rebuilds exactly from its class name (constructed without arguments).
_ACTIVATIONS = (nn.GELU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity)
#: The classic module class names (all-MiniLM-L6-v2's ``modules.json`` uses them); newer releases map them on.
_MODULE = "sentence_transformers.models."


def export_sentence_transformers(run, out: Path) -> ExportResult:
    backbone = _backbone(run)
    encoder, pooling = backbone.model, backbone.pooling
    dense = _dense_layers(run.model.heads[run.main_task])
    quiet_transformers()
    _save_encoder(encoder, out)
    save_tokenizer(run, out)
    write_json(out / "sentence_bert_config.json",
               {"max_seq_length": run.source.preprocessing.max_length or 128, "do_lower_case": False})
    width = encoder.config.hidden_size
    modules = [{"idx": 0, "name": "0", "path": "", "type": _MODULE + "Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": _MODULE + "Pooling"}]
    (out / "1_Pooling").mkdir()
    write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": width, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})
    for i, (linear, activation) in enumerate(dense, start=2):
        folder = out / f"{i}_Dense"
        folder.mkdir()
        _save_dense(folder, linear, activation)
        modules.append({"idx": i, "name": str(i), "path": folder.name, "type": _MODULE + "Dense"})
    write_json(out / "modules.json", modules)
    write_json(out / "config_sentence_transformers.json", _versions())
    classes = run.classes[run.main_task]
    write_json(out / "labels.json", {"classes": classes, "id2label": id2label(classes),
                                     "output": "logits (apply softmax for probabilities)"})
    diff = _check(run, out)
    acts = " -> ".join(f"Dense({lin.in_features}->{lin.out_features}, {type(act).__name__})" for lin, act in dense)
    notes = [f"Transformer ({encoder.config.model_type} encoder) -> Pooling ({pooling}) -> {acts}: the run's pooling "
             "and head as stock sentence-transformers modules, so `encode` returns the logits (no Normalize module).",
             "The check reloads the export from disk with `SentenceTransformer(dir, trust_remote_code=False)` and "
             "compares `encode` with the run's logits."]
    return ExportResult("sentence-transformers", out, [], "SentenceTransformer", diff, notes,
                        usage=_usage(pooling, dense, classes))


def _backbone(run) -> HFTextBackbone:
    """The run's trained encoder and its pooling, LoRA adapters merged in (the strategy's ``shared_layers``)."""
    from transferkit.strategies import get_strategy

    backbone = get_strategy(run.fit_config.strategy)(run.fit_config).shared_layers(run.model)
    if not isinstance(backbone, HFTextBackbone):
        raise ExportError(f"`--format sentence-transformers`: the run's shared layers are {type(backbone).__name__}, "
                          "not a transformers encoder with its pooling (e.g. cut with `--cut-at`). "
                          "Use `--format onnx`.")
    return backbone


def _dense_layers(head: nn.Module) -> list[tuple[nn.Linear, nn.Module]]:
    """The head as (Linear, activation after it) pairs, dropout left out (a no-op at inference)."""
    layers = [m for m in head if not isinstance(m, nn.Dropout)]
    pairs, i = [], 0
    while i < len(layers):
        linear = layers[i]
        after = layers[i + 1] if i + 1 < len(layers) else None
        activation = after if isinstance(after, _ACTIVATIONS) else nn.Identity()
        if not isinstance(linear, nn.Linear) or getattr(activation, "approximate", "none") != "none":
            raise ExportError(f"`--format sentence-transformers` maps heads made of Linear layers, each optionally "
                              f"followed by GELU (exact), ReLU, Tanh or Sigmoid; this run's head is {head}. "
                              "Use `--format onnx`.")
        pairs.append((linear, activation))
        i += 2 if after is activation else 1
    return pairs


def _save_encoder(encoder: nn.Module, out: Path) -> None:
    """``save_pretrained`` (safetensors) with every tensor ``AutoModel`` expects.

    transferkit drops the encoder's pooler (first-token tanh layer), which neither pooling uses; it
    is written back as zeros so loading reports no missing weights. It feeds only ``pooler_output``.
    """
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    if getattr(encoder, "pooler", "absent") is None:
        try:
            with torch.device("meta"):
                expected = type(encoder)(encoder.config).state_dict()
        except Exception:  # noqa: BLE001 - a class that cannot be built on the meta device: leave the pooler out
            expected = {}
        dtype = next(iter(state.values())).dtype
        state.update({k: torch.zeros(v.shape, dtype=dtype) for k, v in expected.items()
                      if k.startswith("pooler.") and k not in state})
    encoder.save_pretrained(out, state_dict=state)


def _save_dense(folder: Path, linear: nn.Linear, activation: nn.Module) -> None:
    from safetensors.torch import save_file

    cls = type(activation)
    write_json(folder / "config.json", {"in_features": linear.in_features, "out_features": linear.out_features,
                                        "bias": linear.bias is not None,
                                        "activation_function": f"{cls.__module__}.{cls.__qualname__}"})
    tensors = {"linear.weight": linear.weight.detach().float().cpu().contiguous()}
    if linear.bias is not None:
        tensors["linear.bias"] = linear.bias.detach().float().cpu().contiguous()
    save_file(tensors, str(folder / "model.safetensors"))


#: How the card's transformers-only snippet writes each activation.
_ACTIVATION_CODE = {"GELU": "torch.nn.functional.gelu({})", "ReLU": "torch.relu({})", "Tanh": "torch.tanh({})",
                    "Sigmoid": "torch.sigmoid({})", "Identity": "{}"}


def _usage(pooling: str, dense: list[tuple[nn.Linear, nn.Module]], classes: list[str]) -> str:
    """The card's snippets: sentence-transformers in three lines, then transformers + safetensors alone."""
    folders = [f"{i}_Dense" for i in range(2, 2 + len(dense))]
    pooled = ("tokens[:, 0]  # first token" if pooling == "cls" else
              "(tokens * mask).sum(1) / mask.sum(1)  # mean over real tokens")
    why = ("the pooling and the head are written out; on a BERT encoder, `--format hf` gives this first-token "
           "run as a stock transformers classifier" if pooling == "cls" else
           "no stock transformers classifier computes this masked mean, so the pooling and the head are written out")
    steps = []
    for i, (linear, activation) in enumerate(dense):
        bias = f" + head[{i}][\"linear.bias\"]" if linear.bias is not None else ""
        affine = f"x @ head[{i}][\"linear.weight\"].T{bias}"
        target = "logits" if i == len(dense) - 1 else "x"
        steps.append(f"    {target} = {_ACTIVATION_CODE[type(activation).__name__].format(affine)}")
    return (
        "With sentence-transformers (stock modules only: no `trust_remote_code`, no pickle); `encode` returns the "
        "logits:\n\n"
        "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
        f"classes = {classes!r}\n"
        "model = SentenceTransformer(\"path/to/this/directory\")\n"
        "proba = model.encode([\"first text\", \"second text\"], convert_to_tensor=True).softmax(-1)\n"
        "print([classes[i] for i in proba.argmax(-1).tolist()])\n```\n\n"
        "With transformers and safetensors alone (the directory's root is a plain `AutoModel` directory; "
        f"{why}):\n\n"
        "```python\nimport torch\nfrom safetensors.torch import load_file\n"
        "from transformers import AutoModel, AutoTokenizer\n\n"
        f"classes = {classes!r}\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/directory\")\n"
        "encoder = AutoModel.from_pretrained(\"path/to/this/directory\").eval()\n"
        f"head = [load_file(f\"path/to/this/directory/{{d}}/model.safetensors\") for d in {tuple(folders)!r}]\n"
        "batch = tokenizer([\"first text\", \"second text\"], padding=True, truncation=True, return_tensors=\"pt\")\n"
        "with torch.no_grad():\n"
        "    tokens = encoder(**batch).last_hidden_state\n"
        "    mask = batch[\"attention_mask\"].unsqueeze(-1).to(tokens.dtype)\n"
        f"    x = {pooled}\n"
        + "\n".join(steps) + "\n"
        "proba = logits.softmax(-1)\n"
        "print([classes[i] for i in proba.argmax(-1).tolist()])\n```\n")


def _versions() -> dict:
    import sentence_transformers
    import transformers

    return {"__version__": {"sentence_transformers": sentence_transformers.__version__,
                            "transformers": transformers.__version__, "pytorch": torch.__version__},
            "prompts": {}, "default_prompt_name": None}


@torch.inference_mode()
def _check(run, out: Path) -> float:
    """Max abs difference of the logits: the export, reloaded by stock sentence-transformers, against the run."""
    from sentence_transformers import SentenceTransformer

    texts = sample_texts(run.source.tokenizer)
    model = SentenceTransformer(str(out), device="cpu", trust_remote_code=False, local_files_only=True)
    theirs = model.encode(texts, convert_to_tensor=True, batch_size=len(texts)).float().cpu()
    if tuple(theirs.shape) != (len(texts), len(run.classes[run.main_task])):
        raise ExportError(f"Internal export error: the reloaded sentence-transformers model returns shape "
                          f"{tuple(theirs.shape)}. Please report this; use `--format onnx` meanwhile.")
    return float((theirs - run_logits(run, texts).cpu()).abs().max())
