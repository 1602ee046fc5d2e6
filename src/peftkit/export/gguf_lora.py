"""A LoRA adapter as a GGUF LoRA file: what llama.cpp loads with ``--lora`` and Ollama with
``ADAPTER``.

The file holds, for each adapted weight ``W`` (GGUF name ``blk.N.attn_q.weight``), the factors
``blk.N.attn_q.weight.lora_a`` (r, in) and ``.lora_b`` (out, r) in PEFT's own orientation, and the
keys ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``. llama.cpp scales
every update by ``alpha / r`` of that layer; where peftkit's scaling differs (rsLoRA,
``alpha_pattern``) the difference is folded into ``B``, so the update llama.cpp adds is exactly
``scaling * B @ A``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import torch

from ..config import AdaLoraConfig, LoraConfig
from ..errors import ConfigError
from ..surgery import adapter_layers
from ..tuners.lora import LoraLinear
from ..tuners.lora.embedding import LoraEmbedding
from ..tuners.modules_to_save import ModulesToSaveWrapper
from .architectures import architecture_of, gguf_tensor_name, to_gguf_rows
from .gguf_file import check_encoding, encode, write_gguf

__all__ = ["export_gguf_lora"]

_MERGE_INSTEAD = "export the merged model instead: peftkit export BASE ADAPTER --to gguf OUT.gguf"


def _check_exportable(config: Any, name: str) -> LoraConfig:
    if not isinstance(config, LoraConfig) or isinstance(config, AdaLoraConfig):
        raise ConfigError(
            f"adapter {name!r} is {config.peft_type_name}; llama.cpp applies only LoRA adapters. "
            f"For prompt tuning, p-tuning and prefix tuning there is no GGUF form; for IA3, "
            f"AdaLoRA, LoHa, LoKr and OFT, {_MERGE_INSTEAD}"
        )
    problems = []
    if config.use_dora:
        problems.append("use_dora=True (llama.cpp has no DoRA magnitude vector)")
    if config.lora_bias:
        problems.append("lora_bias=True (llama.cpp's LoRA has no bias)")
    if config.modules_to_save:
        problems.append(
            f"modules_to_save={config.modules_to_save} (fully trained copies of layers)"
        )
    if problems:
        raise ConfigError(
            f"adapter {name!r} cannot be a GGUF LoRA file: {'; '.join(problems)}. {_MERGE_INSTEAD}"
        )
    return config


def _factors(
    layer: LoraLinear, name: str, alpha: float, config: Any, weight_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B scaled so that llama.cpp's ``alpha / r`` gives peftkit's scaling, in GGUF's row
    order."""
    a, b = cast(tuple[torch.Tensor, torch.Tensor], layer.factors(name))
    a, b = a.detach().float(), b.detach().float()  # (r, in), (out, r)
    # llama.cpp: scale = alpha / r, or 1 when alpha is 0
    wanted_by_llama = alpha / layer.r[name] if alpha else 1.0
    b = b * (layer.scaling[name] / wanted_by_llama)
    return a, to_gguf_rows(config, weight_name, b)


def lora_tensors(base: torch.nn.Module, name: str, alpha: float) -> dict[str, torch.Tensor]:
    """GGUF name -> factor for every layer adapter ``name`` adapts in ``base`` (the model under the
    wrapper)."""
    config = base.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    tensors: dict[str, torch.Tensor] = {}
    for key, layer in adapter_layers(base):
        if isinstance(layer, ModulesToSaveWrapper) or name not in layer.adapter_names:
            continue
        if isinstance(layer, LoraEmbedding):
            raise ConfigError(
                f"adapter {name!r} adapts the embedding {key!r}, which this export does not write "
                f"(with tied embeddings llama.cpp would apply it to the output layer too); "
                f"{_MERGE_INSTEAD}"
            )
        if not isinstance(layer, LoraLinear) or layer.fan_in_fan_out:
            raise ConfigError(
                f"adapter {name!r} adapts {key!r} ({type(layer.base_layer).__name__}), which has no "
                f"GGUF LoRA form here; {_MERGE_INSTEAD}"
            )
        if tied and key.split(".")[-1] == "lm_head":
            raise ConfigError(
                f"adapter {name!r} adapts lm_head, which this model ties to its embedding; "
                f"llama.cpp has no separate output weight to apply it to. {_MERGE_INSTEAD}"
            )
        weight_name = f"{key}.weight"
        target = gguf_tensor_name(config, weight_name)
        a, b = _factors(layer, name, alpha, config, weight_name)
        tensors[f"{target}.lora_a"], tensors[f"{target}.lora_b"] = a, b
    if not tensors:
        raise ConfigError(f"adapter {name!r} adapts no layer of this model; nothing to export")
    return tensors


def export_gguf_lora(
    model: Any, path: str | os.PathLike[str], adapter_name: str | None = None, encoding: str = "f32"
) -> Path:
    """Write one LoRA adapter of ``model`` (a :class:`~peftkit.PeftModel`) as a GGUF LoRA file for
    llama.cpp.

    Args:
        model: the base model with the adapter loaded, unmerged or merged (the factors are the
            same).
        path: the ``.gguf`` file to write (replaced atomically).
        adapter_name: which adapter; the active one by default.
        encoding: ``f32`` (default, exact) or ``f16`` for the factors; llama.cpp applies either on
            top of any base quantization.

    Returns:
        The path written.

    Raises:
        ConfigError: an adapter llama.cpp cannot apply (prompt methods, IA3, DoRA,
            ``modules_to_save``, LoRA on embeddings or a tied ``lm_head``), or an architecture
            without a GGUF mapping here; the message says to export the merged model instead where
            that works.
    """
    check_encoding(encoding, ("f32", "f16"))
    name = adapter_name or model.active_adapter
    config = _check_exportable(model.peft_config[name], name)
    base = model.get_base_model()
    arch = architecture_of(base.config)
    alpha = float(config.lora_alpha)
    tensors = {
        key: encode(value, encoding) for key, value in lora_tensors(base, name, alpha).items()
    }

    def metadata(writer: Any) -> None:
        import gguf

        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(f"{config.base_model_name_or_path or 'model'} + LoRA {name}")

    write_gguf(path, arch.name, metadata, tensors)
    return Path(path)
