"""PEFT's per-method lookup tables (``peft.mapping``), for code written against them.

``PEFT_TYPE_TO_CONFIG_MAPPING`` gives each method's config class, ``PEFT_TYPE_TO_PREFIX_MAPPING`` the prefix of
its layer tensors' names (layer methods only), and ``PEFT_TYPE_TO_TUNER_MAPPING`` a description of how the
method adapts a model, with the attributes PEFT code reads from PEFT's tuner classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import CONFIG_CLASSES, PeftConfig, PeftType
from .tuners.ia3 import IA3Linear
from .tuners.lora import LoraLayer

__all__ = ["PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "Tuner"]


@dataclass(frozen=True)
class Tuner:
    """How a method adapts a model: its type, its config class, the prefix of its tensors' names (None for
    prompt methods, which add no layer tensors), and whether adapters share state across layers (none of
    peftkit's methods do)."""

    peft_type: PeftType
    config_class: type[PeftConfig]
    prefix: str | None
    uses_shared_state: bool = False


PEFT_TYPE_TO_CONFIG_MAPPING: dict[PeftType, type[PeftConfig]] = dict(CONFIG_CLASSES)
PEFT_TYPE_TO_PREFIX_MAPPING: dict[PeftType, str] = {PeftType.LORA: LoraLayer.prefix, PeftType.IA3: IA3Linear.prefix}
PEFT_TYPE_TO_TUNER_MAPPING: dict[PeftType, Tuner] = {
    peft_type: Tuner(peft_type, config_class, PEFT_TYPE_TO_PREFIX_MAPPING.get(peft_type))
    for peft_type, config_class in CONFIG_CLASSES.items()
}
