"""The spine end to end: fit -> run directory -> load_run -> predict / evaluate / run: source."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FAST, TINY_IMAGE_SOURCE

from transferkit import fit, load_run
from transferkit.strategies import get_strategy, list_strategies


def test_fit_writes_a_complete_run_directory(image_folder, tmp_path):
    out = tmp_path / "run"
    run = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="linear_probe", out=out, verbose=False,
              **{**FAST, "baseline": "classical"})
    for name in ("model.safetensors", "config.json", "metrics.json", "report.md", "history.json", "transfer_map.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "test_macro_f1", "baseline_test_accuracy", "source", "strategy", "train_seconds"):
        assert key in metrics
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert len(metrics["test_confusion_matrix"]) == 4
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["id"] == TINY_IMAGE_SOURCE and config["fit"]["seed"] == 0
    assert config["classes"]["label"] == ["0", "1", "2", "3"] and "torch" in config["versions"]
    # transfer map: backbone tensors come from the source, head tensors are fresh, only the head trains
    tmap = json.loads((out / "transfer_map.json").read_text())
    assert {e["origin"] for e in tmap if e["tensor"].startswith("heads.")} == {"fresh"}
    assert not any(e["trainable"] for e in tmap if e["tensor"].startswith("backbone."))
    assert metrics["transfer"]["trainable_parameters"] == sum(
        p.numel() for p in run.model.heads.parameters())
    assert "Transfer" in (out / "report.md").read_text()


def test_random_init_source_gets_batchnorm_statistics_from_the_train_split(image_folder):
    from transferkit.config import FitConfig
    from transferkit.data import load_task_data
    from transferkit.features import examples_fingerprint
    from transferkit.training import prepare_source
    from transferkit.sources import load_source
    from transferkit.sources.base import batchnorm_layers

    task = load_task_data(image_folder)
    torch.manual_seed(0)
    src = prepare_source(load_source(TINY_IMAGE_SOURCE), FitConfig(image_size=32), task)
    assert not src.stale_statistics and src.statistics_fingerprint == examples_fingerprint(task.train.examples)
    assert all(not bool((bn.running_var == 1).all()) for bn in batchnorm_layers(src.backbone))


def test_reloaded_run_predicts_identically(image_folder, tmp_path):
    out = tmp_path / "run"
    run = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="full", out=out, verbose=False, **FAST)
    files = sorted(image_folder.rglob("*.png"))[:6]
    again = load_run(out)
    np.testing.assert_allclose(run.predict_proba(files), again.predict_proba(files), rtol=0, atol=1e-6)
    assert again.predict(files) == run.predict(files)
    m = again.evaluate(image_folder)
    assert m["accuracy"] == pytest.approx(run.metrics["test_accuracy"])


def test_same_seed_same_weights(image_folder):
    a = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="full", verbose=False, **FAST)
    b = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="full", verbose=False, **FAST)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_run_directory_is_a_source(image_folder, tmp_path):
    out = tmp_path / "source-run"
    first = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="full", out=out, verbose=False, **FAST)
    second = fit(image_folder, source=f"run:{out}", strategy="linear_probe", verbose=False, **FAST)
    a = first.model.backbone.state_dict()
    # the new run starts from the first run's trained shared layers, and linear_probe keeps them
    for k, v in second.model.backbone.state_dict().items():
        assert torch.equal(v, a[k]), k
    assert second.source.head is not None  # the source task's head, usable for LEEP/NCE


def test_text_fit_with_tiny_bert(text_table, tiny_bert_dir, tmp_path):
    run = fit(text_table, source=f"hf:{tiny_bert_dir}", strategy="full", out=tmp_path / "t", verbose=False,
              **{**FAST, "baseline": "classical", "lr": 1e-3})
    assert run.metrics["baseline"] == "tfidf_logreg"
    assert "baseline_test_accuracy" in run.metrics
    again = load_run(tmp_path / "t")
    texts = ["win cash prize", "team lunch meeting"]
    np.testing.assert_allclose(run.predict_proba(texts), again.predict_proba(texts), atol=1e-6)


@pytest.mark.parametrize("strategy", [name for name, _ in list_strategies() if get_strategy(name).takes("image")])
def test_every_strategy_trains_and_reloads(strategy, image_folder, tmp_path):
    out = tmp_path / strategy
    run = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy=strategy, out=out, verbose=False, **FAST)
    assert run.metrics["transfer"]["trainable_parameters"] > 0
    assert all(s["trainable_parameters"] > 0 for s in run.metrics["stages"])
    files = sorted(image_folder.rglob("*.png"))[:4]
    np.testing.assert_allclose(run.predict_proba(files), load_run(out).predict_proba(files), atol=1e-6)


def test_wise_ft_records_alpha_and_curve(image_folder, tmp_path):
    run = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="full", out=tmp_path / "w", verbose=False,
              **{**FAST, "wise_ft": True})
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert 0.0 <= metrics["wise_ft_alpha"] <= 1.0
    assert [a for a, _ in metrics["wise_ft_curve"]] == pytest.approx([i / 10 for i in range(11)])
    best = max(acc for _, acc in metrics["wise_ft_curve"])
    assert dict(map(tuple, metrics["wise_ft_curve"]))[metrics["wise_ft_alpha"]] == best
    assert run.metrics["wise_ft_alpha"] == metrics["wise_ft_alpha"]


def test_wise_ft_per_group_chooses_an_alpha_per_layer_group(image_folder, tmp_path):
    run = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="full", out=tmp_path / "g", verbose=False,
              **{**FAST, "wise_ft": True, "wise_ft_per_group": True})
    alphas = run.metrics["wise_ft_group_alphas"]
    groups = [g.name for g in run.source.layer_groups]
    assert len(alphas) >= 2 and set(alphas) <= set(groups)
    assert all(a in [i / 10 for i in range(11)] for a in alphas.values())
    # the global sweep comes first and is what the curve shows; the per-group search can only improve on it
    assert [a for a, _ in run.metrics["wise_ft_curve"]] == pytest.approx([i / 10 for i in range(11)])
    wise = next(s for s in run.metrics["stages"] if s["stage"] == "wise_ft")
    assert wise["best_val_accuracy"] >= max(acc for _, acc in run.metrics["wise_ft_curve"])


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_init_mix_endpoints(image_folder, beta):
    """β = 0 starts from the source exactly; β = 1 from a fresh random initialisation."""
    from transferkit.sources import load_source

    source = load_source("efficientnet_lite0").backbone.state_dict()
    run = fit(image_folder, source="efficientnet_lite0", strategy="linear_probe", verbose=False,
              **{**FAST, "init_mix": beta})
    key = "model.conv_stem.weight"
    trained = run.model.backbone.state_dict()[key]
    assert torch.equal(trained, source[key]) == (beta == 0.0)
    assert run.metrics["transfer"]["by_origin"].keys() >= ({"mixed"} if beta else {"source"})


def test_init_mix_estimates_the_blends_batchnorm_statistics(image_folder):
    """Blended running statistics describe neither network; the blend's own are estimated instead."""
    from transferkit.sources import load_source

    source = load_source("efficientnet_lite0").backbone.state_dict()
    run = fit(image_folder, source="efficientnet_lite0", strategy="linear_probe", verbose=False,
              **{**FAST, "init_mix": 0.5})
    key = "model.bn1.running_var"  # the frozen backbone keeps the statistics it started with
    blend = 0.5 * source[key] + 0.5  # a fresh BatchNorm layer's placeholder variance is 1
    assert not torch.allclose(run.model.backbone.state_dict()[key], blend)
    assert not torch.allclose(run.model.backbone.state_dict()[key], source[key])


def test_cut_at_uses_intermediate_features_and_reloads(image_folder, tmp_path):
    out = tmp_path / "cut"
    run = fit(image_folder, source="torchvision:resnet18@random", strategy="full", out=out, verbose=False,
              **{**FAST, "cut_at": "model.layer2.1"})
    assert run.source.feature_dim == 128  # resnet18's layer2 width
    names = [n for n, _ in run.model.named_parameters()]
    assert not any(".layer3." in n or ".layer4." in n for n in names), "layers after the cut are removed"
    files = sorted(image_folder.rglob("*.png"))[:4]
    np.testing.assert_allclose(run.predict_proba(files), load_run(out).predict_proba(files), atol=1e-6)


def test_reinit_replaces_source_weights(image_folder):
    from transferkit.sources import load_source

    source = load_source("efficientnet_lite0").backbone.state_dict()
    run = fit(image_folder, source="efficientnet_lite0", strategy="linear_probe", verbose=False,
              **{**FAST, "reinit": ["group16"]})
    state = run.model.backbone.state_dict()
    assert not torch.equal(state["model.conv_head.weight"], source["model.conv_head.weight"])
    assert torch.equal(state["model.conv_stem.weight"], source["model.conv_stem.weight"])
    assert run.metrics["transfer"]["by_origin"]["fresh"]["parameters"] > sum(p.numel() for p in run.model.heads.parameters())


def test_shared_layers_with_two_task_heads(tmp_path, tiny_bert_dir):
    """Two label columns of one table: one backbone, two heads, saved and reloaded together."""
    import pandas as pd

    from conftest import WORDS
    from transferkit.predict import write_predictions

    rng = np.random.default_rng(1)
    rows = [{"text": " ".join(rng.choice(WORDS[kind], 4)), "kind": kind, "urgent": ["no", "yes"][i % 2]}
            for kind in WORDS for i in range(20)]
    table = tmp_path / "two.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    out = tmp_path / "multi"
    run = fit(table, source=f"hf:{tiny_bert_dir}", strategy="full", out=out, verbose=False,
              **{**FAST, "label_column": "kind,urgent", "task_weights": {"urgent": 0.5}, "lr": 1e-3})
    assert list(run.classes) == ["kind", "urgent"] and set(run.model.heads) == {"kind", "urgent"}
    assert set(run.metrics["tasks"]) == {"kind", "urgent"}
    assert run.metrics["test_accuracy"] == run.metrics["tasks"]["kind"]["accuracy"]
    again = load_run(out)
    texts = ["win cash prize", "team lunch meeting"]
    for task in ("kind", "urgent"):
        np.testing.assert_allclose(run.predict_proba(texts, task), again.predict_proba(texts, task), atol=1e-6)
    csv_path = tmp_path / "p.csv"
    write_predictions(csv_path, texts, {t: again.predict_proba(texts, t) for t in again.classes}, again.classes)
    header = csv_path.read_text().splitlines()[0]
    assert header == "input,kind_prediction,kind_p_ham,kind_p_spam,urgent_prediction,urgent_p_no,urgent_p_yes"


def test_unknown_task_weight_is_named(text_table):
    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`--task-weight` names unknown task\(s\) \['topic'\]"):
        fit(text_table, source="minilm", verbose=False, **{**FAST, "task_weights": {"topic": 1.0}})


@pytest.mark.parametrize("greedy", [True, False])
def test_soup_of_runs_from_one_source(image_folder, tmp_path, greedy):
    from transferkit.merging import uniform_soup
    from transferkit.pipeline import soup

    dirs = []
    for seed in (0, 1):
        dirs.append(tmp_path / f"r{seed}")
        fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="full", out=dirs[-1], verbose=False,
            **{**FAST, "seed": seed})
    result = soup(dirs, image_folder, out=tmp_path / "soup", greedy=greedy)
    assert (tmp_path / "soup" / "model.safetensors").is_file()
    info = result.metrics["soup"]
    assert info["kind"] == ("greedy" if greedy else "uniform") and 1 <= len(info["used"]) <= 2
    if not greedy:
        expected = uniform_soup([load_run(d).model.state_dict() for d in dirs])
        for k, v in load_run(tmp_path / "soup").model.state_dict().items():
            assert torch.allclose(v.float(), expected[k].float()), k


def test_lora_run_is_a_source_and_supports_wise_ft(image_folder, tmp_path):
    """A LoRA run transfers as a plain backbone (adapters merged) and chooses a WiSE-FT alpha."""
    out = tmp_path / "lora"
    run = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="lora", out=out, verbose=False,
              **{**FAST, "wise_ft": True})
    assert 0.0 <= run.metrics["wise_ft_alpha"] <= 1.0
    second = fit(image_folder, source=f"run:{out}", strategy="full", out=tmp_path / "second", verbose=False, **FAST)
    assert not any("lora_" in n for n, _ in second.model.named_parameters())
    files = sorted(image_folder.rglob("*.png"))[:4]
    np.testing.assert_allclose(second.predict_proba(files), load_run(tmp_path / "second").predict_proba(files),
                               atol=1e-6)


def test_wise_ft_on_lora_interpolates_merged_weights_exactly():
    from torch import nn

    from transferkit.config import FitConfig
    from transferkit.merging import interpolate
    from transferkit.sources.base import LayerGroup
    from transferkit.strategies.lora import LoRA, merged_backbone
    from transferkit.surgery.target import TargetModel

    torch.manual_seed(0)
    model = TargetModel(nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4)), {"label": nn.Linear(4, 2)},
                        [LayerGroup("0", ["0.weight", "0.bias"]), LayerGroup("1", ["1.weight", "1.bias"])])
    strategy = LoRA(FitConfig(strategy="lora", lora_r=2))
    strategy.prepare(model)
    start = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with torch.no_grad():  # a "fine-tuned" adapter
        for name, p in model.backbone.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p))
    tuned = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    w0, w1 = (merged_backbone(_with(model, sd))[0].weight.detach().clone() for sd in (start, tuned))
    mixed = interpolate(start, tuned, 0.3, keys=strategy.wise_ft_keys(start))
    torch.testing.assert_close(merged_backbone(_with(model, mixed))[0].weight, 0.7 * w0 + 0.3 * w1)


def _with(model, state):
    model.backbone.load_state_dict(state)
    return model.backbone


def test_source_auto_chooses_among_candidates_and_reports_it(image_folder, tmp_path):
    candidates = ["timm:test_efficientnet@random", "timm:test_vit@random"]
    run = fit(image_folder, source="auto", strategy="linear_probe", out=tmp_path / "auto", verbose=False,
              **{**FAST, "candidates": candidates})
    selection = run.metrics["selection"]
    assert run.metrics["source"] in candidates and selection["choice"] == run.metrics["source"]
    assert {r["source"] for r in selection["ranking"]} == set(candidates)
    assert all(0.0 <= r["cv_accuracy"] <= 1.0 for r in selection["ranking"])
    assert selection["chosen_strategy"] == "linear_probe" and selection["rounds"] == []
