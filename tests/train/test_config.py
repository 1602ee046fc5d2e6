"""The job schema: one set of fields for Python, YAML and flags; every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftkit import ConfigError, JobConfig, LoraConfig, PromptTuningConfig
from peftkit.train.config import DataConfig, TrainingConfig, field_docs


def test_defaults_and_the_method_config() -> None:
    job = JobConfig(adapter={"r": 4, "target_modules": ["q_proj"]}, data={"path": "d.csv"})
    assert isinstance(job.data, DataConfig) and isinstance(job.train, TrainingConfig)
    assert job.data.template == "{text}"  # the text mode's default
    peft = job.peft_config()
    assert isinstance(peft, LoraConfig) and peft.r == 4 and peft.task_type.value == "CAUSAL_LM"
    prompt = JobConfig(
        method="prompt_tuning", adapter={"num_virtual_tokens": 5}, data={"path": "d.csv"}
    )
    assert isinstance(prompt.peft_config(), PromptTuningConfig)


def test_every_problem_is_reported_at_once_with_field_names() -> None:
    with pytest.raises(ConfigError) as info:
        JobConfig(
            method="loar",
            data={"path": None, "mode": "clasification", "max_length": 0},
            train={"lr": -1, "schedule": "cosin", "batch_size": 2.5, "precision": "fp8"},
        )
    text = str(info.value)
    for expected in (
        "method='loar' is not allowed; expected one of full, lora, prompt_tuning, p_tuning, "
        "prefix_tuning, adalora, loha, lokr, oft, trainable_tokens, ia3.",
        "Did you mean 'lora'?",
        "data.path is required",
        "data.mode='clasification'",
        "Did you mean 'classification'?",
        "data.max_length=0 must be a whole number > 0",
        "train.lr=-1 must be a number > 0",
        "train.schedule='cosin'",
        "train.batch_size=2.5",
        "train.precision='fp8' is not allowed; expected one of auto, fp32, bf16, fp16",
    ):
        assert expected in text
    assert len(info.value.problems) == 8


def test_adapter_fields_are_checked_by_the_method_config() -> None:
    with pytest.raises(ConfigError) as info:
        JobConfig(adapter={"rank": 8, "lora_dropout": 2.0}, data={"path": "d.csv"})
    text = str(info.value)
    assert "adapter: 'rank' is not a field of LoraConfig" in text
    with pytest.raises(ConfigError, match="lora_dropout"):
        JobConfig(adapter={"lora_dropout": 2.0}, data={"path": "d.csv"})


def test_classification_needs_label_words_and_a_label_template() -> None:
    with pytest.raises(ConfigError) as info:
        JobConfig(data={"path": "d.csv", "mode": "classification", "template": "{label} {text}"})
    assert "data.label_words is required" in str(info.value)
    assert "must end with {label}" in str(info.value)


def test_yaml_with_overrides_unknown_keys_and_text_numbers(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "model: smollm2-135m\nadapter: {r: 4}\ndata: {path: d.csv}\n"
        "train: {lr: 1e-4, epochs: 2, resume: true}\n"
    )
    job = JobConfig.from_yaml(path, {"train.batch_size": "16", "data.max_length": 64})
    assert job.train.lr == 1e-4  # YAML reads 1e-4 as text; the schema makes it a float
    assert job.train.batch_size == 16 and job.data.max_length == 64 and job.train.resume is True
    assert JobConfig.from_dict(job.to_dict()) == job

    path.write_text("model: x\ndata: {path: d.csv, templte: '{text}'}\ntrian: {}\n")
    with pytest.raises(ConfigError) as info:
        JobConfig.from_yaml(path)
    assert "data.templte is not a known field. Did you mean 'template'?" in str(info.value)
    assert "trian is not a known field. Did you mean 'train'?" in str(info.value)
    assert str(path) in str(info.value)


def test_yaml_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        JobConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        JobConfig.from_yaml(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        JobConfig.from_yaml(bad)


def test_every_field_is_documented() -> None:
    for cls in (JobConfig, DataConfig, TrainingConfig):
        docs = field_docs(cls)
        missing = [f for f in cls.__dataclass_fields__ if f not in docs]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_the_shipped_example_configs_are_valid() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    files = sorted(examples.glob("*.yaml"))
    assert files
    from peftkit.compare import CompareConfig

    for path in files:
        if path.name.startswith("compare-"):
            CompareConfig.from_yaml(path, {})
        else:
            JobConfig.from_yaml(path)


def test_the_demo_job_is_the_example_yaml() -> None:
    from peftkit.demo import demo_config

    examples = Path(__file__).resolve().parents[2] / "examples"
    assert (
        demo_config("outputs/rotten-tomatoes").to_dict()
        == JobConfig.from_yaml(examples / "rotten-tomatoes.yaml").to_dict()
    )


def test_all_linear_given_as_a_one_item_list_means_all_linear() -> None:
    """``--adapter.target_modules all-linear`` arrives as a list; it must not be read as a layer
    name."""
    job = JobConfig(adapter={"target_modules": ["all-linear"]}, data={"path": "x.csv"})
    assert job.peft_config().target_modules == "all-linear"  # type: ignore[union-attr]
