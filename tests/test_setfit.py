"""The `setfit` strategy: SetFit's pairs, contrastive tuning of the text encoder, then a head.

On the tiny BERT of conftest (random weights, word-level vocabulary) and the spam/ham toy table:
the pairs are SetFit's and come from the train split only, seeded; the tuning moves exactly the
unfrozen shared layers, brings same-class texts closer than different-class ones, and is recorded
in the run's stages; the run saves, reloads, predicts the same and serves as a `run:` source.
Non-text sources are refused.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transferkit import fit, load_run
from transferkit.config import FitConfig
from transferkit.data import load_task_data
from transferkit.engine import Trainer
from transferkit.errors import ConfigError
from transferkit.sources import load_source
from transferkit.sources.inputs import input_pipeline
from transferkit.strategies import get_strategy
from transferkit.strategies import setfit as setfit_module
from transferkit.strategies.setfit import CPU_FLOPS, MAX_PAIRS, SETFIT_ITERATIONS, contrastive_pairs, pair_cap
from transferkit.surgery import DEFAULT_TASK, build_target_model

#: Options that make the tiny random BERT learn within one epoch of pairs.
OPTIONS = {"strategy": "setfit", "lr": 5e-3, "baseline": "none", "seed": 0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run faster on one thread of 2 busy cores


@pytest.fixture(scope="module")
def bert(tiny_bert_dir):
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(tiny_bert_dir)) > 5, "conftest's tiny BERT must know its words"
    return f"hf:{tiny_bert_dir}"


def embed(backbone, texts, src) -> torch.Tensor:
    pipe = input_pipeline(src)
    backbone.eval()
    with torch.no_grad():
        return F.normalize(backbone(**pipe.collate([pipe.load(t) for t in texts])), dim=-1)


def class_gap(emb: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """Mean cosine similarity of distinct same-class pairs and of different-class pairs."""
    sim = emb @ emb.T
    y = torch.as_tensor(labels)
    same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)
    diff = y[:, None] != y[None, :]
    return sim[same].mean().item(), sim[diff].mean().item()


@pytest.fixture(scope="module")
def tuned(text_table, bert):
    """One direct run (first layer group frozen): the model before and after, the trainer, the pairs."""
    task = load_task_data(text_table, seed=0)
    src = load_source(bert)
    cfg = FitConfig.from_dict({**OPTIONS, "freeze": [src.layer_groups[0].name]})
    torch.manual_seed(0)
    model = build_target_model(src, {DEFAULT_TASK: task.num_classes})
    before = copy.deepcopy(model)
    trainer = Trainer(cfg, task, src, verbose=False)
    quiet, bar = setfit_module._trainer_classes()
    pairs = []

    class Capturing(quiet):  # sentence-transformers' trainer, keeping the pairs it is handed
        def __init__(self, *args, train_dataset=None, **kwargs):
            pairs.append(train_dataset)
            super().__init__(*args, train_dataset=train_dataset, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(setfit_module, "_trainer_classes", lambda: (Capturing, bar))
        get_strategy("setfit")(cfg).train(model, trainer)
    return SimpleNamespace(task=task, src=src, cfg=cfg, before=before, model=model, trainer=trainer,
                           pairs=pairs[0])


# -- pairs ------------------------------------------------------------------------------------------


def test_pairs_are_setfits_sized_to_the_examples_and_capped():
    labels = np.array([0] * 8 + [1] * 8)
    first, second, same = contrastive_pairs(labels, seed=0)
    assert len(first) == 2 * SETFIT_ITERATIONS * 16  # one positive and one negative per example per round
    assert same.sum() == len(same) / 2
    np.testing.assert_array_equal(same, (labels[first] == labels[second]).astype(np.float32))
    assert not (first == second).any()  # a positive partner is another example of the class
    # every example anchors exactly 2 pairs per round
    np.testing.assert_array_equal(np.bincount(first), np.full(16, 2 * SETFIT_ITERATIONS))
    many = np.arange(600) % 2
    assert len(contrastive_pairs(many, seed=0)[0]) == MAX_PAIRS
    assert len(contrastive_pairs(many, seed=0, max_pairs=37)[0]) == 37


def test_on_a_cpu_the_pairs_fit_the_compute_budget():
    # an embedding table (lookups: free) and one 100 x 100 linear layer
    encoder = torch.nn.Sequential(torch.nn.Embedding(1000, 100), torch.nn.Linear(100, 100))
    per_pair = 6 * (100 * 100 + 100) * 2 * 50  # forward + backward of both 50-token texts
    assert pair_cap(encoder, [40, 60], "cpu", cpu_flops=per_pair * 123) == (123, f"cpu budget ({per_pair * 123:.0e} FLOPs)")
    assert pair_cap(encoder, [40, 60], "cpu", max_pairs=99, cpu_flops=per_pair * 123) == (99, "max_pairs")
    assert pair_cap(encoder, [40, 60], "cuda", cpu_flops=per_pair * 123) == (MAX_PAIRS, "max_pairs")
    # all-MiniLM-L6-v2 (10.6 M non-embedding parameters) on 256-token emails: ~305 pairs, ~2 minutes on 2 cores
    assert int(CPU_FLOPS // (6 * 10_647_552 * 2 * 256)) == 305


def test_pairs_follow_the_seed_and_cope_with_tiny_classes():
    labels = np.array([0, 0, 0, 1, 1, 2])
    a, b = contrastive_pairs(labels, seed=3), contrastive_pairs(labels, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = contrastive_pairs(labels, seed=4)
    assert not np.array_equal(a[1], c[1])
    # a class of one pairs with itself as its positive; one class only: positives only
    first, second, same = contrastive_pairs(labels, seed=0)
    assert set(second[(first == 5) & (same == 1)]) == {5}
    assert contrastive_pairs(np.zeros(4, dtype=int), seed=0)[2].tolist() == [1.0] * 4 * SETFIT_ITERATIONS


def test_the_pairs_come_from_the_train_split_only(tuned):
    train = set(tuned.task.train.examples)
    texts = set(tuned.pairs["sentence1"]) | set(tuned.pairs["sentence2"])
    assert texts <= train
    assert not texts & (set(tuned.task.val.examples) | set(tuned.task.test.examples))
    n = len(tuned.task.train)
    assert len(tuned.pairs) == 2 * SETFIT_ITERATIONS * n  # a tiny model: SetFit's pairs, uncapped
    assert tuned.trainer.stages[0]["pairs_cap_by"] == "max_pairs"
    label_of = dict(zip(tuned.task.train.examples, tuned.task.train.labels))
    assert [float(label_of[a] == label_of[b]) for a, b in zip(tuned.pairs["sentence1"], tuned.pairs["sentence2"])] \
        == tuned.pairs["label"]


# -- what trains, and what it learns ------------------------------------------------------------------


def test_tuning_moves_the_unfrozen_encoder_and_the_head_is_fitted(tuned):
    before = dict(tuned.before.named_parameters())
    changed = {n for n, p in tuned.model.named_parameters() if not torch.equal(p.detach(), before[n].detach())}
    frozen = {f"backbone.{p}" for p in tuned.src.layer_groups[0].params}
    encoder = {n for n, _ in tuned.model.named_parameters() if n.startswith("backbone.")} - frozen
    heads = {n for n, _ in tuned.model.named_parameters() if n.startswith("heads.")}
    assert changed == encoder | heads
    # the backbone keeps its structure: the same tensors under the same names as the source's
    assert list(tuned.model.backbone.state_dict()) == list(tuned.before.backbone.state_dict())


def test_same_class_texts_grow_closer_than_different_class_ones(tuned):
    texts, labels = tuned.task.test.examples, tuned.task.test.labels  # held out from the pairs
    same0, diff0 = class_gap(embed(tuned.before.backbone, texts, tuned.src), labels)
    same1, diff1 = class_gap(embed(tuned.model.backbone, texts, tuned.src), labels)
    assert same1 > diff1 + 0.2, (same1, diff1)
    assert same1 - diff1 > 5 * (same0 - diff0), ((same0, diff0), (same1, diff1))


def test_the_stages_record_what_was_done(tuned):
    pairs_stage, head_stage = tuned.trainer.stages
    n = len(tuned.task.train)
    assert pairs_stage["stage"] == "setfit" and head_stage["stage"] == "linear_probe"
    assert pairs_stage["pairs"] == len(tuned.pairs) == pairs_stage["positive_pairs"] + pairs_stage["negative_pairs"]
    assert pairs_stage["optimizer_steps"] == -(-pairs_stage["pairs"] // 16)
    encoder = sum(p.numel() for n_, p in tuned.model.backbone.named_parameters()
                  if f"backbone.{n_}" not in {f"backbone.{q}" for q in tuned.src.layer_groups[0].params})
    assert pairs_stage["trainable_parameters"] == encoder
    assert head_stage["trainable_parameters"] == sum(p.numel() for p in tuned.model.heads.parameters())
    assert pairs_stage["seconds"] > 0 and pairs_stage["lr"] == 5e-3
    assert pairs_stage["loss_last_quarter"] < pairs_stage["loss_first_quarter"]
    assert f"({n} examples)" in pairs_stage["pairs_from"]
    assert [r["stage"] for r in tuned.trainer.history] == ["setfit", "linear_probe"]


# -- the run ------------------------------------------------------------------------------------------


def test_run_saves_reloads_predicts_the_same_and_serves_as_a_source(text_table, bert, tmp_path, monkeypatch):
    monkeypatch.setattr("transferkit.evaluation.report.write_report", lambda run_dir, **kwargs: None)  # tested elsewhere
    run = fit(text_table, source=bert, out=tmp_path / "run", verbose=False, **{**OPTIONS, "strategy": "setfit"})
    assert run.metrics["test_accuracy"] >= 0.75
    assert [s["stage"] for s in run.metrics["stages"]] == ["setfit", "linear_probe"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["stages"][0]["pairs"] == run.metrics["stages"][0]["pairs"] > 0
    texts = ["win cash prize now", "team lunch meeting notes", "free report"]
    again = load_run(tmp_path / "run")
    np.testing.assert_array_equal(run.predict_proba(texts), again.predict_proba(texts))
    # the tuned shared layers, reused as the source of a linear probe, give the same features
    reuse = load_source(f"run:{tmp_path / 'run'}")
    src = load_source(bert)
    torch.testing.assert_close(embed(reuse.backbone, texts, src), embed(again.model.backbone, texts, src))


def test_non_text_sources_are_refused():
    for modality in ("image", "sequence", "audio"):
        trainer = SimpleNamespace(task=SimpleNamespace(modality=modality), train_set=SimpleNamespace(pipeline=None))
        with pytest.raises(ConfigError, match=rf"`--strategy setfit` .* takes {modality} inputs\. .*"
                                              r"`--strategy linear_probe`"):
            get_strategy("setfit")(FitConfig(strategy="setfit")).train(None, trainer)


def test_a_run_killed_after_the_pairs_resumes_without_tuning_again(text_table, bert, tmp_path, monkeypatch):
    monkeypatch.setattr("transferkit.evaluation.report.write_report", lambda run_dir, **kwargs: None)
    options = {**OPTIONS, "strategy": "setfit", "checkpoint_every": 1}
    reference = fit(text_table, source=bert, out=tmp_path / "reference", verbose=False, **options)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the pair stage's `done` checkpoint
    monkeypatch.setattr(Trainer, "fit_heads_on_features", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(text_table, source=bert, out=tmp_path / "run", verbose=False, **options)
    monkeypatch.undo()
    monkeypatch.setattr("transferkit.evaluation.report.write_report", lambda run_dir, **kwargs: None)

    def tuned_again(*args, **kwargs):
        raise AssertionError("the pair stage ran again instead of coming back from its checkpoint")
    monkeypatch.setattr(get_strategy("setfit"), "tune_on_pairs", tuned_again)
    resumed = fit(text_table, source=bert, out=tmp_path / "run", verbose=False, resume=True, **options)
    assert resumed.metrics["stages"][0]["pairs"] == reference.metrics["stages"][0]["pairs"]
    texts = ["win cash prize now", "team lunch meeting notes", "free report"]
    np.testing.assert_allclose(resumed.predict_proba(texts), reference.predict_proba(texts), atol=1e-6)
