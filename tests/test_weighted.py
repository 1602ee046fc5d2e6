"""The config of a weighted combination of adapters, worked out before any layer changes (no PEFT
needed)."""

from __future__ import annotations

import pytest

from peftkit import ConfigError, IA3Config, LoraConfig
from peftkit.peft_model.weighted import plan


def _lora(r: int, targets: list[str] | str) -> LoraConfig:
    return LoraConfig(r=r, target_modules=targets)


def test_cat_adds_the_ranks_and_svd_keeps_the_largest_unless_told() -> None:
    configs = [_lora(2, ["q"]), _lora(4, ["v"])]
    cat = plan(configs, [1.0, 1.0], "cat", None, None, "total")
    # alpha = r: the scaling is 1
    assert (cat.rank, cat.config.r, cat.config.lora_alpha) == (6, 6, 6)
    assert cat.config.target_modules == {"q", "v"}  # the union of the targets
    assert plan(configs, [1.0, 1.0], "svd", None, None, "total").rank == 4
    assert plan(configs, [1.0, 1.0], "svd", 3, None, "total").rank == 3


def test_one_adapter_is_a_linear_scaling_and_regex_targets_are_joined() -> None:
    single = plan([_lora(4, ["q"])], [0.5], "svd", None, None, "total")
    assert (single.combination, single.rank) == ("linear", 4)
    joined = plan([_lora(2, r".*q"), _lora(2, r".*v")], [1.0, 1.0], "linear", None, None, "total")
    assert joined.config.target_modules == r"(.*q)|(.*v)"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        plan([_lora(2, ["q"]), IA3Config(target_modules=["q"])], [1.0], "ties", None, None, "most")
    assert len(err.value.problems) == 4  # weights, density, sign method, a non-LoRA adapter
    with pytest.raises(ConfigError, match="needs equal ranks"):
        plan([_lora(2, ["q"]), _lora(4, ["q"])], [1.0, 1.0], "linear", None, None, "total")
    with pytest.raises(ConfigError, match="mix list and regex"):
        plan([_lora(2, ["q"]), _lora(2, ".*q")], [1.0, 1.0], "cat", None, None, "total")
