"""The order of a run's micro-batches (a pure function of the seed and the epoch, so a resumed run
sees the same batches an uninterrupted one would), how many steps they make, and the learning rate
along them."""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import TrainingConfig
from .data import Example, collate

__all__ = ["SUB_BATCH_OVERHEAD", "Batches", "lr_schedule", "split_by_length", "total_steps"]


class Batches:
    """Micro-batch number ``position`` of an endless, epoch-by-epoch reshuffled pass over the
    examples.

    With ``group_by_length``, each shuffled window of 50 batches is sorted by length before it is
    cut into batches (then the batches are shuffled): rows in a batch have similar lengths, so
    little compute goes to padding. Either way the order is a pure function of the seed and the
    epoch.
    """

    WINDOW = 50

    def __init__(
        self,
        examples: list[Example],
        batch_size: int,
        seed: int,
        pad_id: int,
        group_by_length: bool = False,
    ) -> None:
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
                batches = [order[i : i + size] for i in range(0, len(order), size)]
            else:
                batches = []
                for start in range(0, len(order), size * self.WINDOW):
                    window = sorted(
                        order[start : start + size * self.WINDOW],
                        key=lambda i: -len(self.examples[i].input_ids),
                    )
                    batches += [window[i : i + size] for i in range(0, len(window), size)]
                batches = [
                    batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()
                ]
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


SUB_BATCH_OVERHEAD = 64
"""What one more forward and backward pass is taken to cost beyond its tokens, in padded positions
(a pass has a fixed cost in Python and kernel launches whatever its size). A rough figure: where
padding is what a split saves, hundreds of positions per batch, the cut barely moves with it."""


def split_by_length(lengths: list[int], overhead: int = SUB_BATCH_OVERHEAD) -> list[list[int]]:
    """Rows of lengths ``lengths`` cut into sub-batches of similar length, as lists of their
    positions.

    Sorted by length, the rows are cut where that minimizes the padded positions computed (each
    sub-batch pads to its longest row) plus ``overhead`` per sub-batch: an exact search over the cut
    points, O(n^2).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    # best[j]: cost of the j shortest rows
    best, cut = [0] * (len(sizes) + 1), [0] * (len(sizes) + 1)
    for end in range(1, len(sizes) + 1):
        costs = [
            (best[start] + (end - start) * sizes[end - 1] + overhead, start) for start in range(end)
        ]
        best[end], cut[end] = min(costs)
    groups, end = [], len(sizes)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def total_steps(cfg: TrainingConfig, batches: Batches) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches.per_epoch / cfg.grad_accum))


def lr_schedule(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int) -> Any:
    """The learning-rate factor of ``kind`` (linear or cosine decay to 0, or constant) after a
    linear warmup from 0: transformers' schedules of those names, step for step, so peftkit's runs
    and a Trainer's follow the same curve (tests check it against ``transformers.get_scheduler``).
    Written here because importing that one imports transformers' Trainer utilities, and through
    them PEFT and bitsandbytes where installed: seconds of start-up and a stray warning in every
    run."""
    decay = _DECAYS[kind]

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return decay((step - warmup) / max(1, total - warmup), total - step, total - warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


_DECAYS: dict[str, Any] = {  # (progress after warmup, steps left, steps after warmup) -> factor
    "linear": lambda progress, left, span: max(0.0, left / max(1, span)),
    "cosine": lambda progress, left, span: max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress))),
    "constant": lambda progress, left, span: 1.0,
}
