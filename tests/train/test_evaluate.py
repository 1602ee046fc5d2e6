"""Evaluation numbers against hand-made cases and independent computations."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from peftkit import (
    LoraConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from peftkit.train.data import IGNORE_INDEX, Example, collate
from peftkit.train.evaluate import (
    _positions_in_front,
    classification_scores,
    evaluate,
    target_loss,
    token_loss,
)
from tests.conftest import tiny_model


class FixedLogits(nn.Module):
    """A 'model' whose next-token distribution depends only on the last input token: row ``t`` of a
    table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)


def test_accuracy_on_a_hand_made_case() -> None:
    # Vocabulary of 4; after token 0 the model prefers token 2 ("yes"), after token 1 it prefers 3
    # ("no").
    table = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 2.0], [0.0] * 4, [0.0] * 4])
    examples = [
        Example(
            [1, 0, 2], [IGNORE_INDEX, IGNORE_INDEX, 2], prompt_ids=[1, 0], label_index=0
        ),  # right
        Example(
            [0, 1, 3], [IGNORE_INDEX, IGNORE_INDEX, 3], prompt_ids=[0, 1], label_index=1
        ),  # right
        Example(
            [0, 0, 3], [IGNORE_INDEX, IGNORE_INDEX, 3], prompt_ids=[0, 0], label_index=1
        ),  # wrong
        Example([1, 1, 2, 2], [IGNORE_INDEX] * 3 + [2], prompt_ids=[1, 1, 2], label_index=0),
    ]  # tie -> 0
    metrics = evaluate(
        FixedLogits(table), examples, pad_id=0, batch_size=3, candidate_ids=[[2], [3]]
    )
    assert metrics.predictions == [0, 1, 0, 0]
    assert metrics.accuracy == pytest.approx(3 / 4)
    # Loss by hand: log-softmax of [0, 0, 2, 0] at the target (2) is 2 - log(3 + e^2); three such
    # targets, and the last example's target follows token 2, a uniform row: log(1/4).
    good = 2 - math.log(3 + math.e**2)
    bad = 0 - math.log(3 + math.e**2)
    expected = -(good + good + bad + math.log(1 / 4)) / 4
    assert metrics.loss == pytest.approx(expected)
    assert metrics.perplexity == pytest.approx(math.exp(expected))


def test_label_scores_match_a_plain_log_softmax() -> None:
    model = tiny_model("llama")
    prompts = [[5, 6, 7], [9, 10], [11, 12, 13, 14]]
    candidates = [[20], [21, 22], [23, 24, 25]]
    scores = classification_scores(model, prompts, candidates, pad_id=0, batch_size=2)
    for i, prompt in enumerate(prompts):
        for k, cand in enumerate(candidates):
            seq = torch.tensor([prompt + cand])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=seq).logits[0], dim=-1)
            expected = sum(float(logprobs[len(prompt) - 1 + j, tok]) for j, tok in enumerate(cand))
            assert float(scores[i, k]) == pytest.approx(expected, abs=1e-4)


def test_single_token_fast_path_equals_the_general_path() -> None:
    model = tiny_model("llama")
    prompts = [[5, 6, 7], [9, 10], [11, 12, 13, 14], [3]]
    fast = classification_scores(model, prompts, [[20], [21]], pad_id=0, batch_size=3)
    # A third, two-token candidate forces the general path; its first two columns must agree.
    general = classification_scores(model, prompts, [[20], [21], [22, 23]], pad_id=0, batch_size=3)
    torch.testing.assert_close(fast, general[:, :2], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "config",
    [
        LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False),
        PromptTuningConfig(num_virtual_tokens=3),
        PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
        PromptEncoderConfig(num_virtual_tokens=3, task_type="CAUSAL_LM", encoder_hidden_size=8),
        PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
    ],
    ids=["lora", "prompt", "prompt-causal", "p-tuning", "prefix"],
)
def test_target_loss_equals_the_full_logits_loss(config: object) -> None:
    model = get_peft_model(tiny_model("llama"), config)  # type: ignore[arg-type]
    batch = collate(
        [Example([4, 5, 6, 7, 8], [IGNORE_INDEX] * 3 + [7, 8]), Example([4, 9], [IGNORE_INDEX, 9])],
        0,
    )
    labels = batch.pop("labels")
    with torch.no_grad():
        fast, n_fast = target_loss(model, batch, labels)
        full, n_full = token_loss(model(**batch).logits, labels)
    assert n_fast == n_full == 3
    torch.testing.assert_close(fast, full)
    # the LM head really ran on the target positions only, shifted past any virtual tokens
    virtual = 3 if isinstance(config, PromptTuningConfig | PromptEncoderConfig) else 0
    assert _positions_in_front(model) == virtual


def test_single_token_scores_skip_the_virtual_tokens() -> None:
    model = get_peft_model(
        tiny_model("llama"), PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")
    )
    prompts = [[5, 6, 7], [9, 10], [11, 12, 13, 14]]
    scores = classification_scores(model, prompts, [[20], [21]], pad_id=0, batch_size=3)
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            logprobs = torch.log_softmax(
                model(input_ids=torch.tensor([prompt])).logits[0, -1], dim=-1
            )
        torch.testing.assert_close(scores[i], logprobs[[20, 21]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False),
        PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
    ],
    ids=["lora", "prompt-causal"],
)
def test_classification_runs_each_example_once_with_the_two_pass_numbers(config: object) -> None:
    model = get_peft_model(tiny_model("llama"), config)  # type: ignore[arg-type]
    prompts = [[5, 6, 7], [9, 10], [11, 12, 13, 14], [3, 4]]
    answers = [20, 21, 20, 21]
    examples = [
        Example([*p, a], [IGNORE_INDEX] * len(p) + [a], prompt_ids=p, label_index=[20, 21].index(a))
        for p, a in zip(prompts, answers, strict=True)
    ]
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    metrics = evaluate(model, examples, pad_id=0, batch_size=3, candidate_ids=[[20], [21]])
    # two batches, one forward pass each: the loss pass also scores the labels
    assert len(calls) == 2
    expected_scores = classification_scores(model, prompts, [[20], [21]], pad_id=0, batch_size=3)
    assert metrics.predictions == expected_scores.argmax(dim=1).tolist()
    losses, count = 0.0, 0
    for e in examples:  # the loss, one example at a time
        batch = collate([e], 0)
        labels = batch.pop("labels")
        with torch.no_grad():
            total, n = token_loss(model(**batch).logits, labels)
        losses, count = losses + float(total), count + n
    assert metrics.loss == pytest.approx(losses / count, abs=1e-5)


PROMPT_ADAPTERS = {
    "prefix": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    "prompt": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    "ptuning": lambda: PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16
    ),
}


@pytest.mark.parametrize(
    "arch",
    ["llama", "gpt2", "llama-lora", "llama-prefix", "gpt2-prefix", "llama-prompt", "llama-ptuning"],
)
def test_multi_token_label_words_score_as_each_sequence_alone(arch):
    """Every scoring path (prompts left-padded with each label word continuing from their cache; or
    one pass per word for the prompt methods) against each prompt + word run alone, unpadded, with a
    plain log-softmax. Prefix tuning once took the cached path and scored wrong: its forward drops
    position_ids, so left padding shifted the rows' positions (the predictions on ETHOS moved by up
    to 12 points)."""
    from peftkit.train.evaluate import classification_scores

    torch.manual_seed(3)
    name, _, method = arch.partition("-")
    model = tiny_model(name)
    if method == "lora":
        model = get_peft_model(
            model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
    elif method:
        model = get_peft_model(model, PROMPT_ADAPTERS[method]())
        for p in model.parameters():
            if p.requires_grad:  # a prompt that moves the scores, so a wrong position or mask shows
                torch.nn.init.normal_(p, std=0.5)
    if method in ("", "lora"):
        assert _positions_in_front(model) == 0  # the cached path, not the one pass per word
    prompts = [torch.randint(3, 900, (n,)).tolist() for n in (5, 9, 2, 7, 9)]
    candidates = [[11, 12], [13], [14, 15, 16]]
    expected = torch.zeros(len(prompts), len(candidates))
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            for k, cand in enumerate(candidates):
                ids = torch.tensor([prompt + cand])
                # (T, V): virtual tokens dropped
                logits = model(input_ids=ids).logits[0, -ids.shape[1] :]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                expected[i, k] = sum(logprobs[len(prompt) - 1 + j, t] for j, t in enumerate(cand))
        got = classification_scores(model, prompts, candidates, pad_id=0, batch_size=3)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_the_lm_head_reads_a_dense_input_when_label_words_score_from_the_cache() -> None:
    """``logits_to_keep=1`` hands the head a strided (B, 1, C) slice, and PyTorch's CPU linear then
    copies the whole head once per row (over a second per batch for SmolLM2 in bf16). No timing
    here: the input's layout."""
    torch.manual_seed(3)
    model = tiny_model("llama")
    seen: list[tuple[tuple[int, ...], bool]] = []
    model.lm_head.register_forward_pre_hook(
        lambda _, args: seen.append((tuple(args[0].shape), args[0].is_contiguous()))
    )
    prompts = [torch.randint(3, 900, (n,)).tolist() for n in (5, 9, 2)]
    with torch.no_grad():
        classification_scores(model, prompts, [[11, 12], [13]], pad_id=0, batch_size=3)
    assert seen and all(dense for _, dense in seen), seen
    # the prompts' pass: the last position only
    assert seen[0][0] == (3, 1, model.config.hidden_size)
