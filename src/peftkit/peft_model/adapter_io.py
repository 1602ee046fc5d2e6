"""Saving a :class:`~peftkit.PeftModel`'s adapters and loading them back: the steps between the
model and :mod:`peftkit.peft_model.format` (which knows PEFT's keys and folder layout).

``model`` below is a PeftModel, typed loosely because :mod:`peftkit.peft_model.model` imports this
module.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import surgery
from ..config import PeftConfig, adopt
from ..methods import method_for
from ..tuners.prompt import model as prompting
from . import format as fmt
from . import weighted
from .card import write_model_card
from .checks import check_saveable
from .embeddings import embedding_keys, embedding_state

__all__ = [
    "adapter_state_dict",
    "load_adapter",
    "load_adapter_state",
    "load_weights",
    "push_to_hub",
    "read_config",
    "save_pretrained",
]


def adapter_state_dict(
    model: Any, adapter_name: str, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors saved for ``adapter_name`` under PEFT's keys (taken from ``state_dict``, a whole
    model's, when given)."""
    config = model.peft_config[adapter_name]
    tensors = fmt.lora_state_dict(model, adapter_name, getattr(config, "bias", "none"), state_dict)
    if adapter_name in model.prompt_encoder:
        tensors = fmt.rebase_prompt_keys(tensors, to_file=True)
        tensors[fmt.PROMPT_KEY] = prompting.embeddings_to_save(model.prompt_encoder[adapter_name])
    to_file = method_for(config).to_file
    if to_file is not None:
        _, tensors = to_file(config, tensors, adapter_name)
    return tensors


def save_pretrained(
    model: Any,
    directory: str | os.PathLike[str],
    names: list[str],
    initial_folder: str | os.PathLike[str] | None,
    save_embedding_layers: str | bool,
    state_dict: dict[str, torch.Tensor] | None,
    safe_serialization: bool = True,
) -> None:
    """Write each adapter in PEFT's layout (``default`` at the top, others in a subfolder of their
    name) and the model card; see :meth:`peftkit.PeftModel.save_pretrained`."""
    for name in names:
        live = model._require(name)  # the saved config differs from the live one: a copy
        config = live.replace(
            base_model_name_or_path=live.base_model_name_or_path or model.name_or_path or None,
            inference_mode=True,
        )
        tensors = adapter_state_dict(model, name, state_dict)
        to_file = method_for(config).to_file
        if to_file is not None:  # the file's form of the config (AdaLoRA's rank_pattern)
            config, _ = to_file(config, {}, name)
        check_saveable(name, config, tensors)
        tensors.update(embedding_state(model, config, save_embedding_layers))
        if initial_folder is not None:
            config, tensors = weighted.to_plain_lora(config, tensors, initial_folder)
        folder = Path(directory) if name == "default" else Path(directory) / name
        fmt.write_adapter(folder, config, tensors, safe_serialization)
    write_model_card(Path(directory), model)


def push_to_hub(model: Any, repo_id: str, **upload: Any) -> Any:
    """Save every adapter to a temporary folder and upload it (see
    :meth:`peftkit.PeftModel.push_to_hub`)."""
    # huggingface_hub's client, imported only when used
    from ..integrations.hub import upload_folder

    with tempfile.TemporaryDirectory(prefix="peftkit-push-") as tmp:
        model.save_pretrained(tmp)
        return upload_folder(tmp, repo_id, **upload)


def read_config(
    model_id: str | os.PathLike[str],
    config: PeftConfig | None,
    is_trainable: bool,
    **hub_kwargs: Any,
) -> tuple[str, PeftConfig]:
    """The adapter's folder (downloaded when ``model_id`` is a hub id) and its config (``config``
    when given, which then becomes the adapter's, as in PEFT)."""
    folder = fmt.resolve_adapter_path(model_id, **hub_kwargs)
    config = config or fmt.read_adapter_config(folder)
    return str(folder), adopt(config, config.replace(inference_mode=not is_trainable))


def load_adapter(
    model: Any,
    folder: str,
    config: PeftConfig,
    adapter_name: str,
    ignore_mismatched_sizes: bool,
    **add_options: Any,
) -> None:
    """Load the adapter saved in ``folder`` as ``adapter_name``: new weights for an adapter the
    model holds (Trainer's resume, as in PEFT), otherwise a new adapter, removed again if its
    weights do not load."""
    if adapter_name in model.peft_config:
        # checked whole before any copy
        load_weights(model, folder, adapter_name, ignore_mismatched_sizes)
        held = model.peft_config[adapter_name]
        adopt(held, held.replace(inference_mode=config.inference_mode))
        return
    model.add_adapter(adapter_name, config, **add_options)
    try:
        load_weights(model, folder, adapter_name, ignore_mismatched_sizes)
    except Exception:
        model.delete_adapter(adapter_name)  # leave the model as it was
        raise


def load_weights(
    model: Any,
    folder: str | os.PathLike[str],
    adapter_name: str,
    ignore_mismatched_sizes: bool = False,
) -> None:
    """Fill adapter ``adapter_name`` from the safetensors file in ``folder``."""
    load_adapter_state(
        model,
        fmt.load_adapter_weights(folder, device=model.device),
        adapter_name,
        str(folder),
        ignore_mismatched_sizes=ignore_mismatched_sizes,
    )


def load_adapter_state(
    model: Any,
    tensors: dict[str, torch.Tensor],
    adapter_name: str,
    source: str,
    any_bias: bool = False,
    ignore_mismatched_sizes: bool = False,
) -> None:
    """Copy tensors under the file's keys into adapter ``adapter_name``; see
    :meth:`peftkit.PeftModel.load_adapter_state`."""
    tensors = dict(tensors)
    before_load = method_for(model.peft_config[adapter_name]).before_load
    if before_load is not None:  # the layers cut to what the file holds (AdaLoRA)
        before_load(model.get_base_model(), model.peft_config[adapter_name], adapter_name)
    if adapter_name in model.prompt_encoder:
        _load_prompt(model.prompt_encoder[adapter_name], tensors.pop(fmt.PROMPT_KEY, None), source)
        tensors = fmt.rebase_prompt_keys(tensors, to_file=False)
    # PEFT saves embeddings
    allowed = set(adapter_state_dict(model, adapter_name)) | embedding_keys(model)
    if any_bias:
        allowed |= {k for k in tensors if k.endswith(".bias")}
    surgery.load_tensors(
        model,
        fmt.to_model_keys(
            model,
            adapter_name,
            tensors,
            source=source,
            allowed=allowed,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
        ),
    )


def _load_prompt(module: torch.nn.Module, prompt: torch.Tensor | None, source: str) -> None:
    if prompt is None:
        raise fmt.AdapterFormatError(f"{source}: no {fmt.PROMPT_KEY!r} tensor in the adapter file")
    if prompt.is_floating_point() and not torch.isfinite(prompt).all():
        raise fmt.AdapterFormatError(
            f"{source}: {fmt.PROMPT_KEY!r} holds NaN or infinite values; the adapter was "
            "saved from a diverged run or the file is damaged"
        )
    prompting.load_embeddings(module, prompt, source=source)
