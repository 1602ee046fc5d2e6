"""Mixed batches: which rows of a batch go through which adapter.

A mixed batch (``adapter_names=[...]``, one name per row) is split by adapter once, when it starts,
and every adapter layer then runs each adapter on its own rows with the same operations as when that
adapter is the only one active. A row's output is therefore the one it gets alone, bit for bit,
which a single batched product over stacked per-row weights cannot promise (its sums round in
another order).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["BASE_ROW", "RowGroups", "group_rows"]

BASE_ROW = "__base__"
"""The name, in ``adapter_names``, of rows that get no adapter (PEFT's)."""


class RowGroups(NamedTuple):
    """The rows of each adapter in a mixed batch."""

    size: int
    """Rows in the batch."""
    by_adapter: dict[str, torch.Tensor]
    """Adapter name -> the indices of its rows, ``(n,)``; rows of a name a layer does not hold pass
    it as they would with no adapter."""

    def check(self, batch: int) -> None:
        """Refuse a batch whose length is not the number of names (PEFT's words first)."""
        if batch != self.size:
            raise ValueError(
                f"Length of `adapter_names` should be the same as the number of inputs, but got "
                f"{self.size} and {batch} respectively: adapter_names names {self.size} rows but the "
                f"batch has {batch} (beam search and num_return_sequences expand the batch; repeat "
                "adapter_names to match)"
            )


def group_rows(names: list[str], device: torch.device | str | None = None) -> RowGroups:
    """Split ``names`` (one adapter name per row) into each name's row indices."""
    by_adapter = {
        name: torch.tensor([i for i, n in enumerate(names) if n == name], device=device)
        for name in dict.fromkeys(names)
    }
    return RowGroups(len(names), by_adapter)
