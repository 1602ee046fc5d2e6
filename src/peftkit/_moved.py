"""Import paths of modules that moved, kept working.

peftkit's modules were once all at the top of the package; they now live in folders by layer
(``common/``, ``peft_model/``, ``surgery/``, ``integrations/``, ``tuners/<method>/``, ``train/``,
``compare/``). Code written against the old paths (``from peftkit.data import pack``, ``import
peftkit.trainer_support``) still runs: a finder on ``sys.meta_path`` answers an old name with the
module that now holds it, the same object under both names, so patching through either path changes
the one module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence

__all__ = ["MOVED", "install"]

MOVED: dict[str, str] = {  # the old name -> where the module lives now
    "peftkit.mapping_func": "peftkit.peft_model.model",  # PEFT's module of get_peft_model
    "peftkit.adapter_io": "peftkit.peft_model.adapter_io",
    "peftkit.card": "peftkit.peft_model.card",
    "peftkit.checks": "peftkit.peft_model.checks",
    "peftkit.compare_report": "peftkit.compare.report",
    "peftkit.compare_select": "peftkit.compare.select",
    "peftkit.configfile": "peftkit.common.configfile",
    "peftkit.data": "peftkit.train.data",
    "peftkit.embeddings": "peftkit.peft_model.embeddings",
    "peftkit.files": "peftkit.common.files",
    "peftkit.format": "peftkit.peft_model.format",
    "peftkit.holder": "peftkit.peft_model.holder",
    "peftkit.hub": "peftkit.integrations.hub",
    "peftkit.memory": "peftkit.common.memory",
    "peftkit.merging": "peftkit.surgery.merging",
    "peftkit.model": "peftkit.peft_model.model",
    "peftkit.models": "peftkit.integrations.models",
    "peftkit.optimizers": "peftkit.train.optimizers",
    "peftkit.outputs": "peftkit.common.outputs",
    "peftkit.prompting": "peftkit.tuners.prompt.model",
    "peftkit.quantization": "peftkit.integrations.quantization",
    "peftkit.schema": "peftkit.common.schema",
    "peftkit.status": "peftkit.peft_model.status",
    "peftkit.target_tables": "peftkit.surgery.tables",
    "peftkit.trainer_support": "peftkit.integrations.trainer",
    "peftkit.tuners.dora": "peftkit.tuners.lora.dora",
    "peftkit.tuners.lora_conv": "peftkit.tuners.lora.conv",
    "peftkit.tuners.lora_embedding": "peftkit.tuners.lora.embedding",
    "peftkit.tuners.lora_init": "peftkit.tuners.lora.init",
    "peftkit.tuners.low_rank": "peftkit.tuners.lora.low_rank",
    "peftkit.tying": "peftkit.surgery.tying",
    "peftkit.weighted": "peftkit.peft_model.weighted",
    "peftkit.wrapper": "peftkit.peft_model.wrapper",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module at its new path (imported once, shared by both names)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.target)
        # the import system overwrites __spec__ with the alias's; put it back
        self._spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self._spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (importing ``peftkit`` does this)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
