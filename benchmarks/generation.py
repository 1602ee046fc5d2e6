"""Generation speed with prompt adapters: base model vs PEFT vs peftkit, side by side in one run.

Random-weight models built from configs (GPT-2 124M, Llama 134M = SmolLM2-135M's shape, BLOOM 560M),
batch 1, greedy, a 16-token prompt and 32 new tokens, fp32 on CPU. The same prompt-tuning adapter is
loaded into both libraries; rounds alternate between them. Prints a markdown table of tokens/s, the
ratio to the base model, and whether each library's tokens equal the reference (greedy decoding with
the virtual tokens prepended by hand, through the base model's own generate).

    python benchmarks/generation.py [--models gpt2,llama] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import peft
import torch
import transformers

import peftkit

CONFIGS = {
    "gpt2-124m": lambda: transformers.GPT2Config(),
    "llama-134m": lambda: transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
    "bloom-560m": lambda: transformers.BloomConfig(
        vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16
    ),
}
NEW_TOKENS, PROMPT_TOKENS, VIRTUAL = 32, 16, 8


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench(name: str, rounds: int) -> dict[str, object]:
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(CONFIGS[name]()).eval()
    ids = torch.randint(10, 1000, (1, PROMPT_TOKENS))
    kwargs = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    ours = peftkit.get_peft_model(
        base, peftkit.PromptTuningConfig(num_virtual_tokens=VIRTUAL, task_type="CAUSAL_LM")
    ).eval()
    with torch.no_grad():
        ours.prompt_encoder["default"].embedding.weight.normal_(std=0.02)
    folder = tempfile.mkdtemp()
    ours.save_pretrained(folder)
    theirs = peft.PeftModel.from_pretrained(base, folder).eval()

    prompts = ours.prompt_encoder["default"].embedding.weight.detach()
    embeds = torch.cat([prompts.unsqueeze(0), base.get_input_embeddings()(ids)], dim=1)
    with torch.no_grad():
        reference = base.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(1, VIRTUAL + PROMPT_TOKENS, dtype=torch.long),
            **kwargs,
        )
    reference = reference[:, -NEW_TOKENS:]
    runs: dict[str, list[float]] = {"base": [], "peft": [], "peftkit": []}
    outs: dict[str, torch.Tensor] = {}
    calls = {
        "base": lambda: base.generate(input_ids=ids, **kwargs),
        "peft": lambda: theirs.generate(input_ids=ids, **kwargs),
        "peftkit": lambda: ours.generate(input_ids=ids, **kwargs),
    }
    with torch.no_grad():
        for key in calls:  # warm-up
            calls[key]()
        for _ in range(rounds):
            for key, fn in calls.items():
                seconds, outs[key] = timed(fn)
                runs[key].append(NEW_TOKENS / seconds)
    tps = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "model": name,
        "base": tps["base"],
        "peft": tps["peft"],
        "peftkit": tps["peftkit"],
        "peft_ok": torch.equal(outs["peft"][:, -NEW_TOKENS:], reference),
        "peftkit_ok": torch.equal(outs["peftkit"][:, -NEW_TOKENS:], reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(CONFIGS))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# Prompt-tuning generation, batch 1, {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, "
        f"{VIRTUAL} virtual tokens"
    )
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    print(
        "| model | base tok/s | PEFT tok/s (x base) | peftkit tok/s (x base) | PEFT tokens correct | "
        "peftkit tokens correct |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r = bench(name, args.rounds)
        b = float(r["base"])  # type: ignore[arg-type]
        print(
            f"| {name} | {b:.1f} | {r['peft']:.1f} ({float(r['peft']) / b:.2f}x) | "  # type: ignore[arg-type]
            f"{r['peftkit']:.1f} ({float(r['peftkit']) / b:.2f}x) | {r['peft_ok']} | {r['peftkit_ok']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
