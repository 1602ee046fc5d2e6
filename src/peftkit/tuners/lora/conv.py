"""LoRA on ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d``: ``y = conv(x) + scaling *
B(A(dropout(x)))``.

A is a convolution like the base one (its kernel, stride and padding) into ``r`` channels, B a 1x1
convolution from ``r`` to the output channels (grouped like the base layer), as in PEFT, whose
tensor names and shapes these keep. With one group the update is the dense kernel ``scaling * B @
A`` (B's 1x1 kernel as an (out, r) matrix, A's kernel flattened to (r, in * k...)), so it merges
into the base kernel; with several groups the composition is a full convolution, which a grouped
kernel cannot hold: no merge, as in PEFT.

DoRA normalizes each output channel's kernel (a row of the flattened weight): the arithmetic of
:mod:`.dora` on the (out, in * k...) view. Its magnitude keeps PEFT's shape ``(1, out, 1...)``.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
from torch import nn

from ...errors import ConfigError
from ..base import base_output
from ..rows import RowGroups
from . import dora
from . import init as lora_init
from .layer import LoraLayer

__all__ = ["CONV_TYPES", "LoraConv", "LoraConv1d", "LoraConv2d", "LoraConv3d", "wrap_conv"]

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The convolutions LoRA adapts (transposed convolutions are not among them, as in PEFT)."""


class LoraConv(LoraLayer):
    """LoRA around a 1d, 2d or 3d convolution (see the module's docstring)."""

    adapter_param_names = ("lora_A", "lora_B", "lora_dropout", "lora_magnitude_vector")

    def __init__(self, base_layer: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out = False
        self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        # DoRA adapters only: (1, out, 1...), PEFT's shape
        self.lora_magnitude_vector = nn.ParameterDict()
        # DoRA: the norm used at merge, for unmerge
        self._merged_norms: dict[str, torch.Tensor] = {}
        self.rows: RowGroups | None = None  # set for a mixed batch: each row's own adapter

    def _get_name(self) -> str:  # PEFT's repr: "lora.Conv2d(...)"
        return f"lora.{type(self.base_layer).__name__}"

    @property
    def groups(self) -> int:
        return int(cast(nn.Conv2d, self.base_layer).groups)

    def add_adapter(
        self,
        name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
        use_dora: bool = False,
        lora_bias: bool = False,
    ) -> None:
        """Create adapter ``name``: A (r, in, k...) and B (out, r / groups, 1...; a bias with
        ``lora_bias``), in fp32; with ``use_dora`` its magnitudes start at the adapted kernel's
        channel norms, so a fresh DoRA adapter equals the base."""
        base = cast(nn.Conv2d, self.base_layer)
        self._check_adapter(r, init_lora_weights)
        self._warn_bias(lora_bias)
        # the base's own kind, as PEFT builds them
        conv: Any = next(t for t in CONV_TYPES if isinstance(base, t))
        ones = (1,) * (base.weight.dim() - 2)
        device = self.weight.device
        a = conv(
            self.in_features,
            r,
            base.kernel_size,
            base.stride,
            base.padding,
            bias=False,
            device=device,
        )
        b = conv(
            r, self.out_features, ones, ones, groups=base.groups, bias=lora_bias, device=device
        )
        lora_init.random_start(a, b, init_lora_weights, r)
        self.lora_A[name], self.lora_B[name] = a, b
        self.lora_dropout[name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.lora_dropout[name].train(self.training)
        self._set_scaling(name, r, lora_alpha, use_rslora)
        self.lora_bias[name] = lora_bias
        if use_dora:
            with torch.no_grad():
                norm = self._weight_norm(name)  # (out,)
            shape = (1, -1, *ones)
            self.lora_magnitude_vector[name] = nn.Parameter(norm.float().view(shape))

    def _check_adapter(self, r: int, init_lora_weights: bool | str) -> None:
        kind = type(self.base_layer).__name__
        if r % self.groups:
            raise ConfigError(
                f"Targeting a {kind} with groups={self.groups} and rank {r}. Currently, support is "
                "limited to conv layers where the rank is divisible by groups. Either choose a different "
                "rank or do not target this specific layer."
            )
        if isinstance(init_lora_weights, str) and init_lora_weights != "gaussian":
            raise ConfigError(
                f"init_lora_weights={init_lora_weights!r} works on linear layers; this target is a "
                f"{kind}. Use init_lora_weights=True or 'gaussian', or leave it out of target_modules"
            )
        if self.groups > 1:
            warnings.warn(
                "LoRA adapter added to ConvNd layer with groups > 1. Merging is not supported.",
                stacklevel=3,
            )

    def _flat_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A as (r, in * k...) and B as (out, r): the update's kernel is ``B @ A`` (one group)."""
        a = cast(torch.Tensor, self.lora_A[name].weight)
        b = cast(torch.Tensor, self.lora_B[name].weight)
        return a.flatten(1), b.flatten(1)

    def _flat_weight(self) -> torch.Tensor:
        return self.weight.flatten(1)  # (out, in * k...)

    def _weight_norm(self, name: str) -> torch.Tensor:
        """DoRA's channel norms of the kernel plus the update, ``(out,)`` (see :meth:`_norm_of`)."""
        return self._norm_of(self._flat_weight(), name)

    def _norm_of(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        """DoRA's channel norms of ``weight + scaling * B @ A`` (``weight`` flattened, (out, in/g *
        k...)).

        With several groups, ``B @ A`` is read as PEFT reads it (B as (out / groups, r), the product
        laid out in the grouped kernel's shape): no update of the grouped kernel, but the norm
        PEFT's DoRA divides by, so an adapter trained with PEFT gives the same outputs here."""
        a = cast(torch.Tensor, self.lora_A[name].weight)
        b = cast(torch.Tensor, self.lora_B[name].weight)
        r = a.shape[0]
        # (out, in/g * k...)
        delta = (b.reshape(-1, r) @ a.reshape(r, -1)).reshape(self.weight.shape).flatten(1)
        return torch.linalg.norm(weight.float() + self.scaling[name] * delta, dim=1)

    def _delta_flat(self, name: str) -> torch.Tensor:
        if self.groups > 1:
            raise ConfigError(
                f"Merging is not supported for _ConvNd layers with groups > 1 (this "
                f"{type(self.base_layer).__name__} has {self.groups}): the update is a full "
                "convolution, which the grouped kernel cannot hold. Keep the adapter unmerged"
            )
        a, b = self._flat_factors(name)
        return (b @ a) * self.scaling[name]  # (out, in * k...)

    def delta_weight(self, name: str) -> torch.Tensor:
        return self._delta_flat(name).view(self.weight.shape)

    def _set_flat_weight(self, weight: torch.Tensor) -> None:
        self.weight.data = weight.view(self.weight.shape).to(self.weight.dtype).contiguous()

    def _merge_one(self, name: str) -> None:
        if name not in self.lora_magnitude_vector:
            super()._merge_one(name)
            return
        delta = self._delta_flat(name)  # first: refused for a grouped kernel
        merges = [
            (self._delta_flat(n), self._merged_factor(n)) for n in reversed(self.merged_adapters)
        ]
        # the forward's norm: unmerged
        before = dora.weight_before_merges(self._flat_weight().float(), merges)
        norm = self._norm_of(before, name).detach()
        self._merged_norms[name] = norm
        factor = self._magnitude(name) / norm
        self._set_flat_weight(dora.merged_weight(self._flat_weight(), delta, factor))

    def _unmerge_one(self, name: str) -> None:
        if name not in self.lora_magnitude_vector:
            super()._unmerge_one(name)
            return
        factor = self._magnitude(name) / self._merged_norms.pop(name)
        self._set_flat_weight(
            dora.unmerged_weight(self._flat_weight(), self._delta_flat(name), factor)
        )
        self.merged_adapters.remove(name)

    def _magnitude(self, name: str) -> torch.Tensor:
        return self.lora_magnitude_vector[name].flatten()  # PEFT keeps (1, out, 1...): as (out,)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if self.rows is not None and not self.disabled:
            return self._forward_rows(x, self.rows, *args, **kwargs)
        pending = self._pending()
        result = base_output(self.base_layer, x, *args, **kwargs)  # (B, out, ...)
        for name in pending:
            result = result + self._update(name, x, result)
        return result

    def _update(self, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """What adapter ``name`` adds to ``result``, the base output: LoRA's update, or DoRA's
        change."""
        a, b, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
        h = dropout(x.to(cast(torch.Tensor, a.weight).dtype))
        update = b(a(h)) * self.scaling[name]  # (B, out, ...)
        if name not in self.lora_magnitude_vector:
            return update.to(result.dtype)
        factor = (self._magnitude(name) / self._weight_norm(name).detach()).view(
            1, -1, *([1] * (x.dim() - 2))
        )
        if isinstance(dropout, nn.Identity) or not self.training:
            bias = self.bias
            # W * x
            base = result if bias is None else result - bias.view(1, -1, *([1] * (x.dim() - 2)))
        else:  # the base kernel applied to the dropped-out input, without bias
            conv = cast(nn.Conv2d, self.base_layer)
            base = conv._conv_forward(h, conv.weight.to(h.dtype), None)
        return ((factor - 1) * base + factor * update).to(result.dtype)

    def _forward_rows(
        self, x: torch.Tensor, rows: RowGroups, *args: object, **kwargs: object
    ) -> torch.Tensor:
        """Each adapter on its own rows of the batch (see :mod:`.rows`)."""
        self._check_rows(rows, x)
        result = base_output(self.base_layer, x, *args, **kwargs)  # (B, out, ...)
        for name, index in rows.by_adapter.items():
            if name in self.scaling:
                result = result.index_add(0, index, self._update(name, x[index], result[index]))
        return result

    def extra_repr(self) -> str:
        return f"in_channels={self.in_features}, out_channels={self.out_features}, adapters={self.adapter_names}"


class LoraConv1d(LoraConv):
    """LoRA around ``nn.Conv1d`` (PEFT's ``lora.Conv1d``)."""


class LoraConv2d(LoraConv):
    """LoRA around ``nn.Conv2d`` (PEFT's ``lora.Conv2d``)."""


class LoraConv3d(LoraConv):
    """LoRA around ``nn.Conv3d`` (PEFT's ``lora.Conv3d``)."""


def wrap_conv(base_layer: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> LoraConv:
    """The LoRA layer class for this convolution, around it."""
    kinds = {nn.Conv1d: LoraConv1d, nn.Conv2d: LoraConv2d, nn.Conv3d: LoraConv3d}
    return next(kind for base, kind in kinds.items() if isinstance(base_layer, base))(base_layer)
