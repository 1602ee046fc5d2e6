"""ModulesToSaveWrapper on its own: a frozen original, a trainable copy per adapter, rows routed by
adapter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftkit.tuners.modules_to_save import ModulesToSaveWrapper
from peftkit.tuners.rows import group_rows


def _wrapper(*names: str) -> ModulesToSaveWrapper:
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    head.requires_grad_(False)
    wrapper = ModulesToSaveWrapper(head)
    for name in names:
        wrapper.add_adapter(name)
        with torch.no_grad():  # make each copy differ from the original and from each other
            wrapper.modules_to_save[name].weight.add_(float(len(name)))
    return wrapper


def test_copies_train_and_the_original_stays_frozen() -> None:
    wrapper = _wrapper("a")
    assert not any(p.requires_grad for p in wrapper.original_module.parameters())
    assert all(p.requires_grad for p in wrapper.modules_to_save["a"].parameters())
    assert [(k, f) for k, f, _ in wrapper.adapter_parameters("a")] == [
        ("modules_to_save.a.weight", "weight"),
        ("modules_to_save.a.bias", "bias"),
    ]
    assert list(wrapper.adapter_parameters("missing")) == []


def test_forward_uses_the_active_copy_the_original_when_none_or_disabled() -> None:
    wrapper, x = _wrapper("a", "bb"), torch.randn(2, 4)
    original, copy_a = wrapper.original_module, wrapper.modules_to_save["a"]
    torch.testing.assert_close(wrapper(x), original(x))  # nothing active
    wrapper.set_active(["a"])
    torch.testing.assert_close(wrapper(x), copy_a(x))
    assert not torch.allclose(wrapper(x), original(x))
    wrapper.disabled = True
    torch.testing.assert_close(wrapper(x), original(x))


def test_two_copies_cannot_be_active_together() -> None:
    wrapper = _wrapper("a", "bb")
    with pytest.raises(ValueError, match="Only one adapter can be set at a time"):
        wrapper.set_active(["a", "bb"])
    wrapper.set_active(["a", "not-held"])  # names it does not hold are someone else's layers
    assert wrapper.active_adapters == ["a"]


def test_mixed_rows_each_get_their_own_copy() -> None:
    wrapper, x = _wrapper("a", "bb"), torch.randn(4, 4)
    wrapper.rows = group_rows(["a", "__base__", "bb", "a"])
    out = wrapper(x)
    expected = torch.stack(
        [
            wrapper.modules_to_save["a"](x[0]),
            wrapper.original_module(x[1]),
            wrapper.modules_to_save["bb"](x[2]),
            wrapper.modules_to_save["a"](x[3]),
        ]
    )
    torch.testing.assert_close(out, expected)


def test_rows_of_the_wrong_count_are_refused() -> None:
    wrapper = _wrapper("a")
    wrapper.rows = group_rows(["a", "a"])
    with pytest.raises(ValueError, match="Length of `adapter_names`"):
        wrapper(torch.randn(3, 4))


def test_delete_drops_the_copy_and_deactivates_it() -> None:
    wrapper, x = _wrapper("a"), torch.randn(2, 4)
    wrapper.set_active(["a"])
    wrapper.delete_adapter("a")
    assert "a" not in wrapper.modules_to_save and wrapper.active_adapter is None
    torch.testing.assert_close(wrapper(x), wrapper.original_module(x))


def test_a_module_without_a_batch_dimension_refuses_mixed_rows() -> None:
    wrapper = ModulesToSaveWrapper(nn.LayerNorm(4))
    wrapper.add_adapter("a")
    with pytest.raises(TypeError, match="Mixed batching is only supported"):
        wrapper.check_rows(["a", "__base__"])
    wrapper.check_rows(["__base__"])  # no row uses a copy: nothing to split


def test_a_norm_copy_saves_and_loads_its_running_statistics(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A BatchNorm in modules_to_save learns running statistics (buffers, not parameters): they are
    the copy's state too, so they are saved and loaded (PEFT reads them from the same file)."""
    import peft

    import peftkit

    class WithNorm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.norm = torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.linear(x))

    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        WithNorm(), peftkit.LoraConfig(target_modules=["linear"], modules_to_save=["norm"])
    )
    x = torch.randn(8, 3) * 5 + 2
    model.train()
    model(x)  # the copy's running mean and variance move
    model.eval()
    expected = model(x).detach()
    model.save_pretrained(tmp_path)
    for lib in (peftkit, peft):
        torch.manual_seed(0)
        loaded = lib.PeftModel.from_pretrained(WithNorm(), tmp_path).eval()
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=1e-6)
