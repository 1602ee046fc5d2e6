"""Ways to mix several adapters' tensors into one (task arithmetic, TIES, DARE, magnitude pruning).

Pure tensor functions with PEFT's semantics, used by ``PeftModel.add_weighted_adapter``. DARE draws
random masks from torch's global generator, so results repeat under the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["MIXES", "mix"]

MIXES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")


def _weighted(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Multiply each task tensor by its weight: (N, ...) * (N,)."""
    return stacked * weights.view(-1, *([1] * (stacked.dim() - 1)))


def _keep_largest(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ``density`` share of entries with the largest magnitude."""
    if density >= 1:
        return tensor
    mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    mask[tensor.abs().reshape(-1).topk(int(density * tensor.numel())).indices] = 1
    return tensor * mask.view(tensor.shape)


def _drop_random(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """DARE: keep each entry with probability ``density`` and rescale the survivors by ``1 /
    density``."""
    if density >= 1:
        return tensor
    return tensor * torch.bernoulli(torch.full_like(tensor, density)) / density


def _sign_consensus(weighted: torch.Tensor, pruned: torch.Tensor, method: str) -> torch.Tensor:
    """TIES: average, per entry, only the tasks that agree with the majority sign."""
    votes = pruned.sum(dim=0) if method == "total" else pruned.sign().sum(dim=0)
    agree = pruned.sign() == torch.where(votes >= 0, 1, -1)
    return (weighted * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


def mix(
    tensors: Sequence[torch.Tensor],
    weights: torch.Tensor,
    how: str,
    density: float = 1.0,
    sign_method: str = "total",
) -> torch.Tensor:
    """Combine same-shaped task tensors with ``weights`` by method ``how`` (one of :data:`MIXES`)."""
    if how in ("ties", "magnitude_prune"):
        pruned = torch.stack([_keep_largest(t, density) for t in tensors])
    elif how in ("dare_linear", "dare_ties"):
        pruned = torch.stack([_drop_random(t, density) for t in tensors])
    else:
        pruned = torch.stack(list(tensors))
    weighted = _weighted(pruned, weights.to(pruned.dtype))
    if how in ("ties", "dare_ties"):
        return _sign_consensus(weighted, pruned, sign_method)
    return weighted.sum(dim=0)
