"""(IA)^3: learned vectors that rescale a layer's activations (Liu et al., 2022).

``y = l * base(x)`` for attention projections (one factor per output feature), or
``y = base(l * x)`` for feed-forward layers (one factor per input feature). The vectors start at 1,
so a fresh adapter equals the base model. Parameter names match Hugging Face PEFT's
(``k_proj.ia3_l.<name>``).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from .base import AdapterLayer, base_output

__all__ = ["IA3Conv", "IA3Layer", "IA3Linear"]


class IA3Layer(AdapterLayer):
    """What IA3 layers share: one vector per adapter (``ia3_l``), applied to the output or, for a
    feed-forward layer, the input; merged into the weight (and the bias, for an output vector) by
    multiplication."""

    adapter_param_names = ("ia3_l",)
    prefix = "ia3_"
    """What every IA3 tensor's name starts with (PEFT's tuner attribute of that name)."""

    def __init__(self, base_layer: nn.Module, is_feedforward: bool) -> None:
        super().__init__(base_layer)
        self.is_feedforward = is_feedforward
        self.ia3_l = nn.ParameterDict()

    @property
    def adapter_names(self) -> list[str]:
        return list(self.ia3_l.keys())

    def vector(self, name: str) -> torch.Tensor | None:
        """Adapter ``name``'s scaling vector as stored, or None when this layer does not hold it."""
        return cast(torch.Tensor, self.ia3_l[name]) if name in self.ia3_l else None

    def add_adapter(self, name: str, init_ia3_weights: bool = True) -> None:
        """Create adapter ``name``: ones (the identity) unless ``init_ia3_weights`` is False, in
        fp32."""
        raise NotImplementedError

    def _new_vector(self, name: str, shape: tuple[int, ...], init_ia3_weights: bool) -> None:
        vector = torch.ones(shape) if init_ia3_weights else torch.randn(shape)  # ones: the identity
        self.ia3_l[name] = nn.Parameter(vector.to(self.weight.device))

    def _factor(self, name: str) -> torch.Tensor:
        """The vector laid out like the base weight (it scales the weight's input or output axis)."""
        raise NotImplementedError

    def _broadcast(self, vector: torch.Tensor) -> torch.Tensor:
        """The vector shaped to scale the layer's input or output activations."""
        raise NotImplementedError

    def _merge_one(self, name: str) -> None:
        self.weight.data = (self.weight.data * self._factor(name)).to(self.weight.dtype)
        if not self.is_feedforward and self.bias is not None:
            self.bias.data = (self.bias.data * self.ia3_l[name].reshape(self.bias.shape)).to(
                self.bias.dtype
            )

    def _unmerge_one(self, name: str) -> None:
        # Division undoes the product up to rounding (and is undefined for a zero factor), as in
        # PEFT.
        self.weight.data = (self.weight.data / (self._factor(name) + 1e-8)).to(self.weight.dtype)
        if not self.is_feedforward and self.bias is not None:
            factor = self.ia3_l[name].reshape(self.bias.shape) + 1e-8
            self.bias.data = (self.bias.data / factor).to(self.bias.dtype)
        self.merged_adapters.remove(name)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        pending = self._pending()  # first: it may unmerge before the base layer runs
        if not pending:
            return base_output(self.base_layer, x, *args, **kwargs)
        scale = torch.ones((), device=x.device)
        for name in pending:
            scale = scale * self._broadcast(cast(torch.Tensor, self.ia3_l[name]))
        if self.is_feedforward:
            return base_output(self.base_layer, (x * scale).to(x.dtype), *args, **kwargs)
        result = base_output(self.base_layer, x, *args, **kwargs)
        return (result * scale).to(result.dtype)


class IA3Linear(IA3Layer):
    """IA3 around ``nn.Linear`` or GPT-2's ``Conv1D`` (``fan_in_fan_out=True``: weight stored (in,
    out))."""

    repr_name = "ia3.Linear"

    def __init__(
        self, base_layer: nn.Module, is_feedforward: bool, fan_in_fan_out: bool = False
    ) -> None:
        super().__init__(base_layer, is_feedforward)
        self._set_features(fan_in_fan_out)

    def add_adapter(self, name: str, init_ia3_weights: bool = True) -> None:
        """Create adapter ``name``: ones (the identity) unless ``init_ia3_weights`` is False, in
        fp32."""
        shape = (1, self.in_features) if self.is_feedforward else (self.out_features, 1)
        self._new_vector(name, shape, init_ia3_weights)

    def _factor(self, name: str) -> torch.Tensor:
        vector = cast(torch.Tensor, self.ia3_l[name])  # (1, in) or (out, 1)
        return vector.T if self.fan_in_fan_out else vector

    def _broadcast(self, vector: torch.Tensor) -> torch.Tensor:
        return vector.flatten()  # (in,) or (out,): the last axis of the activations

    def extra_repr(self) -> str:
        kind = "feedforward" if self.is_feedforward else "attention"
        sizes = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{kind}, {sizes}, adapters={self.adapter_names}"


class IA3Conv(IA3Layer):
    """IA3 around ``nn.Conv2d`` or ``nn.Conv3d``: one factor per output channel (or per input
    channel, for a feed-forward layer), shaped ``(1, C, 1...)`` as in PEFT so it broadcasts over the
    feature maps."""

    def __init__(self, base_layer: nn.Conv2d | nn.Conv3d, is_feedforward: bool) -> None:
        super().__init__(base_layer, is_feedforward)
        self.fan_in_fan_out = False
        self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels

    def _get_name(self) -> str:  # PEFT's repr: "ia3.Conv2d(...)"
        return f"ia3.{type(self.base_layer).__name__}"

    def add_adapter(self, name: str, init_ia3_weights: bool = True) -> None:
        """Create adapter ``name``: ones (the identity) unless ``init_ia3_weights`` is False, in
        fp32."""
        channels = self.in_features if self.is_feedforward else self.out_features
        self._new_vector(name, (1, channels, *([1] * (self.weight.dim() - 2))), init_ia3_weights)

    def _factor(self, name: str) -> torch.Tensor:
        """Over the kernel's output channels, or over its input channels, repeated for each group's
        outputs."""
        vector = cast(torch.Tensor, self.ia3_l[name])  # (1, C, 1...)
        if not self.is_feedforward:
            return vector.transpose(0, 1)  # (out, 1, 1...)
        groups = int(cast(nn.Conv2d, self.base_layer).groups)
        # (g, 1, in/g, 1...)
        per_group = vector.reshape(groups, 1, self.in_features // groups, *vector.shape[2:])
        return per_group.expand(groups, self.out_features // groups, *per_group.shape[2:]).reshape(
            self.out_features, self.in_features // groups, *vector.shape[2:]
        )

    def _broadcast(self, vector: torch.Tensor) -> torch.Tensor:
        return vector  # (1, C, 1...): the channel axis of the feature maps

    def extra_repr(self) -> str:
        kind = "feedforward" if self.is_feedforward else "attention"
        sizes = f"in_channels={self.in_features}, out_channels={self.out_features}"
        return f"{kind}, {sizes}, adapters={self.adapter_names}"
