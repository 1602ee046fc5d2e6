"""QLoRA's other half: a 4-bit (NF4 or FP4) frozen base through ``bitsandbytes``, made ready for
training.

LoRA itself needs nothing special on a 4-bit base: :class:`~peftkit.tuners.lora.LoraLinear` wraps
``bitsandbytes.nn.Linear4bit`` like any ``nn.Linear`` (its features come from the layer, not from
the packed weight), keeps A and B in fp32, and refuses to merge into packed weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError

__all__ = [
    "QUANTIZATIONS",
    "is_quantized",
    "is_quantized_model",
    "prepare_model_for_kbit_training",
    "quantization_config",
]

QUANTIZATIONS = ("nf4", "fp4")


def quantization_config(kind: str, compute_dtype: torch.dtype = torch.float32) -> Any:
    """transformers' ``BitsAndBytesConfig`` for a 4-bit base (double quantization, as in the QLoRA
    paper).

    Raises:
        ModelLoadError: bitsandbytes is not installed.
    """
    if kind not in QUANTIZATIONS:
        raise ConfigError(
            f"quantization={kind!r} is not supported; expected one of {', '.join(QUANTIZATIONS)}"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ModelLoadError(
            f"quantization={kind!r} loads the base model in 4 bits with bitsandbytes, which is not installed. "
            f"Install it with: pip install bitsandbytes (it runs on NVIDIA GPUs, and on CPUs from version 0.48); "
            f"or leave quantization empty to load the model unquantized"
        ) from err
    import transformers

    return transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )


def is_quantized_model(model: nn.Module) -> bool:
    """A model loaded in 4 or 8 bits (transformers' flags, or any packed weight)."""
    flags = ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized")
    return any(getattr(model, f, False) for f in flags) or any(
        is_quantized(p) for p in model.parameters()
    )


def is_quantized(weight: torch.Tensor) -> bool:
    """True for a packed bitsandbytes weight (4-bit ``Params4bit`` or 8-bit ``Int8Params``)."""
    return type(weight).__name__ in ("Params4bit", "Int8Params")


def prepare_model_for_kbit_training(
    model: nn.Module,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: dict[str, Any] | None = None,
    auto_clear_cache: bool = True,
) -> nn.Module:
    """Ready a quantized base for adapter training, as PEFT's function of the same name does.

    Freezes every weight, keeps the unquantized half-precision ones (norms, embeddings, head) in
    fp32 for stable training, and, when the model is quantized, with ``use_gradient_checkpointing``
    turns checkpointing on with inputs that require grad (so gradients reach adapters behind frozen,
    checkpointed blocks). A model that is not quantized is only frozen and cast, as in PEFT.

    Args:
        auto_clear_cache: empty the accelerator's caching allocator after the fp32 casts, giving
            back the memory the half-precision copies held (it matters where host and accelerator
            share memory).

    Returns:
        ``model``, changed in place.
    """
    for param in model.parameters():
        param.requires_grad_(False)
        if param.dtype in (torch.float16, torch.bfloat16) and not is_quantized(param):
            param.data = param.data.float()
    if auto_clear_cache and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if auto_clear_cache and hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.empty_cache()
    # PEFT: a full-precision model is left as it is
    if use_gradient_checkpointing and is_quantized_model(model):
        enable = getattr(model, "enable_input_require_grads", None)
        if enable is not None:
            enable()
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        transformers_model: Any = model
        # transformers' newer name; the old one warns
        if hasattr(model, "activation_checkpointing_enable"):
            transformers_model.activation_checkpointing_enable(
                activation_checkpointing_kwargs=kwargs
            )
        elif hasattr(model, "gradient_checkpointing_enable"):
            transformers_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model
