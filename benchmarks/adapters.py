"""Generation with LoRA (unmerged and merged) and prefix adapters, and adapter save/load times: base
model vs PEFT vs peftkit, side by side in one run.

Random weights in SmolLM2-135M's shape (Llama, 30 layers), batch 1, greedy, a 16-token prompt and 32
new tokens, fp32 on CPU. Each adapter is made by peftkit, saved, and loaded by each library from the
same files onto its own copy of the base model. Each library's ratio is against that same copy
without the adapter (timed in the same round, the adapter loaded and taken off around it), since two
copies of one model can differ in decode speed by their place in memory alone; rounds alternate and
the median is reported. "correct" says whether a library's tokens equal greedy decoding done step by
step through PEFT's forward (no cache, no generate), an independent reference. Save and load times
are for the LoRA adapter (r8 on q,k,v,o), loaded onto a fresh base each round (it is unloaded
after).

    python benchmarks/adapters.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import peft
import torch
import transformers

import peftkit

NEW_TOKENS, PROMPT_TOKENS = 32, 16
LLAMA = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
ADAPTERS: dict[str, Callable[[], Any]] = {
    "LoRA r8 q,k,v,o": lambda: peftkit.LoraConfig(
        r=8,
        lora_alpha=16,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    ),
    "prefix tuning, 20 tokens": lambda: peftkit.PrefixTuningConfig(
        num_virtual_tokens=20, task_type="CAUSAL_LM"
    ),
}


def base_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).eval()


def median_seconds(fn: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generation(name: str, rounds: int, merged: bool = False) -> dict[str, Any]:
    """Each library against the base model on the same weights in memory: every round times the bare
    base model, loads the adapter onto it (merging it in place for ``merged``), times that, and
    takes the adapter off again. Two copies of one model can differ in decode speed by 10-20% on
    this machine with nothing but their place in memory, so the ratio compares one copy with
    itself."""
    torch.manual_seed(0)
    made = peftkit.get_peft_model(base_model(), ADAPTERS[name]()).eval()
    if name.startswith("prefix"):
        with torch.no_grad():  # a prefix at the key/values' scale, so it changes what is generated
            made.prompt_encoder["default"].embedding.weight.normal_()
    folder = tempfile.mkdtemp()
    made.save_pretrained(folder)
    ids = torch.randint(10, 1000, (1, PROMPT_TOKENS))
    kwargs = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    reference = stepwise(peft.PeftModel.from_pretrained(base_model(), folder).eval(), ids)
    libraries = {
        "peftkit": peftkit.PeftModel.from_pretrained,
        "peft": peft.PeftModel.from_pretrained,
    }
    plain = {lib: base_model() for lib in libraries}
    speeds: dict[str, list[float]] = {key: [] for lib in libraries for key in (lib, f"{lib} base")}
    outs: dict[str, torch.Tensor] = {}

    def timed(key: str, model: torch.nn.Module) -> None:
        start = time.perf_counter()
        outs[key] = model.generate(input_ids=ids, **kwargs)
        speeds[key].append(NEW_TOKENS / (time.perf_counter() - start))

    with torch.no_grad():
        for round_ in range(rounds + 1):  # round 0 warms up
            for lib, load in libraries.items():
                timed(f"{lib} base", plain[lib].eval())
                model = load(plain[lib], folder).eval()
                if merged:
                    model.merge_adapter()
                timed(lib, model)
                if merged:
                    model.unmerge_adapter()
                plain[lib] = model.get_base_model() if name.startswith("prefix") else model.unload()
            if round_ == 0:
                speeds = {key: [] for key in speeds}
    tps = {key: statistics.median(v) for key, v in speeds.items()}
    return {
        **tps,
        "peft ok": torch.equal(outs["peft"], reference),
        "peftkit ok": torch.equal(outs["peftkit"], reference),
        "changed": not torch.equal(outs["peftkit base"], reference),
    }


@torch.no_grad()
def stepwise(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Greedy decoding by full forward passes, one new token each (what generate must reproduce)."""
    for _ in range(NEW_TOKENS):
        ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def save_load(rounds: int) -> dict[str, float]:
    config = ADAPTERS["LoRA r8 q,k,v,o"]
    ours = peftkit.get_peft_model(base_model(), config())
    folder = tempfile.mkdtemp()
    theirs_folder = tempfile.mkdtemp()
    ours.save_pretrained(folder)
    theirs = peft.PeftModel.from_pretrained(base_model(), folder)
    fresh_ours, fresh_theirs = base_model(), base_model()

    def load_ours() -> None:
        peftkit.PeftModel.from_pretrained(fresh_ours, folder).unload()

    def load_theirs() -> None:
        peft.PeftModel.from_pretrained(fresh_theirs, theirs_folder).unload()

    theirs.save_pretrained(theirs_folder)
    return {
        "peftkit save": median_seconds(lambda: ours.save_pretrained(folder), rounds),
        "peft save": median_seconds(lambda: theirs.save_pretrained(theirs_folder), rounds),
        "peftkit load": median_seconds(load_ours, rounds),
        "peft load": median_seconds(load_theirs, rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# Adapter generation and save/load, Llama-134M shape (SmolLM2-135M), batch 1, {PROMPT_TOKENS}-token "
        f"prompt, {NEW_TOKENS} new tokens, {args.rounds} rounds (median)"
    )
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    print(
        "| adapter | PEFT tok/s (its base) | x base | peftkit tok/s (its base) | x base | x PEFT | PEFT correct "
        "| peftkit correct | reference differs from base |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [(name, False) for name in ADAPTERS] + [("LoRA r8 q,k,v,o", True)]
    for name, merged in rows:
        r = generation(name, args.rounds, merged)
        label = f"{name}{', merged' if merged else ''}"
        print(
            f"| {label} | {r['peft']:.1f} ({r['peft base']:.1f}) | {r['peft'] / r['peft base']:.2f}x | "
            f"{r['peftkit']:.1f} ({r['peftkit base']:.1f}) | {r['peftkit'] / r['peftkit base']:.2f}x | "
            f"{r['peftkit'] / r['peft']:.2f}x | {r['peft ok']} | {r['peftkit ok']} | {r['changed']} |",
            flush=True,
        )
    times = save_load(args.rounds)
    print("\n| LoRA r8 q,k,v,o adapter | PEFT ms | peftkit ms | x PEFT (speed) |")
    print("|---|---|---|---|")
    for what in ("save", "load"):
        theirs, ours = times[f"peft {what}"], times[f"peftkit {what}"]
        print(f"| {what} | {1000 * theirs:.1f} | {1000 * ours:.1f} | {theirs / ours:.2f}x |")


if __name__ == "__main__":
    main()
