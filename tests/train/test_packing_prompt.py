"""Packing with prompt tuning and p-tuning: the virtual tokens fill slots in front of each packed
example, and each example loses, and teaches the prompt, what it does in its own unpacked row with
the tokens in front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import peftkit
from peftkit import train
from peftkit.errors import ConfigError
from peftkit.train.data import IGNORE_INDEX, Example, pack
from peftkit.train.evaluate import row_losses
from peftkit.train.packing import model_inputs
from tests.conftest import tiny_model
from tests.train.test_loop import adapter_tensors, job
from tests.train.test_packing import examples, varied_csv

N = 4  # virtual tokens


def prompt_model(method: str, arch: str = "llama") -> Any:
    config: Any
    if method == "prompt_tuning":
        config = peftkit.PromptTuningConfig(num_virtual_tokens=N, task_type="CAUSAL_LM")
    else:
        config = peftkit.PromptEncoderConfig(
            num_virtual_tokens=N, encoder_hidden_size=16, task_type="CAUSAL_LM"
        )
    torch.manual_seed(0)
    return peftkit.get_peft_model(tiny_model(arch), config)


def test_pack_reserves_slots_in_front_of_every_example() -> None:
    batch = examples()
    packed = pack(batch, pad_id=0, reserve=N)
    positions, labels = packed["position_ids"], packed["labels"]
    starts = (positions == 0).nonzero().tolist()
    for row, col in starts:  # every segment, the tail's included, opens with N label-free pad slots
        width = min(N, positions.shape[1] - col)
        assert packed["input_ids"][row, col : col + width].eq(0).all()
        assert labels[row, col : col + width].eq(IGNORE_INDEX).all()
    # every label survives but each example's first, which the unpacked loss does not score either
    targets = sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in batch)
    assert int((labels != IGNORE_INDEX).sum()) == targets
    assert packed["input_ids"].shape[1] == max(len(e.input_ids) for e in batch) + N


def assert_packed_loses_and_teaches_as_unpacked(model: Any, **packing: Any) -> None:
    """Seven examples, every token a target (most sensitive), in ``model`` (eval: no dropout): the
    summed loss and the trainable parameters' gradients, packed (``packing``: model_inputs' reserve
    or segments) and not."""
    batch = [Example(e.input_ids, list(e.input_ids)) for e in examples(7)]
    trained = [p for p in model.parameters() if p.requires_grad]
    sums, grads = [], []
    for packed in (False, True):
        inputs, labels = model_inputs(batch, 0, packed, torch.device("cpu"), **packing)
        if packed:
            assert inputs["input_ids"].shape[0] < len(batch)  # rows really hold several examples
        model.zero_grad()
        total = row_losses(model, inputs, labels)[0].sum()
        total.backward()
        sums.append(total.detach())
        grads.append([p.grad.clone() for p in trained])
    torch.testing.assert_close(sums[1], sums[0], atol=1e-4, rtol=1e-5)
    for with_packing, plain in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(with_packing, plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_packed_examples_lose_and_teach_what_they_do_unpacked(method: str, arch: str) -> None:
    assert_packed_loses_and_teaches_as_unpacked(prompt_model(method, arch).eval(), reserve=N)


def test_slots_that_do_not_match_the_prompt_are_refused() -> None:
    model = prompt_model("prompt_tuning")
    inputs, _ = model_inputs(examples(3), 0, True, torch.device("cpu"), reserve=N + 1)
    with pytest.raises(ConfigError, match=r"one slot per virtual token \(4\).*reserve=4"):
        model(**inputs)


def assert_packed_run_trains_the_same(tmp_path: Path, chars: Any, method: str) -> None:
    """A run with ``train.packing: auto`` packs (said in its banner) and trains the adapter a run of
    whole, unpacked batches trains."""
    runs, lines = {}, {}
    for packing in ("false", "auto"):
        log: list[str] = []
        config = job(
            tmp_path,
            f"{method}-{packing}",
            method=method,
            packing=packing,
            epochs=1,
            split_by_length=False,
        )
        config.data.path = str(varied_csv(tmp_path / "varied.csv"))
        runs[packing] = train(config, model=tiny_model("llama"), tokenizer=chars, log=log.append)
        lines[packing] = next(line for line in log if line.startswith("defaults: "))
    assert f"packing: on ({method} on this model packs exactly" in lines["auto"]
    plain, packed = (adapter_tensors(tmp_path / f"{method}-{p}") for p in ("false", "auto"))
    assert plain.keys() == packed.keys()
    for name in plain:
        torch.testing.assert_close(packed[name], plain[name], atol=1e-5, rtol=1e-4)
    assert runs["auto"].after is not None and runs["false"].after is not None
    assert runs["auto"].after.loss == pytest.approx(runs["false"].after.loss, rel=1e-5)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_training_a_prompt_packed_equals_training_it_unpacked(
    tmp_path: Path, chars, method: str
) -> None:  # type: ignore[no-untyped-def]
    assert_packed_run_trains_the_same(tmp_path, chars, method)


def test_slots_outside_a_causal_lm_are_refused() -> None:
    model = peftkit.get_peft_model(
        tiny_model("llama", task="seq_cls"),
        peftkit.PromptTuningConfig(num_virtual_tokens=N, task_type="SEQ_CLS"),
    )
    inputs, _ = model_inputs(examples(3), 0, True, torch.device("cpu"), reserve=N)
    with pytest.raises(ConfigError, match="packed virtual tokens need a causal LM, not SEQ_CLS"):
        model(**inputs)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_a_flattened_batch_from_elsewhere_is_refused(method: str) -> None:
    """DataCollatorWithFlattening's rows would get the virtual tokens in front of their first
    example only."""
    from transformers import DataCollatorWithFlattening

    flat = DataCollatorWithFlattening(return_position_ids=True)(
        [{"input_ids": e.input_ids} for e in examples(3)]
    )
    model = prompt_model(method)
    with pytest.raises(ConfigError, match="this batch is flattened"):
        model(input_ids=flat["input_ids"], position_ids=flat["position_ids"])
    model(
        input_ids=flat["input_ids"],
        position_ids=torch.arange(flat["input_ids"].shape[1]).unsqueeze(0),
    )  # one row
