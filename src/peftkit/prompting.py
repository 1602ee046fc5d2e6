"""Prompt methods' one small interface: build the module, prepare the inputs, generate, save and load.

Virtual-token methods (prompt tuning, p-tuning) prepend embeddings: the attention mask gets ones, labels
get -100, token types get zeros. Prefix tuning hands the model a key/value cache holding the prefix and
extends the attention mask. ``PeftModel.forward`` and ``generate`` call :func:`prepare_inputs` and
:func:`generate`; the per-method difference lives in the two strategy classes below.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from .config import (
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptLearningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
)
from .errors import AdapterFormatError, ConfigError, short_repr
from .memory import check_allocation
from .tuners.prompt import PrefixEncoder, PromptEmbedding, PromptEncoder

__all__ = ["build_prompt_module", "embeddings_to_save", "generate", "load_embeddings", "prepare_inputs"]


def _model_config(base: nn.Module) -> dict[str, Any]:
    config = getattr(base, "config", None)
    return config.to_dict() if config is not None and hasattr(config, "to_dict") else {}


def _first(config: dict[str, Any], *keys: str) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


def fill_shape_fields(base: nn.Module, config: PromptLearningConfig) -> None:
    """Fill the model-shape fields left empty, as PEFT does (GQA models: key/value heads for prefixes)."""
    mc = _model_config(base)
    if config.num_transformer_submodules is None:
        config.num_transformer_submodules = 2 if config.task_type == TaskType.SEQ_2_SEQ_LM else 1
    if config.num_layers is None:
        config.num_layers = _first(mc, "num_hidden_layers", "num_layers", "n_layer")
    if config.token_dim is None:
        config.token_dim = _first(mc, "hidden_size", "n_embd", "d_model")
    if config.num_attention_heads is None:
        config.num_attention_heads = _first(mc, "num_attention_heads", "n_head", "num_heads")
    missing = [f for f in ("num_layers", "token_dim", "num_attention_heads") if getattr(config, f) is None]
    if missing:
        raise ConfigError(f"cannot read {', '.join(missing)} from the model's config; set them in the adapter config")
    if isinstance(config, PrefixTuningConfig) and mc.get("num_key_value_heads") is not None:
        head_dim = mc.get("head_dim") or cast(int, config.token_dim) // cast(int, config.num_attention_heads)
        config.token_dim = head_dim * mc["num_key_value_heads"]
        config.num_attention_heads = mc["num_key_value_heads"]
    if isinstance(config, (PromptEncoderConfig, PrefixTuningConfig)) and config.encoder_hidden_size is None:
        config.encoder_hidden_size = config.token_dim


def build_prompt_module(base: nn.Module, config: PromptLearningConfig) -> nn.Module:
    """Create the prompt module for ``config`` on ``base``'s device (fills the config's shape fields)."""
    classifies = config.task_type in (TaskType.SEQ_CLS, TaskType.TOKEN_CLS, TaskType.QUESTION_ANS)
    if isinstance(config, PrefixTuningConfig) and classifies and not _takes_past_key_values(base):
        raise ConfigError(f"Model does not support past key values which are required for prefix tuning "
                          f"({type(base).__name__}'s forward takes no past_key_values, so PEFT could not load this "
                          "adapter either). Use prompt tuning or p-tuning, or LoRA, on this model")
    if config.num_virtual_tokens is None:
        raise ConfigError(f"{type(config).__name__}.num_virtual_tokens is empty; set how many virtual tokens to "
                          "learn (8 to 20 is usual)")
    fill_shape_fields(base, config)
    n, dim = cast(int, config.num_virtual_tokens), cast(int, config.token_dim)
    total = n * cast(int, config.num_transformer_submodules)
    layers = 2 * cast(int, config.num_layers) if isinstance(config, PrefixTuningConfig) else 1  # keys and values
    check_allocation(16 * total * dim * layers, f"{short_repr(n)} virtual tokens",  # fp32 + grad + 2 moments
                     "choose fewer num_virtual_tokens (8 to 32 is usual)")
    module: nn.Module
    if isinstance(config, PromptTuningConfig):
        module = PromptEmbedding(total, dim)
        _init_prompt_embedding(module, base, config)
    elif isinstance(config, PromptEncoderConfig):
        module = PromptEncoder(config)
    elif isinstance(config, PrefixTuningConfig):
        module = PrefixEncoder(n, dim, cast(int, config.num_layers), config.encoder_hidden_size,
                               projection=config.prefix_projection and not config.inference_mode)
        _init_prefix(module, base, config)
    else:
        raise ConfigError(f"{type(config).__name__} is not a supported prompt method")
    device = next(base.parameters()).device
    return module.to(device)


def _takes_past_key_values(base: nn.Module) -> bool:
    """PEFT's test for the classification tasks: the model's forward, or its backbone's (``bert`` in
    BertForSequenceClassification), names ``past_key_values``; encoder-only models in transformers 5 do not,
    and PEFT refuses prefix tuning there (generative models take the cache through ``generate``'s path)."""
    backbone = getattr(base, getattr(base, "base_model_prefix", "") or "", None)
    return any("past_key_values" in inspect.signature(m.forward).parameters
               for m in (base, backbone) if isinstance(m, nn.Module))


def _init_prompt_embedding(module: PromptEmbedding, base: nn.Module, config: PromptTuningConfig) -> None:
    if config.inference_mode or config.prompt_tuning_init == PromptTuningInit.RANDOM:
        return
    words = cast(nn.Embedding, base.get_input_embeddings())  # type: ignore[operator]
    total = module.embedding.num_embeddings
    if config.prompt_tuning_init == PromptTuningInit.SAMPLE_VOCAB:
        ids = torch.randint(0, words.num_embeddings, (total,), dtype=torch.long)
    else:
        ids = torch.tensor(_text_token_ids(str(config.tokenizer_name_or_path), str(config.prompt_tuning_init_text),
                                           total, config.tokenizer_kwargs), dtype=torch.long)
    with torch.no_grad():
        module.embedding.weight.copy_(words(ids.to(words.weight.device)).float())


def _text_token_ids(tokenizer_name: str, text: str, total: int, kwargs: dict[str, Any] | None = None) -> list[int]:
    """Token ids of an init text, repeated or cut to ``total`` (PEFT's rule)."""
    from .models import load_tokenizer

    kwargs = dict(kwargs or {})
    kwargs.pop("trust_remote_code", None)  # a saved config must never make us run downloaded code
    tokenizer = load_tokenizer(tokenizer_name, **kwargs)  # packaged aliases too
    ids = list(tokenizer(text)["input_ids"])
    if not ids:
        raise ConfigError(f"the init text {text!r} tokenizes to nothing; give a non-empty text")
    return (ids * math.ceil(total / len(ids)))[:total]


def _init_prefix(module: PrefixEncoder, base: nn.Module, config: PrefixTuningConfig) -> None:
    """PEFT's ``init_weights="zero"``, or peftkit's ``prefix_init_text``: the key/values of real text.

    Random key/values at unit scale make the model far worse than the base before any training; the
    activations of real words start it where the base model is after reading that text (Li and Liang's
    finding that real-word initialization helps prefix tuning most when data is small).
    """
    if config.inference_mode:
        return
    if config.init_weights == "zero":
        last = module.transform[-1] if module.projection else module.embedding
        with torch.no_grad():
            for tensor in last.parameters():
                tensor.zero_()
        return
    if config.prefix_init_text is None:
        return
    if config.task_type == TaskType.SEQ_2_SEQ_LM:
        raise ConfigError("prefix_init_text is supported on decoder-only models; on encoder-decoder models "
                          "leave it empty (random start) or use init_weights: zero")
    n = cast(int, config.num_virtual_tokens)
    ids = torch.tensor([_text_token_ids(str(config.tokenizer_name_or_path), config.prefix_init_text, n)])
    module.embedding.weight.data.copy_(_text_key_values(base, ids, config))


def _text_key_values(base: nn.Module, ids: torch.Tensor, config: PrefixTuningConfig) -> torch.Tensor:
    """The base model's per-layer keys and values for ``ids``, in the prefix's flat layout ``(N, L*2*H*hd)``."""
    was_training = base.training
    base.eval()  # no dropout in the activations we copy
    try:
        with torch.no_grad():
            device = next(base.parameters()).device
            out = base(input_ids=ids.to(device), use_cache=True)
    finally:
        base.train(was_training)
    # transformers 5.24 names the output's cache ``cache`` (``past_key_values`` still works, with a warning)
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    layers = cache.layers[: cast(int, config.num_layers)]
    kv = [t for layer in layers for t in (layer.keys, layer.values)]  # L*2 x (1, H, N, hd)
    stacked = torch.cat(kv, dim=0)  # (L*2, H, N, hd)
    width = stacked.shape[0] * stacked.shape[1] * stacked.shape[3]
    if width != cast(int, config.num_layers) * 2 * cast(int, config.token_dim):
        raise ConfigError(f"the model's key/values have {width} values per token, not the prefix's "
                          f"{cast(int, config.num_layers) * 2 * cast(int, config.token_dim)}; "
                          "prefix_init_text does not support this architecture")
    return stacked.permute(2, 0, 1, 3).reshape(ids.shape[1], -1).float()  # (N, L*2*H*hd)


# ----- inputs ---------------------------------------------------------------------------------------------


def _batch_and_embeds(base: nn.Module, inputs: dict[str, Any]) -> tuple[int, torch.Tensor]:
    embeds = inputs.pop("inputs_embeds", None)
    ids = inputs.pop("input_ids", None)
    if embeds is None:
        if ids is None:
            raise ConfigError("pass input_ids or inputs_embeds")
        embeds = base.get_input_embeddings()(ids)  # type: ignore[operator]
    return embeds.shape[0], embeds


def _extend_mask(inputs: dict[str, Any], batch: int, n: int, device: torch.device) -> None:
    mask = inputs.get("attention_mask")
    if mask is not None:
        inputs["attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)  # (B, N+T)


def _encoder_prompts(module: nn.Module, task: TaskType, config: PromptLearningConfig) -> torch.Tensor:
    """The virtual tokens that go in front of the (encoder) input: ``(N, D)``.

    Encoder-decoder models get ``num_virtual_tokens * 2`` prompt rows, as in PEFT, of which the encoder
    takes the first half; the file format keeps all rows.
    """
    prompts = module()  # (N * submodules, D)
    if task == TaskType.SEQ_2_SEQ_LM:
        prompts = prompts[: cast(int, config.num_virtual_tokens)]
    return prompts


def _prepend(module: nn.Module, base: nn.Module, inputs: dict[str, Any], task: TaskType,
             config: PromptLearningConfig) -> dict[str, Any]:
    batch, embeds = _batch_and_embeds(base, inputs)  # (B, T, D)
    prompts = _encoder_prompts(module, task, config)  # (N, D)
    n = prompts.shape[0]
    inputs["inputs_embeds"] = torch.cat([prompts.to(embeds.dtype).expand(batch, -1, -1), embeds], dim=1)
    _extend_mask(inputs, batch, n, embeds.device)
    labels = inputs.get("labels")
    if labels is not None and task == TaskType.CAUSAL_LM:
        inputs["labels"] = torch.cat([labels.new_full((batch, n), -100), labels], dim=1)  # (B, N+T)
    if inputs.get("token_type_ids") is not None:
        types = inputs["token_type_ids"]
        inputs["token_type_ids"] = torch.cat([types.new_zeros(batch, n), types], dim=1)
    inputs.pop("position_ids", None)  # positions are recomputed over the longer sequence, as in PEFT
    return inputs


def prefix_cache(module: nn.Module, base: nn.Module, config: PrefixTuningConfig, batch: int) -> Any:
    """A fresh ``DynamicCache`` holding the learned prefix keys and values for every layer."""
    from transformers import DynamicCache

    layers, heads = cast(int, config.num_layers), cast(int, config.num_attention_heads)
    head_dim = cast(int, config.token_dim) // heads
    dtype = next(base.parameters()).dtype
    flat = module().to(dtype)  # (N, L*2*H*hd)
    n = flat.shape[0]
    kv = flat.view(n, layers * 2, heads, head_dim).permute(1, 2, 0, 3)  # (L*2, H, N, hd)
    kv = kv.unsqueeze(1).expand(-1, batch, -1, -1, -1)  # (L*2, B, H, N, hd)
    cache = DynamicCache(config=base.config)  # type: ignore[arg-type]
    positions = torch.arange(n, device=flat.device)
    for layer in range(layers):
        cache.update(kv[2 * layer], kv[2 * layer + 1], layer, cache_kwargs={"cache_position": positions})
    return cache


def seq2seq_prefix_cache(module: nn.Module, base: nn.Module, config: PrefixTuningConfig, batch: int) -> Any:
    """The prefix of an encoder-decoder model, laid out as PEFT does it.

    PEFT doubles the per-layer key/value list, regroups it four at a time (self-attention key and value,
    cross-attention key and value) and then discards the cross-attention part, so decoder layer ``i``'s
    self-attention gets the prefix learned in slot ``2 * i mod num_layers``. The encoder sees no prefix.
    """
    from transformers import DynamicCache, EncoderDecoderCache

    layers, heads = cast(int, config.num_layers), cast(int, config.num_attention_heads)
    head_dim = cast(int, config.token_dim) // heads
    flat = module().to(next(base.parameters()).dtype)  # (N, L*2*H*hd)
    n = flat.shape[0]
    kv = flat.view(n, layers * 2, heads, head_dim).permute(1, 2, 0, 3)  # (L*2, H, N, hd)
    kv = kv.unsqueeze(1).expand(-1, batch, -1, -1, -1)  # (L*2, B, H, N, hd)
    decoder_layers = int(getattr(base.config, "num_decoder_layers", None) or layers)
    self_cache = DynamicCache(config=base.config)  # type: ignore[arg-type]
    positions = torch.arange(n, device=flat.device)
    for layer in range(decoder_layers):
        slot = (2 * layer) % layers
        self_cache.update(kv[2 * slot], kv[2 * slot + 1], layer, cache_kwargs={"cache_position": positions})
    return EncoderDecoderCache(self_cache, DynamicCache())


@functools.cache
def _parameters(function: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


def forward_accepts(module: nn.Module, name: str) -> bool:
    """Whether ``module.forward`` takes keyword ``name`` (looked up once per class: it runs every step)."""
    return name in _parameters(type(module).forward)


def _cache_keyword(base: nn.Module) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` in forward (the old name warns)."""
    return "cache" if forward_accepts(base, "cache") else "past_key_values"


def _prefix(module: nn.Module, base: nn.Module, inputs: dict[str, Any], task: TaskType,
            config: PrefixTuningConfig) -> dict[str, Any]:
    given = inputs.get("input_ids")
    given = inputs.get("inputs_embeds") if given is None else given
    if given is None:
        raise ConfigError("pass input_ids or inputs_embeds")
    batch, n = given.shape[0], cast(int, config.num_virtual_tokens)
    if inputs.get("past_key_values") is not None or inputs.get("cache") is not None:
        return inputs  # a later decoding step: the prefix is already in the cache
    if task == TaskType.SEQ_2_SEQ_LM:
        inputs[_cache_keyword(base)] = seq2seq_prefix_cache(module, base, config, batch)
        mask = inputs.get("decoder_attention_mask")
        if mask is not None:
            inputs["decoder_attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)
        return inputs
    inputs[_cache_keyword(base)] = prefix_cache(module, base, config, batch)
    _extend_mask(inputs, batch, n, given.device)
    inputs.pop("position_ids", None)
    return inputs


def prepare_inputs(module: nn.Module, base: nn.Module, inputs: dict[str, Any], task: TaskType,
                   config: PromptLearningConfig) -> dict[str, Any]:
    """Turn the user's inputs into the base model's inputs with the prompt applied."""
    if isinstance(config, PrefixTuningConfig):
        return _prefix(module, base, inputs, task, config)
    return _prepend(module, base, inputs, task, config)


# ----- generation -----------------------------------------------------------------------------------------


def generate(module: nn.Module, base: nn.Module, task: TaskType, config: PromptLearningConfig,
             **kwargs: Any) -> torch.Tensor:
    """``base.generate`` with the prompt in the key/value cache: it is computed once, at the first step.

    Virtual positions get placeholder ids (a token already in each row, so repetition penalties are
    unchanged) that are cut from the output; the result has the shape the base model's ``generate`` gives.
    """
    ids = kwargs.pop("input_ids", None)
    if ids is None:
        raise ConfigError("generate with a prompt adapter needs input_ids")
    if task == TaskType.SEQ_2_SEQ_LM:
        return _generate_seq2seq(module, base, config, ids, **kwargs)
    batch = ids.shape[0]
    if isinstance(config, PrefixTuningConfig):
        n = cast(int, config.num_virtual_tokens)
        kwargs[_cache_keyword(base)] = prefix_cache(module, base, config, batch)
    else:
        embeds = base.get_input_embeddings()(ids)  # type: ignore[operator]  # (B, T, D)
        prompts = module().to(embeds.dtype)  # (N, D)
        n = prompts.shape[0]
        kwargs["inputs_embeds"] = torch.cat([prompts.expand(batch, -1, -1), embeds], dim=1)  # (B, N+T, D)
    mask = kwargs.pop("attention_mask", None)
    mask = torch.ones_like(ids) if mask is None else mask
    kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)  # (B, N+T)
    placeholder = ids[:, -1:].expand(batch, n)  # (B, N)
    out = base.generate(input_ids=torch.cat([placeholder, ids], dim=1), **kwargs)  # type: ignore[operator]
    return out[:, n:]


def _generate_seq2seq(module: nn.Module, base: nn.Module, config: PromptLearningConfig, ids: torch.Tensor,
                      **kwargs: Any) -> torch.Tensor:
    """Encoder-decoder generation: virtual tokens in front of the encoder input, or the prefix in the
    decoder's self-attention cache. The output holds decoder tokens only, as the base model's does."""
    batch = ids.shape[0]
    if isinstance(config, PrefixTuningConfig):
        kwargs[_cache_keyword(base)] = seq2seq_prefix_cache(module, base, config, batch)
        return cast(torch.Tensor, base.generate(input_ids=ids, **kwargs))  # type: ignore[operator]
    embeds = base.get_input_embeddings()(ids)  # type: ignore[operator]  # (B, T, D)
    prompts = _encoder_prompts(module, TaskType.SEQ_2_SEQ_LM, config).to(embeds.dtype)  # (N, D)
    mask = kwargs.pop("attention_mask", None)
    mask = torch.ones_like(ids) if mask is None else mask
    kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, prompts.shape[0]), mask], dim=1)  # (B, N+T)
    kwargs["inputs_embeds"] = torch.cat([prompts.expand(batch, -1, -1), embeds], dim=1)  # (B, N+T, D)
    return cast(torch.Tensor, base.generate(**kwargs))  # type: ignore[operator]


# ----- files ----------------------------------------------------------------------------------------------


def embeddings_to_save(module: nn.Module) -> torch.Tensor:
    """What PEFT stores as ``prompt_embeddings``: the module's output (the encoder applied)."""
    with torch.no_grad():
        return module().detach().clone()


def load_embeddings(module: nn.Module, tensor: torch.Tensor, source: str) -> None:
    """Load a saved ``prompt_embeddings`` tensor. Modules with an encoder keep it as their direct output."""
    embedding = cast(nn.Embedding, module.embedding)
    if tuple(tensor.shape) != tuple(embedding.weight.shape):
        raise AdapterFormatError(
            f"{source}: prompt_embeddings has shape {tuple(tensor.shape)}, the model expects "
            f"{tuple(embedding.weight.shape)}: the adapter was made for a model of another size"
        )
    with torch.no_grad():
        embedding.weight.copy_(tensor.to(embedding.weight.dtype))
