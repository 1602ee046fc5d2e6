"""``peft_model.base_model``: holds the wrapped model as ``.model`` (parameter names then read
``base_model.model.<path>`` as in PEFT) and answers the tuner methods PEFT code calls on it."""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

from .. import surgery
from ..config import PeftConfig
from ..surgery import tying

__all__ = ["BaseModelHolder"]


class BaseModelHolder(nn.Module):
    """Holds the wrapped model as ``.model`` so parameter names read ``base_model.model.<path>`` as
    in PEFT.

    PEFT code also calls the tuner methods on ``peft_model.base_model`` (``set_adapter``,
    ``disable_adapter_layers``, ...): each is answered explicitly by the :class:`PeftModel` that
    owns it. Any other attribute is the wrapped model's, as PEFT's tuner forwards it
    (``base_model.lm_head``).
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":  # not set yet (during __init__ or unpickling): no recursion
                raise
            return getattr(self.model, name)

    def __init__(self, model: nn.Module, owner: Any = None) -> None:
        super().__init__()
        self.model = model
        self.bind(owner)

    def bind(self, owner: Any) -> None:
        """Answer for ``owner``, held weakly: a strong reference would put every PeftModel in a
        reference cycle, freed only by the garbage collector (under torchrun, possibly at
        interpreter shutdown, after the process group it reaches is gone)."""
        object.__setattr__(self, "_owner", weakref.ref(owner) if owner is not None else None)

    def _peft(self) -> Any:
        """The PeftModel that owns this holder (typed loosely: model.py imports this module)."""
        ref = self.__dict__.get("_owner")
        owner = ref() if ref is not None else None
        if owner is None:
            raise AttributeError("this holder belongs to no PeftModel")
        return owner

    @property
    def peft_config(self) -> dict[str, PeftConfig]:
        return self._peft().peft_config

    @property
    def active_adapters(self) -> list[str]:
        return self._peft().active_adapters

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """One adapter, or several applied together (a list), as PEFT's tuner allows."""
        if isinstance(adapter_name, str):
            self._peft().set_adapter(adapter_name, inference_mode=inference_mode)
        else:
            self._peft()._set_active_many(list(adapter_name))
            if inference_mode:
                self._peft().requires_grad_(False)

    @property
    def active_adapter(self) -> str | list[str]:
        names = self._peft().active_adapters
        return names[0] if len(names) == 1 else names

    def delete_adapter(self, adapter_name: str) -> None:
        self._peft().delete_adapter(adapter_name)

    def disable_adapter_layers(self) -> None:
        """Run the base model alone until :meth:`enable_adapter_layers` (merged adapters are
        unmerged); the adapters are frozen meanwhile, as in PEFT."""
        surgery.set_disabled(self.model, True)
        self._peft().requires_grad_(False)

    def enable_adapter_layers(self) -> None:
        """Apply the adapters again; the active one trains again (unless it was loaded for
        inference)."""
        surgery.set_disabled(self.model, False)
        peft = self._peft()
        peft.set_adapter(peft.active_adapter, inference_mode=peft.active_peft_config.inference_mode)

    def merge_adapter(
        self, adapter_names: list[str] | None = None, safe_merge: bool = False
    ) -> None:
        self._peft().merge_adapter(adapter_names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        self._peft().unmerge_adapter()

    def update_and_allocate(self, global_step: int) -> None:
        """AdaLoRA's step (PEFT calls it here): see :meth:`PeftModel.update_and_allocate`."""
        self._peft().update_and_allocate(global_step)

    def merge_and_unload(
        self,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        return self._peft().merge_and_unload(progressbar, safe_merge, adapter_names)

    def unload(self) -> nn.Module:
        return self._peft().unload()

    @property
    def prefix(self) -> str:
        return self._peft().prefix

    def _get_module_names_tied_with_embedding(self) -> list[str]:
        """The modules tied to the input embeddings (PEFT's tuner method; see
        :mod:`peftkit.surgery.tying`)."""
        return tying.module_names_tied_with_embedding(self.model)

    @property
    def targeted_module_names(self) -> list[str]:
        return list(self._peft().targeted_module_names)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)
