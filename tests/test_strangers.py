"""Code and weights from strangers: no model folder's code runs, no stranger's JSON goes unchecked.

- A transformers folder (``hf:``, a text run's ``source/hf``) whose config, tokenizer or processor
  JSON has an ``auto_map``, or a sentence-transformers ``modules.json`` naming a class of its own,
  is refused with ``UnsafeFileError`` before transformers reads anything; every transformers load
  passes ``trust_remote_code=False``; no y/N prompt ever appears.
- The JSON beside a ``file:`` checkpoint, a run's ``source.spec`` and ``source.preprocessing`` are
  checked against a schema (unknown keys, exact types, then ranges) before anything reaches torch,
  timm, torchvision or transformers; ``model_kwargs`` that make timm load a file are refused.
- A property test feeds hostile dicts to all three and checks that only ``TransferKitError``
  comes out, with every library entry point wired to fail the test if reached.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_IMAGE_SOURCE

from transferkit.errors import ConfigError, TransferKitError, UnsafeFileError

pytestmark = pytest.mark.filterwarnings("ignore")

NEVER_RUNS = r"transferkit never runs code shipped with a model"


class Reached(AssertionError):
    """A library entry point was called although the input should have been refused first."""


def _fail(what: str):
    def called(*args, **kwargs):
        raise Reached(f"{what} was called")

    return called


@pytest.fixture(autouse=True)
def no_prompt(monkeypatch):
    """No y/N prompt, terminal or not: ``input`` fails the test if anything asks."""
    monkeypatch.setattr(builtins, "input", _fail("input() (a y/N prompt)"))


def _forbid_transformers(monkeypatch) -> None:
    import transformers

    for cls in (transformers.AutoConfig, transformers.AutoModel, transformers.AutoTokenizer,
                transformers.AutoFeatureExtractor):
        monkeypatch.setattr(cls, "from_pretrained", _fail(f"{cls.__name__}.from_pretrained"))
    monkeypatch.setattr(transformers.AutoModel, "from_config", _fail("AutoModel.from_config"))


def _spy_trust_remote_code(monkeypatch) -> list:
    """Records the ``trust_remote_code`` of every transformers load (``"missing"`` when not passed)."""
    import transformers

    seen = []
    for cls, method in ((transformers.AutoConfig, "from_pretrained"), (transformers.AutoModel, "from_pretrained"),
                        (transformers.AutoTokenizer, "from_pretrained"), (transformers.AutoModel, "from_config")):
        original = getattr(cls, method)

        def spy(*args, _original=original, _name=f"{cls.__name__}.{method}", **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code", "missing")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, method, spy)
    return seen


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


AUTO_MAP = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "configuration_evil.EvilConfig"}


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_table, tiny_bert_dir):
    """A text run trained from the tiny BERT."""
    from transferkit.pipeline import fit

    out = tmp_path_factory.mktemp("strangers-text") / "run"
    fit(text_table, source=f"hf:{tiny_bert_dir}", out=out, epochs=1, probe_epochs=2, baseline="none", verbose=False)
    return out


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, image_folder):
    """An image run trained from timm's tiny test EfficientNet."""
    from transferkit.pipeline import fit

    out = tmp_path_factory.mktemp("strangers-image") / "run"
    fit(image_folder, source=TINY_IMAGE_SOURCE, out=out, epochs=1, probe_epochs=2, batch_size=16, image_size=32,
        baseline="none", verbose=False)
    return out


@pytest.fixture(scope="module")
def tiny_st_dir(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT saved as a sentence-transformers model (transformer + mean pooling)."""
    from sentence_transformers import SentenceTransformer, models

    d = tmp_path_factory.mktemp("tiny-st") / "model"
    transformer = models.Transformer(str(tiny_bert_dir), max_seq_length=32)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(d))
    return d


def _copy(src: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# -- 7: no stranger's code runs ------------------------------------------------------------------


@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json"])
def test_hf_folder_with_auto_map_is_refused_before_transformers(file, tiny_bert_dir, tmp_path, monkeypatch):
    from transferkit.sources import load_source

    model = _copy(tiny_bert_dir, tmp_path)
    _edit_json(model / file, auto_map=AUTO_MAP)
    (model / "modeling_evil.py").write_text("raise SystemExit('stranger code ran')\n")
    _forbid_transformers(monkeypatch)
    with pytest.raises(UnsafeFileError, match=rf"{file}.*`auto_map`.*{NEVER_RUNS}.*plain transformers classes"):
        load_source(f"hf:{model}")


def test_audio_folder_with_auto_map_in_preprocessor_config_is_refused(tiny_bert_dir, tmp_path, monkeypatch):
    from transferkit.sources import load_source

    model = _copy(tiny_bert_dir, tmp_path)
    (model / "preprocessor_config.json").write_text(json.dumps({"auto_map": {"AutoFeatureExtractor": "fe.FE"}}))
    _forbid_transformers(monkeypatch)
    with pytest.raises(UnsafeFileError, match=rf"preprocessor_config\.json.*`auto_map`.*{NEVER_RUNS}"):
        load_source(f"hf:{model}")


@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json"])
def test_text_run_with_auto_map_is_refused_before_transformers(file, text_run, tmp_path, monkeypatch):
    from transferkit.runs import load_run

    run = _copy(text_run, tmp_path)
    _edit_json(run / "source" / "hf" / file, auto_map=AUTO_MAP)
    _forbid_transformers(monkeypatch)
    with pytest.raises(UnsafeFileError, match=rf"source/hf/{file}.*`auto_map`.*{NEVER_RUNS}"):
        load_run(run)


def test_text_run_with_auto_map_is_one_line_exit_2_in_predict(text_run, text_table, tmp_path, monkeypatch):
    from test_safe_loading import _cli

    run = _copy(text_run, tmp_path)
    _edit_json(run / "source" / "hf" / "config.json", auto_map=AUTO_MAP)
    _forbid_transformers(monkeypatch)
    code, err = _cli(["predict", str(run), str(text_table), "--output", str(tmp_path / "p.csv")])
    assert code == 2, err
    assert "Traceback" not in err and "auto_map" in err and len(err.strip().splitlines()) == 1, err


def test_text_run_without_its_transformers_folder_is_one_clean_error(text_run, tmp_path):
    from transferkit.runs import load_run

    run = _copy(text_run, tmp_path)
    shutil.rmtree(run / "source" / "hf")
    with pytest.raises(ConfigError, match=r"source/hf' is missing.*Copy the whole run directory"):
        load_run(run)


def test_every_transformers_load_passes_trust_remote_code_false(tiny_bert_dir, text_run, monkeypatch):
    from transferkit.runs import load_run
    from transferkit.sources import load_source

    seen = _spy_trust_remote_code(monkeypatch)
    load_source(f"hf:{tiny_bert_dir}")
    load_source(f"hf:{tiny_bert_dir}@random")
    load_run(text_run)
    assert seen and all(value is False for _, value in seen), seen


def test_sentence_transformers_folder_loads_with_trust_remote_code_false(tiny_st_dir, monkeypatch):
    import sentence_transformers

    from transferkit.sources import load_source

    original, passed = sentence_transformers.SentenceTransformer, []

    def spy(*args, **kwargs):
        passed.append(kwargs.get("trust_remote_code", "missing"))
        return original(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", spy)
    seen = _spy_trust_remote_code(monkeypatch)
    source = load_source(f"st:{tiny_st_dir}")
    assert source.feature_dim == 32 and source.spec["pooling"] == "mean"
    assert passed == [False] and all(value is False for _, value in seen), (passed, seen)


@pytest.mark.parametrize("class_ref", ["mypkg.MyModule", "custom_pooling.Pooling",
                                       "sentence_transformers.util.import_from_string",
                                       "sentence_transformers.no_such_module.Pooling"])
def test_sentence_transformers_custom_module_is_refused(class_ref, tiny_st_dir, tmp_path, monkeypatch):
    import sentence_transformers

    from transferkit.sources import load_source

    model = _copy(tiny_st_dir, tmp_path)
    modules = json.loads((model / "modules.json").read_text())
    modules[1]["type"] = class_ref
    (model / "modules.json").write_text(json.dumps(modules))
    (model / "custom_pooling.py").write_text("raise SystemExit('stranger code ran')\n")
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", _fail("SentenceTransformer"))
    _forbid_transformers(monkeypatch)
    with pytest.raises(UnsafeFileError, match=rf"modules\.json.*{class_ref}.*key `type`.*{NEVER_RUNS}"):
        load_source(f"st:{model}")


def test_sentence_transformers_folder_with_auto_map_is_refused(tiny_st_dir, tmp_path, monkeypatch):
    import sentence_transformers

    from transferkit.sources import load_source

    model = _copy(tiny_st_dir, tmp_path)
    _edit_json(model / "config.json", auto_map=AUTO_MAP)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", _fail("SentenceTransformer"))
    with pytest.raises(UnsafeFileError, match=rf"config\.json.*`auto_map`.*{NEVER_RUNS}"):
        load_source(f"st:{model}")


# -- 8: model_kwargs, specs and preprocessing from files ----------------------------------------


def _forbid_timm(monkeypatch) -> None:
    import timm

    monkeypatch.setattr(timm, "create_model", _fail("timm.create_model"))


def _file_source(tmp_path: Path, config) -> Path:
    """A real safetensors checkpoint of the tiny timm model and ``config`` as the JSON beside it."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "mine.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(config))
    return path


REFUSED = ["checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict",
           "features_only"]


@pytest.mark.parametrize("key", REFUSED)
def test_file_json_model_kwargs_that_load_files_are_refused(key, tmp_path, monkeypatch):
    from transferkit.sources import load_source

    value = {"checkpoint_path": "x.pth", "pretrained": True, "pretrained_cfg": {"file": "x.pth"},
             "pretrained_cfg_overlay": {"file": "x.pth"}, "pretrained_strict": False, "features_only": True}[key]
    path = _file_source(tmp_path, {"architecture": "timm:test_efficientnet", "model_kwargs": {key: value}})
    _forbid_timm(monkeypatch)
    with pytest.raises(UnsafeFileError, match=rf"`model_kwargs\.{key}` in '.*mine\.json' is refused"):
        load_source(f"file:{path}")


def test_checkpoint_path_pickle_is_never_loaded(tmp_path):
    """The issue's case end to end: timm would have ``torch.load``-ed this pickle."""
    from test_safe_loading import torch_pickle

    from transferkit.sources import load_source

    marker = tmp_path / "marker"
    torch_pickle(marker, tmp_path / "x.pth")
    path = _file_source(tmp_path, {"architecture": "timm:test_efficientnet",
                                   "model_kwargs": {"checkpoint_path": str(tmp_path / "x.pth")}})
    with pytest.raises(UnsafeFileError, match=r"unpickle"):
        load_source(f"file:{path}")
    assert not marker.exists()


@pytest.mark.parametrize("config, error, match", [
    ({"architecture": "timm:test_efficientnet", "model_kwargs": {"in_chan": 3}}, ConfigError,
     r"Unknown key `model_kwargs\.in_chan`.*mine\.json"),
    ({"architecture": "timm:test_efficientnet", "model_kwargs": {"drop_rate": "0.2"}}, ConfigError,
     r"`model_kwargs\.drop_rate` in '.*mine\.json' must be a finite number in \[0, 1\); got '0\.2'"),
    ({"architecture": "timm:test_efficientnet", "model_kwargs": {"num_classes": True}}, ConfigError,
     r"`model_kwargs\.num_classes`.* must be a whole number"),
    ({"architecture": "timm:test_efficientnet", "model_kwargs": ["drop_rate"]}, ConfigError,
     r"`model_kwargs` in .* must be an object"),
    ({"architecture": "timm:test_efficientnet", "preprocessing": {"image_size": 100000}}, ConfigError,
     r"`preprocessing\.image_size` .* in \[16, 1024\]"),
    ({"architecture": "timm:test_efficientnet", "preprocessing": {"__class__": "x"}}, ConfigError,
     r"Unknown key `preprocessing\.__class__`"),
    ({"architecture": "timm:test_efficientnet", "preprocessing": {"modality": "text"}}, ConfigError,
     r"Unknown key `preprocessing\.modality`"),
    ({"architecture": "timm:test_efficientnet", "preprocessing": {"mean": [0.5, 0.5]}}, ConfigError,
     r"`preprocessing\.mean` .* 1 or 3 numbers"),
    ({"architecture": "timm:../../etc/passwd"}, ConfigError, r"`architecture` in .* must be a name"),
    ({"architecture": "torchvision:resnet18", "model_kwargs": {"drop_rate": 0.1}}, ConfigError,
     r"`model_kwargs` in .* apply to timm architectures only"),
    ({"architecure": "timm:test_efficientnet"}, ConfigError, r"Unknown key `architecure`.*Did you mean 'architecture'"),
    (["timm:test_efficientnet"], ConfigError, r"must be a JSON object"),
])
def test_file_json_is_checked_before_timm(config, error, match, tmp_path, monkeypatch):
    from transferkit.sources import load_source

    path = _file_source(tmp_path, config)
    _forbid_timm(monkeypatch)
    monkeypatch.setattr("torchvision.models.get_model", _fail("torchvision.models.get_model"))
    with pytest.raises(error, match=match):
        load_source(f"file:{path}")


def test_file_json_with_allowed_model_kwargs_still_loads(tmp_path):
    from transferkit.sources import load_source

    path = _file_source(tmp_path, {"architecture": "timm:test_efficientnet",
                                   "model_kwargs": {"drop_rate": 0.1, "drop_path_rate": 0},
                                   "preprocessing": {"image_size": 48, "crop_pct": 1}})
    source = load_source(f"file:{path}")
    assert source.spec["model_kwargs"] == {"drop_rate": 0.1, "drop_path_rate": 0.0}
    assert (source.preprocessing.image_size, source.preprocessing.crop_pct) == (48, 1.0)
    assert isinstance(source.preprocessing.mean, tuple)


def _edit_run_config(run: Path, edit) -> None:
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))


def test_run_spec_model_kwargs_checkpoint_path_is_refused(image_run, tmp_path, monkeypatch):
    from transferkit.runs import load_run

    run = _copy(image_run, tmp_path)
    _edit_run_config(run, lambda c: c["source"]["spec"].update(model_kwargs={"checkpoint_path": "x.pth"}))
    _forbid_timm(monkeypatch)
    with pytest.raises(UnsafeFileError, match=r"`source\.spec\.model_kwargs\.checkpoint_path` in '.*config\.json' "
                                              r"is refused"):
        load_run(run)


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.update(name="hf-hub:timm/resnet18"), r"`source\.spec\.name` .* must be a name"),
    (lambda s: s.update(name=["resnet18"]), r"`source\.spec\.name`"),
    (lambda s: s.update(loader="pickle"), r"`source\.spec\.loader` .* unknown architecture loader 'pickle'"),
    (lambda s: s.update(model_kwargs={"drop_rate": float("nan")}), r"`source\.spec\.model_kwargs\.drop_rate`"),
    (lambda s: s.update(extra=1), r"Unknown key `source\.spec\.extra`"),
    (lambda s: s.update(cut_at="group0"), r"`source\.spec\.cut_at` and `source\.spec\.cut_feature_dim`"),
])
def test_run_spec_is_checked_before_timm(edit, match, image_run, tmp_path, monkeypatch):
    from transferkit.runs import load_run

    run = _copy(image_run, tmp_path)
    _edit_run_config(run, lambda c: edit(c["source"]["spec"]))
    _forbid_timm(monkeypatch)
    with pytest.raises(ConfigError, match=match):
        load_run(run)


@pytest.mark.parametrize("change, match", [
    ({"__class__": "builtins.dict"}, r"Unknown key `source\.preprocessing\.__class__`"),
    ({"image_size": 100000}, r"`source\.preprocessing\.image_size` .* in \[16, 1024\] .*got 100000"),
    ({"image_size": True}, r"`source\.preprocessing\.image_size` .*got True"),
    ({"mean": "abc"}, r"`source\.preprocessing\.mean` .*a list .*got 'abc'"),
    ({"std": [0.5, 0.0, 0.5]}, r"`source\.preprocessing\.std\[1\]` .*> 0"),
    ({"crop_pct": 0.001}, r"`source\.preprocessing\.crop_pct`"),
    ({"interpolation": "bicubc"}, r"Did you mean 'bicubic'"),
])
def test_run_preprocessing_is_checked(change, match, image_run, tmp_path):
    from transferkit.runs import load_run

    run = _copy(image_run, tmp_path)
    _edit_run_config(run, lambda c: c["source"]["preprocessing"].update(change))
    with pytest.raises(ConfigError, match=match):
        load_run(run)


@pytest.mark.parametrize("values, match", [
    ({"modality": "image", "__class__": dict}, r"Unknown key `source\.preprocessing\.__class__`"),
    ({"modality": "image", "image_size": 100000, "mean": [0.5], "std": [0.5]}, r"image_size.*got 100000"),
    ({"modality": "image", "image_size": True, "mean": [0.5], "std": [0.5]}, r"image_size.*got True"),
    ({"modality": "image", "mean": "abc", "std": [0.5]}, r"mean.*got 'abc'"),
    ({"modality": "text", "max_length": 4.5}, r"max_length.*whole number"),
    ({"modality": "video"}, r"modality.*one of"),
    ({"image_size": 32}, r"lacks `source\.preprocessing\.modality`"),
    ("image", r"must be a JSON object"),
])
def test_preprocessing_from_dict_refuses(values, match):
    from transferkit.sources import Preprocessing

    before = Preprocessing.__dict__.copy()
    with pytest.raises(ConfigError, match=match):
        Preprocessing.from_dict(values)
    assert Preprocessing.__dict__ == before


def test_preprocessing_round_trips():
    from transferkit.sources import Preprocessing

    pre = Preprocessing("image", image_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), crop_pct=0.9)
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    audio = Preprocessing("audio", sample_rate=16000, clip_seconds=1.6)
    assert Preprocessing.from_dict(audio.to_dict()) == audio


# -- the schema helper itself ------------------------------------------------------------------


def test_schema_helper_types_then_ranges():
    from transferkit.sources.schema import boolean, check_mapping, integer, mapping, number, numbers, string, strings

    fields = {"n": integer(1, 10), "x": number(0, 1, high_open=True), "flag": boolean(), "names": strings(),
              "mode": string(choices=("a", "b")), "v": numbers(min_items=1, max_items=2, optional=True),
              "weights": mapping(values=number(0))}
    ok = check_mapping({"n": 3, "x": 0, "flag": False, "names": ["a"], "mode": "b", "v": None,
                        "weights": {"t": 1}}, fields, "'f.json'")
    assert ok == {"n": 3, "x": 0.0, "flag": False, "names": ["a"], "mode": "b", "v": None, "weights": {"t": 1.0}}
    assert isinstance(ok["x"], float)
    for bad, match in [({"n": True}, r"`n` in 'f\.json' must be a whole number in \[1, 10\]; got True"),
                       ({"n": 3.0}, r"`n`.*got 3\.0"), ({"n": 10**400}, r"`n`.* \.\.\."),
                       ({"x": 1}, r"`x`.*\[0, 1\)"), ({"x": "0.5"}, r"`x`.*got '0\.5'"),
                       ({"x": float("nan")}, r"`x`.*got nan"), ({"x": 10**400}, r"`x`"),
                       ({"flag": "no"}, r"`flag` .* true or false; got 'no'"), ({"flag": 0}, r"`flag`"),
                       ({"names": "ab"}, r"`names` .* a list"), ({"names": [1]}, r"`names\[0\]`"),
                       ({"mode": "c"}, r"`mode` .* one of 'a', 'b'"), ({"v": []}, r"`v` .* 1 to 2 items"),
                       ({"weights": {"t": -1}}, r"`weights\.t` .* >= 0"), ({"nn": 1}, r"Did you mean 'n'\?"),
                       ({1: 1}, r"Unknown key 1")]:
        with pytest.raises(ConfigError, match=match):
            check_mapping(bad, fields, "'f.json'")


# -- property: hostile dicts never get past validation ------------------------------------------

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the test extra installs hypothesis
    st = None

# An independent statement of what each key takes, against which values are made wrong:
# key -> (kind, low, high, low_open, high_open, optional). Kinds: int, float, bool, str, name, list[float], object.
PREPROCESSING = {
    "image_size": ("int", 16, 1024, False, False, True),
    "mean": ("list[float]", None, None, False, False, True),
    "std": ("list[float]", 0, None, True, False, True),
    "interpolation": ("str", None, None, False, False, False),
    "crop_pct": ("float", 0.5, 2.0, False, False, False),
}
FULL_PREPROCESSING = {**PREPROCESSING, "modality": ("str", None, None, False, False, False),
                      "max_length": ("int", 4, 8192, False, False, True),
                      "sample_rate": ("int", 1000, 384000, False, False, True),
                      "clip_seconds": ("float", 0.01, 120, False, False, True)}
MODEL_KWARGS = {
    "num_classes": ("int", 0, 100000, False, False, False),
    "drop_rate": ("float", 0, 1, False, True, False),
    "drop_path_rate": ("float", 0, 1, False, True, False),
    "global_pool": ("str", None, None, False, False, False),
    "img_size": ("int", 16, 1024, False, False, False),
}
CUT = {"cut_at": ("name", None, None, False, False, False),
       "cut_feature_dim": ("int", 1, 1 << 20, False, False, False)}
SEQ_OPTIONS = {"channels": ("int", 1, 1024, False, False, False), "width": ("int", 4, 4096, False, False, False),
               "layers": ("int", 1, 64, False, False, False), "dropout": ("float", 0, 1, False, True, False),
               "norm": ("str", None, None, False, False, False), "max_len": ("int", 2, 10**6, False, False, False),
               "heads": ("int", 1, 64, False, False, False), "patch": ("int", 1, 4096, False, False, False)}
# Each case: (valid base, {slot path: key table}); a slot is a nested object the mutations work in.
FILE_JSON_CASE = (
    {"architecture": "timm:test_efficientnet", "model_kwargs": {"drop_rate": 0.1},
     "preprocessing": {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop_pct": 0.9,
                       "interpolation": "bilinear"}},
    {(): {"architecture": ("name", None, None, False, False, False), "model_kwargs": ("object",) + (None,) * 5,
          "preprocessing": ("object",) + (None,) * 5},
     ("model_kwargs",): MODEL_KWARGS, ("preprocessing",): PREPROCESSING})
_STR = ("str", None, None, False, False, False)
SPEC_CASES = [
    ({"loader": "timm", "name": "test_efficientnet", "model_kwargs": {"drop_path_rate": 0.05}},
     {(): {"loader": _STR, "name": ("name",) + _STR[1:], "model_kwargs": ("object",) + (None,) * 5, **CUT},
      ("model_kwargs",): MODEL_KWARGS}),
    ({"loader": "torchvision", "name": "resnet18"}, {(): {"loader": _STR, "name": ("name",) + _STR[1:], **CUT}}),
    ({"loader": "hf_text", "dir": "hf", "pooling": "mean", "max_length": 64},
     {(): {"loader": _STR, "dir": _STR, "pooling": _STR, "max_length": ("int", 4, 8192, False, False, False),
           **CUT}}),
    ({"loader": "hf_audio", "dir": "hf", "model_type": "wav2vec2"},
     {(): {"loader": _STR, "dir": _STR, "model_type": _STR, **CUT}}),
    ({"loader": "seq", "arch": "transformer", "options": {"width": 32, "heads": 4, "layers": 1}},
     {(): {"loader": _STR, "arch": _STR, "options": ("object",) + (None,) * 5, **CUT}, ("options",): SEQ_OPTIONS}),
    ({"loader": "torchcrepe", "capacity": "tiny", "hop": 320},
     {(): {"loader": _STR, "capacity": _STR, "hop": ("int", 1, 16000, False, False, False), **CUT}}),
    ({"loader": "resemblyzer", "trim_silence": True},
     {(): {"loader": _STR, "trim_silence": ("bool",) + (None,) * 5, **CUT}}),
]
PREPROCESSING_CASE = (
    {"modality": "image", "image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
     "interpolation": "bilinear", "crop_pct": 0.9},
    {(): FULL_PREPROCESSING})


if st is not None:
    _junk_lists = st.lists(st.integers(-5, 5), max_size=3)
    _junk_dicts = st.dictionaries(st.text(max_size=4), st.integers(), min_size=1, max_size=2)
    _nonfinite = st.sampled_from([float("nan"), float("inf"), -float("inf")])
    _huge = st.sampled_from([10**400, -(10**400), 2**63, 10**30, 1e300])

    def _wrong_values(spec: tuple):
        """Values that ``spec`` refuses by construction: wrong type, non-finite or out of range."""
        kind, low, high, low_open, high_open, optional = spec
        floats = st.floats(allow_nan=True, allow_infinity=True)
        wrong = {
            "int": st.one_of(st.booleans(), floats, st.text(max_size=6), _junk_lists, _junk_dicts),
            "float": st.one_of(st.booleans(), _nonfinite, st.text(max_size=6), _junk_lists, _junk_dicts,
                               st.just(10**400)),
            "str": st.one_of(st.booleans(), st.integers(), floats, _junk_lists, _junk_dicts,
                             st.text(min_size=1, max_size=8).map(lambda s: "!" + s + "\n")),
            "name": st.one_of(st.booleans(), st.integers(), floats, _junk_lists, _junk_dicts,
                              st.sampled_from(["", "../x", "a/b", "hf-hub:timm/x", "-x", "a b", "x" * 300])),
            "bool": st.one_of(st.integers(), floats, st.text(max_size=6), _junk_lists, _junk_dicts),
            "list[float]": st.one_of(st.text(max_size=6), st.integers(), st.booleans(), floats, _junk_dicts,
                                     st.just([]), st.lists(st.floats(0.1, 1), min_size=5, max_size=7),
                                     st.lists(st.one_of(st.text(max_size=3), st.booleans(), st.none(), _nonfinite,
                                                        _junk_lists), min_size=1, max_size=3)),
            "object": st.one_of(st.booleans(), st.integers(), floats, st.text(max_size=6), _junk_lists),
        }[kind]
        options = [wrong] if optional else [wrong, st.none()]
        if kind == "int":  # every int key has both bounds
            options += [st.integers(max_value=low if low_open else low - 1),
                        st.integers(min_value=high if high_open else high + 1), _huge]
        elif kind in ("float", "list[float]"):
            finite = {"allow_nan": False, "allow_infinity": False}
            bounded = []
            if low is not None:  # open: low itself is out; closed: a margin keeps -0.0 (== 0.0) out
                bounded.append(st.floats(max_value=low if low_open else low - 1e-6, **finite))
            if high is not None:
                bounded.append(st.floats(min_value=high if high_open else high + 1e-6, **finite))
            if kind == "list[float]":
                bounded = [st.lists(b, min_size=1, max_size=3) for b in bounded]
            options += bounded
        return st.one_of(*options)

    @st.composite
    def hostile(draw, case):
        """A deep copy of a valid base with 1-3 mutations, each of which alone makes it invalid."""
        base, slots = case
        if draw(st.integers(0, 19)) == 0:  # not an object at all
            return draw(st.one_of(st.none(), st.integers(), st.text(max_size=5), _junk_lists))
        value = json.loads(json.dumps(base))
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(sorted(slots)))
            target = value
            for key in path:
                target = target.get(key) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                if path:  # the slot was replaced by a wrong value already: still invalid, mutate the top
                    path, target = (), value
                else:
                    continue
            table = slots[path]
            how = draw(st.sampled_from(["unknown", "wrong", "wrong", "wrong"]))
            if how == "unknown":
                key = draw(st.one_of(st.text(max_size=12), st.sampled_from(["__class__", "__dict__", "auto_map",
                                                                            "checkpoint_path", "pretrained"]))
                           .filter(lambda k: k not in table))
                target[key] = draw(st.one_of(st.integers(), st.text(max_size=4), st.none(), _junk_dicts))
            else:
                key = draw(st.sampled_from(sorted(table)))
                target[key] = draw(_wrong_values(table[key]))
        return value

    @contextlib.contextmanager
    def _nothing_past_validation():
        """Every way into torch, timm, torchvision, transformers and safetensors raises ``Reached``."""
        import safetensors.torch
        import timm
        import torchvision
        import transformers

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(timm, "create_model", _fail("timm.create_model"))
            mp.setattr(torchvision.models, "get_model", _fail("torchvision.models.get_model"))
            mp.setattr(safetensors.torch, "load_file", _fail("safetensors.torch.load_file"))
            _forbid_transformers(mp)
            mp.setattr(torch.nn.Module, "__init__", _fail("torch.nn.Module()"))
            yield

    def _only_our_errors(call, value) -> None:
        try:
            with _nothing_past_validation():
                call(value)
        except TransferKitError as e:
            message = str(e)
            assert message and "\n" not in message.strip(), message
            return
        raise AssertionError(f"accepted hostile input {value!r}")

    @pytest.fixture(scope="module")
    def hostile_dir(tmp_path_factory):
        """A ``file:`` checkpoint (any bytes; reading it is forbidden) and a run's ``source/hf`` folder."""
        from transferkit.sources.base import SCHEMES

        SCHEMES.discover()  # import every library before the patches go on
        d = tmp_path_factory.mktemp("hostile")
        (d / "m.safetensors").write_bytes(b"not read")
        (d / "source" / "hf").mkdir(parents=True)
        (d / "source" / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
        return d

    def _load_file_json(d: Path):
        from transferkit.sources import load_source

        def call(value):
            (d / "m.json").write_text(json.dumps(value))
            load_source(f"file:{d / 'm.safetensors'}")

        return call

    def _build_spec(d: Path):
        from transferkit.sources import build_from_spec

        return lambda value: build_from_spec(value, d / "source")

    def _from_dict(value):
        from transferkit.sources import Preprocessing

        Preprocessing.from_dict(value)

    def test_valid_bases_do_reach_the_libraries(hostile_dir):
        """The property below means something: unchanged, each base gets past validation."""
        from transferkit.sources import Preprocessing

        for call, value in [(_load_file_json(hostile_dir), FILE_JSON_CASE[0]),
                            *[(_build_spec(hostile_dir), base) for base, _ in SPEC_CASES]]:
            with pytest.raises(Reached), _nothing_past_validation():
                call(json.loads(json.dumps(value)))
        assert Preprocessing.from_dict(PREPROCESSING_CASE[0]).image_size == 32

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_hostile_file_json_never_gets_past_validation(hostile_dir, data):
        _only_our_errors(_load_file_json(hostile_dir), data.draw(hostile(FILE_JSON_CASE)))

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_hostile_source_spec_never_gets_past_validation(hostile_dir, data):
        case = data.draw(st.sampled_from(SPEC_CASES))
        _only_our_errors(_build_spec(hostile_dir), data.draw(hostile(case)))

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_hostile_preprocessing_never_gets_past_validation(data):
        _only_our_errors(_from_dict, data.draw(hostile(PREPROCESSING_CASE)))
