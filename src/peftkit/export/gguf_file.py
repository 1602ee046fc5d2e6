"""Writing a GGUF file atomically, and the tensor encodings peftkit writes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..common.files import atomic_write
from ..errors import ConfigError

__all__ = ["ENCODINGS", "check_encoding", "encode", "write_gguf"]

ENCODINGS = ("f32", "f16", "q8_0", "q4_0")
"""Tensor encodings of an export: ``f32`` and ``f16`` keep the weights (to fp16 rounding), ``q8_0``
and ``q4_0`` are llama.cpp's 8- and 4-bit block quantizations."""


def check_encoding(encoding: str, allowed: tuple[str, ...] = ENCODINGS) -> None:
    if encoding not in allowed:
        raise ConfigError(f"unknown GGUF encoding {encoding!r}; choose one of {', '.join(allowed)}")


def encode(tensor: torch.Tensor, encoding: str) -> tuple[np.ndarray, Any]:
    """``(data, raw dtype)`` for ``GGUFWriter.add_tensor``: vectors stay f32 (llama.cpp's norms and
    biases are), and a matrix whose rows do not split into whole quantization blocks falls back to
    f16, as llama.cpp's own quantizer does."""
    import gguf

    data = tensor.detach().to(torch.float32).cpu().numpy()
    if data.ndim < 2 or encoding == "f32":
        return data, None
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(
        encoding
    )
    if qtype is None or data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf(
    path: str | os.PathLike[str],
    arch: str,
    metadata: Callable[[Any], None],
    tensors: dict[str, tuple[np.ndarray, Any]],
) -> None:
    """Write a GGUF file of architecture ``arch``: ``metadata(writer)`` adds the key/values, then
    the tensors.

    Written beside ``path`` and renamed over it, so an interrupted export never leaves a truncated
    file that llama.cpp would fail on later.
    """
    import gguf

    with atomic_write(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        metadata(writer)
        for name, (data, raw_dtype) in tensors.items():
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
