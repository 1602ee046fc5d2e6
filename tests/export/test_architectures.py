"""GGUF names and row order, checked against transformers' own GGUF reader (an independent
implementation)."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from peftkit.errors import ConfigError
from peftkit.export.architectures import architecture_of, gguf_tensor_name, to_gguf_rows
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    "name, heads",
    [("model.layers.0.self_attn.q_proj.weight", 4), ("model.layers.1.self_attn.k_proj.weight", 2)],
)
def test_query_and_key_rows_are_what_transformers_reads_back(name: str, heads: int) -> None:
    config = tiny_config("llama")  # 4 heads, 2 key/value heads, head size 8
    weight = torch.randn(heads * 8, 32)
    gguf_rows = to_gguf_rows(config, name, weight)
    assert not torch.equal(gguf_rows, weight)  # the order does change
    processor = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    back = processor.process(
        gguf_rows.numpy(),
        name.replace("self_attn.q_proj", "attn_q.").replace("self_attn.k_proj", "attn_k."),
    ).weights
    assert torch.equal(torch.from_numpy(back), weight)


def test_other_weights_keep_their_rows() -> None:
    weight = torch.randn(32, 32)
    assert (
        to_gguf_rows(tiny_config("llama"), "model.layers.0.self_attn.v_proj.weight", weight)
        is weight
    )


def test_names_follow_llama_cpp() -> None:
    config = tiny_config("llama")
    assert (
        gguf_tensor_name(config, "model.layers.1.self_attn.q_proj.weight") == "blk.1.attn_q.weight"
    )
    assert (
        gguf_tensor_name(config, "model.layers.0.mlp.down_proj.weight") == "blk.0.ffn_down.weight"
    )
    assert gguf_tensor_name(config, "model.embed_tokens.weight") == "token_embd.weight"
    assert gguf_tensor_name(config, "lm_head.weight") == "output.weight"


def test_unsupported_architecture_says_what_is_supported() -> None:
    with pytest.raises(
        ConfigError, match=r"supports the model types llama, mistral; this model is 'gpt2'.*merge"
    ):
        architecture_of(tiny_config("gpt2"))


def test_unsupported_rope_scaling_is_refused() -> None:
    config = tiny_config("llama")
    config.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    with pytest.raises(ConfigError, match="'yarn' rope scaling"):
        architecture_of(config)
