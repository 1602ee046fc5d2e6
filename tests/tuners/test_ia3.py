"""IA3 layers and models, checked against plain computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftkit import IA3Config, PeftModel, get_peft_model
from peftkit.tuners.ia3 import IA3Linear
from tests.conftest import ARCHS, model_inputs, outputs, tiny_model


@pytest.mark.parametrize("feedforward", [False, True])
def test_layer_equals_scaling_by_hand(feedforward: bool) -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    layer = IA3Linear(base, is_feedforward=feedforward)
    layer.add_adapter("a", init_ia3_weights=False)
    layer.set_active(["a"])
    x = torch.randn(3, 6)
    vector = layer.ia3_l["a"].detach().flatten()
    expected = base(x * vector) if feedforward else base(x) * vector
    torch.testing.assert_close(layer(x), expected)
    layer.merge()
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    layer.merge()  # idempotent
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer(x), base(x))
    layer.disabled = True
    torch.testing.assert_close(layer(x), base(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_ia3_equals_base_and_disabled_equals_base(arch: str) -> None:
    inputs = model_inputs(arch)
    expected = outputs(tiny_model(arch), inputs)
    model = get_peft_model(
        tiny_model(arch), IA3Config(task_type="SEQ_CLS" if arch == "bert" else "CAUSAL_LM")
    )
    torch.testing.assert_close(outputs(model, inputs), expected)
    random = get_peft_model(
        tiny_model(arch),
        IA3Config(init_ia3_weights=False, task_type="SEQ_CLS" if arch == "bert" else "CAUSAL_LM"),
    )
    assert not torch.allclose(outputs(random, inputs), expected)
    with random.disable_adapter():
        torch.testing.assert_close(outputs(random, inputs), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_unloaded_and_reloaded_agree(arch: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    task = "SEQ_CLS" if arch == "bert" else "CAUSAL_LM"
    inputs = model_inputs(arch)
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_model(arch), IA3Config(init_ia3_weights=False, task_type=task)
    ).eval()
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_model(arch), tmp_path)
    torch.testing.assert_close(outputs(reloaded, inputs), expected)
    model.merge_adapter()
    torch.testing.assert_close(outputs(model, inputs), expected, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(outputs(model, inputs), expected, atol=1e-5, rtol=1e-5)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, IA3Linear) for m in plain.modules())
    torch.testing.assert_close(outputs(plain, inputs), expected, atol=1e-5, rtol=1e-5)


def test_only_ia3_vectors_train_and_feedforward_is_scaled_on_input() -> None:
    model = get_peft_model(tiny_model("llama"), IA3Config(task_type="CAUSAL_LM"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".ia3_l." in n for n in trainable)
    down = model.get_base_model().model.layers[0].mlp.down_proj
    k = model.get_base_model().model.layers[0].self_attn.k_proj
    assert down.is_feedforward and down.ia3_l["default"].shape == (1, 64)
    assert not k.is_feedforward and k.ia3_l["default"].shape == (16, 1)
