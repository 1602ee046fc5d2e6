"""LoRA and DoRA on embedding layers against PEFT: files both ways, merged equals unmerged, scaled
embeddings."""

from __future__ import annotations

from typing import Any

import peft
import pytest
import torch
import transformers
from torch import nn

import peftkit


class EmbeddingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.lin = nn.Embedding(20, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.emb(x))


TOKENS = torch.tensor([[1, 5, 7, 19, 0], [3, 3, 2, 11, 4]])


def _dora(lib: Any, seed: int = 1) -> Any:
    torch.manual_seed(0)
    base = EmbeddingModel()
    torch.manual_seed(seed)
    return lib.get_peft_model(
        base, lib.LoraConfig(target_modules=["emb"], use_dora=True, init_lora_weights=False)
    )


def test_dora_embedding_equals_peft_for_the_same_draws() -> None:
    with torch.no_grad():
        torch.testing.assert_close(_dora(peftkit)(TOKENS), _dora(peft)(TOKENS), rtol=0, atol=1e-5)


def test_a_fresh_dora_embedding_is_the_base_model() -> None:
    torch.manual_seed(0)
    base = EmbeddingModel()
    expected = base(TOKENS).detach()
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(target_modules=["emb"], use_dora=True))
    torch.testing.assert_close(model(TOKENS), expected, rtol=0, atol=0)


def test_dora_embedding_merged_equals_unmerged_and_unmerges_back() -> None:
    model = _dora(peftkit)
    weight = model.get_base_model().emb.weight.detach().clone()
    with torch.no_grad():
        unmerged = model(TOKENS)
        model.merge_adapter()
        torch.testing.assert_close(model(TOKENS), unmerged, rtol=0, atol=1e-6)
        model.unmerge_adapter()
    torch.testing.assert_close(model.get_base_model().emb.weight, weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("writer", "reader"), [(peftkit, peft), (peft, peftkit)], ids=["to-peft", "from-peft"]
)
def test_dora_embedding_files_load_both_ways(writer: Any, reader: Any, tmp_path: Any) -> None:
    model = _dora(writer)
    with torch.no_grad():
        model.get_base_model().emb.lora_magnitude_vector  # noqa: B018 - the magnitude is saved and trained
        expected = model(TOKENS)
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = reader.PeftModel.from_pretrained(EmbeddingModel(), tmp_path)
    with torch.no_grad():  # the same tensors; each library's arithmetic rounds its own way
        torch.testing.assert_close(loaded(TOKENS), expected, rtol=0, atol=1e-6)


def _gemma() -> transformers.PreTrainedModel:
    config = transformers.Gemma3TextConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        # tied, a merge would change the head too
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return transformers.Gemma3ForCausalLM(config).eval()


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_a_scaled_embedding_scales_the_update_as_peft_does(use_dora: bool) -> None:
    """Gemma multiplies its embeddings by embed_scale; the update is scaled too, so merged equals
    unmerged and the logits equal PEFT's."""
    inputs, logits = {"input_ids": TOKENS}, {}
    for name, lib in {"peft": peft, "peftkit": peftkit}.items():
        torch.manual_seed(1)
        config = lib.LoraConfig(
            target_modules=["embed_tokens"], use_dora=use_dora, init_lora_weights=False
        )
        model = lib.get_peft_model(_gemma(), config)
        with torch.no_grad():
            logits[name] = model(**inputs).logits
            if lib is peftkit:
                model.merge_adapter()
                torch.testing.assert_close(model(**inputs).logits, logits[name], rtol=0, atol=1e-4)
    torch.testing.assert_close(logits["peftkit"], logits["peft"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dora_embedding_keeps_a_half_precision_model_in_its_dtype(dtype: torch.dtype) -> None:
    """The fp32 magnitude must not promote the embedding's output: the next layer is in half
    precision too."""
    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        EmbeddingModel().to(dtype), peftkit.LoraConfig(target_modules=["emb"], use_dora=True)
    )
    assert model(TOKENS).dtype == dtype


def test_merging_into_tied_embeddings_unties_them_and_keeps_the_output(tmp_path: Any) -> None:
    """LoRA on embed_tokens of a tied model changes the input side only; merged, the head keeps its
    weight (the config then says untied, with PEFT's warning), so the merged model's logits are the
    unmerged ones."""
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
    assert base.lm_head.weight is base.model.embed_tokens.weight
    model = peftkit.get_peft_model(
        base, peftkit.LoraConfig(target_modules=["embed_tokens"], init_lora_weights=False)
    )
    with torch.no_grad():
        expected = model(input_ids=TOKENS).logits
    with pytest.warns(UserWarning, match="Setting `tie_word_embeddings=False`"):
        merged = model.merge_and_unload()
    assert not merged.config.tie_word_embeddings
    assert merged.lm_head.weight is not merged.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=TOKENS).logits, expected, rtol=0, atol=1e-5)


def test_mixed_batch_gives_each_row_its_embedding_adapter() -> None:
    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        EmbeddingModel(), peftkit.LoraConfig(target_modules=["emb", "lin"], init_lora_weights=False)
    )
    model.add_adapter("other", peftkit.LoraConfig(target_modules=["emb"], init_lora_weights=False))
    model.eval()
    with torch.no_grad():
        mixed = model(TOKENS, adapter_names=["other", "default"])
        model.set_adapter("other")
        first = model(TOKENS[:1])
        model.set_adapter("default")
        second = model(TOKENS[1:])
    torch.testing.assert_close(mixed, torch.cat([first, second]), rtol=0, atol=1e-6)
