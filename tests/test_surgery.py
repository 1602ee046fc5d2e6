"""Which layers a config adapts: PEFT's matching rules, checked on names alone (no model, no PEFT)."""

from __future__ import annotations

import pytest

from peftkit import IA3Config, LoraConfig
from peftkit.surgery import is_target, matches_target

NAMES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
    "model.layers.11.mlp.down_proj",
    "lm_head",
    "xq_proj",
]


def _targets(config: LoraConfig | IA3Config) -> list[str]:
    return [n for n in NAMES if is_target(config, n)]


def test_a_list_matches_whole_names_or_dotted_suffixes() -> None:
    assert matches_target(["q_proj"], "model.layers.0.self_attn.q_proj")
    assert not matches_target(["q_proj"], "xq_proj")  # a suffix only after a dot
    assert matches_target(["self_attn.q_proj"], "model.layers.0.self_attn.q_proj")
    assert matches_target(["lm_head"], "lm_head")


def test_a_string_is_a_regex_over_the_whole_name() -> None:
    assert matches_target(r".*\.q_proj", "model.layers.0.self_attn.q_proj")
    # full match, not search
    assert not matches_target(r"q_proj", "model.layers.0.self_attn.q_proj")
    assert _targets(LoraConfig(target_modules=r".*layers\.1\..*")) == NAMES[1:3]


def test_exclusions_and_modules_to_save_win_over_targets() -> None:
    config = LoraConfig(
        target_modules=["q_proj", "v_proj"], exclude_modules=["model.layers.0.self_attn.q_proj"]
    )
    assert _targets(config) == NAMES[1:3]
    assert (
        _targets(LoraConfig(target_modules=["q_proj", "lm_head"], modules_to_save=["lm_head"]))
        == NAMES[:2]
    )


@pytest.mark.parametrize(
    ("layers", "pattern", "expected"),
    [
        (1, None, NAMES[1:3]),
        ([0, 11], None, [NAMES[0], NAMES[3]]),
        ([11], "layers", [NAMES[3]]),
        ([1], "blocks", []),  # no layer list of that name: nothing is indexed
    ],
)
def test_layers_to_transform_picks_layers_by_index(
    layers: object, pattern: str | None, expected: list[str]
) -> None:
    config = LoraConfig(
        target_modules=["q_proj", "v_proj", "down_proj"],
        layers_to_transform=layers,
        layers_pattern=pattern,
    )
    assert _targets(config) == expected


def test_ia3_uses_the_same_rules() -> None:
    assert _targets(
        IA3Config(target_modules=["down_proj", "v_proj"], feedforward_modules=["down_proj"])
    ) == [NAMES[2], NAMES[3]]
