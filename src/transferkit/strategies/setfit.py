"""SetFit: contrastive sentence-pair tuning of the text encoder, then a head on its features.

Tunstall, Reimers, Jo, Bates, Korat, Wasserblat and Pereg (2022), "Efficient Few-Shot Learning
Without Prompts" (SetFit). With a handful of labelled texts per class, a classifier trained on
frozen sentence embeddings is limited by how well those embeddings already separate the
classes. SetFit first moves the encoder itself, with a cheap siamese objective on pairs drawn
from the few labelled examples: a pair of same-class texts should have cosine similarity 1, a
pair from different classes 0 (``CosineSimilarityLoss``). Pairs grow quadratically with the
examples, so 8 texts per class already give hundreds of training signals. A head is then fitted
on the tuned encoder's features.

Two stages, both recorded in ``trainer.stages`` (so in ``metrics.json``):

1. ``setfit``: the shared layers (less ``--freeze``) tune on sentence pairs with
   sentence-transformers' ``SentenceTransformerTrainer`` and ``CosineSimilarityLoss`` (what the
   setfit library runs too), through a thin sentence-transformers module around the source's
   own backbone: the very same weights train, the backbone keeps its structure and pooling, so
   the tuned embedding is exactly the feature the head sees, and save, export and ``run:``
   reuse work as for every other strategy. The heads do not train here.
2. ``linear_probe``: shared layers frozen, heads fitted on features of the tuned encoder
   (``Trainer.fit_heads_on_features``).

Pairs (``contrastive_pairs``) come from the Trainer's train split only (never val or test), for
its main task, drawn with ``--seed``: SetFit's original scheme, in rounds; each round visits every
example once, in a fresh random order, and pairs it with one random other example of its class
(label 1) and one of another class (label 0). ``SETFIT_ITERATIONS = 20`` rounds (SetFit's
``num_iterations=20``) give 2 x 20 x N pairs, and two caps keep the stage affordable:

- ``MAX_PAIRS = 20_000`` everywhere (SetFit's 2 x 20 x N up to N = 500);
- on a CPU, a compute budget: ``CPU_FLOPS = 1e13`` training FLOPs, counted as
  ``6 x (non-embedding parameters of the shared layers) x tokens`` (forward + backward), both texts
  of every pair at their mean truncated length in the train split. Measured with the packaged
  all-MiniLM-L6-v2 (10.6 M non-embedding parameters) on SpamAssassin emails (all at its 256-token
  limit) on 2 shared CPU cores: 5.7 s per batch of 16 pairs (~90 GFLOP/s), so the budget is 305
  pairs, 20 steps, ~2 minutes, whatever N is (500 emails included); 64-token texts get ~1,200
  pairs in about the same time, and a 12-layer BERT-base ~8 times fewer pairs than MiniLM.
  A tiny model stays at SetFit's full 2 x 20 x N.

The stage record says which cap applied (``pairs_cap_by``).

The recipe is SetFit's: 1 epoch over the pairs, batch 16 pairs, learning rate 2e-5 (``--lr``
overrides it, as for every strategy's shared layers), linear decay after a ``--warmup-ratio``
warm-up (SetFit's 0.1 by default), AdamW with ``--weight-decay``, gradients clipped at 1.
Those SetFit settings that have no ``FitConfig`` option yet are the class attributes below;
``--epochs`` and ``--batch-size`` are not used for the pairs (transferkit sizes them for
ordinary fine-tuning).

Only text sources: the pairs are texts and the loss compares sentence embeddings. Resume: the
pair stage is checkpointed when it ends (``Trainer.external_stage``), so a run killed later
comes back without tuning again; one killed inside it tunes again from the start.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time

import numpy as np
from torch import nn

from transferkit.errors import ConfigError
from transferkit.sources.inputs import TextInputs
from transferkit.strategies.base import Strategy, register
from transferkit.surgery.freezing import count_trainable, freeze_matching, set_trainable

#: Pairing rounds (SetFit's ``num_iterations``): each gives every train example one positive and one negative pair.
SETFIT_ITERATIONS = 20
#: The most pairs a run tunes on: SetFit's 2 x 20 x N up to N = 500.
MAX_PAIRS = 20_000
#: Training FLOPs the pairs may cost on a CPU: ~2 minutes of all-MiniLM-L6-v2 on 2 cores (~90 GFLOP/s measured).
CPU_FLOPS = 1e13
#: Pairs per batch, epochs over the pairs, and the shared layers' rate without ``--lr``: SetFit's defaults.
PAIR_BATCH_SIZE = 16
PAIR_EPOCHS = 1
BODY_LR = 2e-5


def contrastive_pairs(labels, seed: int, iterations: int = SETFIT_ITERATIONS,
                      max_pairs: int = MAX_PAIRS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SetFit's pairs of example indices: ``(first, second, same)``, ``same`` 1.0 for one class, else 0.0.

    ``iterations`` rounds; in each, every example (in a new random order) gets one partner of its
    own class (another example when the class has one) and one of another class (none when the
    split has one class only). The pairs stop at ``max_pairs``, so a cut falls on a random subset
    of the last round. Deterministic for a ``seed``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    members = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    others = {c: np.flatnonzero(labels != c) for c in members}
    first, second, same = [], [], []
    for _ in range(iterations):
        if len(first) >= max_pairs:
            break
        for i in rng.permutation(n):
            c = labels[i]
            pool = members[c] if len(members[c]) == 1 else members[c][members[c] != i]
            first.append(i), second.append(pool[rng.integers(len(pool))]), same.append(1.0)
            if len(others[c]):
                first.append(i), second.append(others[c][rng.integers(len(others[c]))]), same.append(0.0)
    keep = slice(0, max_pairs)
    return (np.asarray(first[keep], dtype=np.int64), np.asarray(second[keep], dtype=np.int64),
            np.asarray(same[keep], dtype=np.float32))


def pair_cap(backbone: nn.Module, token_counts, device_type: str, max_pairs: int = MAX_PAIRS,
             cpu_flops: float = CPU_FLOPS) -> tuple[int, str]:
    """The most pairs to tune on, and which cap set it: ``max_pairs``, or on a CPU the ``cpu_flops`` budget.

    A pair costs ``6 x P x 2 x L`` FLOPs (forward and backward of both texts), ``P`` the shared
    layers' parameters outside embedding tables (lookups cost no multiplications), ``L`` the mean
    truncated length of the train texts in tokens.
    """
    if device_type != "cpu":
        return max_pairs, "max_pairs"
    embeddings = {id(p) for m in backbone.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    params = sum(p.numel() for p in backbone.parameters() if id(p) not in embeddings)
    per_pair = 6 * max(params, 1) * 2 * max(float(np.mean(token_counts)) if len(token_counts) else 1.0, 1.0)
    budget = max(1, int(cpu_flops // per_pair))
    return (budget, f"cpu budget ({cpu_flops:.0e} FLOPs)") if budget < max_pairs else (max_pairs, "max_pairs")


def sentence_model(backbone: nn.Module, pipeline: TextInputs, device: str):
    """A ``SentenceTransformer`` whose one module runs ``backbone`` (shared, not copied) on ``pipeline``'s batches.

    Its ``sentence_embedding`` is exactly the backbone's output (the source's own pooling), so
    training it trains the target model's shared layers in place.
    """
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.base.modules import InputModule
    except ImportError:  # sentence-transformers 5
        from sentence_transformers.models import InputModule

    class SharedLayers(InputModule):
        """The target model's shared layers as a sentence-transformers input module (training only)."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.tokenizer = pipeline.tokenizer
            self.max_seq_length = pipeline.max_length

        def preprocess(self, inputs, prompt=None, **kwargs):
            return pipeline.collate([str(x) for x in inputs])

        def tokenize(self, texts, **kwargs):  # sentence-transformers 5 calls this one
            return self.preprocess(texts)

        def forward(self, features, **kwargs):
            names = ("input_ids", "attention_mask", "token_type_ids")
            features["sentence_embedding"] = self.backbone(**{k: features[k] for k in names if k in features})
            return features

        def save(self, *args, **kwargs):
            raise NotImplementedError("transferkit saves the target model itself (runs.save_run)")

    return SentenceTransformer(modules=[SharedLayers()], device=device)


@register("setfit")
class SetFit(Strategy):
    summary = "few-shot text: contrastive sentence-pair tuning of the encoder, then a head on it (SetFit)"
    paper = "Tunstall et al. 2022, Efficient Few-Shot Learning Without Prompts (SetFit)"
    default_lr = BODY_LR
    modalities = ("text",)
    iterations, max_pairs, cpu_flops = SETFIT_ITERATIONS, MAX_PAIRS, CPU_FLOPS
    pair_batch_size, pair_epochs = PAIR_BATCH_SIZE, PAIR_EPOCHS

    def train(self, model, trainer):
        pipeline = trainer.train_set.pipeline
        if not self.takes(trainer.task.modality) or not isinstance(pipeline, TextInputs):
            raise ConfigError(
                f"`--strategy setfit` tunes a text encoder on pairs of texts, and this source takes "
                f"{trainer.task.modality} inputs. Use a text source (`transferkit sources`), or for "
                f"{trainer.task.modality} data a strategy such as `--strategy linear_probe`, `lp_ft` or `full`.")
        # 1. Contrastive pairs: the shared layers move, the heads wait.
        set_trainable(model, heads=False)
        freeze_matching(model, self.config.freeze)
        trainer.external_stage(model, "setfit", lambda: self.tune_on_pairs(model, trainer))
        # 2. The heads, fitted on the tuned encoder's features.
        set_trainable(model, groups=[], heads=True)
        freeze_matching(model, self.config.freeze)
        # refitted on train + val, unless WiSE-FT chooses its alpha on val afterwards
        trainer.fit_heads_on_features(model, stage="linear_probe", refit=not self.config.wise_ft)

    def tune_on_pairs(self, model, trainer, stage: str = "setfit") -> dict:
        """Stage 1: the shared layers trained on ``contrastive_pairs`` of the train split; returns its
        record (``Trainer.external_stage`` appends and checkpoints it)."""
        import sentence_transformers
        from datasets import Dataset
        from sentence_transformers import SentenceTransformerTrainingArguments
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        try:  # sentence-transformers >= 6
            from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
        except ImportError:
            from sentence_transformers.losses import CosineSimilarityLoss

        started = time.perf_counter()
        cfg, acc = trainer.config, trainer.accelerator
        task = trainer.task.task_name
        pipeline = trainer.train_set.pipeline
        texts = [pipeline.load(x) for x in trainer.train_set.examples]
        tokens = [int(n) for i in range(0, len(texts), 1024)
                  for n in pipeline.collate(texts[i:i + 1024])["attention_mask"].sum(1)]
        cap, cap_by = pair_cap(model.backbone, tokens, acc.device.type, self.max_pairs, self.cpu_flops)
        first, second, same = contrastive_pairs(trainer.train_set.labels[task], cfg.seed, self.iterations, cap)
        pairs = Dataset.from_dict({"sentence1": [texts[i] for i in first], "sentence2": [texts[j] for j in second],
                                   "label": same.tolist()})
        body = sentence_model(model.backbone, pipeline, str(acc.device))
        trainable = count_trainable(model)
        steps = self.pair_epochs * math.ceil(math.ceil(len(pairs) / self.pair_batch_size) / cfg.grad_accum)
        verbose = trainer.verbose and acc.is_main_process
        with tempfile.TemporaryDirectory(prefix="transferkit-setfit-") as scratch:
            args = SentenceTransformerTrainingArguments(
                output_dir=scratch, num_train_epochs=self.pair_epochs, per_device_train_batch_size=self.pair_batch_size,
                gradient_accumulation_steps=cfg.grad_accum, learning_rate=self.lr, weight_decay=cfg.weight_decay,
                warmup_steps=int(cfg.warmup_ratio * steps), lr_scheduler_type="linear", max_grad_norm=1.0,
                seed=cfg.seed, data_seed=cfg.seed, bf16=acc.mixed_precision == "bf16",
                fp16=acc.mixed_precision == "fp16", use_cpu=acc.device.type == "cpu",
                dataloader_num_workers=cfg.num_workers, dataloader_pin_memory=acc.device.type == "cuda",
                logging_strategy="steps", logging_steps=1, save_strategy="no", eval_strategy="no",
                report_to="none", disable_tqdm=not verbose)
            quiet_trainer, bar_only = _trainer_classes()
            st_trainer = quiet_trainer(model=body, args=args, train_dataset=pairs, loss=CosineSimilarityLoss(body))
            st_trainer.remove_callback(PrinterCallback)  # a dict per logged step otherwise
            if st_trainer.pop_callback(ProgressCallback) is not None:
                st_trainer.add_callback(bar_only)
            output = st_trainer.train()
            losses = [row["loss"] for row in st_trainer.state.log_history if "loss" in row]
        seconds = time.perf_counter() - started
        quarter = max(1, len(losses) // 4)
        record = {"stage": stage, "epochs_run": self.pair_epochs, "best_epoch": self.pair_epochs,
                  "best_val_accuracy": None, "trainable_parameters": trainable,
                  "optimizer_steps": int(output.global_step), "seconds": seconds,
                  "examples_per_second": len(pairs) * self.pair_epochs / max(seconds, 1e-9),
                  "pairs": len(pairs), "positive_pairs": int(same.sum()), "negative_pairs": int(len(same) - same.sum()),
                  "pairs_from": f"train split ({len(texts)} examples), seed {cfg.seed}",
                  "iterations": self.iterations, "pairs_cap": cap, "pairs_cap_by": cap_by,
                  "mean_tokens": float(np.mean(tokens)) if tokens else 0.0, "batch_size": self.pair_batch_size,
                  "lr": self.lr, "loss": "CosineSimilarityLoss", "train_loss": float(output.training_loss),
                  "loss_first_quarter": float(np.mean(losses[:quarter])) if losses else None,
                  "loss_last_quarter": float(np.mean(losses[-quarter:])) if losses else None,
                  "library": f"sentence-transformers {sentence_transformers.__version__}"}
        row = {"stage": stage, "epoch": self.pair_epochs, "train_loss": float(output.training_loss), "lr": self.lr}
        trainer.history.append(row)
        trainer.tracking.log_epoch(row)
        model.to(acc.device)
        return record


@functools.cache
def _trainer_classes():
    """``(trainer, progress bar)`` classes on sentence-transformers' and transformers' (imported on first use)."""
    from sentence_transformers import SentenceTransformerTrainer
    from transformers.trainer_callback import ProgressCallback

    class QuietTrainer(SentenceTransformerTrainer):
        """No model card: the body is saved by transferkit, as part of the target model."""

        def add_model_card_callback(self, *args, **kwargs):
            return None

    class BarOnly(ProgressCallback):
        """transformers' progress bar without its printed dict of every logged step."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    return QuietTrainer, BarOnly
