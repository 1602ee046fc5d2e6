"""Merging and unmerging (surgery/state.py): unmerge puts the base weights back bitwise, in fp32 and
bf16 and for every layer method, because merge kept them; merge_and_unload keeps no copy."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import peftkit
from peftkit.tuners.base import AdapterLayer

from ..conftest import model_inputs, outputs, tiny_model

TARGETS = ["q_proj", "v_proj", "down_proj"]
CONFIGS: dict[str, Any] = {
    "lora": lambda: peftkit.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False),
    "dora": lambda: peftkit.LoraConfig(
        r=4, target_modules=TARGETS, init_lora_weights=False, use_dora=True
    ),
    "ia3": lambda: peftkit.IA3Config(
        target_modules=TARGETS, feedforward_modules=["down_proj"], init_ia3_weights=False
    ),
    "loha": lambda: peftkit.LoHaConfig(r=4, target_modules=TARGETS, init_weights=False),
    "lokr": lambda: peftkit.LoKrConfig(r=4, target_modules=TARGETS, init_weights=False),
    "oft": lambda: peftkit.OFTConfig(
        r=4, oft_block_size=0, target_modules=TARGETS, init_weights=False
    ),
}


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_unmerge_restores_the_base_weights_bitwise(method: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = peftkit.get_peft_model(tiny_model("llama").to(dtype), CONFIGS[method]())
    before = _weights(model)
    inputs = model_inputs("llama")
    unmerged_out = outputs(model, inputs)
    params = {id(p) for p in model.parameters()}
    for _ in range(3):  # as TRL's vLLM sync does on every step
        model.merge_adapter()
        assert any(not before[n].equal(t) for n, t in _weights(model).items())  # it did merge
        model.unmerge_adapter()
    after = _weights(model)
    assert all(after[n].equal(t) for n, t in before.items())
    assert {
        id(p) for p in model.parameters()
    } == params  # the same Parameters (optimizers hold them)
    assert torch.equal(outputs(model, inputs), unmerged_out)


def test_a_layer_deleting_a_merged_adapter_restores_the_weights_bitwise() -> None:
    # the model refuses to delete a merged adapter (PEFT's rule); a layer unmerges it first
    model = peftkit.get_peft_model(tiny_model("llama"), CONFIGS["lora"]())
    model.add_adapter("other", CONFIGS["lora"]())
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    before = layer.weight.detach().clone()
    layer.merge(["default", "other"])
    layer.delete_adapter("other")
    layer.unmerge()
    assert layer.weight.equal(before) and not layer._original


def test_merge_keeps_one_copy_until_unmerge_and_merge_and_unload_none() -> None:
    model = peftkit.get_peft_model(tiny_model("llama"), CONFIGS["lora"]())
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    model.merge_adapter()
    model.merge_adapter()  # idempotent: still one copy
    assert all(len(layer._original) == 1 for layer in layers)  # the weight (no bias here)
    model.unmerge_adapter()
    assert all(not layer._original for layer in layers)
    seen: list[int] = []
    original = AdapterLayer._merged_tensors

    def counting(layer: AdapterLayer) -> list[torch.Tensor]:
        seen.append(id(layer))
        return original(layer)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AdapterLayer, "_merged_tensors", counting)
        plain = model.merge_and_unload()
    assert not seen  # nothing copied for a merge that is never undone
    assert not any(isinstance(m, AdapterLayer) for m in plain.modules())
