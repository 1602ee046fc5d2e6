"""A whole model (a base, or a base with its adapters merged) as a GGUF file for llama.cpp, Ollama
and LM Studio.

The file carries the architecture's hyperparameters, the tokenizer and chat template, and every
weight in GGUF's names and row order (:mod:`.architectures`), encoded as f32, f16, q8_0 or q4_0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .architectures import architecture_of, gguf_tensor_name, rope_settings, to_gguf_rows
from .gguf_file import check_encoding, encode, write_gguf
from .ollama import write_modelfile
from .vocab import copy_tokenizer, write_tokenizer

__all__ = ["export_gguf"]


def _file_type(encoding: str) -> int:
    import gguf

    return int(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        }[encoding]
    )


def write_hyperparameters(writer: Any, config: Any, encoding: str) -> None:
    """The ``<arch>.*`` keys llama.cpp builds the graph from, read off a transformers config."""
    import gguf

    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    kind, theta, factor = rope_settings(config)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(theta)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(_file_type(encoding))


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """GGUF name -> weight for a plain transformers model (no adapter layers left in it)."""
    config = model.config
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        # llama.cpp falls back to token_embd when output.weight is absent
        state.pop("lm_head.weight", None)
    return {
        gguf_tensor_name(config, key): to_gguf_rows(config, key, value)
        for key, value in state.items()
    }


def export_gguf(
    model: Any,
    tokenizer: Any,
    path: str | os.PathLike[str],
    encoding: str = "f16",
    tokenizer_gguf: str | os.PathLike[str] | None = None,
    name: str | None = None,
    modelfile: bool = True,
) -> Path:
    """Write ``model`` as a GGUF model file (and an Ollama ``Modelfile`` beside it).

    Args:
        model: a transformers model, or a :class:`~peftkit.PeftModel`, whose adapters are merged
            first (in place: the model is unloaded, as :meth:`~peftkit.PeftModel.merge_and_unload`
            does).
        tokenizer: the model's transformers tokenizer (for the chat template and, without
            ``tokenizer_gguf``, the vocabulary).
        path: the ``.gguf`` file to write (replaced atomically).
        encoding: ``f32``, ``f16`` (default), ``q8_0`` or ``q4_0``; vectors (norms) always stay f32.
        tokenizer_gguf: the GGUF file the base model came from: its tokenizer keys are copied as
            they are, so llama.cpp tokenizes exactly as with the original file.
        name: ``general.name`` of the file.
        modelfile: also write ``OUT.Modelfile`` for ``ollama create``.

    Returns:
        The path written.

    Raises:
        ConfigError: an architecture without a GGUF mapping here, an unknown encoding, or a
            tokenizer whose size does not match the embedding.
    """
    check_encoding(encoding)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    config = model.config
    arch = architecture_of(config)
    tensors = {key: encode(value, encoding) for key, value in model_tensors(model).items()}

    def metadata(writer: Any) -> None:
        writer.add_name(name or str(getattr(config, "_name_or_path", "") or arch.name))
        write_hyperparameters(writer, config, encoding)
        if tokenizer_gguf is not None:
            copy_tokenizer(writer, Path(tokenizer_gguf), int(config.vocab_size))
        else:
            write_tokenizer(writer, tokenizer, int(config.vocab_size))
        writer.add_quantization_version(2)

    write_gguf(path, arch.name, metadata, tensors)
    if modelfile:
        eos = getattr(tokenizer, "eos_token", None)
        write_modelfile(path, stop=[eos] if eos else None)
    return Path(path)
