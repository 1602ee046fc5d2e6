"""LoRA+ (Hayou et al., 2024): B learns faster than A. With ``lr`` for A, B's learning rate is
``lr * loraplus_lr_ratio`` (the paper suggests 16), LoRA on embeddings gets its own small rate;
PEFT's ``create_loraplus_optimizer`` groups, reproduced by asking the layers which tensor is which.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ..surgery import adapter_layers
from ..tuners.lora import LoraLayer
from ..tuners.lora.embedding import LoraEmbedding

__all__ = ["create_loraplus_optimizer", "loraplus_groups"]

_NORMS = (nn.LayerNorm,)  # transformers' ALL_LAYERNORM_LAYERS: their weights are not decayed


def loraplus_groups(
    model: nn.Module,
    lr: float,
    loraplus_lr_ratio: float,
    loraplus_lr_embedding: float = 1e-6,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` in PEFT's four LoRA+ groups: A factors and every other
    matrix at ``lr``; LoRA embedding tensors at ``loraplus_lr_embedding``; B factors and 1-D tensors
    (biases, DoRA magnitudes) at ``lr * loraplus_lr_ratio``, decayed unless a bias or a norm's."""
    embedding, b_factors = set(), set()
    for _, layer in adapter_layers(model):
        if isinstance(layer, LoraEmbedding):
            embedding |= {id(p) for _, _, p in _all_adapter_parameters(layer)}
        elif isinstance(layer, LoraLayer):
            b_factors |= {
                id(pair[1])
                for name in layer.adapter_names
                if (pair := layer.factors(name)) is not None
            }
    no_decay = {
        id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)
    }
    groups: dict[str, list[nn.Parameter]] = {"a": [], "embedding": [], "b": [], "b_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in embedding:
            groups["embedding"].append(param)
        elif id(param) in b_factors or param.ndim == 1:
            decayed = id(param) not in no_decay and "bias" not in name.rsplit(".", 1)[-1]
            groups["b" if decayed else "b_no_decay"].append(param)
        else:
            groups["a"].append(param)
    return [
        {"params": groups["a"], "weight_decay": weight_decay, "lr": lr},
        {"params": groups["embedding"], "weight_decay": weight_decay, "lr": loraplus_lr_embedding},
        {"params": groups["b"], "weight_decay": weight_decay, "lr": lr * loraplus_lr_ratio},
        {"params": groups["b_no_decay"], "weight_decay": 0.0, "lr": lr * loraplus_lr_ratio},
    ]


def _all_adapter_parameters(layer: LoraLayer) -> list[tuple[str, str, nn.Parameter]]:
    return [item for name in layer.adapter_names for item in layer.adapter_parameters(name)]


def create_loraplus_optimizer(
    model: nn.Module, optimizer_cls: Any, *, lr: float, loraplus_lr_ratio: float, **kwargs: Any
) -> torch.optim.Optimizer:
    """An optimizer over ``model``'s trainable parameters in LoRA+'s groups (PEFT's function and
    arguments: ``loraplus_lr_embedding`` (default 1e-6) and ``loraplus_weight_decay`` (default 0)
    among ``kwargs``, the rest passed to ``optimizer_cls``)."""
    groups = loraplus_groups(
        model,
        lr,
        loraplus_lr_ratio,
        kwargs.pop("loraplus_lr_embedding", 1e-6),
        kwargs.pop("loraplus_weight_decay", 0.0),
    )
    return cast(torch.optim.Optimizer, optimizer_cls(groups, lr=lr, **kwargs))
