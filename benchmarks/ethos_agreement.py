"""ETHOS accuracy by annotator agreement: how each seed's run of a method does on the held-out
comments that all annotators agree on, on split votes, and on ties.

ETHOS's ``isHate`` is the share of annotators who called a comment hate speech; the task thresholds
it at 0.5. This script reads that share for each held-out comment (the split of
``examples/compare-ethos.yaml``), loads each run that ``peftkit compare --config
examples/compare-ethos.yaml`` saved (``<method>-seed-<n>`` in its output folder; run it first),
scores the held-out comments again, and prints a markdown table. It also prints how often one
annotator agrees with the majority label (the mean of max(p, 1 - p)), a human reference point.

    python benchmarks/ethos_agreement.py [--methods lora full] [--runs
    benchmarks/results/compare-ethos]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from peftkit import PeftModel, load_model
from peftkit.compare import CompareConfig
from peftkit.integrations.models import load_tokenizer
from peftkit.train.data import _split, load_task_data, read_rows, resolve_data_path
from peftkit.train.evaluate import evaluate

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "compare-ethos.yaml"
GROUPS = ("unanimous", "split votes", "ties")


def group(share: float) -> str:
    return "unanimous" if share in (0.0, 1.0) else "ties" if share == 0.5 else "split votes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=["lora", "full"])
    parser.add_argument(
        "--runs", default="benchmarks/results/compare-ethos", help="the comparison's output folder"
    )
    args = parser.parse_args()
    cfg = CompareConfig.from_yaml(CONFIG, {})
    tokenizer = load_tokenizer(cfg.model)
    data = load_task_data(cfg.job("lora", cfg.seed).data, tokenizer, seed=cfg.seed)
    _, val_rows = _split(
        read_rows(cfg.data, resolve_data_path(cfg.data.path)).rows, cfg.data.val_size, cfg.seed
    )
    shares = [float(row["isHate"]) for _, row in val_rows]
    hate = data.label_words.index("hate")
    if len(shares) != len(data.val) or any(
        (s >= 0.5) != (e.label_index == hate) for s, e in zip(shares, data.val, strict=True)
    ):
        raise SystemExit(
            "the held-out rows read here do not line up with the task's held-out examples"
        )
    groups = [group(s) for s in shares]
    sizes = {g: groups.count(g) for g in GROUPS}
    print(f"held-out comments: {len(shares)}; " + ", ".join(f"{g} {n}" for g, n in sizes.items()))
    print(
        f"one annotator against the majority label: {sum(max(s, 1 - s) for s in shares) / len(shares):.3f}\n"
    )
    print(f"| run | all {len(shares)} | " + " | ".join(f"{g} ({sizes[g]})" for g in GROUPS) + " |")
    print("|---|---|" + "---|" * len(GROUPS))
    seeds = cfg.seeds or [cfg.seed]
    for name in args.methods:
        for seed in seeds:
            folder = Path(args.runs) / f"{name}-seed-{seed}"
            # the base in the dtype the run trained on (a bf16 base where the comparison chose one)
            dtype = yaml.safe_load((folder / "config.yaml").read_text()).get("dtype", "float32")
            if name == "full":
                model = load_model(str(folder / "model"))
            else:
                model = PeftModel.from_pretrained(load_model(cfg.model, dtype=dtype), str(folder))
            with torch.no_grad():
                metrics = evaluate(
                    model,
                    data.val,
                    pad_id=tokenizer.pad_token_id or 0,
                    candidate_ids=data.candidate_ids,
                )
            right = dict.fromkeys(GROUPS, 0)
            for g, predicted, example in zip(
                groups, metrics.predictions or [], data.val, strict=True
            ):
                right[g] += predicted == example.label_index
            cells = " | ".join(f"{right[g] / max(sizes[g], 1):.3f}" for g in GROUPS)
            print(f"| {name}, seed {seed} | {metrics.accuracy:.3f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
