"""GGUF LoRA export: the file's factors, applied with llama.cpp's rule (``W + alpha / r * B @ A``),
give the merged model's weights; adapters llama.cpp cannot apply are refused with what to do
instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest
import torch

from peftkit import (
    AdaLoraConfig,
    IA3Config,
    LoHaConfig,
    LoraConfig,
    PromptTuningConfig,
    get_peft_model,
)
from peftkit.errors import ConfigError
from peftkit.export import export_gguf_lora
from peftkit.export.gguf_model import model_tensors
from tests.export.conftest import tiny_smol_llama


def _apply_like_llama_cpp(path: Path, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What llama.cpp's graph adds, per its llama_adapter_lora_weight::get_scale: alpha / rank (rank
    = B's columns)."""
    reader = gguf.GGUFReader(path)
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    factors = {t.name: torch.from_numpy(t.data.copy()).float() for t in reader.tensors}
    weights = dict(base)
    for name in [n for n in factors if n.endswith(".lora_a")]:
        a, b = factors[name], factors[name.replace(".lora_a", ".lora_b")]
        scale = alpha / b.shape[1] if alpha else 1.0
        weights[name.removesuffix(".lora_a")] = base[name.removesuffix(".lora_a")] + scale * b @ a
    return weights


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"use_rslora": True},
        {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 3.0}},
    ],
    ids=["plain", "rslora", "patterns"],
)
def test_factors_applied_like_llama_cpp_give_the_merged_weights(
    tmp_path: Path, settings: dict[str, Any]
) -> None:
    base = model_tensors(tiny_smol_llama())
    options = {"r": 4, "lora_alpha": 8.0, "init_lora_weights": False, **settings}
    model = get_peft_model(
        tiny_smol_llama(),
        LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "up_proj"], **options),
    )
    export_gguf_lora(model, tmp_path / "a.gguf")
    merged = model_tensors(model.merge_and_unload())
    applied = _apply_like_llama_cpp(tmp_path / "a.gguf", base)
    changed = [k for k in merged if not torch.equal(merged[k], base[k])]
    assert len(changed) == 8  # q, k, v, up in both layers
    for key in merged:
        torch.testing.assert_close(applied[key], merged[key], atol=1e-6, rtol=1e-5, msg=key)


def test_file_says_what_it_is(tmp_path: Path) -> None:
    model = get_peft_model(
        tiny_smol_llama(), LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj"])
    )
    export_gguf_lora(model, tmp_path / "a.gguf", encoding="f16")
    reader = gguf.GGUFReader(tmp_path / "a.gguf")
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["adapter.lora.alpha"].contents() == 16.0
    shapes = {t.name: (t.tensor_type.name, list(t.data.shape)) for t in reader.tensors}
    # (r, in), as PEFT stores lora_A
    assert shapes["blk.0.attn_q.weight.lora_a"] == ("F16", [4, 32])
    assert shapes["blk.1.attn_q.weight.lora_b"] == ("F16", [32, 4])  # (out, r)


@pytest.mark.parametrize(
    "config, message",
    [
        (LoraConfig(r=2, target_modules=["q_proj"], use_dora=True), "use_dora=True"),
        (
            LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]),
            "modules_to_save",
        ),
        (LoraConfig(r=2, target_modules=["embed_tokens"]), "adapts the embedding"),
        (
            IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
            "is IA3",
        ),
        (PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), "no GGUF form"),
        (AdaLoraConfig(target_modules=["q_proj"], init_r=4, total_step=4), "is ADALORA"),
        (LoHaConfig(r=2, target_modules=["q_proj"]), "is LOHA"),
    ],
    ids=["dora", "modules_to_save", "embedding", "ia3", "prompt", "adalora", "loha"],
)
def test_what_llama_cpp_cannot_apply_is_refused_with_merge_as_the_way_out(
    tmp_path: Path, config: Any, message: str
) -> None:
    model = get_peft_model(tiny_smol_llama(), config)
    with pytest.raises(ConfigError, match=message) as err:
        export_gguf_lora(model, tmp_path / "a.gguf")
    assert "peftkit export BASE ADAPTER --to gguf" in str(err.value) or "no GGUF form" in str(
        err.value
    )
    assert not (tmp_path / "a.gguf").exists()


def test_lora_on_a_tied_lm_head_is_refused(tmp_path: Path) -> None:
    model = get_peft_model(
        tiny_smol_llama(tied=True), LoraConfig(r=2, target_modules=["q_proj", "lm_head"])
    )
    with pytest.raises(ConfigError, match="lm_head, which this model ties to its embedding"):
        export_gguf_lora(model, tmp_path / "a.gguf")
