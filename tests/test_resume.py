"""Checkpoints and resume: a run killed at any moment continues to the same bits.

The runs are ``_train_script.py`` (a tiny MLP with dropout and random-crop augmentation,
trained in two stages: a linear probe on cached features, then full fine-tuning), with a
checkpoint every 2 optimiser steps. Subprocesses are killed with SIGKILL, so nothing in the
training process gets a chance to clean up.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from _runs import assert_identical, kill, result, run, run_here, start, wait_for, weights

from transferkit.engine import checkpoint as ckpt
from transferkit.errors import ConfigError, NonFiniteLossError

RUN = ("--strategy", "two_stage", "--checkpoint-every", "2", "--epochs", "3", "--probe-epochs", "2")
# Checkpoint writes of RUN, in order (48 examples, batch 8: 6 batches per epoch, keep 2):
#  1-6  stage 0: e0000-b000002, e0000-b000004, e0001-b000000, e0001-b000002, e0001-b000004, done
#  7-   stage 1: e0000-b000002, e0000-b000004, e0001-b000000, ...


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run, never interrupted (in this process: the resumed runs start fresh interpreters)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_here(out, *RUN)
    return out


@pytest.mark.parametrize("kill_after, resume_in", [
    # the first checkpoint of all (stage 0, mid-epoch); the resumed run in this process
    ("ckpt-s00-e0000-b000002", "this process"),
    # stage 1, epoch 2, mid-epoch: stage 0 comes back from its `done` checkpoint, both of stage 1's
    # per-epoch hooks are replayed; the resumed run in a fresh interpreter
    ("ckpt-s01-e0001-b000002", "subprocess"),
])
def test_sigkill_mid_epoch_then_resume_ends_bit_identical(reference, tmp_path, kill_after, resume_in, capfd):
    out = tmp_path / "run"
    proc = start(out, *RUN, "--step-delay", "0.15")  # ~0.3 s between checkpoints: the kill lands mid-epoch
    wait_for(lambda: (out / "checkpoints" / kill_after).is_dir(), proc, out)
    kill(proc, out)  # SIGKILL
    assert not (out / "result.json").exists()
    newest = ckpt.list_checkpoints(out / "checkpoints")[-1].name
    position = ckpt.Position.parse(newest)
    assert not position.done and position.batch > 0, newest  # killed inside an epoch

    if resume_in == "subprocess":
        log = run(out, *RUN, "--resume")
    else:
        run_here(out, *RUN, "--resume")
        log = capfd.readouterr().err
    assert f"resuming from {out / 'checkpoints' / newest}" in log
    assert result(out)["resumed_from"] == newest
    assert_identical(weights(out), weights(reference))
    assert result(out)["history"] == result(reference)["history"]


def test_a_convex_probe_stage_comes_back_from_its_done_checkpoint(tmp_path):
    """Linear heads: stage 0 is a convex fit (one ``done`` checkpoint, no steps); killed in stage 1,
    the resumed run ends bit-identical to an uninterrupted one, with the same stage-0 record."""
    convex = ("--strategy", "two_stage", "--head-hidden", "0", "--checkpoint-every", "2", "--epochs", "3")
    reference = tmp_path / "reference"
    run_here(reference, *convex)
    assert result(reference)["stages"][0]["solver"]  # the convex path ran
    out = tmp_path / "run"
    proc = start(out, *convex, "--step-delay", "0.15")
    wait_for(lambda: (out / "checkpoints" / "ckpt-s01-e0001-b000002").is_dir(), proc, out)
    kill(proc, out)
    log = run(out, *convex, "--resume")
    assert "resuming from" in log and result(out)["resumed_from"].startswith("ckpt-s01-")
    assert_identical(weights(out), weights(reference))
    assert result(out)["history"] == result(reference)["history"]
    timing = {"seconds", "examples_per_second"}
    assert ({k: v for k, v in result(out)["stages"][0].items() if k not in timing}
            == {k: v for k, v in result(reference)["stages"][0].items() if k not in timing})


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(reference, tmp_path):
    out = tmp_path / "run"
    proc = start(out, *RUN, "--stall-write", "8")  # write 8 (ckpt-s01-e0000-b000004) stops after its first file
    marker = out / "stalled-write.txt"
    wait_for(marker.exists, proc, out)
    kill(proc, out)

    partial = Path(marker.read_text())
    assert partial.name.startswith(".tmp-ckpt-s01-e0000-b000004")
    assert (partial / "model.safetensors").is_file() and not (partial / ckpt.STATE_FILE).exists()
    assert not (out / "checkpoints" / "ckpt-s01-e0000-b000004").exists()
    previous = ckpt.list_checkpoints(out / "checkpoints")[-1]
    assert previous.name == "ckpt-s01-e0000-b000002"
    assert ckpt.read_checkpoint(previous).position == ckpt.Position(1, epoch=0, batch=2)

    with pytest.warns(UserWarning, match=f"Removed {partial.name!r}.*interrupted"):
        run_here(out, *RUN, "--resume")
    assert result(out)["resumed_from"] == previous.name
    assert not partial.exists()
    assert_identical(weights(out), weights(reference))


# -- corrupt, hostile and foreign checkpoints (in-process: only the Trainer's resume path runs) --


def _script():
    import _train_script

    return _train_script


def _trainer(out: Path, resume: bool = True, **options):
    """The Trainer that ``_train_script.py RUN`` builds (same options, data, source), without training."""
    from transferkit.config import FitConfig
    from transferkit.engine import Trainer

    s = _script()
    cfg = FitConfig(**{**dict(strategy="full", epochs=3, probe_epochs=2, batch_size=8, lr=3e-3, probe_lr=3e-3,
                                seed=0, head_dropout=0.2, warmup_ratio=0.2, checkpoint_every=2, keep_checkpoints=2,
                                baseline="none"), **options})
    return Trainer(cfg, s.tiny_task(48, 15), s.tiny_source(0.2), verbose=False, resume=resume,
                   checkpoint_dir=out / "checkpoints")


def _copy_checkpoints(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", out / "checkpoints")
    return out


def test_a_corrupt_newest_checkpoint_is_named_and_the_previous_one_is_used(reference, tmp_path):
    out = _copy_checkpoints(reference, tmp_path)
    newest = out / "checkpoints" / "ckpt-s01-done"
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF  # one flipped bit pattern in the weights
    (newest / "model.safetensors").write_bytes(bytes(data))

    with pytest.warns(UserWarning, match=r"Skipping checkpoint 'ckpt-s01-done': model.safetensors is damaged"):
        trainer = _trainer(out)
    assert trainer.resumed_from == "ckpt-s01-e0002-b000004"
    assert not newest.exists()
    assert len(list((out / "checkpoints").glob("corrupt-ckpt-s01-done-*"))) == 1  # kept aside for inspection

    # ... and training on from it ends where the uninterrupted run ended
    run_here(out, *RUN, "--resume")
    assert result(out)["resumed_from"] == "ckpt-s01-e0002-b000004"
    assert_identical(weights(out), weights(reference))


def test_dataloader_workers_load_exactly_what_the_main_process_would(reference, tmp_path):
    # every example is loaded under its own seed, so worker processes change no augmentation; and
    # `--num-workers` may differ between a run and its resume (here: mid-epoch, 0 -> 2 workers)
    out = _copy_checkpoints(reference, tmp_path)
    for name in ("ckpt-s01-done", "ckpt-s01-e0002-b000004"):
        shutil.rmtree(out / "checkpoints" / name)
    run_here(out, *RUN, "--resume", "--num-workers", "2")
    assert result(out)["resumed_from"] == "ckpt-s01-e0002-b000002"
    assert_identical(weights(out), weights(reference))


def test_a_whole_run_with_workers_equals_one_without(reference, tmp_path):
    run_here(tmp_path / "workers", *RUN, "--num-workers", "2")
    assert_identical(weights(tmp_path / "workers"), weights(reference))


def test_no_usable_checkpoint_is_an_error_never_a_silent_restart(reference, tmp_path):
    out = _copy_checkpoints(reference, tmp_path)
    for path in ckpt.list_checkpoints(out / "checkpoints"):
        (path / ckpt.STATE_FILE).write_text("{ not json")
    with pytest.warns(UserWarning, match="Skipping checkpoint"), \
            pytest.raises(ckpt.CheckpointError, match=r"found 4 checkpoint\(s\) .* none can be used.*ckpt-s00-done"):
        _trainer(out)


def test_resume_without_checkpoints_starts_from_the_beginning_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="no checkpoint in .* yet; training from the beginning"):
        trainer = _trainer(tmp_path / "fresh")
    assert trainer.resumed_from is None


def test_resume_with_different_options_names_them(reference, tmp_path):
    out = _copy_checkpoints(reference, tmp_path)
    with pytest.raises(ConfigError, match=r"different run \(`--lr` 0.003 -> 0.001\)"):
        _trainer(out, lr=0.001)


def test_options_added_since_the_checkpoint_are_ignored_at_their_defaults(reference, tmp_path):
    out = _copy_checkpoints(reference, tmp_path)
    newest = out / "checkpoints" / "ckpt-s01-done"
    state = ckpt.json.loads((newest / ckpt.STATE_FILE).read_text())
    del state["fingerprint"]["config"]["head_hidden"], state["fingerprint"]["config"]["lr_decay"]
    (newest / ckpt.STATE_FILE).write_text(ckpt.json.dumps(state))  # not in the manifest: no checksum
    assert _trainer(out).resumed_from == "ckpt-s01-done"  # as if both options were added after the run
    with pytest.raises(ConfigError, match=r"`--head-hidden` '\(not set\)' -> 16"):
        _trainer(out, head_hidden=16)


def test_a_new_run_without_resume_removes_old_checkpoints(reference, tmp_path):
    out = _copy_checkpoints(reference, tmp_path)
    with pytest.warns(UserWarning, match=r"removing 4 checkpoint\(s\) of an earlier run"):
        _trainer(out, resume=False)
    assert ckpt.list_checkpoints(out / "checkpoints") == []


class _CreatesFile:
    """Unpickling this creates ``path`` (as code in a hostile checkpoint would)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("force_unsafe", ["0", "1"])
def test_a_pickle_in_a_checkpoint_is_never_executed(reference, tmp_path, monkeypatch, force_unsafe):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", force_unsafe)
    out = _copy_checkpoints(reference, tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": _CreatesFile(marker)})
    hostile = out / "checkpoints" / "ckpt-s09-done"  # newest of all: resume tries it first
    shutil.copytree(out / "checkpoints" / "ckpt-s01-done", hostile)
    # Accelerate's / torch's pickled file names, and the pickle as our own weights with a matching manifest
    for name in ("pytorch_model.bin", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "model.pt"):
        (hostile / name).write_bytes(payload)
    (hostile / "model.safetensors").write_bytes(payload)
    state = ckpt.json.loads((hostile / ckpt.STATE_FILE).read_text())
    state["position"] = {"stage": 9, "done": True, "epoch": 0, "batch": 0}
    state["files"]["model.safetensors"] = {"bytes": len(payload), "sha256": ckpt.hashlib.sha256(payload).hexdigest()}
    (hostile / ckpt.STATE_FILE).write_text(ckpt.json.dumps(state))

    with pytest.raises(ckpt.CheckpointError, match="model.safetensors is not valid safetensors"):
        ckpt.read_checkpoint(hostile)
    with pytest.warns(UserWarning, match="Skipping checkpoint 'ckpt-s09-done'"):
        trainer = _trainer(out)
    assert trainer.resumed_from == "ckpt-s01-done"
    assert not marker.exists()
    # the payload is live: loading it the unsafe way would have created the file
    pickle.loads(payload)
    assert marker.exists()


def test_the_engine_never_unpickles():
    import ast

    engine = Path(ckpt.__file__).parent
    for path in engine.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = getattr(node.func.value, "id", "")
                if (owner, node.func.attr) in {("torch", "load"), ("pickle", "load"), ("pickle", "loads")}:
                    kwargs = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                    assert owner == "torch" and kwargs.get("weights_only") is True, f"{path.name}:{node.lineno}"


# -- units --------------------------------------------------------------------------------------


def test_positions_sort_by_training_progress():
    names = ["ckpt-s01-e0000-b000002", "ckpt-s00-done", "ckpt-s00-e0001-b000000", "ckpt-s00-e0000-b000004",
             "ckpt-s01-done", "ckpt-s10-e0000-b000002"]
    ordered = sorted(names, key=ckpt.Position.parse)
    assert ordered == ["ckpt-s00-e0000-b000004", "ckpt-s00-e0001-b000000", "ckpt-s00-done",
                       "ckpt-s01-e0000-b000002", "ckpt-s01-done", "ckpt-s10-e0000-b000002"]
    assert all(ckpt.Position.parse(n).name == n for n in names)
    assert ckpt.Position.parse("ckpt-s01-e0000-b000002.corrupt") is None


def test_optimizer_and_rng_state_round_trip_through_safetensors(tmp_path):
    import random

    import numpy as np

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = ckpt.optimizer_to_tensors(opt.state_dict())
    rng = ckpt.rng_state()
    path = ckpt.write_checkpoint(tmp_path, ckpt.Position(0, epoch=1), {"optimizer": tensors, "processes": rng},
                                 {"optimizer": ckpt.json.loads(ckpt.json.dumps(meta))})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    back = ckpt.read_checkpoint(path)
    ckpt.set_rng_state(back.tensors["processes"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(3), expected[2])
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(ckpt.optimizer_from_tensors(back.tensors["optimizer"], back.state["optimizer"]))
    a, b = opt.state_dict()["state"], fresh.state_dict()["state"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[p][k], b[p][k]) for p in a for k in a[p])
    assert fresh.state_dict()["param_groups"] == ckpt.json.loads(ckpt.json.dumps(opt.state_dict()["param_groups"]))


def test_pruning_keeps_the_newest_and_every_stage_end(tmp_path):
    for pos in [ckpt.Position(0, epoch=0, batch=2), ckpt.Position(0, done=True), ckpt.Position(1, epoch=0, batch=2),
                ckpt.Position(1, epoch=1), ckpt.Position(1, epoch=1, batch=2)]:
        ckpt.write_checkpoint(tmp_path, pos, {"model": {"w": torch.zeros(1)}}, {})
    assert ckpt.prune(tmp_path, keep=2) == ["ckpt-s00-e0000-b000002", "ckpt-s01-e0000-b000002"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "ckpt-s00-done", "ckpt-s01-e0001-b000000", "ckpt-s01-e0001-b000002"]


def test_tied_weights_are_saved(tmp_path):
    w = torch.randn(4, 3)
    path = ckpt.write_checkpoint(tmp_path, ckpt.Position(0, done=True), {"model": {"a": w, "b": w}}, {})
    back = ckpt.read_checkpoint(path).tensors["model"]
    assert torch.equal(back["a"], w) and torch.equal(back["b"], w)


# -- non-finite losses ------------------------------------------------------------------------


def _tiny_fit(tmp_path: Path, penalty, checkpoint_every: int = 1):
    from transferkit.config import FitConfig
    from transferkit.engine import Trainer
    from transferkit.surgery.target import build_target_model

    s = _script()
    cfg = FitConfig(strategy="full", epochs=2, batch_size=8, lr=3e-3, checkpoint_every=checkpoint_every,
                    keep_checkpoints=100, baseline="none", augment=False)
    source = s.tiny_source(0.0)
    model = build_target_model(source, {"label": 4})
    model.register_parameter("spare", torch.nn.Parameter(torch.zeros(2)))  # trainable, unused by forward
    trainer = Trainer(cfg, s.tiny_task(48, 7), source, verbose=False, checkpoint_dir=tmp_path / "checkpoints")
    params = [{"params": list(model.parameters()), "lr": cfg.lr}]
    trainer.fit(model, params, stage="full", penalty=lambda m: penalty(m))
    return trainer


def test_a_nan_loss_stops_at_that_step_and_no_nan_checkpoint_exists(tmp_path):
    calls = []

    def nan_at_step_3(model):
        calls.append(1)
        return torch.tensor(float("nan") if len(calls) == 4 else 0.0)

    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3 \(epoch 1, stage 'full'\).*lower `--lr`"):
        _tiny_fit(tmp_path, nan_at_step_3)
    saved = ckpt.list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in saved] == ["ckpt-s00-e0000-b000001", "ckpt-s00-e0000-b000002", "ckpt-s00-e0000-b000003"]
    for path in saved:
        assert all(torch.isfinite(t).all() for t in ckpt.read_checkpoint(path).tensors["model"].values())


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    calls = []

    def poison_unused_weight_at_step_2(model):
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                model.spare.fill_(float("inf"))  # the loss stays finite; the weights do not
        return torch.zeros(())

    with pytest.raises(NonFiniteLossError, match=r"weights became non-finite \(spare\) by step 3.*no checkpoint was written"):
        _tiny_fit(tmp_path, poison_unused_weight_at_step_2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [
        "ckpt-s00-e0000-b000001", "ckpt-s00-e0000-b000002"]


def test_leftovers_of_interrupted_writes_are_cleaned(tmp_path):
    (tmp_path / ".tmp-ckpt-s00-e0000-b000002-abc").mkdir()
    (tmp_path / ".trash-ckpt-s00-e0000-b000001-1-2").mkdir()
    assert ckpt.clean_interrupted(tmp_path) == [".tmp-ckpt-s00-e0000-b000002-abc"]
    assert list(tmp_path.iterdir()) == []


