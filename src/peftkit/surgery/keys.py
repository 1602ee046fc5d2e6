"""An adapter's tensors by name: what a layer holds, the base model's own state dict under its
original keys, loading tensors in place, and the layout (ranks, shapes) an adapter has or would
have.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..tuners.base import AdapterLayer
from ..tuners.modules_to_save import ModulesToSaveWrapper
from .state import adapter_layers


def adapter_parameters(model: nn.Module, name: str) -> Iterator[tuple[str, str, nn.Parameter]]:
    """Adapter ``name``'s tensors in ``model``, as its layers name them: (key in ``model``, key in
    an adapter file, parameter). Every walk over an adapter's tensors goes through here, so no code
    outside the layers needs to know their attribute names."""
    for key, layer in adapter_layers(model):
        for local, in_file, param in layer.adapter_parameters(name):
            yield f"{key}.{local}", f"{key}.{in_file}", param


def adapter_buffers(model: nn.Module, name: str) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Adapter ``name``'s buffers (those of its trainable copies), named as
    :func:`adapter_parameters` names tensors; saved and loaded with the adapter, never trained."""
    for key, layer in adapter_layers(model):
        if isinstance(layer, ModulesToSaveWrapper):
            for local, in_file, buffer in layer.adapter_buffers(name):
                yield f"{key}.{local}", f"{key}.{in_file}", buffer


def _adapter_entries(model: nn.Module, name: str) -> Iterator[tuple[AdapterLayer, Any, Any]]:
    """(layer, container, entry) for each place adapter ``name`` keeps tensors: a module (LoRA's
    Linear) or a parameter (IA3's vector, LoRA's embedding factors)."""
    for _, layer in list(adapter_layers(model)):
        if isinstance(layer, AdapterLayer):
            for attr in layer.adapter_param_names:
                container = getattr(layer, attr)
                if name in container:
                    yield layer, container, container[name]


@torch.no_grad()
def cast_adapter_to_layers(model: nn.Module, name: str) -> None:
    """Give adapter ``name``'s tensors the dtype of the weight each adapts (PEFT's
    autocast_adapter_dtype=False)."""
    for layer, _, held in _adapter_entries(model, name):
        if isinstance(held, nn.Module):
            held.to(layer.weight.dtype)
        else:
            held.data = held.data.to(layer.weight.dtype)
    for _, holder in adapter_layers(model):  # and their bookkeeping (AdaLoRA's ranknum), as PEFT
        if isinstance(holder, AdapterLayer):
            for local in holder.bookkeeping(name):
                tensor = holder.get_parameter(local)
                tensor.data = tensor.data.to(holder.weight.dtype)


def _original_names(model: nn.Module) -> dict[str, str]:
    """Each base weight's key in ``model`` (``q_proj.base_layer.weight``) -> its key before any
    adapter was added (``q_proj.weight``); adapter tensors and trainable copies are left out."""
    held = {
        f"{key}.{local}"
        for key, layer in adapter_layers(model)
        for adapter in layer_adapter_names(layer)
        for local, _, _ in layer.adapter_parameters(adapter)
    } | {
        f"{key}.{local}"
        for key, layer in adapter_layers(model)
        if isinstance(layer, AdapterLayer)
        for adapter in layer_adapter_names(layer)
        for local in layer.bookkeeping(adapter)
    }
    return {
        key: ".".join(p for p in key.split(".") if p not in ("base_layer", "original_module"))
        for key in model.state_dict()
        if key not in held
    }


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights under their original names."""
    state = model.state_dict()
    return {original: state[key] for key, original in _original_names(model).items()}


def to_wrapped_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original-name keys to where those weights sit in ``model`` now (unknown keys pass
    unchanged)."""
    wrapped = {original: key for key, original in _original_names(model).items()}
    return {wrapped.get(k, k): v for k, v in state.items()}


def adapter_to_meta(model: nn.Module, name: str) -> None:
    """Put adapter ``name``'s tensors on the meta device (PEFT's ``low_cpu_mem_usage``): no memory
    until loaded."""
    for _, container, held in list(_adapter_entries(model, name)):
        if isinstance(held, nn.Module):
            held.to_empty(device="meta")
        else:
            container[name] = nn.Parameter(
                held.detach().to("meta"), requires_grad=held.requires_grad
            )


def load_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy tensors into the named parameters and buffers of ``model``; a tensor on the meta device
    (created with low_cpu_mem_usage) is replaced by the loaded one."""
    with torch.no_grad():
        for key, tensor in state.items():
            owner_name, _, attr = key.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            old = getattr(owner, attr)
            if old.is_meta:
                setattr(
                    owner, attr, nn.Parameter(tensor.to(old.dtype), requires_grad=old.requires_grad)
                )
            else:
                old.copy_(tensor.to(old.dtype))


def shared_trainable_copies(model: nn.Module, names: list[str]) -> list[str]:
    """The modules_to_save modules that hold a copy for more than one of adapters ``names``."""
    return [
        key
        for key, layer in adapter_layers(model)
        if isinstance(layer, ModulesToSaveWrapper)
        and sum(n in layer.modules_to_save for n in names) > 1
    ]


def adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Copies of every tensor of adapter ``name`` in ``model`` (LoRA/IA3 weights and trainable
    copies)."""
    return {key: param.detach().clone() for key, _, param in adapter_parameters(model, name)}


def layer_adapter_parameters(
    layer: AdapterLayer | ModulesToSaveWrapper,
) -> Iterator[tuple[str, nn.Parameter]]:
    """(adapter name, parameter) for every tensor each adapter holds in ``layer``."""
    for name in layer_adapter_names(layer):
        yield from ((name, param) for _, _, param in layer.adapter_parameters(name))


def layer_adapter_names(layer: AdapterLayer | ModulesToSaveWrapper) -> list[str]:
    """The adapters a layer (or trainable copy) holds."""
    return (
        list(layer.adapter_names)
        if isinstance(layer, AdapterLayer)
        else list(layer.modules_to_save)
    )
