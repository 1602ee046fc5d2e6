"""The adapter file format: atomic writes, refusals and clear errors for files that do not fit."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from peftkit import AdapterFormatError, ConfigError, LoraConfig, PeftModel, get_peft_model
from peftkit.common.files import atomic_write
from peftkit.peft_model.format import file_keys

from .conftest import model_inputs, outputs, tiny_model


def test_file_keys_strip_only_the_adapter_segment():
    from torch import nn

    base = nn.ModuleDict(
        {
            "default": nn.ModuleDict({"q": nn.Linear(4, 4)}),
            "emb": nn.Embedding(10, 4),
            "score": nn.Linear(4, 2),
        }
    )
    model = get_peft_model(
        base,
        LoraConfig(r=2, target_modules=["q", "emb"], modules_to_save=["score"]),
        adapter_name="default",
    )
    keys = file_keys(model, "default")
    # a module that happens to be called "default" keeps its name; only the adapter's segment goes
    assert (
        keys["base_model.model.default.q.lora_A.default.weight"]
        == "base_model.model.default.q.lora_A.weight"
    )
    assert (
        keys["base_model.model.score.modules_to_save.default.weight"]
        == "base_model.model.score.weight"
    )
    assert (
        keys["base_model.model.emb.lora_embedding_A.default"]
        == "base_model.model.emb.lora_embedding_A"
    )


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    get_peft_model(tiny_model("llama"), LoraConfig(r=4)).save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.zeros(4, 48)
    save_file(tensors, path)
    with pytest.raises(AdapterFormatError) as err:
        PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert "layers.0.self_attn.q_proj.lora_A" in str(err.value) and "(4, 48)" in str(err.value)
    assert "(4, 32)" in str(err.value)


def test_adapter_for_other_layers_is_refused(tmp_path):
    get_peft_model(tiny_model("llama"), LoraConfig()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["target_modules"] = ["k_proj"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match="match no layer"):
        PeftModel.from_pretrained(tiny_model("llama"), tmp_path)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    get_peft_model(tiny_model("llama"), LoraConfig()).save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(AdapterFormatError, match="truncated or corrupt"):
        PeftModel.from_pretrained(tiny_model("llama"), tmp_path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    model = get_peft_model(tiny_model("llama"), LoraConfig())
    model.save_pretrained(tmp_path)
    os.remove(tmp_path / "adapter_model.safetensors")
    torch.save({"x": _Exploit()}, tmp_path / "adapter_model.bin")
    with pytest.raises(AdapterFormatError, match="refused"):
        PeftModel.from_pretrained(tiny_model("llama"), tmp_path)


def test_legacy_bin_with_plain_tensors_loads(tmp_path):
    inputs = model_inputs("llama")
    model = get_peft_model(tiny_model("llama"), LoraConfig(init_lora_weights=False))
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path)
    torch.save(load_file(tmp_path / "adapter_model.safetensors"), tmp_path / "adapter_model.bin")
    os.remove(tmp_path / "adapter_model.safetensors")
    with pytest.warns(UserWarning, match="legacy"):
        reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    torch.testing.assert_close(outputs(reloaded, inputs), expected, atol=1e-5, rtol=1e-5)


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_missing_folder_and_bad_config(tmp_path):
    with pytest.raises(AdapterFormatError, match="does not exist"):
        PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "nope")
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 0, "lora_dropout": 1.5})
    )
    with pytest.raises(ConfigError) as err:
        PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert "r=0" in str(err.value) and "lora_dropout=1.5" in str(err.value)


def test_config_reports_every_problem_and_suggests_names():
    with pytest.raises(ConfigError) as err:
        LoraConfig(r=-1, lora_dropout=2.0, bias="some")
    assert len(err.value.problems) == 3
    with pytest.raises(ConfigError, match="Did you mean 'lora_alpha'"):
        LoraConfig.from_dict({"peft_type": "LORA", "lora_alfa": 16})


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from peftkit.common.files import atomic_directory, write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "b.txt").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755  # not mkdtemp's 0700


def test_a_failed_safetensors_write_is_a_storage_error_and_keeps_the_old_file(
    tmp_path, monkeypatch
):
    from safetensors import SafetensorError

    import peftkit.peft_model.format as fmt
    from peftkit.errors import StorageError

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    before = (tmp_path / "adapter_model.safetensors").read_bytes()

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(fmt, "save_file", full_disk)
    with pytest.raises(StorageError, match="No space left on device"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == before
