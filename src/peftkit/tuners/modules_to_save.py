"""A frozen module with trainable full copies per adapter (PEFT's ``modules_to_save``)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .rows import RowGroups

__all__ = ["ModulesToSaveWrapper"]

# Modules whose first dimension is always the batch, so a mixed batch can be split by rows (PEFT's
# list).
ROW_SPLITTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ModulesToSaveWrapper(nn.Module):
    """Keeps ``original_module`` frozen and one trainable deep copy per adapter in
    ``modules_to_save``.

    The forward runs the active adapter's copy, or the original when no copy is active or the
    adapter is disabled. In a mixed batch (``rows`` set: one adapter name per row) each row goes
    through its own adapter's copy. Parameter names match PEFT's
    (``score.modules_to_save.<name>.weight``).
    """

    adapter_layer_names: tuple[str, ...] = ("modules_to_save",)
    other_param_names: tuple[str, ...] = ()

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False
        self.rows: RowGroups | None = None  # set for a mixed batch: each row's own adapter

    def __getattr__(self, name: str) -> Any:
        """Attributes the wrapper lacks (``weight``, ``bias``, ``in_features``) are those of the
        module in use: the active adapter's copy, or the original (PEFT's forwarding, which code
        reading ``model.score.weight`` relies on)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "_modules" not in self.__dict__ or name in ("original_module", "modules_to_save"):
                raise  # not built yet (unpickling): no recursion
            return getattr(self._current(), name)

    def add_adapter(self, name: str) -> None:
        """Make a trainable copy of the original module for adapter ``name``."""
        self.add_copy(name, copy.deepcopy(self.original_module))

    def add_copy(self, name: str, module: nn.Module) -> None:
        """Use ``module`` as adapter ``name``'s trainable copy (a tied head shares the embedding
        copy's weight)."""
        module.requires_grad_(True)
        self.modules_to_save[name] = module

    def adapter_parameters(self, name: str) -> Iterator[tuple[str, str, nn.Parameter]]:
        """Adapter ``name``'s copy: (name in this wrapper, name in an adapter file, parameter); the
        file keys the copy by the module's own name (``score.weight``), as PEFT's does."""
        if name in self.modules_to_save:
            for sub, param in self.modules_to_save[name].named_parameters():
                yield f"modules_to_save.{name}.{sub}", sub, param

    def adapter_buffers(self, name: str) -> Iterator[tuple[str, str, torch.Tensor]]:
        """Adapter ``name``'s copy's buffers (a norm's running statistics), named as
        :meth:`adapter_parameters` names tensors: they are saved and loaded with the copy, as in
        PEFT."""
        if name in self.modules_to_save:
            for sub, buffer in self.modules_to_save[name].named_buffers():
                yield f"modules_to_save.{name}.{sub}", sub, buffer

    def set_active(self, names: list[str]) -> None:
        """Use adapter ``names``' copy; a full copy replaces the module, so two adapters cannot
        share it."""
        held = [n for n in names if n in self.modules_to_save]
        if len(held) > 1:
            raise ValueError(
                f"Only one adapter can be set at a time for ModulesToSaveWrapper: {held} each hold a full "
                "copy of this module, and copies cannot be combined (PEFT refuses the same)"
            )
        self.active_adapter = held[0] if held else None

    def set_adapter(self, adapter_names: str | list[str]) -> None:
        """PEFT's layer method: use this adapter's copy (its parameters train, the other copies are
        frozen)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self.set_active(names)
        for name, copy_ in self.modules_to_save.items():
            copy_.requires_grad_(name in names)

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

    def splits_rows(self, name: str) -> bool:
        """Whether adapter ``name``'s copy can run on some rows of a batch (a module whose rows are
        known)."""
        return isinstance(self.original_module, ROW_SPLITTABLE)

    def check_rows(self, names: list[str]) -> None:
        """Refuse a mixed batch over a copy whose rows cannot be told apart (PEFT's TypeError and
        words)."""
        if any(n in self.modules_to_save and not self.splits_rows(n) for n in names):
            kinds = ", ".join(k.__name__ for k in ROW_SPLITTABLE)
            raise TypeError(
                f"Mixed batching is only supported for the following modules: {kinds}. This module is a "
                f"{type(self.original_module).__name__}, whose batch dimension is not known; run each "
                "adapter's rows on their own"
            )

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        # switched off wins over per-row adapters, as in PEFT
        if self.rows is None or self.disabled:
            return self._current()(*args, **kwargs)
        x, *rest = args
        return self._forward_rows(x, self.rows, *rest, **kwargs)  # type: ignore[arg-type]

    def _forward_rows(
        self, x: torch.Tensor, rows: RowGroups, *args: object, **kwargs: object
    ) -> torch.Tensor:
        """Each adapter's rows through its own copy (the original for rows of adapters without one)."""
        # no row uses a copy of this module
        if not any(n in self.modules_to_save for n in rows.by_adapter):
            return self.original_module(x, *args, **kwargs)
        rows.check(x.shape[0])
        out: torch.Tensor | None = None
        for name, index in rows.by_adapter.items():
            held = name in self.modules_to_save
            module = (
                self.modules_to_save[name] if held else self.original_module
            )  # ModuleDict has no get()
            y = module(x[index], *args, **kwargs)  # (rows of name, ...)
            out = y.new_empty((x.shape[0], *y.shape[1:])) if out is None else out
            out[index] = y
        assert out is not None  # a batch has at least one row
        return out
