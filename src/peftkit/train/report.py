"""Metrics as JSON Lines, and a PNG plot of them at the end of a run."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..common.files import write_failure_reason, write_text_atomic
from ..errors import ConfigError, StorageError
from .config import TRACKERS, JobConfig

__all__ = [
    "TRACKERS",
    "MetricsLog",
    "NoMetrics",
    "Trackers",
    "card_lines",
    "format_metrics",
    "plot_metrics",
    "read_metrics",
]


class Trackers:
    """Metrics sent on to experiment trackers through accelerate's tracking integrations, none of
    which is a dependency of peftkit: a tracker whose package is missing is refused, naming the
    package.

    TensorBoard writes its event files under ``<output_dir>/runs``, as transformers' Trainer does.
    """

    def __init__(
        self,
        names: list[str],
        run_name: str,
        logging_dir: str | os.PathLike[str],
        config: dict[str, Any],
    ) -> None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.trackers: list[Any] = []
        for name in names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            try:
                tracker = (
                    cls(run_name, logging_dir) if cls.requires_logging_directory else cls(run_name)
                )
                tracker.start()
                tracker.store_init_configuration(_flat(config))
            except ImportError as err:
                raise ConfigError(
                    f"train.report_to has {name!r}, but its package is not installed ({err}); "
                    f"pip install {TRACKERS[name]}, or leave {name!r} out"
                ) from err
            self.trackers.append(tracker)

    def log(self, record: dict[str, Any]) -> None:
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        for tracker in self.trackers:
            tracker.log(values, step=record.get("step"))

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``, with values trackers can store (text
    otherwise)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = (
                value if isinstance(value, (int, float, str, bool)) else str(value)
            )
    return out


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``.

    On resume, records after the resumed step are dropped first, so a crashed run's tail is not
    duplicated.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        resume_step: int | None = None,
        trackers: Trackers | None = None,
    ) -> None:
        self.path = Path(path)
        self.trackers = trackers
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [
            r for r in self.read() if resume_step is not None and r.get("step", 0) <= resume_step
        ]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
        # a full disk mid-run: say which file and why, as every other write does
        except OSError as err:
            raise StorageError(
                f"cannot append to {self.path}: {write_failure_reason(err, self.path.parent)}; "
                "the checkpoints written so far are intact, continue with --resume"
            ) from err
        if self.trackers is not None:
            self.trackers.log(record)

    def close(self) -> None:
        """Finish the trackers' runs (their files are complete after this)."""
        if self.trackers is not None:
            self.trackers.finish()

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (none if it is missing; a line cut by a crash is
    skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_metrics(records: list[dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """Training and evaluation loss, and accuracy when measured, against the step. False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(
            "matplotlib is not installed, so no plot was saved; pip install 'peftkit[plot]'",
            stacklevel=2,
        )
        return False
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    accuracy = [(r["step"], r["eval_accuracy"]) for r in records if "eval_accuracy" in r]
    fig, axes = plt.subplots(
        1, 2 if accuracy else 1, figsize=(10 if accuracy else 6, 4), squeeze=False
    )
    ax = axes[0][0]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    if accuracy:
        ax2 = axes[0][1]
        ax2.plot(*zip(*accuracy, strict=True), "o-", color="tab:green")
        ax2.set_xlabel("step")
        ax2.set_ylabel("validation accuracy")
        ax2.set_ylim(0, 1)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True


class NoMetrics(MetricsLog):
    """What processes other than rank 0 write: nothing."""

    def __init__(self) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        pass

    def read(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


def format_metrics(label: str, values: dict[str, float]) -> str:
    """One log line: ``after training: loss 1.2345, perplexity 3.4360``."""
    return f"{label}: " + ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in values.items())


def card_lines(job: JobConfig, summary: dict[str, Any]) -> list[str]:
    """The model card's "Training" section: base, method, data, steps and the metrics before and
    after."""
    lines = [
        "## Training",
        "",
        f"- base model: `{job.model}`",
        f"- method: {job.method}, adapter settings: `{json.dumps(job.adapter)}`",
        f"- data: `{job.data.path}` ({job.data.mode}), {summary['train_examples']} training and "
        f"{summary['val_examples']} validation examples",
        f"- {summary['steps']} steps, batch {job.train.batch_size} x {job.train.grad_accum}, lr {job.train.lr}, "
        f"{job.train.schedule} schedule, seed {job.seed}",
    ]
    for label in ("before", "after"):
        if summary[label]:
            lines.append(format_metrics(f"- validation {label} training", summary[label]))
    return [
        *lines,
        "",
        "The full settings are in `config.yaml`; the curves in `metrics.jsonl` and `plot.png`.",
    ]
