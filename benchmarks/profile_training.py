"""Where a default LoRA training step's time goes: PyTorch's profiler over a short peftkit run, ops
grouped.

The run is benchmarks/training.py's ``peftkit-default`` row (SmolLM2-135M on ETHOS, LoRA r8 on
q,k,v,o, batch 8, the job's defaults: a bf16 base where bf16 is native, packing on) with the model
loaded before profiling, so loading is not counted. Ops are grouped into matmuls, dtype casts,
elementwise and the rest, by self CPU time; with the matmul rate at the model's own shapes (``python
benchmarks/training.py --peaks``) this says what bounds model FLOP utilization.

    python benchmarks/profile_training.py [--steps 12]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from peftkit.integrations.models import load_model
from peftkit.train import train
from peftkit.train.config import JobConfig
from peftkit.train.defaults import choose_dtype, cpu_summary

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ethos-binary.csv"
GROUPS = {
    "matmul": (
        "aten::mm",
        "aten::bmm",
        "aten::addmm",
        "aten::baddbmm",
        "aten::linear",
        "aten::matmul",
    ),
    "dtype casts and copies": (
        "aten::copy_",
        "aten::_to_copy",
        "aten::to",
        "aten::clone",
        "aten::contiguous",
    ),
    "elementwise": (
        "aten::mul",
        "aten::add",
        "aten::add_",
        "aten::div",
        "aten::pow",
        "aten::silu",
        "aten::silu_backward",
        "aten::where",
        "aten::neg",
        "aten::rsqrt",
        "aten::mean",
        "aten::sum",
        "aten::fill_",
        "aten::sub",
        "aten::cat",
        "aten::mul_",
        "aten::zero_",
        "aten::all",
    ),
    "softmax and loss": (
        "aten::_softmax",
        "aten::_softmax_backward_data",
        "aten::_log_softmax",
        "aten::_log_softmax_backward_data",
        "aten::nll_loss_forward",
        "aten::nll_loss_backward",
    ),
}


def job(steps: int, output_dir: str) -> JobConfig:
    return JobConfig(
        model="smollm2-135m",
        method="lora",
        adapter={
            "r": 8,
            "lora_alpha": 16,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        },
        data={
            "path": str(DATA),
            "delimiter": ";",
            "mode": "classification",
            "template": "Sentence : {comment} Label : {label}",
            "label_column": "isHate",
            "label_threshold": 0.5,
            "label_words": {"1": "hate", "0": "not hate"},
            "max_length": 128,
            "val_size": 8,
        },
        train={
            "batch_size": 8,
            "max_steps": steps,
            "eval_before": False,
            "progress": False,
            "lr": 1e-3,
        },
        output_dir=output_dir,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    config = job(args.steps, tempfile.mkdtemp(prefix="profile-"))
    dtype = choose_dtype(config, torch.device("cpu")).value
    model = load_model("smollm2-135m", task="CAUSAL_LM", dtype=getattr(torch, dtype))
    print(
        f"# Default LoRA training, {args.steps} steps, profiled; base {dtype}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; CPU: {cpu_summary()}\n"
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(config, model=model, log=lambda line: None)
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        group = next((g for g, names in GROUPS.items() if event.key in names), "other")
        groups[group] += event.self_cpu_time_total
    total = sum(groups.values())
    print("| ops | self CPU s | share |")
    print("|---|---|---|")
    for group, micros in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {micros / 1e6:.2f} | {100 * micros / total:.0f}% |")
    print("\nTop ops:\n")
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=45
        )
    )


if __name__ == "__main__":
    main()
