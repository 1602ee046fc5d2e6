"""Behaviour side by side with PEFT: the same calls on both libraries give the same outcome.

Each test runs one scenario through ``peft`` and through ``peftkit`` (the ``lib`` fixture) and
checks the outcome against an independent computation (weights from the adapters' own tensors, the
base model's output) or against what PEFT itself does. These are the mismatches PEFT's own test
suite found.
"""

from __future__ import annotations

import copy
import types
import warnings
from typing import Any

import peft
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import peftkit

from ..conftest import model_inputs, outputs, tiny_model

LIBS = {"peft": peft, "peftkit": peftkit}


@pytest.fixture(params=list(LIBS))
def lib(request: pytest.FixtureRequest) -> types.ModuleType:
    return LIBS[request.param]


def _lora(lib: types.ModuleType, **kw: Any) -> Any:
    return lib.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **kw)


def _two_adapters(lib: types.ModuleType) -> Any:
    torch.manual_seed(0)
    model = lib.get_peft_model(tiny_model("llama"), _lora(lib))
    model.add_adapter("b", _lora(lib))
    return model


def _delta(model: Any, name: str) -> torch.Tensor:
    """q_proj's update of adapter ``name`` in layer 0, from its own A and B: scaling * B @ A."""
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    return layer.scaling[name] * layer.lora_B[name].weight @ layer.lora_A[name].weight


def test_merge_and_unload_merges_only_the_named_adapters(lib: types.ModuleType) -> None:
    model = _two_adapters(lib)  # "default" is active
    base_weight = (
        model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    )
    expected = base_weight + _delta(model, "b").detach()
    merged = model.merge_and_unload(adapter_names=["b"])
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, expected)


def test_a_new_adapter_is_inactive_and_frozen(lib: types.ModuleType) -> None:
    model = _two_adapters(lib)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)


def test_an_adapter_loaded_for_inference_is_frozen(lib: types.ModuleType, tmp_path: Any) -> None:
    _two_adapters(lib).save_pretrained(tmp_path)  # "default" at the top, "b" in a subfolder
    model = lib.get_peft_model(tiny_model("llama"), _lora(lib))
    model.load_adapter(tmp_path / "b", adapter_name="other", is_trainable=False)
    assert not [n for n, p in model.named_parameters() if p.requires_grad and ".other." in n]


def test_load_adapter_returns_the_load_result(lib: types.ModuleType, tmp_path: Any) -> None:
    _two_adapters(lib).save_pretrained(tmp_path)
    model = lib.get_peft_model(tiny_model("llama"), _lora(lib))
    result = model.load_adapter(tmp_path / "b", adapter_name="other")
    assert not [k for k in result.missing_keys if "other" in k] and not result.unexpected_keys


def test_only_one_adapter_may_train_biases(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(tiny_model("llama"), _lora(lib, bias="all"))
    with pytest.raises(ValueError, match="bias"):
        model.add_adapter("b", _lora(lib, bias="lora_only"))
    model.add_adapter("c", _lora(lib))  # bias="none" beside it is fine


def test_mixed_batches_take_two_dimensional_inputs(lib: types.ModuleType) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    config = lib.LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False)
    model = lib.get_peft_model(copy.deepcopy(mlp), config)
    model.add_adapter("b", lib.LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False))
    model.eval()
    x = torch.randn(3, 8)
    mixed = model(x, adapter_names=["default", "b", "__base__"])
    model.set_adapter("b")
    with torch.no_grad():
        b_row = model(x[1:2])
    torch.testing.assert_close(mixed[1:2], b_row)
    torch.testing.assert_close(mixed[2:3], mlp(x[2:3]))  # "__base__" is the untouched model


def test_a_plain_module_is_called_with_its_own_arguments(lib: types.ModuleType) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    model = lib.get_peft_model(copy.deepcopy(mlp), lib.LoraConfig(r=2, target_modules=["0"]))
    x = torch.randn(2, 8)
    torch.testing.assert_close(model(x), mlp(x))  # zero-initialized B: the base model's output


def test_exclude_modules_with_a_target_list_adapts_the_rest(lib: types.ModuleType) -> None:
    config = lib.LoraConfig(
        r=2,
        target_modules=["q_proj", "v_proj"],
        exclude_modules=["model.layers.0.self_attn.q_proj"],
    )
    model = lib.get_peft_model(tiny_model("llama"), config)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert "base_model.model.model.layers.0.self_attn.q_proj" not in adapted
    assert "base_model.model.model.layers.1.self_attn.q_proj" in adapted


def test_an_exclusion_that_matches_nothing_warns(lib: types.ModuleType) -> None:
    with pytest.warns(UserWarning, match="no modules were excluded"):
        lib.get_peft_model(
            tiny_model("llama"),
            lib.LoraConfig(r=2, target_modules=["q_proj"], exclude_modules=["nothing_like_this"]),
        )


def test_a_merged_adapter_cannot_be_deleted(lib: types.ModuleType) -> None:
    model = _two_adapters(lib)
    model.merge_adapter()
    with pytest.raises(ValueError if lib is peft else peftkit.PeftkitError, match="merged"):
        model.delete_adapter("default")


def test_merging_twice_warns(lib: types.ModuleType) -> None:
    model = _two_adapters(lib)
    model.merge_adapter()
    with pytest.warns(UserWarning, match="already merged"):
        model.merge_adapter()


def test_pickle_saving_writes_the_legacy_bin_that_loads_in_both(
    lib: types.ModuleType, tmp_path: Any
) -> None:
    """safe_serialization=False writes PEFT's adapter_model.bin (only that file), which both
    libraries load to the same logits (peftkit with torch.load(weights_only=True))."""
    torch.manual_seed(0)
    model = lib.get_peft_model(tiny_model("llama"), _lora(lib))
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file()
    assert not (tmp_path / "adapter_model.safetensors").exists()
    inputs = model_inputs("llama")
    expected = outputs(model, inputs)
    for reader in LIBS.values():
        loaded = reader.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
        torch.testing.assert_close(outputs(loaded, inputs), expected, rtol=0, atol=0)


def test_saving_again_in_the_other_format_leaves_one_file(tmp_path: Any) -> None:
    model = peftkit.get_peft_model(tiny_model("llama"), _lora(peftkit))
    model.save_pretrained(tmp_path, safe_serialization=False)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("adapter_model.*")) == ["adapter_model.safetensors"]


def test_unknown_save_arguments_raise(lib: types.ModuleType, tmp_path: Any) -> None:
    model = lib.get_peft_model(tiny_model("llama"), _lora(lib))
    if lib is peft:
        pytest.skip("PEFT passes unknown keywords on to the model card; peftkit refuses them")
    with pytest.raises(TypeError, match="no_such_option"):
        model.save_pretrained(tmp_path, no_such_option=True)


def test_prompt_configs_default_to_no_token_count(lib: types.ModuleType) -> None:
    config = lib.PromptTuningConfig(task_type="CAUSAL_LM")
    assert config.num_virtual_tokens is None
    with pytest.raises((ValueError, TypeError)):
        lib.get_peft_model(tiny_model("llama"), config)


def test_init_lora_weights_names_are_case_insensitive(lib: types.ModuleType) -> None:
    config = lib.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights="OLoRA")
    model = lib.get_peft_model(tiny_model("llama"), config)
    assert any(".lora_A." in n for n, _ in model.named_parameters())


def test_modules_to_save_refuses_containers(lib: types.ModuleType) -> None:
    with pytest.raises(TypeError, match="cannot be applied"):
        lib.get_peft_model(
            tiny_model("llama"),
            lib.LoraConfig(r=2, target_modules=["lm_head"], modules_to_save=["layers"]),
        )


def test_a_second_get_peft_model_warns(lib: types.ModuleType) -> None:
    base = tiny_model("llama")
    lib.get_peft_model(base, _lora(lib))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib.get_peft_model(base, _lora(lib), adapter_name="other")
    assert any("second time" in str(w.message) for w in caught)


def test_prefix_tuning_on_bert_is_refused(lib: types.ModuleType) -> None:
    """Both libraries make the model and refuse when it runs, with the same words."""
    from ..conftest import model_inputs

    with pytest.raises(ValueError, match="does not support past key values"):
        model = lib.get_peft_model(
            tiny_model("bert"), lib.PrefixTuningConfig(num_virtual_tokens=3, task_type="SEQ_CLS")
        )
        model(**model_inputs("bert"))


def test_a_json_without_peft_type_is_not_a_config(lib: types.ModuleType, tmp_path: Any) -> None:
    (tmp_path / "adapter_config.json").write_text('{"foo": "bar", "baz": 123}')
    with pytest.raises(
        TypeError, match="LoraConfig config that is trying to be loaded is missing required keys"
    ):
        lib.LoraConfig.from_pretrained(tmp_path)


def test_disable_adapter_restores_the_layers_state(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(tiny_model("llama"), _lora(lib))
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "enable_adapters")]
    model.disable_adapter_layers()
    with model.disable_adapter():
        pass
    assert all(m.disable_adapters for m in layers)  # still off, as before the context
    model.enable_adapter_layers()
    layers[0].enable_adapters(False)
    with (
        pytest.warns(
            UserWarning, match="some adapter layers that are enabled and others that are disabled"
        ),
        model.disable_adapter(),
    ):
        pass
    assert not any(m.disable_adapters for m in layers)


def test_nothing_trains_while_adapters_are_switched_off(lib: types.ModuleType) -> None:
    model = _two_adapters(lib)
    before = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    with model.disable_adapter():
        assert not [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == before
    model.base_model.disable_adapter_layers()
    assert not [n for n, p in model.named_parameters() if p.requires_grad]
    model.base_model.enable_adapter_layers()
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == before


def _mlp_with_copies(lib: types.ModuleType, first: list[str], second: list[str]) -> Any:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    model = lib.get_peft_model(
        mlp, lib.LoraConfig(r=2, target_modules=["0"], modules_to_save=first)
    )
    model.add_adapter("other", lib.LoraConfig(r=2, target_modules=["0"], modules_to_save=second))
    return model


@pytest.mark.parametrize(
    ("first", "second"), [(["2"], ["2"]), (["2", "4"], ["4"])], ids=["same", "overlapping"]
)
def test_two_active_adapters_cannot_share_a_trainable_copy(
    lib: types.ModuleType, first: list[str], second: list[str]
) -> None:
    model = _mlp_with_copies(lib, first, second)
    with pytest.raises(
        ValueError, match="Only one adapter can be set at a time for ModulesToSaveWrapper"
    ):
        model.base_model.set_adapter(["default", "other"])


def test_two_active_adapters_with_their_own_copies(lib: types.ModuleType) -> None:
    model = _mlp_with_copies(lib, ["2"], ["4"])
    model.base_model.set_adapter(["default", "other"])
    assert model.base_model.model[2].active_adapters == ["default"]
    assert model.base_model.model[4].active_adapters == ["other"]


def test_weighted_adapters_cannot_share_a_trainable_copy(lib: types.ModuleType) -> None:
    model = _mlp_with_copies(lib, ["2"], ["2"])
    with pytest.raises(
        ValueError, match="target the same module with modules_to_save, but found 1 such instance"
    ):
        model.add_weighted_adapter(["default", "other"], weights=[1.0, 1.0], adapter_name="merged")


def test_every_adapter_layer_states_its_features(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(
        tiny_model("gpt2"), lib.LoraConfig(r=2, target_modules=["wte", "c_attn"])
    )
    layers = [m for m in model.modules() if hasattr(m, "lora_A") or hasattr(m, "lora_embedding_A")]
    assert len(layers) == 3
    # the embedding: (vocabulary, width); Conv1D: its (in, out), though stored transposed
    for layer in layers:
        assert (layer.in_features, layer.out_features) in {(1000, 32), (32, 96)}


def test_switched_off_adapters_win_over_adapter_names(lib: types.ModuleType) -> None:
    model = _two_adapters(lib).eval()
    inputs = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]])}
    with model.disable_adapter(), torch.no_grad():
        expected = model(**inputs).logits
        mixed = model(**inputs, adapter_names=["__base__", "default", "b"]).logits
    torch.testing.assert_close(mixed, expected)


def test_config_records_the_format_version_and_keeps_target_names_as_set(
    lib: types.ModuleType, tmp_path: Any
) -> None:
    config = lib.LoraConfig(target_modules=["v_proj", "q_proj", "q_proj"])
    assert config.target_modules == {"q_proj", "v_proj"}
    # peftkit writes the format of the PEFT it is tested with
    assert config.peft_version == peft.__version__
    config.save_pretrained(tmp_path)
    loaded = lib.LoraConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.target_modules, set) and loaded.to_dict() == config.to_dict()
    assert loaded.peft_version == config.peft_version


def test_a_dev_version_records_its_commit_or_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    module = __import__("peftkit.config", fromlist=["x"])
    monkeypatch.setattr(module, "__version__", "0.15.0.dev7")
    monkeypatch.setattr(module, "_get_commit_hash", lambda _: "abc123")
    assert peftkit.IA3Config().peft_version == "0.15.0.dev7@abc123"

    def broken(_: str) -> str:
        raise OSError("unreadable metadata")

    monkeypatch.setattr(module, "_get_commit_hash", broken)
    with pytest.warns(UserWarning, match="error while trying to determine the commit hash"):
        assert peftkit.IA3Config().peft_version == "0.15.0.dev7@UNKNOWN"


def test_prompt_encoder_is_built_from_its_config_and_warns_about_ignored_mlp_depth(
    lib: types.ModuleType,
) -> None:
    encoder_cls = (
        lib.tuners.p_tuning.PromptEncoder if lib is peft else peftkit.tuners.prompt.PromptEncoder
    )
    kwargs = {
        "num_virtual_tokens": 4,
        "num_transformer_submodules": 1,
        "token_dim": 8,
        "encoder_hidden_size": 6,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder = encoder_cls(lib.PromptEncoderConfig(**kwargs))
    assert encoder.embedding.weight.shape == (4, 8) and encoder.mlp_head[0].weight.shape == (6, 8)
    with pytest.warns(
        UserWarning, match="the argument `encoder_num_layers` is ignored. Exactly 2 MLP layers"
    ):
        encoder_cls(lib.PromptEncoderConfig(encoder_num_layers=3, **kwargs))


def test_a_seed_gives_peft_s_initial_embedding_adapter() -> None:
    def init(lib: types.ModuleType) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = lib.get_peft_model(
            nn.Sequential(nn.Embedding(20, 5), nn.Linear(5, 3)),
            lib.LoraConfig(target_modules=["0", "1"]),
        )
        return {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}

    ours, theirs = init(peftkit), init(peft)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("existing", [True, False])
def test_model_card_keeps_a_users_card_and_fills_the_hub_template(
    lib: types.ModuleType, tmp_path: Any, existing: bool
) -> None:
    model = lib.get_peft_model(tiny_model("llama"), _lora(lib))
    if existing:
        (tmp_path / "README.md").write_text("---\nmeta: hello\n---\nThis is a model card\n")
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "library_name: peft" in card
    if existing:
        # PEFT appends its version
        assert "meta: hello" in card and "---\nThis is a model card\n" in card
    else:
        # the Hub's template, as PEFT writes it
        assert "## Training Details" in card and len(card) > 1000


def test_a_resized_embedding_is_refused_unless_mismatched_sizes_are_ignored(
    lib: types.ModuleType, tmp_path: Any
) -> None:
    def model(vocab: int) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(vocab, 5), nn.Linear(5, 3))

    lib.get_peft_model(
        model(100), lib.LoraConfig(target_modules=["0", "1"], init_lora_weights=False)
    ).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="size mismatch") as err:
        lib.PeftModel.from_pretrained(model(105), tmp_path)
    assert "100" in str(err.value) and "105" in str(err.value)
    with pytest.warns(UserWarning, match="ignore_mismatched_sizes=True"):
        loaded = lib.PeftModel.from_pretrained(model(105), tmp_path, ignore_mismatched_sizes=True)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    linear = loaded.get_base_model()[1]  # the linear layer still gets its tensors
    torch.testing.assert_close(
        linear.lora_A["default"].weight, saved["base_model.model.1.lora_A.weight"]
    )


def test_targeted_module_names_keep_the_order_adapters_reached_them(lib: types.ModuleType) -> None:
    model = lib.get_peft_model(
        nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), lib.LoraConfig(target_modules=["1"])
    )
    model.add_adapter("other", lib.LoraConfig(target_modules=["0", "1"]))
    assert model.targeted_module_names == ["1", "0"]
    assert model.base_model.targeted_module_names == ["1", "0"]


@pytest.mark.parametrize("saver", ["peft", "peftkit"])
def test_an_adapted_embedding_travels_with_its_base_weights(saver: str, tmp_path: Any) -> None:
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    writer, reader = (peft, peftkit) if saver == "peft" else (peftkit, peft)
    torch.manual_seed(0)
    model = writer.get_peft_model(
        tiny_model("llama"),
        writer.LoraConfig(r=2, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False),
    )
    # an embedding that differs from the base's, as a resized or trained one does
    with torch.no_grad():
        model.get_base_model().model.embed_tokens.base_layer.weight.mul_(1.5)
    with pytest.warns(UserWarning, match="Setting `save_embedding_layers` to `True`"):
        model.save_pretrained(tmp_path)
    assert "base_model.model.model.embed_tokens.base_layer.weight" in load_file(
        tmp_path / "adapter_model.safetensors"
    )
    loaded = reader.PeftModel.from_pretrained(tiny_model("llama"), tmp_path).eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_tied_embeddings_saved_beside_an_adapter_are_written_once_each(tmp_path: Any) -> None:
    base = tiny_model("llama")
    base.config.tie_word_embeddings = True
    base.tie_weights()
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path, save_embedding_layers=True)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert torch.equal(
        saved["base_model.model.model.embed_tokens.weight"],
        saved["base_model.model.lm_head.weight"],
    )
