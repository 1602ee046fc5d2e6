"""Which layers a config targets: PEFT's matching rules (names, suffixes, regex with a time limit,
layer indices, exclusions), the defaults per architecture, and the errors that name what the model
has.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any, cast

from torch import nn

from ..config import IA3Config, LoraConfig, PeftConfig, TaskType
from ..errors import ConfigError, TargetNotFoundError, short_repr
from ..tuners.base import AdapterLayer
from ..tuners.lora.conv import CONV_TYPES
from ..tuners.modules_to_save import ModulesToSaveWrapper
from .tables import IA3_FEEDFORWARD_MODULES, IA3_TARGET_MODULES, LORA_TARGET_MODULES

# Layers adapted when a LoraConfig names none, by ``config.model_type`` (the same choices as PEFT).
DEFAULT_TARGET_MODULES = LORA_TARGET_MODULES

# Heads that a sequence-classification adapter trains in full (PEFT adds these to modules_to_save).
SEQ_CLS_HEADS = ("classifier", "score")


def conv1d_type() -> type[nn.Module] | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain PyTorch models
        return None
    return Conv1D


def linear_types() -> tuple[type[nn.Module], ...]:
    conv1d = conv1d_type()
    return (nn.Linear, conv1d) if conv1d is not None else (nn.Linear,)


REGEX_SECONDS = 0.25
"""The most time one name may take to match a pattern from a config. Patterns come from files that
may be untrusted (an ``adapter_config.json``), and a pattern such as ``(a|a?)+$`` can backtrack for
hours with ``re``; the ``regex`` engine takes a timeout, and a pattern that hits it is refused."""


def _regex(kind: str, pattern: str, key: str) -> Any:
    """``regex.fullmatch`` (``kind="full"``) or ``regex.match`` of a config pattern, with
    :data:`REGEX_SECONDS`."""
    import regex

    try:
        compiled = regex.compile(pattern, flags=regex.VERSION0)
        return (compiled.fullmatch if kind == "full" else compiled.match)(
            key, timeout=REGEX_SECONDS
        )
    except TimeoutError as err:
        raise ConfigError(
            f"the pattern {short_repr(pattern)} took over {REGEX_SECONDS}s to match the layer name "
            f"{key!r} (catastrophic backtracking); simplify it, or list the layer names"
        ) from err
    except regex.error as err:
        raise ConfigError(
            f"the pattern {short_repr(pattern)} is not a valid regular expression: {err}"
        ) from err


def _shown(spec: Any) -> str:
    """A names field for a message: a set as a sorted list, so the message reads the same on every
    run."""
    return repr(sorted(spec) if isinstance(spec, set) else spec)


def matches_target(spec: list[str] | set[str] | str, key: str) -> bool:
    """PEFT's rule: a string is a regex that must match the whole name; a list matches a name or a
    suffix."""
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
    """Whether ``key`` is (inside) one of the config's modules_to_save, which adapters never target
    (PEFT's rule)."""
    return bool(config.modules_to_save) and any(
        _regex("match", rf"(^|.*\.){m}($|\..*)", key)
        for m in cast(list[str], config.modules_to_save)
    )


def is_target(config: LoraConfig | IA3Config, key: str) -> bool:
    """Whether the module named ``key`` is adapted under ``config`` (PEFT's
    ``check_target_module_exists``)."""
    excluded = getattr(config, "exclude_modules", None)  # not every method has the field
    if excluded and matches_target(excluded, key):
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


def no_target_error(
    model: nn.Module, config: LoraConfig | IA3Config, candidates: list[str]
) -> TargetNotFoundError:
    """Why no layer is adapted, in PEFT's words first (its three cases), then which field to change."""
    named = [
        n
        for n in candidates
        if config.target_modules is not None and matches_target(config.target_modules, n)
    ]
    excluded = getattr(config, "exclude_modules", None)
    kept = [n for n in named if not (excluded and matches_target(excluded, n))]
    saved = [n for n in kept if _saved(config, n)]
    layers, pattern = (
        getattr(config, "layers_to_transform", None),
        getattr(config, "layers_pattern", None),
    )
    names = f"Layer names this model has: {', '.join(_suggest_targets(model))}."
    if named and not kept:
        return TargetNotFoundError(
            "All modules were excluded. This is likely unintended. Check your "
            f"`target_modules`, `exclude_modules` and `modules_to_save` configuration: "
            f"exclude_modules={_shown(getattr(config, 'exclude_modules', None))} removes every match."
        )
    if kept and len(saved) == len(kept):
        return TargetNotFoundError(
            "No modules were targeted for adaptation. This might be caused by a combination of mismatched target "
            "modules and excluded modules. You may also have only targeted modules that are marked to be saved "
            f"(`modules_to_save`): {', '.join(saved[:3])} are in modules_to_save={_shown(config.modules_to_save)}."
        )
    message = (
        f"Target modules {_shown(config.target_modules)} not found in the base model. Please check the "
        "target modules and try again."
    )
    if kept and layers is not None:  # the names match; the layer indices do not
        indices = [
            i for i in (_layer_index(cast(LoraConfig, config), n) for n in kept) if i is not None
        ]
        count = (
            f"the model has {max(indices) + 1} layers (0 to {max(indices)})"
            if indices
            else "no layer index could be read from the matching names"
        )
        return TargetNotFoundError(
            f"{message} Note: You specified 'layers_to_transform': {layers}"
            + (f" and 'layers_pattern': {pattern}" if pattern else "")
            + f"; {_shown(config.target_modules)} matches {len(kept)} layers, but {count}. "
            "Fix layers_to_transform (or layers_pattern)."
        )
    return TargetNotFoundError(f"{message} {names}")


def _output_layer_names(model: nn.Module, config: PeftConfig) -> set[str]:
    """Names of heads that ``all-linear`` must leave alone (the LM head, or a classifier)."""
    heads: list[nn.Module] = []
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is not None:
        heads.append(output)
    elif config.task_type == TaskType.SEQ_CLS:
        heads += [
            getattr(model, n)
            for n in SEQ_CLS_HEADS
            if isinstance(getattr(model, n, None), nn.Module)
        ]
    return {name for name, module in model.named_modules() if any(module is h for h in heads)}


def resolve_target_modules(model: nn.Module, config: LoraConfig) -> tuple[LoraConfig, bool]:
    """``config`` with ``target_modules`` resolved: the architecture default when empty, and the
    explicit list of layer names for ``"all-linear"`` (as PEFT records them). ``config`` itself is
    not changed.

    Returns:
        The resolved config, and True when the list came from the user (so each entry must match a
        layer).
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
        linear = linear_types()
        # not the linear layers inside an adapter layer (its A and B): an adapter goes on the
        # adapted layer
        found = {
            n
            for n, m in candidate_modules(model)
            if n not in skip
            and (
                isinstance(m, linear)
                or (isinstance(m, AdapterLayer) and isinstance(m.base_layer, linear))
            )
        }
        return cast(LoraConfig, config.replace(target_modules=found)), False
    return config, True


def _suggest_targets(model: nn.Module) -> list[str]:
    """Distinct leaf names of the model's linear-like layers: what a user can put in target_modules."""
    supported = (*linear_types(), nn.Embedding, *CONV_TYPES, AdapterLayer)
    names = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, supported)
    }
    return sorted(names)


def pattern_value(pattern: dict[str, float] | dict[str, int], key: str, default: float) -> float:
    for pat, value in pattern.items():
        if _regex("match", rf"(.*\.)?({pat})$", key):
            return value
    return default


def warn_unmatched_patterns(config: LoraConfig, keys: list[str]) -> None:
    """PEFT's warning for rank_pattern / alpha_pattern keys that match no adapted layer (a typo is
    ignored)."""
    for name in ("rank_pattern", "alpha_pattern"):
        pattern = getattr(config, name)
        unmatched = sorted(
            p for p in pattern if not any(_regex("match", rf"(.*\.)?({p})$", k) for k in keys)
        )
        if unmatched:
            shown = f"{keys[:5]}{' ...' if len(keys) > 5 else ''}"
            warnings.warn(
                f"The following {name} keys did not match any targeted module (the targets: {shown}; a "
                f"key is a name suffix or a regex) and were ignored: {unmatched}.",
                RuntimeWarning,
                stacklevel=4,
            )


def get_submodules(model: nn.Module, key: str) -> tuple[nn.Module, nn.Module, str]:
    """The module named ``key``, its parent, and its name in the parent (PEFT's ``_get_submodules``
    order: parent, target, name)."""
    parent_name, _, child = key.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, model.get_submodule(key), child


def set_submodule(model: nn.Module, key: str, new: nn.Module) -> None:
    parent, _, child = get_submodules(model, key)
    setattr(parent, child, new)


def candidate_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules that could be targets: not the inside of an existing adapter layer or trainable copy."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, (AdapterLayer, ModulesToSaveWrapper)):
            inside.append(name)
        yield name, module


MIN_TARGET_MODULES_FOR_OPTIMIZATION = 20
"""PEFT's threshold: a target list at least this long is recorded as the fewest name suffixes that
pick the same layers (a list of hundreds of full names, as tools that infer targets from a state
dict write, slows every later match and bloats ``adapter_config.json``)."""


def minimal_target_modules(targets: Iterable[str], others: Iterable[str]) -> set[str]:
    """The fewest name suffixes (``a.b.c``: ``c``, ``b.c``, ``a.b.c``) that match every name in
    ``targets`` and no name in ``others``; each target contributes its shortest suffix that no other
    name ends with, unless a suffix chosen before already matches it.

    Raises:
        ValueError: ``targets`` is a string, empty or holds an empty name, or shares a name with
            ``others``.
    """
    if isinstance(targets, str) or not targets:
        raise ValueError("target_modules should be a list or set of strings.")
    wanted, rest = sorted(set(targets)), set(others)
    if "" in wanted:
        raise ValueError("target_modules should not contain an empty string.")
    if rest.intersection(wanted):
        raise ValueError(
            f"target_modules and other_module_names contain common elements: "
            f"{sorted(rest.intersection(wanted))[:3]}; a name cannot be both targeted and not"
        )

    def suffixes(name: str) -> list[str]:  # shortest first
        parts = name.split(".")
        return [".".join(parts[i:]) for i in range(len(parts) - 1, -1, -1)]

    taken = {suffix for name in rest for suffix in suffixes(name)}
    chosen: set[str] = set()
    for name in wanted:
        if not any(name == c or name.endswith(f".{c}") for c in chosen):
            # the full name is never taken
            chosen.add(next(s for s in suffixes(name) if s not in taken))
    return chosen


def shorten_targets(model: nn.Module, config: LoraConfig, keys: list[str]) -> LoraConfig:
    """A long target list recorded as its minimal suffixes, as PEFT does (same layers, a shorter
    config)."""
    targets = config.target_modules
    if not isinstance(targets, (list, set)) or len(targets) < MIN_TARGET_MODULES_FOR_OPTIMIZATION:
        return config
    # the layer filter applies on top of the names: keep them
    if getattr(config, "layers_to_transform", None) is not None:
        return config
    adapted = set(keys)
    shorter = minimal_target_modules(
        keys, [name for name, _ in model.named_modules() if name not in adapted]
    )
    return (
        cast(LoraConfig, config.replace(target_modules=shorter))
        if len(shorter) < len(targets)
        else config
    )


def is_feedforward(config: IA3Config, key: str) -> bool:
    """PEFT's rule: a regex must match the whole name; list entries match as plain suffixes."""
    spec = config.feedforward_modules or []
    if isinstance(spec, str):
        return _regex("full", spec, key) is not None
    return any(key.endswith(f) for f in spec)


def resolve_ia3_targets(model: nn.Module, config: IA3Config) -> IA3Config:
    """``config`` with the architecture's default targets when it names none, the linear layers
    listed for ``"all-linear"``, and the architecture's feed-forward layers when it names none
    (PEFT's order and rule; a model without a table then has no feed-forward layer, where PEFT
    refuses)."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", None))
    if config.target_modules is None:
        if model_type not in IA3_TARGET_MODULES:
            raise ConfigError(
                f"target_modules is empty and there is no IA3 default for model type {model_type!r}; "
                f"set target_modules and feedforward_modules, e.g. {_suggest_targets(model)}"
            )
        config = cast(IA3Config, config.replace(target_modules=set(IA3_TARGET_MODULES[model_type])))
    if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
        config = cast(IA3Config, resolve_target_modules(model, config)[0])  # type: ignore[arg-type]
    if config.feedforward_modules is None and model_type in IA3_FEEDFORWARD_MODULES:
        feedforward: Any = set(IA3_FEEDFORWARD_MODULES[model_type])
        # the targets the table names (the rule applies to targets)
        if not isinstance(config.target_modules, str):
            feedforward = {
                t for t in config.target_modules or () if matches_target(list(feedforward), t)
            }
        config = cast(IA3Config, config.replace(feedforward_modules=feedforward))
    return config


def warn_unused_exclusions(config: LoraConfig | IA3Config, candidates: list[str]) -> None:
    """PEFT's warning when ``exclude_modules`` excludes nothing (a typo there would otherwise pass
    silently)."""
    excluded = getattr(config, "exclude_modules", None)
    if excluded and not any(matches_target(excluded, k) for k in candidates):
        warnings.warn(
            f"You have passed exclude_modules={_shown(excluded)} "
            "but no modules were excluded. "
            "Please check that exclude_modules was set correctly.",
            stacklevel=4,
        )


def check_target_list(model: nn.Module, config: LoraConfig, candidates: list[str]) -> None:
    """Every entry of a target list must match some layer (before exclusions): a typo should not
    pass silently."""
    if (
        not isinstance(config.target_modules, (list, set))
        or getattr(config, "layers_to_transform", None) is not None
    ):
        return
    missing = [
        t
        for t in sorted(config.target_modules)
        if not any(k == t or k.endswith(f".{t}") for k in candidates)
    ]
    if missing:
        raise TargetNotFoundError(
            f"target_modules entries {missing} match no layer of {type(model).__name__}. "
            f"Layer names this model has: {', '.join(_suggest_targets(model))}."
        )
