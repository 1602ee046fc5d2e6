"""The adapter file format, in one place: Hugging Face PEFT's folder layout, keys and config.

A saved adapter is a folder with ``adapter_config.json`` and ``adapter_model.safetensors``. Tensor
keys are the model's parameter names with the adapter name removed
(``base_model.model.<path>.lora_A.weight``); prompt methods save one tensor, ``prompt_embeddings``.
A non-default adapter saved next to others goes into a subfolder of its name. Every write is atomic:
a temporary file, fsync, then rename.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..common.files import atomic_write, write_json_atomic
from ..config import CONFIG_NAME, PeftConfig, config_to_json, read_adapter_config
from ..errors import AdapterFormatError, AdapterShapeError, StorageError, warn_caller
from ..surgery import adapter_buffers, adapter_parameters

__all__ = [
    "CONFIG_NAME",
    "LEGACY_WEIGHTS_NAME",
    "WEIGHTS_NAME",
    "atomic_write",
    "file_keys",
    "load_adapter_weights",
    "read_adapter_config",
    "write_adapter",
    "write_json_atomic",
]

WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
PROMPT_KEY = "prompt_embeddings"


def file_keys(model: torch.nn.Module, adapter_name: str) -> dict[str, str]:
    """Adapter ``adapter_name``'s keys in ``model`` -> its keys in the file, as its layers name
    them: the file drops the adapter's name (``q_proj.lora_A.default.weight`` ->
    ``q_proj.lora_A.weight``; ``score.modules_to_save.default.weight`` -> ``score.weight``), as
    PEFT's does."""
    tensors = [*adapter_parameters(model, adapter_name), *adapter_buffers(model, adapter_name)]
    return {key: in_file for key, in_file, _ in tensors}


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` under each of its names, tied aliases included."""
    params = model.named_parameters(remove_duplicate=False)
    return {
        **dict(model.named_buffers(remove_duplicate=False)),
        **{k: p.detach() for k, p in params},
    }


def lora_state_dict(
    model: torch.nn.Module,
    adapter_name: str,
    bias: str,
    state: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA-style adapter under PEFT's file keys (biases per the config's
    ``bias``), taken from ``state`` when given (a whole model's state dict, as Trainer passes one
    gathered from shards)."""
    # Parameters and buffers rather than state_dict(): under FSDP's full_parameters() the whole
    # ones, where state_dict() would return shards. Tied aliases are listed under each name: a head
    # tied to the embedding's trainable copy (ensure_weight_tying) is saved under both, as PEFT
    # saves it.
    if state is None:
        state = _tensors(model)
    out = {
        in_file: state[key]
        for key, in_file in file_keys(model, adapter_name).items()
        if key in state
    }
    if bias == "all":
        out.update(
            {k: v for k, v in state.items() if k.endswith(".bias") and ".modules_to_save." not in k}
        )
    elif bias in ("lora_only", "adalora_only"):
        lora_paths = {k.split(".lora_")[0] for k in out if ".lora_" in k}
        out.update(
            {
                f"{p}.base_layer.bias": state[f"{p}.base_layer.bias"]
                for p in lora_paths
                if f"{p}.base_layer.bias" in state
            }
        )
    return out


def rebase_prompt_keys(tensors: dict[str, torch.Tensor], to_file: bool) -> dict[str, torch.Tensor]:
    """PEFT's prompt-learning models hold the base model directly as ``base_model`` (no ``.model``),
    so the extra tensors of those adapters (``modules_to_save`` heads) are keyed
    ``base_model.<path>`` in files."""
    ours, theirs = "base_model.model.", "base_model."
    src, dst = (ours, theirs) if to_file else (theirs, ours)
    return {(dst + k[len(src) :] if k.startswith(src) else k): v for k, v in tensors.items()}


def to_model_keys(
    model: torch.nn.Module,
    adapter_name: str,
    tensors: dict[str, torch.Tensor],
    source: str,
    allowed: set[str] | None = None,
    ignore_mismatched_sizes: bool = False,
) -> dict[str, torch.Tensor]:
    """Map file keys back to ``model``'s parameter names for ``adapter_name``, checking keys, shapes
    and values.

    Args:
        allowed: the file keys the adapter's config writes besides its own layers' tensors (the
            biases of ``bias="all"``); a key naming any other base-model weight is refused, never
            loaded over it.
        ignore_mismatched_sizes: leave tensors whose shape differs out (their layers keep their
            initial values) with a warning naming each, as PEFT does when asked (a base whose
            embedding was resized).

    Raises:
        AdapterFormatError: a tensor has no place in the model or names a base weight, an adapter
            weight is missing, or a value is NaN or infinite; the message names the tensor.
        AdapterShapeError: a shape differs (and ``ignore_mismatched_sizes`` is False).
    """
    state = _tensors(model)
    skipped: list[str] = []
    wanted = {
        in_file: key for key, in_file in file_keys(model, adapter_name).items() if key in state
    }
    extra = {k for k in (allowed or set()) if k in state}
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file_key, tensor in tensors.items():
        model_key = wanted.get(file_key, file_key if file_key in extra else None)
        if model_key is None and file_key in state:
            raise AdapterFormatError(
                f"{source}: tensor {file_key!r} names a weight of the base model, not of the adapter; loading it "
                "would overwrite the base model. An adapter file holds only the adapter's own tensors (and the "
                "embedding weights, which PEFT saves beside some adapters): this file was made by another tool or "
                "tampered with."
            )
        if model_key is None:
            unexpected.append(file_key)
            continue
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AdapterFormatError(
                f"{source}: tensor {file_key!r} holds NaN or infinite values; the adapter was "
                "saved from a diverged run or the file is damaged. Use an earlier checkpoint."
            )
        expected = tuple(state[model_key].shape)
        if tuple(tensor.shape) != expected and ignore_mismatched_sizes:
            skipped.append(
                f"- {model_key}: found shape {tuple(tensor.shape)} in the checkpoint and {expected} in "
                "the model instantiated"
            )
            continue
        if tuple(tensor.shape) != expected:
            raise AdapterShapeError(
                f"{source}: size mismatch for {file_key}: copying a param with shape {tuple(tensor.shape)} from "
                f"checkpoint, the shape in current model is {expected}. The adapter was trained on a different "
                "base model (or with another rank); load it on the model named in its adapter_config.json "
                "(base_model_name_or_path), or pass ignore_mismatched_sizes=True to leave those tensors out."
            )
        out[model_key] = tensor
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (
            f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        )
        raise AdapterFormatError(
            f"{source}: {len(unexpected)} tensor(s) match no layer of this model: {shown}. "
            "The adapter was made for a different base model or target layers."
        )
    if skipped:
        warn_caller(
            f"Some weights of {type(model).__name__} were not initialized from the model checkpoint "
            "and are being ignored because you passed `ignore_mismatched_sizes=True`: "
            + "\n".join(skipped)
            + "."
        )
    missing = sorted(set(wanted) - set(tensors))
    if missing:
        raise AdapterFormatError(
            f"{source}: {len(missing)} adapter weight(s) are missing from the file, e.g. {missing[0]!r}. "
            "The file is incomplete or belongs to a different config."
        )
    return out


def write_adapter(
    folder: str | os.PathLike[str],
    config: PeftConfig,
    tensors: dict[str, torch.Tensor],
    safe_serialization: bool = True,
) -> None:
    """Write ``adapter_model.safetensors`` then ``adapter_config.json`` into ``folder``, each
    atomically.

    ``safe_serialization=False`` (asked for explicitly, as in PEFT) writes the tensors as PEFT's
    legacy ``adapter_model.bin`` instead: a torch pickle of tensors only, which peftkit (and PEFT)
    read back with ``torch.load(weights_only=True)``. The file of the other format, if one is there,
    is removed, so the folder loads as just saved."""
    folder = Path(folder)
    name, stale = (
        (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME)
        if safe_serialization
        else (LEGACY_WEIGHTS_NAME, WEIGHTS_NAME)
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        contiguous = _unshared({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
        with atomic_write(folder / name) as tmp:
            if safe_serialization:
                save_file(contiguous, tmp, metadata={"format": "pt"})
            else:
                torch.save(contiguous, tmp)
        (folder / stale).unlink(missing_ok=True)
        with atomic_write(folder / CONFIG_NAME) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write(config_to_json(config))
    except OSError as err:
        raise StorageError(
            f"cannot write the adapter to {folder}: {err.strerror or err}. "
            "Check that the folder is writable and the disk has space; any earlier adapter there is intact."
        ) from err


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies for tensors that share memory with an earlier one (tied input and output embeddings),
    which safetensors refuses to write as they are."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    return out


def load_adapter_weights(
    folder: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Load the adapter tensors: safetensors, or a legacy ``.bin`` through
    ``torch.load(weights_only=True)``."""
    folder = Path(folder)
    safe, legacy = folder / WEIGHTS_NAME, folder / LEGACY_WEIGHTS_NAME
    if safe.is_file():
        try:
            return load_file(str(safe), device=str(device))
        except (SafetensorError, OSError, ValueError) as err:
            raise AdapterFormatError(
                f"{safe} cannot be read ({err}); the file is truncated or corrupt. Save the adapter again."
            ) from err
    if legacy.is_file():
        return _load_legacy(legacy, device)
    raise AdapterFormatError(f"no {WEIGHTS_NAME} (or legacy {LEGACY_WEIGHTS_NAME}) in {folder}")


def _load_legacy(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    warn_caller(f"{path} is a legacy pickle file; re-save the adapter to get safetensors")
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # weights_only refuses any pickle that would run code
        raise AdapterFormatError(
            f"{path} was refused: it is not a plain tensor file ({type(err).__name__}). peftkit never runs "
            "code from a pickle; convert it with a trusted tool, or use adapter_model.safetensors."
        ) from err
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise AdapterFormatError(f"{path} does not hold a mapping of names to tensors")
    return data


def resolve_adapter_path(
    model_id: str | os.PathLike[str],
    subfolder: str | None = None,
    revision: str | None = None,
    **_: Any,
) -> Path:
    """A local adapter folder for ``model_id``: the folder itself, or a hub download when online.

    Raises:
        AdapterFormatError: neither a local folder nor a reachable hub repository.
    """
    path = Path(model_id) / subfolder if subfolder else Path(model_id)
    if path.is_dir():
        return path
    text = os.fspath(model_id)
    looks_like_hub_id = (
        re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None and not Path(text).exists()
    )
    if looks_like_hub_id:
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(
                text,
                revision=revision,
                allow_patterns=["*adapter_config.json", "*adapter_model.safetensors"],
            )
            return Path(local) / subfolder if subfolder else Path(local)
        except Exception as err:  # offline, unknown repo, auth: all mean "not available here"
            raise AdapterFormatError(
                f"{text!r} is not a local folder and could not be fetched from the hub ({type(err).__name__}). "
                "Pass the folder that save_pretrained wrote."
            ) from err
    raise AdapterFormatError(
        f"adapter folder {path} does not exist; pass the folder that save_pretrained wrote"
    )
