"""Which transformers architectures map to which GGUF architecture, and how their tensors are laid
out there.

llama.cpp names tensors its own way (``blk.0.attn_q.weight`` for
``model.layers.0.self_attn.q_proj.weight``) and, for the Llama family, stores the query and key rows
in a different order: transformers rotates the two halves of each head (``rotate_half``), GGML
rotates interleaved pairs, so the rows of each head are reordered to give the same attention. The
name table comes from the ``gguf`` package, which llama.cpp itself maintains; the row order is
:func:`to_gguf_rows`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

__all__ = [
    "GGUF_ARCHITECTURES",
    "GgufArchitecture",
    "architecture_of",
    "gguf_tensor_name",
    "rope_settings",
    "to_gguf_rows",
]


@dataclass(frozen=True)
class GgufArchitecture:
    """How one transformers ``model_type`` is written as GGUF."""

    name: str
    """GGUF's ``general.architecture`` (the prefix of its hyperparameter keys)."""
    interleaved_rope: bool
    """Whether query and key rows are reordered for GGML's interleaved rotary embedding."""


GGUF_ARCHITECTURES: dict[str, GgufArchitecture] = {
    "llama": GgufArchitecture("llama", interleaved_rope=True),  # Llama 1-3, SmolLM, TinyLlama, ...
    # llama.cpp runs Mistral as a Llama
    "mistral": GgufArchitecture("llama", interleaved_rope=True),
}


def architecture_of(config: Any) -> GgufArchitecture:
    """The GGUF architecture of a transformers config, or a :class:`ConfigError` saying which are
    supported."""
    model_type = str(getattr(config, "model_type", "?"))
    arch = GGUF_ARCHITECTURES.get(model_type)
    if arch is None:
        raise ConfigError(
            f"GGUF export supports the model types {', '.join(sorted(GGUF_ARCHITECTURES))}; this model is "
            f"{model_type!r}. Export a merged transformers folder instead (`peftkit merge`) and convert it with "
            f"llama.cpp's convert_hf_to_gguf.py, which knows more architectures"
        )
    kind = rope_settings(config)[0]
    if kind not in ("default", "linear"):
        raise ConfigError(
            f"GGUF export does not write {kind!r} rope scaling (only none or 'linear'); "
            f"convert a merged folder (`peftkit merge`) with llama.cpp's convert_hf_to_gguf.py"
        )
    return arch


def rope_settings(config: Any) -> tuple[str, float, float]:
    """(rope type, base frequency, scaling factor), from ``rope_parameters`` (transformers 5) or the
    older ``rope_theta`` and ``rope_scaling`` attributes."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = str(rope.get("rope_type", rope.get("type", "default")))
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    return kind, float(theta), float(rope.get("factor", 1.0))


@functools.lru_cache(maxsize=8)
def _name_table(arch: str, layers: int) -> Any:
    # Building gguf's table takes ~30 ms: once per architecture and depth, not once per tensor.
    import gguf

    arch_id = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)
    return gguf.get_tensor_name_map(arch_id, layers)


def gguf_tensor_name(config: Any, hf_name: str) -> str:
    """GGUF's name for a transformers parameter name (``model.layers.0.self_attn.q_proj.weight``)."""
    arch = architecture_of(config)
    table = _name_table(arch.name, int(config.num_hidden_layers))
    name = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ConfigError(
            f"no GGUF tensor corresponds to {hf_name!r} in the {arch.name} architecture; "
            f"GGUF export cannot carry it"
        )
    return str(name)


def to_gguf_rows(config: Any, hf_name: str, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` (a weight, or a LoRA ``B``: the output dimension first) in GGUF's row order for
    ``hf_name``.

    For the query and key projections of a Llama-family model, each head's rows ``[x0..x(d/2-1),
    y0..]`` become ``[x0, y0, x1, y1, ...]``; every other tensor is unchanged. A LoRA update ``B @
    A`` follows its weight by reordering ``B`` alone.
    """
    if not architecture_of(config).interleaved_rope:
        return rows
    if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        heads = int(config.num_attention_heads)
    elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    else:
        return rows
    out = rows.shape[0]
    return (
        rows.reshape(heads, 2, out // heads // 2, *rows.shape[1:])
        .transpose(1, 2)
        .reshape(rows.shape)
    )
