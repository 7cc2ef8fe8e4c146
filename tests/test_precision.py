"""Both sides of the CPU-dependent precision branch, and precisions that change within a process.

On a CPU, ``--precision bf16`` trains in bf16 only where the processor reports native bf16
(``/proc/cpuinfo``); elsewhere it falls back to fp32. ``TRANSFERKIT_CPU_BF16=1`` / ``=0``
forces either side, so every machine runs both paths here, whatever its CPU. Accelerate keeps
one mixed precision per process; the engine lets a single process switch between trainings.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import FAST, TINY_IMAGE_SOURCE

from transferkit import fit
from transferkit.config import FitConfig
from transferkit.data import load_task_data
from transferkit.engine import Trainer, launch, loop, precision
from transferkit.errors import ConfigError
from transferkit.sources import load_source
from transferkit.strategies import get_strategy
from transferkit.surgery import DEFAULT_TASK, build_target_model

#: The CPU rule applies only without a GPU (a GPU decides by its own bf16 support).
ON_CPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU bf16 rule applies without a GPU")
#: TRANSFERKIT_CPU_BF16 -> the mixed precision a CPU chooses for `--precision bf16`.
FORCED = [("1", "bf16"), ("0", "no")]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster on shared cores


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """A stand-in for ``/proc/cpuinfo``: write flags into the returned path (absent: unreadable)."""
    path = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "CPUINFO", path)
    return path


# -- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "native"), [("1", True), ("true", True), (" ON ", True),
                                               ("0", False), ("false", False), ("off", False)])
def test_the_environment_overrides_the_cpu_flags(value, native, cpuinfo, monkeypatch):
    cpuinfo.write_text("flags\t\t: fpu avx2\n" if native else "flags\t\t: fpu avx512f avx512_bf16\n")
    monkeypatch.setenv(precision.CPU_BF16_ENV, value)
    assert precision.cpu_has_native_bf16() is native
    # text handed in is parsed as it is: the variable only replaces reading this machine's flags
    assert precision.cpu_has_native_bf16(cpuinfo.read_text()) is not native


def test_without_the_environment_the_cpu_flags_decide(cpuinfo, monkeypatch):
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    assert precision.cpu_has_native_bf16() is False  # unreadable
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu amx_bf16 amx_tile\n")
    assert precision.cpu_has_native_bf16() is True
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2\n")
    assert precision.cpu_has_native_bf16() is False
    monkeypatch.setenv(precision.CPU_BF16_ENV, "")  # empty counts as unset
    assert precision.cpu_has_native_bf16() is False


def test_a_bad_value_is_a_config_error(monkeypatch):
    monkeypatch.setenv(precision.CPU_BF16_ENV, "maybe")
    with pytest.raises(ConfigError, match=r"^`TRANSFERKIT_CPU_BF16` must be 1 or 0 .*; got 'maybe'\. Unset it"):
        precision.cpu_has_native_bf16()


@pytest.mark.parametrize(("forced", "chosen"), FORCED)
def test_resolve_precision_on_a_cpu_follows_the_forced_flags(forced, chosen, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(precision.CPU_BF16_ENV, forced)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.resolve_precision("bf16") == chosen
        assert precision.resolve_precision("no") == "no"
    assert [str(w.message) for w in caught] == (
        [] if chosen == "bf16" else ["--precision bf16 is not fast on this CPU (no native support); training in fp32."])
    with pytest.warns(UserWarning, match="fp16 is not fast on this CPU"):
        assert precision.resolve_precision("fp16") == "no"  # fp16 autocast is for GPUs, either way


# -- training -------------------------------------------------------------------------------------


def _linear_output_dtypes():
    """Records the output dtype of every ``nn.Linear`` call until the handle is removed."""
    seen: set[torch.dtype] = set()

    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear):
            seen.add(output.dtype)

    return seen, torch.nn.modules.module.register_module_forward_hook(hook)


@ON_CPU
@pytest.mark.filterwarnings("ignore:--precision bf16 is not fast")
@pytest.mark.parametrize(("forced", "chosen"), FORCED)
def test_a_bf16_fit_trains_in_the_chosen_precision(forced, chosen, image_folder, monkeypatch):
    monkeypatch.setenv(precision.CPU_BF16_ENV, forced)
    cfg = FitConfig.from_dict({**FAST, "strategy": "full", "precision": "bf16", "grad_accum": 2})
    task = load_task_data(image_folder, seed=0)
    src = load_source(TINY_IMAGE_SOURCE)
    src.preprocessing.image_size = cfg.image_size
    model = build_target_model(src, {DEFAULT_TASK: task.num_classes})
    seen, handle = _linear_output_dtypes()
    try:
        trainer = Trainer(cfg, task, src, verbose=False)
        get_strategy(cfg.strategy)(cfg).train(model, trainer)
    finally:
        handle.remove()
    assert trainer.accelerator.mixed_precision == chosen
    assert (torch.bfloat16 in seen) == (chosen == "bf16")  # autocast really ran (or did not)
    losses = [row["train_loss"] for row in trainer.history]
    assert len(losses) == cfg.epochs and all(math.isfinite(x) for x in losses)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@ON_CPU
@pytest.mark.filterwarnings("ignore:--precision bf16 is not fast")
@pytest.mark.parametrize("forced", ["1", "0"])
def test_fit_twice_in_one_process_with_different_precisions(forced, image_folder, monkeypatch):
    """A Python user may call ``fit`` again with another precision (Accelerate's state is per process)."""
    monkeypatch.setenv(precision.CPU_BF16_ENV, forced)
    made = []
    original = loop.make_accelerator

    def recording(mixed_precision, grad_accum):
        accelerator = original(mixed_precision, grad_accum)
        made.append(accelerator.mixed_precision)
        return accelerator

    monkeypatch.setattr(loop, "make_accelerator", recording)
    for asked in ("no", "bf16", "no"):
        run = fit(image_folder, source=TINY_IMAGE_SOURCE, strategy="full", verbose=False,
                  **{**FAST, "epochs": 1, "precision": asked})
        assert np.isfinite(run.metrics["test_accuracy"])
    bf16 = "bf16" if forced == "1" else "no"
    assert made == ["no", bf16, "no"]


def test_accelerators_with_different_precisions_in_one_process():
    for mixed, dtype in [("no", torch.float32), ("bf16", torch.bfloat16), ("no", torch.float32)]:
        accelerator = launch.make_accelerator(mixed, 1)
        assert accelerator.mixed_precision == mixed == AcceleratorState().mixed_precision
        x = torch.ones(4, 4, device=accelerator.device)
        with accelerator.autocast():
            assert torch.nn.functional.linear(x, x).dtype == dtype


def test_a_launched_process_keeps_its_precision(monkeypatch):
    launch.make_accelerator("no", 1)
    monkeypatch.setattr(launch, "launched_processes", lambda: 2)
    launch.release_precision("no")  # the same precision: nothing to change
    with pytest.raises(ConfigError, match=r"already trained with mixed precision 'no', and a launched process "
                                          r"\(2 processes\) cannot switch to 'bf16'"):
        launch.release_precision("bf16")
    assert AcceleratorState().mixed_precision == "no"  # the shared state was left alone
