"""LoHa (Hyeon-Woo et al., 2022; the LyCORIS family): the update is a Hadamard product of two low-rank
products, ``dW = (W1a @ W1b) * (W2a @ W2b) * alpha / r``, so its rank can reach ``r**2`` from
``2 r (out + in)`` numbers.

On ``nn.Linear`` ``dW`` is (out, in); on ``nn.Conv1d/2d`` it is the kernel flattened to (out, in / groups * k...)
and reshaped. With ``use_effective_conv2d`` (a kernel larger than 1) each product is instead a CP decomposition
of the kernel, ``T (r, r, k1, k2)`` contracted with W_b (r, in) and W_a (r, out) (FedPara's proposition 3).
Tensor names and shapes are PEFT's (``q_proj.hada_w1_a.<name>``; ``hada_t1`` and ``hada_t2`` for the CP
cores). The forward applies ``dW`` like the base layer applies its weight; merging adds it to the weight.
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
_CORES = ("hada_t1", "hada_t2")


class LoHaLayer(AdapterLayer):
    """LoHa around ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` (see the module's docstring)."""

    adapter_param_names = (*_FACTORS, *_CORES)
    prefix = "hada_"
    """What every LoHa tensor's name starts with (PEFT's tuner attribute of that name)."""
    other_param_names = ("r", "alpha", "scaling", "rank_dropout", "module_dropout")

    def __init__(self, base_layer: nn.Linear | nn.Conv1d | nn.Conv2d) -> None:
        super().__init__(base_layer)
        if isinstance(base_layer, nn.Linear):
            self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        else:  # a convolution: its channels, as PEFT's layers report them
            self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels
        for name in (*_FACTORS, *_CORES):
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
                    init_weights: bool = True, use_effective_conv2d: bool = False) -> None:
        """Create adapter ``name``, its tensors drawn as PEFT draws them (He initialization; W2b zero unless
        ``init_weights`` is False, so a fresh adapter is the base layer)."""
        kernel = tuple(self.weight.shape[2:])  # () for a linear layer
        cp = use_effective_conv2d and any(k != 1 for k in kernel)  # a 1x1 kernel is a matrix: no core needed
        out_features, in_features = self.weight.shape[0], self.weight[0].numel()  # a kernel flattened
        if cp:  # PEFT's creation order: t1, w1_a, w1_b, t2, w2_a, w2_b
            core, in_features = (r, r, *kernel, *(1,) * (2 - len(kernel))), self.weight.shape[1]
            shapes = {"hada_t1": core, "hada_w1_a": (r, out_features), "hada_w1_b": (r, in_features),
                      "hada_t2": core, "hada_w2_a": (r, out_features), "hada_w2_b": (r, in_features)}
        else:
            shapes = {"hada_w1_a": (out_features, r), "hada_w1_b": (r, in_features),
                      "hada_w2_a": (out_features, r), "hada_w2_b": (r, in_features)}
        device = self.weight.device
        for attr, shape in shapes.items():
            cast(nn.ParameterDict, getattr(self, attr))[name] = nn.Parameter(torch.empty(shape, device=device))
        for attr in (a for a in (*_FACTORS, *_CORES) if a in shapes):  # PEFT's draw order: the same seed, its adapter
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
        """``(W1a W1b) * (W2a W2b) * scaling`` in the base weight's shape (each product rebuilt from its CP core
        when the adapter has one)."""
        w1a, w1b, w2a, w2b = (cast(nn.ParameterDict, getattr(self, attr))[name] for attr in _FACTORS)
        cores = cast(nn.ParameterDict, self.hada_t1)
        if name in cores:
            t1, t2 = cores[name], cast(nn.ParameterDict, self.hada_t2)[name]  # (r, r, k1, k2)
            first = torch.einsum("ijkl,jr,ip->prkl", t1, w1b, w1a)  # (out, in, k1, k2)
            second = torch.einsum("ijkl,jr,ip->prkl", t2, w2b, w2a)
            return (first * second * self.scaling[name]).reshape(self.weight.shape)
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
