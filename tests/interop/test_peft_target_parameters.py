"""LoRA on raw parameters (``target_parameters``) against PEFT: mixture-of-experts weights stored as
``(experts, ., .)`` parameters (a tiny Qwen3-MoE) and 2-D weights. The same draws give the same
outputs (0.0 in fp32, and in bf16), files load both ways with PEFT's keys, merged equals unmerged,
unmerge is bitwise, disabled and fresh adapters equal the base model, several adapters, training."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
import transformers

import peftkit
from peftkit.errors import ConfigError
from peftkit.tuners.lora.param import LoraParam
from tests.conftest import model_inputs, outputs, tiny_model

EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def moe(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    config = transformers.Qwen3MoeConfig(
        vocab_size=100,
        hidden_size=16,
        intermediate_size=32,
        moe_intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_experts=4,
        num_experts_per_tok=2,
        head_dim=8,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()


IDS = {"input_ids": torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(3))}


def _moe(lib: Any, base: torch.nn.Module | None = None, init: bool = False, **kwargs: Any) -> Any:
    base = moe() if base is None else base
    torch.manual_seed(1)
    kwargs.setdefault("target_modules", [])
    config = lib.LoraConfig(r=2, target_parameters=EXPERTS, init_lora_weights=init, **kwargs)
    return lib.get_peft_model(base, config).eval()


def _llama(lib: Any) -> Any:
    torch.manual_seed(0)
    base = tiny_model("llama")
    torch.manual_seed(1)
    config = lib.LoraConfig(
        r=2,
        target_modules=[],
        target_parameters=["q_proj.weight", "down_proj.weight"],
        init_lora_weights=False,
    )
    return lib.get_peft_model(base, config).eval()


def test_expert_stacks_equal_peft_for_the_same_draws() -> None:
    ours, theirs = _moe(peftkit), _moe(peft)
    expected = outputs(theirs, IDS)
    assert not torch.allclose(expected, outputs(moe(), IDS))
    torch.testing.assert_close(outputs(ours, IDS), expected, rtol=0, atol=0)
    keys = sorted(peftkit.get_peft_model_state_dict(ours))
    assert keys == sorted(peft.get_peft_model_state_dict(theirs))
    assert "base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.weight" in keys  # nested


def test_two_dimensional_weights_equal_peft() -> None:
    inputs = model_inputs("llama")
    torch.testing.assert_close(
        outputs(_llama(peftkit), inputs), outputs(_llama(peft), inputs), rtol=0, atol=0
    )


def test_bf16_expert_stacks_equal_peft() -> None:
    ours, theirs = _moe(peftkit, moe(torch.bfloat16)), _moe(peft, moe(torch.bfloat16))
    torch.testing.assert_close(outputs(ours, IDS), outputs(theirs, IDS), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("writer", "reader"), [(peftkit, peft), (peft, peftkit)], ids=["to-peft", "from-peft"]
)
def test_files_load_both_ways(writer: Any, reader: Any, tmp_path: Path) -> None:
    model = _moe(writer, rank_pattern={"down_proj": 3})
    expected = outputs(model, IDS)
    model.save_pretrained(tmp_path)
    loaded = reader.PeftModel.from_pretrained(moe(), tmp_path).eval()
    torch.testing.assert_close(outputs(loaded, IDS), expected, rtol=0, atol=0)


def test_fresh_and_disabled_adapters_are_the_base_model() -> None:
    base = outputs(moe(), IDS)
    torch.testing.assert_close(outputs(_moe(peftkit, init=True), IDS), base, rtol=0, atol=0)
    model = _moe(peftkit)
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, IDS), base, rtol=0, atol=0)


def test_merged_equals_unmerged_and_unmerge_is_bitwise() -> None:
    model = _moe(peftkit)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = outputs(model, IDS)
    model.merge_adapter()
    torch.testing.assert_close(outputs(model, IDS), expected, rtol=0, atol=1e-6)
    model.unmerge_adapter()
    assert all(p.detach().equal(before[n]) for n, p in model.named_parameters())
    plain = copy.deepcopy(model).merge_and_unload()
    assert not any(isinstance(m, LoraParam) for m in plain.modules())
    assert type(plain.model.layers[0].mlp.experts).__name__ == "Qwen3MoeExperts"
    torch.testing.assert_close(outputs(plain, IDS), expected, rtol=0, atol=1e-6)


def test_two_adapters_share_the_wrappers_and_switch() -> None:
    ours, theirs = _moe(peftkit), _moe(peft)
    for lib, model in ((peftkit, ours), (peft, theirs)):
        torch.manual_seed(5)
        model.add_adapter(
            "other",
            lib.LoraConfig(
                r=3, target_modules=[], target_parameters=EXPERTS, init_lora_weights=False
            ),
        )
        model.set_adapter("other")
    assert sorted(n for n, _ in ours.named_parameters() if "lora" in n) == sorted(
        n for n, _ in theirs.named_parameters() if "lora" in n
    )
    torch.testing.assert_close(outputs(ours, IDS), outputs(theirs, IDS), rtol=0, atol=0)
    ours.set_adapter("default")
    torch.testing.assert_close(outputs(ours, IDS), outputs(_moe(peft), IDS), rtol=0, atol=0)


def test_another_set_of_parameters_for_a_second_adapter_is_refused() -> None:
    model = _moe(peftkit)
    with pytest.raises(ConfigError, match="all adapters must target the same set of parameters"):
        model.add_adapter(
            "other", peftkit.LoraConfig(target_modules=[], target_parameters=EXPERTS[:1])
        )


def test_beside_target_modules() -> None:
    ours, theirs = _moe(peftkit, target_modules=["q_proj"]), _moe(peft, target_modules=["q_proj"])
    torch.testing.assert_close(outputs(ours, IDS), outputs(theirs, IDS), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"lora_dropout": 0.1}, "lora_dropout != 0"),
        ({"use_dora": True}, "use_dora=True"),
        ({"init_lora_weights": "pissa"}, "reads a layer's weight"),
    ],
)
def test_what_peft_refuses_is_refused(kwargs: dict[str, Any], said: str) -> None:
    config = peftkit.LoraConfig(target_modules=[], target_parameters=EXPERTS, **kwargs)
    with pytest.raises(ConfigError, match=said.replace("(", r"\(")):
        peftkit.get_peft_model(moe(), config)


def test_bad_targets_say_what_is_wrong() -> None:
    with pytest.raises(peftkit.TargetNotFoundError, match="no `target_parameters` found"):
        peftkit.get_peft_model(
            moe(), peftkit.LoraConfig(target_modules=[], target_parameters=["mlp.nope"])
        )
    with pytest.raises(TypeError, match="`target_parameters` must be a list of strings or None"):
        peftkit.LoraConfig(target_parameters="mlp.experts.gate_up_proj")
    with pytest.raises(ConfigError, match="must be a list of parameter names"):
        peftkit.LoraConfig(target_parameters=["mlp.experts.gate_up_proj", ""])
    with pytest.raises(ConfigError, match="not a valid target"):
        peftkit.get_peft_model(
            tiny_model("llama"),
            peftkit.LoraConfig(target_modules=["q_proj"], target_parameters=["q_proj.weight"]),
        )


def test_unmatched_target_modules_warn_when_parameters_match() -> None:
    config = peftkit.LoraConfig(target_modules=["nope"], target_parameters=EXPERTS[:1])
    with pytest.warns(RuntimeWarning, match="target_modules=.* were set but no module was matched"):
        model = peftkit.get_peft_model(moe(), config)
    assert model.targeted_parameter_names == [
        f"model.layers.{i}.mlp.experts.gate_up_proj" for i in range(2)
    ]
    assert model.targeted_module_names == []


def test_mixed_batches_are_refused() -> None:
    model = _moe(peftkit)
    with pytest.raises(ConfigError, match="does not support mixed adapter batches"):
        model(**IDS, adapter_names=["default", "__base__"])


def test_training_reaches_only_the_adapter() -> None:
    model = _moe(peftkit).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    losses = []
    for _ in range(5):
        loss = model(**IDS, labels=IDS["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.detach().equal(frozen[n]) for n, p in model.named_parameters() if n in frozen)
