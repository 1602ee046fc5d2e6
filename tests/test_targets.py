"""The default target tables against the installed PEFT's: a config without target_modules adapts
the same layers in both libraries."""

from __future__ import annotations

from peft.utils import constants

from peftkit import target_tables


def test_lora_defaults_are_pefts() -> None:
    theirs = constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    for model_type, modules in theirs.items():
        ours = target_tables.LORA_TARGET_MODULES[model_type]
        assert ours == modules if isinstance(modules, str) else set(ours) == set(modules), (
            model_type
        )


def test_ia3_defaults_are_pefts() -> None:
    assert {k: set(v) for k, v in target_tables.IA3_TARGET_MODULES.items()} == {
        k: set(v) for k, v in constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.items()
    }
    assert {k: set(v) for k, v in target_tables.IA3_FEEDFORWARD_MODULES.items()} == {
        k: set(v)
        for k, v in constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.items()
    }
