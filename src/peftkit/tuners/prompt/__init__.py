"""The prompt methods: their modules (:mod:`.layers`: the prompt embedding, p-tuning's encoder,
prefix tuning's encoder) and how a prompt meets the model (:mod:`.model`: virtual tokens in front of
the input, or the prefix as the layers' key/value cache)."""

from __future__ import annotations

from .layers import PrefixEncoder, PromptEmbedding, PromptEncoder

__all__ = ["PrefixEncoder", "PromptEmbedding", "PromptEncoder"]
