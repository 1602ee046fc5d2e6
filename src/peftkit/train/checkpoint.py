"""Checkpoints that let a run continue exactly where it stopped.

A checkpoint is a folder ``<output_dir>/checkpoints/step-000050/`` holding the adapter in PEFT's format and
``training_state.pt`` (optimizer, schedule, RNG states, step and data position). It is written into a
temporary folder and renamed into place, so a crash leaves either the whole checkpoint or none.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, TrainingError
from ..format import atomic_directory

__all__ = ["find_latest", "load_state", "save_checkpoint"]

STATE_FILE = "training_state.pt"


def checkpoints_dir(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / "checkpoints"


def rng_state() -> dict[str, Any]:
    """Every random state that training draws from (dropout, shuffling seeds are derived, not drawn)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | os.PathLike[str], step: int, model: Any, state: dict[str, Any],
                    keep: int) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the ``keep`` newest."""
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_directory(root / f"step-{step:06d}") as tmp:
        model.save_pretrained(tmp)
        torch.save({**state, "rng": rng_state()}, tmp / STATE_FILE)
        (tmp / "position.json").write_text(json.dumps({"step": step, "micro_batches": state["micro_batches"]}))
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return root / f"step-{step:06d}"


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints, oldest first (half-written temporary folders start with a dot and are skipped)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())


def find_latest(output_dir: str | os.PathLike[str]) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_state(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The training state of a checkpoint, read with ``weights_only=True`` (no pickled code runs)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a checkpoint (no {STATE_FILE}); pass a folder under "
                          f"<output_dir>/checkpoints/, or resume: true for the latest")
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainingError(f"cannot read {path} ({type(err).__name__}): the checkpoint is damaged or was not "
                            f"written by peftkit; resume from an earlier checkpoint, or start a new output_dir"
                            ) from err
    return state
