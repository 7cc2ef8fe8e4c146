"""Several processes through Accelerate (DDP over gloo on CPUs) train the same model as one.

Same global batch: 2 processes with batch 8 against 1 process with batch 16. The data order
and augmentations are functions of (seed, stage, epoch, example), so both runs see the same
global batches; the model has no BatchNorm and no dropout (each process would draw its own
masks for its half of the batch), so the two runs differ only by float rounding (DDP averages
two half-batch gradients instead of one full-batch mean). Measured: max |weight diff| ~1e-6;
the assertions allow 1e-4.
"""

from __future__ import annotations

import json

import pytest
import torch
from _runs import _env, assert_identical, finish, free_port, kill, result, run, run_here, start, wait_for, weights

from transferkit.engine import checkpoint as ckpt
from transferkit.engine import launch

SAME = ("--strategy", "two_stage", "--dropout", "0", "--head-dropout", "0", "--n-train", "48", "--n-val", "15")
TOLERANCE = 1e-4


def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    proc = start(two, *SAME, "--batch-size", "8", "--no-checkpoints", processes=2)
    run_here(one, *SAME, "--batch-size", "16", "--no-checkpoints")
    finish(proc, two)

    r1, r2 = result(one), result(two)
    assert (r1["num_processes"], r2["num_processes"]) == (1, 2)
    a, b = weights(one), weights(two)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=TOLERANCE), key
    assert [h["stage"] for h in r1["history"]] == [h["stage"] for h in r2["history"]]
    for h1, h2 in zip(r1["history"], r2["history"]):
        assert h1["val_accuracy"] == h2["val_accuracy"]  # 15 examples: every one counted exactly once
        assert h1["lr"] == pytest.approx(h2["lr"], rel=1e-12)  # the schedule counts global steps
        for key in ("train_loss", "val_loss"):
            assert h1[key] == pytest.approx(h2[key], abs=TOLERANCE), (h1, h2)
    # predictions gathered from both processes: all 15 validation examples, in order, no padding
    v1, v2 = torch.tensor(r1["val_logits"]), torch.tensor(r2["val_logits"])
    assert v1.shape == v2.shape == (15, 4)
    assert torch.allclose(v1, v2, rtol=0, atol=TOLERANCE)


def test_two_processes_rank_their_shards_and_the_main_one_writes_the_ranking(tmp_path):
    """`transferkit rank` under torchrun: each process extracts half the images, the main process
    alone claims and writes `--out`, and the scores are those of one process."""
    import subprocess
    import sys

    from transferkit.data.synthetic import write_image_folder

    data = tmp_path / "imgs"
    write_image_folder(data, {"a": 6, "b": 6}, size=32)
    rank = ["-m", "transferkit", "rank", str(data), "--sources", "timm:test_efficientnet@random", "--no-cache",
            "--quiet", "--image-size", "32", "--scores", "logme,knn"]
    launch_two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                  str(free_port())]
    for name, cmd in (("one", [sys.executable, *rank]), ("two", [*launch_two, *rank])):
        done = subprocess.run([*cmd, "--out", str(tmp_path / name)], env=_env(), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    one, two = (json.loads((tmp_path / n / "ranking.json").read_text()) for n in ("one", "two"))
    assert len(one) == len(two) == 1 and one[0]["examples"] == two[0]["examples"]
    for score in ("logme", "knn"):
        assert two[0][score] == pytest.approx(one[0][score], abs=1e-5)


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_bit_identical(tmp_path):
    run_args = (*SAME[:2], "--batch-size", "8", "--checkpoint-every", "2")
    reference, out = tmp_path / "reference", tmp_path / "run"
    run(reference, *run_args, processes=2)
    proc = start(out, *run_args, "--step-delay", "0.15", processes=2)
    wait_for(lambda: (out / "checkpoints" / "ckpt-s01-e0000-b000002").is_dir(), proc, out)
    kill(proc, out)
    newest = ckpt.list_checkpoints(out / "checkpoints")[-1].name
    log = run(out, *run_args, "--resume", processes=2)
    assert f"resuming from {out / 'checkpoints' / newest}" in log
    assert result(out)["resumed_from"] == newest
    assert_identical(weights(out), weights(reference))


# -- launch lines ----------------------------------------------------------------------------


def test_the_cpu_launcher_asked_for_two_processes_is_detected():
    argv = ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "transferkit"]
    assert launch.requested_processes(argv) == 2
    assert launch.requested_processes(["python", "-m", "accelerate.commands.launch", "--num_processes=3", "x.py"]) == 3
    assert launch.requested_processes(["python", "train.py", "--num_processes", "2"]) == 1  # not a launcher
    assert launch.requested_processes(["/venv/bin/accelerate", "launch", "x.py"]) in (1, launch._config_processes(
        None, None, cpu=False) or 1)  # the user's default config may name a number


def test_a_multi_cpu_config_file_is_detected(tmp_path):
    (tmp_path / "cpu.yaml").write_text("distributed_type: MULTI_CPU\nnum_processes: 4\nuse_cpu: true\n")
    argv = ["/venv/bin/accelerate", "launch", "--config_file", "cpu.yaml", "-m", "transferkit", "fit"]
    assert launch.requested_processes(argv, parent_cwd=str(tmp_path)) == 4
    assert launch.requested_processes([*argv[:2], "--num_processes", "2", *argv[2:]], str(tmp_path)) == 2


def test_fewer_processes_than_asked_gives_a_warning_with_the_right_launch_line(monkeypatch):
    monkeypatch.setattr(launch, "requested_processes", lambda: 2)
    monkeypatch.setattr(launch, "_warned", [])
    with pytest.warns(UserWarning, match=r"asked for 2 processes but this run has 1.*--multi_gpu --num_processes 2"):
        launch.make_accelerator("no", 1)


def test_launched_processes_without_a_gpu_use_the_cpu_backend(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch.needs_cpu_backend()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launch.needs_cpu_backend()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launch.needs_cpu_backend()


# -- precision ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cpuinfo, native", [
    ("flags\t\t: fpu sse avx2 avx512f avx512_bf16\n", True),
    ("flags\t\t: fpu sse avx2 amx_bf16 amx_tile\n", True),
    ("Features\t: fp asimd bf16 i8mm\n", True),  # Arm
    ("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n", False),
    ("model name\t: something bf16-ish\nflags\t\t: fpu avx2\n", False),  # only flags count
    ("", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    from transferkit.engine.precision import cpu_has_native_bf16

    assert cpu_has_native_bf16(cpuinfo) is native


def test_precision_on_cpus_and_gpus(monkeypatch):
    from transferkit.engine import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_precision("bf16") == "bf16"
    assert precision.resolve_precision("no") == "no"
    with pytest.warns(UserWarning, match="fp16 is not fast on this CPU"):
        assert precision.resolve_precision("fp16") == "no"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="bf16 is not fast on this CPU"):
        assert precision.resolve_precision("bf16") == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision, "_gpu_has_native_bf16", lambda: True)
    assert precision.resolve_precision("bf16") == "bf16"
    assert precision.resolve_precision("fp16") == "fp16"
    monkeypatch.setattr(precision, "_gpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="not supported by this GPU; training with fp16"):
        assert precision.resolve_precision("bf16") == "fp16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mixed", ["bf16", "fp16"])
def test_mixed_precision_trains_on_a_gpu(tmp_path, mixed):  # pragma: no cover - GPU machines only
    # mixed precision is fixed per process by Accelerate, so each mode runs in its own process
    out = tmp_path / mixed
    run(out, "--strategy", "two_stage", "--no-checkpoints", "--precision", mixed)
    assert all(torch.isfinite(t).all() for t in weights(out).values())
    assert json.loads((out / "result.json").read_text())["history"][-1]["val_accuracy"] > 0.25
