"""DoRA (Liu et al., 2024): a LoRA update whose direction is renormalized per output row and
rescaled by a learned magnitude ``m``: ``W' = m * (W + s B A) / ||W + s B A||``, the norm taken over
each output row.

Pure tensor functions on ``W`` as (out, in); :class:`~peftkit.tuners.lora.LoraLinear` keeps the
magnitudes and calls these. The norm is treated as a constant in backward (detached), as the paper
(section 4.3) and PEFT do.
"""

from __future__ import annotations

import torch

from .low_rank import low_rank_update

__all__ = ["merged_weight", "output_change", "row_norms", "unmerged_weight", "weight_before_merges"]


def row_norms(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``||W + s B A||`` per output row, ``(out,)``: the magnitude a fresh adapter starts from."""
    return torch.linalg.norm(weight.float() + scaling * (b @ a), dim=1)


def output_change(
    base_out: torch.Tensor,
    h: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scaling: float,
    factor: torch.Tensor,
) -> torch.Tensor:
    """What DoRA adds to the base layer's output ``W x`` (``base_out``, bias excluded):
    ``(m / ||.|| - 1) W x + m / ||.|| s B A h``, with ``factor = m / ||.||`` ``(out,)`` and ``h``
    the (dropped-out) input."""
    factor = factor.view(1, -1)  # (1, out)
    return (factor - 1) * base_out + factor * low_rank_update(h, a, b, scaling)  # (..., out)


def merged_weight(weight: torch.Tensor, delta: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * (W + delta)`` row by row: the weight with the adapter folded in (``factor = m /
    ||.||``)."""
    return factor.view(-1, 1) * (weight.float() + delta)


def unmerged_weight(
    merged: torch.Tensor, delta: torch.Tensor, factor: torch.Tensor
) -> torch.Tensor:
    """The base weight back from :func:`merged_weight`'s result, with the ``factor`` used to merge."""
    return merged.float() / factor.view(-1, 1) - delta


def weight_before_merges(
    weight: torch.Tensor, merges: list[tuple[torch.Tensor, torch.Tensor | None]]
) -> torch.Tensor:
    """The weight (out, in) before ``merges`` were applied, undone newest first: each a dense update
    ``delta`` and, for a DoRA adapter, the ``factor`` it was merged with (None for plain LoRA).
    DoRA's norm for a merge after others is taken from this weight, as the forward computes it."""
    for delta, factor in merges:
        weight = weight - delta if factor is None else unmerged_weight(weight, delta, factor)
    return weight
