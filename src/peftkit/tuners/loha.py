"""LoHa (Hyeon-Woo et al., 2022; the LyCORIS family): the update is a Hadamard product of two low-rank
products, ``dW = (W1a @ W1b) * (W2a @ W2b) * alpha / r``, so its rank can reach ``r**2`` from
``2 r (out + in)`` numbers.

On ``nn.Linear`` ``dW`` is (out, in); on ``nn.Conv1d/2d`` it is the kernel flattened to (out, in / groups * k...)
and reshaped, as PEFT does without ``use_effective_conv2d``. Tensor names and shapes are PEFT's
(``q_proj.hada_w1_a.<name>``: W1a is (out, r), W1b (r, in)). The forward applies ``dW`` like the base layer
applies its weight; merging adds it to the weight.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLayer, base_output

__all__ = ["LoHaLayer"]

_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class LoHaLayer(AdapterLayer):
    """LoHa around ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` (see the module's docstring)."""

    adapter_param_names = _FACTORS
    prefix = "hada_"
    """What every LoHa tensor's name starts with (PEFT's tuner attribute of that name)."""
    other_param_names = ("r", "alpha", "scaling", "rank_dropout", "module_dropout")

    def __init__(self, base_layer: nn.Linear | nn.Conv1d | nn.Conv2d) -> None:
        super().__init__(base_layer)
        for name in _FACTORS:
            setattr(self, name, nn.ParameterDict())
        self.r: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.rank_dropout: dict[str, float] = {}
        self.module_dropout: dict[str, float] = {}

    def _get_name(self) -> str:  # PEFT's repr: "loha.Linear(...)"
        return f"loha.{type(self.base_layer).__name__}"

    @property
    def adapter_names(self) -> list[str]:
        return list(self.scaling)

    def add_adapter(self, name: str, r: int, alpha: float, rank_dropout: float = 0.0, module_dropout: float = 0.0,
                    init_weights: bool = True) -> None:
        """Create adapter ``name``: W1a, W2a (out, r) and W1b, W2b (r, in), drawn as PEFT draws them (He
        initialization; W2b zero unless ``init_weights`` is False, so a fresh adapter is the base layer)."""
        out_features, in_features = self.weight.shape[0], self.weight[0].numel()  # a kernel flattened
        shapes = ((out_features, r), (r, in_features), (out_features, r), (r, in_features))
        device = self.weight.device
        for attr, shape in zip(_FACTORS, shapes, strict=True):
            cast(nn.ParameterDict, getattr(self, attr))[name] = nn.Parameter(torch.empty(shape, device=device))
        for attr in _FACTORS:  # the order PEFT draws them in, so the same seed gives PEFT's adapter
            tensor = cast(nn.ParameterDict, getattr(self, attr))[name]
            if attr == "hada_w2_b" and init_weights:
                nn.init.zeros_(tensor)
            else:
                nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
        self.r[name], self.alpha[name], self.scaling[name] = r, alpha, alpha / r
        self.rank_dropout[name], self.module_dropout[name] = rank_dropout, module_dropout

    def _forget(self, name: str) -> None:
        for table in (self.r, self.alpha, self.scaling, self.rank_dropout, self.module_dropout):
            table.pop(name, None)

    def delta_weight(self, name: str) -> torch.Tensor:
        """``(W1a W1b) * (W2a W2b) * scaling`` in the base weight's shape."""
        w1a, w1b, w2a, w2b = (cast(nn.ParameterDict, getattr(self, attr))[name] for attr in _FACTORS)
        return ((w1a @ w1b) * (w2a @ w2b) * self.scaling[name]).reshape(self.weight.shape)  # (out, in...)

    def _merge_one(self, name: str) -> None:
        self.weight.data += self.delta_weight(name).to(self.weight.dtype)

    def _unmerge_one(self, name: str) -> None:
        self.weight.data -= self.delta_weight(name).to(self.weight.dtype)
        self.merged_adapters.remove(name)

    def _training_delta(self, name: str) -> torch.Tensor:
        """The update as training sees it: rows dropped with ``rank_dropout`` and rescaled to keep the mean, as
        PEFT (and LyCORIS) do."""
        delta = self.delta_weight(name)
        if self.training and self.rank_dropout[name]:
            keep = (torch.rand(delta.shape[0], device=delta.device) > self.rank_dropout[name]).to(delta.dtype)
            delta = delta * (keep / keep.mean()).view(-1, *[1] * (delta.dim() - 1))
        return delta

    def _run_update(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` applied to ``x`` the way the base layer applies its own (no bias: the base output has it)."""
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return F.linear(x, weight)
        conv = cast(nn.Conv2d, base)
        return cast(torch.Tensor, conv._conv_forward(x, weight, None))

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        pending = self._pending()
        result = base_output(self.base_layer, x, *args, **kwargs)
        for name in pending:
            if self.training and not torch.rand(1) > self.module_dropout[name]:  # drawn every step, as PEFT does
                continue  # module dropout: this layer's adapter sits out this step
            delta = self._training_delta(name)
            result = result + self._run_update(x.to(delta.dtype), delta).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}"
