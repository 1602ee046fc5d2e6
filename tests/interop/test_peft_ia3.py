"""IA3 adapters round-trip with PEFT: identical logits both ways, the same trainable counts."""

from __future__ import annotations

from typing import Any

import peft
import pytest
import torch

import peftkit

from ..conftest import ARCHS, model_inputs, outputs, tiny_model


def _config(lib, arch: str):  # type: ignore[no-untyped-def]
    return lib.IA3Config(
        task_type="SEQ_CLS" if arch == "bert" else "CAUSAL_LM", init_ia3_weights=False
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_peftkit_to_peft_and_back(arch: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    inputs = model_inputs(arch)
    torch.manual_seed(0)
    ours = peftkit.get_peft_model(tiny_model(arch), _config(peftkit, arch)).eval()
    expected = outputs(ours, inputs)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "ours").eval()
    torch.testing.assert_close(outputs(theirs, inputs), expected, atol=1e-5, rtol=1e-5)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "theirs")
    torch.testing.assert_close(outputs(back, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_peft_to_peftkit(arch: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    inputs = model_inputs(arch)
    torch.manual_seed(0)
    theirs = peft.get_peft_model(tiny_model(arch), _config(peft, arch)).eval()
    expected = outputs(theirs, inputs)
    theirs.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(tiny_model(arch), tmp_path)
    torch.testing.assert_close(outputs(ours, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_trainable_count_as_peft(arch: str) -> None:
    ours = peftkit.get_peft_model(tiny_model(arch), _config(peftkit, arch))
    theirs = peft.get_peft_model(tiny_model(arch), _config(peft, arch))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


@pytest.mark.parametrize(
    "targets",
    [["k_proj", "v_proj", "down_proj"], ["k_proj"], "all-linear"],
    ids=["with-feedforward", "without", "all-linear"],
)
def test_feedforward_layers_default_to_the_architecture_table_as_in_peft(targets: Any) -> None:
    """Named targets without feedforward_modules: the architecture's feed-forward layers among them
    scale their input, as PEFT decides (down_proj on Llama); 'all-linear' is listed first. Same
    draws, same outputs."""
    found = {}
    for lib in (peft, peftkit):
        torch.manual_seed(0)
        model = lib.get_peft_model(
            tiny_model("llama"), lib.IA3Config(target_modules=targets, init_ia3_weights=False)
        )
        found[lib.__name__] = outputs(model, model_inputs("llama"))
    torch.testing.assert_close(found["peftkit"], found["peft"], rtol=0, atol=0)
