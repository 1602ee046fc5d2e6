"""What the LyCORIS-family layers (LoHa, LoKr) share: a full-size weight update ``dW`` rebuilt from
small factors, applied the way the base layer applies its own weight (``F.linear`` or the
convolution), merged by adding it to the weight, with two training-only dropouts as PEFT and
LyCORIS have them (module dropout skips a layer's adapter for a step; rank dropout drops output
rows of ``dW``). A method subclasses this with its tensors, ``add_adapter`` and ``delta_weight``.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLayer, base_output

__all__ = ["LycorisLayer"]


class LycorisLayer(AdapterLayer):
    """A layer whose adapters are full-size updates ``delta_weight(name)`` (see the module)."""

    method = ""
    """The method's name in PEFT's layer repr (``"loha"``)."""
    other_param_names: tuple[str, ...] = (
        "r",
        "alpha",
        "scaling",
        "rank_dropout",
        "module_dropout",
    )

    def __init__(self, base_layer: nn.Linear | nn.Conv1d | nn.Conv2d) -> None:
        super().__init__(base_layer)
        if isinstance(base_layer, nn.Linear):
            self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        else:  # a convolution: its channels, as PEFT's layers report them
            self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels
        for name in self.adapter_param_names:
            setattr(self, name, nn.ParameterDict())
        self.r: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.rank_dropout: dict[str, float] = {}
        self.module_dropout: dict[str, float] = {}

    def _get_name(self) -> str:  # PEFT's repr: "loha.Linear(...)", "lokr.Conv2d(...)"
        return f"{self.method}.{type(self.base_layer).__name__}"

    @property
    def adapter_names(self) -> list[str]:
        return list(self.scaling)

    def _tensors(self, attr: str) -> nn.ParameterDict:
        return cast(nn.ParameterDict, getattr(self, attr))

    def _record(
        self, name: str, r: int, alpha: float, rank_dropout: float, module_dropout: float
    ) -> None:
        self.r[name], self.alpha[name], self.scaling[name] = r, alpha, alpha / r
        self.rank_dropout[name], self.module_dropout[name] = rank_dropout, module_dropout

    def _forget(self, name: str) -> None:
        for attr in self.other_param_names:
            cast(dict[str, object], getattr(self, attr)).pop(name, None)

    def delta_weight(self, name: str) -> torch.Tensor:
        """Adapter ``name``'s update in the base weight's shape, scaling included."""
        raise NotImplementedError

    def _rescales_rank_dropout(self, name: str) -> bool:
        """Whether the rows that survive rank dropout are scaled up to keep the mean."""
        return True

    def _merge_one(self, name: str) -> None:
        self.weight.data += self.delta_weight(name).to(self.weight.dtype)

    def _unmerge_one(self, name: str) -> None:
        self.weight.data -= self.delta_weight(name).to(self.weight.dtype)
        self.merged_adapters.remove(name)

    def _training_delta(self, name: str) -> torch.Tensor:
        """The update as training sees it: output rows dropped with ``rank_dropout``."""
        delta = self.delta_weight(name)
        if self.training and self.rank_dropout[name]:
            rows = torch.rand(delta.shape[0], device=delta.device)  # (out,)
            keep = (rows > self.rank_dropout[name]).to(delta.dtype)
            if self._rescales_rank_dropout(name):
                keep = keep / keep.mean()
            delta = delta * keep.view(-1, *[1] * (delta.dim() - 1))
        return delta

    def _run_update(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` applied to ``x`` the way the base layer applies its own (no bias: the base
        output has it)."""
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return F.linear(x, weight)
        conv = cast(nn.Conv2d, base)
        return cast(torch.Tensor, conv._conv_forward(x, weight, None))

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        pending = self._pending()
        result = base_output(self.base_layer, x, *args, **kwargs)
        for name in pending:
            # drawn every step, as PEFT does
            if self.training and not torch.rand(1) > self.module_dropout[name]:
                continue  # module dropout: this layer's adapter sits out this step
            delta = self._training_delta(name)
            result = result + self._run_update(x.to(delta.dtype), delta).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}"
