"""The tensor arithmetic of weighted adapters, on hand-made tensors (no PEFT needed)."""

from __future__ import annotations

import pytest
import torch

from peftkit.surgery.merging import mix

T1 = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
T2 = torch.tensor([[-1.0, -2.0], [1.0, 0.1]])


def test_linear_is_the_weighted_sum() -> None:
    torch.testing.assert_close(mix([T1, T2], torch.tensor([1.0, 0.5]), "linear"), T1 + 0.5 * T2)


def test_magnitude_prune_keeps_the_largest_share_of_each_task() -> None:
    task = torch.tensor([[1.0, -4.0], [2.0, -3.0]])
    out = mix([task], torch.tensor([2.0]), "magnitude_prune", density=0.5)
    # -4 and -3 kept, times 2
    torch.testing.assert_close(out, torch.tensor([[0.0, -8.0], [0.0, -6.0]]))


def test_ties_averages_only_the_tasks_that_agree_with_the_majority_sign() -> None:
    # entry (0, 0): 3 and -1 sum to +2, so only task 1 (3) counts: 3 / 1; entry (0, 1): both
    # negative: (-1 - 2) / 2; the second row: both positive: (0.5 + 1) / 2 and (2 + 0.1) / 2
    out = mix([T1, T2], torch.tensor([1.0, 1.0]), "ties", density=1.0)
    torch.testing.assert_close(out, torch.tensor([[3.0, -1.5], [0.75, 1.05]]))


@pytest.mark.parametrize(("sign_method", "expected"), [("total", 3.0), ("frequency", -1.0)])
def test_ties_majority_by_total_mass_or_by_count(sign_method: str, expected: float) -> None:
    # mass says +, count says -
    tasks = [torch.tensor([3.0]), torch.tensor([-1.0]), torch.tensor([-1.0])]
    out = mix(tasks, torch.ones(3), "ties", density=1.0, sign_method=sign_method)
    torch.testing.assert_close(out, torch.tensor([expected]))


def test_ties_prunes_before_voting() -> None:
    # density 0.5 keeps each task's two largest entries (3 and 2; -2 and 1.5); a pruned (zero) entry
    # has no sign and no vote, so each entry here is the one task that kept it
    other = torch.tensor([[-1.0, -2.0], [1.5, 0.1]])
    out = mix([T1, other], torch.tensor([1.0, 1.0]), "ties", density=0.5)
    torch.testing.assert_close(out, torch.tensor([[3.0, -2.0], [1.5, 2.0]]))


def test_dare_keeps_each_entry_with_probability_density_and_rescales_it() -> None:
    task = torch.arange(1, 20001, dtype=torch.float32)
    torch.manual_seed(0)
    out = mix([task], torch.tensor([1.0]), "dare_linear", density=0.25)
    kept = out != 0
    torch.testing.assert_close(out[kept], task[kept] * 4)  # survivors scaled by 1 / density
    assert abs(kept.float().mean().item() - 0.25) < 0.01  # about a quarter survive
    torch.manual_seed(0)
    # seeded
    torch.testing.assert_close(mix([task], torch.tensor([1.0]), "dare_linear", density=0.25), out)
