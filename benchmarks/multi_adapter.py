"""Mixed-batch generation: 4 LoRA adapters in one batch of 8 (``adapter_names``), PEFT vs peftkit.

A random-weight Llama of SmolLM2-135M's shape (30 layers), four LoRA adapters (r8 on q,k,v,o, random
non-zero weights) loaded into both libraries from the same files, rows assigned ``a b c d a b c d``.
Greedy, a 16-token prompt and 32 new tokens, fp32 on CPU; rounds alternate. Prints tokens/s (new
tokens of all rows per second), the ratio to the base model on the same batch, and whether each
library's rows equal generating every row alone with its adapter set as the active one.

    python benchmarks/multi_adapter.py [--rounds 3]
    python benchmarks/multi_adapter.py --profile # where one generate call of the base model spends
    its time
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import peft
import torch
import transformers

import peftkit

NEW_TOKENS, PROMPT_TOKENS, BATCH = 32, 16, 8
ADAPTERS = ["a", "b", "c", "d"]
ROWS = [ADAPTERS[i % 4] for i in range(BATCH)]


def build() -> tuple[peftkit.PeftModel, peft.PeftModel]:
    """The same base weights and the same four adapter files in both libraries."""
    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config).eval()
    twin = transformers.LlamaForCausalLM(config).eval()
    twin.load_state_dict(base.state_dict())
    lora = {
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "init_lora_weights": False,
    }
    ours = peftkit.get_peft_model(base, peftkit.LoraConfig(**lora), adapter_name="a")  # type: ignore[arg-type]
    for name in ADAPTERS[1:]:
        ours.add_adapter(name, peftkit.LoraConfig(**lora))  # type: ignore[arg-type]
    folder = Path(tempfile.mkdtemp())
    ours.save_pretrained(folder)
    theirs = peft.PeftModel.from_pretrained(twin, folder / "a", adapter_name="a")
    for name in ADAPTERS[1:]:
        theirs.load_adapter(folder / name, adapter_name=name)
    return ours.eval(), theirs.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--profile", action="store_true", help="profile the base model's generate call instead"
    )
    args = parser.parse_args()
    ours, theirs = build()
    ids = torch.randint(
        10, 1000, (BATCH, PROMPT_TOKENS), generator=torch.Generator().manual_seed(1)
    )
    kwargs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "max_new_tokens": NEW_TOKENS,
        "min_new_tokens": NEW_TOKENS,
        "do_sample": False,
    }
    calls = {
        "base (no adapter)": lambda: _base(ours, kwargs),
        "PEFT adapter_names": lambda: theirs.generate(**kwargs, adapter_names=ROWS),
        "peftkit adapter_names": lambda: ours.generate(**kwargs, adapter_names=ROWS),
    }
    if args.profile:
        profile_base(ours, kwargs)
        return
    with torch.no_grad():
        alone = []
        # the reference: each row on its own with its adapter active
        for i, name in enumerate(ROWS):
            ours.set_adapter(name)
            one = {
                **kwargs,
                "input_ids": ids[i : i + 1],
                "attention_mask": torch.ones_like(ids[i : i + 1]),
            }
            alone.append(ours.generate(**one)[0, -NEW_TOKENS:])
        reference = torch.stack(alone)
        for fn in calls.values():  # warm-up
            fn()
        runs: dict[str, list[float]] = {k: [] for k in calls}
        outs: dict[str, torch.Tensor] = {}
        for _ in range(args.rounds):
            for key, fn in calls.items():
                start = time.perf_counter()
                outs[key] = fn()
                runs[key].append(BATCH * NEW_TOKENS / (time.perf_counter() - start))
    tps = {k: statistics.median(v) for k, v in runs.items()}
    print(
        f"# Mixed-batch LoRA generation: {len(ADAPTERS)} adapters, batch {BATCH}, {PROMPT_TOKENS}-token prompts, "
        f"{NEW_TOKENS} new tokens, Llama-134M shape"
    )
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"median of {args.rounds} alternating rounds\n"
    )
    print("| run | tokens/s | x base | x PEFT | rows equal to one-by-one |")
    print("|---|---|---|---|---|")
    for key, value in tps.items():
        same = (
            "-"
            if key.startswith("base")
            else str(torch.equal(outs[key][:, -NEW_TOKENS:], reference))
        )
        print(
            f"| {key} | {value:.1f} | {value / tps['base (no adapter)']:.2f} | "
            f"{value / tps['PEFT adapter_names']:.2f} | {same} |"
        )


def profile_base(model: peftkit.PeftModel, kwargs: dict[str, object]) -> None:
    """The base model's ops in one mixed-batch-sized generate call, and the share of matrix
    products."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        _base(model, kwargs)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _base(model, kwargs)
    ops = prof.key_averages()
    total = sum(op.self_cpu_time_total for op in ops)
    matmul = sum(
        op.self_cpu_time_total for op in ops if op.key in ("aten::mm", "aten::addmm", "aten::bmm")
    )
    print(ops.table(sort_by="self_cpu_time_total", row_limit=12))
    print(f"matrix products: {100 * matmul / total:.0f}% of the base model's op time")


def _base(model: peftkit.PeftModel, kwargs: dict[str, object]) -> torch.Tensor:
    with model.disable_adapter():
        return model.generate(**kwargs)  # type: ignore[no-any-return]


if __name__ == "__main__":
    main()
