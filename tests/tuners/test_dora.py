"""DoRA (use_dora=True) checked against the weight-decomposition formula computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftkit import LoraConfig, PeftModel, get_peft_model
from peftkit.tuners.lora import LoraLinear
from tests.conftest import ARCHS, model_inputs, outputs, tiny_model


def test_layer_equals_the_decomposed_weight_by_hand() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoraLinear(base)
    layer.add_adapter("a", r=2, lora_alpha=4, init_lora_weights=False, use_dora=True)
    layer.set_active(["a"])
    with torch.no_grad():
        layer.lora_magnitude_vector["a"].mul_(1.5)  # a trained magnitude, not the initial norms
    a, b, m = layer.lora_A["a"].weight, layer.lora_B["a"].weight, layer.lora_magnitude_vector["a"]
    adapted = base.weight + 2.0 * (b @ a)  # scaling = 4 / 2
    merged_weight = (m / adapted.norm(dim=1)).view(-1, 1) * adapted
    x = torch.randn(3, 6)
    expected = x @ merged_weight.T + base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    original = base.weight.detach().clone()
    layer.merge()
    torch.testing.assert_close(layer.weight, merged_weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.weight, original, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_dora_equals_base(arch: str) -> None:
    inputs = model_inputs(arch)
    task = "SEQ_CLS" if arch == "bert" else "CAUSAL_LM"
    model = get_peft_model(tiny_model(arch), LoraConfig(r=4, use_dora=True, task_type=task))
    torch.testing.assert_close(
        outputs(model, inputs), outputs(tiny_model(arch), inputs), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_dora_merged_unloaded_and_reloaded_agree(arch: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    inputs = model_inputs(arch)
    task = "SEQ_CLS" if arch == "bert" else "CAUSAL_LM"
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_model(arch), LoraConfig(r=4, use_dora=True, init_lora_weights=False, task_type=task)
    ).eval()
    expected = outputs(model, inputs)
    assert not torch.allclose(expected, outputs(tiny_model(arch), inputs))
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(
        outputs(PeftModel.from_pretrained(tiny_model(arch), tmp_path), inputs), expected
    )
    model.merge_adapter()
    torch.testing.assert_close(outputs(model, inputs), expected, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(outputs(model, inputs), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        outputs(model.merge_and_unload(), inputs), expected, atol=1e-5, rtol=1e-5
    )


def test_dora_magnitude_trains_on_linear_and_embedding_layers() -> None:
    model = get_peft_model(
        tiny_model("llama"),
        LoraConfig(r=2, target_modules=["q_proj", "embed_tokens"], use_dora=True),
    )
    trainable = [
        n for n, p in model.named_parameters() if p.requires_grad and "lora_magnitude_vector" in n
    ]
    assert any("q_proj" in n for n in trainable) and any("embed_tokens" in n for n in trainable)


def test_dora_embedding_follows_the_formula() -> None:
    """y = f * E[x] + f * s * (A^T[x]) B^T with f = m / ||E^T + s B A|| per embedding dimension
    (over the vocabulary), computed here from the layer's own tensors."""
    from peftkit.tuners.lora.embedding import LoraEmbedding

    torch.manual_seed(0)
    base = nn.Embedding(12, 6)
    layer = LoraEmbedding(base)
    layer.add_adapter("a", r=2, lora_alpha=4, init_lora_weights=False, use_dora=True)
    layer.set_active(["a"])
    a, b = layer.lora_embedding_A["a"], layer.lora_embedding_B["a"]  # (r, V), (D, r)
    with torch.no_grad():
        layer.lora_magnitude_vector["a"].mul_(torch.linspace(0.5, 1.5, 6))  # away from its start
    m, s = layer.lora_magnitude_vector["a"], 2.0
    factor = m / (base.weight.T + s * (b @ a)).norm(dim=1)  # (D,)
    x = torch.tensor([[0, 3, 11], [5, 5, 2]])
    expected = factor * base.weight[x] + factor * s * (a.T[x] @ b.T)
    torch.testing.assert_close(layer(x), expected)


def test_bf16_base_dora_trains_with_the_formula_gradients_and_no_fp32_input_copy() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 5, bias=False).to(torch.bfloat16)
    layer = LoraLinear(base)
    layer.add_adapter("a", r=2, lora_alpha=4, init_lora_weights=False, use_dora=True)
    layer.set_active(["a"])
    layer.train()
    a, b, m = layer.lora_A["a"].weight, layer.lora_B["a"].weight, layer.lora_magnitude_vector["a"]
    x = torch.randn(2, 3, 6, dtype=torch.bfloat16, requires_grad=True)
    w = base.weight.float()
    # (out,): the norm is a constant, as in PEFT
    factor = m / (w + 2.0 * (b @ a)).norm(dim=1).detach()
    base_out = base(x)  # (2, 3, 5)
    expected = base_out + ((factor - 1) * base_out + factor * 2.0 * (x.float() @ a.T @ b.T)).to(
        torch.bfloat16
    )
    grad = torch.randn_like(expected)
    want = torch.autograd.grad(expected, [x, a, b, m], grad)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    got = torch.autograd.grad(out, [x, a, b, m], grad)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    for g, w_ in zip(got, want, strict=True):
        torch.testing.assert_close(g, w_, atol=1e-2, rtol=1e-2)
    assert not [t for t in saved if t.dtype == torch.float32 and t.numel() == x.numel()]


@pytest.mark.parametrize("first_dora", [True, False], ids=["dora+dora", "lora+dora"])
def test_several_active_adapters_with_dora_merge_to_their_forward(first_dora: bool) -> None:
    """Two adapters active together (the second DoRA): merging both gives the forward's output, and
    unmerging gives the base weight back. The second adapter's norm is that of the unmerged weight,
    as in the forward."""
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    weight = base.weight.detach().clone()
    layer = LoraLinear(base)
    layer.add_adapter("a", r=2, lora_alpha=4, init_lora_weights=False, use_dora=first_dora)
    layer.add_adapter("b", r=2, lora_alpha=4, init_lora_weights=False, use_dora=True)
    with torch.no_grad():
        for name in ("a", "b"):
            if name in layer.lora_magnitude_vector:
                layer.lora_magnitude_vector[name].mul_(torch.linspace(0.5, 1.5, 5))
    layer.set_active(["a", "b"])
    layer.eval()
    x = torch.randn(3, 6)
    with torch.no_grad():
        expected = layer(x)
        layer.merge(["a", "b"])
        torch.testing.assert_close(base(x), expected)
        layer.unmerge()
    torch.testing.assert_close(base.weight, weight)
