"""Small utilities PEFT has in ``peft.helpers``: is a folder or hub id an adapter, LoRA scaled for a
while, and which modules a config targets."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from torch import nn

from . import surgery
from .config import PeftConfig
from .tuners.lora import LoraLayer

__all__ = ["check_if_peft_model", "inspect_matched_modules", "rescale_adapter_scale"]


def check_if_peft_model(model_name_or_path: str | os.PathLike[str]) -> bool:
    """True when ``model_name_or_path`` (a folder, or a hub id when online) holds an adapter config."""
    try:
        PeftConfig.from_pretrained(model_name_or_path)
    except Exception:  # any reason it cannot be read means "not an adapter here", as in PEFT
        return False
    return True


@contextlib.contextmanager
def rescale_adapter_scale(model: nn.Module, multiplier: float) -> Iterator[None]:
    """Within the context, every LoRA layer's scaling is ``multiplier`` times its own (with
    ``multiplier`` in [0, 1], wise-ft between the base model and the adapter); restored on exit,
    even on error.

    Raises:
        TypeError: ``multiplier`` is not a number.
        ValueError: the model holds no LoRA layer (PEFT's words).
    """
    if not isinstance(multiplier, (float, int)):
        raise TypeError(f"Argument multiplier should be of type float, got {type(multiplier)}")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise ValueError("scaling is only supported for models with `LoraLayer`s")
    saved = {layer: dict(layer.scaling) for layer in layers}
    try:
        for layer in layers:
            layer.scaling = {name: value * multiplier for name, value in layer.scaling.items()}
        yield
    finally:
        for layer, scaling in saved.items():
            layer.scaling = scaling


def inspect_matched_modules(model: Any, adapter_name: str = "default") -> dict[str, list[str]]:
    """The module names of the base model that adapter ``adapter_name``'s config targets
    (``"matched"``) and the others (``"unmatched"``), in model order (PEFT's
    ``inspect_matched_modules``; ``model`` is a PeftModel or its ``base_model``)."""
    config = model.peft_config[adapter_name]
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model.model
    found: dict[str, list[str]] = {"matched": [], "unmatched": []}
    for key, _ in base.named_modules():
        found["matched" if key and surgery.is_target(config, key) else "unmatched"].append(key)
    return found
