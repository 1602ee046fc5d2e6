"""add_weighted_adapter: the same combined adapter as PEFT's, and the exact sum where the method is
exact."""

from __future__ import annotations

import peft
import pytest
import torch

import peftkit
from peftkit.tuners.lora import LoraLinear

from ..conftest import model_inputs, outputs, tiny_model


def _two_adapters(tmp_path, arch: str):  # type: ignore[no-untyped-def]
    """Save two random rank-4 LoRA adapters with overlapping targets, made by peftkit."""
    folders = []
    for i, (r, targets) in enumerate([(4, ["q_proj", "v_proj"]), (4, ["q_proj", "o_proj"])]):
        torch.manual_seed(10 + i)
        model = peftkit.get_peft_model(
            tiny_model(arch),
            peftkit.LoraConfig(
                r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False
            ),
        )
        model.save_pretrained(tmp_path / f"a{i}")
        folders.append(tmp_path / f"a{i}")
    return folders


def _load(lib, folders):  # type: ignore[no-untyped-def]
    model = lib.PeftModel.from_pretrained(tiny_model("llama"), folders[0], adapter_name="first")
    model.load_adapter(folders[1], adapter_name="second")
    return model


COMBINATIONS = [
    "linear",
    "cat",
    "svd",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "ties_svd",
    "dare_linear_svd",
    "dare_ties_svd",
    "magnitude_prune_svd",
]


@pytest.mark.parametrize("combination", COMBINATIONS)
@pytest.mark.parametrize("sign", ["total", "frequency"])
def test_same_result_as_peft(combination: str, sign: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if sign == "frequency" and "ties" not in combination:
        pytest.skip("the sign method only matters for TIES")
    folders = _two_adapters(tmp_path, "llama")
    inputs = model_inputs("llama")
    results = []
    for lib in (peftkit, peft):
        model = _load(lib, folders)
        torch.manual_seed(123)  # DARE's random masks: the same draws in both libraries
        model.add_weighted_adapter(
            ["first", "second"],
            [0.7, -0.4],
            "mix",
            combination_type=combination,
            density=0.5,
            majority_sign_method=sign,
        )
        model.set_adapter("mix")
        results.append(outputs(model.eval(), inputs))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)


def test_cat_and_svd_equal_the_weighted_sum_of_updates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    folders = _two_adapters(tmp_path, "llama")
    model = _load(peftkit, folders)
    model.add_weighted_adapter(["first", "second"], [0.7, -0.4], "cat", combination_type="cat")
    model.add_weighted_adapter(
        ["first", "second"], [0.7, -0.4], "svd", combination_type="svd", svd_rank=8
    )
    q = model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(q, LoraLinear)
    expected = 0.7 * q.delta_weight("first") - 0.4 * q.delta_weight("second")
    torch.testing.assert_close(q.delta_weight("cat"), expected, atol=1e-5, rtol=1e-5)
    # rank 8 holds it all
    torch.testing.assert_close(q.delta_weight("svd"), expected, atol=1e-4, rtol=1e-4)


def test_bad_combinations_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _load(peftkit, _two_adapters(tmp_path, "llama"))
    with pytest.raises(peftkit.ConfigError, match="needs density in"):
        model.add_weighted_adapter(["first", "second"], [1, 1], "x", combination_type="ties")
    with pytest.raises(peftkit.ConfigError, match="not supported"):
        model.add_weighted_adapter(["first", "second"], [1, 1], "x", combination_type="average")
    with pytest.raises(peftkit.ConfigError, match="one weight per adapter"):
        model.add_weighted_adapter(["first", "second"], [1], "x", combination_type="cat")
    with pytest.raises(peftkit.AdapterNotFoundError):
        model.add_weighted_adapter(["first", "nope"], [1, 1], "x", combination_type="cat")
