"""What the adapters in a model do: which is active, disabled, merged, or run per row of a mixed
batch; delete, merge, unmerge and unload.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn

from ..errors import ConfigError
from ..tuners.base import AdapterLayer
from ..tuners.lora import LoraLinear
from ..tuners.lora.conv import LoraConv
from ..tuners.lora.embedding import LoraEmbedding
from ..tuners.modules_to_save import ModulesToSaveWrapper
from ..tuners.rows import BASE_ROW, RowGroups, group_rows
from .targets import set_submodule


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer | ModulesToSaveWrapper]]:
    """Every adapter-holding module of ``model`` with its name."""
    for name, module in model.named_modules():
        if isinstance(module, (AdapterLayer, ModulesToSaveWrapper)):
            yield name, module


def set_active(model: nn.Module, names: list[str]) -> None:
    """Make ``names`` the adapters every layer applies."""
    for _, layer in adapter_layers(model):
        layer.set_active(names)


def set_disabled(model: nn.Module, disabled: bool) -> None:
    """Switch all adapters off (the base model's behaviour) or back on."""
    for _, layer in adapter_layers(model):
        layer.disabled = disabled


def disabled_states(model: nn.Module) -> set[bool]:
    """``{True}``: every adapter layer is switched off; ``{False}``: none is; both: some are."""
    return {layer.disabled for _, layer in adapter_layers(model)}


# the layers that split a batch by rows (a ``rows`` attribute)
_ROW_LAYERS = (LoraLinear, LoraConv, LoraEmbedding)


@contextlib.contextmanager
def rows_through_adapters(
    model: nn.Module, adapter_names: list[str], encoder_names: list[str] | None = None
) -> Iterator[None]:
    """Inside, row ``i`` of every batch goes through adapter ``adapter_names[i]`` (``"__base__"``:
    none), whatever adapter is active: LoRA linear layers and the adapters' modules_to_save copies,
    for inference, with nothing merged. ``encoder_names``: the rows of an encoder-decoder's encoder,
    when they differ (beam search expands the decoder's batch only)."""
    wanted = list(dict.fromkeys(n for n in adapter_names if n != BASE_ROW))
    found = [layer for _, layer in adapter_layers(model)]
    layers = [layer for layer in found if isinstance(layer, AdapterLayer)]
    copies = [layer for layer in found if isinstance(layer, ModulesToSaveWrapper)]
    for layer in layers:
        used = [n for n in wanted if n in layer.adapter_names]
        if used and layer.mixed_batch_refusal:  # the layer's own words (PEFT's, for raw parameters)
            raise ConfigError(
                f"{layer.mixed_batch_refusal} Run the rows of adapter {used[0]!r} on their own"
            )
        if used and not isinstance(layer, _ROW_LAYERS):
            raise ConfigError(
                f"a mixed batch (adapter_names) works with LoRA layers; {used[0]} also "
                f"adapts a {type(layer).__name__}. Run that adapter's rows on their own"
            )
        if layer.merged_adapters:
            raise ConfigError(
                "Cannot pass `adapter_names` when there are merged adapters, please call "
                "`unmerge_adapter` first (adapter_names needs unmerged adapters: merged ones are in "
                "every row's weights)"
            )
    for wrapper in copies:
        wrapper.check_rows(wanted)
    routed: list[Any] = [*(x for x in layers if isinstance(x, _ROW_LAYERS)), *copies]
    get_encoder = getattr(model, "get_encoder", None)
    encoder = get_encoder() if callable(get_encoder) and encoder_names is not None else None
    # transformers 5: self when none
    has_encoder = isinstance(encoder, nn.Module) and encoder is not model
    in_encoder = {id(m) for m in cast(nn.Module, encoder).modules()} if has_encoder else set()
    # split once per device (and part), not per layer
    groups: dict[tuple[torch.device, bool], RowGroups] = {}
    try:
        for module in routed:
            key = (next(module.parameters()).device, id(module) in in_encoder)
            if key not in groups:
                groups[key] = group_rows(
                    cast(list[str], encoder_names) if key[1] else adapter_names, key[0]
                )
            module.rows = groups[key]
        yield
    finally:
        for module in routed:
            module.rows = None


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from every layer; layers left with no adapter go back to plain
    layers."""
    for key, layer in list(adapter_layers(model)):
        layer.delete_adapter(name)
        if isinstance(layer, AdapterLayer) and not layer.adapter_names:
            set_submodule(model, key, layer.base_layer)
        elif isinstance(layer, ModulesToSaveWrapper) and not len(layer.modules_to_save):
            set_submodule(model, key, layer.original_module)


def merge(model: nn.Module, names: list[str] | None = None, keep_original: bool = True) -> None:
    """Fold adapters (default: the active ones) into the base weights. Idempotent.

    ``keep_original`` keeps a copy of each merged weight so that :func:`unmerge` restores it
    bitwise; a merge that is never undone (``merge_and_unload``) passes False and copies nothing.
    """
    for _, layer in adapter_layers(model):
        if isinstance(layer, AdapterLayer):
            layer.merge(names, keep_original=keep_original)


def adapted_layer_names(model: nn.Module) -> list[str]:
    """The names of the layers that hold adapters (not the trainable copies of modules_to_save)."""
    return [key for key, layer in adapter_layers(model) if isinstance(layer, AdapterLayer)]


def merged_names(model: nn.Module) -> set[str]:
    """The adapters merged into some layer's weight."""
    return {
        n
        for _, layer in adapter_layers(model)
        if isinstance(layer, AdapterLayer)
        for n in layer.merged_adapters
    }


def unmerge(model: nn.Module) -> None:
    """Restore every base weight: bitwise where the merge kept the original, else by subtracting
    what was merged."""
    for _, layer in adapter_layers(model):
        if isinstance(layer, AdapterLayer):
            layer.unmerge()


@torch.no_grad()
def unload(model: nn.Module, keep_merged: bool) -> nn.Module:
    """Replace every adapter layer by its base layer: with the adapters merged so far
    (``keep_merged``; merge the wanted ones first), or with the original weights.

    A trainable copy (``modules_to_save``) replaces its original when keeping merges, as in PEFT.
    """
    # innermost first: a wrapper inside another (LoRA on two parameters of one module) is replaced
    # in its parent before the parent is replaced by what it wraps
    for key, layer in reversed(list(adapter_layers(model))):
        if isinstance(layer, AdapterLayer):
            if not keep_merged:
                layer.unmerge()
            set_submodule(model, key, layer.base_layer)
        else:
            kept = layer._current() if keep_merged else layer.original_module
            set_submodule(model, key, kept)
    return model
