"""inject_adapter_in_model's options against PEFT: layers named by a state_dict, and
modules_to_save."""

from __future__ import annotations

import types

import peft
import pytest
import torch

import peftkit

from ..conftest import tiny_model

LIBS = {"peft": peft, "peftkit": peftkit}


@pytest.fixture(params=list(LIBS))
def lib(request: pytest.FixtureRequest) -> types.ModuleType:
    return LIBS[request.param]


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_a_state_dict_names_the_layers(lib: types.ModuleType, method: str) -> None:
    """The layers a state_dict's tensors belong to get the adapter, whatever target_modules says;
    the same keys and shapes as PEFT's, and PEFT's warning about the difference."""
    config = (
        lib.LoraConfig(target_modules=["q_proj", "v_proj"])
        if method == "lora"
        else lib.IA3Config(
            target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]
        )
    )
    source = peft.get_peft_model_state_dict(
        peft.inject_adapter_in_model(
            peft.LoraConfig(target_modules=["q_proj"])
            if method == "lora"
            else peft.IA3Config(
                target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]
            ),
            tiny_model("llama"),
        )
    )
    if method == "lora":
        with pytest.warns(
            RuntimeWarning, match="The PEFT config contained these additional target modules"
        ):
            model = lib.inject_adapter_in_model(config, tiny_model("llama"), state_dict=source)
    else:
        model = lib.inject_adapter_in_model(config, tiny_model("llama"), state_dict=source)
    assert _shapes(lib.get_peft_model_state_dict(model)) == _shapes(source)


def test_modules_to_save_get_their_copies(lib: types.ModuleType) -> None:
    config = lib.LoraConfig(target_modules=["q_proj"], modules_to_save=["lm_head"])
    model = lib.inject_adapter_in_model(config, tiny_model("llama"))
    assert type(model.lm_head).__name__ == "ModulesToSaveWrapper"
    keys = lib.get_peft_model_state_dict(model)
    assert any("lm_head" in k for k in keys)
