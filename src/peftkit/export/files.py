"""What ``peftkit export`` does with file arguments: load the base (and adapter) they name, export,
explain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["export_files"]

TARGETS = ("gguf-lora", "gguf")


def _check_output(out: str, inputs: list[str]) -> None:
    if Path(out).suffix != ".gguf":
        raise ConfigError(
            f"the output {out!r} must be a .gguf file, e.g. {Path(out).stem or 'model'}.gguf"
        )
    for given in inputs:
        if Path(given).is_file() and Path(given).resolve() == Path(out).resolve():
            raise ConfigError(
                f"the output {out} is the input {given}; writing there would replace it. "
                f"Choose another name, e.g. {Path(out).stem}-export.gguf"
            )


def _base_of(adapter: str, base: str | None) -> str:
    """The base to load under ``adapter``: ``base`` if given, else the one its config records (the
    installed packaged copy when it names a packaged model's hub id)."""
    from ..integrations.models import packaged_alias
    from ..peft_model.format import read_adapter_config

    if base:
        return base
    recorded = read_adapter_config(adapter).base_model_name_or_path
    if not recorded:
        raise ConfigError(
            f"the adapter {adapter} does not record its base model; pass it with --base MODEL"
        )
    return packaged_alias(recorded) or recorded


def _loaded(base: str, adapter: str | None) -> tuple[Any, Any]:
    from ..integrations.models import load_model, load_tokenizer
    from ..peft_model.model import PeftModel

    tokenizer = load_tokenizer(base)
    model = load_model(base, task="CAUSAL_LM")
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), tokenizer


_Q4_NOTE = (
    "note: q4_0 rounds weights in steps larger than most of an adapter's update; on the demo the merged q4_0 "
    "file scored like the base model (0.735 against 0.830). Prefer --quant q8_0, or --to gguf-lora on a "
    "quantized base, where llama.cpp adds the update in float\n"
)


def _export_lora(
    adapter: str, out: str, base: str | None, encoding: str | None, adapter_name: str | None
) -> str:
    from ..integrations.models import source_gguf
    from . import export_gguf_lora, write_modelfile

    base_ref = _base_of(adapter, base)
    model, _ = _loaded(base_ref, adapter)
    export_gguf_lora(model, out, adapter_name=adapter_name, encoding=encoding or "f32")
    base_file = source_gguf(base_ref)
    if base_file is None:
        return (
            f"wrote {out}. Run it on a GGUF of {base_ref} (export one with "
            f"`peftkit export {base_ref} --to gguf base.gguf`): llama-cli -m base.gguf --lora {out}"
        )
    modelfile = write_modelfile(out, base_gguf=base_file)
    return (
        f"wrote {out} and {modelfile}. Run it with llama.cpp: llama-cli -m {base_file} --lora {out}\n"
        f"or with Ollama: ollama create my-model -f {modelfile}"
    )


def _export_model(
    inputs: list[str], out: str, encoding: str | None, adapter_name: str | None
) -> str:
    from ..integrations.models import source_gguf
    from . import export_gguf
    from .ollama import modelfile_path

    model, tokenizer = _loaded(inputs[0], inputs[1] if len(inputs) == 2 else None)
    if adapter_name and hasattr(model, "set_adapter"):
        model.set_adapter(adapter_name)
    export_gguf(
        model,
        tokenizer,
        out,
        encoding=encoding or "f16",
        tokenizer_gguf=source_gguf(inputs[0]),
        name=" + ".join(inputs),
    )
    modelfile = modelfile_path(out)
    note = _Q4_NOTE if encoding == "q4_0" and len(inputs) == 2 else ""
    return (
        f"{note}wrote {out} and {modelfile}. Run it with llama.cpp: llama-cli -m {out}\n"
        f"or with Ollama: ollama create my-model -f {modelfile}"
    )


def export_files(
    to: str,
    inputs: list[str],
    out: str,
    base: str | None = None,
    encoding: str | None = None,
    adapter_name: str | None = None,
) -> str:
    """Export from files: ``to="gguf-lora"`` with ``inputs=[ADAPTER]``, ``to="gguf"`` with
    ``[BASE]`` or ``[BASE, ADAPTER]``. Returns what to tell the user (the files written and how to
    run them)."""
    if to not in TARGETS:
        raise ConfigError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    usage = (
        "ADAPTER --to gguf-lora OUT.gguf"
        if to == "gguf-lora"
        else "BASE [ADAPTER] --to gguf OUT.gguf"
    )
    if len(inputs) != 1 + (to == "gguf" and len(inputs) == 2):
        raise ConfigError(
            f"`peftkit export {usage}` takes {'1' if to == 'gguf-lora' else '1 or 2'} input path(s); "
            f"got {len(inputs)}: {' '.join(inputs)}"
        )
    _check_output(out, [*inputs, *([base] if base else [])])
    if to == "gguf-lora":
        return _export_lora(inputs[0], out, base, encoding, adapter_name)
    return _export_model(inputs, out, encoding, adapter_name)
