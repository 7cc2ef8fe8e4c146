"""Exports a run directory to formats the ecosystem loads without transferkit.

``export_run(run_dir, format, out)`` (CLI: ``transferkit export RUN --format F --out DIR``):

- ``hf`` (``hf.py``): text runs -> a directory for ``AutoTokenizer`` / ``AutoModelForSequenceClassification``
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
  * mean pooling (transferkit's default for text sources) has no exact stock transformers
    equivalent for a BERT encoder (see ``st.py``) and raises ``ExportError`` naming the
    alternatives (``--format sentence-transformers``, ``--format onnx``, or ``--pooling cls``).

  Each export reloads what it wrote and checks it against the run (max abs difference of the
  logits, reported in the model card).
- ``sentence-transformers`` (``st.py``; alias ``st``): text runs, mean or first-token pooling ->
  a directory ``SentenceTransformer(dir)`` loads with stock modules only (Transformer -> Pooling ->
  one Dense per head layer; safetensors, no ``trust_remote_code``), whose ``encode`` returns the
  run's logits. The default text flow (``--source minilm``, mean pooling) exports here exactly.
- ``torchvision`` / ``timm`` (``image.py``): image runs on a torchvision / timm architecture whose head is one
  Linear layer -> ``model.safetensors`` that ``torchvision.models.get_model(name, num_classes=C)``
  / ``timm.create_model(name, num_classes=C)`` load with ``load_state_dict``.
- ``onnx`` (``onnx.py``): the whole target model (image: ``pixel_values``; text: ``input_ids`` +
  ``attention_mask``) -> ``model.onnx`` with dynamic batch (and sequence) axes, logits out; the
  parity against PyTorch under onnxruntime is measured and reported.

Every export carries a model card (``card.py``; ``README.md``: data, metrics next to the baseline, source
and licence, intended use, limits, how to load it) and ``preprocessing.json``. Whether a run can be
exported at all is decided from its config before any model is built (``compat.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from transferkit._io import default_mode, write_json
from transferkit.export.card import model_card
from transferkit.export.common import (
    FORMAT_ALIASES,
    FORMATS,
    ExportError,
    ExportResult,
    preprocessing,
    sample_texts,
)
from transferkit.export.compat import check_compatible
from transferkit.export.hf import export_hf
from transferkit.export.image import export_timm, export_torchvision
from transferkit.export.onnx import export_onnx
from transferkit.export.st import export_sentence_transformers

__all__ = ["FORMATS", "ExportError", "ExportResult", "export_run", "model_card", "sample_texts"]

_EXPORTERS = {"hf": export_hf, "sentence-transformers": export_sentence_transformers,
              "torchvision": export_torchvision, "timm": export_timm, "onnx": export_onnx}


def export_run(run_dir: str | Path, format: str, out: str | Path) -> ExportResult:  # noqa: A002 (CLI name)
    """Exports the run in ``run_dir`` as ``format`` (one of ``FORMATS``, or an alias such as ``st``) into ``out``."""
    from transferkit.outdir import OutputDir
    from transferkit.runs import load_run, read_run_config

    format = FORMAT_ALIASES.get(format, format)  # noqa: A001
    if format not in FORMATS:
        import difflib

        close = difflib.get_close_matches(str(format), FORMATS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ExportError(f"`--format` must be one of {', '.join(FORMATS)}; got {format!r}.{hint}")
    run_dir, out = Path(run_dir), Path(out)
    config = read_run_config(run_dir)
    check_compatible(config, format)  # fails fast, before any model is built
    with OutputDir.claim(out, "export", inputs=[run_dir]) as outdir:
        run = load_run(run_dir)
        results = []

        def write(folder: Path) -> None:
            result = _EXPORTERS[format](run, folder)
            write_json(folder / "preprocessing.json", preprocessing(run))
            (folder / "README.md").write_text(model_card(run, result))
            files = [p for p in folder.rglob("*") if p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
            for path in files:  # safetensors writes 0600 files; an export gets the umask's, as runs do
                os.chmod(path, default_mode(0o666))
            result.files = sorted(p.relative_to(folder).as_posix() for p in files)
            results.append(result)

        outdir.publish(write)
    results[0].out = out
    return results[0]
