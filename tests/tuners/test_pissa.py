"""PiSSA and OLoRA initialization: equal to the base at the start, equal to PEFT's, and convertible
to LoRA."""

from __future__ import annotations

import peft
import pytest
import torch

from peftkit import ConfigError, LoraConfig, PeftModel, get_peft_model
from tests.conftest import model_inputs, outputs, tiny_model

INITS = [("llama", "pissa"), ("llama", "olora"), ("llama", "pissa_niter_4"), ("gpt2", "pissa")]


@pytest.mark.parametrize(("arch", "init"), INITS)
def test_initialized_model_equals_the_base(arch: str, init: str) -> None:
    inputs = model_inputs(arch)
    model = get_peft_model(tiny_model(arch), LoraConfig(r=4, lora_alpha=8, init_lora_weights=init))
    torch.testing.assert_close(
        outputs(model, inputs), outputs(tiny_model(arch), inputs), atol=1e-4, rtol=1e-4
    )
    with model.disable_adapter():  # the base now holds only the residual
        assert not torch.allclose(
            outputs(model, inputs), outputs(tiny_model(arch), inputs), atol=1e-3
        )


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_same_factors_and_residual_as_peft(init: str) -> None:
    ours = get_peft_model(
        tiny_model("llama"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=init),
    )
    theirs = peft.get_peft_model(
        tiny_model("llama"),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=init),
    )
    a = dict(ours.named_parameters())
    b = dict(theirs.named_parameters())
    for key in ("lora_A.default.weight", "lora_B.default.weight", "base_layer.weight"):
        name = f"base_model.model.model.layers.1.self_attn.q_proj.{key}"
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5)


def test_conversion_to_plain_lora_gives_the_trained_model_on_the_original_base(tmp_path) -> None:  # type: ignore[no-untyped-def]
    inputs = model_inputs("llama")
    model = get_peft_model(
        tiny_model("llama"), LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa")
    )
    model.save_pretrained(tmp_path / "initial")
    with torch.no_grad():  # stands in for training
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.05 * torch.randn_like(p))
    trained = outputs(model.eval(), inputs)
    model.save_pretrained(
        tmp_path / "lora", path_initial_model_for_weight_conversion=tmp_path / "initial"
    )
    # the untouched original base
    ours = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "lora")
    assert (
        ours.peft_config["default"].r == 8 and ours.peft_config["default"].init_lora_weights is True
    )
    torch.testing.assert_close(outputs(ours, inputs), trained, atol=1e-4, rtol=1e-4)
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "lora")
    torch.testing.assert_close(outputs(theirs, inputs), trained, atol=1e-4, rtol=1e-4)


def test_bad_inits_are_refused() -> None:
    with pytest.raises(ConfigError, match="init_lora_weights='pisa'"):
        LoraConfig(init_lora_weights="pisa")
    with pytest.raises(ConfigError, match="Conv1D"):
        get_peft_model(tiny_model("gpt2"), LoraConfig(r=2, init_lora_weights="olora"))
    with pytest.raises(ConfigError, match="embedding"):
        get_peft_model(
            tiny_model("llama"),
            LoraConfig(r=2, target_modules=["embed_tokens"], init_lora_weights="pissa"),
        )
