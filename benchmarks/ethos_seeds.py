"""LoRA on ETHOS over training seeds, on one held-out split: how far single runs spread.

Runs ``examples/compare-ethos.yaml``'s LoRA job (r8 on all linear layers, 1 epoch) and the peer's
config (r8 on q,k,v,o), each through compare's ``seeds`` (training seeds 42, 43 and 44 on seed 42's
split, the peer's), with packed batches (which change the speed, not the result). Prints accuracy
per seed and the mean. ``--set`` changes the job further, e.g. ``--set data.add_eos=false`` (no EOS
target after the label) or ``--set data.train_on_prompt=true`` (loss on the whole sentence, as a
language-modelling collator does). ``benchmarks/ethos_peer.py`` runs PEFT + Trainer over the same
seeds, split and scorer.

    python benchmarks/ethos_seeds.py [--seeds 42 43 44] [--targets all qkvo] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml

from peftkit.compare import CompareConfig, compare

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "compare-ethos.yaml"
TARGETS: dict[str, tuple[str, str | list[str]]] = {
    "all": ("all linear layers", "all-linear"),
    "qkvo": ("q,k,v,o (the peer's)", ["q_proj", "k_proj", "v_proj", "o_proj"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=["all", "qkvo"])
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="further overrides of the job, values read as YAML",
    )
    parser.add_argument("--output-dir", default="outputs/ethos-seeds")
    args = parser.parse_args()
    extra = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    suffix = "".join(f"-{key.split('.')[-1]}-{value}" for key, value in extra.items())
    print("| LoRA r8 on | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for key in args.targets:
        label, targets = TARGETS[key]
        # compare's seeds: seed 42's split, one run per seed
        config = CompareConfig.from_yaml(
            CONFIG,
            {
                "methods": "lora",
                "seed": 42,
                "seeds": args.seeds,
                "train.packing": True,
                "train.progress": False,
                "adapters": {"lora": {"target_modules": targets}},
                "output_dir": str(Path(args.output_dir) / f"{key}{suffix}"),
                **extra,
            },
        )
        scores = [
            float(run["accuracy"] or 0.0)
            for run in compare(config, log=lambda _: None)[-1].per_seed
        ]
        cells = " | ".join(f"{s:.3f}" for s in scores)
        print(
            f"| {label}{' ' + ' '.join(args.set) if args.set else ''} | {cells} | {statistics.mean(scores):.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
