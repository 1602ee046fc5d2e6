"""When no layer gets the adapter, the error says why: PEFT's words for its three cases, then the
field to fix."""

from __future__ import annotations

import pytest
from torch import nn

from peftkit import LoraConfig, TargetNotFoundError, get_peft_model

from .conftest import tiny_model


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0, self.lin1 = nn.Linear(4, 4), nn.Linear(4, 2)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (
            LoraConfig(target_modules=["nothing"]),
            [
                "Target modules ['nothing'] not found in the base model",
                "Layer names this model has: lin0, lin1",
            ],
        ),
        (
            LoraConfig(target_modules=["lin0"], exclude_modules=["lin0"]),
            ["All modules were excluded", "exclude_modules=['lin0']"],
        ),
        (
            LoraConfig(target_modules=["lin0"], modules_to_save=["lin0"]),
            ["No modules were targeted for adaptation", "modules_to_save=['lin0']"],
        ),
    ],
    ids=["no-match", "all-excluded", "all-saved"],
)
def test_the_error_names_the_case(config: LoraConfig, words: list[str]) -> None:
    with pytest.raises(TargetNotFoundError) as err:
        get_peft_model(MLP(), config)
    for w in words:
        assert w in str(err.value)


def test_layers_out_of_range_name_layers_to_transform_and_the_layer_count() -> None:
    """q_proj exists; layer 7 does not (tiny Llama has 2): the message sends the user to
    layers_to_transform."""
    config = LoraConfig(target_modules=["q_proj"], layers_to_transform=[7])
    with pytest.raises(TargetNotFoundError) as err:
        get_peft_model(tiny_model("llama"), config)
    message = str(err.value)
    assert "'layers_to_transform': [7]" in message
    assert "the model has 2 layers (0 to 1)" in message
    assert "Fix layers_to_transform" in message
