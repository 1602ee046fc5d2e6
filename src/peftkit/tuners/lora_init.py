"""LoRA initializations that start from the base weight: A and B take its principal part, the base keeps the
residual, so ``W_res + scaling * B @ A == W`` at the start. Pure tensor functions on ``W`` as (out, in)."""

from __future__ import annotations

import torch

__all__ = ["olora", "pissa"]


def pissa(weight: torch.Tensor, r: int, scaling: float, how: str = "pissa"
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PiSSA: the top ``r`` singular directions, split as sqrt(S) on each side and divided by the scaling.
    ``how`` is ``"pissa"`` (exact SVD) or ``"pissa_niter_<n>"`` (randomized SVD, n subspace iterations).

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


def olora(weight: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OLoRA: B = Q[:, :r] and A = R[:r] of the QR decomposition of W.

    Returns:
        A ``(r, in)``, B ``(out, r)`` and the residual weight ``(out, in)``.
    """
    q, upper = torch.linalg.qr(weight)
    a, b = upper[:r].contiguous(), q[:, :r].contiguous()
    return a, b, weight - scaling * (b @ a)
