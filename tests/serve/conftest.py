"""A tiny Llama with adapters of every method, saved as folders, and a server on 127.0.0.1 to call."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
import uvicorn

from peftkit import (
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from peftkit.serve import AdapterRegistry, Engine, create_app

from ..conftest import char_tokenizer

MAX_TOKENS = 12

ADAPTERS = {
    "lora-a": LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    "lora-b": LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    ),
    "head": LoraConfig(
        r=2, target_modules=["v_proj"], modules_to_save=["lm_head"], init_lora_weights=False
    ),
    "prompt": PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    "prefix": PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
    # no LoRA layer
    "ia3": IA3Config(target_modules=["up_proj", "down_proj"], feedforward_modules=["down_proj"]),
    "dora": LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], use_dora=True, init_lora_weights=False
    ),
}


def base_model(folder: Path) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


@dataclass
class Models:
    """The saved base model and adapters, and what each gives for a prompt generated alone."""

    base: Path
    adapters: dict[str, Path]

    def alone(
        self, adapter: str | None, prompt: str | list[int], max_tokens: int = MAX_TOKENS
    ) -> str:
        """Greedy text from ``generate`` with this adapter only: the reference each served answer
        must equal."""
        tokenizer = char_tokenizer()
        model = base_model(self.base)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, self.adapters[adapter]).eval()
        if isinstance(prompt, str):
            prompt = tokenizer(prompt)["input_ids"]
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("served")
    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    adapters = {}
    for seed, (name, adapter) in enumerate(ADAPTERS.items(), start=1):
        torch.manual_seed(seed)
        model = get_peft_model(base_model(root / "base"), adapter)
        # every adapter changes the output, so a row through the wrong one shows
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(torch.randn_like(param) * 0.5)
        model.save_pretrained(root / name)
        adapters[name] = root / name
    return Models(root / "base", adapters)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, engine: Engine, api_key: str | None = None) -> None:
        self.engine, self.port = engine, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(engine, api_key), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.engine.start()
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.engine.stop()


def make_engine(
    models: Models, names: list[str] | None = None, max_loaded: int = 8, **options: int
) -> Engine:
    registry = AdapterRegistry(
        base_model(models.base), char_tokenizer(), "tiny-llama", max_loaded=max_loaded
    )
    for name in names if names is not None else list(models.adapters):
        registry.register(name, models.adapters[name], load=len(registry.loaded) < max_loaded)
    return Engine(registry, **options)


@pytest.fixture(scope="module")
def server(models: Models) -> Iterator[Server]:
    with Server(make_engine(models)) as running:
        yield running
