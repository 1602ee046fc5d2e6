"""LoHa against PEFT: the same draws give the same outputs (0.0 in fp32) on Llama and on a
convolutional model, files load both ways, merged equals unmerged, disabled equals the base model,
several adapters, training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch

import peftkit
from tests.conftest import model_inputs, outputs, tiny_model
from tests.interop.test_peft_conv import ConvModel, X


def _llama(lib: Any, init_weights: bool = False, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    base = tiny_model("llama")
    torch.manual_seed(1)
    config = lib.LoHaConfig(
        target_modules=["q_proj", "v_proj", "down_proj"], init_weights=init_weights, **kwargs
    )
    return lib.get_peft_model(base, config)


def _conv(lib: Any, cp: bool = False) -> Any:
    torch.manual_seed(0)
    base = ConvModel()
    torch.manual_seed(1)
    config = lib.LoHaConfig(
        target_modules=["c2", "c1", "head"], init_weights=False, use_effective_conv2d=cp
    )
    return lib.get_peft_model(base, config).eval()


def test_loha_equals_peft_for_the_same_draws() -> None:
    inputs = model_inputs("llama")
    ours = outputs(_llama(peftkit), inputs)
    assert not torch.allclose(ours, outputs(tiny_model("llama"), inputs))
    torch.testing.assert_close(ours, outputs(_llama(peft), inputs), rtol=0, atol=0)
    with torch.no_grad():
        # use_effective_conv2d: the (3, 2) kernel gets CP cores, the 1-wide one not
        for cp in (False, True):
            ours_conv = _conv(peftkit, cp)
            torch.testing.assert_close(ours_conv(X), _conv(peft, cp)(X), rtol=0, atol=0)
            expected = ours_conv(X)
            ours_conv.merge_adapter()
            torch.testing.assert_close(ours_conv(X), expected, rtol=0, atol=1e-5)


def test_a_fresh_loha_adapter_is_the_base_model_and_disabled_is_too() -> None:
    inputs = model_inputs("llama")
    base = outputs(tiny_model("llama"), inputs)
    torch.testing.assert_close(
        outputs(_llama(peftkit, init_weights=True), inputs), base, rtol=0, atol=0
    )
    model = _llama(peftkit)
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, inputs), base, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("writer", "reader"), [(peftkit, peft), (peft, peftkit)], ids=["to-peft", "from-peft"]
)
def test_loha_files_load_both_ways(writer: Any, reader: Any, tmp_path: Path) -> None:
    inputs = model_inputs("llama")
    model = _llama(writer, rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 4})
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = reader.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    torch.testing.assert_close(outputs(loaded, inputs), expected, rtol=0, atol=0)


def test_loha_merged_equals_unmerged_with_two_adapters_and_unmerges_back() -> None:
    inputs = model_inputs("llama")
    model = _llama(peftkit)
    model.add_adapter(
        "other", peftkit.LoHaConfig(target_modules=["q_proj"], r=4, init_weights=False)
    )
    model.base_model.set_adapter(["default", "other"])
    weight = model.get_base_model().model.layers[0].self_attn.q_proj.weight.detach().clone()
    expected = outputs(model, inputs)
    model.merge_adapter()
    torch.testing.assert_close(outputs(model, inputs), expected, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(
        model.get_base_model().model.layers[0].self_attn.q_proj.weight, weight, atol=1e-6, rtol=0
    )
    model.set_adapter("other")
    merged = model.merge_and_unload()
    assert not any(isinstance(m, peftkit.tuners.loha.LoHaLayer) for m in merged.modules())


def test_loha_trains_in_the_loop_with_its_dropouts(tmp_path: Path, chars: Any) -> None:
    from tests.train.test_loop import sentiment_csv

    config = peftkit.JobConfig(
        model="tiny-llama",
        method="loha",
        seed=3,
        output_dir=str(tmp_path / "out"),
        adapter={
            "target_modules": ["q_proj", "v_proj"],
            "rank_dropout": 0.1,
            "module_dropout": 0.1,
        },
        data={
            "path": str(sentiment_csv(tmp_path / "data.csv")),
            "mode": "classification",
            "template": "Review: {text} Label: {label}",
            "label_words": {"pos": "yes", "neg": "no"},
            "val_size": 16,
        },
        train={"epochs": 2, "batch_size": 8, "lr": 1e-2, "progress": False, "plot": False},
    )
    result = peftkit.train(config, model=tiny_model("llama"), tokenizer=chars, log=lambda _: None)
    assert (
        result.before is not None
        and result.after is not None
        and result.after.loss < result.before.loss
    )
    # PEFT reads the file
    reloaded = peft.PeftModel.from_pretrained(tiny_model("llama"), result.output_dir)
    inputs = {"input_ids": torch.tensor([chars("Review: good film Label:")["input_ids"]])}
    torch.testing.assert_close(
        outputs(reloaded, inputs), outputs(result.model.eval(), inputs), rtol=0, atol=1e-5
    )
