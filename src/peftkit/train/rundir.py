"""A run's output folder and its resumption: which files a run owns there, one writer at a time, and
which job fields must match a checkpoint to continue from it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..common import outputs
from ..errors import ConfigError, PeftkitError
from ..errors import short_repr as _short
from . import checkpoint as ckpt
from .config import JobConfig
from .distributed import Processes

__all__ = [
    "RESUME_FIXED",
    "RUN_FILES",
    "check_writable",
    "job_record",
    "own_output_dir",
    "resume_differences",
    "resume_folder",
    "same_job",
]

RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "summary.json",
    "plot.png",
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "checkpoints",
    "model",
)
"""What a run writes into output_dir: peftkit refuses to start where one of these is the user's own
file."""
# Job fields that must be the same to resume: they decide the adapter, the data and the optimizer's
# path. Length (epochs, max_steps, max_minutes) and what is shown or saved may change.
RESUME_FIXED = (
    "model",
    "method",
    "adapter",
    "data",
    "seed",
    "dtype",
    "quantization",
    "train.batch_size",
    "train.grad_accum",
    "train.lr",
    "train.weight_decay",
    "train.schedule",
    "train.warmup_steps",
    "train.group_by_length",
    "train.packing",
    "train.max_grad_norm",
    "train.loraplus_lr_ratio",
)


def job_record(config: JobConfig) -> dict[str, Any]:
    """The job as a checkpoint records it, with the adapter's every field (defaults included), so
    that leaving a field out and writing its default are the same job."""
    peft_config = config.peft_config()
    return {**config.to_dict(), "adapter": peft_config.to_dict() if peft_config is not None else {}}


def resume_differences(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """``field: <at the checkpoint> -> <now>`` for each :data:`RESUME_FIXED` field that differs."""
    if not saved:
        return []  # a checkpoint from before jobs were recorded: trust the tensor checks
    changed = []
    for name in RESUME_FIXED:
        section, _, key = name.partition(".")
        old, new = saved.get(section), now.get(section)
        if key:
            old, new = (old or {}).get(key), (new or {}).get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += [
                f"{name}.{k}: {_short(old.get(k))} at the checkpoint, {_short(new.get(k))} now"
                for k in sorted(set(old) | set(new), key=str)
                if old.get(k) != new.get(k)
            ]
        elif old != new:
            changed.append(f"{name}: {_short(old)} at the checkpoint, {_short(new)} now")
    return changed


def resume_folder(config: JobConfig, log: Callable[[str], None]) -> Path | None:
    resume = config.train.resume
    if isinstance(resume, str) and resume not in ("true", "latest"):
        return Path(resume)
    if not resume:
        return None
    latest = ckpt.find_latest(config.output_dir)
    if latest is None:
        log(f"no checkpoint in {config.output_dir}; starting from the beginning")
    return latest


def check_writable(out: Path) -> None:
    """Fail before any work when output_dir cannot hold the results."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ConfigError(
            f"output_dir {out} cannot be written: {err.strerror or err}; choose a writable "
            f"folder with --output-dir"
        ) from err


@contextlib.contextmanager
def own_output_dir(
    config: JobConfig, procs: Processes, log: Callable[[str], None]
) -> Iterator[None]:
    """Rank 0 holds output_dir's writer lock for the whole run, cleans what killed runs left there,
    and checks that the run's files are peftkit's to write; every process learns whether that
    worked."""
    out = Path(config.output_dir)
    with contextlib.ExitStack() as stack:
        failure: PeftkitError | None = None
        if procs.is_main:
            try:
                stack.enter_context(outputs.writer_lock(out))
                removed = outputs.clean_leftovers(out, RUN_FILES)
                if removed:
                    log(
                        f"removed {len(removed)} leftover(s) of an interrupted write in {out}: {', '.join(removed)}"
                    )
                claim_run_files(config, log)
            except PeftkitError as err:
                failure = err
        if procs.distributed and procs.any(failure is not None):
            raise failure or outputs.OutputDirError(
                f"rank 0 could not take output_dir {out}; see its message"
            )
        if failure is not None:
            raise failure
        yield


def claim_run_files(config: JobConfig, log: Callable[[str], None]) -> None:
    """Refuse the user's own files where the run would write, and an earlier run's results unless
    the job resumes it or asks to replace it (``train.overwrite``)."""
    out = Path(config.output_dir)
    existing = ckpt.find_latest(out)
    if existing is not None and not (config.train.resume or config.train.overwrite):
        raise ConfigError(
            f"output_dir {out} already holds checkpoints of an earlier run ({existing.name}); pass "
            "--resume to continue it, --train.overwrite true to replace it, or choose a new "
            "output_dir"
        )
    earlier = outputs.claim(out, RUN_FILES, "train", "output_dir")
    if not earlier or config.train.resume:
        return
    if not config.train.overwrite:
        raise outputs.OutputDirError(
            f"output_dir {out} already holds the results of an earlier run ({', '.join(earlier)}); pass --resume "
            "to continue it, --train.overwrite true to replace those files (only files peftkit wrote), or choose "
            "a new output_dir"
        )
    outputs.remove_owned(out, RUN_FILES, "train")
    log(f"replacing the earlier run in {out} (train.overwrite)")


def same_job(saved: Path, job: JobConfig) -> bool:
    """Whether the run saved with config ``saved`` is ``job``, ignoring settings that only change
    what is shown while it runs (``train.progress``). A field ``job`` leaves at ``auto`` (dtype,
    packing, split_by_length) matches what the saved run resolved it to."""
    import yaml

    if not saved.is_file():
        return False
    try:  # through JobConfig, so fields added since the run was saved take their defaults
        before = yaml.safe_load(JobConfig(**(yaml.safe_load(saved.read_text()) or {})).to_yaml())
    except (yaml.YAMLError, ConfigError, TypeError):
        return False
    now = yaml.safe_load(job.to_yaml())
    for config in (before, now):
        config.get("train", {}).pop("progress", None)
    for name in ("packing", "split_by_length"):
        if now.get("train", {}).get(name) == "auto":
            now["train"][name] = before.get("train", {}).get(name)
    return bool(before == now)
