"""PeftModel with LoRA on tiny transformers models: each number checked against an independent path."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from peftkit import (
    AdapterNotFoundError,
    LoraConfig,
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForSequenceClassification,
    TargetNotFoundError,
    get_peft_model,
)
from peftkit.tuners.lora import LoraLayer

from .conftest import ARCHS, model_inputs, outputs, tiny_model

TASK = {
    "llama": "CAUSAL_LM",
    "gpt2": "CAUSAL_LM",
    "bloom": "CAUSAL_LM",
    "bert": "SEQ_CLS",
    "t5": "SEQ_2_SEQ_LM",
}
ALL = [*ARCHS, "t5"]


def _randomize_b(model: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_A" in name:
                p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("arch", ALL)
def test_zero_init_equals_base(arch):
    inputs = model_inputs(arch)
    reference = outputs(tiny_model(arch), inputs)
    model = get_peft_model(tiny_model(arch), LoraConfig(task_type=TASK[arch]))
    torch.testing.assert_close(outputs(model, inputs), reference)


@pytest.mark.parametrize("arch", ALL)
def test_forward_merged_unloaded_and_reloaded_agree(arch, tmp_path):
    inputs = model_inputs(arch)
    base_logits = outputs(tiny_model(arch), inputs)
    model = get_peft_model(tiny_model(arch), LoraConfig(r=4, lora_alpha=8, task_type=TASK[arch]))
    _randomize_b(model)
    adapted = outputs(model, inputs)
    assert (adapted - base_logits).abs().max() > 1e-4  # the adapter does something

    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_model(arch), tmp_path)
    torch.testing.assert_close(outputs(reloaded, inputs), adapted, atol=1e-5, rtol=1e-5)

    model.merge_adapter()
    model.merge_adapter()  # merging twice is a no-op
    torch.testing.assert_close(outputs(model, inputs), adapted, atol=1e-5, rtol=1e-5)
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, inputs), base_logits, atol=1e-5, rtol=1e-5)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, LoraLayer) for m in plain.modules())
    assert isinstance(plain, transformers.PreTrainedModel)
    torch.testing.assert_close(outputs(plain, inputs), adapted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_disable_adapter_equals_base(arch):
    inputs = model_inputs(arch)
    reference = outputs(tiny_model(arch), inputs)
    model = get_peft_model(
        tiny_model(arch), LoraConfig(init_lora_weights=False, task_type=TASK[arch])
    )
    assert (outputs(model, inputs) - reference).abs().max() > 1e-4
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, inputs), reference)
    assert (outputs(model, inputs) - reference).abs().max() > 1e-4


def test_unmerge_restores_weights():
    base = tiny_model("llama")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, LoraConfig(init_lora_weights=False, target_modules="all-linear"))
    model.merge_adapter()
    q = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(q, before["model.layers.0.self_attn.q_proj.weight"])
    model.unmerge_adapter()
    restored = model.unload().state_dict()
    for key, value in before.items():
        torch.testing.assert_close(restored[key], value, atol=1e-6, rtol=0)


def test_unload_returns_original_model():
    inputs = model_inputs("gpt2")
    reference = outputs(tiny_model("gpt2"), inputs)
    model = get_peft_model(tiny_model("gpt2"), LoraConfig(init_lora_weights=False))
    plain = model.unload()
    torch.testing.assert_close(outputs(plain, inputs), reference)


def test_task_class_and_parameter_names():
    model = get_peft_model(tiny_model("llama"), LoraConfig(task_type="CAUSAL_LM"))
    assert isinstance(model, PeftModelForCausalLM)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in names
    assert all(".lora_" in n for n in names)


def test_seq_cls_trains_head_and_saves_it(tmp_path):
    model = get_peft_model(tiny_model("bert"), LoraConfig(task_type="SEQ_CLS"))
    assert isinstance(model, PeftModelForSequenceClassification)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "base_model.model.classifier.modules_to_save.default.weight" in trainable
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.classifier.weight" in keys


def test_trainable_counts_default_targets():
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4))
    # q_proj: 32 -> 32, v_proj: 32 -> 16 (GQA), 2 layers; A is r x in, B is out x r
    expected = 2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4)
    assert model.get_nb_trainable_parameters()[0] == expected
    # a set, as PEFT keeps it
    assert model.peft_config["default"].target_modules == {"q_proj", "v_proj"}


def test_bloomz_560m_seed_config_count_on_meta():
    config = transformers.BloomConfig(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16)
    with torch.device("meta"):
        base = transformers.AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(
        r=4,
        lora_alpha=1,
        target_modules=["query_key_value"],
        lora_dropout=0.05,
        bias="lora_only",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 466_944  # 393,216 LoRA weights + 73,728 query_key_value biases
    assert total == 559_214_592 + 393_216


def test_bias_all_and_lora_only_save_biases(tmp_path):
    from safetensors.torch import load_file

    model = get_peft_model(tiny_model("bloom"), LoraConfig(bias="lora_only"))
    model.save_pretrained(tmp_path / "lo")
    keys = set(load_file(tmp_path / "lo" / "adapter_model.safetensors"))
    assert "base_model.model.transformer.h.0.self_attention.query_key_value.base_layer.bias" in keys
    assert not any("dense_h_to_4h.bias" in k for k in keys)
    model = get_peft_model(tiny_model("bloom"), LoraConfig(bias="all"))
    model.save_pretrained(tmp_path / "all")
    keys = set(load_file(tmp_path / "all" / "adapter_model.safetensors"))
    assert any("dense_h_to_4h.bias" in k for k in keys)


def test_two_adapters_switch_delete_and_layout(tmp_path):
    inputs = model_inputs("llama")
    model = get_peft_model(tiny_model("llama"), LoraConfig(init_lora_weights=False))
    first = outputs(model, inputs)
    torch.manual_seed(7)
    model.add_adapter("other", LoraConfig(init_lora_weights=False, target_modules=["k_proj"]))
    torch.testing.assert_close(outputs(model, inputs), first)  # a new adapter stays inactive
    model.set_adapter("other")
    second = outputs(model, inputs)
    assert (second - first).abs().max() > 1e-4
    assert next(n for n, p in model.named_parameters() if p.requires_grad).endswith(
        "lora_A.other.weight"
    )

    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert (tmp_path / "other" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "other" / "adapter_config.json").read_text())[
        "target_modules"
    ] == ["k_proj"]

    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    reloaded.load_adapter(tmp_path / "other", adapter_name="other")
    torch.testing.assert_close(outputs(reloaded, inputs), first, atol=1e-5, rtol=1e-5)
    reloaded.set_adapter("other")
    torch.testing.assert_close(outputs(reloaded, inputs), second, atol=1e-5, rtol=1e-5)

    model.delete_adapter("other")
    assert "other" not in model.peft_config and model.active_adapter == "default"
    torch.testing.assert_close(outputs(model, inputs), first)
    assert not any("k_proj.lora" in n for n, _ in model.named_parameters())
    with pytest.raises(AdapterNotFoundError, match="other"):
        model.set_adapter("other")


def test_loaded_adapter_is_frozen_unless_trainable(tmp_path):
    get_peft_model(tiny_model("llama"), LoraConfig()).save_pretrained(tmp_path)
    frozen = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert frozen.get_nb_trainable_parameters()[0] == 0
    trainable = PeftModel.from_pretrained(tiny_model("llama"), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] > 0


def test_target_matching_rules():
    model = get_peft_model(
        tiny_model("llama"), LoraConfig(target_modules=r".*layers\.1\.self_attn\.(q|k)_proj")
    )
    adapted = {n for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    prefix = "base_model.model.model.layers.1.self_attn"
    assert adapted == {f"{prefix}.q_proj", f"{prefix}.k_proj"}
    model = get_peft_model(
        tiny_model("llama"), LoraConfig(target_modules=["o_proj"], layers_to_transform=[0])
    )
    adapted = {n for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == {"base_model.model.model.layers.0.self_attn.o_proj"}
    config = LoraConfig(target_modules="all-linear", exclude_modules=["down_proj"])
    model = get_peft_model(tiny_model("llama"), config)
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    # never lm_head
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"}


def test_rank_and_alpha_pattern():
    model = get_peft_model(
        tiny_model("llama"),
        LoraConfig(
            r=4,
            target_modules=["q_proj", "v_proj"],
            rank_pattern={"v_proj": 2},
            alpha_pattern={"q_proj": 16},
        ),
    )
    attn = model.base_model.model.model.layers[0].self_attn
    assert attn.v_proj.lora_A["default"].weight.shape[0] == 2
    assert attn.q_proj.scaling["default"] == 4.0 and attn.v_proj.scaling["default"] == 4.0


def test_unknown_target_is_a_clear_error():
    base = tiny_model("llama")
    with pytest.raises(TargetNotFoundError) as err:
        get_peft_model(base, LoraConfig(target_modules=["q_proj", "qq_proj"]))
    assert "qq_proj" in str(err.value) and "v_proj" in str(err.value)
    assert not any(isinstance(m, LoraLayer) for m in base.modules())  # untouched


def test_embedding_target(tmp_path):
    inputs = model_inputs("llama")
    model = get_peft_model(
        tiny_model("llama"), LoraConfig(target_modules=["embed_tokens"], init_lora_weights=False)
    )
    adapted = outputs(model, inputs)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    torch.testing.assert_close(outputs(reloaded, inputs), adapted, atol=1e-5, rtol=1e-5)
    merged = reloaded.merge_and_unload()
    torch.testing.assert_close(outputs(merged, inputs), adapted, atol=1e-5, rtol=1e-5)


def test_generate_with_lora():
    model = get_peft_model(
        tiny_model("llama"), LoraConfig(init_lora_weights=False, task_type="CAUSAL_LM")
    )
    ids = model_inputs("llama")["input_ids"][:1]
    out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 5)
    merged = model.merge_and_unload()
    assert torch.equal(merged.generate(input_ids=ids, max_new_tokens=5, do_sample=False), out)


def test_a_peft_model_is_freed_without_the_garbage_collector() -> None:
    """No reference cycle (base_model holds its PeftModel weakly): under torchrun a cyclic model was
    freed only at interpreter shutdown, after the process group it reaches, which aborted a rank."""
    import gc
    import weakref

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    ref = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert ref() is None
    finally:
        gc.enable()


def test_a_copied_model_s_base_model_answers_for_the_copy() -> None:
    import copy

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    model.add_adapter("b", LoraConfig(r=2, target_modules=["q_proj"]))
    copied = copy.deepcopy(model)
    copied.base_model.set_adapter("b")
    assert copied.active_adapter == "b" and model.active_adapter == "default"


def test_an_adapter_added_after_the_last_one_was_deleted_becomes_the_active_one():
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    model.delete_adapter("default")
    model.add_adapter("next", LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False))
    assert model.active_adapter == "next" and list(model.peft_config) == ["next"]
    inputs = model_inputs("llama")
    with torch.no_grad(), model.disable_adapter():
        base = model(**inputs).logits
    assert not torch.allclose(model(**inputs).logits, base)  # the new adapter is applied
