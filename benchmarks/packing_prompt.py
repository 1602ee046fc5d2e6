"""Prompt tuning and p-tuning packed against unpacked on SmolLM2-135M: is each step exact, how far
whole runs drift apart, and what packing saves on each seed task.

1. exactness: the first batches of the ETHOS comparison (examples/compare-ethos.yaml, batch 8), at
   the same weights, packed and unpacked: the summed loss and the prompt's gradients (largest
   relative difference).
2. drift: that comparison's p-tuning job (fp32 base, seed 42) trained a few steps packed and
   unpacked, the step losses side by side: equal steps whose rounding differences grow, not a
   packing error.
3. rows: how many rows packing leaves of the chatgpt-prompts comparison's batches (batch 4), and the
   time of forward and backward for prompt tuning over a bf16 base, unpacked and packed, twice each.

    python benchmarks/packing_prompt.py [--batches 6] [--steps 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import peftkit
from peftkit.compare import CompareConfig
from peftkit.integrations.models import load_model, load_tokenizer
from peftkit.train import train
from peftkit.train.config import JobConfig
from peftkit.train.data import load_task_data
from peftkit.train.defaults import cpu_summary
from peftkit.train.evaluate import row_losses, tokens_in_front
from peftkit.train.packing import model_inputs

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def job(task: str, method: str) -> JobConfig:
    return CompareConfig.from_yaml(
        str(ROOT / "examples" / f"compare-{task}.yaml"), {"dtype": "auto"}
    ).job(method, 42)


def adapted(job_: JobConfig, dtype: torch.dtype) -> Any:
    torch.manual_seed(0)
    return peftkit.get_peft_model(
        load_model(job_.model, task="CAUSAL_LM", dtype=dtype), job_.peft_config()
    )


def loss_and_grads(
    model: Any, batch: list[Any], pad: int, packing: bool
) -> tuple[float, list[torch.Tensor]]:
    inputs, labels = model_inputs(batch, pad, packing, CPU, reserve=tokens_in_front(model))
    params = [p for p in model.parameters() if p.requires_grad]
    loss = row_losses(model, inputs, labels)[0].sum()
    grads = list(torch.autograd.grad(loss, params))
    return float(loss.detach()), grads


def exactness(batches: int) -> None:
    print("## 1. One step, packed against unpacked, same weights (ETHOS, batch 8, fp32 base)\n")
    print(
        "| method | batch | loss unpacked | loss packed | gradient: largest relative difference |"
    )
    print("|---|---|---|---|---|")
    for method in ("prompt", "p_tuning"):
        job_ = job("ethos", method)
        tok = load_tokenizer(job_.model)
        train_rows = load_task_data(job_.data, tok, seed=job_.seed).train
        # no dropout: the two passes see the same network
        model = adapted(job_, torch.float32).eval()
        for k in range(batches):
            batch = train_rows[8 * k : 8 * k + 8]
            plain, g_plain = loss_and_grads(model, batch, tok.pad_token_id, False)
            packed, g_packed = loss_and_grads(model, batch, tok.pad_token_id, True)
            worst = max(
                float((a - b).abs().max() / b.abs().max())
                for a, b in zip(g_packed, g_plain, strict=True)
            )
            print(f"| {method} | {k} | {plain:.4f} | {packed:.4f} | {worst:.1e} |")
    print()


def step_losses(job_: JobConfig, steps: int, packing: bool) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(
            job_.train, packing=packing, max_steps=steps, log_every=1, progress=False
        )
        train(dataclasses.replace(job_, train=settings, output_dir=tmp), log=lambda _: None)
        records = [
            json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()
        ]
    return [r["loss"] for r in records if "loss" in r]


def drift(steps: int) -> None:
    job_ = job("ethos", "p_tuning")
    print(
        f"## 2. p-tuning trained {steps} steps from seed 42 (ETHOS comparison, dtype auto: an fp32 base)\n"
    )
    print("| step | loss unpacked | loss packed | difference |")
    print("|---|---|---|---|")
    plain, packed = step_losses(job_, steps, False), step_losses(job_, steps, True)
    for step, (a, b) in enumerate(zip(plain, packed, strict=True), 1):
        print(f"| {step} | {a:.6f} | {b:.6f} | {b - a:+.1e} |")
    print()


def rows_and_time() -> None:
    job_ = job("chatgpt-prompts", "prompt")
    tok = load_tokenizer(job_.model)
    train_rows = load_task_data(job_.data, tok, seed=job_.seed).train
    model = adapted(job_, torch.bfloat16).train()
    rng = random.Random(0)
    batches = [rng.sample(train_rows, 4) for _ in range(12)]
    print(
        "## 3. chatgpt-prompts, prompt tuning over a bf16 base: 12 sampled batches of 4, forward and backward\n"
    )
    print("| round | layout | rows | seconds |")
    print("|---|---|---|---|")
    for round_ in (1, 2):
        for packing in (False, True):
            start, rows = time.perf_counter(), 0
            for batch in batches:
                inputs, labels = model_inputs(
                    batch, tok.pad_token_id, packing, CPU, reserve=tokens_in_front(model)
                )
                rows += inputs["input_ids"].shape[0]
                row_losses(model, inputs, labels)[0].sum().backward()
            layout = "packed" if packing else "unpacked"
            print(f"| {round_} | {layout} | {rows} | {time.perf_counter() - start:.2f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    print(
        f"# Packed prompt tuning and p-tuning; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"CPU: {cpu_summary()}\n"
    )
    exactness(args.batches)
    drift(args.steps)
    rows_and_time()


if __name__ == "__main__":
    main()
