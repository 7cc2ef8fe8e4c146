"""Every source through the same checks, plus the weight-integrity test on real photos."""

from __future__ import annotations

import json

import pytest
import torch

from transferkit.errors import ConfigError, UnknownNameError
from transferkit.sources import input_pipeline, list_sources, load_source

IMAGENET_SOURCES = ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _check_source(source, examples):
    pipe = input_pipeline(source)
    batch = pipe.collate([pipe.load(e) for e in examples])
    source.backbone.eval()
    with torch.inference_mode():
        feats = source.backbone(**batch)
    assert feats.shape == (len(examples), source.feature_dim)
    assert torch.isfinite(feats).all()
    grouped = [p for g in source.layer_groups for p in g.params]
    assert sorted(grouped) == sorted(n for n, _ in source.backbone.named_parameters()), "groups cover every parameter once"
    assert len(source.layer_groups) >= 2
    json.dumps(source.spec)  # the architecture spec is plain JSON
    return feats


@pytest.mark.parametrize("name", [s.name for s in list_sources()])
def test_every_packaged_source(name, image_folder):
    source = load_source(name)
    info = next(s for s in list_sources() if s.name == name)
    assert source.modality == info.modality and source.feature_dim == info.feature_dim
    if source.modality == "image":
        source.preprocessing.image_size = 64
        examples = sorted(image_folder.rglob("*.png"))[:3]
    elif source.modality == "audio":  # (samples, rate) pairs: 0.4 s and 0.7 s tones at 8 kHz
        import numpy as np

        examples = [(0.3 * np.sin(2 * np.pi * f * np.arange(int(8000 * s)) / 8000).astype(np.float32), 8000)
                    for f, s in ((220, 0.4), (440, 0.7))]
    else:
        examples = ["a short sentence", "another, longer sentence about transfer learning"]
    _check_source(source, examples)
    assert (source.head is not None) == info.has_head


@pytest.mark.parametrize("source_id", ["timm:test_efficientnet@random", "timm:test_vit@random",
                                       "torchvision:resnet18@random", "mobilenet_v2@random"])
def test_architecture_only_sources(source_id, image_folder):
    source = load_source(source_id)
    source.preprocessing.image_size = 32
    _check_source(source, sorted(image_folder.rglob("*.png"))[:2])
    assert source.weights == "random init"


def test_hf_directory_source(tiny_bert_dir):
    source = load_source(f"hf:{tiny_bert_dir}")
    feats = _check_source(source, ["win cash now", "team meeting notes at lunch"])
    assert feats.shape[1] == 32
    assert [g.name for g in source.layer_groups] == ["model.embeddings", "model.encoder.layer.0", "model.encoder.layer.1"]


def test_random_copy_differs_from_pretrained():
    a = load_source("efficientnet_lite0").backbone.state_dict()
    b = load_source("efficientnet_lite0@random").backbone.state_dict()
    key = next(k for k in a if k.endswith("weight") and a[k].dim() == 4)
    assert not torch.equal(a[key], b[key])


@pytest.mark.parametrize("name", IMAGENET_SOURCES)
def test_weight_integrity_on_real_photos(name):
    """Real ImageNet weights: the cat photo is a cat class (281-285), the coffee photo espresso (967)."""
    from PIL import Image
    from skimage import data

    source = load_source(name)
    pipe = input_pipeline(source)
    batch = pipe.collate([pipe.load(Image.fromarray(data.chelsea())), pipe.load(Image.fromarray(data.coffee()))])
    source.backbone.eval()
    with torch.inference_mode():
        cat, coffee = source.head(source.backbone(**batch)).argmax(1).tolist()
    assert 281 <= cat <= 285
    assert coffee == 967


def test_list_sources_names_every_packaged_model():
    names = {s.name for s in list_sources()}
    assert {"mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "minilm"} <= names


@pytest.mark.parametrize("bad, match", [
    ("mobilenetv2", r"Unknown source 'mobilenetv2'\. Did you mean 'mobilenet_v2'\?"),
    ("efficientnet_lite3", r"Did you mean 'efficientnet_lite[0-2]'"),
    ("timmm:resnet18", r"Unknown source scheme 'timmm:'"),
    ("timm:resnet_18", r"Unknown timm model 'resnet_18'\. Did you mean"),
    ("torchvision:mobilenet_v22", r"Did you mean 'torchvision:mobilenet_v2'"),
])
def test_unknown_ids_get_did_you_mean(bad, match):
    with pytest.raises(UnknownNameError, match=match):
        load_source(bad)


def test_file_source_needs_its_json(tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(1)}, ckpt)
    with pytest.raises(ConfigError, match=r"needs a JSON file beside it naming the architecture"):
        load_source(f"file:{ckpt}")


def test_file_source_loads_a_torchvision_state_dict(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=7)
    save_file(model.state_dict(), tmp_path / "mine.safetensors")
    (tmp_path / "mine.json").write_text(json.dumps({"architecture": "torchvision:resnet18",
                                                    "preprocessing": {"image_size": 96}}))
    source = load_source(f"file:{tmp_path / 'mine.safetensors'}")
    assert source.preprocessing.image_size == 96
    assert source.head.out_features == 7
    assert torch.equal(source.backbone.model.conv1.weight, model.conv1.weight)
