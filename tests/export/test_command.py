"""`peftkit export` through the CLI's entry point: the files it writes and the errors it gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest

from peftkit import LoraConfig, get_peft_model
from tests.export.conftest import tiny_smol_llama
from tests.test_cli import run


@pytest.fixture()
def files(tmp_path: Path, smol_tokenizer: Any) -> tuple[Path, Path]:
    base = tmp_path / "base"
    tiny_smol_llama().save_pretrained(base)
    smol_tokenizer.save_pretrained(base)
    adapter = tmp_path / "adapter"
    model = get_peft_model(
        tiny_smol_llama(),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(adapter)
    return base, adapter


def test_adapter_to_gguf_lora(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, adapter = files
    code, _, err = run(capsys, "export", adapter, "--to", "gguf-lora", tmp_path / "a.gguf")
    assert code != 0 and "does not record its base model; pass it with --base MODEL" in err
    code, out, err = run(
        capsys, "export", adapter, "--to", "gguf-lora", tmp_path / "a.gguf", "--base", base
    )
    assert code == 0, err
    # the base is a folder: export it first
    assert f"llama-cli -m base.gguf --lora {tmp_path / 'a.gguf'}" in out
    assert gguf.GGUFReader(tmp_path / "a.gguf").fields["adapter.type"].contents() == "lora"


def test_base_and_adapter_to_a_quantized_gguf_with_a_modelfile(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, adapter = files
    code, out, err = run(
        capsys, "export", base, adapter, "--to", "gguf", tmp_path / "m.gguf", "--quant", "q8_0"
    )
    assert code == 0, err
    assert "ollama create my-model -f" in out and (tmp_path / "m.Modelfile").is_file()
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert {t.tensor_type.name for t in reader.tensors} == {"Q8_0", "F32"}
    assert reader.fields["general.name"].contents() == f"{base} + {adapter}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["x", "--to", "gguf-lora", "out.bin"], "must be a .gguf file"),
        (
            ["a", "b", "--to", "gguf-lora", "out.gguf"],
            "`peftkit export ADAPTER --to gguf-lora OUT.gguf` takes 1 input",
        ),
        (
            ["a", "b", "c", "--to", "gguf", "out.gguf"],
            "`peftkit export BASE [ADAPTER] --to gguf OUT.gguf` takes 1 or 2",
        ),
        (
            ["a", "--to", "gguf-model", "out.gguf"],
            "unknown export target 'gguf-model'; choose one of gguf-lora, gguf",
        ),
    ],
)
def test_bad_arguments_say_what_is_expected(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "export", *argv)
    assert code != 0 and message in err


def test_output_over_an_input_is_refused(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = files
    model = tmp_path / "m.gguf"
    assert run(capsys, "export", base, "--to", "gguf", model)[0] == 0
    before = model.read_bytes()
    code, _, err = run(capsys, "export", model, "--to", "gguf", model)
    assert code != 0 and "is the input" in err
    assert model.read_bytes() == before


def test_a_q4_0_merge_warns_that_it_rounds_the_update_away(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, adapter = files
    code, out, _ = run(
        capsys, "export", base, adapter, "--to", "gguf", tmp_path / "m.gguf", "--quant", "q4_0"
    )
    assert code == 0 and out.startswith("note: q4_0 rounds weights") and "--to gguf-lora" in out
    code, out, _ = run(
        capsys, "export", base, "--to", "gguf", tmp_path / "b.gguf", "--quant", "q4_0"
    )
    assert code == 0 and "note:" not in out  # no adapter, nothing to lose
