"""What the adapter layers of a model are doing, in PEFT's terms: ``get_layer_status`` and
``get_model_status``.

A per-layer report (enabled, active, merged, trainable, devices) and its summary for the whole
model, where a value that differs between layers reads ``"irregular"``: the quick way to find a
layer left disabled or merged, or an adapter that trains in some layers and not in others.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Literal, cast

from torch import nn

from .. import surgery
from ..inspection import count_parameters
from ..methods import method_named
from ..tuners.base import AdapterLayer
from .holder import BaseModelHolder

__all__ = ["TunerLayerStatus", "TunerModelStatus", "get_layer_status", "get_model_status"]

Irregular = Literal["irregular"]


@dataclass
class TunerLayerStatus:
    """One adapter layer (or trainable copy), with PEFT's fields."""

    name: str
    module_type: str
    enabled: bool
    active_adapters: list[str]
    merged_adapters: list[str]
    requires_grad: dict[str, bool | Irregular]
    available_adapters: list[str]
    devices: dict[str, list[str]]
    quantization_backend: str | None


@dataclass
class TunerModelStatus:
    """The whole model: each field is the layers' common value, or ``"irregular"`` where they
    differ."""

    base_model_type: str
    adapter_model_type: str
    peft_types: dict[str, str]
    trainable_params: int
    total_params: int
    num_adapter_layers: int
    enabled: bool | Irregular
    active_adapters: list[str] | Irregular
    merged_adapters: list[str] | Irregular
    requires_grad: dict[str, bool | Irregular]
    available_adapters: list[str]
    devices: dict[str, list[str]]
    quantization_backend: str | Irregular | None


def _is_peft_model(model: nn.Module) -> bool:
    """A PeftModel, told by its holder (this module is imported by model.py, so it cannot import
    it)."""
    return isinstance(getattr(model, "base_model", None), BaseModelHolder)


def _holder(model: nn.Module) -> nn.Module:
    """What PEFT reports names from: ``peft_model.base_model`` (names read ``model.<path>``), or the
    model."""
    if _is_peft_model(model):
        if cast(Any, model).active_peft_config.is_prompt_learning:
            raise TypeError(
                "get_layer_status() got an invalid PeftModel instance; prefix tuning and adaption "
                "prompt are not supported (prompt-learning adapters have no layers)"
            )
        return cast(nn.Module, model.base_model)
    return model


def _agreed(values: list[Any]) -> Any:
    """The one value all items share, else "irregular" (PEFT's rule)."""
    distinct = {repr(v): v for v in values}
    return next(iter(distinct.values())) if len(distinct) == 1 else "irregular"


def get_layer_status(model: nn.Module) -> list[TunerLayerStatus]:
    """The status of each adapter layer and trainable copy of ``model`` (a PeftModel or an injected
    model)."""
    statuses = []
    for name, layer in _holder(model).named_modules():
        if not isinstance(layer, AdapterLayer) and type(layer).__name__ != "ModulesToSaveWrapper":
            continue
        held = surgery.layer_adapter_names(layer)
        grads: dict[str, list[bool]] = collections.defaultdict(list)
        devices: dict[str, set[str]] = collections.defaultdict(set)
        for adapter, param in surgery.layer_adapter_parameters(layer):
            grads[adapter].append(param.requires_grad)
            devices[adapter].add(param.device.type)
        statuses.append(
            TunerLayerStatus(
                name=name,
                module_type=layer._get_name(),
                enabled=not layer.disabled,
                active_adapters=list(getattr(layer, "active_adapters", [])),
                merged_adapters=list(getattr(layer, "merged_adapters", [])),
                requires_grad={
                    k: v[0] if all(x == v[0] for x in v) else "irregular" for k, v in grads.items()
                },
                available_adapters=sorted(held),
                devices={k: sorted(v) for k, v in devices.items()},
                quantization_backend=_quantization_backend(layer),
            )
        )
    if not statuses:
        raise ValueError(
            "No adapter layers found in the model: it holds no LoRA or IA3 layer (add one with "
            "get_peft_model or inject_adapter_in_model)"
        )
    return statuses


def _quantization_backend(layer: nn.Module) -> str | None:
    """PEFT's name for the layer's quantization: its ``quantization_backend`` when a backend sets
    one."""
    given = getattr(layer, "quantization_backend", None)  # PEFT's backend objects carry their name
    if given is not None:
        return str(getattr(given, "backend_name", given))
    return "bnb 4bit" if isinstance(layer, AdapterLayer) and layer.quantized else None


def _is_transformers_model(model: nn.Module) -> bool:
    return any(
        cls.__module__.startswith("transformers.") and cls.__name__ == "PreTrainedModel"
        for cls in type(model).__mro__
    )


def get_model_status(model: nn.Module) -> TunerModelStatus:
    """A summary of :func:`get_layer_status` for the whole model, with parameter counts (PEFT's
    rules: a value the layers do not share is "irregular"; an adapter merged in some layers but not
    all makes merging so)."""
    layers = get_layer_status(model)
    peft = _is_peft_model(model)
    base = cast(Any, model).get_base_model() if peft else model
    configs = getattr(model, "peft_config", {}) or {}
    peft_types = {name: config.peft_type_name for name, config in configs.items()}
    kinds = set(peft_types.values())
    trainable, total = count_parameters(model)
    merged_all = {a for s in layers for a in s.merged_adapters}
    partly = any(merged_all & (set(s.available_adapters) - set(s.merged_adapters)) for s in layers)
    grads: dict[str, list[bool | Irregular]] = collections.defaultdict(list)
    devices: dict[str, set[str]] = collections.defaultdict(set)
    for status in layers:
        for adapter, value in status.requires_grad.items():
            grads[adapter].append(value)
        for adapter, found in status.devices.items():
            devices[adapter].update(found)
    return TunerModelStatus(
        # PEFT's words
        base_model_type=type(base).__name__ if peft or _is_transformers_model(base) else "other",
        adapter_model_type=(
            "None"
            if not peft
            else method_named(next(iter(kinds))).tuner_name or "PeftModel"
            if len(kinds) == 1
            else "PeftModel"
        ),
        peft_types=peft_types,
        trainable_params=trainable,
        total_params=total,
        num_adapter_layers=len(layers),
        enabled=_agreed([s.enabled for s in layers]),
        active_adapters=_agreed([s.active_adapters for s in layers]) if layers else [],
        merged_adapters="irregular" if partly else sorted(merged_all),
        requires_grad={k: _agreed(v) for k, v in grads.items()},
        available_adapters=sorted({a for s in layers for a in s.available_adapters}),
        devices={k: sorted(v) for k, v in devices.items()},
        quantization_backend=_agreed([s.quantization_backend for s in layers]) if layers else None,
    )
