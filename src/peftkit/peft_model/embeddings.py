"""Which base-model embedding weights travel with an adapter (PEFT's ``save_embedding_layers``).

An adapter file normally holds only the adapter's tensors. PEFT adds the base model's input and
output embedding weights when LoRA adapts an embedding layer or the vocabulary was resized (new
tokens), because the adapter is then of no use without them; peftkit writes and reads those files
the same way.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import torch
from torch import nn

from ..config import PeftConfig
from ..errors import warn_caller
from ..surgery import matches_target

__all__ = ["EMBEDDING_LAYER_NAMES", "embedding_keys", "embedding_state"]

EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")
"""PEFT's names of the layers it treats as embeddings when deciding
``save_embedding_layers="auto"``."""


def embedding_state(
    model: Any, config: PeftConfig, save_embedding_layers: str | bool
) -> dict[str, torch.Tensor]:
    """The embedding weights to save beside adapter ``config``, under the model's keys, as PEFT
    decides it.

    ``"auto"`` saves them when the config targets an embedding layer, or when the model's vocabulary
    differs from the base model's saved config (only a local base folder is read, never the
    network); ``True`` always, where the model says which its embedding layers are (a transformers
    model).
    """
    base = model.get_base_model()
    targeted = _targets_an_embedding(base, config)
    # trainable tokens (the method, or LoRA's trainable_token_indices) save their rows only
    token_rows = (
        config.trains_token_rows or getattr(config, "trainable_token_indices", None) is not None
    )
    if save_embedding_layers == "auto":
        if targeted and not token_rows:
            warn_caller(
                "Setting `save_embedding_layers` to `True` as embedding layers found in `target_modules`."
            )
        elif _vocab_resized(base, config):
            warn_caller(
                "Setting `save_embedding_layers` to `True` as the embedding layer has been resized during "
                "finetuning."
            )
        else:
            return {}
    elif not save_embedding_layers:
        return {}
    out: dict[str, torch.Tensor] = {}
    for name, module in _embedding_modules(model, targeted):
        out.update({f"{name}.{key}": value.detach() for key, value in module.state_dict().items()})
    return out


def embedding_keys(model: Any) -> set[str]:
    """Every key under which a file may carry the model's embedding weights (adapted or not)."""
    keys: set[str] = set()
    for targeted in (True, False):
        for name, module in _embedding_modules(model, targeted, quiet=True):
            keys |= {f"{name}.{key}" for key in module.state_dict()}
    return keys


def _embedding_modules(
    model: Any, targeted: bool, quiet: bool = False
) -> list[tuple[str, nn.Module]]:
    """(name in ``model``, module) of the base model's input and output embeddings; when
    ``targeted``, the plain layers that adapters wrap (their ``base_layer``)."""
    base = model.get_base_model()
    get_input = getattr(base, "get_input_embeddings", None)
    if not callable(get_input):
        if not quiet:
            warn_caller(
                "Could not identify embedding layer(s) because the model is not a 🤗 transformers model."
            )
        return []
    get_output = getattr(base, "get_output_embeddings", None)
    layers = [get_input(), get_output() if callable(get_output) else None]
    wanted = [getattr(layer, "base_layer", None) if targeted else layer for layer in layers]
    names = {id(module): name for name, module in model.named_modules()}
    return [(names[id(m)], m) for m in wanted if isinstance(m, nn.Module) and id(m) in names]


def _targets_an_embedding(base: nn.Module, config: PeftConfig) -> bool:
    targets = getattr(config, "target_modules", None)
    # a regex: does it match a layer named like one?
    if isinstance(targets, str) and targets != "all-linear":
        pattern = re.compile(r"(.*\.)?(" + "|".join(EMBEDDING_LAYER_NAMES) + r")$")
        return any(
            pattern.match(key) and matches_target(targets, key) for key, _ in base.named_modules()
        )
    if not isinstance(targets, (list, set)):
        return False
    # PEFT's rule: the bare name among the targets
    return any(n in targets for n in EMBEDDING_LAYER_NAMES)


def _vocab_resized(base: nn.Module, config: PeftConfig) -> bool:
    vocab = getattr(getattr(base, "config", None), "vocab_size", None)
    folder = config.base_model_name_or_path
    if not vocab or not folder or not os.path.isfile(os.path.join(folder, "config.json")):
        return False
    return _saved_vocab(folder) != vocab


@functools.cache
def _saved_vocab(folder: str) -> int | None:
    """The vocabulary size in a base model folder's config.json, read once per process (every
    checkpoint of a run asks)."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(folder), "vocab_size", None)
