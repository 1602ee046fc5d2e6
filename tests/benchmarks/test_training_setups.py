"""benchmarks/training.py's setup names stand for the jobs their rows claim to measure."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "training.py"


@pytest.fixture(scope="module")
def training() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_training", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_old_defaults_row_trains_fp32_unpacked_and_shuffled(training: ModuleType) -> None:
    # the row once ran packed: "unpacked" contains "packed"
    settings = training.peftkit_settings("peftkit-fp32-unpacked", 30, "lora")
    assert settings["dtype"] == "float32"
    assert settings["train"]["packing"] is False
    assert settings["train"]["group_by_length"] is False
    assert settings["train"]["split_by_length"] is False  # the old default ran each batch whole


@pytest.mark.parametrize(
    ("name", "dtype", "packing", "grouped", "precision", "compiled"),
    [
        ("peftkit-default", "auto", "auto", False, "auto", False),
        ("peftkit-default-compiled", "auto", "auto", False, "auto", True),
        ("peftkit-packed", "float32", True, False, "auto", False),
        ("peftkit-grouped", "float32", False, True, "auto", False),
        ("peftkit-grouped-bf16-autocast", "float32", False, True, "bf16", False),
        ("peftkit-grouped-bf16-base", "bfloat16", False, True, "auto", False),
        ("peftkit-packed-bf16-base", "bfloat16", True, False, "auto", False),
        ("peftkit-default-base-only", "auto", "auto", False, "auto", False),
        ("peftkit-default-split", "auto", False, False, "auto", False),
    ],
)
def test_every_setup_name_maps_to_its_job(
    training: ModuleType,
    name: str,
    dtype: str,
    packing: object,
    grouped: bool,
    precision: str,
    compiled: bool,
) -> None:
    settings = training.peftkit_settings(name, 30, "lora")
    train = settings["train"]
    assert (settings["dtype"], train["packing"], train["group_by_length"]) == (
        dtype,
        packing,
        grouped,
    )
    assert (train["precision"], train["torch_compile"]) == (precision, compiled)
    assert train["split_by_length"] == ("auto" if name.startswith("peftkit-default") else False)


def test_every_listed_setup_is_covered(training: ModuleType) -> None:
    peftkit = {
        name for name in training.CONFIGS + training.PROMPT_CONFIGS if name.startswith("peftkit")
    }
    assert peftkit == {
        "peftkit-default",
        "peftkit-default-compiled",
        "peftkit-fp32-unpacked",
        "peftkit-packed",
        "peftkit-grouped",
        "peftkit-grouped-bf16-autocast",
        "peftkit-grouped-bf16-base",
        "peftkit-packed-bf16-base",
        "peftkit-default-base-only",
        "peftkit-default-split",
    }


def test_the_base_only_row_computes_no_adapter_and_still_runs_backward(
    training: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import peftkit
    from peftkit.tuners.lora import LoraLinear
    from tests.conftest import sample_inputs, tiny_model

    base = tiny_model("llama")
    model = peftkit.get_peft_model(
        tiny_model("llama"), peftkit.LoraConfig(r=4, init_lora_weights=False)
    )
    inputs = sample_inputs()
    adapted = model(**inputs).logits
    monkeypatch.setattr(LoraLinear, "forward", LoraLinear.forward)  # restored after the test
    monkeypatch.setattr(torch.nn.Embedding, "forward", torch.nn.Embedding.forward)
    training.base_only()
    logits = model(**inputs).logits
    torch.testing.assert_close(logits, base(**inputs).logits)
    assert not torch.allclose(logits, adapted)  # the adapter did change the output before
    assert logits.requires_grad  # backward runs through every block to the inputs
