"""What every weight-side adapter layer shares (tuners/base.py), on one LoRA layer around an
nn.Linear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftkit.errors import TrainingError
from peftkit.tuners.lora import LoraLinear

X = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))


def _layer() -> LoraLinear:
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(6, 4))
    for name in ("a", "b"):
        layer.add_adapter(name, r=2, lora_alpha=4, init_lora_weights=False)
    layer.set_adapter("a")
    return layer.eval()


def _trainable_adapters(layer: LoraLinear) -> set[str]:
    return {n for n, p in layer.named_parameters() if p.requires_grad and n.startswith("lora_")}


def test_the_active_adapter_adds_its_update_and_only_it_trains() -> None:
    layer = _layer()
    base = layer.base_layer(X)
    a = layer.lora_A["a"].weight
    b = layer.lora_B["a"].weight
    torch.testing.assert_close(layer(X), base + 2.0 * X @ a.T @ b.T)  # scaling = alpha / r = 2
    # the base is frozen by surgery
    assert _trainable_adapters(layer) == {"lora_A.a.weight", "lora_B.a.weight"}


def test_merge_is_idempotent_and_unmerge_restores_the_weight() -> None:
    layer = _layer()
    weight, expected = layer.weight.detach().clone(), layer(X).detach()
    layer.merge()
    layer.merge()  # a second merge is a no-op
    assert layer.merged_adapters == ["a"]
    torch.testing.assert_close(layer.weight, weight + layer.delta_weight("a"))
    torch.testing.assert_close(layer(X), expected)  # merged: the same output, the update inside W
    layer.unmerge()
    torch.testing.assert_close(layer.weight, weight)


def test_a_disabled_layer_is_its_base_layer_and_its_adapters_freeze() -> None:
    layer = _layer()
    layer.merge()
    layer.enable_adapters(False)
    torch.testing.assert_close(layer(X), layer.base_layer(X))  # a merged adapter is taken out first
    assert not layer.merged_adapters and not any(
        p.requires_grad for n, p in layer.named_parameters() if "lora_" in n
    )
    layer.enable_adapters(True)
    assert _trainable_adapters(layer) == {"lora_A.a.weight", "lora_B.a.weight"}


def test_a_non_finite_adapter_is_never_merged() -> None:
    layer = _layer()
    weight = layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B["a"].weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="NaN or infinite"):
        layer.merge()
    torch.testing.assert_close(layer.weight, weight)


def test_deleting_a_merged_adapter_takes_it_out_of_the_weight() -> None:
    layer = _layer()
    weight = layer.weight.detach().clone()
    layer.merge()
    layer.delete_adapter("a")
    torch.testing.assert_close(layer.weight, weight)
    assert layer.adapter_names == ["b"]


class _ScaledLinear(nn.Linear):
    """A subclass whose forward differs from F.linear, as a quantized or sharded layer's does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 3


def _lora_over(base: nn.Module) -> tuple[LoraLinear, torch.Tensor]:
    """A LoRA layer around ``base`` and what it must give: ``base``'s own call plus the update."""
    layer = LoraLinear(base)
    layer.add_adapter("a", r=2, lora_alpha=4, init_lora_weights=False)
    layer.set_adapter("a")
    update = 2.0 * X @ layer.lora_A["a"].weight.T @ layer.lora_B["a"].weight.T
    return layer.eval(), base(X) + update


def test_the_base_layer_shortcut_gives_what_calling_the_layer_gives() -> None:
    torch.manual_seed(0)
    layer, expected = _lora_over(nn.Linear(6, 4))
    torch.testing.assert_close(layer(X), expected, rtol=0, atol=0)


def test_a_hooked_or_subclassed_base_layer_is_called_as_a_module() -> None:
    torch.manual_seed(0)
    hooked = nn.Linear(6, 4)
    hooked.register_forward_hook(lambda module, args, out: out + 100)
    layer, expected = _lora_over(hooked)  # expected holds the hook's +100
    torch.testing.assert_close(layer(X), expected)
    layer, expected = _lora_over(_ScaledLinear(6, 4))
    torch.testing.assert_close(layer(X), expected)
    plain, expected = _lora_over(nn.Linear(6, 4))
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, args, out: out + 100 if type(module) is nn.Linear else out
    )
    try:
        torch.testing.assert_close(plain(X), expected + 100)  # the factors are no module calls
    finally:
        handle.remove()
