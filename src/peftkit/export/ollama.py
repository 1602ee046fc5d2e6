"""Ollama ``Modelfile``s for exported GGUF files (``ollama create NAME -f FILE``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..common.files import write_text_atomic

__all__ = ["modelfile_path", "write_modelfile"]


def modelfile_path(gguf_path: str | os.PathLike[str]) -> Path:
    """``OUT.gguf`` -> ``OUT.Modelfile`` beside it."""
    return Path(gguf_path).with_suffix(".Modelfile")


def _relative(target: str | os.PathLike[str], folder: Path) -> str:
    # Ollama reads paths relative to the Modelfile's folder; keep the pair movable together.
    target = Path(target).resolve()
    return f"./{target.name}" if target.parent == folder.resolve() else str(target)


def write_modelfile(
    gguf_path: str | os.PathLike[str],
    base_gguf: str | os.PathLike[str] | None = None,
    stop: list[str] | None = None,
) -> Path:
    """Write ``OUT.Modelfile`` for ``gguf_path``: a model (``FROM`` it) or, given ``base_gguf``, a
    LoRA adapter (``FROM`` the base, ``ADAPTER`` it). Ollama takes the chat template from the GGUF
    file's own ``tokenizer.chat_template``; ``stop`` adds the strings that end an answer."""
    path = modelfile_path(gguf_path)
    folder = path.parent
    lines = ["# ollama create NAME -f " + path.name]
    if base_gguf is None:
        lines.append(f"FROM {_relative(gguf_path, folder)}")
    else:
        lines += [f"FROM {_relative(base_gguf, folder)}", f"ADAPTER {_relative(gguf_path, folder)}"]
    lines += [f'PARAMETER stop "{word}"' for word in stop or []]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
