"""Tied embeddings and adapters: which modules share the input embedding's weight, PEFT's warnings
when an adapter touches one, and ``ensure_weight_tying`` (the tied modules share the embedding's
adapter too).

A language model often ties its output head to its input embedding (``lm_head.weight is
embed_tokens.weight``). An adapter on one of the two then changes one side only, which a merge or an
export cannot express; PEFT warns, and with ``ensure_weight_tying=True`` ties the adapters as well:

- ``modules_to_save``: the embedding gets its trainable copy, and each tied module's copy is a
  linear layer whose weight *is* that copy's weight (one parameter, two uses);
- ``target_modules``: the embedding gets LoRA, and each tied linear layer's factors are views of the
  embedding's (``lm_head.lora_A == embed_tokens.lora_embedding_B.T``, the same storage), as in PEFT.

Plain functions; :mod:`peftkit.surgery` calls them while it places adapters.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any, cast

from torch import nn

from ..errors import warn_caller
from ..tuners.base import AdapterLayer

__all__ = [
    "EMBEDDING_LAYER_NAMES",
    "embedding_name",
    "module_names_tied_with_embedding",
    "saved_names",
    "saved_ties",
    "tie_lora",
    "tie_saved_copies",
    "tied_targets",
    "warn_or_plan",
]

EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")
"""The layer names PEFT reads as "an embedding or its tied head" when it checks for tying (its
constant)."""

_ISSUE = "Check the discussion here: https://github.com/huggingface/peft/issues/2777"
_NO_IMPLEMENTATION = (
    "Model has `tie_word_embeddings=True` and a tied layer is part of the adapter, but no "
    "implementation exists to tie the adapters. This can lead to complications, for example when "
    f"merging the adapter or converting your model to formats other than safetensors. {_ISSUE}"
)
_NOT_ENSURED = (
    "Model has `tie_word_embeddings=True` and a tied layer is part of the adapter, but "
    "`ensure_weight_tying` is not set to True. This can lead to complications, for example when merging "
    f"the adapter or converting your model to formats other than safetensors. {_ISSUE}"
)
_BASE_LAYER = re.compile(r"[^.]+\.base_layer\.")


def module_names_tied_with_embedding(model: nn.Module) -> list[str]:
    """The modules whose weight is tied to the input embeddings (``["lm_head"]``), relative to the
    base model.

    Read from ``_tied_weights_keys`` (a list in transformers 4, a target -> source mapping in
    transformers 5); empty when the model's config says ``tie_word_embeddings=False`` or the model
    declares no tying (PEFT's ``_get_module_names_tied_with_embedding``).
    """
    model = _unwrapped(model)
    if getattr(getattr(model, "config", None), "tie_word_embeddings", None) is False:
        return []
    declared = getattr(model, "_tied_weights_keys", None)
    if isinstance(declared, dict):
        keys = _mapped_to_embedding(model)
    elif declared is not None:
        keys = list(declared)
    else:
        return []
    return sorted({k.rpartition(".")[0] for k in keys})


def _unwrapped(model: nn.Module) -> nn.Module:
    """The base model under a PeftModel or its ``base_model`` holder."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        model = cast(nn.Module, get_base())
    inner = model.__dict__.get("_modules", {}).get("model")
    return inner if type(model).__name__ == "BaseModelHolder" and inner is not None else model


def _mapped_to_embedding(model: nn.Module) -> list[str]:
    """Targets of the (transformers 5) tying mappings, this model's and its submodules', whose
    source is a parameter of the input embeddings, named as before any adapter wrapped them."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if not callable(get_embeddings):
        raise ValueError(
            "The supplied model implements `_tied_weights_keys` as a dict but doesn't implement "
            "'get_input_embeddings' so we can't determine which weights are tied to embeddings."
        )
    mapping: dict[str, str] = {}
    for name, module in model.named_modules():
        keys = getattr(module, "_tied_weights_keys", None)
        if isinstance(keys, dict):
            prefix = f"{name}." if name else ""
            mapping.update({prefix + k: prefix + v for k, v in keys.items()})
    embedding_params = set(cast(nn.Module, get_embeddings()).parameters())
    sharing = [
        n for n, p in model.named_parameters(remove_duplicate=False) if p in embedding_params
    ]
    plain = {_BASE_LAYER.sub("", n): n for n in sharing} | {
        n.replace("base_layer.", ""): n for n in sharing
    }
    return [plain.get(k, k) for k, v in mapping.items() if plain.get(v, v) in sharing]


def embedding_name(model: nn.Module) -> str:
    """The input embeddings' module name in ``model`` (``model.embed_tokens``); empty when there is
    none."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    return (
        next((n for n, m in model.named_modules() if m is embeddings), "")
        if embeddings is not None
        else ""
    )


def _names_embedding(names: Iterable[str] | str | None) -> bool:
    """Whether a target list (or pattern) names an embedding layer or a tied head, as PEFT reads it."""
    if isinstance(names, str):
        return any(re.fullmatch(names, n) for n in EMBEDDING_LAYER_NAMES)
    return any(str(n).split(".")[-1] in EMBEDDING_LAYER_NAMES for n in names or ())


def warn_or_plan(model: nn.Module, config: Any) -> tuple[list[str], str | None]:
    """PEFT's checks when an adapter is placed: the modules tied to the embedding, and how
    ``ensure_weight_tying`` ties them (``"modules_to_save"``, ``"target_modules"`` or None), with
    PEFT's warnings when an adapter touches a tied module without it, or asks for it where nothing
    can be tied."""
    in_saved = _names_embedding(getattr(config, "modules_to_save", None))
    in_targets = _names_embedding(getattr(config, "target_modules", None))
    tied = module_names_tied_with_embedding(model)
    if not getattr(config, "ensure_weight_tying", False):
        if (in_saved or in_targets) and tied:
            warn_caller(
                _NOT_ENSURED if hasattr(config, "ensure_weight_tying") else _NO_IMPLEMENTATION
            )
        return tied, None
    if not tied:
        warn_caller(
            "You have requested `ensure_weight_tying`, but no tied modules were found in the model"
        )
        return tied, None
    if in_saved:
        return tied, "modules_to_save"
    if in_targets:
        return tied, "target_modules"
    warn_caller(
        "You have requested `ensure_weight_tying`, but no tied modules are added in either "
        "`modules_to_save` or `target_modules`"
    )
    return tied, None


def _without_tied(names: Iterable[str], tied: Collection[str], embedding: str) -> list[str]:
    """``names`` plus the embedding, less the first entry naming each tied module: the tied modules
    are tied to the embedding's adapter instead of getting their own (PEFT's rewrite of the
    config)."""
    kept = list(dict.fromkeys([*names, embedding]))
    for key in tied:
        hit = next((m for m in kept if re.match(rf"(^|.*\.){m}($|\..*)", key)), None)
        if hit is not None:
            kept.remove(hit)
    return kept


def tied_targets(model: nn.Module, target_modules: Any, tied: Collection[str]) -> Any:
    """``target_modules`` with the embedding added and the tied modules left out (they are tied
    afterwards)."""
    embedding = embedding_name(model)
    if isinstance(target_modules, str):
        return rf"(?:{target_modules}|^{re.escape(embedding)}$)"
    return set(_without_tied(target_modules or [], tied, embedding))


def saved_names(model: nn.Module, names: Iterable[str], tied: Collection[str]) -> list[str]:
    """``modules_to_save`` with the embedding added and the tied modules left out (tied afterwards)."""
    return _without_tied(names, tied, embedding_name(model))


def tie_lora(model: nn.Module, tied: Iterable[str], adapter_name: str, wrap: Any) -> None:
    """Give each tied layer LoRA adapter ``adapter_name`` over the embedding's factors: a linear
    head's are views ``A = B_emb^T`` (r, in) and ``B = A_emb^T`` (out, r), so its update is the
    embedding's, transposed; another embedding tied to it (an encoder's and a decoder's) holds the
    very same parameters. ``wrap(module, key)`` turns a plain layer into a LoRA layer (the
    surgery's)."""
    embeddings: Any = model.get_input_embeddings()  # type: ignore[operator]
    a, b = embeddings.transposed_factors(adapter_name)  # (r, in), (out, r)
    r, alpha = a.shape[0], embeddings.scaling[adapter_name] * a.shape[0]
    for key in tied:
        module = model.get_submodule(key)
        layer: Any = module if isinstance(module, AdapterLayer) else wrap(module, key)
        layer.add_adapter(adapter_name, r, alpha, init_lora_weights=False)
        # another embedding (T5's encoder and decoder ones)
        if isinstance(layer.get_base_layer(), nn.Embedding):
            layer.share_factors(adapter_name, *embeddings.own_factors(adapter_name))
        else:
            layer.share_factors(adapter_name, a, b)
        if layer is not module:
            _replace(model, key, layer)


def tie_saved_copies(
    model: nn.Module, tied: Iterable[str], adapter_name: str, wrapper: type[Any]
) -> None:
    """Give each tied module a trainable copy that is a linear layer over the embedding copy's own
    weight parameter: one parameter, trained once, read by both (PEFT's tied
    ``modules_to_save``)."""
    embeddings: Any = model.get_input_embeddings()  # type: ignore[operator]
    source = embeddings.modules_to_save[adapter_name].weight
    for key in tied:
        module = model.get_submodule(key)
        holder = module if isinstance(module, wrapper) else wrapper(module)
        out_features, in_features = source.shape
        head = nn.Linear(
            in_features, out_features, bias=False, device=source.device, dtype=source.dtype
        )
        head.weight = source
        holder.add_copy(adapter_name, head)
        if holder is not module:
            _replace(model, key, holder)


def _replace(model: nn.Module, key: str, new: nn.Module) -> None:
    """Put ``new`` where module ``key`` is (surgery's own helper imports this module, so it is not
    reused)."""
    parent, _, child = key.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def saved_ties(model: nn.Module, config: Any) -> list[str]:
    """The modules to tie to the embedding's trainable copy: those tied to the embedding when
    ``ensure_weight_tying`` is set and the embedding is among ``modules_to_save``; else none."""
    if not getattr(config, "ensure_weight_tying", False) or embedding_name(model) not in (
        config.modules_to_save or []
    ):
        return []
    return module_names_tied_with_embedding(model)
