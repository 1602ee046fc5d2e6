"""Checks on adapters that the model facade runs before changing or writing anything."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..config import PeftConfig
from ..errors import (
    AdapterFormatError,
    AdapterNotFoundError,
    BrokenAdapterError,
    ConfigError,
    PeftWarning,
    short_repr,
)
from ..tuners.lora import rank_axis, unpaired_factors
from ..tuners.rows import BASE_ROW

__all__ = [
    "check_adapter_name",
    "check_finite_weights",
    "check_mixed_batch",
    "check_new_adapter",
    "check_saveable",
    "check_unsupported_load_options",
    "warn_base_rewriting_adapters",
]


def check_unsupported_load_options(
    ephemeral_gpu_offload: bool, key_mapping: dict[str, str] | None
) -> None:
    if ephemeral_gpu_offload:
        raise ConfigError(
            "ephemeral_gpu_offload=True (PEFT's DoRA-on-CPU offload) is not supported; leave it False"
        )
    if key_mapping:
        raise ConfigError(
            "key_mapping (PEFT's renaming of checkpoint keys) is not supported; rename the keys in the "
            "file, or load the base model under the names the adapter was trained on"
        )


def check_finite_weights(model: nn.Module) -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise BrokenAdapterError(
            f"NaNs detected in the merged weights. The adapter seems to be broken: merging "
            f"produced NaN or inf in {bad[:3]}"
        )


def check_adapter_name(name: object) -> None:
    """Adapter names become module keys and subfolder names: plain, non-empty text without dots or
    slashes.

    Raises:
        ConfigError: the name is empty, too long, has ``.``, ``/``, ``\\`` or control characters, or
            is a name a module already uses for itself.
    """
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "is empty" if isinstance(name, str) else f"is a {type(name).__name__}, not text"
    elif len(name) > 128:
        problem = f"is {len(name)} characters long (at most 128)"
    elif any(c in name for c in "./\\") or not name.isprintable():
        problem = "contains '.', '/', '\\' or a control character"
    elif hasattr(nn.ModuleDict(), name):
        problem = "is the name of a module attribute"
    if problem:
        raise ConfigError(
            f"adapter name {short_repr(name)} {problem}; adapter names become layer keys and folder "
            "names, so use letters, digits, '-' and '_' (e.g. 'default', 'sentiment-v2')"
        )


def check_saveable(name: str, config: PeftConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse to write an adapter file that could not be loaded back as the adapter its config
    describes."""
    if config.is_prompt_learning:
        return
    if not tensors:
        raise AdapterFormatError(
            f"adapter {name!r} has no weights left in the model (merge_and_unload() or unload() removed its "
            "layers), so saving it would write an empty adapter over any good one in that folder. Save the "
            "adapter before unloading it, or save the merged model returned by merge_and_unload()."
        )
    unpaired = unpaired_factors(tensors)
    if unpaired:
        raise AdapterFormatError(
            f"adapter {name!r} is inconsistent: {len(unpaired)} layer(s) hold "
            "only one of lora_A and lora_B; it would not load again"
        )
    _warn_ungathered(name, tensors)


def _warn_ungathered(name: str, tensors: dict[str, torch.Tensor]) -> None:
    """PEFT's warning for LoRA factors that are 1-D or empty: DeepSpeed ZeRO-3 or FSDP shards saved
    without gathering them first (the file is written, as PEFT writes it; it holds an incomplete
    adapter)."""
    bad = [
        (k, tuple(t.shape))
        for k, t in tensors.items()
        if rank_axis(k) is not None and (t.dim() < 2 or 0 in t.shape)
    ]
    if bad:
        preview = ", ".join(f"{k}:{shape}" for k, shape in bad[:3]) + (
            f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        )
        warnings.warn(
            f"Adapter {name!r}: {len(bad)} LoRA tensor(s) have invalid shape: {preview}. A 1-D or "
            "zero-sized lora_A / lora_B tensor indicates that DeepSpeed ZeRO-3 / FSDP shards were not "
            "gathered before save_pretrained() and are therefore incomplete. Wrap the save in "
            "deepspeed.zero.GatheredParameters([...], modifier_rank=None) for ZeRO-3, or "
            "torch.distributed.fsdp.FullyShardedDataParallel.summon_full_params(model) for FSDP.",
            PeftWarning,
            stacklevel=4,
        )


def check_new_adapter(name: str, config: object, held: dict[str, PeftConfig]) -> None:
    """Refuse a second adapter of the same name, a config that is not peftkit's, or a second adapter
    that trains biases (PEFT's rule: the model's biases cannot belong to two adapters)."""
    if name in held:
        raise ConfigError(
            f"Adapter with name {name!r} already exists; pick another name or delete it first"
        )
    if not isinstance(config, PeftConfig):
        raise ConfigError(
            f"expected a peftkit config (e.g. LoraConfig), got {type(config).__name__}"
        )
    trainable_ada = [
        n for n, c in held.items() if c.peft_type == "ADALORA" and not c.inference_mode
    ]
    if (
        getattr(config, "peft_type", None) == "ADALORA"
        and not config.inference_mode
        and trainable_ada
    ):
        raise ConfigError(
            "AdaLoraModel supports only 1 trainable adapter. When using multiple adapters, set "
            "inference_mode to True for all adapters except the one you want to train."
        )
    params = getattr(config, "target_parameters", None)
    for other, held_config in held.items():
        theirs = getattr(held_config, "target_parameters", None)
        if params and theirs and set(params) != set(theirs):
            # the nesting of the parameter wrappers, hence the keys, follows the targeted set
            raise ConfigError(
                "When using multiple adapters with `target_parameters`, all adapters must target the same "
                f"set of parameters, but got {sorted(params)} for the new adapter and {sorted(theirs)} for "
                f"adapter {other!r}."
            )
    with_bias = [n for n, c in held.items() if getattr(c, "bias", "none") != "none"]
    if with_bias and getattr(config, "bias", "none") != "none":
        raise ConfigError(
            f"peftkit supports only 1 adapter with bias. When using multiple adapters, set bias to "
            f"'none' for all adapters but one: only one adapter may train biases (bias='all' or "
            f"'lora_only'), and {with_bias[0]!r} "
            "already does: the model's biases cannot belong to two adapters. Set bias='none' for "
            f"{name!r}"
        )


_REWRITES_BASE = {
    "pissa": ("PiSSA", "pissa_finetuning#convert-pissa-to-lora"),
    "olora": ("OLoRA", "olora_finetuning#olora-and-lora"),
}


def warn_base_rewriting_adapters(config: PeftConfig, held: dict[str, PeftConfig]) -> None:
    """PEFT's warning when an adapter is loaded beside others and one of them started from the base
    weights (PiSSA, OLoRA): it changed those weights, so the other adapters no longer see the base
    they were trained on."""
    configs = [config, *held.values()]
    if len(configs) < 2:
        return
    inits = {str(getattr(c, "init_lora_weights", "")).split("_niter")[0] for c in configs}
    for init, (name, anchor) in _REWRITES_BASE.items():
        if init in inits:
            warnings.warn(
                f"{name} changes the base weights of the model and should thus not be used with other "
                f"adapters. Consider converting the {name} adapter into a normal LoRA adapter: "
                f"https://github.com/huggingface/peft/tree/main/examples/{anchor}",
                UserWarning,
                stacklevel=3,
            )
            return


def check_mixed_batch(
    training: bool,
    adapter_names: list[str],
    held: list[str],
    prompt_adapters: list[str],
    prompt_active: bool,
) -> None:
    """Refuse a mixed batch (``adapter_names``, one per row) in training, with unknown names, or
    with prompt adapters (they change the input length)."""
    if training:
        raise ConfigError(
            "Cannot pass `adapter_names` when the model is in training mode: it is for inference; "
            "call model.eval() first (a training batch mixing adapters would need each adapter's "
            "own optimizer step)"
        )
    unknown = list(dict.fromkeys(n for n in adapter_names if n != BASE_ROW and n not in held))
    if unknown:
        raise AdapterNotFoundError(
            f"Trying to infer with non-existing adapter(s): {', '.join(unknown)}. This "
            f"model holds {', '.join(held)} (and {BASE_ROW!r} means none)"
        )
    if prompt_active or any(n in prompt_adapters for n in adapter_names):
        raise ConfigError(
            "adapter_names mixes LoRA adapters; prompt-learning adapters change the input length "
            "and cannot share a batch this way. Generate their rows separately"
        )
