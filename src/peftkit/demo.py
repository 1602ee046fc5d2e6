"""The first look at peftkit on a real model: attach LoRA to SmolLM2-135M, count, generate."""

from __future__ import annotations

import time

import torch

from .config import LoraConfig
from .model import get_peft_model
from .models import load_model, load_tokenizer

__all__ = ["run_demo"]

PROMPTS = ["The capital of France is", "Write a haiku about autumn:"]


def run_demo(model_name: str = "smollm2-135m", max_new_tokens: int = 24) -> None:
    """Load the model, attach LoRA (r=8 on q/k/v/o), print the parameter report and generate greedily."""
    start = time.perf_counter()
    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name)
    print(f"loaded {model_name} in {time.perf_counter() - start:.1f}s")
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    peft_model.print_trainable_parameters()
    peft_model.eval()
    for prompt in PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = peft_model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tokenizer.pad_token_id)
        print(f"\n> {prompt}\n{tokenizer.decode(out[0][inputs['input_ids'].shape[1]:], skip_special_tokens=True)}")
