"""The fast paths give the answers of the slow ones: channels-last inference, prefetched
loading, and the convex probe head fitted in the span of the examples (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from transferkit.data.synthetic import write_image_folder
from transferkit.engine import extract
from transferkit.engine.extract import extract_features, in_pieces, inference_layout, prefetched
from transferkit.engine.probe import fit_linear_head
from transferkit.sources import input_pipeline
from transferkit.sources.inputs import ExampleDataset
from transferkit.surgery import build_target_model

from test_features import OTHER, TINY, tiny


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("fast") / "imgs", {"0": 5, "1": 5}, size=32)


def first_conv_inputs(module: torch.nn.Module) -> list[torch.Tensor]:
    """Records the input of the module's first 2-d convolution at every call."""
    seen: list[torch.Tensor] = []
    conv = next((m for m in module.modules() if isinstance(m, torch.nn.Conv2d)), None)
    conv.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    return seen


@pytest.fixture
def both_layouts(monkeypatch):
    def run(fn):
        monkeypatch.setattr(extract, "CHANNELS_LAST_ON_CPU", False)
        as_is = fn()
        monkeypatch.setattr(extract, "CHANNELS_LAST_ON_CPU", True)
        return as_is, fn()
    return run


def test_channels_last_features_equal_contiguous_ones_and_leave_the_weights_contiguous(images, both_layouts):
    src = tiny()
    seen = first_conv_inputs(src.backbone)
    dataset = ExampleDataset(images, None, input_pipeline(src, train=False))
    contiguous, channels_last = both_layouts(lambda: extract_features(src.backbone, dataset, batch_size=4))
    assert not seen[0].is_contiguous(memory_format=torch.channels_last)
    assert seen[-1].is_contiguous(memory_format=torch.channels_last)  # the fast layout was really used
    assert contiguous.shape == channels_last.shape == (10, src.feature_dim)
    torch.testing.assert_close(channels_last, contiguous, atol=1e-5, rtol=1e-5)
    assert all(t.is_contiguous() for t in src.backbone.state_dict().values())  # safetensors-ready as before
    assert not any(p.is_inference() for p in src.backbone.parameters())  # and they can still be trained


def test_predictions_are_the_same_in_both_layouts(images, both_layouts):
    from transferkit.runs import predict_proba

    src = tiny()
    torch.manual_seed(0)
    model = build_target_model(src, {"label": 2})
    contiguous, channels_last = both_layouts(lambda: predict_proba(model, src, images, batch_size=4))
    np.testing.assert_allclose(channels_last, contiguous, atol=1e-5)
    assert all(t.is_contiguous() for t in model.state_dict().values())


def test_a_transformer_runs_in_its_own_layout(images):
    src = tiny(OTHER)  # a ViT: one patch-embedding convolution, most weights in linear layers
    seen = first_conv_inputs(src.backbone)
    extract_features(src.backbone, ExampleDataset(images, None, input_pipeline(src, train=False)), batch_size=4)
    assert seen and not seen[0].is_contiguous(memory_format=torch.channels_last)
    with inference_layout(src.backbone, "cpu") as to_device:
        x = to_device({"pixel_values": torch.zeros(1, 3, 8, 8)})["pixel_values"]
    assert x.is_contiguous()


def test_the_layout_is_restored_when_the_forward_pass_fails():
    src = tiny(TINY)
    with pytest.raises(RuntimeError, match="boom"):
        with inference_layout(src.backbone, "cpu"):
            raise RuntimeError("boom")
    assert all(p.is_contiguous() for p in src.backbone.parameters())


def test_images_go_through_the_model_in_pieces_with_the_same_features(images, monkeypatch):
    batch = {"pixel_values": torch.zeros(10, 3, 32, 32), "mask": torch.ones(10, 5)}
    monkeypatch.setattr(extract, "INFERENCE_PIXELS", 4 * 32 * 32)
    pieces = in_pieces(batch)
    assert [len(p["pixel_values"]) for p in pieces] == [4, 4, 2] and [len(p["mask"]) for p in pieces] == [4, 4, 2]
    text = {"input_ids": torch.zeros(10, 7, dtype=torch.long), "attention_mask": torch.ones(10, 7)}
    assert in_pieces(text) == [text]  # no image-like input: one piece
    src = tiny()
    dataset = ExampleDataset(images, None, input_pipeline(src, train=False))
    calls = first_conv_inputs(src.backbone)
    in_fours = extract_features(src.backbone, dataset, batch_size=10)
    assert [len(x) for x in calls] == [4, 4, 2]
    monkeypatch.setattr(extract, "INFERENCE_PIXELS", 10**9)
    torch.testing.assert_close(extract_features(src.backbone, dataset, batch_size=10), in_fours, atol=1e-5, rtol=1e-5)
    assert len(calls[-1]) == 10


def test_prefetched_keeps_the_order_stops_early_and_passes_errors_on():
    assert list(prefetched(range(7))) == list(range(7))
    assert list(prefetched([])) == []
    taken = []
    for x in prefetched(range(100)):
        taken.append(x)
        if x == 2:
            break
    assert taken == [0, 1, 2]

    def failing():
        yield 1
        raise ValueError("unreadable batch")

    items = prefetched(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="unreadable batch"):
        next(items)


def toy_features(n_features: int, seed: int = 0):
    """A fixed 4-class problem: 240 train, 60 val, 1,000 test examples."""
    x, y = make_classification(1300, n_features, n_informative=min(n_features, 12), n_redundant=0, n_classes=4,
                               n_clusters_per_class=2, class_sep=1.5, random_state=seed)
    x = x * np.linspace(0.1, 10, n_features) + 3.0  # unstandardised, like pooled CNN features
    t = torch.from_numpy(x).float()
    return (t[:240], y[:240]), (t[240:300], y[240:300]), (t[300:], y[300:])


def test_the_head_fitted_in_span_coordinates_is_the_full_dimensional_fit():
    (xt, yt), (xv, yv), (xs, ys) = toy_features(400)  # more features than train + val examples
    fit = fit_linear_head(xt, yt, xv, yv, 4, refit=True)
    x_all, y_all = torch.cat([xt, xv]).double().numpy(), np.concatenate([yt, yv])
    mean, std = x_all.mean(0), x_all.std(0)
    full = LogisticRegression(C=fit.c, max_iter=5000, tol=1e-8).fit((x_all - mean) / std, y_all)
    expected = full.predict_proba((xs.double().numpy() - mean) / std)
    ours = torch.softmax(xs @ fit.weight.T + fit.bias, -1).numpy()
    np.testing.assert_allclose(ours, expected, atol=5e-3)
    assert (ours.argmax(1) == expected.argmax(1)).mean() >= 0.99


def adamw_probe_accuracy(train, val, test, epochs: int = 60, lr: float = 3e-3) -> float:
    """The head as transferkit trained it before the convex fit: mini-batch AdamW on the features
    for ``epochs`` at the probe's learning rate, batch 32, the best epoch on validation."""
    (xt, yt), (xv, yv), (xs, ys) = train, val, test
    torch.manual_seed(0)
    head = torch.nn.Linear(xt.shape[1], 4)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    yt_t = torch.as_tensor(yt)
    best, best_state = -1.0, None
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(32):
            loss = torch.nn.functional.cross_entropy(head(xt[idx]), yt_t[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            acc = float((head(xv).argmax(1).numpy() == yv).mean())
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    with torch.no_grad():
        return float((head(xs).argmax(1).numpy() == ys).mean())


def test_the_convex_head_is_as_accurate_as_the_old_adamw_loop():
    train, val, test = toy_features(32)
    fit = fit_linear_head(*train, *val, 4, refit=False)  # both see train alone, val to choose on
    xs, ys = test
    convex = float(((xs @ fit.weight.T + fit.bias).argmax(1).numpy() == ys).mean())
    old = adamw_probe_accuracy(train, val, test)
    assert convex >= old - 0.005, (convex, old)


def test_the_convex_fits_run_with_one_blas_thread(monkeypatch):
    from threadpoolctl import threadpool_info

    from transferkit.engine import probe

    seen = []
    real_fit = probe._fit

    def recording(*args):
        seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return real_fit(*args)

    monkeypatch.setattr(probe, "_fit", recording)
    (xt, yt), (xv, yv), _ = toy_features(16)
    probe.fit_linear_head(xt, yt, xv, yv, 4)
    probe.cross_validate_head(xt, yt, xv, yv, 4)
    assert seen and all(threads <= {1} for threads in seen)
