"""Generation at batch 1 in the default dtype: the packaged SmolLM2-135M with LoRA (unmerged),
prefix tuning and prompt tuning, peftkit against PEFT, fp32 and bf16, side by side in one run.

peftkit's ``generate`` takes ``dtype: auto``: fp32 on a CPU (this benchmark measured bf16 slower at
batch 1, even with AMX) and bf16 on a CUDA GPU with bf16 (see ``peftkit inspect``). PEFT generates
in the dtype the user loaded the base model in, fp32 unless told otherwise. Each adapter is made
once (random nonzero weights, so LoRA's branch really computes), saved, and loaded by both libraries
the way their users load one. Batch 1, greedy, a 16-token prompt, 32 new tokens; rounds alternate
between the rows; the median is kept.

Correctness column: each adapter row's tokens against greedy decoding one token at a time through
PEFT's *forward* (no cache) in the same dtype, the reference both libraries' forwards agree on.
PEFT's own ``generate`` is not the reference: with transformers 5 it ignores a prefix on Llama (the
base model's tokens come out) and re-feeds the prompt at every later prompt-tuning step
(tests/interop/test_peft_prompt.py).

    python benchmarks/generation_dtype.py [--rounds 3] [--methods lora,prefix,prompt]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import peft
import torch
import transformers

import peftkit
from peftkit.integrations.models import load_model
from peftkit.train.defaults import cpu_summary, generation_dtype

NEW_TOKENS, PROMPT_TOKENS = 32, 16
ADAPTERS: dict[str, Callable[[], Any]] = {
    "lora": lambda: peftkit.LoraConfig(
        r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"
    ),
    "prefix": lambda: peftkit.PrefixTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM"),
    "prompt": lambda: peftkit.PromptTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM"),
}


def make_adapter(method: str) -> str:
    """A saved adapter of ``method`` with random nonzero weights."""
    torch.manual_seed(0)
    model = peftkit.get_peft_model(load_model("smollm2-135m", task="CAUSAL_LM"), ADAPTERS[method]())
    with torch.no_grad():
        for name, p in model.named_parameters():
            # LoRA's B starts at zero
            if p.requires_grad and (method != "lora" or "lora_B" in name):
                p.normal_(std=0.02)
    folder = tempfile.mkdtemp(prefix=f"gen-{method}-")
    model.save_pretrained(folder)
    return folder


def loaders(methods: list[str], device: str) -> dict[str, Callable[[], Any]]:
    """Row name -> a function that builds that row's model, as a user of that library would."""

    def base(dtype: str) -> Any:
        return load_model("smollm2-135m", task="CAUSAL_LM", dtype=dtype).to(device)

    rows: dict[str, Callable[[], Any]] = {}
    for dtype in ("float32", "bfloat16"):
        rows[f"base {dtype}"] = lambda d=dtype: base(d).eval()
    for method in methods:
        folder = make_adapter(method)
        for dtype in ("float32", "bfloat16"):
            rows[f"peftkit {method} {dtype}"] = lambda f=folder, d=dtype: (
                peftkit.PeftModel.from_pretrained(base(d), f).to(device).eval()
            )
            rows[f"PEFT {method} {dtype}"] = lambda f=folder, d=dtype: (
                peft.PeftModel.from_pretrained(base(d), f).to(device).eval()
            )
    return rows


def greedy_through_forward(model: Any, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """The reference: ``steps`` greedy tokens, one full forward (no cache) per token: ``(1,
    steps)``.

    End-of-text tokens are masked as ``min_new_tokens`` masks them in the timed rows.
    """
    eos = model.get_base_model().generation_config.eos_token_id
    seq = ids
    for _ in range(steps):
        logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1]  # (1, V)
        logits[:, torch.tensor(eos if isinstance(eos, list) else [eos])] = -float("inf")
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq[:, -steps:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(ADAPTERS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    default = generation_dtype("auto", torch.device(args.device))
    print(
        f"# Generation, batch 1, {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, SmolLM2-135M"
    )
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"{torch.get_num_threads()} threads; device {args.device}; CPU: {cpu_summary()}"
    )
    print(f"peftkit's default dtype here: {default.value} ({default.reason})\n")
    models = {
        name: build() for name, build in loaders(args.methods.split(","), args.device).items()
    }
    ids = torch.randint(
        100, 10000, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0)
    ).to(args.device)
    settings = {
        "max_new_tokens": NEW_TOKENS,
        "min_new_tokens": NEW_TOKENS,
        "do_sample": False,
        "attention_mask": torch.ones_like(ids),
    }
    speeds: dict[str, list[float]] = {name: [] for name in models}
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, model in models.items():  # warm-up
            outputs[name] = model.generate(input_ids=ids, **settings)[:, -NEW_TOKENS:]
        for _ in range(args.rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model.generate(input_ids=ids, **settings)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                speeds[name].append(NEW_TOKENS / (time.perf_counter() - start))
        reference = {
            name: greedy_through_forward(model, ids, NEW_TOKENS)
            for name, model in models.items()
            if name.startswith("PEFT")
        }
    tps = {name: statistics.median(v) for name, v in speeds.items()}
    print(
        "| row | tokens/s | x base, same dtype | x PEFT fp32 (its default) | same tokens as the reference |"
    )
    print("|---|---|---|---|---|")
    for name, speed in tps.items():
        _, *rest = name.split()
        dtype = rest[-1]
        method = rest[0] if len(rest) == 2 else None
        base = tps[f"base {dtype}"]
        peer = tps.get(f"PEFT {method} float32") if method else None
        twin = f"PEFT {method} {dtype}" if method else None
        same = str(torch.equal(outputs[name], reference[twin])) if twin else "-"
        print(
            f"| {name} | {speed:.1f} | {speed / base:.2f}x | {f'{speed / peer:.2f}x' if peer else '-'} | {same} |",
            flush=True,
        )
    print(
        f"\nHeadline: peftkit's default ({default.value}) against PEFT's default (float32), same adapter:"
    )
    for method in args.methods.split(","):
        ours, theirs = tps[f"peftkit {method} {default.value}"], tps[f"PEFT {method} float32"]
        base = tps[f"base {default.value}"]
        print(
            f"- {method}: {ours / theirs:.2f}x PEFT's tokens/s; {ours / base:.2f}x the base model in {default.value}"
        )


if __name__ == "__main__":
    main()
