"""Prompt methods' one small interface: resolve the shape, build the module, prepare the inputs,
generate.

Two strategies, one class each. :class:`VirtualTokens` (prompt tuning, p-tuning) prepends
embeddings: the attention mask gets ones, labels get -100, token types get zeros.
:class:`PrefixKeyValues` (prefix tuning) hands the model a key/value cache holding the prefix and
extends the attention mask. ``PeftModel.forward`` and ``generate`` call :func:`prepare_inputs` and
:func:`generate`, which pick the strategy for the config.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from ...common.memory import check_allocation
from ...config import (
    PeftConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptLearningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
)
from ...errors import AdapterFormatError, ConfigError, short_repr
from ...integrations.models import load_tokenizer
from .layers import PrefixEncoder, PromptEmbedding, PromptEncoder

__all__ = [
    "PrefixKeyValues",
    "PromptShape",
    "VirtualTokens",
    "build_prompt_module",
    "cache_keyword",
    "check_window",
    "embeddings_to_save",
    "generate",
    "load_embeddings",
    "output_cache",
    "prepare_inputs",
    "resolve",
    "sliding_window",
    "strategy",
]

# ----- the shape
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptShape:
    """A prompt adapter's sizes once resolved against the model (PEFT records them in the config)."""

    virtual_tokens: int
    """N: the learned positions in front of each input."""
    submodules: int
    """1, or 2 on encoder-decoder models (PEFT keeps prompt rows for the decoder too)."""
    layers: int
    """L: transformer layers (prefix tuning learns keys and values for each)."""
    token_dim: int
    """D: the width of one virtual token; for prefixes, key/value heads times head size."""
    heads: int
    """H: attention heads (key/value heads on grouped-query models, for prefixes)."""

    @property
    def head_dim(self) -> int:
        return self.token_dim // self.heads

    @classmethod
    def of(cls, config: PromptLearningConfig) -> PromptShape:
        """The shape of a config that :func:`resolve` filled."""
        values = (
            config.num_virtual_tokens,
            config.num_transformer_submodules,
            config.num_layers,
            config.token_dim,
            config.num_attention_heads,
        )
        if any(v is None for v in values):
            raise ConfigError(
                f"{type(config).__name__} has empty shape fields; resolve it against the model first"
            )
        return cls(*cast(tuple[int, int, int, int, int], values))


def _model_config(base: nn.Module) -> dict[str, Any]:
    """The model's config as a dict, with the names its class maps to others (BART's
    ``num_hidden_layers`` is ``encoder_layers``) read through the mapping, and a multimodal model's
    text part, as PEFT reads them."""
    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return {}
    values = config.to_dict()
    for alias in getattr(config, "attribute_map", {}):
        values.setdefault(alias, getattr(config, alias, None))
    text = values.get("text_config")
    return {**values, **text} if isinstance(text, dict) else values


def _first(config: dict[str, Any], *keys: str) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


def prefix_in_cache(config: PeftConfig) -> bool:
    """Whether the method puts its virtual tokens in the attention cache (prefix tuning) rather than
    in front of the input embeddings."""
    return isinstance(config, PrefixTuningConfig)


def resolve(base: nn.Module, config: PromptLearningConfig) -> PromptLearningConfig:
    """A copy of ``config`` with the model-shape fields left empty filled from ``base``, as PEFT
    fills them (grouped-query models: key/value heads for prefixes). ``config`` itself is not
    changed."""
    if config.num_virtual_tokens is None:
        raise ConfigError(
            f"{type(config).__name__}.num_virtual_tokens is empty; set how many virtual tokens to "
            "learn (8 to 20 is usual)"
        )
    mc = _model_config(base)
    seq2seq = config.task_type == TaskType.SEQ_2_SEQ_LM
    filled: dict[str, Any] = {
        "num_transformer_submodules": config.num_transformer_submodules or (2 if seq2seq else 1),
        "num_layers": config.num_layers or _first(mc, "num_hidden_layers", "num_layers", "n_layer"),
        "token_dim": config.token_dim or _first(mc, "hidden_size", "n_embd", "d_model"),
        "num_attention_heads": config.num_attention_heads
        or _first(mc, "num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"),
    }
    missing = [f for f in ("num_layers", "token_dim", "num_attention_heads") if filled[f] is None]
    if missing:
        raise ConfigError(
            f"cannot read {', '.join(missing)} from the model's config; set them in the adapter config"
        )
    if isinstance(config, PrefixTuningConfig) and mc.get("num_key_value_heads") is not None:
        head_dim = mc.get("head_dim") or filled["token_dim"] // filled["num_attention_heads"]
        filled["token_dim"] = head_dim * mc["num_key_value_heads"]
        filled["num_attention_heads"] = mc["num_key_value_heads"]
    if (
        isinstance(config, (PromptEncoderConfig, PrefixTuningConfig))
        and config.encoder_hidden_size is None
    ):
        filled["encoder_hidden_size"] = filled["token_dim"]
    return cast(PromptLearningConfig, config.replace(**filled))


# ----- shared pieces
# ----------------------------------------------------------------------------------------


@functools.cache
def _parameters(function: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


def forward_accepts(module: nn.Module, name: str) -> bool:
    """Whether ``module.forward`` takes keyword ``name`` (looked up once per class: it runs every
    step)."""
    return name in _parameters(type(module).forward)


def cache_keyword(base: nn.Module) -> str:
    """Newer transformers name forward's cache ``cache`` (``past_key_values`` still works, with a
    warning)."""
    return "cache" if forward_accepts(base, "cache") else "past_key_values"


def output_cache(out: Any) -> Any:
    """The key/value cache a forward pass returned, under its newer name or the older one."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def _text_token_ids(
    tokenizer_name: str, text: str, total: int, kwargs: dict[str, Any] | None = None
) -> list[int]:
    """Token ids of an init text, repeated or cut to ``total`` (PEFT's rule)."""

    kwargs = dict(kwargs or {})
    kwargs.pop("trust_remote_code", None)  # a saved config must never make us run downloaded code
    tokenizer = load_tokenizer(tokenizer_name, **kwargs)  # packaged aliases too
    ids = list(tokenizer(text)["input_ids"])
    if not ids:
        raise ConfigError(f"the init text {text!r} tokenizes to nothing; give a non-empty text")
    return (ids * math.ceil(total / len(ids)))[:total]


def _restarts(inputs: dict[str, Any]) -> bool:
    """Whether ``inputs`` is a flattened batch (transformers' ``DataCollatorWithFlattening``): no
    attention mask, no cache, and position ids that restart inside a row."""
    positions = inputs.get("position_ids")
    if positions is None or positions.dim() != 2 or inputs.get("attention_mask") is not None:
        return False
    if inputs.get("past_key_values") is not None:
        return False
    return bool((torch.diff(positions, dim=-1) != 1).any())


def _with_ones(mask: torch.Tensor | None, ids: torch.Tensor, n: int) -> torch.Tensor:
    """The attention mask with ``n`` ones in front (all ones when none was given): ``(B, N+T)``."""
    mask = torch.ones_like(ids) if mask is None else mask
    return torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)


def _embeds(base: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The input embeddings ``(B, T, D)``, taking ``input_ids`` or ``inputs_embeds`` out of
    ``inputs``."""
    embeds = inputs.pop("inputs_embeds", None)
    ids = inputs.pop("input_ids", None)
    if embeds is not None:
        return cast(torch.Tensor, embeds)
    if ids is None:
        raise ConfigError("pass input_ids or inputs_embeds")
    return cast(torch.Tensor, base.get_input_embeddings()(ids))  # type: ignore[operator]


# ----- virtual tokens: prompt tuning, p-tuning
# -------------------------------------------------------------


class VirtualTokens:
    """Prompt tuning and p-tuning: N learned embeddings go in front of the (encoder) input.

    Encoder-decoder models get ``N * 2`` prompt rows, as in PEFT, of which the encoder takes the
    first half; the file format keeps all rows.
    """

    def __init__(self, config: PromptTuningConfig | PromptEncoderConfig, task: TaskType) -> None:
        self.config, self.task, self.shape = config, task, PromptShape.of(config)

    def build(self, base: nn.Module) -> nn.Module:
        if isinstance(self.config, PromptEncoderConfig):
            return PromptEncoder(self.config)
        module = PromptEmbedding(
            self.shape.virtual_tokens * self.shape.submodules, self.shape.token_dim
        )
        self._init_embedding(module, base)
        return module

    def _init_embedding(self, module: PromptEmbedding, base: nn.Module) -> None:
        config = cast(PromptTuningConfig, self.config)
        if config.inference_mode or config.prompt_tuning_init == PromptTuningInit.RANDOM:
            return
        words = cast(nn.Embedding, base.get_input_embeddings())  # type: ignore[operator]
        total = module.embedding.num_embeddings
        if config.prompt_tuning_init == PromptTuningInit.SAMPLE_VOCAB:
            ids = torch.randint(0, words.num_embeddings, (total,), dtype=torch.long)
        else:
            ids = torch.tensor(
                _text_token_ids(
                    str(config.tokenizer_name_or_path),
                    str(config.prompt_tuning_init_text),
                    total,
                    config.tokenizer_kwargs,
                )
            )
        with torch.no_grad():
            module.embedding.weight.copy_(words(ids.to(words.weight.device)).float())

    def prompts(self, module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """The rows that go in front of the input: ``(N, D)``."""
        rows = module()  # (N * submodules, D)
        if self.task == TaskType.SEQ_2_SEQ_LM:
            rows = rows[: self.shape.virtual_tokens]
        return cast(torch.Tensor, rows.to(dtype))

    def prepare(self, module: nn.Module, base: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        slots = inputs.pop("virtual_token_slots", None)
        if slots is not None:
            return self._fill_slots(module, base, inputs, int(slots))
        if self.task == TaskType.CAUSAL_LM and _restarts(inputs):
            raise ConfigError(
                "this batch is flattened (position ids restart inside a row, no attention mask, as "
                "from DataCollatorWithFlattening), and virtual tokens put in front of the row would "
                "reach its first example only while the examples attend to each other; use an "
                "unflattened collator, or peftkit's packing (peftkit.train.data.pack(..., reserve=N) and "
                "virtual_token_slots=N)"
            )
        embeds = _embeds(base, inputs)  # (B, T, D)
        prompts = self.prompts(module, embeds.dtype)  # (N, D)
        batch, n = embeds.shape[0], prompts.shape[0]
        # (B, N+T, D)
        inputs["inputs_embeds"] = torch.cat([prompts.expand(batch, -1, -1), embeds], dim=1)
        if inputs.get("attention_mask") is not None:
            inputs["attention_mask"] = _with_ones(inputs["attention_mask"], embeds, n)
        if inputs.get("labels") is not None and self.task == TaskType.CAUSAL_LM:
            labels = inputs["labels"]
            # (B, N+T)
            inputs["labels"] = torch.cat([labels.new_full((batch, n), -100), labels], dim=1)
        if inputs.get("token_type_ids") is not None:
            types = inputs["token_type_ids"]
            inputs["token_type_ids"] = torch.cat([types.new_zeros(batch, n), types], dim=1)
        # positions are recomputed over the longer sequence, as in PEFT
        inputs.pop("position_ids", None)
        return inputs

    def _fill_slots(
        self, module: nn.Module, base: nn.Module, inputs: dict[str, Any], slots: int
    ) -> dict[str, Any]:
        """A packed batch (:func:`peftkit.train.data.pack` with ``reserve``): every example starts
        with ``slots`` free positions, 0 to N-1 of its own positions, and the virtual tokens go
        there instead of in front of the row. Each example then sees what it sees unpacked: the N
        tokens, then its own, at the same positions.
        """
        positions = inputs.get("position_ids")
        if self.task != TaskType.CAUSAL_LM:
            raise ConfigError(
                f"train.packing: packed virtual tokens need a causal LM, not {self.task.value}; "
                "set train.packing: false"
            )
        if positions is None or slots != self.shape.virtual_tokens:
            raise ConfigError(
                f"virtual_token_slots={slots} needs a packed batch with position_ids and one slot per "
                f"virtual token ({self.shape.virtual_tokens}); build it with "
                f"peftkit.train.data.pack(..., reserve={self.shape.virtual_tokens})"
            )
        embeds = _embeds(base, inputs)  # (B, W, D)
        prompts = self.prompts(module, embeds.dtype)  # (N, D)
        in_slot = (positions < slots).unsqueeze(-1)  # (B, W, 1)
        inputs["inputs_embeds"] = torch.where(
            in_slot, prompts[positions.clamp(max=slots - 1)], embeds
        )  # (B, W, D)
        return inputs

    def generate(
        self, module: nn.Module, base: nn.Module, ids: torch.Tensor, kwargs: dict[str, Any]
    ) -> Any:
        embeds = base.get_input_embeddings()(ids)  # type: ignore[operator]  # (B, T, D)
        prompts = self.prompts(module, embeds.dtype)  # (N, D)
        batch, n = ids.shape[0], prompts.shape[0]
        # (B, N+T, D)
        kwargs["inputs_embeds"] = torch.cat([prompts.expand(batch, -1, -1), embeds], dim=1)
        kwargs["attention_mask"] = _with_ones(kwargs.pop("attention_mask", None), ids, n)
        if self.task == TaskType.SEQ_2_SEQ_LM:  # the output holds decoder tokens only
            return base.generate(**kwargs)  # type: ignore[operator]
        return _generate_after_placeholders(base, ids, n, kwargs)


def _generate_after_placeholders(
    base: nn.Module, ids: torch.Tensor, n: int, kwargs: dict[str, Any]
) -> Any:
    """``base.generate`` with ``n`` virtual positions in front, cut from the output again.

    The virtual positions get placeholder ids (a token already in each row, so repetition penalties
    are unchanged); the result has the shape the base model's ``generate`` gives, a tensor or (with
    ``return_dict_in_generate=True``) its output object with ``sequences`` cut the same way.
    """
    placeholder = ids[:, -1:].expand(ids.shape[0], n)  # (B, N)
    out = base.generate(input_ids=torch.cat([placeholder, ids], dim=1), **kwargs)  # type: ignore[operator]
    if isinstance(out, torch.Tensor):
        return out[:, n:]
    # return_dict_in_generate=True: scores etc. already cover new tokens only
    out.sequences = out.sequences[:, n:]
    return out


# ----- prefix key/values: prefix tuning
# --------------------------------------------------------------------


GRADIENT_CHECKPOINTING = (
    "prefix tuning does not work with gradient checkpointing: transformers drops the key/value "
    "cache in every checkpointed layer, and the prefix lives in that cache; turn gradient "
    "checkpointing off (train.gradient_checkpointing: false), or use LoRA to save memory"
)


class PrefixKeyValues:
    """Prefix tuning: learned keys and values for every layer, handed to the model as its cache."""

    def __init__(self, config: PrefixTuningConfig, task: TaskType) -> None:
        self.config, self.task, self.shape = config, task, PromptShape.of(config)

    def build(self, base: nn.Module) -> nn.Module:
        # refused when the adapter is added, as PEFT refuses it (ValueError)
        if _checkpointed(base):
            raise ConfigError(GRADIENT_CHECKPOINTING)
        config, s = self.config, self.shape
        module = PrefixEncoder(
            s.virtual_tokens,
            s.token_dim,
            s.layers,
            config.encoder_hidden_size,
            projection=config.prefix_projection and not config.inference_mode,
        )
        self._init(module, base)
        return module

    def _init(self, module: PrefixEncoder, base: nn.Module) -> None:
        """PEFT's ``init_weights="zero"``, or peftkit's ``prefix_init_text``: the key/values of real
        text.

        Random key/values at unit scale make the model far worse than the base before any training;
        the activations of real words start it where the base model is after reading that text (Li
        and Liang's finding that real-word initialization helps prefix tuning most when data is
        small).
        """
        config = self.config
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
        if self.task == TaskType.SEQ_2_SEQ_LM:
            raise ConfigError(
                "prefix_init_text is supported on decoder-only models; on encoder-decoder models "
                "leave it empty (random start) or use init_weights: zero"
            )
        n = self.shape.virtual_tokens
        ids = torch.tensor(
            [_text_token_ids(str(config.tokenizer_name_or_path), config.prefix_init_text, n)]
        )
        module.embedding.weight.data.copy_(self._text_key_values(base, ids))

    def _text_key_values(self, base: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """The base model's per-layer keys and values for ``ids``, in the prefix's flat layout ``(N,
        L*2*H*hd)``."""
        was_training = base.training
        base.eval()  # no dropout in the activations we copy
        try:
            with torch.no_grad():
                out = base(input_ids=ids.to(next(base.parameters()).device), use_cache=True)
        finally:
            base.train(was_training)
        cache = output_cache(out)
        # (1, H, N, hd)
        kv = [t for layer in cache.layers[: self.shape.layers] for t in (layer.keys, layer.values)]
        stacked = torch.cat(kv, dim=0)  # (L*2, H, N, hd)
        width = stacked.shape[0] * stacked.shape[1] * stacked.shape[3]
        expected = self.shape.layers * 2 * self.shape.token_dim
        if width != expected:
            raise ConfigError(
                f"the model's key/values have {width} values per token, not the prefix's {expected}; "
                "prefix_init_text does not support this architecture"
            )
        return stacked.permute(2, 0, 1, 3).reshape(ids.shape[1], -1).float()  # (N, L*2*H*hd)

    def key_values(self, module: nn.Module, base: nn.Module, batch: int) -> torch.Tensor:
        """The learned prefix as per-layer keys and values: ``(L*2, B, H, N, hd)``."""
        flat = module().to(next(base.parameters()).dtype)  # (N, L*2*H*hd)
        s = self.shape
        # (L*2, H, N, hd)
        kv = flat.view(flat.shape[0], s.layers * 2, s.heads, s.head_dim).permute(1, 2, 0, 3)
        return kv.unsqueeze(1).expand(-1, batch, -1, -1, -1)  # (L*2, B, H, N, hd)

    def cache(self, module: nn.Module, base: nn.Module, batch: int) -> Any:
        """A fresh cache holding the prefix: ``DynamicCache`` for decoder-only models.

        Encoder-decoder models get it laid out as PEFT does: PEFT doubles the per-layer key/value
        list, regroups it four at a time (self-attention key and value, cross-attention key and
        value) and then discards the cross-attention part, so decoder layer ``i``'s self-attention
        gets the prefix learned in slot ``2 * i mod num_layers``. The encoder sees no prefix.
        """
        # only prefix tuning needs a cache object
        from transformers import DynamicCache, EncoderDecoderCache

        kv = self.key_values(module, base, batch)
        positions = torch.arange(kv.shape[3], device=kv.device)
        cache = DynamicCache(config=base.config)  # type: ignore[arg-type]
        seq2seq, layers = self.task == TaskType.SEQ_2_SEQ_LM, self.shape.layers
        if seq2seq:
            layers = int(getattr(base.config, "num_decoder_layers", None) or layers)
        for layer in range(layers):
            slot = (2 * layer) % self.shape.layers if seq2seq else layer
            cache.update(
                kv[2 * slot], kv[2 * slot + 1], layer, cache_kwargs={"cache_position": positions}
            )
        return EncoderDecoderCache(cache, DynamicCache()) if seq2seq else cache

    def prepare(self, module: nn.Module, base: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        classifies = self.task in (TaskType.SEQ_CLS, TaskType.TOKEN_CLS, TaskType.QUESTION_ANS)
        # PEFT makes such a model and refuses here
        if classifies and not _takes_past_key_values(base):
            raise ConfigError(
                f"Model does not support past key values which are required for prefix tuning. "
                f"{type(base).__name__}'s forward takes no past_key_values, so the prefix cannot "
                "reach it (in PEFT neither); use prompt tuning, p-tuning or LoRA on this model"
            )
        if inputs.pop("virtual_token_slots", None) is not None:
            raise ConfigError(
                "prefix tuning cannot fill packed slots: its key/values are not tokens of the row; "
                "pack its batches with packed_segments=True instead"
            )
        # a flattened batch from elsewhere (DataCollatorWithFlattening): PEFT drops its position ids
        # and lets the examples attend to each other; here they get the packed path's mask
        packed = bool(inputs.pop("packed_segments", False)) or (
            self.task == TaskType.CAUSAL_LM and _restarts(inputs)
        )
        given = inputs.get("input_ids")
        given = inputs.get("inputs_embeds") if given is None else given
        if given is None:
            raise ConfigError("pass input_ids or inputs_embeds")
        if inputs.get("past_key_values") is not None or inputs.get("cache") is not None:
            return inputs  # a later decoding step: the prefix is already in the cache
        if base.training and torch.is_grad_enabled() and _checkpointed(base):
            raise ConfigError(GRADIENT_CHECKPOINTING)
        inputs[cache_keyword(base)] = self.cache(module, base, given.shape[0])
        if packed:
            return self._segments(base, inputs)
        mask = "decoder_attention_mask" if self.task == TaskType.SEQ_2_SEQ_LM else "attention_mask"
        if inputs.get(mask) is not None:
            inputs[mask] = _with_ones(inputs[mask], given, self.shape.virtual_tokens)
        if self.task != TaskType.SEQ_2_SEQ_LM:
            inputs.pop("position_ids", None)
        return inputs

    def _segments(self, base: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """A packed batch (:func:`peftkit.train.data.pack`): each row holds several examples,
        positions restarting at each. Every example must see the prefix and its own earlier tokens,
        at the positions it has unpacked (the prefix's N, then its own), so the model gets those
        positions and a 4D mask that says so: transformers reads position restarts as boundaries
        only without a cache, and the prefix is one.
        """
        positions = inputs.get("position_ids")
        if self.task != TaskType.CAUSAL_LM:
            raise ConfigError(
                f"train.packing: packed prefix tuning needs a causal LM, not {self.task.value}; "
                "set train.packing: false"
            )
        if positions is None or inputs.get("attention_mask") is not None:
            raise ConfigError(
                "packed_segments=True needs a packed batch: position_ids restarting at each example "
                "and no attention_mask; build it with peftkit.train.data.pack"
            )
        kind = getattr(base.config, "_attn_implementation", None)
        if kind not in ("sdpa", "eager"):
            raise ConfigError(
                f"train.packing: packed prefix tuning needs sdpa or eager attention, not {kind}, "
                "to take its 4D mask; set train.packing: false"
            )
        n = self.shape.virtual_tokens
        # the longest example costs a device sync: only where it matters
        if sliding_window(base) is not None:
            check_window(base, n, int(positions.max()) + 1)
        rows, width = positions.shape
        # (B, W) an example begins
        starts = torch.diff(positions, prepend=positions[:, :1] - 1, dim=-1) != 1
        segment = starts.cumsum(-1)  # (B, W)
        # (W, W)
        causal = torch.ones(width, width, dtype=torch.bool, device=positions.device).tril()
        # (B, W, W) same example, not ahead
        own = (segment.unsqueeze(2) == segment.unsqueeze(1)) & causal
        seen = torch.cat([own.new_ones(rows, width, n), own], dim=-1).unsqueeze(1)  # (B, 1, W, N+W)
        if kind == "eager":  # eager attention adds its mask to the scores
            dtype = next(base.parameters()).dtype
            seen = torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill(
                ~seen, torch.finfo(dtype).min
            )
        inputs["attention_mask"] = seen
        # unpacked, the model counts the prefix's N positions first
        inputs["position_ids"] = positions + n
        return inputs

    def generate(
        self, module: nn.Module, base: nn.Module, ids: torch.Tensor, kwargs: dict[str, Any]
    ) -> Any:
        kwargs[cache_keyword(base)] = self.cache(module, base, ids.shape[0])
        # the decoder's cache holds the prefix; the encoder sees none
        if self.task == TaskType.SEQ_2_SEQ_LM:
            return base.generate(input_ids=ids, **kwargs)  # type: ignore[operator]
        n = self.shape.virtual_tokens
        kwargs["attention_mask"] = _with_ones(kwargs.pop("attention_mask", None), ids, n)
        return _generate_after_placeholders(base, ids, n, kwargs)


def sliding_window(base: nn.Module) -> int | None:
    """The model's attention window in positions, or None when each position attends to all before
    it."""
    config = base.config
    window = getattr(config, "sliding_window", None)
    return (
        int(window) if window and getattr(config, "use_sliding_window", True) is not False else None
    )


def check_window(base: nn.Module, prefix: int, longest: int) -> None:
    """Refuse packed prefix tuning where an example of ``longest`` tokens and the ``prefix``
    overflow the model's sliding attention window: unpacked, the window hides the prefix from the
    later positions, and the packed mask would show it.

    Raises:
        ConfigError: they do not fit.
    """
    window = sliding_window(base)
    if window is None or prefix + longest <= window:
        return
    raise ConfigError(
        f"train.packing: packed prefix tuning masks each example in full, but this model attends "
        f"within a sliding window of {window} positions, which an example of {longest} tokens with "
        f"the prefix's {prefix} exceeds; set train.packing: false"
    )


def _checkpointed(base: nn.Module) -> bool:
    """Whether transformers checkpoints ``base``'s layers (its newer property's name; the old one
    warns)."""
    if hasattr(base, "is_activation_checkpointing"):
        return bool(base.is_activation_checkpointing)
    return bool(getattr(base, "is_gradient_checkpointing", False))


def _takes_past_key_values(base: nn.Module) -> bool:
    """PEFT's test for the classification tasks: the model's forward, or its backbone's (``bert`` in
    BertForSequenceClassification), names ``past_key_values``; encoder-only models in transformers 5
    do not, and PEFT refuses prefix tuning there (generative models take the cache through
    ``generate``'s path)."""
    backbone = getattr(base, getattr(base, "base_model_prefix", "") or "", None)
    return any(
        "past_key_values" in inspect.signature(m.forward).parameters
        for m in (base, backbone)
        if isinstance(m, nn.Module)
    )


# ----- the interface PeftModel calls
# ---------------------------------------------------------------------


def strategy(config: PromptLearningConfig, task: TaskType) -> VirtualTokens | PrefixKeyValues:
    """The strategy for a resolved prompt config."""
    if isinstance(config, PrefixTuningConfig):
        return PrefixKeyValues(config, task)
    if isinstance(config, (PromptTuningConfig, PromptEncoderConfig)):
        return VirtualTokens(config, task)
    raise ConfigError(f"{type(config).__name__} is not a supported prompt method")


def build_prompt_module(base: nn.Module, config: PromptLearningConfig) -> nn.Module:
    """Create the prompt module for ``config`` (resolved against ``base`` first) on ``base``'s
    device."""
    config = resolve(base, config)
    shape = PromptShape.of(config)
    layers = 2 * shape.layers if isinstance(config, PrefixTuningConfig) else 1  # keys and values
    # fp32 + grad + 2 moments
    size = 16 * shape.virtual_tokens * shape.submodules * shape.token_dim * layers
    check_allocation(
        size,
        f"{short_repr(shape.virtual_tokens)} virtual tokens",
        "choose fewer num_virtual_tokens (8 to 32 is usual)",
    )
    task = TaskType(config.task_type or TaskType.CAUSAL_LM)
    return strategy(config, task).build(base).to(next(base.parameters()).device)


def prepare_inputs(
    module: nn.Module,
    base: nn.Module,
    inputs: dict[str, Any],
    task: TaskType,
    config: PromptLearningConfig,
) -> dict[str, Any]:
    """Turn the user's inputs into the base model's inputs with the prompt applied."""
    return strategy(config, task).prepare(module, base, inputs)


def generate(
    module: nn.Module, base: nn.Module, task: TaskType, config: PromptLearningConfig, **kwargs: Any
) -> torch.Tensor:
    """``base.generate`` with the prompt in the key/value cache: it is computed once, at the first
    step."""
    ids = kwargs.pop("input_ids", None)
    if ids is None:
        raise ConfigError("generate with a prompt adapter needs input_ids")
    return cast(torch.Tensor, strategy(config, task).generate(module, base, ids, kwargs))


# ----- files
# ----------------------------------------------------------------------------------------------


def embeddings_to_save(module: nn.Module) -> torch.Tensor:
    """What PEFT stores as ``prompt_embeddings``: the module's output (the encoder applied)."""
    with torch.no_grad():
        return module().detach().clone()


def load_embeddings(module: nn.Module, tensor: torch.Tensor, source: str) -> None:
    """Load a saved ``prompt_embeddings`` tensor. Modules with an encoder keep it as their direct
    output."""
    embedding = cast(nn.Embedding, module.embedding)
    if tuple(tensor.shape) != tuple(embedding.weight.shape):
        raise AdapterFormatError(
            f"{source}: prompt_embeddings has shape {tuple(tensor.shape)}, the model expects "
            f"{tuple(embedding.weight.shape)}: the adapter was made for a model of another size"
        )
    with torch.no_grad():
        embedding.weight.copy_(tensor.to(embedding.weight.dtype))
