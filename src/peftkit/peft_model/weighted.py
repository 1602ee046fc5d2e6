"""Adapters rewritten as other LoRA adapters: a weighted combination of several (PEFT's
``add_weighted_adapter``), and a PiSSA/OLoRA adapter as the plain LoRA it amounts to on the original
weights.

The tensor arithmetic of the combinations is in :mod:`peftkit.surgery.merging`; the layers are
filled by :func:`peftkit.surgery.combine_lora`. Here: what the combined adapter's config is, checked
whole first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

from ..config import IA3Config, LoraConfig, PeftConfig
from ..errors import ConfigError
from ..surgery import COMBINATIONS
from ..surgery.merging import MIXES
from ..tuners.lora import rank_axis
from . import format as fmt

__all__ = ["WeightedPlan", "check_no_shared_copies", "plan", "plan_ia3", "to_plain_lora"]


@dataclass(frozen=True)
class WeightedPlan:
    """The combined adapter: its config, how it is combined, and its rank."""

    config: LoraConfig
    combination: str
    rank: int
    density: float


def check_no_shared_copies(shared: Sequence[str]) -> None:
    """PEFT's rule and words: full copies (modules_to_save) of one module cannot be weighted
    together."""
    if shared:
        raise ConfigError(
            f"Cannot add weighted adapters if they target the same module with modules_to_save, but "
            f"found {len(shared)} such instance(s). Those modules: {', '.join(shared)}"
        )


def plan_ia3(configs: Sequence[PeftConfig], weights: Sequence[float]) -> IA3Config:
    """PEFT's IA3 combination: the new vectors are ``sum(w * l)``, on the union of the adapters'
    targets.

    Raises:
        ConfigError: a weight count that does not match, or target lists mixed with regex strings.
    """
    if len(weights) != len(configs) or not configs:
        raise ConfigError(
            f"give one weight per adapter: {len(configs)} adapters, {len(weights)} weights"
        )
    ia3 = [cast(IA3Config, c) for c in configs]
    fields = {}
    for name in ("target_modules", "feedforward_modules"):
        values = [getattr(c, name) for c in ia3]
        if len({isinstance(v, str) for v in values}) > 1:
            raise ConfigError(
                "All adapter configs should have the same type for target and feedforward modules "
                f"(PEFT's rule): {name} mixes lists and regex strings"
            )
        strings = all(isinstance(v, str) for v in values)
        fields[name] = (
            "|".join(f"({v})" for v in values)
            if strings
            else set().union(*(v or () for v in values))
        )
    return cast(IA3Config, ia3[0].replace(**fields))


def plan(
    configs: Sequence[PeftConfig],
    weights: Sequence[float],
    combination_type: str,
    svd_rank: int | None,
    density: float | None,
    majority_sign_method: str,
) -> WeightedPlan:
    """Check a weighted combination (every problem at once) and work out the new adapter's config.

    Raises:
        ConfigError: mismatched weights or ranks, an unknown combination, or adapters that are not
            plain LoRA.
    """
    problems = []
    if len(weights) != len(configs) or not configs:
        problems.append(
            f"give one weight per adapter: {len(configs)} adapters, {len(weights)} weights"
        )
    if combination_type not in COMBINATIONS:
        problems.append(
            f"combination_type={combination_type!r} is not supported; expected one of "
            f"{', '.join(COMBINATIONS)}"
        )
    pruning = combination_type not in ("linear", "cat", "svd")
    if pruning and not (isinstance(density, (int, float)) and 0 <= density <= 1):
        problems.append(
            f"combination_type={combination_type!r} needs density in [0, 1], got {density!r}"
        )
    if majority_sign_method not in ("total", "frequency"):
        problems.append(
            f"majority_sign_method={majority_sign_method!r}; expected total or frequency"
        )
    if not all(isinstance(c, LoraConfig) and not c.use_dora for c in configs):
        problems.append(
            "add_weighted_adapter combines plain LoRA adapters, or IA3 adapters, only (not DoRA, "
            "prompt methods or a mix)"
        )
    if problems:
        raise ConfigError(problems)
    loras = [cast(LoraConfig, c) for c in configs]
    ranks = [max(c.r, *c.rank_pattern.values()) if c.rank_pattern else c.r for c in loras]
    combination = "linear" if len(loras) == 1 else combination_type
    if combination in MIXES and len(set(ranks)) != 1:
        raise ConfigError(
            f"combination_type={combination!r} needs equal ranks, got {ranks}; use 'cat' or 'svd'"
        )
    rank = (
        ranks[0]
        if combination in MIXES
        else sum(ranks)
        if combination == "cat"
        else svd_rank or max(ranks)
    )
    targets = [c.target_modules for c in loras]
    if any(isinstance(t, str) for t in targets) and not all(isinstance(t, str) for t in targets):
        raise ConfigError(
            "the adapters mix list and regex target_modules; PEFT cannot combine those either"
        )
    merged_targets: set[str] | str = (
        "|".join(f"({t})" for t in cast(list[str], targets))
        if isinstance(targets[0], str)
        else {m for t in targets for m in cast(set[str], t)}
    )
    config = cast(
        LoraConfig,
        loras[0].replace(
            r=rank,
            lora_alpha=rank,
            target_modules=merged_targets,
            rank_pattern={},
            alpha_pattern={},
        ),
    )
    return WeightedPlan(config, combination, rank, 1.0 if density is None else float(density))


def to_plain_lora(
    config: PeftConfig, tensors: dict[str, torch.Tensor], initial: str | os.PathLike[str]
) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
    """Turn a PiSSA/OLoRA adapter into a LoRA adapter on the original weights.

    ``W = W_res + s B0 A0`` and the trained model is ``W_res + s B A``, so the update on ``W`` is
    ``s (B A - B0 A0) = s [B | -B0] [A | A0]``: rank doubles, and alpha doubles so the scaling
    stays.
    """
    if not isinstance(config, LoraConfig):
        raise ConfigError("path_initial_model_for_weight_conversion applies to LoRA adapters only")
    if config.use_rslora and (config.rank_pattern or config.alpha_pattern):
        raise ConfigError(
            "Passing `path_initial_model_for_weight_conversion` to `save_pretrained` is not supported "
            "when using `rank_pattern` and `alpha_pattern` at the same time as `use_rslora=True`: "
            "the converted adapter's scaling cannot be written per layer"
        )
    start = fmt.load_adapter_weights(initial)
    converted = dict(tensors)
    for key, tensor in tensors.items():
        if key not in start:
            continue
        axis = rank_axis(key)
        if axis is not None:  # A: [A | A0] over the ranks (axis 0); B: [B | -B0] (axis 1)
            sign = -1 if axis == 1 else 1
            converted[key] = torch.cat([tensor, sign * start[key].to(tensor)], dim=axis)
    new = config.replace(
        init_lora_weights=True,
        r=config.r * 2,
        lora_alpha=config.lora_alpha * (2**0.5 if config.use_rslora else 2),
        rank_pattern={k: 2 * v for k, v in config.rank_pattern.items()},
        alpha_pattern={k: 2 * v for k, v in config.alpha_pattern.items()},
    )
    return new, converted
