"""Prompt tuning, p-tuning and prefix tuning adapters round-trip with PEFT, identical logits both
ways."""

from __future__ import annotations

import peft
import pytest
import torch

import peftkit

from ..conftest import model_inputs, outputs, tiny_model

CASES = [
    (arch, method)
    for arch in ["llama", "gpt2", "bloom", "bert", "t5"]
    for method in ["prompt", "p_tuning", "prefix"]
    # PEFT refuses prefix tuning on BERT (no KV cache)
    if not (arch == "bert" and method == "prefix")
]
TASKS = {"bert": "SEQ_CLS", "t5": "SEQ_2_SEQ_LM"}


def _config(lib, method: str, arch: str):
    task = TASKS.get(arch, "CAUSAL_LM")
    if method == "prompt":
        return lib.PromptTuningConfig(num_virtual_tokens=4, task_type=task)
    if method == "p_tuning":
        return lib.PromptEncoderConfig(num_virtual_tokens=4, task_type=task, encoder_hidden_size=16)
    return lib.PrefixTuningConfig(num_virtual_tokens=4, task_type=task)


@pytest.mark.parametrize(("arch", "method"), CASES)
def test_peftkit_to_peft_and_back(arch, method, tmp_path):
    inputs = model_inputs(arch)
    torch.manual_seed(0)
    ours = peftkit.get_peft_model(tiny_model(arch), _config(peftkit, method, arch))
    ours.eval()
    expected = outputs(ours, inputs)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "ours")
    torch.testing.assert_close(outputs(theirs, inputs), expected, atol=1e-5, rtol=1e-5)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "theirs")
    torch.testing.assert_close(outputs(back, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("arch", "method"), CASES)
def test_peft_to_peftkit(arch, method, tmp_path):
    inputs = model_inputs(arch)
    torch.manual_seed(0)
    theirs = peft.get_peft_model(tiny_model(arch), _config(peft, method, arch))
    theirs.eval()
    expected = outputs(theirs, inputs)
    theirs.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(tiny_model(arch), tmp_path)
    torch.testing.assert_close(outputs(ours, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("arch", "method"), CASES)
def test_same_trainable_count_as_peft(arch, method):
    ours = peftkit.get_peft_model(tiny_model(arch), _config(peftkit, method, arch))
    theirs = peft.get_peft_model(tiny_model(arch), _config(peft, method, arch))
    assert ours.get_nb_trainable_parameters()[0] == theirs.get_nb_trainable_parameters()[0]


def _greedy_through_forward(
    model, ids: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding one token at a time through ``model``'s forward, no cache: the reference.

    Returns the sequence ``(1, T + steps)`` and each step's next-token logits ``(steps, V)``.
    """
    seq, scores = ids, []
    for _ in range(steps):
        with torch.no_grad():
            # (1, V)
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1]
        scores.append(logits[0])
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq, torch.stack(scores)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bloom"])
@pytest.mark.parametrize("method", ["prompt", "p_tuning", "prefix"])
def test_generation_of_a_peft_adapter_equals_greedy_decoding_through_peft_forward(
    arch, method, tmp_path
):
    # PEFT's forward is the reference, not PEFT's generate: with transformers 5, PEFT 0.21's
    # generate ignores a prefix on Llama/GPT-2 (its tokens are the base model's) and re-feeds the
    # prompt at every later prompt-tuning step, so the two libraries' generate outputs differ there
    # while their forwards agree.
    torch.manual_seed(0)
    theirs = peft.get_peft_model(tiny_model(arch), _config(peft, method, arch)).eval()
    with torch.no_grad():
        for p in theirs.prompt_encoder["default"].parameters():
            p.normal_(std=0.5)
    theirs.save_pretrained(tmp_path)
    ids = model_inputs(arch)["input_ids"][1:]  # (1, T)
    expected, expected_scores = _greedy_through_forward(theirs, ids, 6)
    _, base_scores = _greedy_through_forward(tiny_model(arch), ids, 1)
    # the prompt changes the logits
    assert not torch.allclose(expected_scores[:1], base_scores, atol=1e-3)
    ours = peftkit.PeftModel.from_pretrained(tiny_model(arch), tmp_path)
    with torch.no_grad():
        got = ours.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False
        )
        as_dict = ours.generate(
            input_ids=ids,
            max_new_tokens=6,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
        )
    steps = got.shape[1] - ids.shape[1]  # fewer than 6 where the end-of-text token came first
    assert steps >= 3 and torch.equal(got, expected[:, : got.shape[1]])
    assert torch.equal(as_dict.sequences, got)
    torch.testing.assert_close(
        torch.cat(as_dict.logits), expected_scores[:steps], atol=1e-4, rtol=1e-4
    )


def test_prefix_tuning_with_explicit_position_ids_equals_peft() -> None:
    """RoPE models: explicit position_ids are the text's own; the prefix's positions come first, as
    in PEFT."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    ids, positions = torch.tensor([[1, 5, 7]]), torch.arange(3).unsqueeze(0)
    logits = {}
    for lib in (peft, peftkit):
        torch.manual_seed(0)
        base = transformers.LlamaForCausalLM(config).eval()
        torch.manual_seed(1)
        model = lib.get_peft_model(
            base, lib.PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")
        ).eval()
        with torch.no_grad():
            logits[lib.__name__] = model(input_ids=ids, position_ids=positions).logits
            torch.testing.assert_close(
                model(input_ids=ids).logits, logits[lib.__name__], rtol=0, atol=1e-6
            )
    torch.testing.assert_close(logits["peftkit"], logits["peft"], rtol=0, atol=1e-6)
