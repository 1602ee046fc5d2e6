"""Tied embeddings against PEFT: which modules are tied, PEFT's warnings, and
``ensure_weight_tying`` (the head shares the embedding's adapter), with files that load both ways to
the same outputs."""

from __future__ import annotations

from typing import Any, ClassVar

import peft
import pytest
import torch
from torch import nn

import peftkit
from peftkit.surgery.tying import module_names_tied_with_embedding


class _Config:
    def __init__(self, tie_word_embeddings: bool) -> None:
        self.tie_word_embeddings = tie_word_embeddings

    def to_dict(self) -> dict[str, Any]:
        return {"tie_word_embeddings": self.tie_word_embeddings}


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(32, 32)
        self.linear = nn.Linear(32, 32, bias=False)


class TiedLM(nn.Module):
    """An embedding, a linear layer and a head tied to the embedding (transformers 4's list of tied
    keys)."""

    _tied_weights_keys: ClassVar[list[str]] = ["lm_head.weight"]

    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.model = _Inner()
        self.config = _Config(tie)
        self.lm_head = nn.Linear(32, 32, bias=False)
        if tie:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model.linear(self.model.embed_tokens(x)))  # (B, T, V)


TOKENS = torch.tensor([[1, 5, 7, 31], [3, 3, 2, 11]])


def _lm(seed: int = 0, tie: bool = True) -> TiedLM:
    torch.manual_seed(seed)
    return TiedLM(tie)


def test_tied_modules_are_read_from_the_list_and_from_transformers_5_mapping() -> None:
    model = _lm()
    assert module_names_tied_with_embedding(model) == ["lm_head"]
    model._tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # type: ignore[assignment]
    assert module_names_tied_with_embedding(model) == ["lm_head"]
    model.config.tie_word_embeddings = False  # the checkpoint unties them: nothing is tied
    assert module_names_tied_with_embedding(model) == []


@pytest.mark.parametrize("lib", [peft, peftkit], ids=["peft", "peftkit"])
def test_an_adapter_on_a_tied_head_without_ensure_weight_tying_warns(lib: Any) -> None:
    with pytest.warns(UserWarning, match="`ensure_weight_tying` is not set to True"):
        lib.get_peft_model(_lm(), lib.LoraConfig(target_modules=["linear", "lm_head"]))


def test_ensure_weight_tying_on_target_modules_shares_the_embedding_factors() -> None:
    model = peftkit.get_peft_model(
        _lm(), peftkit.LoraConfig(target_modules=["linear", "lm_head"], ensure_weight_tying=True)
    )
    embed, head = model.base_model.model.model.embed_tokens, model.base_model.model.lm_head
    assert isinstance(embed, peftkit.tuners.lora.embedding.LoraEmbedding)
    assert head.lora_A["default"].weight.data_ptr() == embed.lora_embedding_B["default"].data_ptr()
    assert head.lora_B["default"].weight.data_ptr() == embed.lora_embedding_A["default"].data_ptr()
    with torch.no_grad():  # a change to the embedding's factors is the head's change too
        embed.lora_embedding_A["default"].add_(0.5)
    torch.testing.assert_close(head.lora_B["default"].weight, embed.lora_embedding_A["default"].T)
    # as PEFT records it
    assert model.peft_config["default"].target_modules == {"linear", "model.embed_tokens"}


def test_ensure_weight_tying_on_modules_to_save_shares_one_parameter_through_training() -> None:
    config = peftkit.LoraConfig(
        target_modules=["linear"], modules_to_save=["embed_tokens"], ensure_weight_tying=True
    )
    model = peftkit.get_peft_model(_lm(), config)
    embed, head = model.base_model.model.model.embed_tokens, model.base_model.model.lm_head
    assert embed.modules_to_save["default"].weight is head.modules_to_save["default"].weight
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(TOKENS).sum().backward()
    optimizer.step()
    assert embed.modules_to_save["default"].weight is head.modules_to_save["default"].weight
    # it trained
    assert not torch.equal(embed.modules_to_save["default"].weight, embed.original_module.weight)


@pytest.mark.parametrize("how", ["target_modules", "modules_to_save"])
@pytest.mark.parametrize(
    ("writer", "reader"), [(peftkit, peft), (peft, peftkit)], ids=["to-peft", "from-peft"]
)
def test_tied_adapter_files_load_both_ways(
    writer: Any, reader: Any, how: str, tmp_path: Any
) -> None:
    fields: dict[str, Any] = (
        {"target_modules": ["linear", "lm_head"]}
        if how == "target_modules"
        else {"target_modules": ["linear"], "modules_to_save": ["embed_tokens"]}
    )
    torch.manual_seed(1)
    model = writer.get_peft_model(
        _lm(), writer.LoraConfig(ensure_weight_tying=True, init_lora_weights=False, **fields)
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # the adapter moves away from the base, tied tensors together
                p.mul_(1.5)
        expected = model(TOKENS)
        assert not torch.allclose(expected, _lm()(TOKENS))
    model.save_pretrained(tmp_path)
    loaded = reader.PeftModel.from_pretrained(_lm(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(TOKENS), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("lib", [peft, peftkit], ids=["peft", "peftkit"])
def test_ensure_weight_tying_where_nothing_is_tied_warns_and_ties_nothing(lib: Any) -> None:
    with pytest.warns(UserWarning, match="no tied modules were found in the model"):
        model = lib.get_peft_model(
            _lm(tie=False),
            lib.LoraConfig(
                target_modules=["linear", "lm_head", "embed_tokens"], ensure_weight_tying=True
            ),
        )
    embed, head = model.base_model.model.model.embed_tokens, model.base_model.model.lm_head
    assert head.lora_A["default"].weight.data_ptr() != embed.lora_embedding_B["default"].data_ptr()


def test_merging_lora_on_a_head_tied_to_the_embeddings_keeps_the_outputs() -> None:
    """Merged into the one weight they share, the head's update would change the input embeddings
    too; the head gets its own weight first, so merged equals unmerged and the config says untied
    (PEFT warns instead)."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config).eval()
    embeddings = base.model.embed_tokens.weight.detach().clone()
    with pytest.warns(UserWarning, match="ensure_weight_tying"):
        model = peftkit.get_peft_model(
            base, peftkit.LoraConfig(target_modules=["lm_head"], init_lora_weights=False)
        )
    with torch.no_grad():
        expected = model(input_ids=TOKENS).logits
    with pytest.warns(UserWarning, match="Setting `tie_word_embeddings=False`"):
        merged = model.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=TOKENS).logits, expected, rtol=0, atol=1e-5)
    # the input side is untouched
    torch.testing.assert_close(merged.model.embed_tokens.weight, embeddings)
    assert not merged.config.tie_word_embeddings
