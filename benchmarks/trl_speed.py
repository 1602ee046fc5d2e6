"""TRL's trainers with peftkit against TRL's trainers with PEFT: the same SFTTrainer and DPOTrainer
code, model, data, seed and steps, only the adapter library differs.

The model is the packaged SmolLM2-135M in fp32 with LoRA r8 on q, k, v and o. SFT trains on the
seed's ETHOS comments (``"Sentence : {comment} Label : {label}"``, from ``../shared/data``); DPO on
preference pairs built from them (the prompt is the sentence, ``chosen`` the right label's word and
``rejected`` the wrong one), with ``ref_model=None`` (the reference is the adapter switched off),
4 pairs a batch (the 8 sequences of an SFT batch, so DPO's peak RSS against SFT's shows what the
reference costs).
Every configuration runs in its own subprocess, one after another, so its peak RSS is its own. The
table gives tokens/s (TRL's ``num_tokens`` over ``train_runtime``), peak RSS, the mean loss and the
largest per-step loss difference from the PEFT run of the same trainer.

    python benchmarks/trl_speed.py [--steps 20] [--out benchmarks/results/trl-cpu.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ethos-binary.csv"
CONFIGS = ["sft-peft", "sft-peftkit", "dpo-peft", "dpo-peftkit"]
WORDS = {1: "hateful", 0: "fine"}


def rows(limit: int) -> list[tuple[str, int]]:
    with DATA.open(encoding="utf-8") as f:
        return [(r["comment"], int(float(r["isHate"]))) for r in csv.DictReader(f, delimiter=";")][
            :limit
        ]


def dataset(trainer: str, limit: int) -> Any:
    from datasets import Dataset

    if trainer == "sft":
        return Dataset.from_list(
            [{"text": f"Sentence : {c} Label : {WORDS[y]}"} for c, y in rows(limit)]
        )
    return Dataset.from_list(
        [
            {
                "prompt": f"Sentence : {c} Label :",
                "chosen": f" {WORDS[y]}",
                "rejected": f" {WORDS[1 - y]}",
            }
            for c, y in rows(limit)
        ]
    )


def child(name: str, steps: int) -> dict[str, Any]:
    trainer_kind, lib_name = name.split("-")
    import importlib

    import torch

    import peftkit  # the integration; with lib_name == "peft" it leaves PEFT's objects alone

    lib = importlib.import_module(lib_name)
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = peftkit.load_model("smollm2-135m", dtype=torch.float32)
    tokenizer = peftkit.load_tokenizer("smollm2-135m")
    lora = lib.LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    common = dict(
        output_dir=tempfile.mkdtemp(),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        max_length=128,
        bf16=False,  # TRL's default is bf16 autocast; both libraries run fp32 here
    )
    if trainer_kind == "sft":
        trainer: Any = SFTTrainer(
            model=model,
            args=SFTConfig(**common),
            train_dataset=dataset("sft", 8 * steps),
            processing_class=tokenizer,
            peft_config=lora,
        )
    else:
        common["per_device_train_batch_size"] = 4  # 4 pairs: the 8 sequences of an SFT batch
        trainer = DPOTrainer(
            model=model,
            ref_model=None,
            args=DPOConfig(**common, beta=0.1),
            train_dataset=dataset("dpo", 8 * steps),
            processing_class=tokenizer,
            peft_config=lora,
        )
    assert type(trainer.model).__module__.startswith(lib_name + "."), type(trainer.model)
    output = trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    tokens = float(logs[-1].get("num_tokens", 0))
    runtime = float(output.metrics["train_runtime"])
    return {
        "tokens_per_s": tokens / runtime,
        "runtime_s": runtime,
        "losses": [float(e["loss"]) for e in logs],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
        "ref_model": trainer.ref_model is not None if hasattr(trainer, "ref_model") else False,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    import peftkit  # noqa: F401
    from peftkit.train.defaults import cpu_summary

    # Peak RSS moves by 100-250 MB between identical runs here (the allocator), more than the
    # libraries differ: each configuration runs --repeats times, interleaved, and the table keeps
    # each one's lowest peak and highest tokens/s.
    results: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeats):
        for name in CONFIGS:
            done = subprocess.run(
                [sys.executable, __file__, "--child", name, "--steps", str(args.steps)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            print(name, {k: v for k, v in run.items() if k != "losses"}, file=sys.stderr)
            best = results.setdefault(name, run)
            best["tokens_per_s"] = max(best["tokens_per_s"], run["tokens_per_s"])
            best["peak_rss_mb"] = min(best["peak_rss_mb"], run["peak_rss_mb"])
            best.setdefault("all_rss", []).append(round(run["peak_rss_mb"]))
    import importlib.metadata as md

    lines = [
        "# TRL's trainers: peftkit against PEFT",
        "",
        f"trl {md.version('trl')}, peft {md.version('peft')}, transformers {md.version('transformers')}, "
        f"torch {results['sft-peftkit']['torch']}, {platform.machine()}, CPU flags: {cpu_summary()}; "
        "SmolLM2-135M fp32, LoRA r8 q,k,v,o, batch 8 sequences (DPO: 4 pairs), max_length 128, "
        f"{args.steps} steps; one run of this script, each configuration {args.repeats} times "
        "interleaved (best tokens/s, lowest peak RSS; every peak in the last column)",
        "",
        "| trainer | library | tokens/s | peak RSS (MB) | mean loss | max per-step loss diff vs PEFT | peaks (MB) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name in CONFIGS:
        kind, lib = name.split("-")
        r, peer = results[name], results[f"{kind}-peft"]
        diff = max(abs(a - b) for a, b in zip(r["losses"], peer["losses"], strict=True))
        mean = sum(r["losses"]) / len(r["losses"])
        lines.append(
            f"| {kind.upper()} | {lib} | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {mean:.4f} | {diff:.2e} "
            f"| {', '.join(map(str, r['all_rss']))} |"
        )
    lines.append("")
    for kind in ("sft", "dpo"):
        ours, theirs = results[f"{kind}-peftkit"], results[f"{kind}-peft"]
        lines.append(
            f"- {kind.upper()}: peftkit/PEFT tokens/s {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x, "
            f"peak RSS {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x"
        )
    dpo, sft = results["dpo-peftkit"], results["sft-peftkit"]
    lines.append(
        f"- DPO's peak RSS over SFT's, peftkit: {dpo['peak_rss_mb'] / sft['peak_rss_mb']:.2f}x "
        f"(no second model: ref_model is {'set' if dpo['ref_model'] else 'None'})"
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
