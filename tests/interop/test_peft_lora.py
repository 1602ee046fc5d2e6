"""LoRA adapters round-trip with Hugging Face PEFT in both directions, with identical logits."""

from __future__ import annotations

import json

import peft
import pytest
import torch

import peftkit

from ..conftest import ARCHS, model_inputs, outputs, tiny_model

TASK = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "bloom": "CAUSAL_LM", "bert": "SEQ_CLS"}
CONFIGS = {
    "default": {},
    "all-linear-rslora": {
        "target_modules": "all-linear",
        "use_rslora": True,
        "r": 4,
        "lora_alpha": 16,
    },
    "bias-lora-only": {"bias": "lora_only", "lora_alpha": 4},
    "dora": {"use_dora": True, "r": 4, "lora_alpha": 8},
}


def _randomize(model: torch.nn.Module) -> None:
    """Random values for everything the adapter file carries (LoRA, heads, and biases when saved)."""
    g = torch.Generator().manual_seed(11)
    saves_bias = model.peft_config["default"].bias != "none"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (
                "lora_" in name
                or "modules_to_save" in name
                or (saves_bias and name.endswith("base_layer.bias"))
            ):
                p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", list(CONFIGS))
def test_peftkit_to_peft(arch, variant, tmp_path):
    inputs = model_inputs(arch)
    config = peftkit.LoraConfig(task_type=TASK[arch], **CONFIGS[variant])
    ours = peftkit.get_peft_model(tiny_model(arch), config)
    _randomize(ours)
    expected = outputs(ours, inputs)
    ours.save_pretrained(tmp_path)

    assert isinstance(peft.PeftConfig.from_pretrained(tmp_path), peft.LoraConfig)
    theirs = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path)
    torch.testing.assert_close(outputs(theirs, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", list(CONFIGS))
def test_peft_to_peftkit(arch, variant, tmp_path):
    inputs = model_inputs(arch)
    config = peft.LoraConfig(task_type=TASK[arch], **CONFIGS[variant])
    theirs = peft.get_peft_model(tiny_model(arch), config)
    _randomize(theirs)
    expected = outputs(theirs, inputs)
    theirs.save_pretrained(tmp_path)

    ours = peftkit.PeftModel.from_pretrained(tiny_model(arch), tmp_path)
    torch.testing.assert_close(outputs(ours, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", list(CONFIGS))
def test_same_trainable_count_as_peft(arch, variant):
    ours = peftkit.get_peft_model(
        tiny_model(arch), peftkit.LoraConfig(task_type=TASK[arch], **CONFIGS[variant])
    )
    theirs = peft.get_peft_model(
        tiny_model(arch), peft.LoraConfig(task_type=TASK[arch], **CONFIGS[variant])
    )
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


def test_same_state_dict_keys_as_peft(tmp_path):
    from safetensors.torch import load_file

    peftkit.get_peft_model(tiny_model("gpt2"), peftkit.LoraConfig()).save_pretrained(
        tmp_path / "ours"
    )
    peft.get_peft_model(tiny_model("gpt2"), peft.LoraConfig()).save_pretrained(tmp_path / "theirs")
    ours = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "theirs" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] is True and cfg["peft_type"] == "LORA"


def test_named_adapter_subfolder_loads_in_peft(tmp_path):
    inputs = model_inputs("llama")
    ours = peftkit.get_peft_model(tiny_model("llama"), peftkit.LoraConfig(init_lora_weights=False))
    ours.add_adapter(
        "second", peftkit.LoraConfig(init_lora_weights=False, target_modules=["o_proj"])
    )
    ours.set_adapter("second")
    expected = outputs(ours, inputs)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    theirs.load_adapter(tmp_path / "second", adapter_name="second")
    theirs.set_adapter("second")
    torch.testing.assert_close(outputs(theirs, inputs), expected, atol=1e-5, rtol=1e-5)


def test_unknown_fields_from_newer_peft_are_ignored_with_warning(tmp_path):
    peft.get_peft_model(tiny_model("llama"), peft.LoraConfig()).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    data = json.loads(path.read_text())
    data["a_field_from_the_future"] = 3
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="a_field_from_the_future"):
        peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)


def test_unsupported_peft_feature_is_refused(tmp_path):
    peft.get_peft_model(
        tiny_model("llama"), peft.LoraConfig(layer_replication=[[0, 1]])
    ).save_pretrained(tmp_path)
    with pytest.raises(peftkit.ConfigError, match="layer_replication"):
        peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)


@pytest.mark.parametrize("name", ["lora", "ora_", "lora_A"])
def test_an_adapter_named_like_the_tensor_prefix_saves_and_loads_intact(
    name: str, tmp_path
) -> None:
    """File keys are mapped through the layers, not by replacing strings: an adapter named 'lora'
    (PEFT warns that its loading may re-initialize such an adapter) loads with its own tensors, in
    peftkit and in PEFT."""
    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        tiny_model("llama"), peftkit.LoraConfig(init_lora_weights=False), adapter_name=name
    )
    inputs = model_inputs("llama")
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path, selected_adapters=[name])
    folder = tmp_path / name if (tmp_path / name).exists() else tmp_path
    for lib in (peftkit, peft):
        loaded = lib.PeftModel.from_pretrained(tiny_model("llama"), folder, adapter_name=name)
        torch.testing.assert_close(outputs(loaded, inputs), expected, rtol=0, atol=1e-5)
