"""peftkit.helpers against peft.helpers: the same outcomes on the same models."""

from __future__ import annotations

import types
from typing import Any

import peft
import peft.helpers
import pytest
import torch

import peftkit
import peftkit.helpers

from ..conftest import model_inputs, outputs, tiny_model

LIBS = {"peft": (peft, peft.helpers), "peftkit": (peftkit, peftkit.helpers)}


@pytest.fixture(params=list(LIBS))
def lib(request: pytest.FixtureRequest) -> tuple[types.ModuleType, types.ModuleType]:
    return LIBS[request.param]


def test_check_if_peft_model(lib: tuple[types.ModuleType, types.ModuleType], tmp_path: Any) -> None:
    top, helpers = lib
    top.get_peft_model(
        tiny_model("llama"), top.LoraConfig(target_modules=["q_proj"])
    ).save_pretrained(tmp_path / "a")
    assert helpers.check_if_peft_model(tmp_path / "a")
    assert not helpers.check_if_peft_model(tmp_path / "missing")


def test_rescale_adapter_scale_is_wise_ft_and_restores(
    lib: tuple[types.ModuleType, types.ModuleType],
) -> None:
    """Scaling by 0 gives the base model, by 1 the adapter; the scaling comes back on exit, even
    after an error."""
    top, helpers = lib
    base = tiny_model("llama")
    inputs = model_inputs("llama")
    expected_base = outputs(base, inputs)
    torch.manual_seed(0)
    model = top.get_peft_model(
        base, top.LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapted = outputs(model, inputs)
    with helpers.rescale_adapter_scale(model, 0.0):
        torch.testing.assert_close(outputs(model, inputs), expected_base)
    torch.testing.assert_close(outputs(model, inputs), adapted, rtol=0, atol=0)
    with pytest.raises(RuntimeError), helpers.rescale_adapter_scale(model, 0.5):
        raise RuntimeError("inside")
    torch.testing.assert_close(outputs(model, inputs), adapted, rtol=0, atol=0)
    with (
        pytest.raises(ValueError, match="only supported for models with `LoraLayer`s"),
        helpers.rescale_adapter_scale(tiny_model("llama"), 0.5),
    ):
        pass


def test_auto_classes_refuse_an_auto_mapping_outside_the_allow_list(
    lib: tuple[types.ModuleType, types.ModuleType], tmp_path: Any
) -> None:
    """A config naming parent_library='os' is refused before anything is imported or loaded (PEFT's
    rule)."""
    top, _ = lib
    tiny_model("llama").save_pretrained(tmp_path / "base")
    model = top.get_peft_model(
        tiny_model("llama"),
        top.LoraConfig(target_modules=["q_proj"], base_model_name_or_path=str(tmp_path / "base")),
    )
    model.save_pretrained(tmp_path / "adapter")
    config = top.PeftConfig.from_pretrained(tmp_path / "adapter")
    config.auto_mapping = {"parent_library": "os", "base_model_class": "system"}
    config.task_type = None
    config.save_pretrained(tmp_path / "adapter")
    assert (
        top.PeftConfig.from_pretrained(tmp_path / "adapter").auto_mapping["parent_library"] == "os"
    )
    with pytest.raises(ValueError, match="not in the import allowlist"):
        top.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
