"""Model surgery: the one place that walks and changes a model's module tree, as plain functions.

- :mod:`.targets`: which layers a config targets (PEFT's matching rules) and the errors when none
  match;
- :mod:`.inject`: each layer method's adapters put in place, whole-module copies, what trains;
- :mod:`.state`: active, disabled, merged, per-row adapters; delete, merge, unmerge, unload;
- :mod:`.keys`: an adapter's tensors by name, the base's own keys, loading in place, layouts;
- :mod:`.combine`: new adapters from weighted combinations, the arithmetic in :mod:`.merging`;
- :mod:`.tying`: tied embeddings and heads sharing one adapter; :mod:`.tables`: per-architecture
  defaults.
"""

from __future__ import annotations

from .combine import COMBINATIONS, combine_ia3, combine_lora
from .inject import (
    add_modules_to_save,
    held_layout,
    inject_adalora,
    inject_ia3,
    inject_loha,
    inject_lokr,
    inject_lora,
    inject_oft,
    inject_trainable_tokens,
    mark_trainable,
    planned_layout,
    record_untied_embeddings,
    untie_adapted_embeddings,
)
from .keys import (
    adapter_buffers,
    adapter_parameters,
    adapter_tensors,
    adapter_to_meta,
    base_state_dict,
    cast_adapter_to_layers,
    layer_adapter_names,
    layer_adapter_parameters,
    load_tensors,
    shared_trainable_copies,
    to_wrapped_keys,
)
from .state import (
    adapted_layer_names,
    adapter_layers,
    delete_adapter,
    disabled_states,
    merge,
    merged_names,
    rows_through_adapters,
    set_active,
    set_disabled,
    unload,
    unmerge,
)
from .targets import (
    DEFAULT_TARGET_MODULES,
    MIN_TARGET_MODULES_FOR_OPTIMIZATION,
    REGEX_SECONDS,
    SEQ_CLS_HEADS,
    get_submodules,
    is_feedforward,
    is_target,
    linear_types,
    matches_target,
    minimal_target_modules,
    no_target_error,
    resolve_ia3_targets,
    resolve_target_modules,
)

__all__ = [
    "COMBINATIONS",
    "DEFAULT_TARGET_MODULES",
    "MIN_TARGET_MODULES_FOR_OPTIMIZATION",
    "REGEX_SECONDS",
    "SEQ_CLS_HEADS",
    "adapted_layer_names",
    "adapter_buffers",
    "adapter_layers",
    "adapter_parameters",
    "adapter_tensors",
    "adapter_to_meta",
    "add_modules_to_save",
    "base_state_dict",
    "cast_adapter_to_layers",
    "combine_ia3",
    "combine_lora",
    "delete_adapter",
    "disabled_states",
    "get_submodules",
    "held_layout",
    "inject_adalora",
    "inject_ia3",
    "inject_loha",
    "inject_lokr",
    "inject_lora",
    "inject_oft",
    "inject_trainable_tokens",
    "is_feedforward",
    "is_target",
    "layer_adapter_names",
    "layer_adapter_parameters",
    "linear_types",
    "load_tensors",
    "mark_trainable",
    "matches_target",
    "merge",
    "merged_names",
    "minimal_target_modules",
    "no_target_error",
    "planned_layout",
    "record_untied_embeddings",
    "resolve_ia3_targets",
    "resolve_target_modules",
    "rows_through_adapters",
    "set_active",
    "set_disabled",
    "shared_trainable_copies",
    "to_wrapped_keys",
    "unload",
    "unmerge",
    "untie_adapted_embeddings",
]
