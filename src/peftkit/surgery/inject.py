"""Putting adapters into a model: wrap each targeted layer in its method's layer, add trainable
copies of whole modules, and mark what trains.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection
from typing import Any, cast

import torch
from torch import nn

from ..common.memory import check_allocation
from ..config import (
    AdaLoraConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    OFTConfig,
    PeftConfig,
    TrainableTokensConfig,
)
from ..errors import ConfigError, TargetNotFoundError, short_repr
from ..tuners.adalora import AdaLoraLayer
from ..tuners.base import AdapterLayer
from ..tuners.ia3 import IA3Conv, IA3Layer, IA3Linear
from ..tuners.loha import LoHaLayer
from ..tuners.lokr import LoKrLayer
from ..tuners.lora import LoraLayer, LoraLinear
from ..tuners.lora.conv import CONV_TYPES, wrap_conv
from ..tuners.lora.embedding import LoraEmbedding
from ..tuners.lora.param import LoraParam
from ..tuners.modules_to_save import ModulesToSaveWrapper
from ..tuners.oft import OFTLayer
from ..tuners.trainable_tokens import TrainableTokensLayer
from . import tying
from .keys import adapter_parameters, layer_adapter_names
from .state import adapter_layers
from .tables import ADALORA_TARGET_MODULES
from .targets import (
    candidate_modules,
    check_target_list,
    conv1d_type,
    is_feedforward,
    is_target,
    matches_target,
    no_target_error,
    pattern_value,
    resolve_ia3_targets,
    resolve_target_modules,
    set_submodule,
    shorten_targets,
    warn_unmatched_patterns,
    warn_unused_exclusions,
)


def _wrap(module: nn.Module, key: str) -> LoraLayer:
    conv1d = conv1d_type()
    if conv1d is not None and isinstance(module, conv1d):
        return LoraLinear(module, fan_in_fan_out=True)
    if isinstance(module, nn.Linear):
        return LoraLinear(module, fan_in_fan_out=False)
    if isinstance(module, nn.Embedding):
        return LoraEmbedding(module)
    if isinstance(module, CONV_TYPES):
        return wrap_conv(module)  # type: ignore[arg-type]
    raise TargetNotFoundError(
        f"target {key!r} is a {type(module).__name__}, which LoRA cannot adapt; supported layers are nn.Linear, "
        "transformers' Conv1D, nn.Embedding and nn.Conv1d/2d/3d. "
        "Narrow target_modules so it names only those."
    )


def _strip_wrappers(name: str) -> str:
    return ".".join(p for p in name.split(".") if p != "base_layer")


def parameter_targets(model: nn.Module, targets: Collection[str]) -> list[tuple[str, str]]:
    """(module name, parameter name) for each parameter ``target_parameters`` names, in the model's
    order (PEFT's matching: ``<module>.<parameter>`` equal to a target or ending with ``.target``).
    The module name is the owner's, without the wrappers' ``base_layer`` steps."""
    found = []
    for module_name, module in model.named_modules():
        for param_name in getattr(module, "parametrizations", {}):
            key = f"{_strip_wrappers(module_name)}.{param_name}"
            if key in targets or any(key.endswith(f".{t}") for t in targets):
                raise ConfigError(
                    f"target_parameters: {key!r} is parametrized (torch.nn.utils.parametrize); LoRA on "
                    "a parametrized parameter is not supported by peftkit. Remove the "
                    "parametrization first, or target the module with target_modules"
                )
        for param_name, _ in module.named_parameters(recurse=False):
            owner_name = _strip_wrappers(module_name)
            key = f"{owner_name}.{param_name}"
            if key in targets or any(key.endswith(f".{t}") for t in targets):
                found.append((owner_name, param_name))
    return found


def inject_lora_parameters(model: nn.Module, config: LoraConfig, adapter_name: str) -> int:
    """LoRA on the raw parameters ``config.target_parameters`` names (mixture-of-experts weights):
    each gets a :class:`LoraParam` around the module that holds it (nested for a second parameter of
    the same module); a parameter already wrapped for another adapter gets this one beside it.

    Returns:
        how many parameters were adapted.
    """
    found = parameter_targets(model, list(config.target_parameters or []))
    for owner_name, param_name in found:
        if not owner_name:  # PEFT's refusal: the wrapper would be its own parent
            raise ConfigError(
                f"Targeting an nn.Parameter on the top-level module is not supported (parameter "
                f"'{param_name}'). "
            )
        holder = model.get_submodule(owner_name)
        if isinstance(holder, AdapterLayer) and not isinstance(holder, LoraParam):
            raise ConfigError(
                f"Trying to wrap an `nn.Parameter` of layer '{owner_name}' of type "
                f"{type(holder.base_layer).__name__}, "
                "which is not a valid target. Make sure that this layer is not also targeted with "
                "`target_modules`. For some models, PEFT will do this automatically, try setting "
                "`target_modules=[]` to prevent it."
            )
        layer = _wrapper_of(holder, param_name) or LoraParam(holder, param_name)
        _add_lora(layer, config, adapter_name, f"{owner_name}.{param_name}")
        if layer.base_layer is holder:  # a new wrapper: it takes the holder's place
            set_submodule(model, owner_name, layer)
    return len(found)


def _parameters_only(
    model: nn.Module, config: LoraConfig, adapter_name: str, nothing: Exception
) -> LoraConfig:
    """LoRA on ``config.target_parameters`` alone (no layer targeted), with its token rows;
    ``nothing`` is raised when no parameter matches either."""
    if not inject_lora_parameters(model, config, adapter_name):
        raise nothing
    add_token_rows(model, config, adapter_name)
    return config


def _add_lora(layer: LoraLayer, config: LoraConfig, adapter_name: str, key: str) -> None:
    """Give ``layer`` adapter ``adapter_name``, its rank and alpha per ``key``'s patterns."""
    layer.add_adapter(  # type: ignore[operator]
        adapter_name,
        int(pattern_value(config.rank_pattern, key, config.r)),
        pattern_value(config.alpha_pattern, key, config.lora_alpha),
        config.lora_dropout,
        config.init_lora_weights,
        config.use_rslora,
        # only when on: the layer kinds without them take neither
        **{k: True for k in ("use_dora", "lora_bias") if getattr(config, k)},
    )


def _wrapper_of(holder: nn.Module, param_name: str) -> LoraParam | None:
    """The wrapper of ``param_name`` in the chain of wrappers ``holder`` starts, if any."""
    while isinstance(holder, LoraParam):
        if holder.parameter_name == param_name:
            return holder
        holder = holder.base_layer
    return None


def inject_lora(model: nn.Module, config: LoraConfig, adapter_name: str) -> LoraConfig:
    """Add LoRA adapter ``adapter_name`` to every layer ``config`` targets, wrapping plain layers.

    Returns:
        ``config`` resolved against the model (targets listed, ``fan_in_fan_out`` for GPT-2's
        Conv1D), as the adapter's file records it; ``config`` itself is not changed.

    Raises:
        TargetNotFoundError: no layer matches, naming the targets and the model's candidate layers.
    """
    if config.target_parameters and not config.target_modules:  # raw parameters only
        return _parameters_only(
            model,
            config,
            adapter_name,
            TargetNotFoundError(
                "No `target_modules` passed but also no `target_parameters` found. Please check the "
                f"values for these arguments. target_parameters={list(config.target_parameters)} matched "
                "no parameter (name them as '<module>.<parameter>', e.g. 'mlp.experts.gate_up_proj')."
            ),
        )
    tied, tie_how = tying.warn_or_plan(model, config)
    # the embedding gets the adapter; the tied modules share it (tied below)
    if tie_how == "target_modules":
        config = cast(
            LoraConfig,
            config.replace(target_modules=tying.tied_targets(model, config.target_modules, tied)),
        )
    elif tie_how == "modules_to_save":
        saved = tying.saved_names(model, config.modules_to_save or [], tied)
        config = cast(LoraConfig, config.replace(modules_to_save=saved))
    config, user_given = resolve_target_modules(model, config)
    candidates = [name for name, _ in candidate_modules(model)]
    keys = [name for name in candidates if is_target(config, name)]
    if tie_how == "target_modules":
        keys = [k for k in keys if not any(k == t or k.endswith(f".{t}") for t in tied)]
    if not keys and config.target_parameters:
        # PEFT's warning: the parameters may still match (checked below)
        warnings.warn(
            f"target_modules={config.target_modules} were set but no module was matched.",
            RuntimeWarning,
            stacklevel=3,
        )
        return _parameters_only(
            model, config, adapter_name, no_target_error(model, config, candidates)
        )
    if not keys:
        raise no_target_error(model, config, candidates)
    if user_given:  # checked before any change, so a typo leaves the model untouched
        check_target_list(model, config, candidates)
    warn_unused_exclusions(config, candidates)
    embeddings = [
        k for k in keys if isinstance(model.get_submodule(k), (nn.Embedding, LoraEmbedding))
    ]
    special = (
        f"init_lora_weights={config.init_lora_weights!r}"
        if isinstance(config.init_lora_weights, str) and config.init_lora_weights != "gaussian"
        else None
    )
    if special and embeddings:  # checked before any change, like the target list
        raise ConfigError(
            f"{special}: {embeddings[0]!r} is an embedding; peftkit supports it on linear layers "
            f"only, so leave embeddings out of target_modules"
        )
    conv1d = conv1d_type()
    transposed = [
        k for k in keys if conv1d is not None and isinstance(model.get_submodule(k), conv1d)
    ]
    # before any change: OLoRA rewrites base weights
    if config.init_lora_weights == "olora" and transposed:
        raise ConfigError(
            f"init_lora_weights='olora' works on nn.Linear layers, not on GPT-2's Conv1D "
            f"({transposed[0]!r}); use 'pissa' there"
        )
    _check_lora_size(model, config, keys)
    warn_unmatched_patterns(config, keys)
    config = shorten_targets(model, config, keys)
    if transposed:  # recorded as PEFT does, so files stay interchangeable
        config = cast(LoraConfig, config.replace(fan_in_fan_out=True))
    for key in keys:
        module = model.get_submodule(key)
        layer = module if isinstance(module, LoraLayer) else _wrap(module, key)
        _add_lora(layer, config, adapter_name, key)
        if layer is not module:
            set_submodule(model, key, layer)
    if tie_how == "target_modules":
        tying.tie_lora(model, tied, adapter_name, _wrap)
    if config.target_parameters and not inject_lora_parameters(model, config, adapter_name):
        warnings.warn(
            f"target_parameters={config.target_parameters} were set but no parameter was matched.",
            RuntimeWarning,
            stacklevel=3,
        )  # PEFT's
    add_token_rows(model, config, adapter_name)
    return config


def add_token_rows(model: nn.Module, config: LoraConfig, adapter_name: str) -> None:
    """LoRA's ``trainable_token_indices`` (PEFT's): rows of the input embeddings (a list), or of
    the named layers (``{name: rows}``), train beside the LoRA adapter, saved under PEFT's
    ``token_adapter.`` keys; a head tied to the embeddings shares the rows when it is not named
    with other rows."""
    indices = config.trainable_token_indices
    if indices is None:
        return
    embedding = tying.embedding_name(model) or "embed_tokens"
    targets = dict(indices) if isinstance(indices, dict) else {embedding: list(indices)}
    for name in targets:
        if name in (config.modules_to_save or []):
            raise ConfigError(
                "The embedding layer is already marked to be trained fully, either specify "
                f"`modules_to_save=[..., \"{name}\", ...]` or `trainable_tokens={{'{name}': x}}` "
                "but not both."
            )
    tied = tying.module_names_tied_with_embedding(model)
    rows = next((v for k, v in targets.items() if embedding.endswith(k)), None)
    # a tied head named with the embedding's rows is tied below rather than given its own
    shared = {k for k, v in targets.items() if v == rows and any(t.endswith(k) for t in tied)}
    for name, token_rows in targets.items():
        if name not in shared:
            _add_rows(model, name, token_rows, adapter_name)
    _tie_token_rows(model, tied, "token_adapter.")


def _add_rows(model: nn.Module, name: str, rows: list[int], adapter_name: str) -> None:
    """Train ``rows`` of every layer whose name is or ends with ``name``."""
    keys = [k for k, _ in model.named_modules() if k == name or k.endswith(f".{name}")]
    if not keys:
        raise TargetNotFoundError(
            f"trainable_token_indices names {name!r}, which is not a layer of the model; name the "
            "embedding layer (e.g. 'embed_tokens') or give a list of token ids for the input embeddings"
        )
    for key in keys:
        module = model.get_submodule(key)
        if isinstance(module, TrainableTokensLayer):
            layer = module
        elif isinstance(module, AdapterLayer):
            raise ConfigError(
                f"{key!r} carries a {type(module).__name__} adapter already: trainable_token_indices "
                "and target_modules cannot both name it; drop it from one of them"
            )
        elif isinstance(module, (nn.Embedding, nn.Linear)):
            layer = TrainableTokensLayer(module, file_prefix="token_adapter.")
        else:
            raise TargetNotFoundError(
                f"trainable_token_indices names {key!r}, a {type(module).__name__}; token rows train "
                "in an nn.Embedding (or a linear head tied to it)"
            )
        layer.add_adapter(adapter_name, list(rows))
        if layer is not module:
            set_submodule(model, key, layer)


def _check_lora_size(model: nn.Module, config: LoraConfig, keys: list[str]) -> None:
    """Refuse ranks whose A and B (fp32, with AdamW's two moments when trained) cannot fit in
    memory."""
    total = 0
    for key in keys:
        weight = getattr(model.get_submodule(key), "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            total += int(pattern_value(config.rank_pattern, key, config.r)) * sum(weight.shape)
    # bytes per value: fp32, plus gradient and two moments to train
    factor = 4 if config.inference_mode else 16
    check_allocation(
        total * factor,
        f"LoRA with r={short_repr(config.r)} on {len(keys)} layers",
        "choose a smaller r (8 to 64 is usual)",
    )


def inject_adalora(model: nn.Module, config: AdaLoraConfig, adapter_name: str) -> AdaLoraConfig:
    """Add AdaLoRA adapter ``adapter_name`` (rank ``init_r``) to every linear layer ``config``
    targets (PEFT's AdaLoRA defaults when empty).

    Returns:
        ``config`` resolved against the model (targets listed, ``fan_in_fan_out`` for GPT-2's
        Conv1D); ``config`` itself is not changed.
    """
    if config.target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in ADALORA_TARGET_MODULES:
            raise ConfigError(
                f"Please specify `target_modules` in `peft_config`: AdaLoRA has no default for model type "
                f"{model_type!r}; name the linear layers to adapt, e.g. ['q_proj', 'v_proj']"
            )
        default = ADALORA_TARGET_MODULES[model_type]
        config = cast(
            AdaLoraConfig,
            config.replace(target_modules=default if isinstance(default, str) else set(default)),
        )
    conv1d = conv1d_type()
    transposed: list[str] = []

    def add(layer: AdaLoraLayer, key: str) -> None:
        if layer.fan_in_fan_out:
            transposed.append(key)
        layer.add_adapter(
            adapter_name,
            config.init_r,
            config.lora_alpha,
            config.lora_dropout,
            config.init_lora_weights,
        )

    def wrap(module: nn.Module) -> AdaLoraLayer:
        return AdaLoraLayer(
            module, fan_in_fan_out=conv1d is not None and isinstance(module, conv1d)
        )

    kinds = (nn.Linear, nn.Conv2d) if conv1d is None else (nn.Linear, conv1d, nn.Conv2d)
    config = _inject_wrapping(model, config, AdaLoraLayer, "AdaLoRA", add, kinds, make=wrap)
    return cast(AdaLoraConfig, config.replace(fan_in_fan_out=True)) if transposed else config


def inject_ia3(model: nn.Module, config: IA3Config, adapter_name: str) -> IA3Config:
    """Add IA3 adapter ``adapter_name`` to every layer ``config`` targets (architecture defaults
    when empty).

    Returns:
        ``config`` resolved against the model (targets, ``fan_in_fan_out``); ``config`` itself is
        not changed.
    """
    # PEFT's warning when a tied module is adapted: IA3 cannot tie
    tying.warn_or_plan(model, config)
    config = resolve_ia3_targets(model, config)
    candidates = [name for name, _ in candidate_modules(model)]
    keys = [name for name in candidates if is_target(config, name)]
    if not keys:
        raise no_target_error(model, config, candidates)
    conv1d, transposed = conv1d_type(), False
    for key in keys:
        module = model.get_submodule(key)
        if isinstance(module, IA3Layer):
            layer = module
        elif isinstance(module, AdapterLayer):
            raise ConfigError(
                f"layer {key!r} already carries a {type(module).__name__} adapter; IA3 cannot share "
                f"a layer with another method, choose other target_modules"
            )
        elif conv1d is not None and isinstance(module, conv1d):
            transposed = True
            layer = IA3Linear(module, is_feedforward(config, key), fan_in_fan_out=True)
        elif isinstance(module, nn.Linear):
            layer = IA3Linear(module, is_feedforward(config, key))
        elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
            layer = IA3Conv(module, is_feedforward(config, key))
        else:
            raise TargetNotFoundError(
                f"target {key!r} is a {type(module).__name__}, which IA3 cannot adapt; narrow "
                f"target_modules to linear layers, transformers' Conv1D, nn.Conv2d or nn.Conv3d"
            )
        layer.add_adapter(adapter_name, config.init_ia3_weights)
        if layer is not module:
            set_submodule(model, key, layer)
    return cast(IA3Config, config.replace(fan_in_fan_out=True)) if transposed else config


def inject_loha(model: nn.Module, config: LoHaConfig, adapter_name: str) -> LoHaConfig:
    """Add LoHa adapter ``adapter_name`` to every linear or convolution layer ``config`` targets
    (LoRA's default targets when empty, as in PEFT).

    Returns:
        ``config`` resolved against the model (targets listed); ``config`` itself is not changed.
    """

    def add(layer: LoHaLayer, key: str) -> None:
        layer.add_adapter(
            adapter_name,
            int(pattern_value(config.rank_pattern, key, config.r)),
            pattern_value(config.alpha_pattern, key, config.alpha),
            config.rank_dropout,
            config.module_dropout,
            config.init_weights,
            config.use_effective_conv2d,
        )

    return _inject_wrapping(model, config, LoHaLayer, "LoHa", add)


def inject_lokr(model: nn.Module, config: LoKrConfig, adapter_name: str) -> LoKrConfig:
    """Add LoKr adapter ``adapter_name`` to every linear or convolution layer ``config`` targets
    (LoRA's default targets when empty, as in PEFT).

    Returns:
        ``config`` resolved against the model (targets listed); ``config`` itself is not changed.
    """

    def add(layer: LoKrLayer, key: str) -> None:
        layer.add_adapter(
            adapter_name,
            int(pattern_value(config.rank_pattern, key, config.r)),
            pattern_value(config.alpha_pattern, key, config.alpha),
            config.rank_dropout,
            config.module_dropout,
            config.init_weights,
            config.use_effective_conv2d,
            config.decompose_both,
            config.decompose_factor,
            config.rank_dropout_scale,
        )

    return _inject_wrapping(model, config, LoKrLayer, "LoKr", add)


def inject_oft(model: nn.Module, config: OFTConfig, adapter_name: str) -> OFTConfig:
    """Add OFT adapter ``adapter_name`` to every ``nn.Linear`` layer ``config`` targets (LoRA's
    default targets when empty, as in PEFT).

    Returns:
        ``config`` resolved against the model (targets listed); ``config`` itself is not changed.
    """

    def add(layer: OFTLayer, key: str) -> None:
        layer.add_adapter(
            adapter_name,
            config.r,
            config.oft_block_size,
            coft=config.coft,
            eps=config.eps,
            block_share=config.block_share,
            use_cayley_neumann=config.use_cayley_neumann,
            num_cayley_neumann_terms=config.num_cayley_neumann_terms,
            init_weights=config.init_weights,
            module_dropout=config.module_dropout,
        )

    return _inject_wrapping(model, config, OFTLayer, "OFT", add, kinds=(nn.Linear,))


def _inject_wrapping(
    model: nn.Module,
    config: Any,
    layer_class: type[AdapterLayer],
    method: str,
    add: Callable[[Any, str], None],
    kinds: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d),
    make: Callable[[nn.Module], AdapterLayer] | None = None,
) -> Any:
    """Wrap each targeted layer of ``kinds`` in ``layer_class`` (built by ``make`` when given) or
    reuse the one there, and ``add(layer, key)`` the adapter to it."""
    tying.warn_or_plan(model, config)  # PEFT's warning when a tied layer is adapted, untied
    config, user_given = resolve_target_modules(model, config)
    candidates = [name for name, _ in candidate_modules(model)]
    keys = [name for name in candidates if is_target(config, name)]
    if not keys:
        raise no_target_error(model, config, candidates)
    if user_given:
        check_target_list(model, config, candidates)
    for key in keys:
        module = model.get_submodule(key)
        if isinstance(module, layer_class):
            layer = module
        elif isinstance(module, AdapterLayer):
            raise ConfigError(
                f"layer {key!r} already carries a {type(module).__name__} adapter; {method} cannot "
                f"share a layer with another method, choose other target_modules"
            )
        elif isinstance(module, kinds):
            layer = make(module) if make else layer_class(module)
        else:
            names = " or ".join(f"nn.{kind.__name__}" for kind in kinds)
            raise TargetNotFoundError(
                f"target {key!r} is a {type(module).__name__}, which {method} cannot adapt; narrow "
                f"target_modules to {names} layers"
            )
        add(layer, key)
        if layer is not module:
            set_submodule(model, key, layer)
    return config


def add_modules_to_save(
    model: nn.Module, names: list[str], adapter_name: str, tied: Collection[str] = ()
) -> list[str]:
    """Give each module named (or suffixed) in ``names`` a trainable copy for ``adapter_name``; each
    module in ``tied`` (tied to the input embeddings, :func:`peftkit.tying.saved_ties`) shares the
    embedding copy's weight."""
    keys = [k for k, _ in candidate_modules(model) if matches_target(names, k)]
    if not keys:
        raise TargetNotFoundError(
            f"modules_to_save={names!r} matches no module of {type(model).__name__}; "
            "name a module such as the classification head ('classifier' or 'score')"
        )
    for key in keys:
        module = model.get_submodule(key)
        if isinstance(
            module, (nn.ModuleDict, nn.ModuleList, nn.ParameterDict, nn.ParameterList, AdapterLayer)
        ):
            raise TypeError(
                f"modules_to_save cannot be applied to modules of type {type(module)} ({key!r}): it "
                "needs a module with a forward of its own; name the layers inside it instead"
            )
        wrapper = (
            module if isinstance(module, ModulesToSaveWrapper) else ModulesToSaveWrapper(module)
        )
        wrapper.add_adapter(adapter_name)
        if wrapper is not module:
            set_submodule(model, key, wrapper)
    if tied:
        tying.tie_saved_copies(model, tied, adapter_name, ModulesToSaveWrapper)
    return keys


def mark_trainable(
    model: nn.Module, adapter_name: str, config: PeftConfig, freeze_others: bool = True
) -> None:
    """Freeze everything (unless ``freeze_others`` is False), then unfreeze the parameters of
    ``adapter_name`` (and biases per ``config.bias``)."""
    if freeze_others:
        model.requires_grad_(False)
    for _, _, param in adapter_parameters(model, adapter_name):
        param.requires_grad_(True)
    bias = getattr(config, "bias", "none")
    if bias == "all":
        for name, param in model.named_parameters():
            if name == "bias" or name.endswith(".bias"):
                param.requires_grad_(True)
    elif bias in ("lora_only", "adalora_only"):  # AdaLoRA's name for it (PEFT's <method>_only)
        for _, layer in adapter_layers(model):
            if (
                isinstance(layer, LoraLayer)
                and adapter_name in layer.scaling
                and layer.bias is not None
            ):
                layer.bias.requires_grad_(True)


def _embedding_pair(model: nn.Module) -> tuple[Any, Any]:
    """The model's input embeddings and output head (None where it has no such method)."""
    get_in, get_out = (
        getattr(model, "get_input_embeddings", None),
        getattr(model, "get_output_embeddings", None),
    )
    return (get_in() if callable(get_in) else None), (get_out() if callable(get_out) else None)


def untie_adapted_embeddings(model: nn.Module) -> bool:
    """Before a merge into input embeddings or an LM head that share one weight: give the adapted
    one its own copy, so the other keeps the weight it computes with unmerged (merged then equals
    unmerged; merged into the shared weight, LoRA on the head would change the input embeddings
    too). Returns whether it untied them; :func:`record_untied_embeddings` then corrects the
    config."""
    embeddings, head = _embedding_pair(model)
    shared = getattr(embeddings, "weight", None)
    if shared is None or getattr(head, "weight", None) is not shared:
        return False
    adapted = next((m for m in (embeddings, head) if isinstance(m, AdapterLayer)), None)
    if adapted is None:
        return False
    adapted.base_layer.weight = nn.Parameter(
        cast(torch.Tensor, shared).detach().clone(), requires_grad=False
    )
    return True


def record_untied_embeddings(model: nn.Module) -> bool:
    """After a merge: a config that says ``tie_word_embeddings`` while the input and output
    embeddings hold different weights (untied for the merge, or never tied) is set to False, as PEFT
    does, so saving and reloading the model does not tie them again. Returns whether it changed the
    config."""
    config = getattr(model, "config", None)
    if not getattr(config, "tie_word_embeddings", False):
        return False
    w_in, w_out = (getattr(m, "weight", None) for m in _embedding_pair(model))
    if (
        not isinstance(w_in, torch.Tensor)
        or not isinstance(w_out, torch.Tensor)
        or w_in.data_ptr() == w_out.data_ptr()
    ):
        return False
    config.tie_word_embeddings = False  # type: ignore[union-attr]
    return True


def held_layout(model: nn.Module, name: str) -> dict[str, tuple[float, ...]]:
    """Where adapter ``name`` sits in ``model``: layer name -> (rank, scaling) for LoRA, ()
    otherwise."""
    layout: dict[str, tuple[float, ...]] = {}
    for key, layer in adapter_layers(model):
        if name in layer_adapter_names(layer) and not isinstance(layer, ModulesToSaveWrapper):
            layout[key] = (
                (layer.r[name], layer.scaling[name]) if isinstance(layer, LoraLayer) else ()
            )
    return layout


def planned_layout(model: nn.Module, config: PeftConfig) -> dict[str, tuple[float, ...]]:
    """What :func:`held_layout` would read after injecting ``config`` into ``model`` (nothing is
    changed)."""
    if not isinstance(config, (LoraConfig, IA3Config)):
        return {}
    if isinstance(config, LoraConfig):
        config, _ = resolve_target_modules(model, config)
    else:
        config = resolve_ia3_targets(model, config)
    keys = [k for k, _ in candidate_modules(model) if is_target(config, k)]
    if not isinstance(config, LoraConfig):
        return dict.fromkeys(keys, ())
    layout: dict[str, tuple[float, ...]] = {}
    for key in keys:
        r = int(pattern_value(config.rank_pattern, key, config.r))
        alpha = pattern_value(config.alpha_pattern, key, config.lora_alpha)
        layout[key] = (r, alpha / math.sqrt(r) if config.use_rslora else alpha / r)
    return layout


def inject_trainable_tokens(
    model: nn.Module, config: TrainableTokensConfig, adapter_name: str
) -> TrainableTokensConfig:
    """Make rows ``config.token_indices`` of the targeted embedding(s) trainable (the model's
    input embeddings when no target is named, as in PEFT); a head tied to the input embeddings
    uses the same rows.

    Returns:
        ``config`` resolved against the model (its targets named); ``config`` itself is not changed.
    """
    if config.target_modules is None:
        config = cast(
            TrainableTokensConfig,
            config.replace(target_modules=tying.embedding_name(model) or "embed_tokens"),
        )

    def add(layer: TrainableTokensLayer, key: str) -> None:
        layer.add_adapter(adapter_name, list(config.token_indices), config.init_weights)

    _inject_wrapping(
        model,
        config,
        TrainableTokensLayer,
        "trainable tokens",
        add,
        kinds=(nn.Embedding, nn.Linear),
    )
    _tie_token_rows(model, tying.module_names_tied_with_embedding(model), "")
    return config


def _tie_token_rows(model: nn.Module, tied: list[str], file_prefix: str) -> None:
    """Give the heads tied to the input embeddings the embeddings' trained rows (when the input
    embeddings train rows)."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    if not isinstance(embeddings, TrainableTokensLayer):
        return
    for key in tied:
        for name, module in list(model.named_modules()):
            if name.endswith(key) and isinstance(module, (nn.Embedding, nn.Linear)):
                head = TrainableTokensLayer(module, tied_to=embeddings, file_prefix=file_prefix)
                set_submodule(model, name, head)
