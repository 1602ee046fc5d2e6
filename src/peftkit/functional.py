"""PEFT's functional API: adapters in a plain model, and state dicts, without the PeftModel wrapper.

``inject_adapter_in_model`` puts LoRA or IA3 layers into a model in place (for code that manages its
own model class, as diffusers does); ``get_peft_model_state_dict`` / ``set_peft_model_state_dict``
read and write one adapter's tensors under the adapter file's keys; ``get_base_model_state_dict`` /
``set_base_model_state_dict`` read and write the base model's weights under their original names.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from . import surgery
from .config import PeftConfig, adopt
from .errors import ConfigError
from .methods import method_for
from .peft_model import format as fmt
from .peft_model.checks import check_adapter_name
from .peft_model.embeddings import embedding_state
from .peft_model.model import PeftModel
from .surgery import tying

__all__ = [
    "get_base_model_state_dict",
    "get_peft_model_state_dict",
    "inject_adapter_in_model",
    "set_base_model_state_dict",
    "set_peft_model_state_dict",
]


def inject_adapter_in_model(
    peft_config: PeftConfig,
    model: nn.Module,
    adapter_name: str = "default",
    low_cpu_mem_usage: bool = False,
    state_dict: dict[str, Any] | None = None,
) -> nn.Module:
    """Add a LoRA or IA3 adapter to ``model``'s layers in place; only the adapter stays trainable.

    The model keeps its class; ``model.peft_config`` records the config, as in PEFT.

    With ``state_dict`` (an adapter's tensors, as :func:`get_peft_model_state_dict` gives them), the
    adapted layers are the ones those tensors belong to, whatever ``target_modules`` says (PEFT's
    option); the tensors themselves are not loaded (use :func:`set_peft_model_state_dict`).
    ``modules_to_save`` get their trainable copies, as in PEFT.

    Raises:
        ConfigError: a prompt-learning config (it needs the PeftModel's forward).
    """
    check_adapter_name(adapter_name)
    method = method_for(peft_config)
    if method.inject is None or method.prefix is None:
        raise ConfigError(
            f"{type(peft_config).__name__}: inject_adapter_in_model takes the configs of methods that "
            "add layers (LoRA, IA3); prompt-learning methods change the model's inputs, so use "
            "get_peft_model"
        )
    placed: PeftConfig = peft_config
    if state_dict is not None:
        placed = _placed_by(peft_config, model, _layers_in(state_dict, method.prefix))
    adopt(peft_config, method.inject(model, placed, adapter_name))
    if peft_config.modules_to_save:
        surgery.add_modules_to_save(
            model,
            list(peft_config.modules_to_save),
            adapter_name,
            tying.saved_ties(model, peft_config),
        )
    surgery.set_active(model, [adapter_name])
    surgery.mark_trainable(model, adapter_name, peft_config)
    if low_cpu_mem_usage:  # empty until set_peft_model_state_dict fills it, as in PEFT
        surgery.adapter_to_meta(model, adapter_name)
    configs = getattr(model, "peft_config", None)
    configs = {**(configs if isinstance(configs, dict) else {}), adapter_name: peft_config}
    setattr(model, "peft_config", configs)  # noqa: B010 - a plain attribute on any nn.Module, as in PEFT
    return model


def _placed_by(config: Any, model: nn.Module, layers: set[str]) -> PeftConfig:
    """``config`` adapting exactly ``layers``; PEFT's warning when the config alone would adapt
    others."""
    if config.target_modules is not None:
        named = {n for n, _ in model.named_modules() if surgery.is_target(config, n)}
        extra_config, extra_state = sorted(named - layers), sorted(layers - named)
        if extra_config or extra_state:
            message = (
                "While injecting the PEFT adapters, an inconsistency was discovered between the PEFT config "
                "and the provided state_dict. This is not necessarily an issue and can be ignored if this was "
                "the intent. "
            )
            if extra_config:
                message += (
                    f"The PEFT config contained these additional target modules: {extra_config}. "
                )
            if extra_state:
                message += (
                    f"The state_dict contained these additional target modules: {extra_state}. "
                )
            warnings.warn(message, RuntimeWarning, stacklevel=3)
    # the state_dict's layers, all of them
    exact = {"target_modules": layers, "exclude_modules": None}
    # IA3: the feed-forward ones among the layers, by its own rule
    if hasattr(config, "feedforward_modules"):
        exact["feedforward_modules"] = {n for n in layers if surgery.is_feedforward(config, n)}
    if hasattr(config, "layers_to_transform"):
        exact.update(layers_to_transform=None, layers_pattern=None)
    return config.replace(**exact)


def _layers_in(state_dict: dict[str, Any], prefix: str) -> set[str]:
    """The names of the layers an adapter's tensors belong to: what comes before ``.lora_...`` in
    each key, without PEFT's ``base_model.model.`` wrapper."""
    names = set()
    for key in state_dict:
        head, found, _ = key.partition(f".{prefix}")
        if found:
            names.add(head.removeprefix("base_model.model."))
    if not names:
        raise ConfigError(
            f"inject_adapter_in_model: the state_dict holds no {prefix}* tensor, so it names no layer "
            "to adapt; pass the adapter's own tensors (get_peft_model_state_dict)"
        )
    return names


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside FSDP's or DDP's wrapper, whose parameter names the adapter's keys are made
    from."""
    while True:
        inner = getattr(model, "_fsdp_wrapped_module", None)
        if inner is None and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _config(model: nn.Module, adapter_name: str) -> PeftConfig | None:
    configs = getattr(model, "peft_config", None)
    return configs.get(adapter_name) if isinstance(configs, dict) else None


def get_peft_model_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor] | None = None,
    adapter_name: str = "default",
    unwrap_compiled: bool = False,
    save_embedding_layers: str | bool = "auto",
) -> dict[str, torch.Tensor]:
    """The tensors of adapter ``adapter_name`` under the keys ``adapter_model.safetensors`` uses
    (with the base model's embedding weights per ``save_embedding_layers``, as PEFT decides it)."""
    model = _unwrap(model)
    if isinstance(model, PeftModel):
        return {
            **model.adapter_state_dict(adapter_name),
            **embedding_state(model, model.peft_config[adapter_name], save_embedding_layers),
        }
    return fmt.lora_state_dict(
        model, adapter_name, getattr(_config(model, adapter_name), "bias", "none")
    )


def set_peft_model_state_dict(
    model: nn.Module,
    peft_model_state_dict: dict[str, torch.Tensor],
    adapter_name: str = "default",
    ignore_mismatched_sizes: bool = False,
    low_cpu_mem_usage: bool = False,
) -> _IncompatibleKeys:
    """Load an adapter's tensors (keys as :func:`get_peft_model_state_dict` gives them) into the
    model.

    Args:
        ignore_mismatched_sizes: leave out tensors whose shape does not fit, with a warning naming
            each.

    Returns:
        PEFT's load result; its lists are empty, since a missing or extra tensor raises
        :class:`~peftkit.AdapterFormatError` instead of loading part of an adapter.
    """
    model = _unwrap(model)
    if isinstance(model, PeftModel):
        model.load_adapter_state(
            peft_model_state_dict,
            adapter_name,
            "the state dict",
            any_bias=True,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
        )
        return _IncompatibleKeys([], [])
    # a PeftModel's keys carry "base_model.model."; a model injected in place has none (PEFT takes
    # both)
    peft_model_state_dict = {
        k.removeprefix("base_model.model."): v for k, v in peft_model_state_dict.items()
    }
    allowed = set(get_peft_model_state_dict(model, adapter_name=adapter_name))
    # PEFT loads every bias given
    allowed |= {k for k in peft_model_state_dict if k.endswith(".bias")}
    surgery.load_tensors(
        model,
        fmt.to_model_keys(
            model,
            adapter_name,
            peft_model_state_dict,
            "the state dict",
            allowed=allowed,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
        ),
    )
    return _IncompatibleKeys([], [])


def get_base_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights under their original names (no ``base_layer``, no adapter tensors)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return surgery.base_state_dict(base)


def set_base_model_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True
) -> _IncompatibleKeys:
    """Load base-model weights given under their original names into a model that holds adapters."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    result = base.load_state_dict(surgery.to_wrapped_keys(base, state_dict), strict=False)
    adapter = set(base.state_dict()) - set(
        surgery.to_wrapped_keys(base, surgery.base_state_dict(base))
    )
    # the adapter's tensors are not the base's
    missing = [k for k in result.missing_keys if k not in adapter]
    if strict and (missing or result.unexpected_keys):
        problems = [f"Missing key(s) in state_dict: {missing[:5]}"] if missing else []
        problems += (
            [f"Unexpected key(s) in state_dict: {result.unexpected_keys[:5]}"]
            if result.unexpected_keys
            else []
        )
        raise RuntimeError("set_base_model_state_dict: " + "; ".join(problems))
    return _IncompatibleKeys(missing, result.unexpected_keys)
