"""OFT against PEFT: the same draws give the same outputs (0.0 in fp32) on Llama for each way of
sizing and building the rotation (blocks by count or size, shared blocks, COFT, the exact Cayley
transform or its Neumann series); files load both ways; merged equals unmerged and unmerges back;
a fresh adapter and a disabled one equal the base model; several adapters; training."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from torch import nn

import peftkit
from peftkit.tuners.oft import OFTLayer, cayley, fit_to
from tests.conftest import model_inputs, outputs, tiny_model

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _llama(lib: Any, init_weights: bool = False, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    base = tiny_model("llama")
    torch.manual_seed(1)
    config = lib.OFTConfig(target_modules=TARGETS, init_weights=init_weights, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Adjusted `oft_block_size`": the tiny layers are narrow
        return lib.get_peft_model(base, config)


SETTINGS = [
    {},  # PEFT's default block size (32), fitted to each layer's input size
    {"oft_block_size": 4},
    {"r": 4, "oft_block_size": 0},
    {"oft_block_size": 4, "block_share": True},
    {"oft_block_size": 8, "coft": True, "eps": 1e-3},
    {"oft_block_size": 4, "use_cayley_neumann": False},
    {"oft_block_size": 4, "num_cayley_neumann_terms": 3},
]


@pytest.mark.parametrize(
    "settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()) or "default"
)
def test_oft_equals_peft_for_the_same_draws(settings: dict[str, Any]) -> None:
    inputs = model_inputs("llama")
    ours, theirs = _llama(peftkit, **settings), _llama(peft, **settings)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    result = outputs(ours, inputs)
    assert not torch.allclose(result, outputs(tiny_model("llama"), inputs))
    torch.testing.assert_close(result, outputs(theirs, inputs), rtol=0, atol=0)
    # coft projects the stored Q in place on each forward, as PEFT does
    torch.testing.assert_close(ours.state_dict(), theirs.state_dict(), rtol=0, atol=0)


def test_the_rotations_are_orthogonal_and_the_series_approaches_its_transform() -> None:
    """Independent checks of the formulas: the exact transform is (I - Q)(I + Q)^-1 and
    orthogonal; the Neumann series approaches (I - Q)^-1 (I + Q) as terms are added."""
    g = torch.Generator().manual_seed(0)
    upper = torch.triu(torch.randn(3, 6, 6, generator=g) * 0.05, 1)
    q = upper - upper.transpose(-2, -1)
    eye = torch.eye(6).expand(3, 6, 6)
    exact = cayley(q, neumann=False, terms=0)
    torch.testing.assert_close(exact, (eye - q) @ torch.linalg.inv(eye + q), rtol=0, atol=1e-6)
    torch.testing.assert_close(exact @ exact.transpose(-2, -1), eye, rtol=0, atol=1e-5)
    target = torch.linalg.inv(eye - q) @ (eye + q)
    errors = [(cayley(q, neumann=True, terms=k) - target).abs().max().item() for k in (3, 5, 8)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


def test_fit_to_is_peft_rule() -> None:
    layer = peft.tuners.oft.layer.OFTLayer.adjust_oft_parameters
    for in_features in (16, 24, 30, 64, 100):
        for value in (1, 3, 5, 7, 12, 32, 200):
            assert fit_to(in_features, value) == layer(None, in_features, value), (
                in_features,
                value,
            )


def test_a_fresh_oft_adapter_is_the_base_model_and_disabled_is_too() -> None:
    inputs = model_inputs("llama")
    base = outputs(tiny_model("llama"), inputs)
    torch.testing.assert_close(
        outputs(_llama(peftkit, init_weights=True), inputs), base, rtol=0, atol=0
    )
    model = _llama(peftkit, oft_block_size=4)
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, inputs), base, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("writer", "reader"), [(peftkit, peft), (peft, peftkit)], ids=["to-peft", "from-peft"]
)
def test_oft_files_load_both_ways(writer: Any, reader: Any, tmp_path: Path) -> None:
    inputs = model_inputs("llama")
    model = _llama(writer, oft_block_size=4, block_share=True)
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = reader.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    torch.testing.assert_close(outputs(loaded, inputs), expected, rtol=0, atol=0)
    assert '"peft_type": "OFT"' in (tmp_path / "adapter_config.json").read_text()


def test_oft_merged_equals_unmerged_and_unmerges_back_with_one_and_two_adapters() -> None:
    inputs = model_inputs("llama")
    model = _llama(peftkit, oft_block_size=4)
    model.add_adapter(
        "other", peftkit.OFTConfig(target_modules=["q_proj"], oft_block_size=8, init_weights=False)
    )
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    weight = q_proj.weight.detach().clone()
    for name in ("default", "other"):
        model.set_adapter(name)
        expected = outputs(model, inputs)
        model.merge_adapter()
        torch.testing.assert_close(outputs(model, inputs), expected, rtol=1e-5, atol=1e-5)
        model.unmerge_adapter()
        torch.testing.assert_close(q_proj.weight, weight, atol=1e-5, rtol=0)
    # two active rotations on one layer: the forward applies R1 then R2, and so does the merged
    # weight (folded as W (R1 R2)^T; PEFT folds W R1^T R2^T, the other order, which near-identity
    # rotations hide): merged equals unmerged, and unmerging restores the weight
    model.base_model.set_adapter(["default", "other"])
    expected = outputs(model, inputs)
    model.merge_adapter()
    torch.testing.assert_close(outputs(model, inputs), expected, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(q_proj.weight, weight, atol=1e-5, rtol=0)
    model.set_adapter("other")
    expected = outputs(model, inputs)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, OFTLayer) for m in merged.modules())
    torch.testing.assert_close(outputs(merged, inputs), expected, rtol=1e-5, atol=1e-5)


def test_oft_refuses_what_it_cannot_do_by_name() -> None:
    with pytest.raises(peftkit.ConfigError) as err:
        peftkit.OFTConfig(r=4, oft_block_size=4, bias="all", num_cayley_neumann_terms=0)
    text = str(err.value)
    assert "but not both" in text and "bias='all'" in text and "num_cayley_neumann_terms=0" in text

    class WithConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3)

    with pytest.raises(
        peftkit.TargetNotFoundError, match=r"OFT cannot adapt; narrow target_modules to nn\.Linear"
    ):
        peftkit.get_peft_model(
            WithConv(), peftkit.OFTConfig(target_modules=["conv"], oft_block_size=2)
        )


def test_oft_trains_in_the_loop_from_a_job(tmp_path: Path, chars: Any) -> None:
    from tests.train.test_loop import sentiment_csv

    config = peftkit.JobConfig(
        model="tiny-llama",
        method="oft",
        seed=3,
        output_dir=str(tmp_path / "out"),
        adapter={"target_modules": ["q_proj", "v_proj"], "oft_block_size": 4},
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
    assert result.before is not None and result.after is not None
    assert result.after.loss < result.before.loss
    reloaded = peft.PeftModel.from_pretrained(tiny_model("llama"), result.output_dir)
    assert isinstance(reloaded.peft_config["default"], peft.OFTConfig)
    inputs = {"input_ids": torch.tensor([chars("Review: good film Label:")["input_ids"]])}
    torch.testing.assert_close(
        outputs(reloaded, inputs), outputs(result.model.eval(), inputs), rtol=0, atol=1e-5
    )
