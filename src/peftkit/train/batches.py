"""The order of a run's micro-batches (a pure function of the seed and the epoch, so a resumed run sees the
same batches an uninterrupted one would), how many steps they make, and the learning rate along them."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..data import Example, collate
from .config import TrainingConfig

__all__ = ["Batches", "lr_schedule", "total_steps"]


class Batches:
    """Micro-batch number ``position`` of an endless, epoch-by-epoch reshuffled pass over the examples.

    With ``group_by_length``, each shuffled window of 50 batches is sorted by length before it is cut into
    batches (then the batches are shuffled): rows in a batch have similar lengths, so little compute goes
    to padding. Either way the order is a pure function of the seed and the epoch.
    """

    WINDOW = 50

    def __init__(self, examples: list[Example], batch_size: int, seed: int, pad_id: int,
                 group_by_length: bool = False) -> None:
        self.examples, self.batch_size, self.seed, self.pad_id = examples, batch_size, seed, pad_id
        self.group_by_length = group_by_length
        self.per_epoch = math.ceil(len(examples) / batch_size)
        self._order: tuple[int, list[list[int]]] | None = None

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(len(self.examples), generator=generator).tolist()
            size = self.batch_size
            if not self.group_by_length:
                batches = [order[i: i + size] for i in range(0, len(order), size)]
            else:
                batches = []
                for start in range(0, len(order), size * self.WINDOW):
                    window = sorted(order[start: start + size * self.WINDOW],
                                    key=lambda i: -len(self.examples[i].input_ids))
                    batches += [window[i: i + size] for i in range(0, len(window), size)]
                batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            self._order = (epoch, batches)
        return self._order[1]

    def indices(self, position: int) -> list[int]:
        """Which examples form micro-batch ``position``."""
        epoch, index = divmod(position, self.per_epoch)
        return self._epoch_batches(epoch)[index]

    def __call__(self, position: int) -> dict[str, torch.Tensor]:
        return collate([self.examples[i] for i in self.indices(position)], self.pad_id)

    def epoch(self, position: int) -> float:
        return position / self.per_epoch


def total_steps(cfg: TrainingConfig, batches: Batches) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches.per_epoch / cfg.grad_accum))


def lr_schedule(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int) -> Any:
    """transformers' schedule of that name (linear or cosine decay, or constant, after linear warmup from 0):
    the one a Trainer run with the same settings gets, so peftkit's runs and the peer's follow the same curve."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if kind == "constant" else kind
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
