"""The method registry: a method defined and registered here, in the test file alone, runs through
the whole package (get_peft_model, save and load, merge, the training loop, ``peftkit inspect``)
with no change to it.

The toy method ("shift") adds a learned vector to each targeted linear layer's output: ``y = W x + b
+ s``; merged, ``s`` goes into the layer's bias. Expected values come from the base layer itself
plus ``s``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import peftkit
from peftkit.cli import main
from peftkit.config import PeftConfig
from peftkit.errors import ConfigError
from peftkit.methods import Method, method_named, register_method, unregister_method
from peftkit.tuners.base import AdapterLayer, base_output
from tests.conftest import model_inputs, outputs, tiny_model


@dataclasses.dataclass
class ShiftConfig(PeftConfig):
    """A learned vector added to each targeted linear layer's output."""

    target_modules: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj"])
    """Leaf names of the linear layers to shift."""

    peft_type: ClassVar[str] = "SHIFT"

    def _validate(self, problems: list[str]) -> None:
        if not self.target_modules:
            problems.append("target_modules is empty; name the linear layers to shift")


class ShiftLayer(AdapterLayer):
    """``base(x) + shift[name]`` for each active adapter; merged, the shift is in the bias."""

    adapter_param_names = ("shift",)

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__(base_layer)
        self.shift = nn.ParameterDict()

    @property
    def adapter_names(self) -> list[str]:
        return list(self.shift)

    def add_adapter(self, name: str) -> None:
        # (out,): starts as the base layer
        self.shift[name] = nn.Parameter(torch.zeros(self.weight.shape[0]))

    def _merge_one(self, name: str) -> None:
        if self.bias is None:  # a layer without a bias gets one to hold the shift
            self.base_layer.bias = nn.Parameter(
                torch.zeros_like(self.shift[name]), requires_grad=False
            )
        assert self.bias is not None
        self.bias.data += self.shift[name].to(self.bias.dtype)

    def _unmerge_one(self, name: str) -> None:
        assert self.bias is not None
        self.bias.data -= self.shift[name].to(self.bias.dtype)
        self.merged_adapters.remove(name)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        pending = self._pending()
        result = base_output(self.base_layer, x, *args, **kwargs)  # (..., out)
        for name in pending:
            result = result + self.shift[name].to(result.dtype)
        return result


def inject_shift(model: nn.Module, config: ShiftConfig, adapter_name: str) -> ShiftConfig:
    found = [
        (key, m)
        for key, m in model.named_modules()
        if key.rsplit(".", 1)[-1] in config.target_modules
        and isinstance(m, (nn.Linear, ShiftLayer))
        and ".base_layer" not in key
    ]
    if not found:
        raise ConfigError(f"target_modules {config.target_modules} match no linear layer")
    for key, module in found:
        layer = module if isinstance(module, ShiftLayer) else ShiftLayer(module)  # type: ignore[arg-type]
        layer.add_adapter(adapter_name)
        parent, _, child = key.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    return config


SHIFT = Method(
    "shift",
    "SHIFT",
    ShiftConfig,
    "ShiftModel",
    inject=inject_shift,
    layer_classes=(ShiftLayer,),
    prefix="shift",
)


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    register_method(SHIFT)
    yield
    unregister_method("shift")  # other tests see the built-in methods only


def _shifted(value: float) -> peftkit.PeftModel:
    model = peftkit.get_peft_model(
        tiny_model("llama"), ShiftConfig(target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".shift." in name:
                param.fill_(value)
    return model


def test_the_registered_method_adapts_the_model_as_its_layer_says() -> None:
    inputs = model_inputs("llama")
    base = tiny_model("llama")
    model = peftkit.get_peft_model(
        tiny_model("llama"), ShiftConfig(target_modules=["q_proj", "v_proj"])
    )
    # starts as the base
    torch.testing.assert_close(outputs(model, inputs), outputs(base, inputs), rtol=0, atol=0)
    trainable, _ = model.get_nb_trainable_parameters()
    attention = [layer.self_attn for layer in base.model.layers]
    # one per output
    assert trainable == sum(a.q_proj.out_features + a.v_proj.out_features for a in attention)
    shifted = _shifted(0.5)
    hooked = tiny_model("llama")  # the expected model: the base layers' outputs plus 0.5, by hooks
    for layer in hooked.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.v_proj):
            proj.register_forward_hook(lambda _m, _i, out: out + 0.5)
    torch.testing.assert_close(outputs(shifted, inputs), outputs(hooked, inputs), rtol=0, atol=1e-5)
    assert model.get_model_status().adapter_model_type == "ShiftModel"


def test_the_registered_method_saves_loads_and_merges(tmp_path: Path) -> None:
    inputs = model_inputs("llama")
    model = _shifted(0.25)
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "SHIFT"
    assert all(".shift" in key for key in load_file(str(tmp_path / "adapter_model.safetensors")))
    assert isinstance(peftkit.PeftConfig.from_pretrained(tmp_path), ShiftConfig)
    loaded = peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    torch.testing.assert_close(outputs(loaded, inputs), expected, rtol=0, atol=1e-6)
    merged = loaded.merge_and_unload()
    assert not any(isinstance(m, ShiftLayer) for m in merged.modules())
    torch.testing.assert_close(outputs(merged, inputs), expected, rtol=0, atol=1e-5)


def test_the_registered_method_trains_in_the_training_loop(tmp_path: Path, chars: Any) -> None:
    from tests.train.test_loop import sentiment_csv

    config = peftkit.JobConfig(
        model="tiny-llama",
        method="shift",
        adapter={"target_modules": ["q_proj", "v_proj", "o_proj"]},
        seed=3,
        output_dir=str(tmp_path / "out"),
        data={
            "path": str(sentiment_csv(tmp_path / "data.csv")),
            "mode": "classification",
            "template": "Review: {text} Label: {label}",
            "label_words": {"pos": "yes", "neg": "no"},
            "val_size": 16,
        },
        train={"epochs": 2, "batch_size": 8, "lr": 3e-2, "progress": False, "plot": False},
    )
    result = peftkit.train(config, model=tiny_model("llama"), tokenizer=chars, log=lambda _: None)
    assert (
        result.before is not None
        and result.after is not None
        and result.after.loss < result.before.loss
    )
    reloaded = peftkit.PeftModel.from_pretrained(tiny_model("llama"), result.output_dir)
    inputs = {"input_ids": torch.tensor([chars("Review: good film Label:")["input_ids"]])}
    torch.testing.assert_close(
        outputs(reloaded, inputs), outputs(result.model.eval(), inputs), rtol=0, atol=1e-5
    )


def test_peftkit_inspect_counts_the_registered_method(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(model_dir)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("shift "))
    layers = tiny_model("llama").model.layers
    expected = sum(
        layer.self_attn.q_proj.out_features + layer.self_attn.v_proj.out_features
        for layer in layers
    )
    assert f"{expected:,d}" in line


def test_a_method_is_refused_when_it_would_clash_with_a_registered_one() -> None:
    other = dataclasses.replace(SHIFT, name="shift2")  # the same peft_type under another name
    with pytest.raises(ConfigError, match="peft_type 'SHIFT' already belongs to method 'shift'"):
        register_method(other)
    with pytest.raises(ConfigError, match="give exactly one of inject"):
        register_method(dataclasses.replace(SHIFT, inject=None))
    register_method(SHIFT)  # the same method again is no clash
    assert method_named("SHIFT") is SHIFT and method_named("lora").tuner_name == "LoraModel"
