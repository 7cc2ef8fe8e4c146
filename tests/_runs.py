"""Helpers for tests that drive ``_train_script.py`` in subprocesses (resume, distributed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("_train_script.py")
ROOT = SCRIPT.parent.parent


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "default"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(key, None)
    return {**env, **(extra or {})}


def start(out: Path, *args: str, processes: int = 1, env: dict | None = None) -> subprocess.Popen:
    """Starts a training run writing to ``out`` (its output goes to ``out.log``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), *args]
    if processes > 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *cmd[1:]]
    log = open(out.with_suffix(".log"), "ab")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(env), cwd=ROOT,
                            start_new_session=True)


def finish(proc: subprocess.Popen, out: Path, timeout: float = 600) -> str:
    """Waits for a run; returns its log; fails the test with the log if it failed."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc, out)
        raise AssertionError(f"run timed out:\n{log_of(out)}") from None
    text = log_of(out)
    assert code == 0, f"run exited with {code}:\n{text}"
    return text


def run(out: Path, *args: str, **kwargs) -> str:
    return finish(start(out, *args, **kwargs), out)


def run_here(out: Path, *args: str) -> None:
    """The same run in this process (no interpreter start-up; bit-identical to a subprocess run)."""
    import _train_script

    threads = torch.get_num_threads()
    try:
        _train_script.main(["--out", str(out), *args])
    finally:
        torch.set_num_threads(threads)


def kill(proc: subprocess.Popen, out: Path | None = None) -> None:
    """SIGKILL to the run's process group and to every training process it started (``out/pids``:
    torchrun starts its workers in sessions of their own)."""
    pids = [int(p.name) for p in (out / "pids").iterdir()] if out is not None and (out / "pids").is_dir() else []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    if out is not None:
        shutil.rmtree(out / "pids", ignore_errors=True)


def wait_for(condition, proc: subprocess.Popen, out: Path, timeout: float = 600, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (code {proc.returncode}) before the condition held:\n{log_of(out)}")
        if time.monotonic() > deadline:
            kill(proc, out)
            raise AssertionError(f"condition not met in {timeout} s:\n{log_of(out)}")
        time.sleep(poll)


def log_of(out: Path) -> str:
    path = out.with_suffix(".log")
    return path.read_text(errors="replace") if path.exists() else ""


def result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs (max {(a[key] - b[key]).abs().max().item():.3g})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
