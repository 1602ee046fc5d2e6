"""PEFT's public API beyond the PeftModel: the same calls on both libraries, the same results."""

from __future__ import annotations

import copy
import json
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


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def _both(config_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The same LoRA model in each library, with the same random adapter weights."""
    theirs = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(**config_kwargs))
    ours = peftkit.get_peft_model(tiny_model("llama"), peftkit.LoraConfig(**config_kwargs))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for (n1, p1), (n2, p2) in zip(
            theirs.named_parameters(), ours.named_parameters(), strict=True
        ):
            assert n1 == n2
            if "lora_" in n1:
                value = torch.randn(p1.shape, generator=g)
                p1.copy_(value)
                p2.copy_(value)
    return theirs, ours


def test_peft_model_state_dicts_are_the_same_and_load_back() -> None:
    theirs, ours = _both({"r": 2, "target_modules": ["q_proj", "v_proj"]})
    a, b = peft.get_peft_model_state_dict(theirs), peftkit.get_peft_model_state_dict(ours)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    fresh = peftkit.get_peft_model(
        tiny_model("llama"), peftkit.LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    # PEFT's tensors into a fresh peftkit adapter
    result = peftkit.set_peft_model_state_dict(fresh, a)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(
        outputs(fresh, model_inputs("llama")), outputs(theirs, model_inputs("llama"))
    )


def test_inject_adapter_in_model_gives_the_same_layers_and_keys(lib: types.ModuleType) -> None:
    model = lib.inject_adapter_in_model(lib.LoraConfig(r=2, target_modules=["0"]), _mlp())
    assert isinstance(model, nn.Sequential)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["0.lora_A.default.weight", "0.lora_B.default.weight"]
    assert sorted(lib.get_peft_model_state_dict(model)) == ["0.lora_A.weight", "0.lora_B.weight"]
    x = torch.randn(3, 8)
    torch.testing.assert_close(model(x), _mlp()(x))  # B starts at zero: the base model's output


def test_base_model_state_dict_has_the_original_names_and_values(lib: types.ModuleType) -> None:
    base = tiny_model("llama")
    expected = {k: v.clone() for k, v in base.state_dict().items()}
    model = lib.get_peft_model(base, lib.LoraConfig(r=2, target_modules=["q_proj"]))
    got = lib.get_base_model_state_dict(model)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_set_base_model_state_dict_loads_original_names(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(tiny_model("llama"), lib.LoraConfig(r=2, target_modules=["q_proj"]))
    other = tiny_model("llama", seed=5)
    lib.set_base_model_state_dict(model, other.state_dict())
    with model.disable_adapter():
        torch.testing.assert_close(
            outputs(model, model_inputs("llama")), outputs(other, model_inputs("llama"))
        )


@pytest.mark.parametrize("autocast", [True, False])
def test_autocast_adapter_dtype(lib: types.ModuleType, autocast: bool) -> None:
    base = tiny_model("llama").to(torch.bfloat16)
    model = lib.get_peft_model(
        base, lib.LoraConfig(r=2, target_modules=["q_proj"]), autocast_adapter_dtype=autocast
    )
    dtypes = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert dtypes == {torch.float32 if autocast else torch.bfloat16}


def test_base_model_methods_switch_and_disable(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(
        tiny_model("llama"), lib.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    )
    model.add_adapter("b", lib.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    model.base_model.set_adapter("b")
    assert model.base_model.active_adapters == ["b"]
    inputs = model_inputs("llama")
    model.base_model.disable_adapter_layers()
    torch.testing.assert_close(outputs(model, inputs), outputs(tiny_model("llama"), inputs))
    model.base_model.enable_adapter_layers()
    assert not torch.allclose(outputs(model, inputs), outputs(tiny_model("llama"), inputs))


def test_layer_api(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(
        tiny_model("llama"), lib.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    )
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    expected = (
        layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    )
    torch.testing.assert_close(layer.get_delta_weight("default"), expected)
    assert not layer.disable_adapters and not layer.merged
    for module in model.modules():
        if hasattr(module, "enable_adapters") and hasattr(module, "lora_A"):
            module.enable_adapters(False)
    torch.testing.assert_close(
        outputs(model, model_inputs("llama")), outputs(tiny_model("llama"), model_inputs("llama"))
    )


def test_safe_merge_and_names(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(
        tiny_model("llama"),
        lib.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    before = outputs(model, model_inputs("llama"))
    model.merge_adapter(safe_merge=True)
    torch.testing.assert_close(outputs(model, model_inputs("llama")), before, atol=1e-5, rtol=1e-5)
    assert model.prefix == "lora_"
    assert sorted(model.targeted_module_names) == sorted(
        f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")
    )


def test_from_json_file(lib: types.ModuleType, tmp_path: Any) -> None:
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({"peft_type": "LORA", "r": 4, "runtime_config": {}}))
    assert lib.LoraConfig.from_json_file(path) == {"peft_type": "LORA", "r": 4}


def test_errors_have_peft_names() -> None:
    assert issubclass(peftkit.NoMatchingPeftModuleError, ValueError)
    with pytest.raises(peftkit.NoMatchingPeftModuleError):
        peftkit.get_peft_model(
            tiny_model("llama"), peftkit.LoraConfig(target_modules=["nothing_like_this"])
        )
    assert issubclass(peftkit.TargetNotFoundError, peftkit.PeftError)


def test_mixed_models_are_refused_clearly() -> None:
    with pytest.raises(peftkit.ConfigError, match="PeftMixedModel"):
        peftkit.get_peft_model(
            copy.deepcopy(_mlp()), peftkit.LoraConfig(target_modules=["0"]), mixed=True
        )


def test_several_adapters_active_through_base_model(lib: types.ModuleType) -> None:
    """Both adapters' updates apply at once: the output equals merging both into the base weights."""
    torch.manual_seed(0)
    model = lib.get_peft_model(
        tiny_model("llama"), lib.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    )
    model.add_adapter(
        "other", lib.LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False)
    )
    model.base_model.set_adapter(["default", "other"])
    assert model.active_adapters == ["default", "other"]
    assert model.base_model.active_adapter == ["default", "other"]
    got = outputs(model, model_inputs("llama"))
    merged = model.merge_and_unload(adapter_names=["default", "other"])
    torch.testing.assert_close(got, outputs(merged, model_inputs("llama")), atol=1e-5, rtol=1e-5)


def test_push_to_hub_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = peftkit.get_peft_model(
        tiny_model("llama"), peftkit.LoraConfig(r=2, target_modules=["q_proj"])
    )
    with pytest.raises(peftkit.HubError, match=r"HF_HUB_OFFLINE=1.*save_pretrained"):
        model.push_to_hub("someone/adapter")


def test_low_cpu_mem_usage_creates_empty_adapters_that_loading_fills(
    lib: types.ModuleType, tmp_path: Any
) -> None:
    config = lib.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    trained = lib.get_peft_model(tiny_model("llama"), config)
    trained.save_pretrained(tmp_path)
    injected = lib.inject_adapter_in_model(
        lib.LoraConfig(r=2, target_modules=["q_proj"]), tiny_model("llama"), low_cpu_mem_usage=True
    )
    assert "meta" in {p.device.type for p in injected.parameters()}
    lib.set_peft_model_state_dict(
        injected, lib.get_peft_model_state_dict(trained), low_cpu_mem_usage=True
    )
    assert {p.device.type for p in injected.parameters()} == {"cpu"}
    loaded = lib.PeftModel.from_pretrained(tiny_model("llama"), tmp_path, low_cpu_mem_usage=True)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    torch.testing.assert_close(
        outputs(loaded, model_inputs("llama")), outputs(trained, model_inputs("llama"))
    )


def _status_model(lib: types.ModuleType) -> Any:
    model = lib.get_peft_model(
        tiny_model("llama"),
        lib.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]),
    )
    model.add_adapter("other", lib.LoraConfig(r=2, target_modules=["q_proj"]))
    # merged where it exists, so "other" is merged everywhere it is held
    model.merge_adapter(["other"])
    # one layer off: irregular
    model.get_base_model().model.layers[0].self_attn.v_proj.enable_adapters(False)
    return model


def test_layer_and_model_status_equal_peft() -> None:
    import dataclasses

    theirs, ours = _status_model(peft), _status_model(peftkit)
    a = [dataclasses.asdict(s) for s in peft.get_layer_status(theirs)]
    b = [dataclasses.asdict(s) for s in peftkit.get_layer_status(ours)]
    assert [s["name"] for s in a] == [s["name"] for s in b]
    for x, y in zip(a, b, strict=True):
        assert x == y, (x, y)
    m, n = (
        dataclasses.asdict(peft.get_model_status(theirs)),
        dataclasses.asdict(peftkit.get_model_status(ours)),
    )
    assert m == n
    assert n["enabled"] == "irregular" and n["merged_adapters"] == ["other"]


def test_status_of_a_prompt_model_is_refused(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(
        tiny_model("llama"), lib.PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM")
    )
    with pytest.raises(TypeError, match="prefix tuning and adaption prompt are not supported"):
        lib.get_layer_status(model)


def test_status_of_a_model_without_adapters_is_refused(lib: types.ModuleType) -> None:
    with pytest.raises(ValueError, match="No adapter layers found in the model"):
        lib.get_layer_status(nn.Linear(10, 10))
    with pytest.raises(ValueError, match="No adapter layers found in the model"):
        lib.get_model_status(nn.Linear(10, 10))
