"""How LoRA's A and B start: PEFT's random starts, and the starts from the base weight (PiSSA,
OLoRA), where A and B take its principal part and the base keeps the residual, so ``W_res + scaling
* B @ A == W`` at the start. Pure functions on tensors; ``W`` is (out, in)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import ConfigError

__all__ = ["from_weight", "olora", "pissa", "random_start"]


def random_start(a: nn.Linear, b: nn.Linear, how: bool | str, r: int) -> None:
    """PEFT's starts: A kaiming-uniform (``True``) or normal with std 1/r (``"gaussian"``) and B
    zero, so the update starts at zero; ``False`` keeps ``nn.Linear``'s random init for both (a
    non-zero update)."""
    if how is True:
        nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
    elif how == "gaussian":
        nn.init.normal_(a.weight, std=1 / r)
    if how is True or how == "gaussian":
        nn.init.zeros_(b.weight)
        if b.bias is not None:  # lora_bias: B's bias starts at zero too
            nn.init.zeros_(b.bias)


def from_weight(
    how: str, weight: torch.Tensor, r: int, scaling: float, transposed: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A, B and the residual for ``init_lora_weights=how`` (``"pissa"``, ``"pissa_niter_<n>"``,
    ``"olora"``)."""
    if how.startswith("pissa"):
        return pissa(weight.float(), r, scaling, how)
    if transposed:
        raise ConfigError(
            "init_lora_weights='olora' works on nn.Linear layers, not on GPT-2's Conv1D; "
            "use 'pissa' there"
        )
    return olora(weight.float(), r, scaling)


def pissa(
    weight: torch.Tensor, r: int, scaling: float, how: str = "pissa"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PiSSA: the top ``r`` singular directions, split as sqrt(S) on each side and divided by the
    scaling. ``how`` is ``"pissa"`` (exact SVD) or ``"pissa_niter_<n>"`` (randomized SVD, n subspace
    iterations).

    Returns:
        A ``(r, in)``, B ``(out, r)`` and the residual weight ``(out, in)``.
    """
    if how == "pissa":
        u, sigma, vh = torch.linalg.svd(weight, full_matrices=False)
        u, sigma, vh = u[:, :r], sigma[:r], vh[:r]
    else:
        u, sigma, v = torch.svd_lowrank(weight, r, niter=int(how.split("_niter_")[-1]))
        vh = v.T
    root = torch.diag(torch.sqrt(sigma / scaling))
    a, b = root @ vh, u @ root  # (r, in), (out, r)
    return a, b, weight - scaling * (b @ a)


def olora(
    weight: torch.Tensor, r: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OLoRA: B = Q[:, :r] and A = R[:r] of the QR decomposition of W.

    Returns:
        A ``(r, in)``, B ``(out, r)`` and the residual weight ``(out, in)``.
    """
    q, upper = torch.linalg.qr(weight)
    a, b = upper[:r].contiguous(), q[:, :r].contiguous()
    return a, b, weight - scaling * (b @ a)
