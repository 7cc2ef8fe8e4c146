"""Every registered strategy, at its defaults, learns a toy task that any working recipe learns.

The other strategy tests pass their own learning rates and epochs, so a default that trains
nothing (a learning rate too small for the steps a run takes, too few steps, a head that never
fits) passes them all. Here each strategy runs with no training option at all: only
``baseline="none"``, the seed and, for speed, the input size of the tiny image source. The data
are a few dozen examples whose classes differ visibly (images: the colour of a noisy picture;
texts: class-specific keywords), so a recipe that works must

(a) fit its train split: the train log-loss (computed from ``run.predict_proba``, whatever a
    stage records) falls below ``LOSS_FRACTION`` (0.6) of the chance level ``ln K``: a recipe that
    learns nothing stays near ``ln K`` (BitFit's earlier default ended at 0.95 ln K on the text
    toy, LoRA's at 0.89), while every strategy with a fresh head on the random image network ends
    between 0.36 and 0.58 ln K at seeds 0-2 (100 steps, the head at 1e-3), and

(b) generalise: test accuracy at least halfway from the majority-class rate to 1.

The text source is a 2-layer BERT 128 wide (the suite's usual tiny BERT is 32 wide). The default
rates are the field's for real encoders (384-1,280 features): a fresh head at 1e-3 moves its
logits in proportion to the feature width, and at 32 it needs several hundred steps to become
confident on any recipe (``full`` at ``--head-lr 1e-2`` gets there in the same 100), which
would make this test measure the toy's width rather than the recipe.

New strategies are covered by the parametrisation over ``STRATEGIES``. A strategy that does not
take a modality (``Strategy.takes``, e.g. ``setfit`` on images) must refuse it instead.
``TRANSFERKIT_TEST_SEED`` runs the file at another seed (the thresholds are meant
to hold for any).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_IMAGE_SOURCE, WORDS, save_random_bert
from PIL import Image

from transferkit import fit, load_task_data
from transferkit.errors import ConfigError
from transferkit.strategies import get_strategy, list_strategies

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run faster on one thread of 2 busy cores

STRATEGIES = [name for name, _ in list_strategies()]
SEED = int(os.environ.get("TRANSFERKIT_TEST_SEED", "0"))
#: Examples per class in each split: a few dozen to train on, enough test examples to measure.
PER_CLASS = {"train": 10, "val": 3, "test": 10}
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 40), "blue": (40, 60, 210)}
IMAGE_SIZE = 32
#: The train log-loss must end below this fraction of the chance level ln K.
LOSS_FRACTION = 0.6
#: The only options besides the seed: no baseline run, and the tiny image source at its data's size.
SPEED = {"image": {"image_size": IMAGE_SIZE}, "text": {}}


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """``root/{train,val,test}/{red,green,blue}/*.png``: noisy pictures tinted by the class colour,
    each with a lighter square at a random place (so no two images are alike)."""
    rng = np.random.default_rng(12345)
    root = tmp_path_factory.mktemp("colours")
    for split, n in PER_CLASS.items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.asarray(colour, float) + rng.normal(0, 35, (IMAGE_SIZE, IMAGE_SIZE, 3))
                side = int(rng.integers(6, 14))
                y, x = rng.integers(0, IMAGE_SIZE - side, 2)
                pixels[y:y + side, x:x + side] += 50
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB").save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A 2-layer, 128-wide BERT with random weights, on the word-level vocabulary of the keyword texts."""
    return save_random_bert(tmp_path_factory.mktemp("bert-128"), hidden=128)


@pytest.fixture(scope="module")
def keyword_table(tmp_path_factory):
    """A CSV with a split column: spam vs ham texts made of class-specific words (the BERT's vocabulary)."""
    rng = np.random.default_rng(54321)
    rows = [{"text": " ".join(rng.choice(WORDS[label], 4)) + " message", "label": label, "split": split}
            for split, n in PER_CLASS.items() for label in WORDS for _ in range(n)]
    path = tmp_path_factory.mktemp("keywords") / "keywords.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("kind", ["image", "text"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_learns_a_toy_task_at_its_defaults(strategy, kind, colour_folder, keyword_table, bert_dir,
                                                    monkeypatch):
    monkeypatch.setattr("transferkit.evaluation.report.write_report", lambda *args, **kwargs: None)  # no report
    data, source = {"image": (colour_folder, TINY_IMAGE_SOURCE), "text": (keyword_table, f"hf:{bert_dir}")}[kind]
    task = load_task_data(data)
    options = dict(source=source, strategy=strategy, verbose=False, baseline="none", seed=SEED, **SPEED[kind])
    if not get_strategy(strategy).takes(task.modality):  # refused before any weights load, in one sentence
        with pytest.raises(ConfigError, match=f"`--strategy {strategy}` trains on .*this data is {task.modality}"):
            fit(data, **options)
        return
    run = fit(data, **options)

    k = task.num_classes
    proba = run.predict_proba(task.train.examples)
    train_loss = float(-np.log(np.clip(proba[np.arange(len(proba)), task.train.labels], 1e-12, None)).mean())
    test_accuracy = float((run.predict_proba(task.test.examples).argmax(1) == task.test.labels).mean())
    majority = float(np.bincount(task.test.labels, minlength=k).max() / len(task.test.labels))
    stages = [(s["stage"], s.get("epochs_run"), s.get("optimizer_steps")) for s in run.metrics["stages"]]
    summary = (f"{strategy}/{kind} seed {SEED}: train log-loss {train_loss:.3f} (chance {math.log(k):.3f}), "
               f"test accuracy {test_accuracy:.3f} (majority {majority:.3f}); stages {stages}")
    print(summary)
    assert train_loss < LOSS_FRACTION * math.log(k), summary
    assert test_accuracy >= majority + 0.5 * (1 - majority), summary
