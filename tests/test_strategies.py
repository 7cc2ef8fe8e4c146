"""Every strategy through the same checks on three tiny models, plus each strategy's own rule.

Common suite (every registered strategy x image / text / LSTM x seeds): exactly the intended
parameters change (frozen ones bitwise equal, trained ones changed), the first layer group
stays frozen under ``freeze``, and the training loss goes down in every stage. Image and text
runs also go through ``fit(out=...)`` -> ``load_run`` -> identical probabilities.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGE_SOURCE
from torch import nn

from transferkit import fit, load_run
from transferkit.config import FitConfig
from transferkit.engine.schedule import resolve_schedule
from transferkit.data import Split, TaskData, load_task_data
from transferkit.engine import Trainer
from transferkit.engine.precision import resolve_precision
from transferkit.errors import ConfigError
from transferkit.sources import load_source
from transferkit.sources.base import Preprocessing, SourceModel, layer_groups_from_children
from transferkit.sources.inputs import EXTRA_INPUTS
from transferkit.strategies import get_strategy, list_strategies
from transferkit.strategies.bss import BatchSpectralShrinkage
from transferkit.strategies.gradual_unfreeze import groups_unfrozen
from transferkit.strategies.lora import merged_backbone
from transferkit.surgery import DEFAULT_TASK, build_target_model
from transferkit.surgery.freezing import count_trainable

STRATEGIES = [name for name, _ in list_strategies()]
SEEDS = [0, 1]
#: Per model: options that make the loss go down within a few epochs for any seed.
OPTIONS = {
    "image": {"lr": 3e-3, "probe_lr": 1e-2, "epochs": 3, "probe_epochs": 4, "batch_size": 16, "image_size": 32,
              "augment": False, "baseline": "none", "grad_accum": 2},
    "text": {"lr": 5e-3, "probe_lr": 1e-2, "epochs": 4, "probe_epochs": 6, "batch_size": 8, "baseline": "none"},
    "lstm": {"lr": 1e-2, "probe_lr": 3e-2, "epochs": 4, "probe_epochs": 6, "batch_size": 16, "baseline": "none"},
}
#: Strategies that train on from a probed (convex-fitted, sharp) head, at the rate of the papers' second
#: stage: OPTIONS' rates, meant to move fresh heads on random networks in a few epochs, overshoot it.
PROBE_FIRST_OPTIONS = {name: {"lr": 1e-3} for name in ("lp_ft", "bitfit", "lora")}
#: Strategies that cannot apply to a model: the error they must raise.
CANNOT_APPLY = {("lora", "lstm"): r"Strategy 'lora' found no layer to adapt .* LSTM\. Use 'bitfit'",
                **{("setfit", kind): r"`--strategy setfit` tunes a text encoder" for kind in ("image", "lstm")}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run faster on one thread of 2 busy cores


# -- a tiny LSTM source, built by hand ---------------------------------------------------------


class LSTMBackbone(nn.Module):
    """Two stacked LSTMs; the features are the top layer's last hidden state."""

    def __init__(self, channels: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.lstm = nn.LSTM(channels, hidden, num_layers=2, batch_first=True)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        return self.lstm(series)[1][0][-1]


class SeriesInputs:
    def load(self, example):
        return torch.as_tensor(example, dtype=torch.float32)

    def collate(self, items):
        return {"series": torch.stack(items)}


def lstm_source() -> SourceModel:
    backbone = LSTMBackbone()
    return SourceModel("test:lstm", "sequence", backbone, 16, Preprocessing("sequence"),
                       layer_groups_from_children(backbone), spec={"loader": "test_lstm"})


def series_task() -> TaskData:
    """Random 8-step series with 3 channels; the class is the sign of channel 0's mean."""
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.normal(size=(n, 8, 3)).astype(np.float32)
        return Split(list(x), (x[:, :, 0].mean(1) > 0).astype(np.int64))

    return TaskData("sequence", ["neg", "pos"], split(48), split(16), split(16))


@pytest.fixture(scope="module")
def bert_dir(tiny_bert_dir, tmp_path_factory):
    """``tiny_bert_dir``, with a tokenizer that knows the vocabulary.

    Under transformers 5, conftest's ``BertTokenizerFast(vocab_file=...)`` ignores the file (the
    argument is now ``vocab``), so every word becomes [UNK] and no text model can learn. Until
    conftest is fixed, this makes a copy with a working tokenizer; afterwards it is a no-op.
    """
    import shutil

    from transformers import AutoTokenizer, BertTokenizerFast

    if len(AutoTokenizer.from_pretrained(tiny_bert_dir)) > 5:
        return tiny_bert_dir
    d = tmp_path_factory.mktemp("tiny-bert-vocab")
    shutil.copytree(tiny_bert_dir, d, dirs_exist_ok=True)
    BertTokenizerFast(vocab=str(d / "vocab.txt")).save_pretrained(d)
    return d


@pytest.fixture
def make(image_folder, text_table, bert_dir, monkeypatch):
    """``make(kind, seed, **options)`` -> (task, fresh source, FitConfig)."""
    monkeypatch.setitem(EXTRA_INPUTS, "sequence", lambda source, train: SeriesInputs())

    def _make(kind: str, seed: int = 0, **options):
        cfg = FitConfig.from_dict({**OPTIONS[kind], "seed": seed, **options})
        torch.manual_seed(seed)
        if kind == "lstm":
            return series_task(), lstm_source(), cfg
        data, source_id = {"image": (image_folder, TINY_IMAGE_SOURCE), "text": (text_table, f"hf:{bert_dir}")}[kind]
        src = load_source(source_id)
        if kind == "image":
            src.preprocessing.image_size = cfg.image_size
        return load_task_data(data, seed=seed), src, cfg

    return _make


# -- driving the Trainer directly ----------------------------------------------------------------


class RecordingTrainer(Trainer):
    """A Trainer that records what trains in each epoch and always keeps the last epoch.

    The real Trainer restores the epoch with the best validation accuracy; here validation
    returns a rising number instead, so every epoch's update is kept and "trained at some
    point" must equal "changed".
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epochs_trained: list[tuple[str, set[int]]] = []  # (stage, ids of trainable params)
        self.param_groups: dict[str, list[dict]] = {}
        self._evaluations = 0

    def fit(self, model, param_groups, *, stage, on_epoch_start=None, **kwargs):
        params = [p for g in param_groups for p in g["params"]]
        self.param_groups[stage] = param_groups

        def record(epoch, m):
            if on_epoch_start is not None:
                on_epoch_start(epoch, m)
            self.epochs_trained.append((stage, {id(p) for p in params if p.requires_grad}))

        super().fit(model, param_groups, stage=stage, on_epoch_start=record, **kwargs)

    def _fit_linear_heads(self, heads, feats, stage, *args):  # a convex fit: the heads, in one go
        self.epochs_trained.append((stage, {id(p) for p in heads.parameters() if p.requires_grad}))
        super()._fit_linear_heads(heads, feats, stage, *args)

    def record_setfit(self, tune_on_pairs):
        """``SetFit.tune_on_pairs`` (sentence-transformers' loop, not ``fit``), recording what it trains."""
        def recorded(model, trainer, *args, **kwargs):
            self.epochs_trained.append(("setfit", {id(p) for p in model.parameters() if p.requires_grad}))
            return tune_on_pairs(model, trainer, *args, **kwargs)
        return recorded

    def evaluate(self, model, loader):
        self._evaluations += 1
        return 0.0, float(self._evaluations)


def train_direct(strategy: str, task: TaskData, src: SourceModel, cfg: FitConfig):
    """What ``pipeline.train_target`` does, with a snapshot of the initial parameters."""
    model = build_target_model(src, {DEFAULT_TASK: task.num_classes})
    model = get_strategy(strategy)(cfg).prepare(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = RecordingTrainer(cfg, task, src, verbose=False)
    instance = get_strategy(strategy)(cfg)
    if strategy == "setfit":
        instance.tune_on_pairs = trainer.record_setfit(instance.tune_on_pairs)
    instance.train(model, trainer)
    return before, model, trainer


def names_of(model, ids) -> set[str]:
    return {n for n, p in model.named_parameters() if id(p) in ids}


def intended(strategy: str, model) -> set[str] | None:
    """The parameters a strategy is meant to train, before ``freeze`` (None: not known here)."""
    names = {n for n, _ in model.named_parameters()}
    heads = {n for n in names if n.startswith("heads.")}
    if strategy == "linear_probe":
        return heads
    if strategy == "bitfit":  # bias, in_proj_bias, bias_ih_l0, ...
        return heads | {n for n in names if n.startswith("backbone.") and "bias" in n.rsplit(".", 1)[-1]}
    if strategy == "lora":
        return heads | {n for n in names if ".lora_" in n}
    if strategy in ("full", "lp_ft", "gradual_unfreeze", "layerwise_lr", "l2sp", "bss", "setfit"):
        return names
    return None


# -- the common suite ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["image", "text", "lstm"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_trains_exactly_the_intended_parameters(strategy, kind, seed, make):
    task, src, cfg = make(kind, seed, **PROBE_FIRST_OPTIONS.get(strategy, {}))
    first_group = src.layer_groups[0].name
    cfg = FitConfig.from_dict({**cfg.to_dict(), "freeze": [first_group]})
    if (strategy, kind) in CANNOT_APPLY:
        with pytest.raises(ConfigError, match=CANNOT_APPLY[strategy, kind]):
            train_direct(strategy, task, src, cfg)
        return
    before, model, trainer = train_direct(strategy, task, src, cfg)

    # exactly the parameters that trained in some epoch changed; nothing else moved
    trained = names_of(model, set().union(*(ids for _, ids in trainer.epochs_trained)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == trained, (f"trained but unchanged: {sorted(trained - changed)[:5]}; "
                                f"changed but not trained: {sorted(changed - trained)[:5]}")
    frozen = names_of(model, {id(p) for p in dict(model.params_by_group())[first_group]})
    assert frozen and not frozen & changed, "`freeze` must hold in every stage"
    heads = {n for n, _ in model.named_parameters() if n.startswith("heads.")}
    assert heads <= changed
    rule = intended(strategy, model)
    if rule is not None:
        assert trained == rule - frozen
    if strategy in ("lp_ft", "bitfit", "lora", "gradual_unfreeze"):  # the heads train alone first
        assert names_of(model, trainer.epochs_trained[0][1]) == heads
    # the loss goes down within every stage; the engine records what trains at each stage's start
    for s in trainer.stages:
        losses = [row["train_loss"] for row in trainer.history if row["stage"] == s["stage"]]
        if "pairs" in s:  # SetFit's contrastive stage: the pairs' cosine loss falls
            assert s["loss_last_quarter"] < s["loss_first_quarter"], s
        elif "solver" in s:  # a convex fit of the heads: one row, its loss below chance
            assert losses[0] < math.log(task.num_classes), (s["stage"], losses)
        elif any("solver" in earlier for earlier in trainer.stages[:trainer.stages.index(s)]):
            # from a fitted head the loss may start at its floor: it must end near the probe's, not undo it
            probe = next(r["train_loss"] for r in trainer.history if r["stage"] == "linear_probe")
            assert len(losses) >= 2 and losses[-1] < probe + 0.25 * math.log(task.num_classes), (s["stage"], losses)
        else:
            assert len(losses) >= 2 and losses[-1] < losses[0], (s["stage"], losses)
        first_epoch = next(ids for stage, ids in trainer.epochs_trained if stage == s["stage"])
        assert s["trainable_parameters"] == sum(p.numel() for p in model.parameters() if id(p) in first_epoch)


@pytest.mark.parametrize("kind", ["image", "text"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_saved_run_predicts_identically(strategy, kind, image_folder, text_table, bert_dir, tmp_path, monkeypatch):
    if not get_strategy(strategy).takes(kind):
        pytest.skip(f"{strategy} does not take {kind} data (its refusal is tested above)")
    monkeypatch.setattr("transferkit.evaluation.report.write_report", lambda run_dir, **kwargs: None)  # tested elsewhere; slow
    data, source, examples = {
        "image": (image_folder, TINY_IMAGE_SOURCE, sorted(image_folder.rglob("*.png"))[:5]),
        "text": (text_table, f"hf:{bert_dir}", ["win cash prize now", "team lunch meeting notes", "free report"]),
    }[kind]
    options = {**OPTIONS[kind], "epochs": 2, "probe_epochs": 2}
    run = fit(data, source=source, strategy=strategy, out=tmp_path / "run", verbose=False, **options)
    again = load_run(tmp_path / "run")
    np.testing.assert_array_equal(run.predict_proba(examples), again.predict_proba(examples))


# -- each strategy's own rule -----------------------------------------------------------------------


class StubTrainer:
    """Stands in for the Trainer: records each stage and runs the epoch hooks, trains nothing."""

    def __init__(self, config: FitConfig) -> None:
        self.config = resolve_schedule(config, 40)  # as the Trainer does, for a train split of 40
        self.stages: list[dict] = []

    def fit(self, model, param_groups, *, stage, epochs=None, penalty=None, on_epoch_start=None, **kwargs):
        trainable, epochs_trainable = count_trainable(model), []  # counted at the start, as the Trainer does
        for epoch in range(epochs or self.config.epochs):
            if on_epoch_start is not None:
                on_epoch_start(epoch, model)
            epochs_trainable.append({n for n, p in model.named_parameters() if p.requires_grad})
        self.stages.append({"stage": stage, "param_groups": param_groups, "penalty": penalty,
                            "trainable": trainable, "epochs": epochs_trainable,
                            "keep_norm_stats": kwargs.get("keep_norm_stats", False)})

    def fit_heads_on_features(self, model, *, stage="linear_probe", refit=True):
        self.stages.append({"stage": stage, "trainable": count_trainable(model), "refit": refit})


@pytest.mark.parametrize(("groups", "epochs", "expected"), [
    (6, 4, [0, 2, 4, 6]),          # more groups than epochs: chunks of two
    (5, 3, [0, 3, 5]),             # uneven chunks (3, 2): sizes differ by at most one
    (2, 5, [0, 1, 2, 2, 2]),       # the paper: one group per epoch, then everything trains
    (3, 4, [0, 1, 2, 3]),
    (4, 1, [4]),                   # one epoch: everything trains (same as `full`)
])
def test_gradual_unfreeze_rule(groups, epochs, expected):
    assert [groups_unfrozen(e, groups, epochs) for e in range(epochs)] == expected


def test_gradual_unfreeze_schedule_on_a_model(make):
    task, src, cfg = make("image", epochs=4, freeze=["group5"])
    model = build_target_model(src, {DEFAULT_TASK: 4})
    trainer = StubTrainer(cfg)
    get_strategy("gradual_unfreeze")(cfg).train(model, trainer)
    by_group = {g: {n for n, p in model.named_parameters() if id(p) in {id(q) for q in ps}}
                for g, ps in model.params_by_group()}
    opened = [[g for g in model.group_names() if by_group[g] and by_group[g] <= trained]
              for trained in trainer.stages[0]["epochs"]]
    # six groups over four epochs: heads, then two groups per epoch from the top; group5 stays frozen
    assert opened == [["heads"], ["group4", "heads"], ["group2", "group3", "group4", "heads"],
                      ["group0", "group1", "group2", "group3", "group4", "heads"]]
    assert trainer.stages[0]["trainable"] == sum(p.numel() for p in model.heads.parameters())


@pytest.mark.parametrize("seed", SEEDS)
def test_gradual_unfreeze_frozen_groups_do_not_move(seed, make):
    """AdamW skips parameters without a gradient: no update and no weight decay while frozen."""
    task, src, cfg = make("lstm", seed, epochs=3, weight_decay=0.5)
    model = build_target_model(src, {DEFAULT_TASK: 2})
    trainer = RecordingTrainer(cfg, task, src, verbose=False)
    snapshots = []
    original_fit = trainer.fit

    def fit(model_, groups, *, stage, on_epoch_start=None, **kwargs):
        def hook(epoch, m):
            snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
            on_epoch_start(epoch, m)
        original_fit(model_, groups, stage=stage, on_epoch_start=hook, **kwargs)

    trainer.fit = fit
    get_strategy("gradual_unfreeze")(cfg).train(model, trainer)
    snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for epoch, (_, ids) in enumerate(trainer.epochs_trained):
        trained = names_of(model, ids)
        moved = {n for n in snapshots[epoch] if not torch.equal(snapshots[epoch][n], snapshots[epoch + 1][n])}
        assert moved == trained, epoch
    assert [len(names_of(model, ids)) for _, ids in trainer.epochs_trained] == [2, 6, 10]  # heads, +l1, +l0


def test_layerwise_lr_groups(make):
    task, src, cfg = make("image", lr=1e-3, lr_decay=0.5, freeze=["group0"])
    model = build_target_model(src, {DEFAULT_TASK: 4})
    trainer = StubTrainer(cfg)
    get_strategy("layerwise_lr")(cfg).train(model, trainer)
    groups = trainer.stages[0]["param_groups"]
    # heads at head_lr (here lr), the group below them at lr, then each group below at half the one
    # above; the frozen group0 is left out
    assert [(g["name"], g["lr"]) for g in groups] == [("heads", 1e-3)] + [
        (f"group{i}", 1e-3 * 0.5 ** (5 - i)) for i in range(5, 0, -1)]
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(p.requires_grad for p in dict(model.params_by_group())["group0"])


@pytest.mark.parametrize("strategy, stage", [("full", "full"), ("l2sp", "l2sp")])
def test_head_lr_gives_the_new_heads_their_own_rate(strategy, stage, make):
    task, src, cfg = make("image", lr=1e-4, head_lr=2e-3)
    model = build_target_model(src, {DEFAULT_TASK: 4})
    trainer = StubTrainer(cfg)
    get_strategy(strategy)(cfg).train(model, trainer)
    groups = next(s for s in trainer.stages if s["stage"] == stage)["param_groups"]
    heads = {id(p) for p in model.heads.parameters()}
    assert [(g["name"], g["lr"]) for g in groups] == [("shared", 1e-4), ("heads", 2e-3)]
    assert {id(p) for p in groups[1]["params"]} == heads
    assert not heads & {id(p) for p in groups[0]["params"]}
    # without --head-lr: ten times --lr for the heads
    plain = StubTrainer(make("image", lr=1e-4)[2])
    get_strategy(strategy)(plain.config).train(build_target_model(src, {DEFAULT_TASK: 4}), plain)
    groups = next(s for s in plain.stages if s["stage"] == stage)["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])


@pytest.mark.parametrize("strategy", ["lp_ft", "bitfit", "lora"])
def test_probe_first_strategies_train_their_probed_head_at_the_shared_rate(strategy, make):
    for given, rates in (({}, [1e-4]),  # Kumar et al.: one small rate for a head that arrives fitted
                         ({"head_lr": 2e-3}, [1e-4, 2e-3])):  # unless --head-lr says otherwise
        task, src, cfg = make("image", lr=1e-4, **given)
        trainer = StubTrainer(cfg)
        instance = get_strategy(strategy)(cfg)
        instance.train(instance.prepare(build_target_model(src, {DEFAULT_TASK: 4})), trainer)
        assert trainer.stages[0]["stage"] == "linear_probe"
        assert [g["lr"] for g in trainer.stages[-1]["param_groups"]] == rates
        assert instance.head_lr == rates[-1]  # what the report's Schedule says
        assert trainer.stages[-1]["keep_norm_stats"]  # the features keep the statistics the head was fitted on


def test_l2sp_penalty_matches_hand_computation(make):
    task, src, cfg = make("lstm", l2sp_alpha=0.3, l2sp_beta=0.07, freeze=["lstm.l0"])
    model = build_target_model(src, {DEFAULT_TASK: 2})
    trainer = StubTrainer(cfg)
    get_strategy("l2sp")(cfg).train(model, trainer)
    stage = trainer.stages[0]
    assert all(g["weight_decay"] == 0.0 for g in stage["param_groups"])
    penalty = stage["penalty"]
    assert penalty(model).item() == pytest.approx(0.07 / 2 * sum(p.double().square().sum().item()
                                                                    for p in model.heads.parameters()))
    source = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    shared = [n for n, p in model.named_parameters() if n.startswith("backbone.lstm") and n.endswith("_l1")]
    heads = [n for n, _ in model.named_parameters() if n.startswith("heads.")]
    named = dict(model.named_parameters())
    expected = (0.3 / 2 * sum((named[n].double() - source[n]).square().sum() for n in shared)
                + 0.07 / 2 * sum(named[n].double().square().sum() for n in heads))
    value = penalty(model)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    for n in shared:  # d/dw alpha/2 ||w - w0||^2 = alpha (w - w0); the frozen l0 is not in the penalty
        torch.testing.assert_close(named[n].grad.double(), 0.3 * (named[n].double() - source[n]))
    for n in heads:
        torch.testing.assert_close(named[n].grad.double(), 0.07 * named[n].double())
    assert all(named[n].grad is None for n in named if n.endswith("_l0"))


def analytic_lora_count(backbone: nn.Module, r: int, kind: str) -> int:
    total = 0
    for name, m in backbone.named_modules():
        if kind == "text" and isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in ("query", "value"):
            total += r * (m.in_features + m.out_features)
        elif kind == "image" and isinstance(m, nn.Linear):
            total += r * (m.in_features + m.out_features)
        elif kind == "image" and isinstance(m, nn.Conv2d) and m.groups == 1:
            total += r * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
    return total


@pytest.mark.parametrize("kind", ["image", "text"])
def test_lora_trains_the_analytic_parameter_count(kind, make):
    task, src, cfg = make(kind, lora_r=4, lora_alpha=8)
    expected = analytic_lora_count(src.backbone, 4, kind)
    model = build_target_model(src, {DEFAULT_TASK: task.num_classes})
    heads = sum(p.numel() for p in model.heads.parameters())
    strategy = get_strategy("lora")(cfg)
    model = strategy.prepare(model)
    trainer = StubTrainer(cfg)
    strategy.train(model, trainer)
    lora_stage = next(s for s in trainer.stages if s["stage"] == "lora")  # after the heads' probe
    assert lora_stage["trainable"] == expected + heads == strategy.adapter_parameters_ + heads
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if ".lora_" in n or n.startswith("heads.")}
    # every parameter stays in its layer group after the adapters renamed the wrapped weights
    assert sorted(n for g in model.layer_groups for n in g.params) == sorted(
        n for n, _ in model.named_parameters() if n.startswith("backbone."))


def test_lora_prepare_is_idempotent_skips_depthwise_convs_and_merges(make):
    task, src, cfg = make("image")
    source_keys = list(src.backbone.state_dict())
    model = get_strategy("lora")(cfg).prepare(build_target_model(src, {DEFAULT_TASK: 4}))
    keys = list(model.state_dict())
    assert list(get_strategy("lora")(cfg).prepare(model).state_dict()) == keys
    wrapped = {n.split(".lora_A.")[0] for n in keys if ".lora_A." in n}
    assert "backbone.model.conv_stem" in wrapped and "backbone.model.blocks.3.0.conv_pw" in wrapped
    assert "backbone.model.blocks.3.0.conv_dw" not in wrapped  # depthwise: skipped
    # merging the adapters gives back the source architecture, computing the same function
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
    merged = merged_backbone(model.backbone)
    assert list(merged.state_dict()) == source_keys
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(merged.eval()(pixel_values=x), model.backbone.eval()(pixel_values=x), atol=1e-5, rtol=0)
    # freezing a group by name also freezes the adapters inside it
    cfg = FitConfig.from_dict({**cfg.to_dict(), "freeze": ["group0"]})
    get_strategy("lora")(cfg).train(model, StubTrainer(cfg))
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("backbone.model.conv_stem"))


def test_bitfit_trains_biases_and_needs_some():
    class NoBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)

        def forward(self, x):
            return self.b(self.a(x))

    backbone = NoBias()
    src = SourceModel("test:nobias", "sequence", backbone, 4, Preprocessing("sequence"),
                      layer_groups_from_children(backbone), spec={})
    model = build_target_model(src, {DEFAULT_TASK: 2})
    cfg = FitConfig(strategy="bitfit")
    with pytest.raises(ConfigError, match=r"trains bias terms, but the shared layers of this model have none"):
        get_strategy("bitfit")(cfg).train(model, StubTrainer(cfg))


def test_bss_penalty_and_hook():
    bss = BatchSpectralShrinkage(eta=0.5, k=2)
    bss.capture(None, None, torch.diag(torch.tensor([5.0, 3.0, 2.0, 1.0])))
    assert bss().item() == pytest.approx(0.5 * (2.0**2 + 1.0**2))
    src = lstm_source()
    model = build_target_model(src, {DEFAULT_TASK: 2})
    cfg = FitConfig(strategy="bss")
    trainer = StubTrainer(cfg)
    get_strategy("bss")(cfg).train(model, trainer)
    assert isinstance(trainer.stages[0]["penalty"], BatchSpectralShrinkage)
    assert not model.backbone._forward_hooks  # removed after training


@pytest.mark.filterwarnings("ignore:--precision bf16 is not fast")
@pytest.mark.parametrize("cpu_bf16", ["1", "0"])
def test_strategies_compose_with_precision_and_accumulation(cpu_bf16, make, monkeypatch):
    # both sides of the CPU rule on any machine: bf16 autocast (native bf16 CPUs) and the fp32 fallback
    monkeypatch.setenv("TRANSFERKIT_CPU_BF16", cpu_bf16)
    expected = resolve_precision("bf16") if torch.cuda.is_available() else {"1": "bf16", "0": "no"}[cpu_bf16]
    for strategy in ("l2sp", "bss", "lora"):
        task, src, cfg = make("text", precision="bf16", grad_accum=2, epochs=2)
        before, model, trainer = train_direct(strategy, task, src, cfg)
        assert trainer.accelerator.mixed_precision == expected
        assert all(math.isfinite(r["train_loss"]) for r in trainer.history)


@pytest.mark.parametrize("bn_stats", ["keep", "update"])
def test_batchnorm_statistics_are_kept_unless_asked_to_update(bn_stats, make):
    task, src, cfg = make("image", bn_stats=bn_stats)
    model = build_target_model(src, {DEFAULT_TASK: task.num_classes})
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    before = {n: (m.running_mean.clone(), m.weight.detach().clone()) for n, m in norms.items()}
    get_strategy("full")(cfg).train(model, RecordingTrainer(cfg, task, src, verbose=False))
    moved = {n for n, m in norms.items() if not torch.equal(m.running_mean, before[n][0])}
    assert norms and moved == (set(norms) if bn_stats == "update" else set())
    assert all(not torch.equal(m.weight, before[n][1]) for n, m in norms.items())  # their affine weights train
