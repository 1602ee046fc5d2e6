"""One training step of each layer method, peftkit against PEFT: the same model, batch, method
config and optimizer, only the library differs.

The model is the packaged SmolLM2-135M in fp32; the batch 8 rows of 64 random tokens; the step a
forward with labels, the backward and an AdamW step. Methods: LoRA r8, LoHa r8, LoKr r8 (alpha 16)
and OFT (block size 32) on q, k, v and o, each built by both libraries from the same seed, and LoRA on
raw parameters (``target_parameters``) on a small random Qwen3-MoE model (its expert stacks). The two
libraries' steps alternate, ``--repeats`` times each after one warm-up step, and the table keeps
each one's fastest (the noise on this shared machine is one-sided: a step is never faster than it
can be).

    python benchmarks/method_steps.py [--repeats 5] [--out benchmarks/results/method-steps-cpu.md]
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path
from typing import Any

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("LoraConfig", {"r": 8, "lora_alpha": 16, "target_modules": QKVO}),
    "loha": ("LoHaConfig", {"r": 8, "alpha": 16, "target_modules": QKVO}),
    "lokr": ("LoKrConfig", {"r": 8, "alpha": 16, "target_modules": QKVO}),
    "oft": ("OFTConfig", {"r": 0, "oft_block_size": 32, "target_modules": QKVO}),
    "lora-experts": (
        "LoraConfig",
        {
            "r": 4,
            "target_modules": [],
            "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
        },
    ),
}


def moe_model() -> Any:
    import torch
    import transformers

    config = transformers.Qwen3MoeConfig(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=512,
        moe_intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_experts=8,
        num_experts_per_tok=2,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def step_time(model: Any, batch: dict[str, Any], optimizer: Any) -> float:
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import peft
    import torch

    import peftkit
    from peftkit.train.defaults import cpu_summary

    torch.set_num_threads(max(1, torch.get_num_threads()))
    smol = peftkit.load_model("smollm2-135m", dtype=torch.float32)
    moe = moe_model()
    rows = []
    for method, (config_class, kwargs) in METHODS.items():
        base = moe if method == "lora-experts" else smol
        vocab = base.config.vocab_size
        ids = torch.randint(0, vocab, (8, 64), generator=torch.Generator().manual_seed(0))
        batch = {"input_ids": ids, "labels": ids}
        built = {}
        for lib in (peft, peftkit):
            torch.manual_seed(0)
            config = getattr(lib, config_class)(task_type="CAUSAL_LM", **kwargs)
            model = lib.get_peft_model(copy.deepcopy(base), config).train()
            optimizer = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad], lr=1e-4
            )
            step_time(model, batch, optimizer)  # warm-up
            built[lib.__name__] = (model, optimizer, [])
        for _ in range(args.repeats):
            for model, optimizer, times in built.values():
                times.append(step_time(model, batch, optimizer))
        trainable = sum(p.numel() for p in built["peftkit"][0].parameters() if p.requires_grad)
        theirs, ours = min(built["peft"][2]), min(built["peftkit"][2])
        rows.append((method, trainable, theirs, ours))
        print(method, f"peft {theirs:.3f}s peftkit {ours:.3f}s", flush=True)
        del built
    lines = [
        "# One training step per method: peftkit against PEFT",
        "",
        f"peft {peft.__version__}, torch {torch.__version__}, {platform.machine()}, CPU flags: {cpu_summary()}, "
        f"{torch.get_num_threads()} threads; fp32, batch 8 x 64 tokens, forward + backward + AdamW; "
        f"fastest of {args.repeats} alternating steps after a warm-up; one run",
        "",
        "| method | model | trainable params | PEFT s/step | peftkit s/step | peftkit speed vs PEFT |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for method, trainable, theirs, ours in rows:
        model = "Qwen3-MoE (random, 8 experts)" if method == "lora-experts" else "SmolLM2-135M"
        lines.append(
            f"| {method} | {model} | {trainable:,} | {theirs:.3f} | {ours:.3f} | {theirs / ours:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
