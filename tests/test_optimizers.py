"""LoRA+ (src/peftkit/train/optimizers.py): PEFT's parameter groups, and the training loop's
train.loraplus_lr_ratio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.optimizers import create_loraplus_optimizer as peft_loraplus

import peftkit
from peftkit.errors import ConfigError
from peftkit.train.optimizers import create_loraplus_optimizer
from tests.conftest import tiny_model


def _groups(lib: Any, create: Any) -> list[tuple[list[str], float, float]]:
    torch.manual_seed(0)
    config = lib.LoraConfig(
        target_modules=["q_proj", "v_proj", "embed_tokens"], modules_to_save=["lm_head"]
    )
    model = lib.get_peft_model(tiny_model("llama"), config)
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = create(
        model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, loraplus_weight_decay=0.1
    )
    return [
        (sorted(names[id(p)] for p in g["params"]), g["lr"], g["weight_decay"])
        for g in optimizer.param_groups
    ]


def test_loraplus_groups_equal_peft() -> None:
    ours = _groups(peftkit, create_loraplus_optimizer)
    assert ours == _groups(peft, peft_loraplus)
    a, embedding, b, _ = ours
    assert all(".lora_A." in n or "modules_to_save" in n for n in a[0]) and a[1] == 1e-3
    assert all("lora_embedding" in n for n in embedding[0]) and embedding[1] == 1e-6
    assert b[0] and all(".lora_B." in n for n in b[0]) and b[1] == pytest.approx(16e-3)


def test_a_training_job_with_loraplus_learns(tmp_path: Path, chars: Any) -> None:
    from tests.train.test_loop import job, quiet

    config = job(tmp_path, lr=1e-3, loraplus_lr_ratio=16.0, max_steps=6)
    result = peftkit.train(config, model=tiny_model("llama"), tokenizer=chars, log=quiet)
    assert (
        result.before is not None
        and result.after is not None
        and result.after.loss < result.before.loss
    )


def test_loraplus_is_refused_for_methods_without_b_factors(tmp_path: Path) -> None:
    from tests.train.test_loop import job

    with pytest.raises(ConfigError, match="LoRA\\+ sets the learning rate of LoRA's B factors"):
        job(tmp_path, method="ia3", loraplus_lr_ratio=16.0)
