"""Prompt tuning, p-tuning and prefix tuning checked against the base model run by hand."""

from __future__ import annotations

import pytest
import torch
import transformers

from peftkit import (
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)

from .conftest import minilm_dir, model_inputs, outputs, tiny_model

CAUSAL = ["llama", "gpt2", "bloom"]


def _embeds(base, ids):
    return base.get_input_embeddings()(ids)


@pytest.mark.parametrize("arch", CAUSAL)
def test_prompt_tuning_equals_base_with_prepended_embeddings(arch):
    inputs = model_inputs(arch)
    model = get_peft_model(
        tiny_model(arch), PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")
    )
    prompts = model.prompt_encoder["default"].embedding.weight.detach()
    base = tiny_model(arch)
    batch = inputs["input_ids"].shape[0]
    embeds = torch.cat([prompts.expand(batch, -1, -1), _embeds(base, inputs["input_ids"])], dim=1)
    mask = torch.cat([torch.ones(batch, 3, dtype=torch.long), inputs["attention_mask"]], dim=1)
    with torch.no_grad():
        expected = base(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(outputs(model, inputs), expected)


@pytest.mark.parametrize("arch", CAUSAL)
def test_labels_get_ignore_index_over_virtual_tokens(arch):
    inputs = model_inputs(arch)
    inputs["labels"] = inputs["input_ids"].clone()
    model = get_peft_model(
        tiny_model(arch), PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        out = model(**inputs)
    # the last virtual position predicts the first real token; virtual labels are ignored
    logits = out.logits[:, 2:-1]
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), inputs["labels"].reshape(-1)
    )
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)


def test_text_init_equals_embeddings_of_init_text(tokenizer):
    config = PromptTuningConfig(
        num_virtual_tokens=7,
        task_type="SEQ_CLS",
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text="hate speech",
        tokenizer_name_or_path=str(minilm_dir()),
    )
    big = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
    )
    base = transformers.AutoModelForSequenceClassification.from_config(big)
    model = get_peft_model(base, config)
    ids = tokenizer("hate speech")["input_ids"]  # [CLS] hate speech [SEP]: 4 tokens, repeated to 7
    expected_ids = (ids * 2)[:7]
    expected = base.get_input_embeddings().weight[expected_ids]
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, expected)


def test_sample_vocab_init_draws_real_rows():
    model = get_peft_model(
        tiny_model("llama"),
        PromptTuningConfig(
            num_virtual_tokens=5, task_type="CAUSAL_LM", prompt_tuning_init="SAMPLE_VOCAB"
        ),
    )
    vocab = model.get_input_embeddings().weight
    for row in model.prompt_encoder["default"].embedding.weight:
        assert (vocab == row).all(dim=1).any()


@pytest.mark.parametrize(
    "config",
    [
        PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
        PromptEncoderConfig(num_virtual_tokens=4, task_type="CAUSAL_LM", encoder_hidden_size=16),
        PromptEncoderConfig(
            num_virtual_tokens=4,
            task_type="CAUSAL_LM",
            encoder_reparameterization_type="LSTM",
            encoder_hidden_size=8,
        ),
        PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
        PrefixTuningConfig(
            num_virtual_tokens=4,
            task_type="CAUSAL_LM",
            prefix_projection=True,
            encoder_hidden_size=8,
        ),
    ],
    ids=["prompt", "ptuning-mlp", "ptuning-lstm", "prefix", "prefix-projection"],
)
def test_only_prompt_parameters_get_gradients_and_reload(config, tmp_path):
    inputs = model_inputs("llama")
    inputs["labels"] = inputs["input_ids"].clone()
    model = get_peft_model(tiny_model("llama"), config)
    model(**inputs).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith("prompt_encoder.default.") for n in with_grad)
    model.eval()
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    torch.testing.assert_close(outputs(reloaded, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", CAUSAL)
def test_prefix_equals_base_with_cache_passed_by_hand(arch):
    from transformers import DynamicCache

    inputs = model_inputs(arch)
    model = get_peft_model(
        tiny_model(arch), PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")
    )
    cfg = model.peft_config["default"]
    flat = model.prompt_encoder["default"].embedding.weight.detach()  # (N, L*2*D)
    heads, layers = cfg.num_attention_heads, cfg.num_layers
    per = flat.view(3, layers, 2, heads, cfg.token_dim // heads)
    base = tiny_model(arch)
    batch = inputs["input_ids"].shape[0]
    cache = DynamicCache(config=base.config)
    for layer in range(layers):
        # (B, H, N, hd)
        k = per[:, layer, 0].permute(1, 0, 2).unsqueeze(0).expand(batch, -1, -1, -1)
        v = per[:, layer, 1].permute(1, 0, 2).unsqueeze(0).expand(batch, -1, -1, -1)
        cache.update(k, v, layer)
    mask = torch.cat([torch.ones(batch, 3, dtype=torch.long), inputs["attention_mask"]], dim=1)
    with torch.no_grad():
        expected = base(
            input_ids=inputs["input_ids"], attention_mask=mask, past_key_values=cache
        ).logits
    torch.testing.assert_close(outputs(model, inputs), expected)


@pytest.mark.parametrize("arch", CAUSAL)
@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_generation_with_cache_equals_without(arch, kind):
    config = (PromptTuningConfig if kind == "prompt" else PrefixTuningConfig)(
        num_virtual_tokens=3, task_type="CAUSAL_LM"
    )
    model = get_peft_model(tiny_model(arch), config)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_()
    ids = model_inputs(arch)["input_ids"][1:]
    cached = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=True)
    assert cached.shape == (1, ids.shape[1] + 6) and torch.equal(cached[:, : ids.shape[1]], ids)
    if kind == "prompt":
        uncached = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached)
    # greedy decoding step by step through forward (no cache) gives the same tokens
    seq = ids
    for _ in range(6):
        with torch.no_grad():
            nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(cached, seq)


def test_counts_on_bloomz_560m_shape():
    config = transformers.BloomConfig(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16)

    def count(peft_config):
        with torch.device("meta"):
            base = transformers.AutoModelForCausalLM.from_config(config)
        return get_peft_model(base, peft_config).get_nb_trainable_parameters()[0]

    assert count(PromptTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM")) == 8_192
    assert (
        count(
            PromptEncoderConfig(
                num_virtual_tokens=20, encoder_hidden_size=128, task_type="CAUSAL_LM"
            )
        )
        == 300_288
    )
    assert count(PrefixTuningConfig(num_virtual_tokens=30, task_type="CAUSAL_LM")) == 1_474_560


def test_lora_and_prompt_adapters_on_one_model(tmp_path):
    from peftkit import LoraConfig

    inputs = model_inputs("llama")
    base_logits = outputs(tiny_model("llama"), inputs)
    model = get_peft_model(
        tiny_model("llama"), LoraConfig(init_lora_weights=False, task_type="CAUSAL_LM")
    )
    lora = outputs(model, inputs)
    model.add_adapter("prompt", PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM"))
    model.set_adapter("prompt")
    prompt = outputs(model, inputs)
    assert prompt.shape[1] == lora.shape[1] + 2
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, inputs), base_logits)
    model.set_adapter("default")
    torch.testing.assert_close(outputs(model, inputs), lora)
    model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    again.load_adapter(tmp_path / "prompt", adapter_name="prompt")
    again.set_adapter("prompt")
    torch.testing.assert_close(outputs(again, inputs), prompt, atol=1e-5, rtol=1e-5)


def test_t5_prompt_tuning_equals_encoder_embeddings_prepended_by_hand():
    model = get_peft_model(
        tiny_model("t5"), PromptTuningConfig(num_virtual_tokens=3, task_type="SEQ_2_SEQ_LM")
    )
    # (2 * 3, D): encoder and decoder halves, as PEFT
    prompts = model.prompt_encoder["default"].embedding.weight
    assert prompts.shape[0] == 6
    inputs = model_inputs("t5")
    base = tiny_model("t5")
    batch = inputs["input_ids"].shape[0]
    embeds = torch.cat(
        [prompts[:3].detach().expand(batch, -1, -1), _embeds(base, inputs["input_ids"])], dim=1
    )
    mask = torch.cat([torch.ones(batch, 3, dtype=torch.long), inputs["attention_mask"]], dim=1)
    with torch.no_grad():
        expected = base(
            inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=inputs["decoder_input_ids"]
        ).logits
    torch.testing.assert_close(outputs(model, inputs), expected)


def test_t5_prefix_goes_into_the_decoder_self_attention():
    from transformers import DynamicCache, EncoderDecoderCache

    model = get_peft_model(
        tiny_model("t5"), PrefixTuningConfig(num_virtual_tokens=3, task_type="SEQ_2_SEQ_LM")
    )
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_()
    inputs = model_inputs("t5")
    batch, layers, heads, head_dim = inputs["input_ids"].shape[0], 2, 4, 8
    flat = model.prompt_encoder["default"].embedding.weight.detach()  # (3, L * 2 * H * hd)
    kv = flat.view(3, layers * 2, heads, head_dim).permute(1, 2, 0, 3)  # (L*2, H, N, hd)
    self_cache = DynamicCache()
    for layer in range(layers):
        slot = (2 * layer) % layers  # PEFT's regrouping of the doubled key/value list
        key, value = (kv[2 * slot + i].unsqueeze(0).expand(batch, -1, -1, -1) for i in range(2))
        self_cache.update(key, value, layer)
    with torch.no_grad():
        expected = tiny_model("t5")(
            **inputs, past_key_values=EncoderDecoderCache(self_cache, DynamicCache())
        ).logits
    torch.testing.assert_close(outputs(model, inputs), expected)


@pytest.mark.parametrize("kind", ["prompt", "p_tuning", "prefix"])
def test_t5_generation_equals_greedy_forward_steps(kind):
    cls = {
        "prompt": PromptTuningConfig,
        "p_tuning": PromptEncoderConfig,
        "prefix": PrefixTuningConfig,
    }[kind]
    model = get_peft_model(tiny_model("t5"), cls(num_virtual_tokens=3, task_type="SEQ_2_SEQ_LM"))
    if kind != "p_tuning":
        with torch.no_grad():
            model.prompt_encoder["default"].embedding.weight.normal_()
    model.eval()
    inputs = model_inputs("t5")
    generated = model.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=5,
        do_sample=False,
    )
    seq = torch.zeros(inputs["input_ids"].shape[0], 1, dtype=torch.long)  # decoder_start_token_id
    for _ in range(5):
        with torch.no_grad():
            logits = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                decoder_input_ids=seq,
            ).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, seq)


@pytest.mark.parametrize("arch", CAUSAL)
def test_prefix_text_init_equals_base_reading_the_text_first(arch, chars, tmp_path):
    chars.save_pretrained(tmp_path)
    text, n = "Answer yes or no:", 5
    config = PrefixTuningConfig(
        num_virtual_tokens=n,
        task_type="CAUSAL_LM",
        prefix_init_text=text,
        tokenizer_name_or_path=str(tmp_path),
    )
    model = get_peft_model(tiny_model(arch), config)
    inputs = model_inputs(arch)
    batch = inputs["input_ids"].shape[0]
    # the text, cut to n tokens
    text_ids = torch.tensor(chars(text)["input_ids"][:n]).expand(batch, -1)
    ids = torch.cat([text_ids, inputs["input_ids"]], dim=1)
    mask = torch.cat([torch.ones(batch, n, dtype=torch.long), inputs["attention_mask"]], dim=1)
    with torch.no_grad():
        expected = tiny_model(arch)(input_ids=ids, attention_mask=mask).logits[:, n:]
    torch.testing.assert_close(outputs(model, inputs), expected, atol=1e-5, rtol=1e-5)


def test_prefix_text_init_is_not_written_to_the_adapter_config(chars, tmp_path):
    import json

    chars.save_pretrained(tmp_path / "tok")
    config = PrefixTuningConfig(
        num_virtual_tokens=3,
        task_type="CAUSAL_LM",
        prefix_init_text="hi",
        tokenizer_name_or_path=str(tmp_path / "tok"),
    )
    model = get_peft_model(tiny_model("llama"), config)
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert "prefix_init_text" not in saved and "tokenizer_name_or_path" not in saved
    assert saved["init_weights"] is None  # PEFT's field, with PEFT's default


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_zero_init_gives_zero_key_values(projection):
    config = PrefixTuningConfig(
        num_virtual_tokens=3,
        task_type="CAUSAL_LM",
        init_weights="zero",
        prefix_projection=projection,
        encoder_hidden_size=8,
    )
    model = get_peft_model(tiny_model("llama"), config)
    prefix = model.prompt_encoder["default"]()
    assert prefix.shape[0] == 3 and not prefix.any()


def test_prefix_init_settings_are_checked_together():
    from peftkit import ConfigError

    with pytest.raises(ConfigError) as err:
        PrefixTuningConfig(
            num_virtual_tokens=3,
            prefix_init_text="x",
            prefix_projection=True,
            encoder_hidden_size=8,
            init_weights="ones",
        )
    text = str(err.value)
    for expected in ("tokenizer_name_or_path", "prefix_projection", "init_weights='ones'"):
        assert expected in text


def test_resolve_fills_a_copy_and_the_model_adopts_it():
    from peftkit.tuners.prompt.model import PromptShape, resolve

    base = tiny_model("llama")
    given = PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")
    resolved = resolve(base, given)
    # resolution leaves the user's config alone
    assert given.num_layers is None and given.token_dim is None
    heads, kv_heads = base.config.num_attention_heads, base.config.num_key_value_heads
    head_dim = base.config.hidden_size // heads
    # a grouped-query model: the prefix holds the key/value heads, as PEFT records them
    assert PromptShape.of(resolved) == PromptShape(
        3, 1, base.config.num_hidden_layers, head_dim * kv_heads, kv_heads
    )
    assert resolve(base, resolved) == resolved  # resolving twice changes nothing
    model = get_peft_model(base, given)
    # PEFT's contract
    assert model.peft_config["default"] is given and given.token_dim == head_dim * kv_heads
