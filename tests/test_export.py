"""Runs leave transferkit: `transferkit export` to transformers, sentence-transformers, timm, torchvision and ONNX,
and `predict`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import FAST, TINY_IMAGE_SOURCE

from transferkit.cli import main
from transferkit.export import ExportError, export_run

ONNX_TOLERANCE = 1e-4


def fit_run(data, out, source, **options):
    from transferkit import fit

    fit(data, source=source, out=out, verbose=False, **{**FAST, **options})
    return out


@pytest.fixture(scope="module")
def image_run(image_folder, tmp_path_factory):
    """A timm image run, every layer fine-tuned (BatchNorm statistics moved too)."""
    return fit_run(image_folder, tmp_path_factory.mktemp("exports") / "timm-run", TINY_IMAGE_SOURCE, strategy="full")


@pytest.fixture(scope="module")
def first_token_text_run(text_table, tiny_bert_dir, tmp_path_factory):
    """Text runs on the tiny BERT with first-token pooling, keyed by head: one Linear / Linear-GELU-Linear.

    Text sources mean-pool by default. With a `pooling` option in `FitConfig` the runs ask for
    ``"cls"``; without one, the text source is built with ``pooling="cls"`` (what a
    sentence-transformers CLS model such as BGE gives).
    """
    import dataclasses

    import transferkit.sources.transformers as hf_source
    from transferkit.config import FitConfig

    build = hf_source.text_source
    root = tmp_path_factory.mktemp("text-exports")
    has_option = "pooling" in {f.name for f in dataclasses.fields(FitConfig)}
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        if not has_option:
            patch.setattr(hf_source, "text_source", lambda *a, **k: build(*a, **{**k, "pooling": "cls"}))
        for head, hidden in (("linear", 0), ("hidden", 16)):
            runs[head] = fit_run(text_table, root / head, f"hf:{tiny_bert_dir}", strategy="full", lr=1e-3,
                                 baseline="classical", head_hidden=hidden, **({"pooling": "cls"} if has_option else {}))
    for run in runs.values():
        assert json.loads((run / "config.json").read_text())["source"]["spec"]["pooling"] == "cls"
    return runs


def run_cli(*args: str) -> None:
    try:
        main([*args])
    except SystemExit as e:  # input errors exit with code 2
        assert e.code in (0, None), e


def predict_cli(run, inputs, out, capsys) -> tuple[list[dict], str]:
    capsys.readouterr()
    try:
        main(["predict", str(run), *map(str, inputs), "--output", str(out)])
    except SystemExit as e:
        assert e.code in (0, None)
    printed = capsys.readouterr().out
    with open(out, newline="") as f:
        return list(csv.DictReader(f)), printed


# -- transferkit predict ------------------------------------------------------------------------------


def test_predict_writes_every_class_probability_and_reports_speed(image_run, image_folder, tmp_path, capsys):
    from transferkit import load_run

    rows, printed = predict_cli(image_run, [image_folder], tmp_path / "p.csv", capsys)
    files = sorted(image_folder.rglob("*.png"))
    assert len(rows) == len(files) and "examples/s" in printed and f"Wrote {len(files)} predictions" in printed
    assert list(rows[0]) == ["input", "prediction", "p_0", "p_1", "p_2", "p_3"]
    proba = np.array([[float(r[f"p_{c}"]) for c in "0123"] for r in rows])
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert [r["prediction"] for r in rows] == ["0123"[i] for i in proba.argmax(1)]
    expected = load_run(image_run).predict_proba([r["input"] for r in rows])
    np.testing.assert_allclose(proba, expected, atol=1e-6)


# -- transformers ---------------------------------------------------------------------------------------

PLAIN_TRANSFORMERS = textwrap.dedent("""
    import json, sys
    sys.modules["transferkit"] = None  # importing transferkit here would fail: plain transformers only
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    request = json.load(open(sys.argv[1]))
    answer = {}
    for name, directory in request["exports"].items():
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
        batch = tokenizer(request["texts"], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            proba = model(**batch).logits.softmax(-1)
        answer[name] = {"labels": [model.config.id2label[i] for i in proba.argmax(-1).tolist()],
                        "proba": proba.tolist(), "id2label": model.config.id2label,
                        "label2id": model.config.label2id, "class": type(model).__name__,
                        "inputs": sorted(batch)}
    json.dump(answer, open(sys.argv[2], "w"))
""")


def test_hf_export_predicts_like_transferkit_predict_in_plain_transformers(first_token_text_run, text_table,
                                                                          tmp_path, capsys):
    from transferkit import load_run
    from transferkit.data import load_task_data

    test_texts = load_task_data(text_table, seed=0).test.examples
    table = tmp_path / "test-split.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["text"], *[[t] for t in test_texts]])
    exports, expected = {}, {}
    for head, run in first_token_text_run.items():
        rows, printed = predict_cli(run, [table], tmp_path / f"{head}.csv", capsys)
        assert [r["input"] for r in rows] == test_texts and "examples/s" in printed
        classes = load_run(run).classes["label"]
        expected[head] = ([r["prediction"] for r in rows],
                          np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows]))
        exports[head] = str(tmp_path / f"hf-{head}")
        run_cli("export", str(run), "--format", "hf", "--out", exports[head])

    request, answer_path = tmp_path / "request.json", tmp_path / "answer.json"
    request.write_text(json.dumps({"exports": exports, "texts": test_texts}))
    script = tmp_path / "plain_transformers.py"
    script.write_text(PLAIN_TRANSFORMERS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(script), str(request), str(answer_path)], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(answer_path.read_text())
    assert answer["linear"]["class"] == "XLMForSequenceClassification"
    assert answer["hidden"]["class"] == "ElectraForSequenceClassification"
    assert answer["linear"]["inputs"] == ["attention_mask", "input_ids"]  # no token_type_ids for XLM
    for head, (labels, proba) in expected.items():
        got = answer[head]
        assert got["id2label"] == {"0": "ham", "1": "spam"} and got["label2id"] == {"ham": 0, "spam": 1}
        assert got["labels"] == labels, head
        np.testing.assert_allclose(np.array(got["proba"]), proba, atol=1e-5)  # the CSV keeps 6 decimals
    card = (tmp_path / "hf-linear" / "README.md").read_text()
    for part in ("## Results", "no-transfer baseline (tfidf_logreg)", "## Source model and licence",
                 "## Intended use", "## Limits", "AutoModelForSequenceClassification.from_pretrained"):
        assert part in card, part


def test_hf_export_refuses_what_it_cannot_reproduce_exactly(first_token_text_run, image_run, tmp_path):
    mean_run = tmp_path / "mean-run"
    shutil.copytree(first_token_text_run["linear"], mean_run)
    config = json.loads((mean_run / "config.json").read_text())
    config["source"]["spec"]["pooling"] = "mean"
    (mean_run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"mean-pools the token states.*`--format sentence-transformers`.*"
                                          r"`--format onnx`.*`--pooling cls`"):
        export_run(mean_run, "hf", tmp_path / "out")
    with pytest.raises(ExportError, match=r"`--format hf` is for text runs; this run is 'image'"):
        export_run(image_run, "hf", tmp_path / "out")
    with pytest.raises(ExportError, match=r"`--format` must be one of .* Did you mean 'onnx'"):
        export_run(image_run, "onxx", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- sentence-transformers -------------------------------------------------------------------------------

#: Files that may hold pickles (code that runs on load); an export has none.
PICKLE_SUFFIXES = {".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib"}

PLAIN_SENTENCE_TRANSFORMERS = textwrap.dedent("""
    import json, re, sys
    sys.modules["transferkit"] = None  # importing transferkit here fails: plain libraries only
    try:
        import transferkit  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("transferkit was importable")
    import torch
    from sentence_transformers import SentenceTransformer

    request = json.load(open(sys.argv[1]))
    answer = {}
    for name, directory in request["exports"].items():
        model = SentenceTransformer(directory, device="cpu", trust_remote_code=False, local_files_only=True)
        logits = model.encode(request["texts"], convert_to_tensor=True)
        got = {"logits": logits.tolist(), "modules": [type(m).__name__ for m in model], "card": {}}
        # every snippet of the model card, as written, on the same texts
        card = open(f"{directory}/README.md").read()
        for i, block in enumerate(re.findall(r"```python\\n(.*?)```", card, re.S)):
            code = block.replace("path/to/this/directory", directory).replace(
                '["first text", "second text"]', repr(request["texts"]))
            scope = {}
            exec(code, scope)
            got["card"][str(i)] = scope["proba"].tolist()
        answer[name] = got
    json.dump(answer, open(sys.argv[2], "w"))
""")


@pytest.fixture(scope="module")
def mean_text_runs(text_table, tiny_bert_dir, tmp_path_factory):
    """The default text flow, ``transferkit fit mail.csv --source minilm``, on a tiny stand-in for minilm.

    The source is the tiny BERT saved as minilm is (sentence-transformers Transformer -> mean Pooling ->
    Normalize, loaded through ``st:``), so the runs mean-pool. ``default``: every option at its default
    (linear probe); ``hidden``: LoRA adapters (merged into the encoder by the export) and a Linear-GELU-Linear head.
    """
    from sentence_transformers import SentenceTransformer, models

    root = tmp_path_factory.mktemp("mean-exports")
    st_dir = root / "tiny-minilm"
    transformer = models.Transformer(str(tiny_bert_dir), max_seq_length=24)
    pooling = models.Pooling(transformer.auto_model.config.hidden_size, pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu").save(str(st_dir))
    runs = {"default": fit_run(text_table, root / "default", f"st:{st_dir}"),
            "hidden": fit_run(text_table, root / "hidden", f"st:{st_dir}", strategy="lora", lr=1e-2, head_hidden=16)}
    for run in runs.values():
        assert json.loads((run / "config.json").read_text())["source"]["spec"]["pooling"] == "mean"
    return runs


def test_sentence_transformers_export_predicts_like_transferkit_predict_without_transferkit(
        mean_text_runs, first_token_text_run, text_table, tmp_path, capsys):
    from transferkit import load_run
    from transferkit.data import load_task_data
    from transferkit.export.common import run_logits
    from transferkit.sources.sentence_transformers import refuse_custom_modules

    # the test split, and texts longer than the run's 24-token limit (truncation must match too)
    texts = [*load_task_data(text_table, seed=0).test.examples, " ".join(["win cash prize"] * 20),
             " ".join(f"meeting {i} notes" for i in range(15))]
    table = tmp_path / "texts.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["text"], *[[t] for t in texts]])
    runs = {**mean_text_runs, "cls-hidden": first_token_text_run["hidden"]}
    exports, expected = {}, {}
    for name, run in runs.items():
        rows, _ = predict_cli(run, [table], tmp_path / f"{name}.csv", capsys)
        assert [r["input"] for r in rows] == texts
        loaded = load_run(run)
        classes = loaded.classes["label"]
        expected[name] = ([r["prediction"] for r in rows],
                          np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows]),
                          run_logits(loaded, texts).numpy())
        exports[name] = str(tmp_path / f"st-{name}")
        run_cli("export", str(run), "--format", "st" if name == "hidden" else "sentence-transformers",
                "--out", exports[name])

    for name, directory in exports.items():
        files = [p for p in (tmp_path / f"st-{name}").rglob("*") if p.is_file()]
        assert not [p for p in files if p.suffix in PICKLE_SUFFIXES], name
        assert {p.name for p in files if p.suffix == ".safetensors"} == {"model.safetensors"}
        for path in files:
            if path.suffix == ".json":
                assert "auto_map" not in path.read_text(), path
        modules = json.loads((tmp_path / f"st-{name}" / "modules.json").read_text())
        assert all(m["type"].startswith("sentence_transformers.models.") for m in modules)
        refuse_custom_modules(directory, directory)  # transferkit's own check of strangers' folders passes
        assert json.loads((tmp_path / f"st-{name}" / "labels.json").read_text())["classes"] == ["ham", "spam"]

    request, answer_path = tmp_path / "request.json", tmp_path / "answer.json"
    request.write_text(json.dumps({"exports": exports, "texts": texts}))
    script = tmp_path / "plain_sentence_transformers.py"
    script.write_text(PLAIN_SENTENCE_TRANSFORMERS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-I", str(script), str(request), str(answer_path)], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(answer_path.read_text())
    assert answer["default"]["modules"] == ["Transformer", "Pooling", "Dense"]
    for name in ("hidden", "cls-hidden"):
        assert answer[name]["modules"] == ["Transformer", "Pooling", "Dense", "Dense"], name
    for name, (labels, proba, logits) in expected.items():
        got = answer[name]
        np.testing.assert_allclose(np.array(got["logits"]), logits, atol=1e-5, err_msg=name)
        assert len(got["card"]) == 2, name  # sentence-transformers, then transformers + safetensors alone
        for snippet, card_proba in got["card"].items():
            card_proba = np.array(card_proba)
            assert [["ham", "spam"][i] for i in card_proba.argmax(1)] == labels, (name, snippet)
            np.testing.assert_allclose(card_proba, proba, atol=1e-5, err_msg=f"{name}, card snippet {snippet}")
    card = (tmp_path / "st-default" / "README.md").read_text()
    for part in ("library_name: sentence-transformers", "## Results", "## Limits", "SentenceTransformer(",
                 "Pooling (mean)", "AutoModel.from_pretrained"):
        assert part in card, part


@pytest.mark.slow
def test_default_minilm_run_exports_to_sentence_transformers(text_table, tmp_path, capsys):
    """The issue's flow, with the real packaged minilm: `fit --source minilm`, `export`, load without transferkit."""
    run, out = tmp_path / "mail", tmp_path / "exported"
    run_cli("fit", str(text_table), "--source", "minilm", "--baseline", "none", "--out", str(run))
    texts = ["win cash prize now", "team meeting notes for the project report", "free offer click"]
    table = tmp_path / "texts.csv"
    table.write_text("text\n" + "\n".join(texts) + "\n")
    rows, _ = predict_cli(run, [table], tmp_path / "p.csv", capsys)
    run_cli("export", str(run), "--format", "sentence-transformers", "--out", str(out))
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["transferkit"] = None
        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer({str(out)!r}, device="cpu", trust_remote_code=False, local_files_only=True)
        print(json.dumps(model.encode({texts!r}, convert_to_tensor=True).softmax(-1).tolist()))
    """)
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    proba = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(proba, [[float(r["p_ham"]), float(r["p_spam"])] for r in rows], atol=1e-5)
    assert [["ham", "spam"][i] for i in proba.argmax(1)] == [r["prediction"] for r in rows]


def test_sentence_transformers_export_refuses_what_it_cannot_reproduce(mean_text_runs, image_run, tmp_path):
    with pytest.raises(ExportError, match=r"`--format sentence-transformers` is for text runs; this run is 'image'"):
        export_run(image_run, "st", tmp_path / "out")
    cut = tmp_path / "cut-run"
    shutil.copytree(mean_text_runs["default"], cut)
    config = json.loads((cut / "config.json").read_text())
    config["fit"]["cut_at"] = "encoder.layer.0"
    (cut / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"cuts the encoder \(`--cut-at encoder.layer.0`\).*`--format onnx`"):
        export_run(cut, "sentence-transformers", tmp_path / "out")
    with pytest.raises(ExportError, match=r"Did you mean 'sentence-transformers'"):
        export_run(mean_text_runs["default"], "sentence-transformer", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- timm / torchvision ---------------------------------------------------------------------------------


def _run_inputs(run_dir, files):
    from transferkit import load_run
    from transferkit.sources.inputs import input_pipeline

    run = load_run(run_dir)
    pipe = input_pipeline(run.source, train=False)
    x = torch.stack([pipe.load(f) for f in files])
    with torch.no_grad():
        return run, x, run.model(pixel_values=x)["label"]


def test_timm_export_loads_with_timm_create_model(image_run, image_folder, tmp_path):
    import timm
    from safetensors.torch import load_file

    out = tmp_path / "timm"
    result = export_run(image_run, "timm", out)
    assert result.architecture == "timm.create_model('test_efficientnet', num_classes=4)"
    files = sorted(image_folder.rglob("*.png"))[:8]
    _, x, logits = _run_inputs(image_run, files)
    model = timm.create_model("test_efficientnet", num_classes=4)  # the README's lines
    model.load_state_dict(load_file(out / "model.safetensors"))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, rtol=0, atol=1e-6)
    if (out / "config.json").is_file():  # timm's own layout: create_model("local-dir:...") works too
        again = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(again(x), logits, rtol=0, atol=1e-6)
        assert json.loads((out / "config.json").read_text())["label_names"] == ["0", "1", "2", "3"]
    card = (out / "README.md").read_text()
    assert "timm.create_model('test_efficientnet', num_classes=4)" in card and "load_state_dict" in card
    assert "T.Normalize(" in card and "## Limits" in card and "apache-2.0" in card.lower()


def test_torchvision_export_loads_with_get_model(image_folder, tmp_path):
    import torchvision
    from safetensors.torch import load_file

    run_dir = fit_run(image_folder, tmp_path / "tv-run", "torchvision:mobilenet_v3_small@random",
                      strategy="linear_probe")
    out = tmp_path / "tv"
    result = export_run(run_dir, "torchvision", out)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-6
    _, x, logits = _run_inputs(run_dir, sorted(image_folder.rglob("*.png"))[:8])
    model = torchvision.models.get_model("mobilenet_v3_small", num_classes=4)
    model.load_state_dict(load_file(out / "model.safetensors"))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, rtol=0, atol=1e-6)
    assert "torchvision.models.get_model('mobilenet_v3_small', num_classes=4)" in (out / "README.md").read_text()


def test_image_weight_exports_refuse_other_architectures_and_hidden_heads(image_run, tmp_path):
    with pytest.raises(ExportError, match=r"needs a run on a torchvision architecture.*`--format timm`"):
        export_run(image_run, "torchvision", tmp_path / "a")
    hidden = tmp_path / "hidden"
    shutil.copytree(image_run, hidden)
    config = json.loads((hidden / "config.json").read_text())
    config["fit"]["head_hidden"] = 8
    (hidden / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"head has a hidden layer \(`--head-hidden 8`\)"):
        export_run(hidden, "timm", tmp_path / "b")


# -- ONNX -------------------------------------------------------------------------------------------------


def test_onnx_export_matches_pytorch_under_onnxruntime(image_run, first_token_text_run, image_folder, text_table,
                                                       tmp_path):
    import onnxruntime as ort

    from transferkit import load_run
    from transferkit.data import load_task_data

    diffs = {}
    # image: the run's own preprocessing of real images, a batch size the export never saw
    out = tmp_path / "onnx-image"
    run_cli("export", str(image_run), "--format", "onnx", "--out", str(out))
    _, x, logits = _run_inputs(image_run, sorted(image_folder.rglob("*.png"))[:7])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"pixel_values": x.numpy()})[0]
    diffs["image"] = float(np.abs(got - logits.numpy()).max())
    # text: the test split, tokenised by the exported tokenizer, padded to the longest
    out = tmp_path / "onnx-text"
    result = export_run(first_token_text_run["hidden"], "onnx", out)
    assert result.max_abs_diff is not None and result.max_abs_diff <= ONNX_TOLERANCE
    from transformers import AutoTokenizer

    texts = load_task_data(text_table, seed=0).test.examples
    enc = AutoTokenizer.from_pretrained(out)(texts, padding=True, truncation=True, return_tensors="np")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]
    run = load_run(first_token_text_run["hidden"])
    expected = torch.log_softmax(torch.as_tensor(got), -1).exp().numpy()
    np.testing.assert_allclose(expected, run.predict_proba(texts), atol=ONNX_TOLERANCE)
    with torch.no_grad():
        ours = run.model(input_ids=torch.as_tensor(enc["input_ids"]),
                         attention_mask=torch.as_tensor(enc["attention_mask"]))["label"].numpy()
    diffs["text"] = float(np.abs(got - ours).max())
    print(f"ONNX max abs difference of the logits: {diffs}")
    assert max(diffs.values()) <= ONNX_TOLERANCE, diffs
    card = (out / "README.md").read_text()
    assert "onnxruntime" in card and "Max absolute difference" in card
    assert json.loads((out / "labels.json").read_text())["classes"] == ["ham", "spam"]
