"""LoRA layers against hand-written formulas: y = W x + b + (alpha / r) * B A x."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.tuners.lora import LoraLinear
from peftkit.tuners.lora.embedding import LoraEmbedding


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(6, 5)


def _randomize(layer: LoraLinear, name: str = "default") -> None:
    with torch.no_grad():
        layer.lora_B[name].weight.normal_()


def test_zero_init_is_the_base_layer():
    base = _linear()
    layer = LoraLinear(base)
    layer.add_adapter("default", r=2, lora_alpha=4)
    layer.set_active(["default"])
    x = torch.randn(3, 6)
    assert torch.equal(layer(x), base(x))


def test_forward_matches_formula_with_scaling():
    base = _linear()
    layer = LoraLinear(base)
    layer.add_adapter("default", r=2, lora_alpha=6)
    layer.set_active(["default"])
    _randomize(layer)
    x = torch.randn(3, 6)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = x @ base.weight.T + base.bias + 3.0 * (x @ a.T @ b.T)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_rslora_scaling():
    layer = LoraLinear(_linear())
    layer.add_adapter("default", r=4, lora_alpha=8, use_rslora=True)
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))


def test_kaiming_and_gaussian_init():
    layer = LoraLinear(_linear())
    layer.add_adapter("k", r=4, lora_alpha=4, init_lora_weights=True)
    layer.add_adapter("g", r=4, lora_alpha=4, init_lora_weights="gaussian")
    layer.add_adapter("f", r=4, lora_alpha=4, init_lora_weights=False)
    bound = 1 / math.sqrt(6)  # kaiming_uniform(a=sqrt(5)) on fan_in 6
    assert layer.lora_A["k"].weight.abs().max() <= bound
    assert torch.count_nonzero(layer.lora_B["k"].weight) == 0
    assert torch.count_nonzero(layer.lora_B["g"].weight) == 0
    assert torch.count_nonzero(layer.lora_B["f"].weight) > 0


def test_merge_is_idempotent_and_unmerge_restores():
    base = _linear()
    original = base.weight.detach().clone()
    layer = LoraLinear(base)
    layer.add_adapter("default", r=2, lora_alpha=2)
    layer.set_active(["default"])
    _randomize(layer)
    x = torch.randn(4, 6)
    unmerged = layer(x)
    layer.merge()
    once = base.weight.detach().clone()
    layer.merge()
    assert torch.equal(base.weight, once)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(base(x), unmerged, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(base.weight, original, atol=1e-6, rtol=0)
    assert layer.merged_adapters == []


def test_conv1d_fan_in_fan_out():
    torch.manual_seed(0)
    base = Conv1D(5, 6)  # nf=5 outputs, nx=6 inputs; weight stored (6, 5)
    nn.init.normal_(base.weight)
    layer = LoraLinear(base, fan_in_fan_out=True)
    layer.add_adapter("default", r=3, lora_alpha=3)
    layer.set_active(["default"])
    _randomize(layer)
    x = torch.randn(2, 4, 6)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = x @ base.weight + base.bias + x @ a.T @ b.T
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    layer.merge()
    torch.testing.assert_close(base(x), expected, atol=1e-5, rtol=1e-5)


def test_embedding_matches_lookup_of_merged_table():
    torch.manual_seed(0)
    base = nn.Embedding(20, 4)
    layer = LoraEmbedding(base)
    layer.add_adapter("default", r=2, lora_alpha=4, init_lora_weights=False)
    layer.set_active(["default"])
    ids = torch.randint(0, 20, (3, 5))
    a, b = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
    table = base.weight + 2.0 * (b @ a).T
    torch.testing.assert_close(layer(ids), table[ids], atol=1e-5, rtol=1e-5)


def test_embedding_zero_init_is_base():
    base = nn.Embedding(20, 4)
    layer = LoraEmbedding(base)
    layer.add_adapter("default", r=2, lora_alpha=4)
    layer.set_active(["default"])
    ids = torch.randint(0, 20, (3, 5))
    assert torch.equal(layer(ids), base(ids))


def test_disabled_layer_is_base_even_when_merged():
    base = _linear()
    layer = LoraLinear(base)
    layer.add_adapter("default", r=2, lora_alpha=2)
    layer.set_active(["default"])
    _randomize(layer)
    x = torch.randn(2, 6)
    reference = nn.functional.linear(x, base.weight.detach().clone(), base.bias)
    layer.merge()
    layer.disabled = True
    torch.testing.assert_close(layer(x), reference, atol=1e-5, rtol=1e-5)


def test_two_adapters_and_delete():
    base = _linear()
    layer = LoraLinear(base)
    layer.add_adapter("a", r=2, lora_alpha=2)
    layer.add_adapter("b", r=2, lora_alpha=2)
    _randomize(layer, "a")
    _randomize(layer, "b")
    x = torch.randn(2, 6)
    layer.set_active(["a"])
    ya = layer(x)
    layer.set_active(["b"])
    yb = layer(x)
    assert not torch.allclose(ya, yb)
    layer.merge(["a"])
    layer.delete_adapter("a")  # deleting a merged adapter unmerges it first
    assert "a" not in layer.lora_A and layer.merged_adapters == []
    torch.testing.assert_close(layer(x), yb, atol=1e-5, rtol=1e-5)


def _adapted(base: nn.Module, **adapter: float) -> LoraLinear:
    """``base`` wrapped, with one active adapter whose B is random (so its update is not zero)."""
    layer = LoraLinear(base)
    layer.add_adapter("default", **adapter)  # type: ignore[arg-type]
    layer.set_active(["default"])
    _randomize(layer)
    return layer


def test_gradients_match_formula_on_batched_input():
    """The functional forward (B's output added with alpha=scaling) gives the formula's output and
    gradients."""
    base = _linear()
    layer = _adapted(base, r=2, lora_alpha=6)
    x = torch.randn(2, 3, 6, requires_grad=True)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = x @ base.weight.T + base.bias + 3.0 * (x @ a.T @ b.T)  # (2, 3, 5)
    grad = torch.randn_like(expected)
    want = torch.autograd.grad(expected, [x, a, b], grad)
    got_out = layer(x)
    got = torch.autograd.grad(got_out, [x, a, b], grad)
    torch.testing.assert_close(got_out, expected, atol=1e-5, rtol=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_dropout_applies_to_the_adapter_input_only():
    base = _linear()
    layer = _adapted(base, r=2, lora_alpha=2, lora_dropout=0.5)
    layer.train()
    x = torch.randn(4, 6)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    torch.manual_seed(1)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    expected = base(x) + dropped @ a.T @ b.T
    torch.manual_seed(1)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    layer.eval()
    torch.testing.assert_close(layer(x), base(x) + x @ a.T @ b.T, atol=1e-5, rtol=1e-5)


def test_bf16_base_gets_the_fp32_update_rounded_once():
    base = _linear().to(torch.bfloat16)
    layer = _adapted(base, r=2, lora_alpha=4)
    x = torch.randn(3, 6, dtype=torch.bfloat16)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert a.dtype == torch.float32  # the adapter stays fp32 on a bf16 base
    update = (2.0 * (x.float() @ a.T @ b.T)).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, base(x) + update, atol=0, rtol=0)


def test_bf16_base_training_keeps_the_input_not_its_fp32_copy():
    """On a bf16 base the update is computed in fp32 (as above) with the same gradients as plain
    autograd of the formula, while backward keeps the bf16 input, not an fp32 copy of it."""
    base = _linear().to(torch.bfloat16)
    layer = _adapted(base, r=2, lora_alpha=4)
    _randomize(layer)
    layer.train()
    x = torch.randn(2, 3, 6, dtype=torch.bfloat16, requires_grad=True)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = base(x) + (2.0 * (x.float() @ a.T @ b.T)).to(torch.bfloat16)  # (2, 3, 5)
    grad = torch.randn_like(expected)
    want = torch.autograd.grad(expected, [x, a, b], grad)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    got = torch.autograd.grad(out, [x, a, b], grad)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        # x's gradient sums two bf16 terms in either order
        torch.testing.assert_close(g, w, atol=1e-2, rtol=1e-2)
    # autograd saves it flattened
    assert not [t for t in saved if t.dtype == torch.float32 and t.numel() == x.numel()]


@pytest.mark.parametrize("dora", [False, True])
def test_autocast_with_a_bf16_input_matches_an_fp32_input_and_backpropagates(dora: bool):
    """Under autocast a bf16 input meets fp32 adapter weights (an attention output feeding o_proj):
    the layer gives what it gives an fp32 copy of the input, and backward outside autocast reaches A
    and B in fp32."""
    base = _linear()
    layer = LoraLinear(base)
    layer.add_adapter("default", r=2, lora_alpha=4, init_lora_weights=False, use_dora=dora)
    layer.set_active(["default"])
    layer.train()
    x = torch.randn(2, 3, 6, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        # the same layer on an fp32 copy of x
        reference = layer(x.detach().float().requires_grad_())
    out.float().sum().backward()
    grads = [
        p.grad.clone() for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight)
    ]
    assert all(g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)
    torch.testing.assert_close(out.float(), reference.float(), atol=5e-2, rtol=5e-2)


def test_a_long_target_list_is_recorded_as_its_shortest_suffixes(tmp_path: Path) -> None:
    from peftkit import LoraConfig, PeftModel, get_peft_model
    from peftkit.surgery import MIN_TARGET_MODULES_FOR_OPTIMIZATION, minimal_target_modules

    def model() -> nn.Module:
        torch.manual_seed(0)
        blocks = nn.ModuleList(
            nn.ModuleDict({"q": nn.Linear(4, 4), "v": nn.Linear(4, 4), "k": nn.Linear(4, 4)})
            for _ in range(MIN_TARGET_MODULES_FOR_OPTIMIZATION)
        )
        # "q" alone would pick it too
        single = nn.ModuleList([nn.ModuleDict({"q": nn.Linear(4, 4)})])
        return nn.ModuleDict({"blocks": blocks, "single_blocks": single})

    full = [
        f"blocks.{i}.{p}" for i in range(MIN_TARGET_MODULES_FOR_OPTIMIZATION) for p in ("q", "v")
    ]
    peft_model = get_peft_model(model(), LoraConfig(target_modules=full))
    # "q" alone would also pick single_blocks.0.q, so the q layers keep the shortest suffix that
    # does not ("0.q" also ends single_blocks.0.q; "10.q" is not a suffix of it, names being split
    # at the dots)
    expected = {
        "blocks.0.q",
        *{f"{i}.q" for i in range(1, MIN_TARGET_MODULES_FOR_OPTIMIZATION)},
        "v",
    }
    assert peft_model.peft_config["default"].target_modules == expected
    # the same layers as the full list
    assert sorted(peft_model.targeted_module_names) == sorted(full)
    peft_model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(model(), tmp_path)
    assert sorted(loaded.targeted_module_names) == sorted(full)
    assert minimal_target_modules([f"a.{i}.q_proj" for i in range(3)], ["a.0.k_proj"]) == {"q_proj"}
    with pytest.raises(ValueError, match="common elements"):
        minimal_target_modules(["a.q"], ["a.q"])
