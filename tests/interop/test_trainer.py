"""transformers.Trainer with a peftkit model, side by side with PEFT: the same loss, checkpoints
that hold the adapter alone, ``save_model`` output that both libraries load, and a resumed run equal
to an uninterrupted one.

No code changes but the import: the user passes a peftkit model to an unchanged ``Trainer``.
"""

from __future__ import annotations

import types
import warnings
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

import peftkit

from ..conftest import tiny_model

LIBS = {"peft": peft, "peftkit": peftkit}
# padded batches: the token count is what the loss normalization gets wrong
LENGTHS = (5, 9, 7, 4, 8, 6, 9, 3)


def _rows() -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset.from_list(
        [{"input_ids": torch.randint(3, 100, (n,), generator=g).tolist()} for n in LENGTHS]
    )


def _collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.tensor([f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features])
    mask = torch.tensor(
        [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
    )
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _trainer(
    lib: types.ModuleType, out: Path, steps: int = 4, checkpointing: bool = False, batch: int = 2
) -> Trainer:
    torch.manual_seed(0)
    config = lib.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = lib.get_peft_model(tiny_model("llama"), config)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-2,
        save_steps=2,
        logging_steps=1,
        use_cpu=True,
        report_to=[],
        seed=0,
        data_seed=0,
        gradient_checkpointing=checkpointing,
        disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=_rows(), data_collator=_collate)


def _losses(trainer: Trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _adapter(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_loss_trainer_reports_equals_peft_s(tmp_path: Path, checkpointing: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses = {}
        for name, lib in LIBS.items():
            trainer = _trainer(lib, tmp_path / name, checkpointing=checkpointing)
            trainer.train()
            losses[name] = _losses(trainer)
    assert len(losses["peftkit"]) == 4
    torch.testing.assert_close(losses["peftkit"], losses["peft"], atol=1e-6, rtol=0)


def test_the_loss_is_the_mean_over_the_predicted_tokens(tmp_path: Path) -> None:
    # one batch of every row, in any order
    trainer = _trainer(peftkit, tmp_path, steps=1, batch=len(LENGTHS))
    trainer.train()
    batch = _collate(list(_rows()))
    # a fresh LoRA adapter adds zero: the first step's loss is the base model's
    base = tiny_model("llama")
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # a causal LM predicts the next token: the first label is never a target
    targets = batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100
    )
    assert _losses(trainer)[0] == pytest.approx(expected.item(), abs=1e-5)


def test_checkpoints_hold_only_the_adapter_and_save_model_loads_everywhere(tmp_path: Path) -> None:
    trainer = _trainer(peftkit, tmp_path / "run")
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
    } <= files and "model.safetensors" not in files
    adapter_bytes = sum(t.numel() * t.element_size() for t in _adapter(trainer.model).values())
    # no base weights
    assert (checkpoint / "adapter_model.safetensors").stat().st_size < adapter_bytes + 10_000
    assert set(load_file(checkpoint / "adapter_model.safetensors")) == set(
        peftkit.get_peft_model_state_dict(trainer.model)
    )

    trainer.save_model(str(tmp_path / "final"))
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
        for lib in LIBS.values():
            loaded = lib.PeftModel.from_pretrained(
                tiny_model("llama"), str(tmp_path / "final")
            ).eval()
            torch.testing.assert_close(loaded(input_ids=ids).logits, expected)


def test_resume_from_a_checkpoint_gives_the_uninterrupted_run_s_adapter(tmp_path: Path) -> None:
    whole = _trainer(peftkit, tmp_path / "whole")
    whole.train()
    resumed = _trainer(peftkit, tmp_path / "resumed")  # a fresh model, as after a crash
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    # (the first two come back from trainer_state.json)
    assert _losses(resumed)[2:] == _losses(whole)[2:]
    for name, tensor in _adapter(whole.model).items():
        torch.testing.assert_close(_adapter(resumed.model)[name], tensor, atol=0, rtol=0, msg=name)
