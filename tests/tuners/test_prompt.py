"""The prompt-learning modules (tuners/prompt.py): shapes, PEFT's parameter names, and the inference
form."""

from __future__ import annotations

import torch

from peftkit import PromptEncoderConfig
from peftkit.tuners.prompt import PrefixEncoder, PromptEmbedding, PromptEncoder


def test_prompt_tuning_is_free_vectors() -> None:
    module = PromptEmbedding(5, 8)
    assert module().shape == (5, 8) and module() is module.embedding.weight


def _encoder(kind: str, inference: bool = False) -> PromptEncoder:
    return PromptEncoder(
        PromptEncoderConfig(
            num_virtual_tokens=3,
            num_transformer_submodules=1,
            token_dim=8,
            encoder_hidden_size=6,
            encoder_reparameterization_type=kind,
            inference_mode=inference,
        )
    )


def test_p_tuning_reparameterizes_the_embeddings_through_its_encoder() -> None:
    mlp, lstm = _encoder("MLP"), _encoder("LSTM")
    assert mlp().shape == lstm().shape == (3, 8)
    # PEFT's names
    assert {n.split(".")[0] for n, _ in mlp.named_parameters()} == {"embedding", "mlp_head"}
    assert {n.split(".")[0] for n, _ in lstm.named_parameters()} == {
        "embedding",
        "lstm_head",
        "mlp_head",
    }
    torch.testing.assert_close(mlp(), mlp.mlp_head(mlp.embedding.weight))
    # a loaded adapter keeps only the encoder's saved output
    direct = _encoder("MLP", inference=True)
    assert direct() is direct.embedding.weight and not hasattr(direct, "mlp_head")


def test_prefix_tuning_gives_a_key_and_a_value_per_layer_for_each_token() -> None:
    plain = PrefixEncoder(4, 8, num_layers=3, hidden_size=None, projection=False)
    projected = PrefixEncoder(4, 8, num_layers=3, hidden_size=16, projection=True)
    assert plain().shape == projected().shape == (4, 3 * 2 * 8)
    torch.testing.assert_close(projected(), projected.transform(projected.embedding.weight))
