"""Model surgery: the one place that walks and mutates a model's module tree.

Plain functions: find the layers a config targets (with PEFT's matching rules), swap them for LoRA
layers, mark what trains, merge, unmerge and unload.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Collection, Iterable, Iterator
from typing import Any, cast

import torch
from torch import nn

from . import tying
from .config import IA3Config, LoHaConfig, LoraConfig, PeftConfig, TaskType
from .errors import ConfigError, TargetNotFoundError, short_repr
from .memory import check_allocation
from .merging import MIXES, mix
from .target_tables import IA3_FEEDFORWARD_MODULES, IA3_TARGET_MODULES, LORA_TARGET_MODULES
from .tuners.base import AdapterLayer
from .tuners.ia3 import IA3Conv, IA3Layer, IA3Linear
from .tuners.loha import LoHaLayer
from .tuners.lora import LoraLayer, LoraLinear
from .tuners.lora_conv import CONV_TYPES, LoraConv, wrap_conv
from .tuners.lora_embedding import LoraEmbedding
from .tuners.modules_to_save import ModulesToSaveWrapper
from .tuners.rows import BASE_ROW, RowGroups, group_rows

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "adapter_buffers",
    "adapter_layers",
    "add_modules_to_save",
    "delete_adapter",
    "get_submodules",
    "inject_loha",
    "inject_lora",
    "is_target",
    "mark_trainable",
    "matches_target",
    "merge",
    "resolve_target_modules",
    "set_active",
    "set_disabled",
    "unload",
    "unmerge",
]

# Layers adapted when a LoraConfig names none, by ``config.model_type`` (the same choices as PEFT).
DEFAULT_TARGET_MODULES = LORA_TARGET_MODULES

# Heads that a sequence-classification adapter trains in full (PEFT adds these to modules_to_save).
SEQ_CLS_HEADS = ("classifier", "score")


def _conv1d_type() -> type[nn.Module] | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain PyTorch models
        return None
    return Conv1D


def _linear_types() -> tuple[type[nn.Module], ...]:
    conv1d = _conv1d_type()
    return (nn.Linear, conv1d) if conv1d is not None else (nn.Linear,)


REGEX_SECONDS = 0.25
"""The most time one name may take to match a pattern from a config. Patterns come from files that may be
untrusted (an ``adapter_config.json``), and a pattern such as ``(a|a?)+$`` can backtrack for hours with
``re``; the ``regex`` engine takes a timeout, and a pattern that hits it is refused."""


def _regex(kind: str, pattern: str, key: str) -> Any:
    """``regex.fullmatch`` (``kind="full"``) or ``regex.match`` of a config pattern, with :data:`REGEX_SECONDS`."""
    import regex

    try:
        compiled = regex.compile(pattern, flags=regex.VERSION0)
        return (compiled.fullmatch if kind == "full" else compiled.match)(key, timeout=REGEX_SECONDS)
    except TimeoutError as err:
        raise ConfigError(f"the pattern {short_repr(pattern)} took over {REGEX_SECONDS}s to match the layer name "
                          f"{key!r} (catastrophic backtracking); simplify it, or list the layer names") from err
    except regex.error as err:
        raise ConfigError(f"the pattern {short_repr(pattern)} is not a valid regular expression: {err}") from err


def _shown(spec: Any) -> str:
    """A names field for a message: a set as a sorted list, so the message reads the same on every run."""
    return repr(sorted(spec) if isinstance(spec, set) else spec)


def matches_target(spec: list[str] | set[str] | str, key: str) -> bool:
    """PEFT's rule: a string is a regex that must match the whole name; a list matches a name or a suffix."""
    if isinstance(spec, str):
        return _regex("full", spec, key) is not None
    return key in spec or any(key.endswith(f".{t}") for t in spec)


def _layer_index(config: LoraConfig, key: str) -> int | None:
    patterns = getattr(config, "layers_pattern", None)
    if not patterns:
        match = _regex("match", r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        match = None
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = _regex("match", rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match:
                break
    return int(match.group("idx")) if match else None


def _saved(config: LoraConfig | IA3Config, key: str) -> bool:
    """Whether ``key`` is (inside) one of the config's modules_to_save, which adapters never target (PEFT's rule)."""
    return bool(config.modules_to_save) and any(
        _regex("match", rf"(^|.*\.){m}($|\..*)", key) for m in cast(list[str], config.modules_to_save))


def is_target(config: LoraConfig | IA3Config, key: str) -> bool:
    """Whether the module named ``key`` is adapted under ``config`` (PEFT's ``check_target_module_exists``)."""
    if config.exclude_modules and matches_target(config.exclude_modules, key):
        return False
    if _saved(config, key):
        return False
    if config.target_modules is None or not matches_target(config.target_modules, key):
        return False
    layers = getattr(config, "layers_to_transform", None)
    if layers is None or isinstance(config.target_modules, str) or key in config.target_modules:
        return True
    index = _layer_index(config, key)  # type: ignore[arg-type]
    if index is None:
        return False
    return index == layers if isinstance(layers, int) else index in layers


def no_target_error(model: nn.Module, config: LoraConfig | IA3Config, candidates: list[str]) -> TargetNotFoundError:
    """Why no layer is adapted, in PEFT's words first (its three cases), then which field to change."""
    named = [n for n in candidates if config.target_modules is not None and matches_target(config.target_modules, n)]
    kept = [n for n in named if not (config.exclude_modules and matches_target(config.exclude_modules, n))]
    saved = [n for n in kept if _saved(config, n)]
    layers, pattern = getattr(config, "layers_to_transform", None), getattr(config, "layers_pattern", None)
    names = f"Layer names this model has: {', '.join(_suggest_targets(model))}."
    if named and not kept:
        return TargetNotFoundError("All modules were excluded. This is likely unintended. Check your "
                                   f"`target_modules`, `exclude_modules` and `modules_to_save` configuration: "
                                   f"exclude_modules={_shown(config.exclude_modules)} removes every match.")
    if kept and len(saved) == len(kept):
        return TargetNotFoundError(
            "No modules were targeted for adaptation. This might be caused by a combination of mismatched target "
            "modules and excluded modules. You may also have only targeted modules that are marked to be saved "
            f"(`modules_to_save`): {', '.join(saved[:3])} are in modules_to_save={_shown(config.modules_to_save)}.")
    message = (f"Target modules {_shown(config.target_modules)} not found in the base model. Please check the "
               "target modules and try again.")
    if kept and layers is not None:  # the names match; the layer indices do not
        indices = [i for i in (_layer_index(cast(LoraConfig, config), n) for n in kept) if i is not None]
        count = f"the model has {max(indices) + 1} layers (0 to {max(indices)})" if indices else \
            "no layer index could be read from the matching names"
        return TargetNotFoundError(
            f"{message} Note: You specified 'layers_to_transform': {layers}"
            + (f" and 'layers_pattern': {pattern}" if pattern else "")
            + f"; {_shown(config.target_modules)} matches {len(kept)} layers, but {count}. "
            "Fix layers_to_transform (or layers_pattern).")
    return TargetNotFoundError(f"{message} {names}")


def _output_layer_names(model: nn.Module, config: PeftConfig) -> set[str]:
    """Names of heads that ``all-linear`` must leave alone (the LM head, or a classifier)."""
    heads: list[nn.Module] = []
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is not None:
        heads.append(output)
    elif config.task_type == TaskType.SEQ_CLS:
        heads += [getattr(model, n) for n in SEQ_CLS_HEADS if isinstance(getattr(model, n, None), nn.Module)]
    return {name for name, module in model.named_modules() if any(module is h for h in heads)}


def resolve_target_modules(model: nn.Module, config: LoraConfig) -> tuple[LoraConfig, bool]:
    """``config`` with ``target_modules`` resolved: the architecture default when empty, and the explicit
    list of layer names for ``"all-linear"`` (as PEFT records them). ``config`` itself is not changed.

    Returns:
        The resolved config, and True when the list came from the user (so each entry must match a layer).
    """
    if config.target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGET_MODULES:
            raise ConfigError(
                f"Please specify `target_modules` in `peft_config`: it is empty and there is no default for model "
                f"type {model_type!r}; set target_modules, e.g. {_suggest_targets(model)} or 'all-linear'"
            )
        default = DEFAULT_TARGET_MODULES[model_type]
        targets = default if isinstance(default, str) else set(default)
        return cast(LoraConfig, config.replace(target_modules=targets)), False
    if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
        skip = _output_layer_names(model, config)
        linear = _linear_types()
        # not the linear layers inside an adapter layer (its A and B): an adapter goes on the adapted layer
        candidates = list(_candidate_modules(model))
        found = {n for n, m in candidates if isinstance(m, (*linear, LoraLinear, IA3Linear)) and n not in skip}
        return cast(LoraConfig, config.replace(target_modules=found)), False
    return config, True


def _suggest_targets(model: nn.Module) -> list[str]:
    """Distinct leaf names of the model's linear-like layers: what a user can put in target_modules."""
    supported = (*_linear_types(), nn.Embedding, *CONV_TYPES, AdapterLayer)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, supported)}
    return sorted(names)


def _wrap(module: nn.Module, key: str) -> LoraLayer:
    conv1d = _conv1d_type()
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


def _pattern_value(pattern: dict[str, float] | dict[str, int], key: str, default: float) -> float:
    for pat, value in pattern.items():
        if _regex("match", rf"(.*\.)?({pat})$", key):
            return value
    return default


def _warn_unmatched_patterns(config: LoraConfig, keys: list[str]) -> None:
    """PEFT's warning for rank_pattern / alpha_pattern keys that match no adapted layer (a typo is ignored)."""
    for name in ("rank_pattern", "alpha_pattern"):
        pattern = getattr(config, name)
        unmatched = sorted(p for p in pattern if not any(_regex("match", rf"(.*\.)?({p})$", k) for k in keys))
        if unmatched:
            shown = f"{keys[:5]}{' ...' if len(keys) > 5 else ''}"
            warnings.warn(f"The following {name} keys did not match any targeted module (the targets: {shown}; a "
                          f"key is a name suffix or a regex) and were ignored: {unmatched}.",
                          RuntimeWarning, stacklevel=4)


def get_submodules(model: nn.Module, key: str) -> tuple[nn.Module, nn.Module, str]:
    """The module named ``key``, its parent, and its name in the parent (PEFT's ``_get_submodules`` order:
    parent, target, name)."""
    parent_name, _, child = key.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, model.get_submodule(key), child


def _set_submodule(model: nn.Module, key: str, new: nn.Module) -> None:
    parent, _, child = get_submodules(model, key)
    setattr(parent, child, new)


def _candidate_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules that could be targets: not the inside of an existing adapter layer or trainable copy."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, (AdapterLayer, ModulesToSaveWrapper)):
            inside.append(name)
        yield name, module


MIN_TARGET_MODULES_FOR_OPTIMIZATION = 20
"""PEFT's threshold: a target list at least this long is recorded as the fewest name suffixes that pick the
same layers (a list of hundreds of full names, as tools that infer targets from a state dict write, slows
every later match and bloats ``adapter_config.json``)."""


def minimal_target_modules(targets: Iterable[str], others: Iterable[str]) -> set[str]:
    """The fewest name suffixes (``a.b.c``: ``c``, ``b.c``, ``a.b.c``) that match every name in ``targets`` and
    no name in ``others``; each target contributes its shortest suffix that no other name ends with, unless a
    suffix chosen before already matches it.

    Raises:
        ValueError: ``targets`` is a string, empty or holds an empty name, or shares a name with ``others``.
    """
    if isinstance(targets, str) or not targets:
        raise ValueError("target_modules should be a list or set of strings.")
    wanted, rest = sorted(set(targets)), set(others)
    if "" in wanted:
        raise ValueError("target_modules should not contain an empty string.")
    if rest.intersection(wanted):
        raise ValueError(f"target_modules and other_module_names contain common elements: "
                         f"{sorted(rest.intersection(wanted))[:3]}; a name cannot be both targeted and not")

    def suffixes(name: str) -> list[str]:  # shortest first
        parts = name.split(".")
        return [".".join(parts[i:]) for i in range(len(parts) - 1, -1, -1)]

    taken = {suffix for name in rest for suffix in suffixes(name)}
    chosen: set[str] = set()
    for name in wanted:
        if not any(name == c or name.endswith(f".{c}") for c in chosen):
            chosen.add(next(s for s in suffixes(name) if s not in taken))  # the full name is never taken
    return chosen


def _shorten_targets(model: nn.Module, config: LoraConfig, keys: list[str]) -> LoraConfig:
    """A long target list recorded as its minimal suffixes, as PEFT does (same layers, a shorter config)."""
    targets = config.target_modules
    if not isinstance(targets, (list, set)) or len(targets) < MIN_TARGET_MODULES_FOR_OPTIMIZATION:
        return config
    if config.layers_to_transform is not None:  # the layer filter applies on top of the names: keep them
        return config
    adapted = set(keys)
    shorter = minimal_target_modules(keys, [name for name, _ in model.named_modules() if name not in adapted])
    return cast(LoraConfig, config.replace(target_modules=shorter)) if len(shorter) < len(targets) else config


def inject_lora(model: nn.Module, config: LoraConfig, adapter_name: str) -> LoraConfig:
    """Add LoRA adapter ``adapter_name`` to every layer ``config`` targets, wrapping plain layers.

    Returns:
        ``config`` resolved against the model (targets listed, ``fan_in_fan_out`` for GPT-2's Conv1D), as
        the adapter's file records it; ``config`` itself is not changed.

    Raises:
        TargetNotFoundError: no layer matches, naming the targets and the model's candidate layers.
    """
    tied, tie_how = tying.warn_or_plan(model, config)
    if tie_how == "target_modules":  # the embedding gets the adapter; the tied modules share it (tied below)
        config = cast(LoraConfig, config.replace(target_modules=tying.tied_targets(model, config.target_modules, tied)))
    elif tie_how == "modules_to_save":
        saved = tying.saved_names(model, config.modules_to_save or [], tied)
        config = cast(LoraConfig, config.replace(modules_to_save=saved))
    config, user_given = resolve_target_modules(model, config)
    candidates = [name for name, _ in _candidate_modules(model)]
    keys = [name for name in candidates if is_target(config, name)]
    if tie_how == "target_modules":
        keys = [k for k in keys if not any(k == t or k.endswith(f".{t}") for t in tied)]
    if not keys:
        raise no_target_error(model, config, candidates)
    if user_given:  # checked before any change, so a typo leaves the model untouched
        _check_target_list(model, config, candidates)
    _warn_unused_exclusions(config, candidates)
    embeddings = [k for k in keys if isinstance(model.get_submodule(k), (nn.Embedding, LoraEmbedding))]
    special = f"init_lora_weights={config.init_lora_weights!r}" if isinstance(config.init_lora_weights, str) \
        and config.init_lora_weights != "gaussian" else None
    if special and embeddings:  # checked before any change, like the target list
        raise ConfigError(f"{special}: {embeddings[0]!r} is an embedding; peftkit supports it on linear layers "
                          f"only, so leave embeddings out of target_modules")
    conv1d = _conv1d_type()
    transposed = [k for k in keys if conv1d is not None and isinstance(model.get_submodule(k), conv1d)]
    if config.init_lora_weights == "olora" and transposed:  # before any change: OLoRA rewrites base weights
        raise ConfigError(f"init_lora_weights='olora' works on nn.Linear layers, not on GPT-2's Conv1D "
                          f"({transposed[0]!r}); use 'pissa' there")
    _check_lora_size(model, config, keys)
    _warn_unmatched_patterns(config, keys)
    config = _shorten_targets(model, config, keys)
    if transposed:  # recorded as PEFT does, so files stay interchangeable
        config = cast(LoraConfig, config.replace(fan_in_fan_out=True))
    for key in keys:
        module = model.get_submodule(key)
        layer = module if isinstance(module, LoraLayer) else _wrap(module, key)
        r = int(_pattern_value(config.rank_pattern, key, config.r))
        alpha = _pattern_value(config.alpha_pattern, key, config.lora_alpha)
        kwargs = {k: True for k in ("use_dora", "lora_bias") if getattr(config, k)}  # only when on: IA3-free LoRA kinds
        layer.add_adapter(  # type: ignore[operator]
            adapter_name, r, alpha, config.lora_dropout, config.init_lora_weights, config.use_rslora, **kwargs
        )
        if layer is not module:
            _set_submodule(model, key, layer)
    if tie_how == "target_modules":
        tying.tie_lora(model, tied, adapter_name, _wrap)
    return config


def _check_lora_size(model: nn.Module, config: LoraConfig, keys: list[str]) -> None:
    """Refuse ranks whose A and B (fp32, with AdamW's two moments when trained) cannot fit in memory."""
    total = 0
    for key in keys:
        weight = getattr(model.get_submodule(key), "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            total += int(_pattern_value(config.rank_pattern, key, config.r)) * sum(weight.shape)
    factor = 4 if config.inference_mode else 16  # bytes per value: fp32, plus gradient and two moments to train
    check_allocation(total * factor, f"LoRA with r={short_repr(config.r)} on {len(keys)} layers",
                     "choose a smaller r (8 to 64 is usual)")


def is_feedforward(config: IA3Config, key: str) -> bool:
    """PEFT's rule: a regex must match the whole name; list entries match as plain suffixes."""
    spec = config.feedforward_modules or []
    if isinstance(spec, str):
        return _regex("full", spec, key) is not None
    return any(key.endswith(f) for f in spec)


def resolve_ia3_targets(model: nn.Module, config: IA3Config) -> IA3Config:
    """``config`` with the architecture's default targets when it names none, the linear layers listed for
    ``"all-linear"``, and the architecture's feed-forward layers when it names none (PEFT's order and rule; a
    model without a table then has no feed-forward layer, where PEFT refuses)."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", None))
    if config.target_modules is None:
        if model_type not in IA3_TARGET_MODULES:
            raise ConfigError(f"target_modules is empty and there is no IA3 default for model type {model_type!r}; "
                              f"set target_modules and feedforward_modules, e.g. {_suggest_targets(model)}")
        config = cast(IA3Config, config.replace(target_modules=set(IA3_TARGET_MODULES[model_type])))
    if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
        config = cast(IA3Config, resolve_target_modules(model, config)[0])  # type: ignore[arg-type]
    if config.feedforward_modules is None and model_type in IA3_FEEDFORWARD_MODULES:
        feedforward: Any = set(IA3_FEEDFORWARD_MODULES[model_type])
        if not isinstance(config.target_modules, str):  # the targets the table names (the rule applies to targets)
            feedforward = {t for t in config.target_modules or () if matches_target(list(feedforward), t)}
        config = cast(IA3Config, config.replace(feedforward_modules=feedforward))
    return config


def inject_ia3(model: nn.Module, config: IA3Config, adapter_name: str) -> IA3Config:
    """Add IA3 adapter ``adapter_name`` to every layer ``config`` targets (architecture defaults when empty).

    Returns:
        ``config`` resolved against the model (targets, ``fan_in_fan_out``); ``config`` itself is not changed.
    """
    tying.warn_or_plan(model, config)  # PEFT's warning when a tied module is adapted: IA3 cannot tie
    config = resolve_ia3_targets(model, config)
    candidates = [name for name, _ in _candidate_modules(model)]
    keys = [name for name in candidates if is_target(config, name)]
    if not keys:
        raise no_target_error(model, config, candidates)
    conv1d, transposed = _conv1d_type(), False
    for key in keys:
        module = model.get_submodule(key)
        if isinstance(module, IA3Layer):
            layer = module
        elif isinstance(module, AdapterLayer):
            raise ConfigError(f"layer {key!r} already carries a {type(module).__name__} adapter; IA3 cannot share "
                              f"a layer with another method, choose other target_modules")
        elif conv1d is not None and isinstance(module, conv1d):
            transposed = True
            layer = IA3Linear(module, is_feedforward(config, key), fan_in_fan_out=True)
        elif isinstance(module, nn.Linear):
            layer = IA3Linear(module, is_feedforward(config, key))
        elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
            layer = IA3Conv(module, is_feedforward(config, key))
        else:
            raise TargetNotFoundError(f"target {key!r} is a {type(module).__name__}, which IA3 cannot adapt; narrow "
                                      f"target_modules to linear layers, transformers' Conv1D, nn.Conv2d or nn.Conv3d")
        layer.add_adapter(adapter_name, config.init_ia3_weights)
        if layer is not module:
            _set_submodule(model, key, layer)
    return cast(IA3Config, config.replace(fan_in_fan_out=True)) if transposed else config


def inject_loha(model: nn.Module, config: LoHaConfig, adapter_name: str) -> LoHaConfig:
    """Add LoHa adapter ``adapter_name`` to every linear or convolution layer ``config`` targets (LoRA's default
    targets when empty, as in PEFT).

    Returns:
        ``config`` resolved against the model (targets listed); ``config`` itself is not changed.
    """
    config, user_given = cast(tuple[LoHaConfig, bool], resolve_target_modules(model, config))  # type: ignore[arg-type]
    candidates = [name for name, _ in _candidate_modules(model)]
    keys = [name for name in candidates if is_target(config, name)]  # type: ignore[arg-type]
    if not keys:
        raise no_target_error(model, config, candidates)  # type: ignore[arg-type]
    if user_given:
        _check_target_list(model, config, candidates)  # type: ignore[arg-type]
    for key in keys:
        module = model.get_submodule(key)
        if isinstance(module, LoHaLayer):
            layer = module
        elif isinstance(module, AdapterLayer):
            raise ConfigError(f"layer {key!r} already carries a {type(module).__name__} adapter; LoHa cannot share "
                              f"a layer with another method, choose other target_modules")
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            layer = LoHaLayer(module)
        else:
            raise TargetNotFoundError(f"target {key!r} is a {type(module).__name__}, which LoHa cannot adapt; narrow "
                                      f"target_modules to nn.Linear, nn.Conv1d or nn.Conv2d layers")
        r = int(_pattern_value(config.rank_pattern, key, config.r))
        alpha = _pattern_value(config.alpha_pattern, key, config.alpha)
        layer.add_adapter(adapter_name, r, alpha, config.rank_dropout, config.module_dropout, config.init_weights,
                          config.use_effective_conv2d)
        if layer is not module:
            _set_submodule(model, key, layer)
    return config


def _warn_unused_exclusions(config: LoraConfig | IA3Config, candidates: list[str]) -> None:
    """PEFT's warning when ``exclude_modules`` excludes nothing (a typo there would otherwise pass silently)."""
    if config.exclude_modules and not any(matches_target(config.exclude_modules, k) for k in candidates):
        warnings.warn(f"You have passed exclude_modules={_shown(config.exclude_modules)} but no modules were excluded. "
                      "Please check that exclude_modules was set correctly.", stacklevel=4)


def _check_target_list(model: nn.Module, config: LoraConfig, candidates: list[str]) -> None:
    """Every entry of a target list must match some layer (before exclusions): a typo should not pass silently."""
    if not isinstance(config.target_modules, (list, set)) or config.layers_to_transform is not None:
        return
    missing = [t for t in sorted(config.target_modules) if not any(k == t or k.endswith(f".{t}") for k in candidates)]
    if missing:
        raise TargetNotFoundError(
            f"target_modules entries {missing} match no layer of {type(model).__name__}. "
            f"Layer names this model has: {', '.join(_suggest_targets(model))}."
        )


def add_modules_to_save(model: nn.Module, names: list[str], adapter_name: str,
                        tied: Collection[str] = ()) -> list[str]:
    """Give each module named (or suffixed) in ``names`` a trainable copy for ``adapter_name``; each module in
    ``tied`` (tied to the input embeddings, :func:`peftkit.tying.saved_ties`) shares the embedding copy's weight."""
    keys = [k for k, _ in _candidate_modules(model) if matches_target(names, k)]
    if not keys:
        raise TargetNotFoundError(
            f"modules_to_save={names!r} matches no module of {type(model).__name__}; "
            "name a module such as the classification head ('classifier' or 'score')"
        )
    for key in keys:
        module = model.get_submodule(key)
        if isinstance(module, (nn.ModuleDict, nn.ModuleList, nn.ParameterDict, nn.ParameterList, AdapterLayer)):
            raise TypeError(f"modules_to_save cannot be applied to modules of type {type(module)} ({key!r}): it "
                            "needs a module with a forward of its own; name the layers inside it instead")
        wrapper = module if isinstance(module, ModulesToSaveWrapper) else ModulesToSaveWrapper(module)
        wrapper.add_adapter(adapter_name)
        if wrapper is not module:
            _set_submodule(model, key, wrapper)
    if tied:
        tying.tie_saved_copies(model, tied, adapter_name, ModulesToSaveWrapper)
    return keys


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


_ROW_LAYERS = (LoraLinear, LoraConv, LoraEmbedding)  # the layers that split a batch by rows (a ``rows`` attribute)


@contextlib.contextmanager
def rows_through_adapters(model: nn.Module, adapter_names: list[str],
                          encoder_names: list[str] | None = None) -> Iterator[None]:
    """Inside, row ``i`` of every batch goes through adapter ``adapter_names[i]`` (``"__base__"``: none),
    whatever adapter is active: LoRA linear layers and the adapters' modules_to_save copies, for inference,
    with nothing merged. ``encoder_names``: the rows of an encoder-decoder's encoder, when they differ (beam
    search expands the decoder's batch only)."""
    wanted = list(dict.fromkeys(n for n in adapter_names if n != BASE_ROW))
    found = [layer for _, layer in adapter_layers(model)]
    layers = [layer for layer in found if isinstance(layer, AdapterLayer)]
    copies = [layer for layer in found if isinstance(layer, ModulesToSaveWrapper)]
    for layer in layers:
        used = [n for n in wanted if n in layer.adapter_names]
        if used and not isinstance(layer, _ROW_LAYERS):
            raise ConfigError(f"a mixed batch (adapter_names) works with LoRA layers; {used[0]} also "
                              f"adapts a {type(layer).__name__}. Run that adapter's rows on their own")
        if layer.merged_adapters:
            raise ConfigError("Cannot pass `adapter_names` when there are merged adapters, please call "
                              "`unmerge_adapter` first (adapter_names needs unmerged adapters: merged ones are in "
                              "every row's weights)")
    for wrapper in copies:
        wrapper.check_rows(wanted)
    routed: list[Any] = [*(x for x in layers if isinstance(x, _ROW_LAYERS)), *copies]
    get_encoder = getattr(model, "get_encoder", None)
    encoder = get_encoder() if callable(get_encoder) and encoder_names is not None else None
    has_encoder = isinstance(encoder, nn.Module) and encoder is not model  # transformers 5: self when none
    in_encoder = {id(m) for m in cast(nn.Module, encoder).modules()} if has_encoder else set()
    groups: dict[tuple[torch.device, bool], RowGroups] = {}  # split once per device (and part), not per layer
    try:
        for module in routed:
            key = (next(module.parameters()).device, id(module) in in_encoder)
            if key not in groups:
                groups[key] = group_rows(cast(list[str], encoder_names) if key[1] else adapter_names, key[0])
            module.rows = groups[key]
        yield
    finally:
        for module in routed:
            module.rows = None


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from every layer; layers left with no adapter go back to plain layers."""
    for key, layer in list(adapter_layers(model)):
        layer.delete_adapter(name)
        if isinstance(layer, AdapterLayer) and not layer.adapter_names:
            _set_submodule(model, key, layer.base_layer)
        elif isinstance(layer, ModulesToSaveWrapper) and not len(layer.modules_to_save):
            _set_submodule(model, key, layer.original_module)


def adapter_parameters(model: nn.Module, name: str) -> Iterator[tuple[str, str, nn.Parameter]]:
    """Adapter ``name``'s tensors in ``model``, as its layers name them: (key in ``model``, key in an adapter
    file, parameter). Every walk over an adapter's tensors goes through here, so no code outside the layers
    needs to know their attribute names."""
    for key, layer in adapter_layers(model):
        for local, in_file, param in layer.adapter_parameters(name):
            yield f"{key}.{local}", f"{key}.{in_file}", param


def adapter_buffers(model: nn.Module, name: str) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Adapter ``name``'s buffers (those of its trainable copies), named as :func:`adapter_parameters` names
    tensors; saved and loaded with the adapter, never trained."""
    for key, layer in adapter_layers(model):
        if isinstance(layer, ModulesToSaveWrapper):
            for local, in_file, buffer in layer.adapter_buffers(name):
                yield f"{key}.{local}", f"{key}.{in_file}", buffer


def mark_trainable(model: nn.Module, adapter_name: str, config: PeftConfig, freeze_others: bool = True) -> None:
    """Freeze everything (unless ``freeze_others`` is False), then unfreeze the parameters of ``adapter_name``
    (and biases per ``config.bias``)."""
    if freeze_others:
        model.requires_grad_(False)
    for _, _, param in adapter_parameters(model, adapter_name):
        param.requires_grad_(True)
    bias = getattr(config, "bias", "none")
    if bias == "all":
        for name, param in model.named_parameters():
            if name == "bias" or name.endswith(".bias"):
                param.requires_grad_(True)
    elif bias == "lora_only":
        for _, layer in adapter_layers(model):
            if isinstance(layer, LoraLayer) and adapter_name in layer.scaling and layer.bias is not None:
                layer.bias.requires_grad_(True)


def _embedding_pair(model: nn.Module) -> tuple[Any, Any]:
    """The model's input embeddings and output head (None where it has no such method)."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    return (get_in() if callable(get_in) else None), (get_out() if callable(get_out) else None)


def untie_adapted_embeddings(model: nn.Module) -> bool:
    """Before a merge into input embeddings or an LM head that share one weight: give the adapted one its own
    copy, so the other keeps the weight it computes with unmerged (merged then equals unmerged; merged into the
    shared weight, LoRA on the head would change the input embeddings too). Returns whether it untied them;
    :func:`record_untied_embeddings` then corrects the config."""
    embeddings, head = _embedding_pair(model)
    shared = getattr(embeddings, "weight", None)
    if shared is None or getattr(head, "weight", None) is not shared:
        return False
    adapted = next((m for m in (embeddings, head) if isinstance(m, AdapterLayer)), None)
    if adapted is None:
        return False
    adapted.base_layer.weight = nn.Parameter(cast(torch.Tensor, shared).detach().clone(), requires_grad=False)
    return True


def record_untied_embeddings(model: nn.Module) -> bool:
    """After a merge: a config that says ``tie_word_embeddings`` while the input and output embeddings hold
    different weights (untied for the merge, or never tied) is set to False, as PEFT does, so saving and
    reloading the model does not tie them again. Returns whether it changed the config."""
    config = getattr(model, "config", None)
    if not getattr(config, "tie_word_embeddings", False):
        return False
    w_in, w_out = (getattr(m, "weight", None) for m in _embedding_pair(model))
    if not isinstance(w_in, torch.Tensor) or not isinstance(w_out, torch.Tensor) or w_in.data_ptr() == w_out.data_ptr():
        return False
    config.tie_word_embeddings = False  # type: ignore[union-attr]
    return True


def merge(model: nn.Module, names: list[str] | None = None) -> None:
    """Fold adapters (default: the active ones) into the base weights. Idempotent."""
    for _, layer in adapter_layers(model):
        if isinstance(layer, AdapterLayer):
            layer.merge(names)


def adapted_layer_names(model: nn.Module) -> list[str]:
    """The names of the layers that hold adapters (not the trainable copies of modules_to_save)."""
    return [key for key, layer in adapter_layers(model) if isinstance(layer, AdapterLayer)]


def _adapter_entries(model: nn.Module, name: str) -> Iterator[tuple[AdapterLayer, Any, Any]]:
    """(layer, container, entry) for each place adapter ``name`` keeps tensors: a module (LoRA's Linear) or a
    parameter (IA3's vector, LoRA's embedding factors)."""
    for _, layer in list(adapter_layers(model)):
        if isinstance(layer, AdapterLayer):
            for attr in layer.adapter_param_names:
                container = getattr(layer, attr)
                if name in container:
                    yield layer, container, container[name]


@torch.no_grad()
def cast_adapter_to_layers(model: nn.Module, name: str) -> None:
    """Give adapter ``name``'s tensors the dtype of the weight each adapts (PEFT's autocast_adapter_dtype=False)."""
    for layer, _, held in _adapter_entries(model, name):
        if isinstance(held, nn.Module):
            held.to(layer.weight.dtype)
        else:
            held.data = held.data.to(layer.weight.dtype)


def _original_names(model: nn.Module) -> dict[str, str]:
    """Each base weight's key in ``model`` (``q_proj.base_layer.weight``) -> its key before any adapter was
    added (``q_proj.weight``); adapter tensors and trainable copies are left out."""
    held = {f"{key}.{local}" for key, layer in adapter_layers(model) for adapter in layer_adapter_names(layer)
            for local, _, _ in layer.adapter_parameters(adapter)}
    return {key: ".".join(p for p in key.split(".") if p not in ("base_layer", "original_module"))
            for key in model.state_dict() if key not in held}


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights under their original names."""
    state = model.state_dict()
    return {original: state[key] for key, original in _original_names(model).items()}


def to_wrapped_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original-name keys to where those weights sit in ``model`` now (unknown keys pass unchanged)."""
    wrapped = {original: key for key, original in _original_names(model).items()}
    return {wrapped.get(k, k): v for k, v in state.items()}


def adapter_to_meta(model: nn.Module, name: str) -> None:
    """Put adapter ``name``'s tensors on the meta device (PEFT's ``low_cpu_mem_usage``): no memory until loaded."""
    for _, container, held in list(_adapter_entries(model, name)):
        if isinstance(held, nn.Module):
            held.to_empty(device="meta")
        else:
            container[name] = nn.Parameter(held.detach().to("meta"), requires_grad=held.requires_grad)


def load_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy tensors into the named parameters and buffers of ``model``; a tensor on the meta device (created
    with low_cpu_mem_usage) is replaced by the loaded one."""
    with torch.no_grad():
        for key, tensor in state.items():
            owner_name, _, attr = key.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            old = getattr(owner, attr)
            if old.is_meta:
                setattr(owner, attr, nn.Parameter(tensor.to(old.dtype), requires_grad=old.requires_grad))
            else:
                old.copy_(tensor.to(old.dtype))


def shared_trainable_copies(model: nn.Module, names: list[str]) -> list[str]:
    """The modules_to_save modules that hold a copy for more than one of adapters ``names``."""
    return [key for key, layer in adapter_layers(model)
            if isinstance(layer, ModulesToSaveWrapper) and sum(n in layer.modules_to_save for n in names) > 1]


def merged_names(model: nn.Module) -> set[str]:
    """The adapters merged into some layer's weight."""
    return {n for _, layer in adapter_layers(model) if isinstance(layer, AdapterLayer) for n in layer.merged_adapters}


def unmerge(model: nn.Module) -> None:
    """Restore every base weight by subtracting what was merged."""
    for _, layer in adapter_layers(model):
        if isinstance(layer, AdapterLayer):
            layer.unmerge()


@torch.no_grad()
def unload(model: nn.Module, keep_merged: bool) -> nn.Module:
    """Replace every adapter layer by its base layer: with the adapters merged so far (``keep_merged``; merge
    the wanted ones first), or with the original weights.

    A trainable copy (``modules_to_save``) replaces its original when keeping merges, as in PEFT.
    """
    for key, layer in list(adapter_layers(model)):
        if isinstance(layer, AdapterLayer):
            if not keep_merged:
                layer.unmerge()
            _set_submodule(model, key, layer.base_layer)
        else:
            kept = layer._current() if keep_merged else layer.original_module
            _set_submodule(model, key, kept)
    return model


def held_layout(model: nn.Module, name: str) -> dict[str, tuple[float, ...]]:
    """Where adapter ``name`` sits in ``model``: layer name -> (rank, scaling) for LoRA, () otherwise."""
    layout: dict[str, tuple[float, ...]] = {}
    for key, layer in adapter_layers(model):
        if name in layer_adapter_names(layer) and not isinstance(layer, ModulesToSaveWrapper):
            layout[key] = (layer.r[name], layer.scaling[name]) if isinstance(layer, LoraLayer) else ()
    return layout


def planned_layout(model: nn.Module, config: PeftConfig) -> dict[str, tuple[float, ...]]:
    """What :func:`held_layout` would read after injecting ``config`` into ``model`` (nothing is changed)."""
    if not isinstance(config, (LoraConfig, IA3Config)):
        return {}
    if isinstance(config, LoraConfig):
        config, _ = resolve_target_modules(model, config)
    else:
        config = resolve_ia3_targets(model, config)
    keys = [k for k, _ in _candidate_modules(model) if is_target(config, k)]
    if not isinstance(config, LoraConfig):
        return dict.fromkeys(keys, ())
    layout: dict[str, tuple[float, ...]] = {}
    for key in keys:
        r = int(_pattern_value(config.rank_pattern, key, config.r))
        alpha = _pattern_value(config.alpha_pattern, key, config.lora_alpha)
        layout[key] = (r, alpha / math.sqrt(r) if config.use_rslora else alpha / r)
    return layout


def adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Copies of every tensor of adapter ``name`` in ``model`` (LoRA/IA3 weights and trainable copies)."""
    return {key: param.detach().clone() for key, _, param in adapter_parameters(model, name)}


def layer_adapter_parameters(layer: AdapterLayer | ModulesToSaveWrapper) -> Iterator[tuple[str, nn.Parameter]]:
    """(adapter name, parameter) for every tensor each adapter holds in ``layer``."""
    for name in layer_adapter_names(layer):
        yield from ((name, param) for _, _, param in layer.adapter_parameters(name))


def layer_adapter_names(layer: AdapterLayer | ModulesToSaveWrapper) -> list[str]:
    """The adapters a layer (or trainable copy) holds."""
    return list(layer.adapter_names) if isinstance(layer, AdapterLayer) else list(layer.modules_to_save)


COMBINATIONS = ("cat", *MIXES, *(f"{m}_svd" for m in MIXES if m != "linear"), "svd")


def _lora_pair(layer: LoraLayer, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Adapter ``name``'s (A, B) tensors in ``layer``: A is (r, in), B is (out, r)."""
    return layer.factors(name) if isinstance(layer, LoraLayer) else None


@torch.no_grad()
def combine_ia3(model: nn.Module, sources: list[str], weights: list[float], target: str) -> None:
    """Fill the (already created) IA3 adapter ``target`` with ``sum(w * l)`` over the sources each layer has."""
    for _, layer in adapter_layers(model):
        new = layer.vector(target) if isinstance(layer, IA3Layer) else None
        if new is None:
            continue
        new.zero_()
        for name, weight in zip(sources, weights, strict=True):
            source = cast(IA3Layer, layer).vector(name)
            if source is not None:
                new += source * weight


@torch.no_grad()
def combine_lora(model: nn.Module, sources: list[str], weights: list[float], target: str, combination: str,
                 rank: int, density: float = 1.0, sign_method: str = "total") -> None:
    """Fill the (already created, rank ``rank``, scaling 1) LoRA adapter ``target`` from ``sources``.

    PEFT's semantics: ``cat`` stacks the adapters, so the update is exactly ``sum(w * scaling * B @ A)``;
    ``linear``, ``ties``, ``dare_*`` and ``magnitude_prune`` mix the A and the B matrices separately with
    ``sqrt(|w * scaling|)`` each (the sign on A); the ``*_svd`` variants (and ``svd``) mix the dense updates
    and keep the top ``rank`` singular directions.
    """
    for _, layer in adapter_layers(model):
        if not isinstance(layer, LoraLayer) or _lora_pair(layer, target) is None:
            continue
        new_a, new_b = cast(tuple[torch.Tensor, torch.Tensor], _lora_pair(layer, target))
        present = [(n, w) for n, w in zip(sources, weights, strict=True) if _lora_pair(layer, n) is not None]
        pairs = [cast(tuple[torch.Tensor, torch.Tensor], _lora_pair(layer, n)) for n, _ in present]
        if combination == "cat":
            a = torch.cat([p[0] * w * layer.scaling[n] for p, (n, w) in zip(pairs, present, strict=True)], dim=0)
            b = torch.cat([p[1] for p in pairs], dim=1)
        elif combination in MIXES:
            factors = [w * layer.scaling[n] for n, w in present]
            weights_a = torch.tensor([math.copysign(math.sqrt(abs(f)), f) for f in factors])
            weights_b = torch.tensor([math.sqrt(abs(f)) for f in factors])
            a = mix([p[0] for p in pairs], weights_a, combination, density, sign_method)
            b = mix([p[1] for p in pairs], weights_b, combination, density, sign_method)
        else:
            how = "linear" if combination == "svd" else combination.removesuffix("_svd")
            deltas = [layer.delta_weight(n) for n, _ in present]  # base layout
            delta = mix(deltas, torch.tensor([w for _, w in present]), how, density, sign_method)
            if getattr(layer, "fan_in_fan_out", False) or isinstance(layer, LoraEmbedding):
                delta = delta.T  # (out, in) / (D, V), the layout B @ A has
            u, sigma, vh = torch.linalg.svd(delta.float(), full_matrices=True)
            b, a = u[:, :rank] @ torch.diag(sigma[:rank]), vh[:rank, :]
        new_a.zero_()
        new_b.zero_()
        new_a[: a.shape[0], :] = a.to(new_a.dtype)
        new_b[:, : b.shape[1]] = b.to(new_b.dtype)
