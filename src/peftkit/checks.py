"""Checks on adapters that the model facade runs before changing or writing anything."""

from __future__ import annotations

import torch
from torch import nn

from .config import PeftConfig
from .errors import AdapterFormatError, ConfigError, PeftkitError, short_repr

__all__ = ["check_adapter_name", "check_finite_weights", "check_saveable", "check_unsupported_load_options"]


def check_unsupported_load_options(ephemeral_gpu_offload: bool, key_mapping: dict[str, str] | None) -> None:
    if ephemeral_gpu_offload:
        raise ConfigError("ephemeral_gpu_offload=True (PEFT's DoRA-on-CPU offload) is not supported; leave it False")
    if key_mapping:
        raise ConfigError("key_mapping (PEFT's renaming of checkpoint keys) is not supported; rename the keys in the "
                          "file, or load the base model under the names the adapter was trained on")


def check_finite_weights(model: nn.Module) -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise PeftkitError(f"merging produced NaN or inf in {bad[:3]}; the adapter weights are broken")


def check_adapter_name(name: object) -> None:
    """Adapter names become module keys and subfolder names: plain, non-empty text without dots or slashes.

    Raises:
        ConfigError: the name is empty, too long, has ``.``, ``/``, ``\\`` or control characters, or is a
            name a module already uses for itself.
    """
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "is empty" if isinstance(name, str) else f"is a {type(name).__name__}, not text"
    elif len(name) > 128:
        problem = f"is {len(name)} characters long (at most 128)"
    elif any(c in name for c in "./\\") or not name.isprintable():
        problem = "contains '.', '/', '\\' or a control character"
    elif hasattr(nn.ModuleDict(), name):
        problem = "is the name of a module attribute"
    if problem:
        raise ConfigError(f"adapter name {short_repr(name)} {problem}; adapter names become layer keys and folder "
                          "names, so use letters, digits, '-' and '_' (e.g. 'default', 'sentiment-v2')")


def check_saveable(name: str, config: PeftConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse to write an adapter file that could not be loaded back as the adapter its config describes."""
    if config.is_prompt_learning:
        return
    if not tensors:
        raise AdapterFormatError(
            f"adapter {name!r} has no weights left in the model (merge_and_unload() or unload() removed its "
            "layers), so saving it would write an empty adapter over any good one in that folder. Save the "
            "adapter before unloading it, or save the merged model returned by merge_and_unload().")
    a_keys = {k.replace(".lora_A.", ".") for k in tensors if ".lora_A." in k}
    b_keys = {k.replace(".lora_B.", ".") for k in tensors if ".lora_B." in k}
    if a_keys != b_keys:
        raise AdapterFormatError(f"adapter {name!r} is inconsistent: {len(a_keys ^ b_keys)} layer(s) hold "
                                 "only one of lora_A and lora_B; it would not load again")
