"""The low-rank update ``scaling * B(A(x))`` and its dtype policy: computed in the adapter's dtype
(fp32), whatever the input's; a narrower input that autograd records is kept as it is for
backward."""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F

__all__ = ["LowPrecisionInputLora", "low_rank_update"]


def low_rank_update(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``scaling * B(A(x))`` in the adapter's dtype, scaled at rank r; a narrower ``x`` that
    autograd records is kept as it is for backward (:class:`LowPrecisionInputLora`), not as an fp32
    copy."""
    if LowPrecisionInputLora.applies(x, a):
        return cast(torch.Tensor, LowPrecisionInputLora.apply(x, a, b, scaling))
    return F.linear(F.linear(x.to(a.dtype), a) * scaling, b)  # (..., out)


class LowPrecisionInputLora(torch.autograd.Function):
    """``scaling * B(A(x))`` in the adapter's dtype (fp32) for an input in a lower one (a bf16
    base), keeping ``x`` itself for backward instead of its fp32 copy.

    Plain autograd would save ``x.to(fp32)``: twice the bytes of ``x``, and one copy per layer, so
    q, k and v, which read the same input, kept three. With q, k, v and o adapted these copies were
    the largest saved tensors of a bf16-base training step (benchmarks/results/training-cpu.md,
    measured by ``benchmarks/activations.py``). The arithmetic is the plain path's; backward casts
    ``x`` again.
    """

    @staticmethod
    def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether ``x`` is narrower than the adapter's ``weight`` with autograd recording. Not
        under autocast, which casts the weights down instead of ``x`` up (and would run this
        backward without autocast)."""
        return (
            x.element_size() < weight.element_size()
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled(x.device.type)
        )

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        h = F.linear(x.to(a.dtype), a) * scaling  # (..., r)
        ctx.save_for_backward(x, a, b, h)
        ctx.scaling = scaling
        return F.linear(h, b)  # (..., out), in the adapter's dtype

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, a, b, h = ctx.saved_tensors
        wants_x, wants_a, wants_b = ctx.needs_input_grad[:3]
        grad = grad.to(b.dtype)  # (..., out)
        grad_h = F.linear(grad, b.T) * ctx.scaling  # (..., r): back through B and the scaling
        grad_x = F.linear(grad_h, a.T).to(x.dtype) if wants_x else None  # (..., in)
        # the weight gradients sum over every position of every row: (N, ...) matrices
        rank = h.shape[-1]
        grad_a = (
            grad_h.reshape(-1, rank).T @ x.reshape(-1, x.shape[-1]).to(a.dtype) if wants_a else None
        )  # (r, in)
        # (out, r)
        grad_b = grad.reshape(-1, grad.shape[-1]).T @ h.reshape(-1, rank) if wants_b else None
        return grad_x, grad_a, grad_b, None
