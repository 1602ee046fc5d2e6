"""New adapters from existing ones (``add_weighted_adapter``): the layer-wise combination, with the
tensor arithmetic in :mod:`.merging`.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from ..tuners.ia3 import IA3Layer
from ..tuners.lora import LoraLayer
from ..tuners.lora.embedding import LoraEmbedding
from .merging import MIXES, mix
from .state import adapter_layers

COMBINATIONS = ("cat", *MIXES, *(f"{m}_svd" for m in MIXES if m != "linear"), "svd")


def _lora_pair(layer: LoraLayer, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Adapter ``name``'s (A, B) tensors in ``layer``: A is (r, in), B is (out, r)."""
    return layer.factors(name) if isinstance(layer, LoraLayer) else None


@torch.no_grad()
def combine_ia3(model: nn.Module, sources: list[str], weights: list[float], target: str) -> None:
    """Fill the (already created) IA3 adapter ``target`` with ``sum(w * l)`` over the sources each
    layer has."""
    for _, layer in adapter_layers(model):
        new = layer.vector(target) if isinstance(layer, IA3Layer) else None
        if new is None:
            continue
        new.zero_()
        for name, weight in zip(sources, weights, strict=True):
            source = cast(IA3Layer, layer).vector(name)
            if source is not None:
                new += source * weight


@torch.no_grad()
def combine_lora(
    model: nn.Module,
    sources: list[str],
    weights: list[float],
    target: str,
    combination: str,
    rank: int,
    density: float = 1.0,
    sign_method: str = "total",
) -> None:
    """Fill the (already created, rank ``rank``, scaling 1) LoRA adapter ``target`` from
    ``sources``.

    PEFT's semantics: ``cat`` stacks the adapters, so the update is exactly ``sum(w * scaling * B @
    A)``; ``linear``, ``ties``, ``dare_*`` and ``magnitude_prune`` mix the A and the B matrices
    separately with ``sqrt(|w * scaling|)`` each (the sign on A); the ``*_svd`` variants (and
    ``svd``) mix the dense updates and keep the top ``rank`` singular directions.
    """
    for _, layer in adapter_layers(model):
        if not isinstance(layer, LoraLayer) or _lora_pair(layer, target) is None:
            continue
        new_a, new_b = cast(tuple[torch.Tensor, torch.Tensor], _lora_pair(layer, target))
        present = [
            (n, w)
            for n, w in zip(sources, weights, strict=True)
            if _lora_pair(layer, n) is not None
        ]
        pairs = [cast(tuple[torch.Tensor, torch.Tensor], _lora_pair(layer, n)) for n, _ in present]
        if combination == "cat":
            a = torch.cat(
                [p[0] * w * layer.scaling[n] for p, (n, w) in zip(pairs, present, strict=True)],
                dim=0,
            )
            b = torch.cat([p[1] for p in pairs], dim=1)
        elif combination in MIXES:
            factors = [w * layer.scaling[n] for n, w in present]
            weights_a = torch.tensor([math.copysign(math.sqrt(abs(f)), f) for f in factors])
            weights_b = torch.tensor([math.sqrt(abs(f)) for f in factors])
            a = mix([p[0] for p in pairs], weights_a, combination, density, sign_method)
            b = mix([p[1] for p in pairs], weights_b, combination, density, sign_method)
        else:
            how = "linear" if combination == "svd" else combination.removesuffix("_svd")
            deltas = [layer.delta_weight(n) for n, _ in present]  # base layout
            delta = mix(deltas, torch.tensor([w for _, w in present]), how, density, sign_method)
            if getattr(layer, "fan_in_fan_out", False) or isinstance(layer, LoraEmbedding):
                delta = delta.T  # (out, in) / (D, V), the layout B @ A has
            u, sigma, vh = torch.linalg.svd(delta.float(), full_matrices=True)
            b, a = u[:, :rank] @ torch.diag(sigma[:rank]), vh[:rank, :]
        new_a.zero_()
        new_b.zero_()
        new_a[: a.shape[0], :] = a.to(new_a.dtype)
        new_b[:, : b.shape[1]] = b.to(new_b.dtype)
