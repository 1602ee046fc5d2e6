"""Mixed-batch inference: ``adapter_names`` sends each row through its own LoRA adapter in one pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from peftkit import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from peftkit.errors import AdapterNotFoundError, ConfigError
from tests.conftest import tiny_model

NAMES = ["a", "b", "__base__", "c", "a", "b"]


def three_adapters(arch: str = "llama") -> PeftModel:
    torch.manual_seed(0)
    targets = ["q_proj", "v_proj", "down_proj"] if arch == "llama" else None
    model = get_peft_model(
        tiny_model(arch),
        LoraConfig(r=4, target_modules=targets, init_lora_weights=False),
        adapter_name="a",
    )
    model.add_adapter(
        "b", LoraConfig(r=8, lora_alpha=4, target_modules=targets, init_lora_weights=False)
    )
    # c adapts fewer layers: rows of c pass the others untouched
    model.add_adapter(
        "c",
        LoraConfig(
            r=2, target_modules=["q_proj"] if arch == "llama" else None, init_lora_weights=False
        ),
    )
    return model.eval()


def rows(n: int = len(NAMES), length: int = 7) -> torch.Tensor:
    return torch.randint(4, 100, (n, length), generator=torch.Generator().manual_seed(1))


def one_row(model: PeftModel, ids: torch.Tensor, name: str) -> torch.Tensor:
    if name == "__base__":
        with model.disable_adapter():
            return model(input_ids=ids).logits
    model.set_adapter(name)
    return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_each_row_equals_running_it_alone(arch: str) -> None:
    model, ids = three_adapters(arch), rows()
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=NAMES).logits
        # each adapter runs its rows with the single-adapter operations
        for i, name in enumerate(NAMES):
            torch.testing.assert_close(
                mixed[i : i + 1], one_row(model, ids[i : i + 1], name), atol=1e-6, rtol=0
            )
        base = one_row(model, ids, "__base__")
    # rows without an adapter are the base model's, bit for bit
    assert torch.equal(mixed[2], base[2])
    assert not torch.allclose(mixed[0], base[0])


def test_a_bf16_base_with_fp32_adapters_matches_running_each_row_alone() -> None:
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_model("llama").to(torch.bfloat16),
        LoraConfig(r=4, init_lora_weights=False),
        adapter_name="a",
    )
    model.add_adapter("b", LoraConfig(r=8, init_lora_weights=False))
    model.eval()
    names, ids = ["b", "__base__", "a"], rows(3)
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=names).logits
        assert mixed.dtype == torch.bfloat16
        for i, name in enumerate(names):  # both round the fp32 update to bf16 once per layer
            torch.testing.assert_close(
                mixed[i : i + 1], one_row(model, ids[i : i + 1], name), atol=2e-2, rtol=2e-2
            )
        assert not torch.allclose(mixed[0], mixed[2])


def test_generation_matches_row_by_row_greedy_decoding() -> None:
    model, ids = three_adapters(), rows()
    with torch.no_grad():
        mixed = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            adapter_names=NAMES,
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
        )
        for i, name in enumerate(NAMES):
            one = ids[i : i + 1]
            if name == "__base__":
                with model.disable_adapter():
                    alone = model.generate(
                        input_ids=one, max_new_tokens=8, do_sample=False, pad_token_id=0
                    )
            else:
                model.set_adapter(name)
                alone = model.generate(
                    input_ids=one, max_new_tokens=8, do_sample=False, pad_token_id=0
                )
            assert mixed[i].tolist() == alone[0].tolist(), name
    model.set_adapter("a")
    # nothing lingers
    assert all(layer.rows is None for layer in model.modules() if hasattr(layer, "rows"))


def test_same_logits_as_peft_adapter_names(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    ours = three_adapters()
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "a", adapter_name="a")
    for name in ("b", "c"):
        theirs.load_adapter(tmp_path / name, adapter_name=name)
    theirs.eval()
    ids = rows()
    with torch.no_grad():
        expected = theirs(input_ids=ids, adapter_names=NAMES).logits
        torch.testing.assert_close(
            ours(input_ids=ids, adapter_names=NAMES).logits, expected, atol=1e-5, rtol=0
        )


def test_misuse_is_refused_with_reasons() -> None:
    model, ids = three_adapters(), rows()
    with pytest.raises(AdapterNotFoundError, match="non-existing adapter"):
        model(input_ids=ids, adapter_names=["a", "zz", "a", "a", "a", "a"])
    with pytest.raises(ValueError, match="rows but the batch has"):
        model(input_ids=ids, adapter_names=["a", "b"])
    model.train()
    with pytest.raises(ConfigError, match="for inference"):
        model(input_ids=ids, adapter_names=NAMES)
    model.eval()
    model.merge_adapter(["a"])
    with pytest.raises(ConfigError, match="unmerged"):
        model(input_ids=ids, adapter_names=NAMES)
    model.unmerge_adapter()
    model.add_adapter("p", PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM"))
    with pytest.raises(ConfigError, match="prompt-learning"):
        model(input_ids=ids, adapter_names=["p", "a", "a", "a", "a", "a"])


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0, self.gru, self.lin1 = (
            nn.Linear(10, 20),
            nn.GRU(20, 20, batch_first=True),
            nn.Linear(20, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(self.gru(self.lin0(x).unsqueeze(1))[0].squeeze(1))  # (B, 2)


def test_each_row_uses_its_own_adapter_s_modules_to_save_copy() -> None:
    torch.manual_seed(0)
    config = {"target_modules": ["lin0"], "modules_to_save": ["lin1"], "init_lora_weights": False}
    model = get_peft_model(_Net(), LoraConfig(**config), adapter_name="a")
    model.add_adapter("b", LoraConfig(**config))
    # copies that differ, as trained copies do (fresh ones equal the original)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modules_to_save" in name:
                p.add_(torch.randn_like(p))
    model.eval()
    x, names = torch.randn(5, 10), ["a", "b", "__base__", "b", "a"]
    with torch.no_grad():
        mixed = model(x, adapter_names=names)
        for i, name in enumerate(names):
            torch.testing.assert_close(
                mixed[i], one_row_plain(model, x, name)[i], atol=1e-6, rtol=0
            )


def one_row_plain(model: PeftModel, x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "__base__":
        with model.disable_adapter():
            return model(x)
    model.set_adapter(name)
    return model(x)


def test_a_copy_whose_batch_dimension_is_unknown_is_refused() -> None:
    config = {"target_modules": ["lin0"], "modules_to_save": ["gru"], "init_lora_weights": False}
    model = get_peft_model(_Net(), LoraConfig(**config), adapter_name="a")
    model.add_adapter("b", LoraConfig(**config))
    model.eval()
    with pytest.raises(
        TypeError, match="Mixed batching is only supported for the following modules: Linear"
    ):
        model(torch.randn(2, 10), adapter_names=["a", "b"])
