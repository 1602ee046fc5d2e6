"""DoRA's and the weight-based initializations' tensor math against direct computations (torch
only)."""

from __future__ import annotations

import pytest
import torch

from peftkit.tuners import dora, lora_init

W = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))  # (out, in)
A = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))  # (r, in)
B = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))  # (out, r)
S = 0.5


def test_the_output_is_the_renormalized_weight_applied_to_the_input() -> None:
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    magnitude = torch.rand(6, generator=torch.Generator().manual_seed(4)) + 0.5
    adapted = W + S * B @ A
    # (3, out)
    expected = x @ (magnitude.view(-1, 1) * adapted / adapted.norm(dim=1, keepdim=True)).T
    factor = magnitude / dora.row_norms(W, A, B, S)
    torch.testing.assert_close(x @ W.T + dora.output_change(x @ W.T, x, A, B, S, factor), expected)


def test_merging_then_unmerging_gives_the_weight_back() -> None:
    factor = torch.rand(6, generator=torch.Generator().manual_seed(5)) + 0.5
    merged = dora.merged_weight(W, S * B @ A, factor)
    torch.testing.assert_close(merged, factor.view(-1, 1) * (W + S * B @ A))
    torch.testing.assert_close(dora.unmerged_weight(merged, S * B @ A, factor), W)


@pytest.mark.parametrize("how", ["pissa", "pissa_niter_4", "olora"])
def test_weight_based_inits_split_the_weight_exactly(how: str) -> None:
    a, b, residual = lora_init.olora(W, 2, S) if how == "olora" else lora_init.pissa(W, 2, S, how)
    assert a.shape == (2, 5) and b.shape == (6, 2)
    # the model starts unchanged
    torch.testing.assert_close(residual + S * b @ a, W, atol=1e-5, rtol=1e-5)
    if how == "pissa":  # the adapter holds W's best rank-2 approximation
        u, sigma, vh = torch.linalg.svd(W)
        torch.testing.assert_close(
            S * b @ a, u[:, :2] @ torch.diag(sigma[:2]) @ vh[:2], atol=1e-5, rtol=1e-5
        )
