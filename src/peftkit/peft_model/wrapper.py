"""What transformers (``Trainer``, ``generate``, pipelines) reads from a model, answered by a
wrapper.

The attributes transformers relies on are named here one by one. Anything else follows PEFT's public
behaviour: an attribute the wrapper does not have is looked up on ``base_model`` (the holder), which
looks it up on the wrapped model, so ``peft_model.lm_head``, ``peft_model.model`` and a custom
model's ``peft_model.lin1`` reach the base model's, as user code and TRL expect. Forwarding lives
here, in ``holder.py`` and in ``tuners/modules_to_save.py`` (a saved module answers with the copy in
use), nowhere else.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .holder import BaseModelHolder

__all__ = ["ModelWrapper", "is_transformers_model"]


class ModelWrapper(nn.Module):
    """A module around a base model (held as ``self.base_model.model``, PEFT's parameter names) that
    looks like that model to transformers."""

    base_model: BaseModelHolder

    def __getattr__(self, name: str) -> Any:
        """PEFT's forwarding: parameters, buffers and submodules first (``nn.Module``), then
        ``base_model``'s.

        A name already being forwarded is not forwarded again: a property of this class that raises
        ``AttributeError`` (``prefix`` for a prompt adapter) would otherwise come back here through
        the holder, which answers some names by asking this model."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            busy: set[str] = self.__dict__.setdefault("_forwarding", set())
            # not set yet (during __init__ or unpickling), or re-entered
            if name == "base_model" or name in busy:
                raise
            busy.add(name)
            try:
                return getattr(self.base_model, name)
            finally:
                busy.discard(name)

    def get_base_model(self) -> nn.Module:
        """The wrapped model (with adapter layers in it, unless unloaded)."""
        return self.base_model.model

    @property
    def config(self) -> Any:
        """The base model's config; a plain ``nn.Module`` has none (``hasattr(model, "config")`` is
        False, as in PEFT, so code can tell a transformers model from a custom one)."""
        base = self.get_base_model()
        if not hasattr(base, "config"):
            raise AttributeError(
                f"{type(base).__name__} has no config (it is not a transformers model)"
            )
        return base.config

    @property
    def generation_config(self) -> Any:
        return getattr(self.get_base_model(), "generation_config", None)

    @generation_config.setter
    def generation_config(self, value: Any) -> None:
        self.get_base_model().generation_config = value

    @property
    def main_input_name(self) -> str:
        return getattr(self.get_base_model(), "main_input_name", "input_ids")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.get_base_model(), "dtype", next(self.parameters()).dtype)

    @property
    def name_or_path(self) -> str | None:
        return getattr(self.get_base_model(), "name_or_path", None)

    @property
    def accepts_loss_kwargs(self) -> bool:
        return bool(getattr(self.get_base_model(), "accepts_loss_kwargs", True))

    @property
    def is_gradient_checkpointing(self) -> bool:
        base = self.get_base_model()
        # transformers' newer name; the old one warns
        if hasattr(base, "is_activation_checkpointing"):
            return bool(base.is_activation_checkpointing)
        return bool(getattr(base, "is_gradient_checkpointing", False))

    @property
    def _keys_to_ignore_on_save(self) -> Any:
        return getattr(self.get_base_model(), "_keys_to_ignore_on_save", None)

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Checkpoint activations of the base model; inputs get grads so frozen layers still
        backpropagate. ``kwargs`` (``every_n_layers``, ``offload``) go to the base model's method,
        as Trainer passes them."""
        base: Any = self.get_base_model()
        # transformers' newer name; the old one warns
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(
                activation_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs
            )
        else:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs
            )
        if hasattr(base, "enable_input_require_grads"):
            base.enable_input_require_grads()

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """transformers' newer name of :meth:`gradient_checkpointing_enable` (what Trainer calls)."""
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        base: Any = self.get_base_model()
        base.gradient_checkpointing_disable()

    def get_input_embeddings(self) -> nn.Module:
        base: Any = self.get_base_model()
        return base.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        get = getattr(self.get_base_model(), "get_output_embeddings", None)
        return get() if callable(get) else None

    def can_generate(self) -> bool:
        can = getattr(self.get_base_model(), "can_generate", None)
        return bool(can()) if callable(can) else False


def is_transformers_model(model: nn.Module) -> bool:
    """True for a transformers ``PreTrainedModel`` (called with keyword inputs), False for a plain
    module."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)
