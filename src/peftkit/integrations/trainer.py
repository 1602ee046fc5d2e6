"""transformers.Trainer treats a peftkit model as it treats a PEFT model, with no change to the
user's code.

Trainer recognizes adapter models by class: ``isinstance(model, peft.PeftModel)`` decides whether a
checkpoint holds the adapter (``adapter_config.json`` + ``adapter_model.safetensors``, a few MB) or
the whole model, whether ``resume_from_checkpoint`` loads an adapter, and which model's loss rule
counts the tokens of a batch (a causal LM shifts its labels; counting them unshifted normalizes the
loss by the wrong number). Nothing in a model's attributes can answer that test, so when peftkit
builds a model it extends the test itself: Trainer's ``_is_peft_model`` (in every transformers
module that holds it) also accepts :class:`peftkit.PeftModel`, and the class tuple its ``_save``
checks includes it. Those are the only changes, made once, when ``transformers.trainer`` is (or is
later) imported; Trainer then calls the same methods it calls on PEFT's model (``save_pretrained``,
``load_adapter``, ``get_base_model``).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["install"]

_TRAINER = "transformers.trainer"
# peftkit's model class, given by install(): this module imports nothing of peftkit
_classes: list[type] = []


def install(model_class: type) -> None:
    """Make Trainer see instances of ``model_class`` (peftkit's PeftModel) as adapter models
    (idempotent; cheap when already done)."""
    if _classes:
        return
    _classes.append(model_class)
    if _TRAINER in sys.modules:
        _patch(sys.modules[_TRAINER])
    else:
        sys.meta_path.insert(0, _PatchOnImport())


def _is_peftkit_model(model: Any) -> bool:
    return isinstance(model, tuple(_classes))


def _patch(trainer: types.ModuleType) -> None:
    utils = sys.modules.get("transformers.trainer_utils")
    original = getattr(utils, "_is_peft_model", None)
    if utils is None or original is None or getattr(original, "_peftkit", False):
        return

    @functools.wraps(original)
    def is_peft_model(model: Any) -> bool:
        return bool(original(model)) or _is_peftkit_model(model)

    is_peft_model._peftkit = True  # type: ignore[attr-defined]
    for module in list(sys.modules.values()):  # every module that imported the function by name
        if (
            getattr(module, "__name__", "").startswith("transformers")
            and getattr(module, "_is_peft_model", None) is original
        ):
            module._is_peft_model = is_peft_model  # type: ignore[attr-defined]
    _extend_saved_classes(trainer)


def _extend_saved_classes(trainer: types.ModuleType) -> None:
    """Trainer._save writes ``model.save_pretrained(...)`` for ``(PreTrainedModel, PeftModel)`` when
    PEFT is installed, and the whole state dict otherwise: add peftkit's class to that tuple, PEFT
    installed or not."""
    theirs = getattr(trainer, "PeftModel", None)
    classes: tuple[type, ...] = tuple(_classes)
    if isinstance(theirs, type):
        classes = (theirs, *_classes)
    elif isinstance(theirs, tuple):
        classes = tuple(dict.fromkeys((*theirs, *_classes)))
    trainer.PeftModel = classes  # type: ignore[attr-defined]
    available = getattr(trainer, "is_peft_available", None)
    if callable(available) and not getattr(available, "_peftkit", False):
        # only the class test in _save and push_to_hub's file list read it
        def is_peft_available() -> bool:
            return True

        is_peft_available._peftkit = True  # type: ignore[attr-defined]
        trainer.is_peft_available = is_peft_available  # type: ignore[attr-defined]


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patch ``transformers.trainer`` right after it is first imported: the finder that would load
    it finds it, and its loader's ``exec_module`` is followed by the patch."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TRAINER:
            return None
        sys.meta_path.remove(self)  # one import is all it takes
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None
        load = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            load(module)
            _patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
