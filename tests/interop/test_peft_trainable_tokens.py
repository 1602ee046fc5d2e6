"""Trainable tokens against PEFT: the same rows train, the same file (only the chosen rows, under
PEFT's key) loads both ways with equal logits, a tied head sees the trained rows, merge and unmerge
restore the embedding exactly, a fresh adapter and a disabled one equal the base model, and only
the chosen rows change in training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import safetensors.torch
import torch
import transformers

import peftkit
from peftkit.tuners.trainable_tokens import TrainableTokensLayer
from tests.conftest import model_inputs, outputs, tiny_model

ROWS = [1, 3, 5, 40]


def _tied() -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _model(lib: Any, base: Any = None, **kwargs: Any) -> Any:
    base = tiny_model("llama") if base is None else base
    torch.manual_seed(1)
    return lib.get_peft_model(
        base, lib.TrainableTokensConfig(token_indices=ROWS, init_weights=False, **kwargs)
    )


TOKENS = torch.tensor([[1, 2, 3, 4, 5, 40, 7]])


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied-head"])
def test_trainable_tokens_equal_peft_and_files_load_both_ways(tied: bool, tmp_path: Path) -> None:
    make = _tied if tied else (lambda: tiny_model("llama"))
    ours, theirs = _model(peftkit, make()), _model(peft, make())
    with torch.no_grad():
        expected = theirs(input_ids=TOKENS).logits
        torch.testing.assert_close(ours(input_ids=TOKENS).logits, expected, rtol=0, atol=0)
        assert not torch.allclose(expected, make()(input_ids=TOKENS).logits)
    for writer, reader in ((ours, peft), (theirs, peftkit)):
        folder = tmp_path / type(writer).__module__.split(".")[0]
        writer.save_pretrained(folder)
        keys = safetensors.torch.load_file(folder / "adapter_model.safetensors").keys()
        # PEFT writes the tied head's key too (the same rows)
        expected_keys = {"base_model.model.model.embed_tokens.trainable_tokens_delta"}
        expected_keys |= {"base_model.model.lm_head.trainable_tokens_delta"} if tied else set()
        assert set(keys) == expected_keys
        loaded = reader.PeftModel.from_pretrained(make(), folder)
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=TOKENS).logits, expected, rtol=0, atol=0)
    ours_config = peftkit.PeftConfig.from_pretrained(tmp_path / "peftkit")
    assert ours_config.target_modules == "model.embed_tokens"
    if tied:  # the head uses the same rows, held once
        head = ours.get_base_model().lm_head
        assert (
            isinstance(head, TrainableTokensLayer)
            and head.tied_to is ours.get_base_model().model.embed_tokens
        )


def test_fresh_disabled_merged_and_unmerged() -> None:
    inputs = model_inputs("llama")
    base = tiny_model("llama")
    reference = outputs(base, inputs)
    fresh = peftkit.get_peft_model(
        tiny_model("llama"), peftkit.TrainableTokensConfig(token_indices=ROWS)
    )
    torch.testing.assert_close(outputs(fresh, inputs), reference, rtol=0, atol=0)
    model = _model(peftkit)
    embedding = model.get_base_model().model.embed_tokens
    weight = embedding.weight.detach().clone()
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, inputs), reference, rtol=0, atol=0)
    expected = outputs(model, inputs)
    model.merge_adapter()
    torch.testing.assert_close(outputs(model, inputs), expected, rtol=0, atol=0)
    model.unmerge_adapter()
    torch.testing.assert_close(embedding.weight, weight, rtol=0, atol=0)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, TrainableTokensLayer) for m in merged.modules())
    torch.testing.assert_close(outputs(merged, inputs), expected, rtol=0, atol=0)


def test_only_the_chosen_rows_train() -> None:
    model = _model(peftkit)
    trainable = [(n, p.shape) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [
        ("base_model.model.model.embed_tokens.trainable_tokens_delta.default", (4, 32))
    ]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    before = model.get_base_model().model.embed_tokens.weight.detach().clone()
    rows = model.get_base_model().model.embed_tokens.rows("default").detach().clone()
    model(input_ids=TOKENS, labels=TOKENS).loss.backward()
    optimizer.step()
    after_rows = model.get_base_model().model.embed_tokens.rows("default")
    assert not torch.equal(after_rows, rows)
    torch.testing.assert_close(
        model.get_base_model().model.embed_tokens.weight, before, rtol=0, atol=0
    )


def test_bad_token_indices_are_refused() -> None:
    with pytest.raises(peftkit.ConfigError, match="token_indices"):
        peftkit.TrainableTokensConfig(token_indices=[1, -2, "x"])  # type: ignore[list-item]


def _lora_tokens(lib: Any, base: Any, indices: Any) -> Any:
    torch.manual_seed(1)
    config = lib.LoraConfig(
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        trainable_token_indices=indices,
    )
    model = lib.get_peft_model(base, config)
    with torch.no_grad():  # moved rows, so the files carry something to compare
        for name, param in model.named_parameters():
            if "trainable_tokens_delta" in name:
                param.add_(torch.randn_like(param))
    return model


@pytest.mark.parametrize(
    ("tied", "indices"),
    [(False, ROWS), (True, ROWS), (False, {"embed_tokens": ROWS})],
    ids=["list", "list-tied-head", "by-layer"],
)
def test_lora_with_trainable_token_indices_equals_peft_both_ways(
    tied: bool, indices: Any, tmp_path: Path
) -> None:
    make = _tied if tied else (lambda: tiny_model("llama"))
    torch.manual_seed(7)
    ours = _lora_tokens(peftkit, make(), indices)
    torch.manual_seed(7)
    theirs = _lora_tokens(peft, make(), indices)
    with torch.no_grad():
        expected = theirs(input_ids=TOKENS).logits
        torch.testing.assert_close(ours(input_ids=TOKENS).logits, expected, rtol=0, atol=0)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert any("trainable_tokens_delta" in n for n in trainable)
    assert all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)
    key_sets = []
    for writer, reader in ((ours, peft), (theirs, peftkit)):
        folder = tmp_path / type(writer).__module__.split(".")[0]
        writer.save_pretrained(folder)
        keys = set(safetensors.torch.load_file(folder / "adapter_model.safetensors"))
        key_sets.append(keys)
        assert "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta" in keys
        assert not any(k.endswith("embed_tokens.weight") for k in keys)  # rows only, no matrix
        loaded = reader.PeftModel.from_pretrained(make(), folder)
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=TOKENS).logits, expected, rtol=0, atol=0)
    assert key_sets[0] == key_sets[1]


def test_lora_token_rows_merge_unload_and_refusals() -> None:
    model = _lora_tokens(peftkit, tiny_model("llama"), ROWS)
    with torch.no_grad():
        expected = model(input_ids=TOKENS).logits
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=TOKENS).logits, expected, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, TrainableTokensLayer) for m in merged.modules())
    with pytest.raises(peftkit.ConfigError, match="already marked to be trained fully"):
        peftkit.get_peft_model(
            tiny_model("llama"),
            peftkit.LoraConfig(
                target_modules=["q_proj"],
                modules_to_save=["embed_tokens"],
                trainable_token_indices={"embed_tokens": [1]},
            ),
        )
    with pytest.raises(peftkit.ConfigError, match="trainable_token_indices="):
        peftkit.LoraConfig(trainable_token_indices=[1, -1])
