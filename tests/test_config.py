"""Adapter configs on their own (no peft needed): validation, copies, adoption and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftkit.config import (
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    adopt,
    config_from_dict,
    config_to_json,
    read_adapter_config,
)
from peftkit.errors import AdapterFormatError, ConfigError


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        LoraConfig(r=0, lora_alpha=-1, lora_dropout=2.0)
    text = str(caught.value)
    assert "r=0" in text and "lora_alpha=-1" in text and "lora_dropout=2.0" in text


def test_replace_is_a_validated_copy() -> None:
    config = LoraConfig(r=8, target_modules=["q_proj"])
    copy = config.replace(r=4)
    assert (copy.r, config.r) == (4, 8)
    assert copy is not config and copy.target_modules == config.target_modules
    with pytest.raises(ConfigError, match="r=0"):
        config.replace(r=0)


def test_adopt_writes_the_resolution_into_the_given_object() -> None:
    given = LoraConfig(r=8)  # targets left to the architecture's default
    resolved = given.replace(target_modules={"q_proj", "v_proj"}, fan_in_fan_out=True)
    assert given.target_modules is None  # resolving never touched the user's object
    assert adopt(given, resolved) is given
    assert given.target_modules == {"q_proj", "v_proj"} and given.fan_in_fan_out
    with pytest.raises(TypeError, match="IA3Config into a LoraConfig"):
        adopt(given, IA3Config())


def test_the_json_file_round_trips(tmp_path: Path) -> None:
    for config in (
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern={"q_proj": 2}
        ),
        IA3Config(target_modules=["k"], feedforward_modules=["k"]),
        PromptTuningConfig(num_virtual_tokens=5),
        PrefixTuningConfig(num_virtual_tokens=3),
    ):
        config.save_pretrained(tmp_path / type(config).__name__)
        again = read_adapter_config(tmp_path / type(config).__name__)
        assert type(again) is type(config) and config_to_json(again) == config_to_json(config)


def test_unknown_fields_from_a_newer_peft_warn_and_are_ignored(tmp_path: Path) -> None:
    data = json.loads(config_to_json(LoraConfig(r=4, target_modules=["q"]))) | {
        "field_from_the_future": 1
    }
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="field_from_the_future"):
        assert read_adapter_config(tmp_path).r == 4
    with pytest.raises(ConfigError, match="unknown field 'field_from_the_future'"):
        config_from_dict(data, strict=True)  # in code, a typo is an error


def test_bad_files_say_which_file_and_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(AdapterFormatError, match=r"no adapter_config\.json"):
        read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFormatError, match=r"adapter_config\.json is not valid JSON"):
        read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": -3}))
    with pytest.raises(ConfigError, match=r"adapter_config\.json"):
        read_adapter_config(tmp_path)


def test_a_peft_feature_peftkit_lacks_is_refused_not_ignored() -> None:
    data = json.loads(config_to_json(LoraConfig(r=4, target_modules=["q"]))) | {"use_qalora": True}
    with pytest.raises(
        ConfigError, match="use_qalora=True is a PEFT feature peftkit does not support"
    ):
        config_from_dict(data)


def test_tokenizer_kwargs_without_a_text_start_is_refused() -> None:
    """They configure the tokenizer of the TEXT start only; elsewhere they would be silently unused
    (PEFT's rule)."""
    with pytest.raises(
        ConfigError, match="tokenizer_kwargs only valid when using prompt_tuning_init='TEXT'"
    ):
        PromptTuningConfig(num_virtual_tokens=4, tokenizer_kwargs={"add_special_tokens": False})
    config = PromptTuningConfig(
        num_virtual_tokens=4,
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text="hi",
        tokenizer_name_or_path="gpt2",
        tokenizer_kwargs={"add_special_tokens": False},
    )
    assert config.tokenizer_kwargs == {"add_special_tokens": False}
