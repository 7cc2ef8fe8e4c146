"""transferkit's default and ``--strategy auto`` against the tools a practitioner would pick instead (issue 17).

The same grid, splits, sources and peer recipes as ``benchmarks/recipes.py`` (read its docstring
for what each tool runs and how its seconds are counted), with the tool list of issue 17:

- ``transferkit`` at its default strategy (``linear_probe``) and with ``--strategy auto``
  (strategies searched by successive halving within the default budget, each judged against
  its own probe), every other option at its default;
- ``fastai`` ``vision_learner`` + ``fine_tune(5)`` on the same MobileNetV2 weights (images);
- ``setfit`` at its defaults and HF ``Trainer`` on the same MiniLM directory (text);
- scikit-learn: ``LogisticRegression`` on frozen embeddings (C on val) and TF-IDF + the same
  logistic regression (text).

``--quick`` (one image and one text target at 8 labels per class, seed 0, 30 test examples per
class) is sized for well under 15 minutes on 2 cores. A plain run is the issue's grid: 3 image
and 3 text targets at 8, 32 and 128 labels per class, seeds 0-2. fastai and SetFit come from the
peers' venv (setup in ``benchmarks/recipes.py``); without it their cells report an error and the
rest runs.

Output: the Markdown table, then one JSON line per (tool, strategy, target, size) with test
accuracy mean ± std over seeds and seconds per seed, then the JSON summary. ``--out DIR``
resumes a grid in pieces, as in ``recipes.py``.

    .venv/bin/python benchmarks/peers.py --quick
    .venv/bin/python benchmarks/peers.py --out runs/peers
"""

from __future__ import annotations

import recipes

TOOLS = ["transferkit", "fastai", "setfit", "hf_trainer", "sklearn_lr", "tfidf_lr"]
STRATEGIES = ["linear_probe", "auto"]  # transferkit's default, and its own choice
QUICK = dict(targets=["digits", "rotten_tomatoes"], sizes=["8"], seeds=[0], test_per_class=30, tools=TOOLS,
             strategies=STRATEGIES)
FULL = dict(targets=["digits", "fashion_mnist", "lfw_faces", "rotten_tomatoes", "spam", "austen"],
            sizes=["8", "32", "128"], seeds=[0, 1, 2], tools=TOOLS, strategies=STRATEGIES)

if __name__ == "__main__":
    recipes.main(__doc__, quick=QUICK, full=FULL, lines=True)
