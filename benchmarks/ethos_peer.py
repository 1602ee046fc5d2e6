"""The peer's LoRA on ETHOS over training seeds, through peftkit's split and scorer.

PEFT + ``transformers.Trainer`` in its default settings (fp32, shuffled batches of 8, linear
schedule, one epoch), LoRA r8 on q,k,v,o at lr 1e-3: issue 9's measured config. The data are
peftkit's examples of ``examples/compare-ethos.yaml`` on the peer's split (``split_seed`` 42), and
accuracy is peftkit's scorer (" hate" against " not hate" after the prompt), so a gap between this
table and ``benchmarks/ethos_seeds.py`` is a library difference, not a setup difference. ``--labels
text`` trains on the whole sentence without an EOS (a language-modelling collator, as the seed did)
instead of on the label words and EOS only.

    python benchmarks/ethos_peer.py [--seeds 42 43 44] [--labels answer|text]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "compare-ethos.yaml"
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def task_data(labels: str):  # type: ignore[no-untyped-def]
    from peftkit import load_tokenizer
    from peftkit.train import DataConfig
    from peftkit.train.data import load_task_data

    data = yaml.safe_load(CONFIG.read_text())["data"]
    data["path"] = str((CONFIG.parents[1] / data["path"]).resolve())
    if labels == "text":
        data.update(train_on_prompt=True, add_eos=False)
    cfg = DataConfig(**data, split_seed=42)
    problems: list[str] = []
    cfg._validate(problems)
    tokenizer = load_tokenizer("smollm2-135m")
    return tokenizer, load_task_data(cfg, tokenizer)


def run(seed: int, labels: str) -> tuple[float, float]:
    """Train the peer's LoRA with ``seed``; return (held-out accuracy, held-out loss)."""
    import peft
    import torch
    import transformers

    from peftkit import load_model
    from peftkit.train.evaluate import evaluate

    tokenizer, data = task_data(labels)
    rows = [
        {"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)}
        for e in data.train
    ]
    torch.manual_seed(seed)
    model = peft.get_peft_model(
        load_model("smollm2-135m"), peft.LoraConfig(task_type="CAUSAL_LM", **LORA)
    )
    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=8,
            num_train_epochs=1,
            learning_rate=1e-3,
            seed=seed,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            logging_steps=50,
            use_cpu=True,
        )
        collator = transformers.DataCollatorForSeq2Seq(
            tokenizer, padding=True, label_pad_token_id=-100
        )
        transformers.Trainer(
            model=model, args=args, train_dataset=rows, data_collator=collator
        ).train()
    metrics = evaluate(
        model, data.val, pad_id=tokenizer.pad_token_id, candidate_ids=data.candidate_ids
    )
    return float(metrics.accuracy or 0.0), metrics.loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--labels", choices=["answer", "text"], default="answer")
    args = parser.parse_args()
    scores = []
    for seed in args.seeds:
        accuracy, loss = run(seed, args.labels)
        scores.append(accuracy)
        print(f"seed {seed}: accuracy {accuracy:.3f}, held-out loss {loss:.4f}", flush=True)
    cells = " | ".join(f"{s:.3f}" for s in scores)
    print(
        f"| PEFT + Trainer, LoRA r8 on q,k,v,o, labels {args.labels} | {cells} | {statistics.mean(scores):.3f} |"
    )


if __name__ == "__main__":
    main()
