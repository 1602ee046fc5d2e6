"""Packing with prefix tuning: every packed example sees the prefix's key/values and its own earlier
tokens only, at the positions it has unpacked, so it loses, and teaches the prefix, what it does
alone."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import torch

import peftkit
from peftkit.errors import ConfigError
from peftkit.train.packing import check_packing, model_inputs
from peftkit.tuners.prompt.model import PrefixKeyValues
from tests.conftest import tiny_model
from tests.train.test_loop import job
from tests.train.test_packing import examples
from tests.train.test_packing_prompt import (
    assert_packed_loses_and_teaches_as_unpacked,
    assert_packed_run_trains_the_same,
)

N = 4  # virtual tokens
CPU = torch.device("cpu")


def prefix_model(arch: str = "llama", attention: str = "sdpa", task: str = "causal") -> Any:
    base = tiny_model(arch, task=task)
    base.set_attn_implementation(attention)
    torch.manual_seed(0)  # a random prefix at unit scale: far from zero, so a wrong mask shows
    task_type = "SEQ_2_SEQ_LM" if arch == "t5" else "CAUSAL_LM"
    return peftkit.get_peft_model(
        base, peftkit.PrefixTuningConfig(num_virtual_tokens=N, task_type=task_type)
    )


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_examples_lose_and_teach_what_they_do_unpacked(arch: str, attention: str) -> None:
    assert_packed_loses_and_teaches_as_unpacked(prefix_model(arch, attention).eval(), segments=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_each_packed_example_has_the_logits_it_has_alone(arch: str) -> None:
    batch = examples(5)
    model = prefix_model(arch).eval()
    inputs, _ = model_inputs(batch, 0, True, CPU, segments=True)
    ids, positions = inputs["input_ids"], inputs["position_ids"]
    with torch.no_grad():
        packed = model(**inputs).logits  # (B, W, V)
        seen = 0
        for row, start in (positions == 0).nonzero().tolist():
            length = int(
                (positions[row, start:] == torch.arange(positions.shape[1] - start))
                .cumprod(0)
                .sum()
            )
            segment = ids[row, start : start + length]
            match = [e for e in batch if e.input_ids == segment.tolist()]
            if not match:
                continue  # the row's padded tail
            # (T, V): the example by itself, prefix in front
            alone = model(input_ids=segment.unsqueeze(0)).logits[0]
            torch.testing.assert_close(
                packed[row, start : start + length], alone, atol=1e-4, rtol=1e-4
            )
            seen += 1
    assert seen == len(batch)


def test_a_flattened_batch_from_elsewhere_is_masked_per_example_too() -> None:
    """transformers' DataCollatorWithFlattening gives position ids that restart, no mask and no
    marker: the examples must not see each other (PEFT drops the position ids, and they would)."""
    from transformers import DataCollatorWithFlattening

    batch = examples(3)
    model = prefix_model().eval()
    flat = DataCollatorWithFlattening(return_position_ids=True)(
        [{"input_ids": e.input_ids} for e in batch]
    )
    assert flat["position_ids"].shape[0] == 1 and int((flat["position_ids"] == 0).sum()) == len(
        batch
    )
    with torch.no_grad():
        # (W, V)
        together = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"]).logits[0]
        start = 0
        for e in batch:
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]  # (T, V)
            torch.testing.assert_close(
                together[start : start + len(e.input_ids)], alone, atol=1e-4, rtol=1e-4
            )
            start += len(e.input_ids)
        # one sequence: PEFT's path, unchanged
        plain = torch.arange(flat["input_ids"].shape[1]).unsqueeze(0)
        torch.testing.assert_close(
            model(input_ids=flat["input_ids"], position_ids=plain).logits,
            model(input_ids=flat["input_ids"]).logits,
        )


def test_a_mask_that_lets_examples_meet_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check before training compares packed against apart; it must fail if the mask were wrong."""
    model = prefix_model().eval()
    data = examples(4)
    check_packing(model, model.get_base_model(), data, 0, CPU, contextlib.nullcontext(), 0, True)
    # no mask per example
    monkeypatch.setattr(PrefixKeyValues, "_segments", lambda self, base, inputs: inputs)
    with pytest.raises(ConfigError, match="packed examples attend to each other"):
        check_packing(
            model, model.get_base_model(), data, 0, CPU, contextlib.nullcontext(), 0, True
        )


def test_training_prefix_packed_equals_training_it_unpacked(tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    assert_packed_run_trains_the_same(tmp_path, chars, "prefix_tuning")


def test_prefix_refuses_slots_and_what_it_cannot_mask() -> None:
    model = prefix_model()
    inputs, _ = model_inputs(examples(3), 0, True, CPU, reserve=N)
    with pytest.raises(ConfigError, match="prefix tuning cannot fill packed slots"):
        model(**inputs)
    inputs, _ = model_inputs(examples(3), 0, True, CPU, segments=True)
    model.get_base_model().config._attn_implementation = "flash_attention_2"  # takes no 4D mask
    with pytest.raises(ConfigError, match="needs sdpa or eager attention, not flash_attention_2"):
        model(**inputs)
    model.get_base_model().config._attn_implementation = "sdpa"
    with pytest.raises(ConfigError, match="packed_segments=True needs a packed batch"):
        model(
            input_ids=inputs["input_ids"],
            attention_mask=torch.ones_like(inputs["input_ids"]),
            packed_segments=True,
        )
    t5 = prefix_model("t5")
    inputs, _ = model_inputs(examples(3), 0, True, CPU, segments=True)
    with pytest.raises(ConfigError, match="needs a causal LM, not SEQ_2_SEQ_LM"):
        t5(**inputs, decoder_input_ids=inputs["input_ids"])


def test_gradient_checkpointing_is_refused_with_a_reason(tmp_path: Path) -> None:
    """transformers drops the cache in checkpointed layers, so the prefix would be lost (here: a
    shape error)."""
    with pytest.raises(
        ConfigError, match="prefix tuning does not work with gradient checkpointing"
    ):
        job(tmp_path, method="prefix_tuning", gradient_checkpointing=True)
    model = prefix_model()
    model.get_base_model().gradient_checkpointing_enable()
    model.train()
    inputs, _ = model_inputs(examples(3), 0, True, CPU, segments=True)
    with pytest.raises(ConfigError, match="turn gradient checkpointing off"):
        model(**inputs)
    # no backward to replay: transformers keeps the cache, so the prefix works
    with torch.no_grad():
        model(**inputs)


def test_a_sliding_window_model_packs_only_while_every_example_fits_its_window() -> None:
    """Unpacked, a sliding window hides the prefix from positions past it; the packed mask shows it
    in full, so packing is exact only while prefix + example fit the window, and refused past it."""
    import transformers

    config = transformers.MistralConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sliding_window=64,
    )
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(config)
    model = peftkit.get_peft_model(
        base, peftkit.PrefixTuningConfig(num_virtual_tokens=N, task_type="CAUSAL_LM")
    )
    # every example + prefix within 64
    assert_packed_loses_and_teaches_as_unpacked(model.eval(), segments=True)
    longest = max(len(e.input_ids) for e in examples(7))
    # the longest example and the prefix just fit: still exact
    base.config.sliding_window = longest + N
    assert_packed_loses_and_teaches_as_unpacked(model, segments=True)
    base.config.sliding_window = longest + N - 1  # now they do not
    inputs, _ = model_inputs(examples(7), 0, True, CPU, segments=True)
    with pytest.raises(ConfigError, match=f"sliding window of {longest + N - 1} positions"):
        model(**inputs)
    # before training, from every training example
    with pytest.raises(ConfigError, match="sliding window"):
        check_packing(model, base, examples(7), 0, CPU, contextlib.nullcontext(), 0, True)
