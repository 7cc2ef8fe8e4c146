"""Non-finite values: training stops at the step that goes NaN/inf, names it, saves no NaN weights.

The training loop checks the loss before every backward pass; ``save_weights`` refuses to write a
tensor holding NaN or inf, so weights that went non-finite on a step whose loss was still finite
never reach ``model.safetensors`` either. NaN features never become a silent NaN score.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGE_SOURCE
from test_bad_images import cli

from transferkit.data.synthetic import write_image_folder
from transferkit.errors import NonFiniteLossError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonfinite") / "data"
    write_image_folder(root, {"a": 6, "b": 6, "c": 6}, size=32)
    return root


def _poison_loss(monkeypatch, at_call: int, value: float) -> list[int]:
    """Makes the training loss ``value`` on the ``at_call``-th loss computation; returns the call log."""
    from transferkit.engine import loop

    calls, original = [], loop.Trainer._loss

    def loss(self, logits, labels):
        calls.append(1)
        out = original(self, logits, labels)
        return out * value if len(calls) == at_call else out

    monkeypatch.setattr(loop.Trainer, "_loss", loss)
    return calls


# A hidden layer makes the probe's head a gradient-trained one (linear heads are a convex fit, no loss steps).
@pytest.mark.parametrize("strategy, value, shown, head", [("full", math.nan, "nan", []),
                                                          ("linear_probe", math.inf, "inf", ["--head-hidden", "8"])])
def test_training_stops_at_the_step_that_goes_non_finite_and_names_it(strategy, value, shown, head, data, tmp_path,
                                                                     monkeypatch):
    calls = _poison_loss(monkeypatch, at_call=3, value=value)
    out = tmp_path / "run"
    code, _, err = cli(["fit", data, "--source", TINY_IMAGE_SOURCE, "--strategy", strategy, "--out", out, "--quiet",
                        "--baseline", "none", "--image-size", "32", "--batch-size", "4", "--epochs", "2",
                        "--probe-epochs", "2", "--lr", "0.003", "--probe-lr", "0.003", *head])
    assert code == 2
    stage = "full" if strategy == "full" else "linear_probe"
    # the 3rd step (2 steps done before it) of epoch 1
    assert err == (f"error: The training loss became {shown} at step 2 (epoch 1, stage {stage!r}); training stopped "
                   "and no weights from this step were saved. Try a lower `--lr` (now 0.003), `--precision no`, "
                   "or check the inputs for NaN.\n")
    assert len(calls) == 3, "training went on after the non-finite loss"
    assert not (out / "model.safetensors").exists()


class _NaNGradient(torch.autograd.Function):
    """Adds 0 to the loss but NaN to every gradient: the weights go NaN while the loss stays finite."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return (x * 0).sum()

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, math.nan)


def test_weights_that_went_nan_on_a_finite_loss_are_never_written(data, tmp_path, monkeypatch):
    from transferkit.engine import loop

    original = loop.Trainer._loss

    def loss(self, logits, labels):
        return original(self, logits, labels) + _NaNGradient.apply(next(iter(logits.values())))

    monkeypatch.setattr(loop.Trainer, "_loss", loss)
    out = tmp_path / "run"
    # one optimiser step in all: every training loss is finite, the weights after it are NaN (a hidden
    # layer makes the probe's head gradient-trained)
    code, _, err = cli(["fit", data, "--source", TINY_IMAGE_SOURCE, "--out", out, "--quiet", "--baseline", "none",
                        "--image-size", "32", "--batch-size", "64", "--probe-epochs", "1", "--head-hidden", "8"])
    assert code == 2
    # the engine checks the weights before its epoch-end checkpoint, so the stop comes there
    assert err.startswith("error: The weights became non-finite (heads.label.0.weight, heads.label.0.bias, "
                          "heads.label.2.weight) by step 1 ")
    assert "no checkpoint was written. Try a lower `--lr`" in err and len(err.splitlines()) == 1
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()


def test_save_weights_refuses_nan_and_leaves_the_previous_file(tmp_path):
    from safetensors.torch import load_file

    from transferkit._io import save_weights

    path = tmp_path / "model.safetensors"
    save_weights({"w": torch.ones(3), "steps": torch.tensor([4])}, path)
    with pytest.raises(NonFiniteLossError, match=r"^Not writing '.*model\.safetensors': 1 weight tensor\(s\) hold NaN "
                                                 r"or infinite values \(w\); training diverged\."):
        save_weights({"w": torch.tensor([1.0, math.inf, 0.0]), "steps": torch.tensor([5])}, path)
    assert load_file(path)["w"].tolist() == [1.0, 1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary file left


# -- NaN features ------------------------------------------------------------------------------


def _nan_source():
    """The tiny source, whose features are NaN for the first example of every batch."""
    from transferkit.sources import load_source

    torch.manual_seed(0)
    src = load_source(TINY_IMAGE_SOURCE)
    src.preprocessing.image_size = 32

    def poison(module, inputs, output):
        output = output.clone()
        output[0] = math.nan
        return output

    src.backbone.register_forward_hook(poison)
    return src


def test_nan_features_never_become_a_silent_score(data):
    from transferkit.data import load_task_data
    from transferkit.ranking import rank_sources

    task = load_task_data(data)
    rows = rank_sources(task, [_nan_source()], ["logme", "knn"], use_cache=False)
    row = rows[0]
    assert row["logme"] is None and row["knn"] is None
    assert row["notes"][0].startswith("logme failed: `X` contains ")
    assert "NaN or infinite value(s), the first at row 0" in row["notes"][0]
    assert all(isinstance(v, float) and math.isfinite(v) for r in rows for k, v in r.items()
               if k in ("logme", "knn") and v is not None)


def test_nan_features_stop_training_with_a_hint_to_check_the_inputs(data, tmp_path, monkeypatch):
    import transferkit.pipeline

    monkeypatch.setattr(transferkit.pipeline, "load_source", lambda source_id: _nan_source())
    with pytest.raises(NonFiniteLossError, match=r"^The shared layers' features hold NaN or infinite values \(the "
                                                 r"first at train example 0\) in stage 'linear_probe'; .* Check the "
                                                 r"inputs for NaN"):
        transferkit.pipeline.fit(data, source=TINY_IMAGE_SOURCE, out=tmp_path / "run", image_size=32,
                                 probe_epochs=1, baseline="none", verbose=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_normal_run_writes_finite_weights_and_metrics(data, tmp_path):
    """The control: the same tiny fit without poison succeeds and everything it writes is finite."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    code, _, err = cli(["fit", data, "--source", TINY_IMAGE_SOURCE, "--out", out, "--quiet", "--baseline", "none",
                        "--image-size", "32", "--probe-epochs", "2"])
    assert code == 0, err
    assert all(bool(torch.isfinite(t).all()) for t in load_file(out / "model.safetensors").values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["test_accuracy"]) and np.isfinite(metrics["test_macro_f1"])
