"""Which of peftkit's adapters vLLM (``--enable-lora``) would load: its adapter_config.json rules."""

from __future__ import annotations

import pytest

from peftkit import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig
from peftkit.serve.vllm import vllm_problems


def test_a_plain_lora_adapter_is_accepted_rslora_included() -> None:
    assert vllm_problems(LoraConfig(r=8, target_modules=["q_proj", "v_proj"])) == []
    assert vllm_problems(LoraConfig(r=16, use_rslora=True, target_modules="all-linear")) == []


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (LoraConfig(r=8, use_dora=True), "does not yet support DoRA"),
        (LoraConfig(r=8, modules_to_save=["lm_head"]), "modules_to_save being None"),
        (LoraConfig(r=8, bias="lora_only"), "Adapter bias is not supported"),
        (LoraConfig(r=64), "greater than max_lora_rank 16 (start vLLM with --max-lora-rank 64)"),
        (
            LoraConfig(r=8, rank_pattern={"q_proj": 32}),
            "LoRA rank 32 is greater than max_lora_rank",
        ),
        (LoraConfig(r=8, init_lora_weights="pissa"), "path_initial_model_for_weight_conversion"),
        (IA3Config(), "LoRA adapters only, not IA3"),
        (PromptTuningConfig(num_virtual_tokens=4), "LoRA adapters only, not PROMPT_TUNING"),
        (PrefixTuningConfig(num_virtual_tokens=4), "LoRA adapters only, not PREFIX_TUNING"),
    ],
)
def test_what_vllm_refuses(config: object, words: str) -> None:
    problems = vllm_problems(config)  # type: ignore[arg-type]
    assert len(problems) == 1 and words in problems[0]


def test_a_higher_rank_limit_accepts_the_rank() -> None:
    assert vllm_problems(LoraConfig(r=64), max_lora_rank=64) == []
