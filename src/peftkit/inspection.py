"""What a model offers to adapt: layer names, suggested targets, and trainable counts per method."""

from __future__ import annotations

from collections import defaultdict
from typing import cast

import torch
from torch import nn

from . import surgery
from .config import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
from .errors import ConfigError, TargetNotFoundError
from .methods import methods
from .surgery import DEFAULT_TARGET_MODULES, linear_types
from .tuners.prompt.model import build_prompt_module

__all__ = [
    "count_parameters",
    "describe_model",
    "lora_parameter_count",
    "method_parameter_counts",
    "prompt_parameter_counts",
]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), shared weights counted once."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def _layer_shapes(model: nn.Module) -> dict[str, list[tuple[int, int]]]:
    """Leaf name -> (in, out) of every linear-like layer with that name."""
    types = linear_types()
    shapes: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for name, module in model.named_modules():
        if isinstance(module, types):
            out_f, in_f = cast(torch.Tensor, module.weight).shape
            if not isinstance(module, nn.Linear):  # Conv1D stores (in, out)
                in_f, out_f = out_f, in_f
            shapes[name.rsplit(".", 1)[-1]].append((int(in_f), int(out_f)))
    return shapes


def lora_parameter_count(model: nn.Module, targets: list[str], r: int) -> int:
    """Trainable LoRA parameters for ``targets`` (leaf names) at rank ``r``: r * (in + out) per
    layer."""
    shapes = _layer_shapes(model)
    return sum(r * (i + o) for t in targets for i, o in shapes.get(t, []))


def describe_model(model: nn.Module, r: int = 8) -> str:
    """A plain-text report: adaptable layers, default targets, and parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    shapes = _layer_shapes(model)
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    lines = [
        f"{type(model).__name__} ({model_type}), {total:,d} parameters",
        "",
        "Linear layers by name:",
    ]
    for name, items in sorted(shapes.items()):
        in_f, out_f = items[0]
        lines.append(f"  {name:<24} x{len(items):<3} in={in_f:<6} out={out_f:<6}")
    default = DEFAULT_TARGET_MODULES.get(str(model_type))
    lines += [
        "",
        f"Default target_modules: {default or 'none known; pass target_modules'}",
        "",
        f"LoRA (r={r}) trainable parameters:",
    ]
    # a regex default is not counted here
    choices = {"default": default if isinstance(default, list) else []}
    attention = [n for n in shapes if n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if attention:
        choices["attention (q,k,v,o)"] = attention
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    head_name = next(
        (n.rsplit(".", 1)[-1] for n, m in model.named_modules() if head is not None and m is head),
        None,
    )
    choices["all-linear"] = [n for n in shapes if n != head_name]
    for label, targets in choices.items():
        count = lora_parameter_count(model, targets, r)
        lines.append(f"  {label:<22} {count:>12,d}  ({100 * count / max(total, 1):.3f}%)")
    lines += ["", f"Prompt methods ({VIRTUAL_TOKENS} virtual tokens) trainable parameters:"]
    for label, count in prompt_parameter_counts(model).items():
        lines.append(f"  {label:<22} {count:>12,d}  ({100 * count / max(total, 1):.3f}%)")
    lines += [
        "",
        "Layer methods with their default settings (every registered method), trainable parameters:",
    ]
    for name, found in method_parameter_counts(model).items():
        shown = (
            f"{found:>12,d}  ({100 * found / max(total, 1):.3f}%)"
            if isinstance(found, int)
            else found
        )
        lines.append(f"  {name:<22} {shown}")
    return "\n".join(lines)


_PROBE = "inspect-probe"


def method_parameter_counts(model: nn.Module) -> dict[str, int | str]:
    """The trainable parameters each registered layer method adds to ``model`` with its config's
    defaults, counted by placing the adapter and taking it out again (the model is left as it was);
    where the defaults do not fit the model, why not."""
    counts: dict[str, int | str] = {}
    for method in methods():
        if method.inject is None:
            continue
        try:
            method.inject(model, method.config_class(), _PROBE)
            counts[method.name] = sum(
                p.numel() for _, _, p in surgery.adapter_parameters(model, _PROBE)
            )
        except (ConfigError, TargetNotFoundError):
            counts[method.name] = "its defaults name no layer of this model: set target_modules"
        finally:
            surgery.delete_adapter(model, _PROBE)
    return counts


VIRTUAL_TOKENS = 20


def prompt_parameter_counts(
    model: nn.Module, num_virtual_tokens: int = VIRTUAL_TOKENS
) -> dict[str, int]:
    """Trainable parameters of each prompt method with PEFT's defaults, counted on the modules
    themselves."""

    configs = {
        "prompt tuning": PromptTuningConfig(num_virtual_tokens=num_virtual_tokens),
        "p-tuning (MLP)": PromptEncoderConfig(num_virtual_tokens=num_virtual_tokens),
        "prefix tuning": PrefixTuningConfig(num_virtual_tokens=num_virtual_tokens),
    }
    counts = {}
    for label, config in configs.items():
        try:
            module = build_prompt_module(model, config)
        except ConfigError:  # a model whose config lacks the shape fields: leave the method out
            continue
        counts[label] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return counts
