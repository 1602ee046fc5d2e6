"""The adapters a server knows: registered folders, the few loaded in memory, least recently used
out first."""

from __future__ import annotations

import enum
import os
from collections import OrderedDict
from typing import Any, cast

from torch import nn

from ..config import PromptLearningConfig, TaskType, read_adapter_config
from ..errors import AdapterNotFoundError, ConfigError
from ..methods import method_for
from ..peft_model.model import PeftModel
from ..surgery import adapter_layers, layer_adapter_names

__all__ = ["AdapterRegistry", "Kind"]


class Kind(enum.Enum):
    """How a request's rows go through the model."""

    BASE = "base"
    """No adapter."""
    MIXED = "mixed"
    """LoRA on linear layers (and modules_to_save heads): each row through its own adapter in a
    shared pass."""
    PROMPT = "prompt"
    """Prompt tuning, p-tuning, prefix tuning: the adapter runs at the prefill only; then the row is
    a base row."""
    SOLO = "solo"
    """IA3, DoRA, LoRA on embeddings: rows of one adapter per pass."""


class AdapterRegistry:
    """The base model, its tokenizer, and adapters by name.

    Args:
        model: the base model (adapters are added to it in place).
        tokenizer: its tokenizer.
        model_name: the name clients use for the base model.
        max_loaded: adapters kept in memory; others are loaded when a request needs them.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, model_name: str, max_loaded: int = 8
    ) -> None:
        if max_loaded < 1:
            raise ConfigError(f"max_loaded_adapters={max_loaded} must be at least 1")
        self.base_model, self.tokenizer, self.model_name = model.eval(), tokenizer, model_name
        self.max_loaded = max_loaded
        self.device = next(model.parameters()).device
        self.peft: PeftModel | None = None
        self.paths: dict[str, str] = {}
        self.loaded: OrderedDict[str, Kind] = OrderedDict()  # least recently used first

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def register(self, name: str, path: str | os.PathLike[str], load: bool = False) -> None:
        """Know adapter ``name`` at ``path`` (its config is read and checked now); ``load`` loads it
        too.

        Raises:
            ConfigError: the name is taken or is the base model's, or the adapter cannot be served.
            AdapterFormatError: the folder holds no readable adapter.
        """
        if name in self.paths or name == self.model_name:
            raise ConfigError(
                f"an adapter or model named {name!r} is already served; choose another name"
            )
        config = read_adapter_config(path)
        if config.task_type not in (None, TaskType.CAUSAL_LM):
            raise ConfigError(
                f"adapter {name!r} is for {config.task_type}; the server generates text (CAUSAL_LM)"
            )
        self.paths[name] = os.fspath(path)
        if load:
            try:
                self.acquire(name, in_use=set())
            except Exception:
                del self.paths[name]
                raise

    def unregister(self, name: str, in_use: set[str]) -> None:
        """Forget adapter ``name`` and free its memory; refused while a request uses it."""
        if name not in self.paths:
            raise self._not_found(name)
        if name in in_use:
            raise ConfigError(
                f"adapter {name!r} is generating for a request; unload it when that request ends"
            )
        self._unload(name)
        del self.paths[name]

    def acquire(self, name: str | None, in_use: set[str]) -> Kind:
        """Make ``name`` ready for a request (loading it, and unloading the least recently used
        adapter not in ``in_use`` when memory is full) and return how its rows run."""
        if name is None:
            return Kind.BASE
        if name not in self.paths:
            raise self._not_found(name)
        if name not in self.loaded:
            free = [n for n in self.loaded if n not in in_use]
            while len(self.loaded) >= self.max_loaded and free:
                self._unload(free.pop(0))
            self._load(name)
        self.loaded.move_to_end(name)
        return self.loaded[name]

    def _not_found(self, name: str) -> AdapterNotFoundError:
        return AdapterNotFoundError(
            f"no adapter named {name!r} is served; served: {', '.join(self.paths) or 'none'}"
        )

    def prompt(self, name: str) -> tuple[nn.Module, PromptLearningConfig]:
        """The prompt module and config of prompt adapter ``name``."""
        assert self.peft is not None
        return self.peft.prompt_encoder[name], cast(
            PromptLearningConfig, self.peft.peft_config[name]
        )

    def config(self, name: str) -> Any:
        return read_adapter_config(self.paths[name])

    def _load(self, name: str) -> None:
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(
                self.base_model, self.paths[name], adapter_name=name
            )
        else:
            self.peft.load_adapter(self.paths[name], adapter_name=name)
        self.peft.eval()
        self.loaded[name] = self._kind(name)

    def _unload(self, name: str) -> None:
        if name in self.loaded:
            assert self.peft is not None
            self.peft.delete_adapter(name)
            del self.loaded[name]

    def _kind(self, name: str) -> Kind:
        assert self.peft is not None
        if method_for(self.peft.peft_config[name]).is_prompt:
            return Kind.PROMPT
        layers = [
            layer
            for _, layer in adapter_layers(self.base_model)
            if name in layer_adapter_names(layer)
        ]
        return Kind.MIXED if all(layer.splits_rows(name) for layer in layers) else Kind.SOLO
