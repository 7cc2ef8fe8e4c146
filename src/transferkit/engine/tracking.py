"""Experiment tracking through Accelerate's trackers: ``--report-to tensorboard`` / ``mlflow``.

One ``RunTracking`` per training run. The ``Trainer`` starts it on its ``Accelerator`` with the
run's hyperparameters, logs every optimiser step and every epoch, and ``fit`` closes it with the
final test metrics:

    tracking = RunTracking(config.report_to, run_dir)
    tracking.start(accelerator, {**config.to_dict(), "source": source.id})  # attaches the trackers
    tracking.log_step(stage, loss, lr)       # each optimiser step
    tracking.log_epoch(history_row)          # each epoch
    tracking.finish(metrics)                 # once, with the test metrics

Where the logs go (everything stays inside the run directory, nothing needs a server):

- TensorBoard: ``<run>/tensorboard`` (``tensorboard --logdir <run>/tensorboard``).
- MLflow: the ``MLFLOW_TRACKING_URI`` of the environment when set (a server or database the
  user chose), else a local file store ``file://<run>/mlruns``
  (``mlflow ui --backend-store-uri <run>/mlruns``). MLflow 3 keeps file stores in maintenance
  mode and refuses them unless ``MLFLOW_ALLOW_FILE_STORE`` is true; this module sets that
  variable for its own local store only (it works offline and costs no database migrations).

Metric names: ``train/loss`` and ``train/lr`` per step, ``<stage>/train_loss``,
``<stage>/val_loss``, ``<stage>/val_accuracy`` per epoch, and ``test/accuracy``,
``test/macro_f1``, ``baseline/test_accuracy``, ``baseline/test_macro_f1``, ``transfer_gain``,
``train_seconds`` at the end (with ``--baseline both`` also ``scratch_baseline/test_accuracy``,
``scratch_baseline/test_macro_f1`` and ``scratch_baseline_seconds``). Accelerate logs from the main process only.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from transferkit.errors import ConfigError

TRACKERS = ("tensorboard", "mlflow")
#: Final metrics copied from ``metrics.json`` into the trackers (tracker name: metrics key).
FINAL_METRICS = {
    "test/accuracy": "test_accuracy",
    "test/macro_f1": "test_macro_f1",
    "baseline/test_accuracy": "baseline_test_accuracy",
    "baseline/test_macro_f1": "baseline_test_macro_f1",
    "transfer_gain": "transfer_gain",
    "train_seconds": "train_seconds",
    "baseline_seconds": "baseline_seconds",
    "scratch_baseline/test_accuracy": "scratch_baseline_test_accuracy",
    "scratch_baseline/test_macro_f1": "scratch_baseline_test_macro_f1",
    "scratch_baseline_seconds": "scratch_baseline_seconds",
    "peak_memory_mb": "peak_memory_mb",
    "wise_ft_alpha": "wise_ft_alpha",
}
PROJECT = "transferkit"


class RunTracking:
    """The experiment trackers of one run, or a no-op when ``report_to`` is empty.

    Args:
        report_to: Tracker names, a subset of ``("tensorboard", "mlflow")``.
        run_dir: The run directory; logs are written inside it. Required when ``report_to``
            names any tracker.
        run_name: Name of the run in the trackers (default: the run directory's name).
    """

    def __init__(self, report_to: list[str] | tuple[str, ...] | None, run_dir: str | Path | None,
                 run_name: str | None = None) -> None:
        self.report_to = list(report_to or [])
        for name in self.report_to:
            if name not in TRACKERS:
                raise ConfigError(f"`--report-to` takes 'tensorboard' or 'mlflow'; got {name!r}.")
        if self.report_to and run_dir is None:
            raise ConfigError(f"`--report-to {' '.join(self.report_to)}` writes its logs inside the run directory; "
                              "pass `out` (`--out DIR`) as well.")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_name = run_name or (self.run_dir.name if self.run_dir else PROJECT)
        self.trackers = [self._make(name) for name in self.report_to]
        self.accelerator = None
        self.step = 0
        self.finished = False

    @property
    def enabled(self) -> bool:
        return bool(self.trackers)

    def _make(self, name: str):
        from accelerate.tracking import TensorBoardTracker

        # __init__ has already refused trackers without a run directory
        if name == "tensorboard":
            return TensorBoardTracker("tensorboard", str(self.run_dir))
        return _mlflow_tracker(self.run_dir, self.run_name)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, accelerator, hparams: dict) -> None:
        """Starts the trackers on ``accelerator`` and logs ``hparams``.

        The trackers may have been given to the ``Accelerator`` (``log_with=tracking.trackers``) or
        not: any missing one is attached here, so an accelerator made elsewhere works as it is.
        """
        self.accelerator = accelerator
        if not self.enabled:
            return
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        attached = list(getattr(accelerator, "log_with", None) or [])
        accelerator.log_with = attached + [t for t in self.trackers if t not in attached]
        accelerator.init_trackers(PROJECT, config=flat_hparams(hparams))

    def log(self, values: dict, step: int | None = None) -> None:
        """Logs numeric ``values`` at ``step`` (default: the current optimiser step)."""
        if not self.enabled or self.accelerator is None:
            return
        clean = {k: float(v) for k, v in values.items() if _is_number(v)}
        if clean:
            self.accelerator.log(clean, step=self.step if step is None else step)

    def log_step(self, stage: str, loss: float, lr: float | None = None) -> None:
        """One optimiser step: training loss and learning rate."""
        self.step += 1
        self.log({"train/loss": loss, "train/lr": lr})

    def log_epoch(self, row: dict) -> None:
        """One history row (``stage``, ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``lr``)."""
        stage = row.get("stage", "train")
        self.log({f"{stage}/{k}": v for k, v in row.items() if k not in ("stage",)})

    def finish(self, metrics: dict) -> None:
        """Logs the final test metrics (and baseline) and closes every tracker. Safe to call twice."""
        if not self.enabled or self.finished or self.accelerator is None:
            return
        final = {name: metrics[key] for name, key in FINAL_METRICS.items() if _is_number(metrics.get(key))}
        final.update({f"test/f1/{c}": m["f1"] for c, m in metrics.get("test_per_class", {}).items()
                      if _is_number(m.get("f1"))})
        self.log(final, step=self.step)
        # Each tracker is closed directly: `Accelerator.end_training()` would also destroy the
        # process group, which the baseline (trained after this run, same processes) still needs.
        for tracker in self.accelerator.trackers:
            if tracker in self.trackers:
                tracker.finish()
        self.accelerator.trackers = [t for t in self.accelerator.trackers if t not in self.trackers]
        self.finished = True


def flat_hparams(values: dict, prefix: str = "") -> dict:
    """Hyperparameters as the flat ``str/int/float/bool`` mapping TensorBoard's hparams and MLflow accept."""
    out: dict = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value) if value else "none"
        elif value is None:
            out[name] = "none"
        elif isinstance(value, (str, int, float, bool)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def mlflow_tracking_uri(run_dir: Path) -> str:
    """The MLflow store of a run: ``$MLFLOW_TRACKING_URI`` if set, else ``file://<run>/mlruns``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path(run_dir).resolve() / "mlruns").as_uri()


def _mlflow_tracker(run_dir: Path, run_name: str):
    from accelerate.tracking import MLflowTracker, on_main_process

    class LocalMLflowTracker(MLflowTracker):
        """Accelerate's MLflow tracker pointed at the run's own store, restoring the global URI after."""

        def __init__(self) -> None:
            self.uri = mlflow_tracking_uri(run_dir)
            artifacts = (Path(run_dir).resolve() / "mlruns" / "artifacts").as_uri() if self.uri.startswith("file:") \
                else None
            super().__init__(experiment_name=PROJECT, logging_dir=artifacts, run_name=run_name,
                             tags={"transferkit.run_dir": str(Path(run_dir).resolve())})
            self.previous_uri = None

        @on_main_process
        def start(self) -> None:
            import mlflow

            if self.uri.startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            active = mlflow.active_run()
            if active is not None and "transferkit.run_dir" in active.data.tags:
                mlflow.end_run(status="FAILED")  # left open by a fit that raised: close it
            elif active is not None:
                self.nested_run = True  # the user's own run stays open; ours goes inside it
            self.previous_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
            mlflow.set_tracking_uri(self.uri)
            super().start()

        @on_main_process
        def finish(self) -> None:
            import mlflow

            super().finish()
            mlflow.set_tracking_uri(self.previous_uri or "")

    return LocalMLflowTracker()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
