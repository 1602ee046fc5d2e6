"""Micro-batch tensors, padded or packed, and the check that packing is exact on this model.

Packing puts several examples in one row, with positions restarting at each example, so no pad token
is computed. It is exact only where attention reads position restarts as boundaries; the check runs
two examples apart and packed and compares their losses before training starts.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..tuners.prompt.model import check_window, forward_accepts
from .data import Example, collate, pack
from .evaluate import prefix_length, row_losses

__all__ = ["check_packing", "model_inputs"]


def model_inputs(
    examples: list[Example],
    pad_id: int,
    packing: bool,
    device: torch.device,
    width: int | None = None,
    reserve: int = 0,
    segments: bool = False,
) -> tuple[dict[str, Any], torch.Tensor]:
    """The model inputs and labels of a micro-batch on ``device``: padded rows, or packed into
    ``width``.

    Packed only: ``reserve`` leaves that many slots in front of each example for prompt tuning's
    virtual tokens; the inputs then carry ``virtual_token_slots``, which tells the prompt to fill
    them instead of putting its tokens in front of the row. ``segments`` (prefix tuning) adds
    ``packed_segments``, which tells the prefix to mask each example to itself and the prefix.
    """
    if packing:
        batch: dict[str, Any] = pack(examples, pad_id, width, reserve)
        # transformers only reads position restarts as boundaries without a cache
        batch["use_cache"] = False
        if reserve:
            batch["virtual_token_slots"] = reserve
        if segments:
            batch["packed_segments"] = True
    else:
        batch = collate(examples, pad_id)
    labels = batch.pop("labels").to(device)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, labels


def check_packing(
    model: nn.Module,
    base: nn.Module,
    examples: list[Example],
    pad_id: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager[Any],
    reserve: int = 0,
    segments: bool = False,
) -> None:
    """Refuse packing on a model whose attention ignores position restarts: two examples packed into
    one row must lose what they lose apart, each in its own unpacked row. With ``reserve`` (prompt
    tuning's virtual tokens filled into each example's slots) this also checks the prompt fills them
    as it would put them in front of an unpacked row; with ``segments`` (prefix tuning), that each
    example sees the prefix.

    Raises:
        ConfigError: ``base`` takes no position ids, the packed loss differs from the loss apart, or
            (prefix tuning) the longest example and the prefix overflow the model's sliding window.
    """
    if not forward_accepts(base, "position_ids"):
        raise ConfigError(
            f"train.packing: {type(base).__name__} takes no position ids, so packed examples "
            "would attend to each other; set train.packing: false"
        )
    if segments:  # before training: a long example must not stop a run that packing was chosen for
        check_window(base, prefix_length(model), max(len(e.input_ids) for e in examples))
    longest = sorted(examples[:8], key=lambda e: len(e.input_ids))[-2:]
    # every token a target: most sensitive
    pair = [Example(e.input_ids, list(e.input_ids)) for e in longest]
    if len(pair) < 2:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast:
            # apart: each example in its own unpacked row, the prompt's tokens (if any) in front as
            # in plain use
            apart = sum(
                float(row_losses(model, *model_inputs([e], pad_id, False, device))[0].sum())
                for e in pair
            )
            width = sum(len(e.input_ids) + reserve for e in pair)
            packed = model_inputs(pair, pad_id, True, device, width, reserve, segments)
            together = float(row_losses(model, *packed)[0].sum())
    finally:
        model.train(was_training)
    exact = isinstance(autocast, contextlib.nullcontext) and all(
        p.dtype == torch.float32 for p in model.parameters()
    )
    tolerance = 1e-4 if exact else 3e-2  # half precision rounds the two layouts differently
    if not math.isclose(apart, together, rel_tol=tolerance):
        raise ConfigError(
            f"train.packing: this model lets packed examples attend to each other (loss "
            f"{together:.4f} packed against {apart:.4f} apart); set train.packing: false"
        )
