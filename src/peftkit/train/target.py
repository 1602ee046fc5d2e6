"""What a run trains: an adapter on a frozen base (a :class:`~peftkit.PeftModel`), or, for full
fine-tuning, the base model itself. The loop asks this object instead of testing the model's class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..common.files import atomic_directory, atomic_write
from ..errors import ConfigError
from ..integrations.models import load_model
from ..integrations.quantization import prepare_model_for_kbit_training
from ..peft_model.card import write_model_card
from ..peft_model.model import PeftModel, get_peft_model
from .checkpoint import TRAINABLE_FILE
from .config import JobConfig
from .data import TaskData

__all__ = ["TrainingTarget", "build_target"]


@dataclass
class TrainingTarget:
    """The model being trained, and what differs between training an adapter and training every
    weight."""

    model: nn.Module
    """What the loop calls: a PeftModel, or the base model for full fine-tuning."""

    @property
    def adapter(self) -> PeftModel | None:
        """The adapter model; None for full fine-tuning."""
        return self.model if isinstance(self.model, PeftModel) else None

    @property
    def base(self) -> nn.Module:
        """The transformers model underneath (the model itself for full fine-tuning)."""
        return self.adapter.get_base_model() if self.adapter is not None else self.model

    @property
    def virtual_tokens(self) -> int:
        """Positions a prompt adapter adds to every example (they count against the context)."""
        return (
            int(getattr(self.adapter.active_peft_config, "num_virtual_tokens", 0) or 0)
            if self.adapter
            else 0
        )

    def check_context(self, data: TaskData, max_length: int) -> None:
        """Every example (plus virtual tokens) must fit the model's position range."""
        config = getattr(self.base, "config", None)
        limit = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        if not limit:
            return
        too_long = sum(
            len(e.input_ids) + self.virtual_tokens > limit for e in data.train + data.val
        )
        if too_long:
            extra = f" plus {self.virtual_tokens} virtual tokens" if self.virtual_tokens else ""
            raise ConfigError(
                f"{too_long} examples{extra} are longer than the model's context ({limit} positions); "
                f"set data.max_length to {limit - self.virtual_tokens} or less (now {max_length})"
            )

    def save_pretrained(self, folder: Path) -> None:
        """A checkpoint's model files: the adapter in PEFT's format (for users) and every trainable
        tensor (for an exact resume: p-tuning's adapter file holds the encoder's output, not the
        encoder). After full fine-tuning, the trainable tensors are the model."""
        from safetensors.torch import save_file

        if self.adapter is not None:
            self.adapter.save_pretrained(folder)
        tensors = {
            k: p.detach().cpu().contiguous()
            for k, p in self.model.named_parameters()
            if p.requires_grad
        }
        # the umask's permissions, like every other file
        with atomic_write(folder / TRAINABLE_FILE) as tmp:
            save_file(tensors, tmp)

    def save_result(self, out: Path, tokenizer: Any, card: list[str]) -> None:
        """The run's result: the adapter in PEFT's format with a model card; after full fine-tuning,
        the whole model (and its tokenizer) in transformers' format under ``model/``, written to a
        temporary folder."""
        if self.adapter is not None:
            self.adapter.save_pretrained(out)
            write_model_card(out, self.adapter, training=card)
            return
        with atomic_directory(out / "model") as tmp:
            self.model.save_pretrained(tmp)  # type: ignore[operator]  # a transformers model
            tokenizer.save_pretrained(tmp)


def build_target(
    config: JobConfig, model: nn.Module | None, device: torch.device
) -> TrainingTarget:
    """The base (``model``, or ``config.model`` loaded) with the job's adapter, or itself for full
    fine-tuning."""

    if model is None:
        model = load_model(
            config.model,
            task="CAUSAL_LM",
            dtype=getattr(torch, config.dtype),
            trust_remote_code=config.trust_remote_code,
            quantization=config.quantization,
        )
    if config.quantization is not None:
        prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.train.gradient_checkpointing
        )
    peft_config = config.peft_config()
    if peft_config is None:  # full fine-tuning: every weight trainable
        model.requires_grad_(True)
    trained: nn.Module = model if peft_config is None else get_peft_model(model, peft_config)
    if config.train.gradient_checkpointing:
        trained.gradient_checkpointing_enable({"use_reentrant": False})  # type: ignore[operator]
    return TrainingTarget(trained.to(device))
