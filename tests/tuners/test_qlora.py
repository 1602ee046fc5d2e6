"""QLoRA: LoRA on a 4-bit (NF4) base from bitsandbytes, which runs on this CPU (bitsandbytes >=
0.48)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from peftkit import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    load_model,
    prepare_model_for_kbit_training,
)
from peftkit.errors import ConfigError, ModelLoadError
from peftkit.tuners.lora import LoraLinear
from tests.conftest import sample_inputs

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama wide enough for bitsandbytes' CPU kernels (in_features a multiple of its
    64-value blocks)."""
    import transformers

    from tests.conftest import char_tokenizer

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    folder = tmp_path_factory.mktemp("tiny-llama-64")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def four_bit(model_dir: Path) -> torch.nn.Module:
    return load_model(model_dir, quantization="nf4")


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**sample_inputs()).logits


def test_base_is_packed_and_lora_takes_the_layer_features(model_dir: Path) -> None:
    model = get_peft_model(
        four_bit(model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoraLinear) and layer.quantized
    assert type(layer.base_layer).__name__ == "Linear4bit"
    assert layer.weight.shape[1] == 1  # packed: not (out, in)
    assert layer.lora_A["default"].weight.shape == (4, layer.base_layer.in_features)
    assert layer.lora_B["default"].weight.shape == (layer.base_layer.out_features, 4)
    assert layer.lora_A["default"].weight.dtype == torch.float32


def test_zero_initialized_lora_equals_the_4bit_base(model_dir: Path) -> None:
    base = logits(four_bit(model_dir).eval())
    model = get_peft_model(
        four_bit(model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    ).eval()
    torch.testing.assert_close(logits(model), base, atol=0, rtol=0)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model), base, atol=0, rtol=0)


def test_adapter_round_trips_with_peft_on_a_4bit_base(model_dir: Path, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    theirs = peft.get_peft_model(
        four_bit(model_dir),
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    ).eval()
    expected = logits(theirs)
    theirs.save_pretrained(tmp_path / "peft")
    ours = PeftModel.from_pretrained(four_bit(model_dir), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(ours), expected, atol=1e-5, rtol=0)
    assert ours.get_nb_trainable_parameters()[0] == 0  # loaded for inference
    ours.save_pretrained(tmp_path / "ours")
    back = peft.PeftModel.from_pretrained(four_bit(model_dir), tmp_path / "ours").eval()
    torch.testing.assert_close(logits(back), expected, atol=1e-5, rtol=0)
    fresh = get_peft_model(
        four_bit(model_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    assert fresh.get_nb_trainable_parameters()[0] == theirs.get_nb_trainable_parameters()[0]


def test_merge_and_dense_weight_methods_are_refused(model_dir: Path) -> None:
    model = get_peft_model(four_bit(model_dir), LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="cannot merge into a 4-bit"):
        model.merge_adapter()
    with pytest.raises(ConfigError, match="use_dora reads the dense base weight"):
        get_peft_model(
            four_bit(model_dir), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)
        )
    with pytest.raises(ConfigError, match="init_lora_weights='pissa'"):
        get_peft_model(
            four_bit(model_dir),
            LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa"),
        )


def test_prepare_freezes_and_keeps_small_weights_in_fp32(model_dir: Path) -> None:
    model = load_model(model_dir, quantization="nf4", dtype=torch.bfloat16)
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert norms and all(p.dtype == torch.bfloat16 for p in norms)
    prepare_model_for_kbit_training(model)
    assert all(p.dtype == torch.float32 for p in norms)
    assert not any(p.requires_grad for p in model.parameters())
    assert model.is_gradient_checkpointing


def test_qlora_training_job_learns_and_saves(model_dir: Path, tmp_path: Path, chars) -> None:  # type: ignore[no-untyped-def]
    from peftkit import JobConfig, train
    from tests.train.test_loop import sentiment_csv

    job = JobConfig(
        model=str(model_dir),
        quantization="nf4",
        output_dir=str(tmp_path / "q"),
        adapter={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        data={
            "path": str(sentiment_csv(tmp_path / "d.csv")),
            "mode": "classification",
            "template": "Review: {text} Label: {label}",
            "label_words": {"pos": "yes", "neg": "no"},
            "val_size": 16,
        },
        train={
            "max_steps": 24,
            "batch_size": 8,
            "lr": 3e-2,
            "progress": False,
            "plot": False,
            "gradient_checkpointing": True,
            "log_every": 1,
        },
    )
    result = train(job, tokenizer=chars, log=lambda _: None)
    # (bitsandbytes' CPU inference kernels compute in bf16, which hides a short run's update in the
    # eval loss; the training loss, computed on the training path, shows it.)
    losses = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "q" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert sum(losses[-4:]) < sum(losses[:4]) - 0.4, losses
    trained = (
        result.model.get_base_model().model.layers[0].self_attn.q_proj.lora_B["default"].weight
    )
    assert trained.abs().sum() > 0
    reloaded = PeftModel.from_pretrained(four_bit(model_dir), tmp_path / "q").eval()
    result.model.eval()
    torch.testing.assert_close(logits(reloaded), logits(result.model), atol=1e-5, rtol=0)


def test_without_bitsandbytes_the_error_says_how_to_fix_it(model_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ModelLoadError, match="pip install bitsandbytes"):
        load_model(model_dir, quantization="nf4")


def test_full_fine_tuning_of_a_4bit_base_is_refused() -> None:
    from peftkit import JobConfig

    with pytest.raises(ConfigError, match="a 4-bit base cannot be fully fine-tuned"):
        JobConfig(method="full", quantization="nf4", data={"path": "x.csv"})


@pytest.mark.parametrize("clear", [True, False])
def test_prepare_gives_back_the_accelerator_cache_unless_asked_not_to(clear: bool) -> None:
    from unittest import mock

    model = torch.nn.Linear(4, 4).half()
    with (
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch("torch.cuda.empty_cache") as empty,
    ):
        prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=False, auto_clear_cache=clear
        )
    assert empty.call_count == int(clear) and model.weight.dtype == torch.float32
