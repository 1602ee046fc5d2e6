"""PEFT's per-method lookup tables (``peft.mapping``), for code written against them.

``PEFT_TYPE_TO_CONFIG_MAPPING`` gives each method's config class, ``PEFT_TYPE_TO_PREFIX_MAPPING``
the prefix of its layer tensors' names (layer methods only), and ``PEFT_TYPE_TO_TUNER_MAPPING`` a
description of how the method adapts a model, with the attributes PEFT code reads from PEFT's tuner
classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .config import PeftConfig, PeftType
from .methods import Method, methods

__all__ = [
    "PEFT_TYPE_TO_CONFIG_MAPPING",
    "PEFT_TYPE_TO_PREFIX_MAPPING",
    "PEFT_TYPE_TO_TUNER_MAPPING",
    "Tuner",
]


@dataclass(frozen=True)
class Tuner:
    """How a method adapts a model: its type, its config class, the prefix of its tensors' names
    (None for prompt methods, which add no layer tensors), and whether adapters share state across
    layers (none of peftkit's methods do)."""

    peft_type: PeftType | str
    config_class: type[PeftConfig]
    prefix: str | None
    uses_shared_state: bool = False


class _ByPeftType(Mapping[str, Any]):
    """A live view of the method registry keyed by ``peft_type`` (a method registered later appears
    too)."""

    def __init__(self, value: Any, layer_methods_only: bool = False) -> None:
        self._value, self._layers_only = value, layer_methods_only

    def _methods(self) -> dict[str, Method]:
        return {m.peft_type: m for m in methods() if m.inject is not None or not self._layers_only}

    def __getitem__(self, key: str) -> Any:
        return self._value(self._methods()[str(getattr(key, "value", key))])

    def __iter__(self) -> Iterator[str]:
        built_in = {t.value for t in PeftType}
        return iter([PeftType(t) if t in built_in else t for t in self._methods()])

    def __len__(self) -> int:
        return len(self._methods())


PEFT_TYPE_TO_CONFIG_MAPPING: Mapping[str, type[PeftConfig]] = _ByPeftType(lambda m: m.config_class)
PEFT_TYPE_TO_PREFIX_MAPPING: Mapping[str, str] = _ByPeftType(
    lambda m: m.prefix, layer_methods_only=True
)
PEFT_TYPE_TO_TUNER_MAPPING: Mapping[str, Tuner] = _ByPeftType(
    lambda m: Tuner(m.config_class.peft_type, m.config_class, m.prefix)
)
