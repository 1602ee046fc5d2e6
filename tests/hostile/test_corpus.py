"""The hostile-input corpus: what people get wrong, and what peftkit says back.

Each case sets up files in a temporary folder, then runs the CLI (or the Python API) and checks
three things: the exact error class, the exit code (2 bad input, 1 runtime failure), and that the
message names the culprit (the field, file, line or layer). ``docs/reliability.md`` lists every
case; a test keeps the two in step.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from peftkit import (
    AdapterFormatError,
    AdapterShapeError,
    ConfigError,
    DataError,
    LoraConfig,
    ModelLoadError,
    PeftModel,
    TargetNotFoundError,
    get_peft_model,
)
from peftkit.cli import main
from peftkit.common.outputs import OutputDirError
from peftkit.errors import BrokenAdapterError, PeftkitError, StorageError, TrainingError
from tests.conftest import tiny_model

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
GOOD_CSV = "text,label\n" + "".join(
    f"{w} film,{lab}\n" for w, lab in [("good", "pos"), ("bad", "neg")] * 8
)


@dataclass
class Case:
    """One hostile input: files to create, the command to run, and what must come back."""

    id: str
    what: str
    files: dict[str, str | bytes]
    argv: list[str] | None
    error: type[PeftkitError]
    code: int
    text: str
    api: Callable[[Path], Any] | None = field(default=None, repr=False)


def train(*flags: str, data: str = "d.csv") -> list[str]:
    return [
        "train",
        "--model",
        "{model}",
        "--output-dir",
        "{tmp}/out",
        "--data.path",
        f"{{tmp}}/{data}",
        "--train.max_steps",
        "2",
        "--train.progress",
        "false",
        "--train.plot",
        "false",
        "--adapter.target_modules",
        "q_proj",
        *flags,
    ]


def classify(*flags: str, data: str = "d.csv") -> list[str]:
    return train(
        "--data.mode",
        "classification",
        "--data.label_words",
        "{pos: yes, neg: no}",
        *flags,
        data=data,
    )


def chat(*flags: str) -> list[str]:
    return train("--data.mode", "chat", "--data.val_size", "0", *flags, data="d.jsonl")


def yaml_job(body: str) -> dict[str, str | bytes]:
    return {"job.yaml": body, "d.csv": GOOD_CSV}


JOB = ["train", "--config", "{tmp}/job.yaml", "--output-dir", "{tmp}/out"]


# ----- API-level cases
# ---------------------------------------------------------------------------------------


def _saved_lora(tmp: Path, arch: str = "llama", **config: Any) -> Path:
    model = get_peft_model(tiny_model(arch), LoraConfig(r=4, target_modules=["q_proj"], **config))
    model.save_pretrained(tmp / "adapter")
    return tmp / "adapter"


def adapter_other_size(tmp: Path) -> None:
    import transformers

    folder = _saved_lora(tmp)
    wider = transformers.LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    PeftModel.from_pretrained(transformers.LlamaForCausalLM(wider), folder)


def adapter_other_arch(tmp: Path) -> None:
    PeftModel.from_pretrained(tiny_model("gpt2"), _saved_lora(tmp))


def adapter_truncated(tmp: Path) -> None:
    folder = _saved_lora(tmp)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    PeftModel.from_pretrained(tiny_model("llama"), folder)


def adapter_pickle(tmp: Path) -> None:
    import pickle

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("code ran",))

    folder = tmp / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]})
    )
    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"x": Boom()}))
    PeftModel.from_pretrained(tiny_model("llama"), folder)


def adapter_missing_folder(tmp: Path) -> None:
    PeftModel.from_pretrained(tiny_model("llama"), tmp / "no-adapter")


def adapter_without_config(tmp: Path) -> None:
    folder = _saved_lora(tmp)
    (folder / "adapter_config.json").unlink()
    PeftModel.from_pretrained(tiny_model("llama"), folder)


def adapter_config_not_json(tmp: Path) -> None:
    folder = _saved_lora(tmp)
    (folder / "adapter_config.json").write_text("{peft_type: LORA")
    PeftModel.from_pretrained(tiny_model("llama"), folder)


def _edit_config(tmp: Path, **changes: Any) -> Path:
    folder = _saved_lora(tmp)
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return folder


def adapter_uses_layer_replication(tmp: Path) -> None:
    PeftModel.from_pretrained(tiny_model("llama"), _edit_config(tmp, layer_replication=[[0, 1]]))


def adapter_config_says_lora_bias(tmp: Path) -> None:
    PeftModel.from_pretrained(tiny_model("llama"), _edit_config(tmp, lora_bias=True))


def adapter_unknown_type(tmp: Path) -> None:
    PeftModel.from_pretrained(tiny_model("llama"), _edit_config(tmp, peft_type="SUPER_LORA"))


def adapter_rank_zero(tmp: Path) -> None:
    PeftModel.from_pretrained(tiny_model("llama"), _edit_config(tmp, r=0))


def disk_full(tmp: Path) -> None:
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj"]))
    model.save_pretrained(tmp / "adapter")
    before = (tmp / "adapter" / "adapter_model.safetensors").read_bytes()
    real_fsync = __import__("os").fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    import os

    os.fsync = full
    try:
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(1.0)
        model.save_pretrained(tmp / "adapter")
    finally:
        os.fsync = real_fsync
        # Whatever happened, the adapter that was there is byte for byte the same.
        assert (tmp / "adapter" / "adapter_model.safetensors").read_bytes() == before
        assert not [p for p in (tmp / "adapter").iterdir() if p.name.startswith(".")]


def nan_loss(tmp: Path) -> None:
    from peftkit import JobConfig
    from peftkit import train as run_train
    from peftkit.train import loop
    from tests.conftest import char_tokenizer

    (tmp / "d.csv").write_text(GOOD_CSV)
    real = loop.row_losses
    calls = {"n": 0}

    def poisoned(model: Any, inputs: Any, labels: Any) -> Any:
        losses, counts = real(model, inputs, labels)
        calls["n"] += 1
        return (
            (losses * float("nan"), counts)
            if calls["n"] > 2 and model.training
            else (losses, counts)
        )

    loop.row_losses = poisoned  # type: ignore[assignment]
    job = JobConfig(
        adapter={"r": 2, "target_modules": ["q_proj"]},
        output_dir=str(tmp / "out"),
        data={"path": str(tmp / "d.csv"), "val_size": 0},
        train={"max_steps": 5, "save_every": 1, "batch_size": 4, "progress": False, "plot": False},
    )
    try:
        run_train(job, model=tiny_model("llama"), tokenizer=char_tokenizer(), log=lambda _: None)
    finally:
        loop.row_losses = real  # type: ignore[assignment]
        saved = sorted(p.name for p in (tmp / "out" / "checkpoints").glob("step-*"))
        assert saved == ["step-000001", "step-000002"]  # the good checkpoints are kept


def merge_into_file(tmp: Path) -> None:
    from tests.conftest import char_tokenizer

    tiny_model("llama").save_pretrained(tmp / "model")
    char_tokenizer().save_pretrained(tmp / "model")
    adapter = _saved_lora(tmp)
    (tmp / "file").write_text("x")
    main(["--debug", "merge", str(tmp / "model"), str(adapter), str(tmp / "file" / "merged")])


def resume_damaged(tmp: Path) -> None:
    from peftkit.train import checkpoint

    folder = tmp / "out" / "checkpoints" / "step-000001"
    folder.mkdir(parents=True)
    (folder / checkpoint.STATE_FILE).write_bytes(b"\x00garbage")
    checkpoint.load_state(folder)


# ----- second corpus: data loss, silent wrong results, exhaustion, exit codes, faults
# ----------------------


def _merge_setup(tmp: Path) -> tuple[Path, Path]:
    from tests.conftest import char_tokenizer

    tiny_model("llama").save_pretrained(tmp / "model")
    char_tokenizer().save_pretrained(tmp / "model")
    return tmp / "model", _saved_lora(tmp)


def merge_over_user_files(tmp: Path) -> None:
    model, adapter = _merge_setup(tmp)
    (tmp / "mine").mkdir()
    (tmp / "mine" / "precious.txt").write_text("x")
    try:
        main(["--debug", "merge", str(model), str(adapter), str(tmp / "mine")])
    finally:
        assert (tmp / "mine" / "precious.txt").read_text() == "x"


def merge_into_adapter(tmp: Path) -> None:
    model, adapter = _merge_setup(tmp)
    before = (adapter / "adapter_model.safetensors").read_bytes()
    try:
        main(["--debug", "merge", str(model), str(adapter), str(adapter)])
    finally:
        assert (adapter / "adapter_model.safetensors").read_bytes() == before


def merge_into_adapters_parent(tmp: Path) -> None:
    model, adapter = _merge_setup(tmp)
    try:
        main(["--debug", "merge", str(model), str(adapter), str(tmp)])
    finally:
        assert (adapter / "adapter_config.json").is_file()


def _run_job(tmp: Path, out: str = "out", data: str = "d.csv", **train_fields: Any) -> Any:
    from peftkit import JobConfig
    from peftkit import train as run_train
    from tests.conftest import char_tokenizer

    if not (tmp / "d.csv").exists():
        (tmp / "d.csv").write_text(GOOD_CSV)
    job = JobConfig(
        adapter={"r": 2, "target_modules": ["q_proj"], **train_fields.pop("adapter", {})},
        output_dir=str(tmp / out),
        data={"path": str(tmp / data), "val_size": 0},
        train={"max_steps": 2, "batch_size": 4, "progress": False, "plot": False, **train_fields},
    )
    return run_train(job, model=tiny_model("llama"), tokenizer=char_tokenizer(), log=lambda _: None)


def train_over_finished_run(tmp: Path) -> None:
    _run_job(tmp)
    before = (tmp / "out" / "adapter_model.safetensors").read_bytes()
    try:
        _run_job(tmp, lr=0.5)
    finally:
        assert (tmp / "out" / "adapter_model.safetensors").read_bytes() == before


def train_while_another_runs(tmp: Path) -> None:
    import socket

    (tmp / "out").mkdir()
    # pid 1 lives as long as the machine: a run that holds the folder
    (tmp / "out" / ".peftkit.lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname()}))
    _run_job(tmp)


def train_lock_from_other_host(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / ".peftkit.lock").write_text(
        json.dumps({"pid": 12345, "host": "another-machine"})
    )
    _run_job(tmp)


def save_after_merge_and_unload(tmp: Path) -> None:
    folder = _saved_lora(tmp)
    before = (folder / "adapter_model.safetensors").read_bytes()
    model = PeftModel.from_pretrained(tiny_model("llama"), folder)
    model.merge_and_unload()
    try:
        model.save_pretrained(folder)
    finally:
        assert (folder / "adapter_model.safetensors").read_bytes() == before


def save_half_adapter(tmp: Path) -> None:
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    del layer.lora_B["default"]
    model.save_pretrained(tmp / "adapter")


def get_peft_model_twice(tmp: Path) -> None:
    base = tiny_model("llama")
    first = get_peft_model(
        base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    )
    trained = {k: v.clone() for k, v in first.state_dict().items() if "lora_" in k}
    try:
        # another rank: its weights would go
        get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"]))
    finally:
        assert all(torch.equal(v, first.state_dict()[k]) for k, v in trained.items())


def _edit_weights(
    tmp: Path, change: Callable[[dict[str, torch.Tensor]], None], **config: Any
) -> Path:
    from safetensors.torch import load_file, save_file

    folder = _saved_lora(tmp, **config)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def _first_b(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k in tensors if "lora_B" in k)


def adapter_weights_nan(tmp: Path) -> None:
    folder = _edit_weights(tmp, lambda t: t[_first_b(t)].fill_(float("nan")))
    PeftModel.from_pretrained(tiny_model("llama"), folder)


def adapter_weights_inf(tmp: Path) -> None:
    folder = _edit_weights(tmp, lambda t: t[_first_b(t)].fill_(float("inf")))
    PeftModel.from_pretrained(tiny_model("llama"), folder)


def adapter_names_base_weight(tmp: Path) -> None:
    base = tiny_model("llama")

    # (the embedding weights are the one exception: PEFT saves them beside an adapter of a resized
    # vocabulary)
    weight = base.model.layers[0].mlp.down_proj.weight

    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors["base_model.model.model.layers.0.mlp.down_proj.weight"] = torch.zeros_like(weight)

    folder = _edit_weights(tmp, poison)
    before = weight.clone()
    try:
        PeftModel.from_pretrained(base, folder)
    finally:
        assert torch.equal(base.model.layers[0].mlp.down_proj.weight, before)


def prompt_weights_nan(tmp: Path) -> None:
    from safetensors.torch import load_file, save_file

    from peftkit import PromptTuningConfig

    model = get_peft_model(
        tiny_model("llama"), PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")
    )
    model.save_pretrained(tmp / "adapter")
    path = tmp / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors["prompt_embeddings"][0, 0] = float("nan")
    save_file(tensors, str(path))
    PeftModel.from_pretrained(tiny_model("llama"), tmp / "adapter")


def merge_nan_in_memory(tmp: Path) -> None:
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))
    model.merge_and_unload()


def _resume_job(tmp: Path, **changes: Any) -> None:
    _run_job(tmp, save_every=1, max_steps=2)
    (tmp / "d2.csv").write_text(GOOD_CSV)
    adapter = {"lora_alpha": 32} if changes.pop("alpha", False) else {}
    _run_job(tmp, resume=True, max_steps=3, adapter=adapter, **changes)


def resume_changed_alpha(tmp: Path) -> None:
    _resume_job(tmp, alpha=True)


def resume_changed_data(tmp: Path) -> None:
    _resume_job(tmp, data="d2.csv")


def resume_changed_lr(tmp: Path) -> None:
    _resume_job(tmp, lr=0.5)


def resume_half_deleted(tmp: Path) -> None:
    from peftkit.train import checkpoint

    _run_job(tmp, save_every=1, max_steps=2)
    folder = tmp / "out" / "checkpoints" / "step-000002"
    (folder / checkpoint.TRAINABLE_FILE).unlink()  # a kill while the folder was being deleted
    assert [p.name for p in checkpoint.list_checkpoints(tmp / "out")] == ["step-000001"]
    _run_job(tmp, resume=str(folder), max_steps=3)


def _adapter_config(tmp: Path, **changes: Any) -> Path:
    folder = _edit_config(tmp, **changes)
    return folder


def regex_backtracking_from_file(tmp: Path) -> None:
    import time

    folder = _adapter_config(tmp, target_modules="(.*?)*?(.*)*(?=X)")
    started = time.monotonic()
    try:
        PeftModel.from_pretrained(tiny_model("llama"), folder)
    finally:
        assert time.monotonic() - started < 10


def regex_re_backtracking_is_fast(tmp: Path) -> None:
    import time

    folder = _adapter_config(tmp, target_modules="(.|.)*X")  # minutes with the re module
    started = time.monotonic()
    try:
        PeftModel.from_pretrained(tiny_model("llama"), folder)
    finally:
        assert time.monotonic() - started < 10


def adapter_config_huge(tmp: Path) -> None:
    folder = _saved_lora(tmp)
    (folder / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "x": "' + "a" * 5_000_000 + '"}'
    )
    PeftModel.from_pretrained(tiny_model("llama"), folder)


def adapter_config_deep(tmp: Path) -> None:
    folder = _saved_lora(tmp)
    (folder / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    PeftModel.from_pretrained(tiny_model("llama"), folder)


def adapter_config_nan_alpha(tmp: Path) -> None:
    folder = _saved_lora(tmp)
    path = folder / "adapter_config.json"
    path.write_text(path.read_text().replace('"lora_alpha": 8', '"lora_alpha": NaN'))
    PeftModel.from_pretrained(tiny_model("llama"), folder)


def adapter_config_huge_rank(tmp: Path) -> None:
    PeftModel.from_pretrained(tiny_model("llama"), _edit_config(tmp, r=2**40))


def _load_named(tmp: Path, name: str) -> None:
    model = PeftModel.from_pretrained(tiny_model("llama"), _saved_lora(tmp))
    model.load_adapter(tmp / "adapter", adapter_name=name)
    model.save_pretrained(tmp / "saved")


def adapter_name_absolute(tmp: Path) -> None:
    try:
        _load_named(tmp, str(tmp / "elsewhere"))
    finally:
        assert not (tmp / "elsewhere").exists()


def adapter_name_dotdot(tmp: Path) -> None:
    _load_named(tmp, "..")


def adapter_name_empty(tmp: Path) -> None:
    _load_named(tmp, "")


def adapter_name_dotted(tmp: Path) -> None:
    _load_named(tmp, "v1.2")


def adapter_name_attribute(tmp: Path) -> None:
    _load_named(tmp, "training")


def checkpoint_file_size_limit(tmp: Path) -> None:
    import resource

    from peftkit.train import checkpoint

    real = checkpoint.save_checkpoint

    # a real limit, set only while the checkpoint is written
    def limited(*args: Any, **kwargs: Any) -> Any:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        # Python ignores SIGXFSZ: writes fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, hard))
        try:
            return real(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    checkpoint.save_checkpoint = limited  # type: ignore[assignment]
    try:
        _run_job(tmp, save_every=1, max_steps=1)
    finally:
        checkpoint.save_checkpoint = real  # type: ignore[assignment]


def metrics_disk_full(tmp: Path) -> None:
    real_open = Path.open

    def full(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if self.name == "metrics.jsonl" and mode == "a":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *args, **kwargs)

    Path.open = full  # type: ignore[method-assign]
    try:
        _run_job(tmp, log_every=1)
    finally:
        Path.open = real_open  # type: ignore[method-assign]


def checkpoint_disk_full(tmp: Path) -> None:
    real = torch.save

    # what torch.save raises when the disk fills mid-write
    def full(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
            "data/3: file write failed"
        )

    torch.save = full  # type: ignore[assignment]
    try:
        _run_job(tmp, save_every=1, max_steps=1)
    finally:
        torch.save = real


# ----- the corpus
# ----------------------------------------------------------------------------------------


CASES = [
    # configs
    Case(
        "yaml-malformed",
        "a YAML file with an unclosed bracket",
        yaml_job("model: [unclosed\n"),
        JOB,
        ConfigError,
        2,
        "not valid YAML",
    ),
    Case(
        "yaml-not-mapping",
        "a YAML file that is a list",
        yaml_job("- model\n"),
        JOB,
        ConfigError,
        2,
        "must hold a mapping",
    ),
    Case(
        "yaml-unknown-key",
        "a misspelt top-level key",
        yaml_job("modle: x\ndata: {path: d.csv}\n"),
        JOB,
        ConfigError,
        2,
        "modle is not a known field. Did you mean 'model'?",
    ),
    Case(
        "yaml-unknown-data-key",
        "a misspelt data field",
        yaml_job("data: {path: d.csv, templte: '{text}'}\n"),
        JOB,
        ConfigError,
        2,
        "data.templte is not a known field. Did you mean 'template'?",
    ),
    Case(
        "yaml-unknown-train-key",
        "a train field from another tool",
        yaml_job("data: {path: d.csv}\ntrain: {learning_rate: 0.1}\n"),
        JOB,
        ConfigError,
        2,
        "train.learning_rate is not a known field",
    ),
    Case(
        "adapter-unknown-field",
        "a misspelt adapter field",
        yaml_job("data: {path: d.csv}\nadapter: {lora_alpa: 16}\n"),
        JOB,
        ConfigError,
        2,
        "'lora_alpa' is not a field of LoraConfig. Did you mean 'lora_alpha'?",
    ),
    Case(
        "config-missing",
        "--config pointing nowhere",
        {},
        ["train", "--config", "{tmp}/nope.yaml"],
        ConfigError,
        2,
        "config file not found",
    ),
    Case(
        "rank-zero",
        "LoRA rank 0",
        {"d.csv": GOOD_CSV},
        train("--adapter.r", "0"),
        ConfigError,
        2,
        "r=0",
    ),
    Case(
        "lr-negative",
        "a negative learning rate",
        {"d.csv": GOOD_CSV},
        train("--train.lr=-1"),
        ConfigError,
        2,
        "train.lr=-1.0 must be a number > 0",
    ),
    Case(
        "dropout-above-one",
        "lora_dropout 1.5",
        {"d.csv": GOOD_CSV},
        train("--adapter.lora_dropout", "1.5"),
        ConfigError,
        2,
        "lora_dropout",
    ),
    Case(
        "virtual-tokens-zero",
        "prompt tuning with 0 virtual tokens",
        {"d.csv": GOOD_CSV},
        [
            "train",
            "--model",
            "{model}",
            "--method",
            "prompt_tuning",
            "--adapter.num_virtual_tokens",
            "0",
            "--data.path",
            "{tmp}/d.csv",
            "--output-dir",
            "{tmp}/out",
        ],
        ConfigError,
        2,
        "num_virtual_tokens",
    ),
    Case(
        "method-unknown",
        "a misspelt method",
        {"d.csv": GOOD_CSV},
        train("--method", "lorra"),
        ConfigError,
        2,
        "Did you mean 'lora'?",
    ),
    Case(
        "mode-unknown",
        "an unknown data mode",
        {"d.csv": GOOD_CSV},
        train("--data.mode", "classify"),
        ConfigError,
        2,
        "data.mode='classify' is not allowed",
    ),
    Case(
        "batch-size-text",
        "a batch size in words",
        {"d.csv": GOOD_CSV},
        train("--train.batch_size", "eight"),
        ConfigError,
        2,
        "train.batch_size='eight'",
    ),
    Case(
        "precision-unknown",
        "precision fp8",
        {"d.csv": GOOD_CSV},
        train("--train.precision", "fp8"),
        ConfigError,
        2,
        "expected one of auto, fp32, bf16, fp16",
    ),
    Case(
        "fp16-on-cpu",
        "fp16 without a GPU",
        {"d.csv": GOOD_CSV},
        train("--train.precision", "fp16", "--train.device", "cpu"),
        ConfigError,
        2,
        "fp16 needs a CUDA device",
    ),
    Case(
        "val-size-negative",
        "a negative validation share",
        {"d.csv": GOOD_CSV},
        train("--data.val_size=-0.5"),
        ConfigError,
        2,
        "data.val_size=-0.5",
    ),
    Case(
        "classification-no-words",
        "classification without label words",
        {"d.csv": GOOD_CSV},
        train("--data.mode", "classification"),
        ConfigError,
        2,
        "data.label_words is required",
    ),
    Case(
        "label-template-order",
        "a classification template that does not end in {label}",
        {"d.csv": GOOD_CSV},
        classify("--data.template", "{label}: {text}"),
        ConfigError,
        2,
        "must end with {label}",
    ),
    Case(
        "template-malformed",
        "a template with an unclosed brace",
        {"d.csv": GOOD_CSV},
        train("--data.template", "{text"),
        ConfigError,
        2,
        "malformed",
    ),
    Case(
        "label-words-not-mapping",
        "label words that are not a mapping",
        {"d.csv": GOOD_CSV},
        train("--data.label_words", "[pos, neg"),
        ConfigError,
        2,
        "--data.label_words",
    ),
    Case(
        "output-unwritable",
        "an output folder inside a file",
        {"d.csv": GOOD_CSV, "file": "x"},
        train("--output-dir", "{tmp}/file/out"),
        ConfigError,
        2,
        "cannot be written",
    ),
    # data
    Case(
        "data-missing",
        "a data file that does not exist",
        {},
        train(data="missing.csv"),
        DataError,
        2,
        "data file not found",
    ),
    Case(
        "data-extension",
        "a file whose format cannot be told",
        {"d.txt": "text\nhi\n"},
        train(data="d.txt"),
        DataError,
        2,
        "cannot tell the format",
    ),
    Case(
        "template-missing-column",
        "a template naming a missing column",
        {"d.csv": GOOD_CSV},
        train("--data.template", "{body}"),
        DataError,
        2,
        "no column 'body'; columns are text, label",
    ),
    Case(
        "data-empty",
        "a CSV with a header and no rows",
        {"d.csv": "text,label\n"},
        train(),
        DataError,
        2,
        "d.csv: the file has no rows (only a header)",
    ),
    Case(
        "data-not-utf8",
        "a Latin-1 file",
        {"d.csv": b"text,label\ncaf\xe9 film,pos\n"},
        train(),
        DataError,
        2,
        "d.csv:2 (not UTF-8",
    ),
    Case(
        "csv-wrong-delimiter",
        "a semicolon file read as commas",
        {"d.csv": "comment;isHate\nhi;0.1\n"},
        train("--data.template", "{comment}"),
        DataError,
        2,
        "no column 'comment'; columns are comment;isHate",
    ),
    Case(
        "jsonl-broken-line",
        "a JSON Lines file with a broken third line",
        {"d.jsonl": '{"text": "a"}\n{"text": "b"}\n{"text": \n{"text": "d"}\n'},
        train(data="d.jsonl"),
        DataError,
        2,
        "d.jsonl:3",
    ),
    Case(
        "json-not-records",
        "a JSON file holding a number",
        {"d.json": "42"},
        train(data="d.json"),
        DataError,
        2,
        "d.json",
    ),
    Case(
        "parquet-garbage",
        "a .parquet file that is not Parquet",
        {"d.parquet": b"not parquet"},
        train(data="d.parquet"),
        DataError,
        2,
        "cannot read it as parquet",
    ),
    Case(
        "label-unknown",
        "a label outside label_words",
        {"d.csv": GOOD_CSV + "meh film,other\n"},
        classify(),
        DataError,
        2,
        "d.csv:18: label 'other' is not one of the label_words keys",
    ),
    Case(
        "cell-empty",
        "an empty text cell",
        {"d.csv": "text,label\ngood,pos\n,neg\n"},
        classify("--data.val_size", "0"),
        DataError,
        2,
        "d.csv:3: column 'text' is empty",
    ),
    Case(
        "label-not-number",
        "a text label with a numeric threshold",
        {"d.csv": GOOD_CSV},
        classify("--data.label_threshold", "0.5"),
        DataError,
        2,
        "d.csv:2: label 'pos' is not a number",
    ),
    Case(
        "chat-not-list",
        "a messages cell that is not a list",
        {"d.jsonl": json.dumps({"messages": "hello"}) + "\n"},
        chat(),
        DataError,
        2,
        "d.jsonl:1: column 'messages' is not valid JSON",
    ),
    Case(
        "chat-bad-shape",
        "messages without roles",
        {"d.jsonl": json.dumps({"messages": [{"content": "hi"}]}) + "\n"},
        chat(),
        DataError,
        2,
        "d.jsonl:1: messages must be a list of",
    ),
    Case(
        "chat-no-assistant",
        "a conversation with nothing to learn",
        {"d.jsonl": json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"},
        chat(),
        DataError,
        2,
        "no assistant message",
    ),
    Case(
        "val-size-too-big",
        "a validation split larger than the data",
        {"d.csv": GOOD_CSV},
        train("--data.val_size", "500"),
        DataError,
        2,
        "val_size=500 would hold out 500 of 16 examples",
    ),
    Case(
        "longer-than-context",
        "examples longer than the model's 128 positions",
        {"d.csv": "text\n" + "x" * 300 + "\n" + "y" * 300 + "\n" + "short\n"},
        train("--data.max_length", "1000", "--data.val_size", "0"),
        ConfigError,
        2,
        "longer than the model's context (128 positions)",
    ),
    # models
    Case(
        "model-unknown",
        "a misspelt packaged model",
        {"d.csv": GOOD_CSV},
        ["eval", "--model", "smolm2-135m", "--data.path", "{tmp}/d.csv"],
        ModelLoadError,
        2,
        "smollm2-135m",
    ),
    Case(
        "model-folder-missing",
        "a model folder that does not exist",
        {},
        ["inspect", "{tmp}/no-model"],
        ModelLoadError,
        2,
        "no-model",
    ),
    # adapters
    Case(
        "adapter-folder-missing",
        "generate with an adapter folder that does not exist",
        {},
        ["generate", "{model}", "hi", "--adapter-path", "{tmp}/no-adapter"],
        AdapterFormatError,
        2,
        "no-adapter",
    ),
    Case(
        "adapter-other-size",
        "an adapter from a model of another width",
        {},
        None,
        AdapterShapeError,
        2,
        "q_proj",
        api=adapter_other_size,
    ),
    Case(
        "adapter-other-arch",
        "a Llama adapter on GPT-2",
        {},
        None,
        TargetNotFoundError,
        2,
        "q_proj",
        api=adapter_other_arch,
    ),
    Case(
        "adapter-truncated",
        "a truncated adapter_model.safetensors",
        {},
        None,
        AdapterFormatError,
        2,
        "adapter_model.safetensors",
        api=adapter_truncated,
    ),
    Case(
        "adapter-pickle",
        "a pickle adapter_model.bin that would run code",
        {},
        None,
        AdapterFormatError,
        2,
        "adapter_model.bin",
        api=adapter_pickle,
    ),
    Case(
        "adapter-missing-api",
        "from_pretrained on a missing folder",
        {},
        None,
        AdapterFormatError,
        2,
        "does not exist",
        api=adapter_missing_folder,
    ),
    Case(
        "adapter-no-config",
        "an adapter folder without adapter_config.json",
        {},
        None,
        AdapterFormatError,
        2,
        "adapter_config.json",
        api=adapter_without_config,
    ),
    Case(
        "adapter-config-not-json",
        "a damaged adapter_config.json",
        {},
        None,
        AdapterFormatError,
        2,
        "is not valid JSON",
        api=adapter_config_not_json,
    ),
    Case(
        "adapter-layer-replication",
        "an adapter that needs PEFT's layer_replication",
        {},
        None,
        ConfigError,
        2,
        "layer_replication",
        api=adapter_uses_layer_replication,
    ),
    Case(
        "adapter-bias-missing",
        "a config that says lora_bias=True over a file without B's biases",
        {},
        None,
        AdapterFormatError,
        2,
        "lora_B.bias",
        api=adapter_config_says_lora_bias,
    ),
    Case(
        "adapter-unknown-type",
        "an adapter of an unknown method",
        {},
        None,
        ConfigError,
        2,
        "SUPER_LORA",
        api=adapter_unknown_type,
    ),
    Case(
        "adapter-rank-zero",
        "an adapter_config.json with r=0",
        {},
        None,
        ConfigError,
        2,
        "r=0",
        api=adapter_rank_zero,
    ),
    # runs and files
    Case(
        "disk-full",
        "the disk fills while saving an adapter",
        {},
        None,
        StorageError,
        1,
        "No space left on device",
        api=disk_full,
    ),
    Case(
        "nan-loss",
        "the loss becomes NaN at step 3",
        {},
        None,
        TrainingError,
        1,
        "at step 3",
        api=nan_loss,
    ),
    Case(
        "resume-damaged",
        "a damaged checkpoint",
        {},
        None,
        TrainingError,
        1,
        "damaged",
        api=resume_damaged,
    ),
    Case(
        "resume-not-checkpoint",
        "--resume pointing at a plain folder",
        {"d.csv": GOOD_CSV, "plain/x": "x"},
        train("--resume", "{tmp}/plain"),
        ConfigError,
        2,
        "is not a checkpoint",
    ),
    Case(
        "merge-into-file",
        "merge into a path inside a file",
        {},
        None,
        StorageError,
        1,
        "cannot create",
        api=merge_into_file,
    ),
    # second corpus: data loss
    Case(
        "merge-over-user-files",
        "merge into a folder holding the user's files",
        {},
        None,
        OutputDirError,
        2,
        "peftkit did not write (precious.txt)",
        api=merge_over_user_files,
    ),
    Case(
        "merge-into-adapter",
        "merge into the adapter's own folder",
        {},
        None,
        ConfigError,
        2,
        "would delete it",
        api=merge_into_adapter,
    ),
    Case(
        "merge-into-adapters-parent",
        "merge into the folder that holds the adapter",
        {},
        None,
        ConfigError,
        2,
        "is (or holds) the adapter",
        api=merge_into_adapters_parent,
    ),
    Case(
        "train-over-user-files",
        "--output-dir . where the user keeps config.yaml and README.md",
        {"d.csv": GOOD_CSV, "out/config.yaml": "mine: 1\n", "out/README.md": "# my notes\n"},
        train(),
        OutputDirError,
        2,
        "config.yaml, README.md, which peftkit did not write",
    ),
    Case(
        "train-output-empty",
        "--output-dir ''",
        {"d.csv": GOOD_CSV},
        train("--output-dir", ""),
        ConfigError,
        2,
        "output_dir='' is empty",
    ),
    Case(
        "train-over-finished-run",
        "a fresh run over a finished run's adapter",
        {},
        None,
        OutputDirError,
        2,
        "results of an earlier run",
        api=train_over_finished_run,
    ),
    Case(
        "train-concurrent",
        "a second run on an output_dir that a live run holds",
        {},
        None,
        OutputDirError,
        2,
        "another peftkit run (process 1)",
        api=train_while_another_runs,
    ),
    Case(
        "train-lock-other-host",
        "a lock left by a run on another host",
        {},
        None,
        OutputDirError,
        2,
        "on host another-machine",
        api=train_lock_from_other_host,
    ),
    Case(
        "save-after-unload",
        "save_pretrained over the adapter after merge_and_unload",
        {},
        None,
        AdapterFormatError,
        2,
        "no weights left",
        api=save_after_merge_and_unload,
    ),
    Case(
        "save-half-adapter",
        "save an adapter whose layer lost lora_B",
        {},
        None,
        AdapterFormatError,
        2,
        "only one of lora_A and lora_B",
        api=save_half_adapter,
    ),
    Case(
        "get-peft-model-twice",
        "get_peft_model twice on one base model, another rank",
        {},
        None,
        ConfigError,
        2,
        "already holds an adapter named 'default'",
        api=get_peft_model_twice,
    ),
    # second corpus: silent wrong results
    Case(
        "alpha-nan",
        "lora_alpha NaN",
        {"d.csv": GOOD_CSV},
        train("--adapter.lora_alpha", "nan"),
        ConfigError,
        2,
        "lora_alpha=nan must be a finite number",
    ),
    Case(
        "alpha-inf",
        "lora_alpha infinite in YAML",
        yaml_job("data: {path: d.csv}\nadapter: {lora_alpha: inf}\n"),
        JOB,
        ConfigError,
        2,
        "lora_alpha=inf must be a finite number",
    ),
    Case(
        "lr-nan",
        "a NaN learning rate",
        {"d.csv": GOOD_CSV},
        train("--train.lr", "nan"),
        ConfigError,
        2,
        "train.lr=nan",
    ),
    Case(
        "threshold-nan",
        "a NaN label threshold",
        {"d.csv": GOOD_CSV},
        classify("--data.label_threshold", "nan"),
        ConfigError,
        2,
        "data.label_threshold=nan",
    ),
    Case(
        "adapter-config-nan",
        "adapter_config.json with lora_alpha NaN",
        {},
        None,
        ConfigError,
        2,
        "lora_alpha=nan",
        api=adapter_config_nan_alpha,
    ),
    Case(
        "adapter-weights-nan",
        "an adapter file holding NaN",
        {},
        None,
        AdapterFormatError,
        2,
        "NaN or infinite",
        api=adapter_weights_nan,
    ),
    Case(
        "adapter-weights-inf",
        "an adapter file holding infinity",
        {},
        None,
        AdapterFormatError,
        2,
        "NaN or infinite",
        api=adapter_weights_inf,
    ),
    Case(
        "prompt-weights-nan",
        "a prompt-tuning file holding NaN",
        {},
        None,
        AdapterFormatError,
        2,
        "NaN or infinite",
        api=prompt_weights_nan,
    ),
    Case(
        "adapter-key-base-weight",
        "an adapter file that names a base weight",
        {},
        None,
        AdapterFormatError,
        2,
        "names a weight of the base model",
        api=adapter_names_base_weight,
    ),
    Case(
        "merge-nan",
        "merging an adapter that went NaN in memory",
        {},
        None,
        BrokenAdapterError,
        1,
        "NaN or infinite",
        api=merge_nan_in_memory,
    ),
    Case(
        "max-length-one",
        "max_length 1: no token left to learn",
        {"d.csv": GOOD_CSV},
        train("--data.max_length", "1", "--data.val_size", "0"),
        DataError,
        2,
        "no training example keeps a token",
    ),
    Case(
        "label-nan",
        "a NaN label under label_threshold",
        {"d.csv": "text,score\ngood,0.9\nbad,nan\n"},
        train(
            "--data.mode",
            "classification",
            "--data.label_column",
            "score",
            "--data.label_threshold",
            "0.5",
            "--data.label_words",
            "{'1': yes, '0': no}",
            "--data.val_size",
            "0",
        ),
        DataError,
        2,
        "d.csv:3: label 'nan' is not a number",
    ),
    Case(
        "text-list",
        "a text column holding lists",
        {"d.jsonl": json.dumps({"text": ["a", "b"]}) + "\n"},
        train("--data.val_size", "0", data="d.jsonl"),
        DataError,
        2,
        "d.jsonl:1: column 'text' holds a list",
    ),
    Case(
        "text-mapping",
        "a text column holding objects",
        {"d.jsonl": json.dumps({"text": {"a": 1}}) + "\n"},
        train("--data.val_size", "0", data="d.jsonl"),
        DataError,
        2,
        "column 'text' holds a mapping",
    ),
    Case(
        "label-word-empty",
        "an empty label word",
        {"d.csv": GOOD_CSV},
        train("--data.mode", "classification", "--data.label_words", "{pos: '', neg: no}"),
        ConfigError,
        2,
        "the word for label 'pos' is empty",
    ),
    Case(
        "label-word-blank",
        "a label word of spaces",
        {"d.csv": GOOD_CSV},
        train("--data.mode", "classification", "--data.label_words", "{pos: '  ', neg: no}"),
        ConfigError,
        2,
        "the word for label 'pos' is empty",
    ),
    Case(
        "yaml-duplicate-section",
        "a data: section given twice",
        yaml_job("data: {path: d.csv}\ntrain: {lr: 0.1}\ndata: {path: other.csv}\n"),
        JOB,
        ConfigError,
        2,
        "'data' is given twice",
    ),
    Case(
        "yaml-duplicate-field",
        "a field given twice in one section",
        yaml_job("data: {path: d.csv}\ntrain:\n  lr: 0.1\n  lr: 0.2\n"),
        JOB,
        ConfigError,
        2,
        "'lr' is given twice",
    ),
    Case(
        "resume-changed-alpha",
        "--resume with another lora_alpha",
        {},
        None,
        ConfigError,
        2,
        "adapter.lora_alpha: 8 at the checkpoint, 32 now",
        api=resume_changed_alpha,
    ),
    Case(
        "resume-changed-data",
        "--resume with another data file",
        {},
        None,
        ConfigError,
        2,
        "data.path: ",
        api=resume_changed_data,
    ),
    Case(
        "resume-changed-lr",
        "--resume with another learning rate",
        {},
        None,
        ConfigError,
        2,
        "train.lr: 0.0002 at the checkpoint, 0.5 now",
        api=resume_changed_lr,
    ),
    # second corpus: inputs that exhaust the machine
    Case(
        "regex-backtracking",
        "a target_modules regex that backtracks for ever",
        {},
        None,
        ConfigError,
        2,
        "catastrophic backtracking",
        api=regex_backtracking_from_file,
    ),
    Case(
        "regex-re-backtracking",
        "(.|.)*X, minutes with Python's re",
        {},
        None,
        TargetNotFoundError,
        2,
        "not found in the base model",
        api=regex_re_backtracking_is_fast,
    ),
    Case(
        "yaml-alias-bomb",
        "a YAML alias bomb (a billion laughs)",
        yaml_job(
            "a: &a [x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
                for p, n in zip("abcdefgh", "bcdefghi", strict=True)
            )
        ),
        JOB,
        ConfigError,
        2,
        "expands to more than 100,000 values",
    ),
    Case(
        "config-huge",
        "a 5 MB config file",
        yaml_job("data: {path: d.csv}\n# " + "x" * 5_000_000 + "\n"),
        JOB,
        ConfigError,
        2,
        "bytes are refused",
    ),
    Case(
        "adapter-config-huge",
        "a 5 MB adapter_config.json",
        {},
        None,
        AdapterFormatError,
        2,
        "is refused",
        api=adapter_config_huge,
    ),
    Case(
        "rank-huge",
        "r = 2**40",
        {"d.csv": GOOD_CSV},
        train("--adapter.r", str(2**40)),
        ConfigError,
        2,
        "GiB available; choose a smaller r",
    ),
    Case(
        "adapter-config-rank-huge",
        "an adapter_config.json with r = 2**40",
        {},
        None,
        ConfigError,
        2,
        "choose a smaller r",
        api=adapter_config_huge_rank,
    ),
    Case(
        "virtual-tokens-huge",
        "prompt tuning with 2**40 virtual tokens",
        {"d.csv": GOOD_CSV},
        [
            "train",
            "--model",
            "{model}",
            "--method",
            "prompt_tuning",
            "--adapter.num_virtual_tokens",
            str(2**40),
            "--data.path",
            "{tmp}/d.csv",
            "--output-dir",
            "{tmp}/out",
        ],
        ConfigError,
        2,
        "choose fewer num_virtual_tokens",
    ),
    Case(
        "adapter-name-absolute",
        "an adapter name that is an absolute path",
        {},
        None,
        ConfigError,
        2,
        "contains '.', '/'",
        api=adapter_name_absolute,
    ),
    Case(
        "adapter-name-dotdot",
        "the adapter name '..'",
        {},
        None,
        ConfigError,
        2,
        "adapter name '..'",
        api=adapter_name_dotdot,
    ),
    Case(
        "adapter-name-empty",
        "an empty adapter name",
        {},
        None,
        ConfigError,
        2,
        "adapter name '' is empty",
        api=adapter_name_empty,
    ),
    Case(
        "adapter-name-dotted",
        "the adapter name 'v1.2'",
        {},
        None,
        ConfigError,
        2,
        "adapter name 'v1.2'",
        api=adapter_name_dotted,
    ),
    Case(
        "adapter-name-attribute",
        "an adapter named 'training'",
        {},
        None,
        ConfigError,
        2,
        "is the name of a module attribute",
        api=adapter_name_attribute,
    ),
    # second corpus: exit codes and messages
    Case(
        "config-deep-json",
        "a config nested 100,000 deep",
        {"job.yaml": "[" * 100_000 + "]" * 100_000},
        JOB,
        ConfigError,
        2,
        "nested more than 64 deep",
    ),
    Case(
        "adapter-config-deep",
        "an adapter_config.json nested 100,000 deep",
        {},
        None,
        AdapterFormatError,
        2,
        "nested too deeply",
        api=adapter_config_deep,
    ),
    Case(
        "seed-huge",
        "a seed beyond 64 bits",
        {"d.csv": GOOD_CSV},
        train("--seed", str(2**70)),
        ConfigError,
        2,
        "must be a whole number from 0 to 2**63 - 1",
    ),
    Case(
        "seed-negative",
        "a negative seed",
        {"d.csv": GOOD_CSV},
        train("--seed=-1"),
        ConfigError,
        2,
        "seed=-1 must be a whole number from 0",
    ),
    Case(
        "config-folder",
        "--config pointing at a folder",
        {"conf/x": "x"},
        ["train", "--config", "{tmp}/conf"],
        ConfigError,
        2,
        "is a folder",
    ),
    Case(
        "config-not-utf8",
        "a Latin-1 config file",
        {"job.yaml": b"data: {path: caf\xe9.csv}\n"},
        JOB,
        ConfigError,
        2,
        "is not UTF-8 text",
    ),
    Case(
        "checkpoint-file-size-limit",
        "ulimit -f while writing a checkpoint",
        {},
        None,
        StorageError,
        1,
        "ulimit -f",
        api=checkpoint_file_size_limit,
    ),
    Case(
        "checkpoint-disk-full",
        "the disk fills while torch writes a checkpoint",
        {},
        None,
        StorageError,
        1,
        "training_state",
        api=checkpoint_disk_full,
    ),
    Case(
        "metrics-disk-full",
        "the disk fills while appending to metrics.jsonl",
        {},
        None,
        StorageError,
        1,
        "cannot append to",
        api=metrics_disk_full,
    ),
    Case(
        "parquet-binary-garbage",
        "binary garbage named .parquet",
        {"d.parquet": b"\x00\xff\xfe garbage"},
        train(data="d.parquet"),
        DataError,
        2,
        "d.parquet: cannot read it as parquet",
    ),
    # second corpus: faults
    Case(
        "resume-half-deleted",
        "--resume of a checkpoint killed while being pruned",
        {},
        None,
        TrainingError,
        1,
        "is damaged: trainable.safetensors missing",
        api=resume_half_deleted,
    ),
]


def _prepare(tmp: Path, case: Case, model_dir: Path) -> list[str]:
    for name, content in case.files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return [
        a.replace("{tmp}", str(tmp)).replace("{model}", str(model_dir)) for a in case.argv or []
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(
    case: Case, tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if case.id == "fp16-on-cpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if case.api is not None:
        with pytest.raises(case.error) as info:
            case.api(tmp_path)
        assert type(info.value) is case.error, repr(info.value)
        assert info.value.exit_code == case.code
        assert case.text in str(info.value), str(info.value)
        return
    argv = _prepare(tmp_path, case, model_dir)
    with pytest.raises(case.error) as info:
        main(["--debug", *argv])
    assert type(info.value) is case.error, repr(info.value)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == case.code
    assert case.text in err, err
    assert "Traceback" not in err and "peftkit: error:" in err


def test_unknown_adapter_config_fields_from_a_newer_peft_only_warn(tmp_path: Path) -> None:
    folder = _edit_config(tmp_path, shiny_new_option=3)
    with pytest.warns(UserWarning, match="shiny_new_option"):
        PeftModel.from_pretrained(tiny_model("llama"), folder)


def test_at_least_120_hostile_cases_and_all_documented() -> None:
    from tests.hostile.test_outcomes import OUTCOMES

    assert len(CASES) + len(OUTCOMES) >= 120  # refusals here, right answers in test_outcomes.py
    assert len({c.id for c in CASES}) == len(CASES)
    documented = DOCS.read_text()
    ids = [c.id for c in CASES] + [f.__name__.replace("_", "-") for f in OUTCOMES]
    missing = [i for i in ids if f"`{i}`" not in documented]
    assert not missing, f"add these cases to docs/reliability.md: {missing}"
