"""What every weight-side adapter layer shares: the wrapped base layer, the active set, merging,
disabling.

Subclasses (LoRA, IA3) hold their tensors under the adapter's name and say how one adapter is folded
into the base weight and taken out again. No I/O here; :mod:`peftkit.surgery` places these layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

from ..errors import BrokenAdapterError, ConfigError
from ..integrations.quantization import is_quantized

__all__ = ["AdapterLayer", "base_output"]


def base_output(layer: nn.Module, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    """``layer(x, *args, **kwargs)``; for a plain ``nn.Linear`` that nothing hooks, ``F.linear``
    with its tensors.

    At batch 1 a decode step is a few microseconds of arithmetic per layer, and the nested module
    call costs about as much as the matmul's dispatch (benchmarks/lora_floor.py). The shortcut is
    exactly what ``nn.Module.__call__`` would run: it is taken only for ``nn.Linear`` itself
    (quantized, parametrized and FSDP-sharded layers are subclasses) without hooks of its own or
    global ones.
    """
    if type(layer) is nn.Linear and not (args or kwargs or _hooked(layer)):
        params = layer._parameters
        return F.linear(x, cast(torch.Tensor, params["weight"]), params["bias"])
    return cast(torch.Tensor, layer(x, *args, **kwargs))


def _hooked(layer: nn.Module) -> bool:
    """Whether calling ``layer`` would run any hook: its own or one registered for every module."""
    return bool(
        layer._forward_hooks
        or layer._forward_pre_hooks
        or layer._backward_hooks
        or layer._backward_pre_hooks
        or torch_module._global_forward_hooks
        or torch_module._global_forward_pre_hooks
        or torch_module._global_backward_hooks
        or torch_module._global_backward_pre_hooks
    )


class AdapterLayer(nn.Module):
    """A frozen base layer plus named adapters.

    Attributes:
        base_layer: the wrapped layer, frozen.
        active_adapters: adapters applied in ``forward`` (normally one).
        merged_adapters: adapters currently folded into ``base_layer.weight``.
        disabled: when True, ``forward`` returns the base layer's output alone.
    """

    adapter_param_names: tuple[str, ...] = ()
    parameter_name: str | None = None
    """The raw parameter this layer adapts (LoRA's ``target_parameters``: the owning module reads
    the adapted weight); None for a layer that adds to its base layer's output."""
    mixed_batch_refusal: str | None = None
    """Why this layer cannot run a mixed batch (``adapter_names``), in PEFT's words where it has
    them; None to use the generic refusal of a layer that does not split rows."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.active_adapters: list[str] = []
        # the active adapters this layer holds, in order: what forward computes
        self._applied: list[str] = []
        self.merged_adapters: list[str] = []
        # the base weight and bias as they were before the first merge (merge(keep_original=True)),
        # put back bitwise when the last merged adapter comes out: subtracting an update is exact
        # in no float format, and TRL's vLLM sync merges and unmerges on every step
        self._original: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.disabled = False

    def _set_features(self, fan_in_fan_out: bool) -> None:
        """Record ``in_features``/``out_features``: the layer's own when it states them (a 4-bit
        layer's packed weight has another shape), else the weight's; Conv1D-style layers store (in,
        out)."""
        self.fan_in_fan_out = fan_in_fan_out
        in_f, out_f = (
            getattr(self.base_layer, "in_features", None),
            getattr(self.base_layer, "out_features", None),
        )
        if in_f is None or out_f is None:
            out_f, in_f = self.weight.shape
            if fan_in_fan_out:
                in_f, out_f = out_f, in_f
        self.in_features, self.out_features = int(in_f), int(out_f)

    @property
    def quantized(self) -> bool:
        """True when the base weight is packed by bitsandbytes (QLoRA): it cannot absorb a merge."""

        return is_quantized(self.weight)

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight, so code that reads ``layer.weight`` (weight tying, dtype checks)
        still works."""
        return cast(torch.Tensor, self.base_layer.weight)

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    @property
    def adapter_names(self) -> list[str]:
        raise NotImplementedError

    other_param_names: tuple[str, ...] = ()
    """Per-adapter bookkeeping kept beside the tensors, by attribute name (PEFT's layer attribute).
    """

    @property
    def adapter_layer_names(self) -> tuple[str, ...]:
        """The containers that hold the adapters' tensors, by attribute name (PEFT's layer
        attribute)."""
        return tuple(n for n in self.adapter_param_names if n != "lora_dropout")

    def get_base_layer(self) -> nn.Module:
        """The wrapped layer (PEFT's layer method of this name)."""
        return self.base_layer

    def _all_available_adapter_names(self) -> list[str]:
        """PEFT's layer method of this name (its tests and some user code call it): the adapters
        held here."""
        return sorted(self.adapter_names)

    repr_name: str | None = None
    """The name PEFT's repr gives this kind of layer (``lora.Linear``); the class name when None."""

    def _get_name(self) -> str:  # nn.Module.__repr__ prints this name
        return self.repr_name or super()._get_name()

    def adapter_parameters(self, name: str) -> Iterator[tuple[str, str, nn.Parameter]]:
        """Adapter ``name``'s tensors here: (name in this layer, name in an adapter file,
        parameter), e.g. ``("lora_A.default.weight", "lora_A.weight", A)``; the file drops the
        adapter's name, as PEFT's does."""
        for attr in self.adapter_param_names:
            container = getattr(self, attr)
            if name not in container:
                continue
            held = container[name]
            if isinstance(held, nn.Parameter):
                yield f"{attr}.{name}", attr, held
            else:
                for sub, param in held.named_parameters():
                    yield f"{attr}.{name}.{sub}", f"{attr}.{sub}", param

    def splits_rows(self, name: str) -> bool:
        """Whether adapter ``name`` can run on some rows of a batch only (a mixed batch,
        ``adapter_names``)."""
        return False

    def bookkeeping(self, name: str) -> list[str]:
        """Local names of adapter ``name``'s tensors that are neither trained nor saved (AdaLoRA's
        ``ranknum``): not adapter tensors, and not base weights either."""
        return []

    def set_active(self, names: list[str]) -> None:
        """Apply exactly these adapters (those this layer holds) in ``forward``. ``active_adapters``
        keeps every name, held here or not, as PEFT's layers do (a model's adapters may adapt
        different layers)."""
        held = set(self.adapter_names)
        self.active_adapters = list(names)
        self._applied = [n for n in names if n in held]

    def delete_adapter(self, name: str) -> None:
        """Drop an adapter; a merged adapter is unmerged first so the base weight stays correct."""
        if name in self.merged_adapters:
            with torch.no_grad():
                self._unmerge_one(name)
                self._restore_original()
        for attr in self.adapter_param_names:
            container = getattr(self, attr)
            if name in container:
                del container[name]
        self._forget(name)
        self.active_adapters = [n for n in self.active_adapters if n != name]
        self._applied = [n for n in self._applied if n != name]

    def _forget(self, name: str) -> None:
        """Drop per-adapter bookkeeping beyond the parameter containers."""

    def _merge_one(self, name: str) -> None:
        raise NotImplementedError

    def _unmerge_one(self, name: str) -> None:
        """Take ``name`` out of the base weight and off ``merged_adapters``."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(
        self,
        names: list[str] | None = None,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
        keep_original: bool = True,
    ) -> None:
        """Fold adapters (``names``, or PEFT's ``adapter_names``; default: the active ones) into the
        base weight. Already merged adapters are skipped (idempotent). An adapter holding NaN or
        infinity is always refused before any change; ``safe_merge`` also checks the merged weight
        and puts the old one back if it is not finite (PEFT's option).

        With ``keep_original`` (the default) a copy of the weight and bias from before the first
        merge is kept, and :meth:`unmerge` puts it back bitwise; without it (``merge_and_unload``,
        which never unmerges) unmerging subtracts the update, exact only up to rounding.
        """
        names = adapter_names if names is None else names
        if self.quantized:
            raise ConfigError(
                "cannot merge into a 4-bit (bitsandbytes) base layer: its packed weight cannot hold "
                "the update exactly. Load the base model unquantized, load the adapter, then merge"
            )
        held = set(self.adapter_names)
        for name in names if names is not None else self.active_adapters:
            if name in held and name not in self.merged_adapters:
                self._check_finite(name)
                if keep_original and not self.merged_adapters and not self._original:
                    self._original = [(t, t.detach().clone()) for t in self._merged_tensors()]
                if safe_merge:
                    self._merge_safely(name)
                else:
                    self._merge_one(name)
                self.merged_adapters.append(name)
        if not self.merged_adapters:
            self._original = []  # nothing merged (a refused safe merge): nothing to put back

    def _merged_tensors(self) -> list[torch.Tensor]:
        """The tensors a merge changes: the base weight and bias."""
        return [t for t in (self.weight, self.bias) if t is not None]

    def _restore_original(self) -> None:
        """Once no adapter is merged, put back the weight and bias kept by :meth:`merge`."""
        if self.merged_adapters or not self._original:
            return
        for tensor, original in self._original:
            tensor.data.copy_(original)  # in place: the same Parameter, optimizer state intact
        self._original = []

    def _merge_safely(self, name: str) -> None:
        """Merge ``name``, then put the old weight and bias back and refuse if the result is not
        finite."""
        tensors = self._merged_tensors()
        kept = [t.detach().clone() for t in tensors]
        self._merge_one(name)
        if not all(torch.isfinite(t).all() for t in tensors):
            for old, tensor in zip(kept, tensors, strict=True):
                tensor.data = old
            raise BrokenAdapterError(
                f"NaNs detected in the merged weights. The adapter {name} seems to be broken: "
                "merging it made the base weight NaN or infinite, so it was put back. Reload "
                "the adapter from a good checkpoint"
            )

    def _check_finite(self, name: str) -> None:
        """A NaN or infinity merged into the base weight cannot be taken out again: refuse before
        merging."""
        for attr in self.adapter_param_names:
            container = getattr(self, attr)
            if name not in container:
                continue
            held = container[name]  # a module (LoRA's Linear) or a tensor (IA3's vector)
            tensors = held.parameters() if isinstance(held, nn.Module) else [held]
            if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors):
                raise BrokenAdapterError(
                    f"NaNs detected in the merged weights. The adapter {name} seems to be broken: "
                    f"it holds NaN or infinite values in {attr}, and merging would make the base "
                    "weight NaN for good. Reload the adapter from a good checkpoint"
                )

    @torch.no_grad()
    @torch.no_grad()
    def unmerge(self) -> None:
        """Take every merged adapter out of the base weight, last merged first; the weight and
        bias from before the first merge come back bitwise when :meth:`merge` kept them."""
        while self.merged_adapters:
            self._unmerge_one(self.merged_adapters[-1])
        self._restore_original()

    # ----- PEFT's layer API (BaseTunerLayer), for code that drives layers directly
    # --------------------------

    @property
    def active_adapter(self) -> str | list[str]:
        return (
            self.active_adapters[0]
            if len(self.active_adapters) == 1
            else list(self.active_adapters)
        )

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    def disable_adapters(self) -> bool:
        """PEFT's name for :attr:`disabled`."""
        return self.disabled

    def enable_adapters(self, enabled: bool) -> None:
        """Apply the active adapters again (``True``, and they train) or run the base layer alone
        (``False``, and this layer's adapters are frozen), as PEFT's layers do."""
        self.disabled = not enabled
        if enabled:
            self.set_adapter(self.active_adapters)
        else:
            for attr in self.adapter_param_names:
                getattr(self, attr).requires_grad_(False)

    def set_adapter(self, adapter_names: str | list[str]) -> None:
        """Make these adapters active; as in PEFT, they become trainable and the others frozen."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self.set_active(names)
        for attr in self.adapter_param_names:
            for name, held in getattr(self, attr).items():
                held.requires_grad_(name in names)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """PEFT's name for the dense update this adapter adds to the base weight."""
        return self.delta_weight(adapter)

    def delta_weight(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def _pending(self) -> list[str]:
        """Adapters to compute in ``forward``: active and not already in the weight."""
        if self.disabled:
            if self.merged_adapters:  # a disabled adapter must not linger inside the weight
                self.unmerge()
            return []
        return [n for n in self._applied if n not in self.merged_adapters]
