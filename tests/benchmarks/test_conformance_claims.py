"""The conformance run's selection rules (benchmarks/conformance/claims.py): what is in scope and
what is not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "conformance"))
import claims


@pytest.mark.parametrize(
    "test_id",
    [
        # a config class word
        "tests/test_config.py::TestPeftConfig::test_from_dict[OFTConfig-kw3]",
        # capitals split the method's name
        "tests/test_initialization.py::TestDeLoRAInitialization::test_x",
        "tests/test_initialization.py::TestTinyLoraInitialization::test_y",
        "tests/test_helpers.py::TestKappaTuneSelector::test_z",
        # a phrase of the test's name
        "tests/test_tuners_utils.py::TestModelAndLayerStatus::test_adaption_prompt",
        # an unclaimed name with an underscore, matched on the joined text
        "tests/test_custom_models.py::TestPeftCustomModel::test_x[trainable_token_indices-1]",
    ],
)
def test_tests_of_unclaimed_methods_are_out_of_scope(test_id: str) -> None:
    assert claims.unclaimed_reason(test_id) is not None


@pytest.mark.parametrize(
    "test_id",
    [
        "tests/test_custom_models.py::TestPeftCustomModel::test_soft_prompt[x]",  # soft is not OFT
        "tests/test_x.py::TestMissingKeys::test_a",  # Missing is not MiSS
        "tests/test_initialization.py::TestLoraInitialization::test_lora_pissa_conversion_same_output_after_loading",
        "tests/test_initialization.py::TestWeightTying::test_weight_tying_tied_model_lora[x]",
        "tests/test_custom_models.py::TestPeftCustomModel::"
        "test_forward_output_finite[Conv2d 1 LoRA-Conv2d-LoraConfig-kw]",
        # claimed this round
        "tests/test_custom_models.py::TestPeftCustomModel::test_x[target_parameters-1]",
        "tests/test_custom_models.py::TestPeftCustomModel::test_y[Vanilla MLP 1 AdaLoRA-MLP-AdaLoraConfig-kw]",
    ],
)
def test_tests_of_claimed_features_stay_in_scope(test_id: str) -> None:
    assert claims.unclaimed_reason(test_id) is None


def test_every_kept_difference_is_written_in_the_docs() -> None:
    import differences

    docs = (Path(__file__).resolve().parents[2] / "docs" / "conformance.md").read_text()
    missing = [
        why[:60] for why in differences.DIFFERENCES.values() if why not in " ".join(docs.split())
    ]
    assert not missing, missing
