"""The real packaged SmolLM2-135M served with a LoRA adapter: chat through its own template, answers
as alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch

from peftkit import LoraConfig, PeftModel, get_peft_model
from peftkit.integrations.models import load_model, load_tokenizer
from peftkit.serve import ServeConfig, build_engine

from .conftest import Server

pytestmark = pytest.mark.slow
QUESTIONS = ["What is 2 + 2?", "Name a color.", "Say hello in French."]


def test_smollm2_with_a_lora_adapter_answers_as_generate_does(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = get_peft_model(
        load_model("smollm2-135m"),
        LoraConfig(r=8, init_lora_weights=False, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad and param.dim() == 2 and param.shape[1] == 8:  # B: (out, r)
                param.mul_(0.5)
    model.save_pretrained(tmp_path / "demo")
    engine = build_engine(
        ServeConfig(model="smollm2-135m", adapters={"demo": str(tmp_path / "demo")}), log=print
    )
    with Server(engine) as server:
        client = openai.OpenAI(
            base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300
        )

        def ask(job: tuple[str, str]) -> str:
            name, question = job
            reply = client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": question}],
                max_tokens=16,
                temperature=0,
            )
            return str(reply.choices[0].message.content)

        jobs = [(name, q) for q in QUESTIONS for name in ("smollm2-135m", "demo")]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(ask, jobs))
    tokenizer = load_tokenizer("smollm2-135m")
    base = load_model("smollm2-135m")
    tuned = PeftModel.from_pretrained(load_model("smollm2-135m"), tmp_path / "demo").eval()
    expected = []
    for name, question in jobs:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        with torch.no_grad():
            out = (base if name == "smollm2-135m" else tuned).generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=16,
                do_sample=False,
            )
        expected.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    assert answers == expected
    assert answers[0::2] != answers[1::2]  # the adapter changes what the model says
