"""PEFT's public behaviours found by running PEFT's whole test suite (issue 40), side by side with
PEFT.

Attribute forwarding from the model to the base model, IA3's weighted combination, gradient
checkpointing preparation, and the refusals PEFT gives for prompt-learning adapters.
"""

from __future__ import annotations

import copy
import types
from typing import Any

import peft
import pytest
import torch
from torch import nn

import peftkit

from ..conftest import model_inputs, outputs, tiny_model

LIBS = {"peft": peft, "peftkit": peftkit}


@pytest.fixture(params=list(LIBS))
def lib(request: pytest.FixtureRequest) -> types.ModuleType:
    return LIBS[request.param]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0, self.lin1 = nn.Linear(4, 8), nn.Linear(8, 2)
        self.scale = 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(x))) * self.scale


def test_unknown_attributes_reach_the_base_model(lib: types.ModuleType) -> None:
    base = MLP()
    original = base.lin0
    model = lib.get_peft_model(base, lib.LoraConfig(target_modules=["lin0"]))
    assert model.lin1 is base.lin1  # a submodule
    assert model.scale == 3.0  # a plain attribute
    assert model.base_model.lin1 is base.lin1  # the tuner (holder) forwards too
    assert model.model is base  # PEFT: peft_model.model is base_model.model
    assert model.lin0 is not original  # the adapted layer, wrapping the original
    assert model.lin0.base_layer is original
    with pytest.raises(AttributeError, match="no_such_attribute"):
        model.no_such_attribute  # noqa: B018


def test_forwarding_survives_a_deep_copy(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"]))
    clone = copy.deepcopy(model)
    assert clone.lin1 is clone.get_base_model().lin1
    assert clone.lin1 is not model.lin1


def test_a_transformers_model_forwards_its_heads(lib: types.ModuleType) -> None:
    base = tiny_model("llama")
    model = lib.get_peft_model(base, lib.LoraConfig(target_modules=["q_proj"]))
    assert model.lm_head is base.lm_head  # TRL reads model.lm_head
    assert model.model is base  # the tuner's .model: the wrapped model itself


def _ia3(lib: types.ModuleType) -> Any:
    return lib.IA3Config(
        target_modules=["k_proj", "down_proj"],
        feedforward_modules=["down_proj"],
        init_ia3_weights=False,
    )


def test_ia3_weighted_adapter_equals_peft() -> None:
    """The combined IA3 adapter's logits equal PEFT's for the same adapters, and its vectors are
    sum(w * l)."""
    inputs, logits = model_inputs("llama"), {}
    for name, lib in LIBS.items():
        torch.manual_seed(0)
        model = lib.get_peft_model(tiny_model("llama"), _ia3(lib))
        model.add_adapter("other", _ia3(lib))
        model.add_weighted_adapter(["default", "other"], [0.7, -0.4], "mix")
        model.set_adapter("mix")
        layer = model.get_base_model().model.layers[0].self_attn.k_proj
        expected = 0.7 * layer.ia3_l["default"] + -0.4 * layer.ia3_l["other"]
        torch.testing.assert_close(layer.ia3_l["mix"], expected, rtol=0, atol=0)
        logits[name] = outputs(model, inputs)
    torch.testing.assert_close(logits["peftkit"], logits["peft"], rtol=0, atol=0)


def test_prefix_tuning_on_a_checkpointed_model_is_refused(lib: types.ModuleType) -> None:
    base = tiny_model("llama")
    base.gradient_checkpointing_enable()
    config = lib.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    with pytest.raises(ValueError, match="does not work with gradient checkpointing"):
        lib.get_peft_model(base, config)


def test_prompt_adapters_cannot_be_unloaded(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(
        tiny_model("llama"), lib.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    with pytest.raises(AttributeError):
        model.unload()
    with pytest.raises(AttributeError):
        model.merge_and_unload()


def test_a_checkpointed_model_gets_input_grads(lib: types.ModuleType) -> None:
    """Wrapping a model that checkpoints makes the embeddings' output require grad (PEFT prepares
    it), so the adapters of a frozen, checkpointed model still get gradients."""
    base = tiny_model("llama")
    base.gradient_checkpointing_enable()
    model = lib.get_peft_model(
        base, lib.LoraConfig(target_modules=["q_proj"], init_lora_weights=False)
    )
    model.train()
    embedded = model.get_input_embeddings()(torch.tensor([[5, 6, 7]]))
    assert embedded.requires_grad
    model(**model_inputs("llama")).logits.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_prompt_adapter_has_no_prefix_and_no_recursion(lib: types.ModuleType) -> None:
    """hasattr(model, "prefix") is False for prompt methods (PEFT's tests ask it); the forwarding
    must not loop back through the holder."""
    config = lib.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, encoder_hidden_size=8
    )
    model = lib.get_peft_model(tiny_model("llama"), config)
    assert not hasattr(model, "prefix")
    lora = lib.get_peft_model(tiny_model("llama"), lib.LoraConfig(target_modules=["q_proj"]))
    assert lora.prefix == "lora_"


def test_has_active_enabled_adapter_follows_disable_adapter(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"]))
    assert model.has_active_enabled_adapter
    with model.disable_adapter():
        assert not model.has_active_enabled_adapter
        with model.disable_adapter():
            assert not model.has_active_enabled_adapter
        assert not model.has_active_enabled_adapter
    assert model.has_active_enabled_adapter


def test_kbit_preparation_leaves_a_full_precision_model_unchecked(lib: types.ModuleType) -> None:
    """PEFT turns gradient checkpointing on only for a quantized model; a full-precision one is
    frozen and cast, so prefix tuning still applies to it afterwards."""
    base = lib.prepare_model_for_kbit_training(tiny_model("llama"))
    assert not any(p.requires_grad for p in base.parameters())
    assert not base.is_gradient_checkpointing
    lib.get_peft_model(base, lib.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_deleting_the_last_adapter_leaves_the_base_model(
    lib: types.ModuleType, method: str
) -> None:
    """No active adapter remains (PEFT's behaviour). peftkit then runs as the base model (PEFT's
    forward fails there: KeyError for LoRA, TypeError for prompt tuning) and refuses to save
    nothing, with the reason."""
    base = tiny_model("llama")
    inputs = model_inputs("llama")
    expected = outputs(base, inputs)
    config = (
        lib.LoraConfig(target_modules=["q_proj"], init_lora_weights=False)
        if method == "lora"
        else lib.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    model = lib.get_peft_model(base, config)
    model.delete_adapter("default")
    assert model.active_adapters == []
    assert "default" not in model.peft_config
    if lib is peftkit:
        torch.testing.assert_close(outputs(model, inputs), expected, rtol=0, atol=0)
        with pytest.raises(peftkit.AdapterNotFoundError, match="holds no adapter"):
            model.save_pretrained("unused")


def test_a_saved_module_answers_with_the_copy_in_use(lib: types.ModuleType) -> None:
    """model.lin1.weight / .bias are the active adapter's copy, or the original when adapters are
    off."""
    model = lib.get_peft_model(
        MLP(), lib.LoraConfig(target_modules=["lin0"], modules_to_save=["lin1"])
    )
    model.add_adapter("other", lib.LoraConfig(target_modules=["lin0"], modules_to_save=["lin1"]))
    wrapper = model.lin1
    assert wrapper.weight is wrapper.modules_to_save["default"].weight
    assert wrapper.bias is wrapper.modules_to_save["default"].bias
    model.set_adapter("other")
    assert wrapper.bias is wrapper.modules_to_save["other"].bias
    assert wrapper.in_features == 8
    with model.disable_adapter():
        assert wrapper.weight is wrapper.original_module.weight


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_mixed_adapter_batches_with_beam_search_equal_each_adapter_alone(arch: str) -> None:
    """generate(num_beams=3, adapter_names=[...]): every row's beams are its own adapter's (PEFT
    repeats the names per beam for the decoder and keeps the encoder's rows), checked against each
    adapter generating alone."""
    torch.manual_seed(0)
    model = peftkit.get_peft_model(tiny_model(arch), _lora_qv(arch))
    model.add_adapter("other", _lora_qv(arch))
    model.eval()
    inputs = {k: v for k, v in model_inputs(arch).items() if k != "decoder_input_ids"}
    names = ["default", "other"]
    kwargs = {"max_new_tokens": 4, "num_beams": 3, "do_sample": False}
    mixed = model.generate(**inputs, adapter_names=names, **kwargs)
    for row, name in enumerate(names):
        model.set_adapter(name)
        alone = model.generate(**{k: v[row : row + 1] for k, v in inputs.items()}, **kwargs)
        assert torch.equal(mixed[row : row + 1, : alone.shape[1]], alone)


def _lora_qv(arch: str) -> Any:
    targets = ["q", "v"] if arch == "t5" else ["q_proj", "v_proj"]
    return peftkit.LoraConfig(target_modules=targets, init_lora_weights=False, r=4, lora_alpha=32)


def test_set_requires_grad_turns_an_adapter_on_and_off(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"]))
    model.add_adapter("other", lib.LoraConfig(target_modules=["lin0"]))  # inactive, frozen
    model.set_requires_grad("other")
    assert all(p.requires_grad for n, p in model.named_parameters() if ".other." in n)
    model.set_requires_grad(["default", "other"], requires_grad=False)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    prompt = lib.get_peft_model(
        tiny_model("llama"), lib.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    with pytest.raises(TypeError, match="not supported for prompt learning"):
        prompt.set_requires_grad("default")
