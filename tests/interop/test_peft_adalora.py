"""AdaLoRA against PEFT: the same draws give the same outputs (0.0 in fp32) on Llama and GPT-2; a
training run with the orthogonality term and ``update_and_allocate`` after every step equals
PEFT's step for step (losses, the ranks kept, the saved tensors and config), under a plain loop and
under ``transformers.Trainer``; files load both ways; merged equals unmerged; disabled equals the
base model; one trainable adapter at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from safetensors.torch import load_file

import peftkit
from peftkit.errors import ConfigError
from tests.conftest import model_inputs, outputs, tiny_model

IDS = torch.randint(5, 999, (2, 7), generator=torch.Generator().manual_seed(0))
SCHEDULE = {"init_r": 4, "target_r": 2, "total_step": 6, "tinit": 1, "tfinal": 2, "deltaT": 1}


def _model(lib: Any, arch: str = "llama", init: bool = True, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    base = tiny_model(arch)
    torch.manual_seed(1)
    targets = ["c_attn"] if arch == "gpt2" else ["q_proj", "v_proj"]
    config = lib.AdaLoraConfig(
        task_type="CAUSAL_LM",
        target_modules=targets,
        init_lora_weights=init,
        **{**SCHEDULE, **kwargs},
    )
    return lib.get_peft_model(base, config)


def _train(lib: Any, folder: Path, steps: int = 6) -> tuple[Any, list[float]]:
    """PEFT's documented loop: backward, step, update_and_allocate, zero_grad."""
    model = _model(lib)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(steps):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
        losses.append(loss.item())
    model.save_pretrained(folder)
    return model, losses


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_adalora_equals_peft_for_the_same_draws(arch: str) -> None:
    inputs = model_inputs(arch)
    ours = outputs(_model(peftkit, arch, init=False), inputs)
    assert not torch.allclose(ours, outputs(tiny_model(arch), inputs))
    torch.testing.assert_close(
        ours, outputs(_model(peft, arch, init=False), inputs), rtol=0, atol=0
    )


def test_a_fresh_adapter_is_the_base_model_and_disabled_is_too() -> None:
    inputs = model_inputs("llama")
    base = outputs(tiny_model("llama"), inputs)
    torch.testing.assert_close(outputs(_model(peftkit), inputs), base, rtol=0, atol=0)
    model = _model(peftkit, init=False)
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, inputs), base, rtol=0, atol=0)


def test_a_training_run_equals_peft_step_for_step(tmp_path: Path) -> None:
    ours, our_losses = _train(peftkit, tmp_path / "ours")
    theirs, their_losses = _train(peft, tmp_path / "theirs")
    assert our_losses == pytest.approx(their_losses, rel=0, abs=1e-6)
    # the orthogonality term is in the loss (fresh A and B are far from orthogonal)
    with torch.no_grad():
        plain = tiny_model("llama")(input_ids=IDS, labels=IDS).loss.item()
    assert our_losses[0] > plain + 0.5
    pattern = ours.peft_config["default"].rank_pattern
    assert pattern == theirs.peft_config["default"].rank_pattern
    assert sum(sum(kept) for kept in pattern.values()) == SCHEDULE["target_r"] * len(pattern)
    files = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    expected = load_file(tmp_path / "theirs" / "adapter_model.safetensors")
    assert files.keys() == expected.keys()
    assert all(torch.equal(files[k], expected[k]) for k in files)
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    their_config = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == their_config["rank_pattern"]
    assert config["peft_type"] == "ADALORA" and config.keys() == their_config.keys()


@pytest.mark.parametrize("writer", ["ours", "theirs"])
def test_pruned_files_load_both_ways(writer: str, tmp_path: Path) -> None:
    trained, _ = _train(peftkit if writer == "ours" else peft, tmp_path)
    with torch.no_grad():
        expected = trained.eval()(input_ids=IDS).logits
        for lib in (peft, peftkit):
            torch.manual_seed(0)
            loaded = lib.PeftModel.from_pretrained(tiny_model("llama"), tmp_path).eval()
            torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=1e-6)
    ours = peftkit.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    q = ours.get_base_model().model.layers[0].self_attn.q_proj
    kept = sum(ours.peft_config["default"].rank_pattern["model.layers.0.self_attn.q_proj.lora_E"])
    assert q.lora_A["default"].shape[0] == kept == q.r["default"]


def test_merged_equals_unmerged_and_merge_and_unload_is_plain() -> None:
    model = _model(peftkit, init=False).eval()
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
        model.merge_adapter()
        torch.testing.assert_close(model(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)
        model.unmerge_adapter()
        plain = model.merge_and_unload()
        torch.testing.assert_close(plain(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)
    assert not any(isinstance(m, peftkit.tuners.base.AdapterLayer) for m in plain.modules())


def test_one_trainable_adapter_at_a_time() -> None:
    model = _model(peftkit)
    with pytest.raises(ConfigError, match="supports only 1 trainable adapter"):
        model.add_adapter("other", peftkit.AdaLoraConfig(target_modules=["q_proj"], total_step=4))
    model.add_adapter(
        "frozen",
        peftkit.AdaLoraConfig(target_modules=["q_proj"], total_step=4, inference_mode=True),
    )


def test_the_config_refuses_what_peft_refuses() -> None:
    with pytest.raises(ConfigError, match="total_step"):
        peftkit.AdaLoraConfig(target_modules=["q_proj"])
    with pytest.raises(ConfigError, match="don't allow for a budgeting phase"):
        peftkit.AdaLoraConfig(target_modules=["q_proj"], total_step=4, tinit=2, tfinal=2)
    with pytest.raises(ConfigError, match="does not support DoRA"):
        peftkit.AdaLoraConfig(target_modules=["q_proj"], total_step=4, use_dora=True)


def test_under_transformers_trainer_equals_peft(tmp_path: Path) -> None:
    """PEFT + Trainer with the allocation in a callback, and peftkit the same way: equal losses."""
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Allocate(TrainerCallback):  # type: ignore[misc]
        def on_optimizer_step(
            self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
        ) -> None:
            model.base_model.update_and_allocate(state.global_step)

    rows = Dataset.from_list(
        [{"input_ids": IDS[i % 2].tolist(), "labels": IDS[i % 2].tolist()} for i in range(12)]
    )
    losses = {}
    for lib in (peft, peftkit):
        args = TrainingArguments(
            output_dir=str(tmp_path / lib.__name__),
            per_device_train_batch_size=2,
            max_steps=6,
            learning_rate=1e-2,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=_model(lib), args=args, train_dataset=rows, callbacks=[Allocate()])
        trainer.train()
        losses[lib.__name__] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        pattern = trainer.model.peft_config["default"].rank_pattern
        losses[lib.__name__ + "/kept"] = sorted((k, sum(v)) for k, v in pattern.items())
    assert len(losses["peftkit"]) == 6
    assert losses["peftkit"] == pytest.approx(losses["peft"], rel=0, abs=1e-6)
    assert losses["peftkit/kept"] == losses["peft/kept"]


def test_conv2d_equals_peft_and_merges() -> None:
    from tests.interop.test_peft_conv import ConvModel, X

    got = {}
    for lib in (peft, peftkit):
        torch.manual_seed(0)
        base = ConvModel()
        torch.manual_seed(1)
        config = lib.AdaLoraConfig(
            target_modules=["c2", "head"], init_r=4, total_step=4, init_lora_weights=False
        )
        got[lib.__name__] = lib.get_peft_model(base, config).eval()
    with torch.no_grad():
        expected = got["peft"](X)
        torch.testing.assert_close(got["peftkit"](X), expected, rtol=0, atol=0)
        got["peftkit"].merge_adapter()
        torch.testing.assert_close(got["peftkit"](X), expected, rtol=0, atol=1e-5)


def test_the_base_state_dict_leaves_out_ranknum() -> None:
    model = _model(peftkit)
    keys = peftkit.get_base_model_state_dict(model).keys()
    assert keys == tiny_model("llama").state_dict().keys()


def test_a_grouped_convolution_is_refused_at_once() -> None:
    from tests.interop.test_peft_conv import ConvModel

    config = peftkit.AdaLoraConfig(target_modules=["c2"], init_r=4, total_step=4)
    with pytest.raises(ConfigError, match=r"grouped convolution \(groups=2\)"):
        peftkit.get_peft_model(ConvModel(groups=2), config)
