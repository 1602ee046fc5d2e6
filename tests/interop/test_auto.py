"""An adapter folder alone is enough to load the model: ``AutoPeftModelFor*`` (peftkit's and PEFT's)
and transformers' own ``AutoModelForCausalLM.from_pretrained(adapter_dir)`` read the base model from
``adapter_config.json`` and give the logits of the model that was saved."""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch
import transformers

import peftkit

from ..conftest import tiny_model

IDS = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    base_dir = tmp_path / "base"
    tiny_model("llama").save_pretrained(base_dir)
    # a local folder: recorded as the base
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        base,
        peftkit.LoraConfig(
            r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        return tmp_path / "adapter", model.eval()(input_ids=IDS).logits


@pytest.mark.parametrize("loader", ["peftkit", "peft", "transformers"])
def test_an_adapter_folder_loads_with_its_base_model(
    saved: tuple[Path, torch.Tensor], loader: str
) -> None:
    folder, expected = saved
    assert peftkit.PeftConfig.from_pretrained(folder).base_model_name_or_path == str(
        folder.parent / "base"
    )
    load = {
        "peftkit": peftkit.AutoPeftModelForCausalLM.from_pretrained,
        "peft": peft.AutoPeftModelForCausalLM.from_pretrained,
        "transformers": transformers.AutoModelForCausalLM.from_pretrained,
    }[loader]
    model = load(str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, expected)
    if loader == "peftkit":
        assert isinstance(model, peftkit.PeftModelForCausalLM)
        # loaded for inference unless is_trainable=True
        assert model.peft_config["default"].inference_mode


def test_the_task_class_must_fit_the_adapter(saved: tuple[Path, torch.Tensor]) -> None:
    folder, _ = saved
    with pytest.raises(ValueError, match="Expected target PEFT class: PeftModelForCausalLM"):
        peftkit.AutoPeftModelForSequenceClassification.from_pretrained(folder)
    with pytest.raises(ValueError, match="Cannot use `AutoPeftModel` with a task type"):
        peftkit.AutoPeftModel.from_pretrained(folder)
    with pytest.raises(OSError, match="from_pretrained"):
        peftkit.AutoPeftModelForCausalLM()


def test_get_peft_config_builds_the_config_its_peft_type_names() -> None:
    for lib in (peft, peftkit):
        config = lib.get_peft_config({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]})
        assert (
            type(config).__name__ == "LoraConfig"
            and config.r == 4
            and config.target_modules == {"q_proj"}
        )
    with pytest.raises(ValueError, match="unknown field 'rank'"):
        peftkit.get_peft_config({"peft_type": "LORA", "rank": 4})
