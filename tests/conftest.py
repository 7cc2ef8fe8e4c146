"""Shared offline fixtures: tiny image folders, text tables and a tiny BERT built from a config."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pandas as pd
import pytest
import torch

from transferkit.data.synthetic import write_image_folder

torch.set_num_threads(min(2, torch.get_num_threads()))

#: A fast image source: timm's 0.1M-parameter test EfficientNet with random weights.
TINY_IMAGE_SOURCE = "timm:test_efficientnet@random"
#: Options that make a fit take seconds.
FAST = {"epochs": 2, "probe_epochs": 5, "batch_size": 16, "image_size": 32, "baseline": "none"}

WORDS = {"spam": ["win", "cash", "prize", "free", "offer", "click"],
         "ham": ["meeting", "lunch", "report", "project", "team", "notes"]}


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Four digit classes, 12 PNGs each, 32 px."""
    root = tmp_path_factory.mktemp("digits")
    write_image_folder(root, {"0": 12, "1": 12, "2": 12, "3": 12}, size=32)
    return root


@pytest.fixture(scope="session")
def text_table(tmp_path_factory):
    """A CSV of 40 short 'emails', spam vs ham, with class-specific words."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = [{"text": " ".join(rng.choice(WORDS[label], 4)) + f" message {i}", "label": label}
            for label in WORDS for i in range(20)]
    path = tmp_path_factory.mktemp("emails") / "emails.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def save_random_bert(d, hidden: int = 32):
    """A 2-layer BERT ``hidden`` wide with random weights (seed 0) and a word-level vocabulary, saved in ``d``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "message", *sorted({w for ws in WORDS.values() for w in ws}),
             *[str(i) for i in range(10)]]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(d / "vocab.txt")).save_pretrained(d)  # transformers 5 ignores `vocab_file=`
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT with random weights and a word-level vocabulary, saved offline."""
    return save_random_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (tiny models run faster than with two on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
