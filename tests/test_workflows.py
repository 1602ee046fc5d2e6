"""The library functions behind ``peftkit eval``, ``generate`` and ``merge``
(src/peftkit/workflows.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

import peftkit
from peftkit.errors import ConfigError
from tests.conftest import outputs, tiny_model


@pytest.fixture
def adapter(model_dir: Path, tmp_path: Path) -> Path:
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    model = peftkit.get_peft_model(
        base, peftkit.LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_generate_side_by_side_is_greedy_decoding_of_each_model(
    model_dir: Path, adapter: Path
) -> None:
    texts = peftkit.generate_side_by_side(
        str(model_dir), "good film", str(adapter), max_new_tokens=4, dtype="float32"
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    inputs = tokenizer("good film", return_tensors="pt")
    for label, model in (
        ("base", tiny_model("llama")),
        ("adapter", peftkit.PeftModel.from_pretrained(tiny_model("llama"), adapter)),
    ):
        out = model.eval().generate(
            **inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        assert (
            texts[label]
            == tokenizer.decode(
                out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True
            ).strip()
        )
    assert set(peftkit.generate_side_by_side(str(model_dir), "good film", max_new_tokens=2)) == {
        "base"
    }


def test_merge_to_folder_writes_the_merged_model_and_refuses_its_inputs(
    model_dir: Path, adapter: Path, tmp_path: Path
) -> None:
    out = peftkit.merge_to_folder(str(model_dir), str(adapter), str(tmp_path / "merged"))
    inputs = {"input_ids": torch.tensor([[1, 50, 60, 70]])}
    expected = outputs(peftkit.PeftModel.from_pretrained(tiny_model("llama"), adapter), inputs)
    torch.testing.assert_close(
        outputs(transformers.AutoModelForCausalLM.from_pretrained(out), inputs),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ConfigError, match="would delete it"):
        peftkit.merge_to_folder(str(model_dir), str(adapter), str(adapter))
