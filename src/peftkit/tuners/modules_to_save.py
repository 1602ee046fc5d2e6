"""A frozen module with trainable full copies per adapter (PEFT's ``modules_to_save``)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModulesToSaveWrapper"]


class ModulesToSaveWrapper(nn.Module):
    """Keeps ``original_module`` frozen and one trainable deep copy per adapter in ``modules_to_save``.

    The forward runs the active adapter's copy, or the original when no copy is active or the adapter
    is disabled. Parameter names match PEFT's (``score.modules_to_save.<name>.weight``).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False

    @property
    def weight(self) -> torch.Tensor:
        return self._current().weight  # type: ignore[return-value]

    def add_adapter(self, name: str) -> None:
        """Make a trainable copy of the original module for adapter ``name``."""
        clone = copy.deepcopy(self.original_module)
        clone.requires_grad_(True)
        self.modules_to_save[name] = clone

    def set_active(self, names: list[str]) -> None:
        """Use adapter ``names``' copy; a full copy replaces the module, so two adapters cannot share it."""
        held = [n for n in names if n in self.modules_to_save]
        if len(held) > 1:
            raise ValueError(f"Only one adapter can be set at a time for ModulesToSaveWrapper: {held} each hold a full "
                             "copy of this module, and copies cannot be combined (PEFT refuses the same)")
        self.active_adapter = held[0] if held else None

    @property
    def active_adapters(self) -> list[str]:
        return [self.active_adapter] if self.active_adapter is not None else []

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def _current(self) -> nn.Module:
        if self.disabled or self.active_adapter is None:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self._current()(*args, **kwargs)
