"""Checkpoints that let a run continue exactly where it stopped.

A checkpoint is a folder ``<output_dir>/checkpoints/step-000050/`` holding the adapter in PEFT's
format and ``training_state.pt`` (optimizer, schedule, RNG states, step and data position). It is
written into a temporary folder and renamed into place, so a crash leaves either the whole
checkpoint or none.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from ..common.files import atomic_directory, is_write_failure, write_failure_reason
from ..errors import ConfigError, StorageError, TrainingError

__all__ = ["check_complete", "find_latest", "load_state", "load_trainable", "save_checkpoint"]

STATE_FILE = "training_state.pt"
TRAINABLE_FILE = "trainable.safetensors"
POSITION_FILE = "position.json"
REQUIRED_FILES = (STATE_FILE, TRAINABLE_FILE, POSITION_FILE)
"""A checkpoint folder missing one of these is damaged (a kill while it was pruned) and is not
listed."""


def checkpoints_dir(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / "checkpoints"


def rng_state() -> dict[str, Any]:
    """Every random state that training draws from (dropout, shuffling seeds are derived, not
    drawn)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: str | os.PathLike[str], step: int, model: Any, state: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the ``keep`` newest."""
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_directory(root / f"step-{step:06d}") as tmp:
        model.save_pretrained(tmp)
        try:
            torch.save({**state, "rng": rng_state()}, tmp / STATE_FILE)
        except RuntimeError as err:  # torch's writer names neither the file nor the cause
            if not is_write_failure(err):
                raise
            raise StorageError(
                f"cannot write {root / f'step-{step:06d}' / STATE_FILE}: "
                f"{write_failure_reason(err, root)}. Earlier checkpoints are intact"
            ) from err
        (tmp / POSITION_FILE).write_text(
            json.dumps({"step": step, "micro_batches": state["micro_batches"]})
        )
    for old in list_checkpoints(output_dir)[:-keep]:
        trash = root / f".trash-{old.name}"
        # gone from the listing at once: a kill mid-delete leaves only hidden trash
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return root / f"step-{step:06d}"


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints, oldest first (half-written temporary folders start with a dot and are
    skipped)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if all((p / f).is_file() for f in REQUIRED_FILES))


def check_complete(folder: str | os.PathLike[str]) -> None:
    """Raise unless ``folder`` is a whole checkpoint.

    Raises:
        ConfigError: the folder is not a checkpoint at all.
        TrainingError: it is a checkpoint with files missing (damaged).
    """
    path = Path(folder)
    present = [f for f in REQUIRED_FILES if (path / f).is_file()]
    if not present:
        raise ConfigError(
            f"{folder} is not a checkpoint (no {STATE_FILE}); pass a folder under "
            f"<output_dir>/checkpoints/, or resume: true for the latest"
        )
    missing = [f for f in REQUIRED_FILES if f not in present]
    if missing:
        raise TrainingError(
            f"checkpoint {folder} is damaged: {', '.join(missing)} missing (it was being deleted or "
            "written when the run was killed); resume from an earlier checkpoint, or with "
            "resume: true, which takes the latest complete one"
        )


def find_latest(output_dir: str | os.PathLike[str]) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_state(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The training state of a checkpoint, read with ``weights_only=True`` (no pickled code runs)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        check_complete(folder)
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainingError(
            f"cannot read {path} ({type(err).__name__}): the checkpoint is damaged or was not "
            f"written by peftkit; resume from an earlier checkpoint, or start a new output_dir"
        ) from err
    return state


def load_trainable(folder: Path, model: Any, trainable: int, copy: Any) -> None:
    """Copy a checkpoint's trainable tensors into ``model`` (``copy(parameter, tensor)`` does each,
    so a sharded parameter takes its part), after checking they are this run's: the same names,
    count (``trainable``) and shapes.

    Raises:
        ConfigError: the checkpoint was written for another adapter.
    """
    from safetensors.torch import load_file

    weights = load_file(str(folder / TRAINABLE_FILE))
    named = dict(model.named_parameters())
    missing = [k for k in weights if k not in named]
    if missing or len(weights) != trainable:
        raise ConfigError(
            f"{folder} was written for a different adapter ({len(weights)} tensors, this run "
            f"trains {trainable}); resume with the same config, or start a new output_dir"
        )
    wrong = [k for k, t in weights.items() if t.shape != named[k].shape]
    if wrong:
        raise ConfigError(
            f"{folder} was written for a different adapter: {wrong[0]} has shape "
            f"{tuple(weights[wrong[0]].shape)}, this run's is {tuple(named[wrong[0]].shape)}; "
            f"resume with the same config, or start a new output_dir"
        )
    with torch.no_grad():
        for key, tensor in weights.items():
            copy(named[key], tensor)
