"""LoRA and DoRA on nn.Conv1d/2d/3d against PEFT: the same draws give the same outputs, files load
both ways, merged equals unmerged, a fresh adapter is the base model, grouped convolutions as PEFT
handles them."""

from __future__ import annotations

from typing import Any

import peft
import pytest
import torch
from torch import nn

import peftkit
from peftkit.errors import ConfigError


class ConvModel(nn.Module):
    """One convolution of each kind, then a linear head: (B, 3, 6, 6, 6) -> (B, 4)."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.c3 = nn.Conv3d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 8, (3, 2), stride=(1, 2), groups=groups)
        self.c1 = nn.Conv1d(8, 8, 1, bias=False)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c3(x).mean(-1)  # (B, 4, D, H)
        h = self.c2(h).mean(-1)  # (B, 8, D')
        return self.head(self.c1(h).mean(-1))  # (B, 4)


X = torch.randn(2, 3, 6, 6, 6, generator=torch.Generator().manual_seed(3))
TARGETS = ["c3", "c2", "c1"]


def _model(lib: Any, use_dora: bool = False, groups: int = 1, seed: int = 1, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    base = ConvModel(groups)
    torch.manual_seed(seed)
    config = lib.LoraConfig(
        target_modules=TARGETS, r=4, use_dora=use_dora, init_lora_weights=False, **kwargs
    )
    return lib.get_peft_model(base, config).eval()


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_conv_adapters_equal_peft_for_the_same_draws(use_dora: bool) -> None:
    with torch.no_grad():
        ours, theirs = _model(peftkit, use_dora)(X), _model(peft, use_dora)(X)
    assert not torch.allclose(ours, ConvModel()(X))  # the adapters change the output
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_a_fresh_conv_adapter_is_the_base_model(use_dora: bool) -> None:
    torch.manual_seed(0)
    base = ConvModel()
    expected = base(X).detach()
    model = peftkit.get_peft_model(
        base, peftkit.LoraConfig(target_modules=TARGETS, use_dora=use_dora)
    )
    torch.testing.assert_close(model(X), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_conv_merged_equals_unmerged_and_unmerges_back(use_dora: bool) -> None:
    model = _model(peftkit, use_dora)
    second = peftkit.LoraConfig(
        target_modules=TARGETS, r=2, use_dora=use_dora, init_lora_weights=False
    )
    model.add_adapter("other", second)
    model.base_model.set_adapter(["default", "other"])
    kernel = model.get_base_model().c2.weight.detach().clone()
    with torch.no_grad():
        unmerged = model(X)
        model.merge_adapter()
        torch.testing.assert_close(model(X), unmerged, rtol=0, atol=1e-5)
        model.unmerge_adapter()
    torch.testing.assert_close(model.get_base_model().c2.weight, kernel, rtol=0, atol=1e-6)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize(
    ("writer", "reader"), [(peftkit, peft), (peft, peftkit)], ids=["to-peft", "from-peft"]
)
def test_conv_files_load_both_ways(writer: Any, reader: Any, use_dora: bool, tmp_path: Any) -> None:
    model = _model(writer, use_dora)
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = reader.PeftModel.from_pretrained(ConvModel(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, rtol=0, atol=1e-5)


def test_grouped_conv_dora_equals_peft() -> None:
    """DoRA on a grouped kernel divides by the norm PEFT computes, so PEFT's adapters give the same
    outputs."""
    with pytest.warns(UserWarning, match="groups > 1"):
        ours = _model(peftkit, use_dora=True, groups=2)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(X), _model(peft, use_dora=True, groups=2)(X), rtol=0, atol=1e-5
        )


def _ia3(lib: Any, feedforward: list[str], groups: int = 1) -> Any:
    torch.manual_seed(0)
    base = ConvModel(groups)
    torch.manual_seed(1)
    config = lib.IA3Config(
        target_modules=["c3", "c2"], feedforward_modules=feedforward, init_ia3_weights=False
    )
    return lib.get_peft_model(base, config).eval()


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("feedforward", [[], ["c2"]], ids=["attention", "feedforward"])
def test_ia3_on_convolutions_equals_peft_and_merges(
    feedforward: list[str], groups: int, tmp_path: Any
) -> None:
    ours = _ia3(peftkit, feedforward, groups)
    with torch.no_grad():
        expected = _ia3(peft, feedforward, groups)(X)
        assert not torch.allclose(expected, ConvModel(groups)(X))
        torch.testing.assert_close(ours(X), expected, rtol=0, atol=1e-5)
        ours.save_pretrained(tmp_path)
        torch.manual_seed(0)
        loaded = peft.PeftModel.from_pretrained(ConvModel(groups), tmp_path).eval()
        torch.testing.assert_close(loaded(X), expected, rtol=0, atol=1e-5)
        ours.merge_adapter()
        torch.testing.assert_close(ours(X), expected, rtol=0, atol=1e-5)


def test_grouped_conv_runs_as_peft_and_refuses_to_merge() -> None:
    """A grouped kernel cannot hold the update (a full convolution): the adapter runs, merging says
    why not."""
    with pytest.warns(UserWarning, match="groups > 1"):
        model = _model(peftkit, groups=2)
    with torch.no_grad():
        torch.testing.assert_close(model(X), _model(peft, groups=2)(X), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="groups > 1"):
        model.merge_adapter()


def test_a_rank_the_groups_do_not_divide_is_refused_before_any_change() -> None:
    with pytest.raises(ConfigError, match="rank is divisible by groups"):
        peftkit.get_peft_model(ConvModel(groups=2), peftkit.LoraConfig(target_modules=["c2"], r=3))


def test_conv_mixed_batch_gives_each_row_its_adapter() -> None:
    model = _model(peftkit)
    model.add_adapter(
        "other", peftkit.LoraConfig(target_modules=TARGETS, r=2, init_lora_weights=False)
    )
    with torch.no_grad():
        mixed = model(X, adapter_names=["other", "__base__"])
        model.set_adapter("other")
        first = model(X[:1])
        with model.disable_adapter():
            second = model(X[1:])
    torch.testing.assert_close(mixed, torch.cat([first, second]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("targets", [["head"], ["c2"]], ids=["linear", "conv"])
def test_lora_bias_equals_peft_merges_and_loads_both_ways(
    targets: list[str], tmp_path: Any
) -> None:
    """lora_bias gives B a bias: the same draws give PEFT's outputs, merged equals unmerged (the
    bias goes into the base layer's), and the file loads in PEFT to the same outputs."""

    def build(lib: Any) -> Any:
        torch.manual_seed(0)
        base = ConvModel()
        torch.manual_seed(1)
        config = lib.LoraConfig(target_modules=targets, lora_bias=True, init_lora_weights=False)
        return lib.get_peft_model(base, config).eval()

    ours, theirs = build(peftkit), build(peft)
    with torch.no_grad():
        for module in (ours, theirs):  # a non-zero bias, the same in both
            layer = module.get_base_model().get_submodule(targets[0])
            layer.lora_B["default"].bias.copy_(
                torch.linspace(-1, 1, layer.lora_B["default"].bias.numel())
            )
        expected = theirs(X)
        torch.testing.assert_close(ours(X), expected, rtol=0, atol=1e-5)
        ours.save_pretrained(tmp_path)
        torch.manual_seed(0)
        loaded = peft.PeftModel.from_pretrained(ConvModel(), tmp_path).eval()
        torch.testing.assert_close(loaded(X), expected, rtol=0, atol=1e-5)
        ours.merge_adapter()
        torch.testing.assert_close(ours(X), expected, rtol=0, atol=1e-5)
        ours.unmerge_adapter()
        torch.testing.assert_close(ours(X), expected, rtol=0, atol=1e-5)


def test_lora_bias_on_a_layer_without_bias_warns_and_refuses_to_merge_before_any_change() -> None:
    from peftkit.errors import MergeError, PeftWarning

    with pytest.warns(PeftWarning, match="has no bias"):
        model = peftkit.get_peft_model(
            ConvModel(), peftkit.LoraConfig(target_modules=["c1"], lora_bias=True)
        )
    kernel = model.get_base_model().c1.weight.detach().clone()
    with pytest.raises(MergeError, match="Impossible to merge LoRA with `lora_bias=True`"):
        model.merge_adapter()
    assert torch.equal(model.get_base_model().c1.weight, kernel)
    assert model.get_base_model().c1.merged_adapters == []
