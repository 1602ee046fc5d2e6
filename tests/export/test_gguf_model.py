"""Merged-model export: the GGUF file, read back by transformers' GGUF loader, is the merged model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from peftkit import LoraConfig, get_peft_model
from peftkit.errors import ConfigError
from peftkit.export import export_gguf
from peftkit.integrations.models import packaged_gguf
from tests.export.conftest import logits, tiny_smol_llama

TEXTS = [
    "The movie was great, I loved it!",
    "  leading spaces, 12345 digits and émojis 🙂",
    "<|im_start|>user\nhi",
]


def _adapted(tied: bool = False) -> Any:
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
        init_lora_weights=False,
    )
    return get_peft_model(tiny_smol_llama(tied=tied), config)


@pytest.mark.parametrize("tied", [False, True])
def test_f32_export_reads_back_as_the_adapted_model(
    tmp_path: Path, smol_tokenizer: Any, tied: bool
) -> None:
    model = _adapted(tied)
    ids = smol_tokenizer(TEXTS[0], return_tensors="pt").input_ids
    expected = logits(model, ids)  # unmerged: the LoRA path, not the merge the export uses
    export_gguf(
        model,
        smol_tokenizer,
        tmp_path / "m.gguf",
        encoding="f32",
        tokenizer_gguf=packaged_gguf("smollm2-135m"),
    )
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    torch.testing.assert_close(logits(back, ids), expected, atol=1e-5, rtol=1e-5)
    names = {t.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert ("output.weight" in names) is not tied


def test_q8_0_weights_are_within_half_a_quantization_step(
    tmp_path: Path, smol_tokenizer: Any
) -> None:
    model = tiny_smol_llama()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    export_gguf(model, smol_tokenizer, tmp_path / "q.gguf", encoding="q8_0")
    back = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="q.gguf", dtype=torch.float32
    ).state_dict()
    for key, weight in weights.items():
        if weight.ndim == 1:
            assert torch.equal(back[key], weight), key  # norms stay f32
            continue
        # Q8_0: 32-value blocks
        step = weight.reshape(weight.shape[0], -1, 32).abs().amax(-1, keepdim=True) / 127
        error = (back[key] - weight).reshape(step.shape[0], -1, 32).abs()
        # half a step, plus up to 127 times the step's fp16 rounding (2**-11 of it): 0.5 + 0.062
        # steps
        assert (error <= step * 0.57).all(), key


def test_tokenizer_built_from_a_tokenizer_folder_tokenizes_the_same(
    tmp_path: Path, smol_tokenizer: Any
) -> None:
    # no tokenizer_gguf
    export_gguf(tiny_smol_llama(), smol_tokenizer, tmp_path / "t.gguf", encoding="f16")
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    for text in TEXTS:
        assert back(text).input_ids == smol_tokenizer(text).input_ids, text
    fields = gguf.GGUFReader(tmp_path / "t.gguf").fields
    assert fields["tokenizer.chat_template"].contents() == smol_tokenizer.chat_template


def test_copied_tokenizer_keys_are_the_source_files(tmp_path: Path, smol_tokenizer: Any) -> None:
    source = packaged_gguf("smollm2-135m")
    export_gguf(tiny_smol_llama(), smol_tokenizer, tmp_path / "c.gguf", tokenizer_gguf=source)
    ours, theirs = gguf.GGUFReader(tmp_path / "c.gguf").fields, gguf.GGUFReader(source).fields
    keys = [k for k in theirs if k.startswith("tokenizer.")]
    assert keys and all(ours[k].contents() == theirs[k].contents() for k in keys)
    assert ours["general.architecture"].contents() == "llama"
    assert ours["llama.attention.head_count_kv"].contents() == 2


def test_modelfile_is_written_beside_the_model(tmp_path: Path, smol_tokenizer: Any) -> None:
    export_gguf(tiny_smol_llama(), smol_tokenizer, tmp_path / "m.gguf", encoding="f16")
    text = (tmp_path / "m.Modelfile").read_text()
    assert "FROM ./m.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text


def test_a_tokenizer_smaller_than_the_embedding_is_padded_a_larger_one_refused(
    tmp_path: Path, smol_tokenizer: Any
) -> None:
    model = tiny_smol_llama()
    model.resize_token_embeddings(49160)
    export_gguf(model, smol_tokenizer, tmp_path / "pad.gguf", encoding="f32")
    assert (
        len(gguf.GGUFReader(tmp_path / "pad.gguf").fields["tokenizer.ggml.tokens"].contents())
        == 49160
    )
    with pytest.raises(
        ConfigError, match="has 49152 tokens but the model's embedding has 49160 rows"
    ):
        export_gguf(
            model, smol_tokenizer, tmp_path / "x.gguf", tokenizer_gguf=packaged_gguf("smollm2-135m")
        )
    assert not (tmp_path / "x.gguf").exists()  # nothing half-written is left


def test_unknown_encoding_is_refused(tmp_path: Path, smol_tokenizer: Any) -> None:
    with pytest.raises(
        ConfigError, match="unknown GGUF encoding 'q3'; choose one of f32, f16, q8_0, q4_0"
    ):
        export_gguf(tiny_smol_llama(), smol_tokenizer, tmp_path / "m.gguf", encoding="q3")
