"""``peftkit compare``: several methods trained on one split (:mod:`.run`), their settings chosen on
validation first when asked (:mod:`.select`), and the report (:mod:`.report`)."""

from __future__ import annotations

from .run import DEFAULT_METHODS, PRESETS, CompareConfig, MethodResult, SelectConfig, compare

__all__ = ["DEFAULT_METHODS", "PRESETS", "CompareConfig", "MethodResult", "SelectConfig", "compare"]
